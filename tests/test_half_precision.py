"""float16 and bfloat16 (ml_dtypes) for every function, forward and backward.

Half-precision data is computed in float32 and rounded once: every half
output must be within 1 ulp of the float64 reference (of the same half
inputs) rounded to the half type, except where that ulp is smaller than
float32's own error on the row (bfloat16 values near 0): there within
float32's tolerance (see conftest.assert_within_ulp).  Statistics are
float32.  Weights may be float32 (mixed) or of x's dtype."""
import numpy as np
import pytest

import layernorm as ln
from conftest import (FLOAT32, HALF_DTYPES, ONE_PASS_KINDS, assert_matches_reference, assert_within_ulp,
                      check_layer_norm, check_layer_norm_backward, check_rms_norm,
                      check_rms_norm_backward, in_layout, keepdims_shape, one_pass_rows, param_shape,
                      random_array, random_params, ref, ulp_distance, unchanged)

pytestmark = pytest.mark.parametrize("dtype", HALF_DTYPES)

CASES = [((5, 37), -1), ((3, 1000), -1), ((2, 16, 33), 1), ((4, 6, 5), (0, 2)), ((3, 4, 5), (1, 2)),
         ((1, 70000), -1), ((600, 64), -1), ((13, 2048), -1)]
WEIGHTS = ["none", "float32", "same"]


def make_params(rng, shape, axis, dtype, kind):
    """(weight, bias) of the normalized shape: None, float32, or x's dtype."""
    if kind == "none":
        return None, None
    weight, bias = random_params(rng, param_shape(shape, axis), FLOAT32)
    return (weight, bias) if kind == "float32" else (weight.astype(dtype), bias.astype(dtype))


@pytest.mark.parametrize("weights", WEIGHTS)
@pytest.mark.parametrize("shape, axis", CASES)
def test_layer_norm(simd, rng, dtype, shape, axis, weights):
    x = random_array(rng, shape, dtype, offset=0.5)
    weight, bias = make_params(rng, shape, axis, dtype, weights)
    y, mean, rstd = check_layer_norm(x, axis, weight, bias)
    assert mean.shape == rstd.shape == keepdims_shape(shape, axis)
    assert np.array_equal(ln.layer_norm(x, axis, weight, bias), y)


@pytest.mark.parametrize("weights", WEIGHTS)
@pytest.mark.parametrize("shape, axis", CASES)
def test_rms_norm(simd, rng, dtype, shape, axis, weights):
    x = random_array(rng, shape, dtype, offset=0.5)
    weight, _ = make_params(rng, shape, axis, dtype, weights)
    check_rms_norm(x, axis, weight)


@pytest.mark.parametrize("weights", WEIGHTS)
@pytest.mark.parametrize("shape, axis", CASES)
def test_layer_norm_backward(simd, rng, dtype, shape, axis, weights):
    """dx within 1 ulp; dweight/dbias float32 (1e-5) or, with a half weight, 1 ulp of it."""
    x = random_array(rng, shape, dtype, offset=0.5)
    dy = random_array(rng, shape, dtype)
    weight, _ = make_params(rng, shape, axis, dtype, weights)
    check_layer_norm_backward(x, dy, axis, weight)


@pytest.mark.parametrize("weights", WEIGHTS)
@pytest.mark.parametrize("shape, axis", CASES)
def test_rms_norm_backward(simd, rng, dtype, shape, axis, weights):
    x = random_array(rng, shape, dtype, offset=0.5)
    dy = random_array(rng, shape, dtype)
    weight, _ = make_params(rng, shape, axis, dtype, weights)
    check_rms_norm_backward(x, dy, axis, weight)


@pytest.mark.parametrize("kind", ["layer", "rms"])
@pytest.mark.parametrize("weights", WEIGHTS)
@pytest.mark.parametrize("shape, axis", CASES)
def test_fused_add(simd, rng, dtype, shape, axis, weights, kind):
    x = random_array(rng, shape, dtype, offset=0.5)
    r = random_array(rng, shape, dtype)
    weight, bias = make_params(rng, shape, axis, dtype, weights)
    if kind == "layer":
        y, s = ln.add_layer_norm(x, r, axis, weight, bias)
        ry = ref.layer_norm(s, axis, weight, bias)[0]
    else:
        y, s = ln.add_rms_norm(x, r, axis, weight)
        ry = ref.rms_norm(s, axis, weight, eps=float(np.finfo(np.float32).eps))[0]
    assert s.dtype == dtype
    assert np.array_equal(s.view(np.uint16), (x + r).view(np.uint16)), "s != x + residual"
    assert_matches_reference(y, ry, what="y")


@pytest.mark.parametrize("axis", [-1, 1, (0, 2)])
def test_out_sum_out_and_in_place(rng, dtype, axis):
    shape = (4, 5, 6)
    x, r = random_array(rng, shape, dtype), random_array(rng, shape, dtype)
    expected = ln.layer_norm(x, axis)
    for out in (np.empty(shape, dtype), np.empty(shape, dtype, order="F")):
        assert ln.layer_norm(x, axis, out=out) is out
        assert np.array_equal(out.view(np.uint16), expected.view(np.uint16))
    ey, es = ln.add_rms_norm(x, r, axis)
    y, s = ln.add_rms_norm(x, r, axis, out=x, sum_out=r)
    assert y is x and s is r
    assert np.array_equal(x.view(np.uint16), ey.view(np.uint16))
    assert np.array_equal(r.view(np.uint16), es.view(np.uint16))


@pytest.mark.parametrize("shape", [(600, 64), (45, 128), (17, 32), (40, 768), (9, 1024), (20, 512)])
def test_short_rows_in_place(simd, rng, dtype, shape):
    """Short rows (and bfloat16's rows of up to 1024 in small calls) are kept
    in float32 between the passes (keeps_rows in forward_rows.c): in place,
    every row must still be read before it is written, giving the bits of a
    fresh output."""
    x, r = random_array(rng, shape, dtype, offset=0.5), random_array(rng, shape, dtype)
    expected, expected_rms = ln.layer_norm(x), ln.rms_norm(x)
    ey, es = ln.add_layer_norm(x, r)
    for function, want in ((ln.layer_norm, expected), (ln.rms_norm, expected_rms)):
        y = x.copy()
        assert function(y, out=y) is y
        assert np.array_equal(y.view(np.uint16), want.view(np.uint16)), function.__name__
    y, s = ln.add_layer_norm(x, r, out=x, sum_out=r)
    assert y is x and s is r
    assert np.array_equal(x.view(np.uint16), ey.view(np.uint16))
    assert np.array_equal(r.view(np.uint16), es.view(np.uint16))


@pytest.mark.parametrize("layout", ["F", "strided", "negative", "transposed"])
def test_layouts(rng, dtype, layout):
    x = random_array(rng, (4, 5, 6), dtype)
    for axis in (-1, 1, (0, 2)):
        with unchanged(x):
            got = ln.layer_norm(in_layout(x, layout), axis)
        assert np.array_equal(got.view(np.uint16), ln.layer_norm(x, axis).view(np.uint16))


def test_dtypes_and_mismatches(rng, dtype):
    x = random_array(rng, (3, 8), dtype)
    y, mean, rstd = ln.layer_norm(x, return_stats=True)
    assert y.dtype == dtype and mean.dtype == rstd.dtype == np.float32
    y, rrms = ln.rms_norm(x, return_stats=True)
    assert y.dtype == dtype and rrms.dtype == np.float32
    dx, dweight, dbias = ln.layer_norm_backward(x, x, mean, rstd)
    assert dx.dtype == dtype and dweight.dtype == dbias.dtype == np.float32
    with pytest.raises(TypeError, match="dy"):
        ln.layer_norm_backward(x.astype(np.float32), x, mean, rstd)
    with pytest.raises(TypeError, match="residual"):
        ln.add_layer_norm(x, x.astype(np.float32))
    with pytest.raises(TypeError, match="out"):
        ln.layer_norm(x, out=np.empty((3, 8), np.float32))


def test_rounded_once(simd, dtype):
    """A case where rounding the float32 result twice (or computing in half) is
    visibly wrong: many distinct values, results compared bit for bit up to 1 ulp."""
    x = np.linspace(-3, 5, 4096).astype(dtype).reshape(4, 1024)
    y = ln.layer_norm(x)
    expected = ref.layer_norm(x)[0]
    assert_within_ulp(y, expected, dtype)
    assert np.mean(ulp_distance(y, expected.astype(dtype)) == 0) > 0.95   # nearly all exact


@pytest.mark.parametrize("cols", [128, 768, 1000])
@pytest.mark.parametrize("kind", ONE_PASS_KINDS)
def test_statistics_of_rows_of_128_or_more(simd, rng, dtype, cols, kind):
    """Half-precision layer norm takes both moments of rows of 128 elements
    or more in one pass, shifted by the mean of the row's first 64 (AVX2: 32)
    values, and takes a second pass where that shift lies too far from the
    mean.  Either way the float32 statistics stay within a few float32
    roundings of the float64 ones (rstd relative to itself, the mean to the
    row's largest value) and y within 1 ulp; the fused add's are the same
    bits."""
    x = one_pass_rows(rng, kind, 64, cols).astype(dtype)
    y, mean, rstd = ln.layer_norm(x, return_stats=True)
    ry, rmean, rrstd = ref.layer_norm(x, -1)
    rstd64, rrstd = rstd.astype(np.float64), np.asarray(rrstd, np.float64)
    magnitude = np.max(np.abs(x.astype(np.float64)), axis=-1, keepdims=True)
    # near 0, float32's error on the row decides: a few ulps of its largest value, normalized
    assert_within_ulp(y, ry, dtype, atol=max(2e-6, 2e-7 * np.max(magnitude * rrstd)), what="y")
    assert np.max(np.abs(rstd64 - rrstd) / rrstd) <= 1e-6, "rstd"
    assert np.max(np.abs(mean.astype(np.float64) - np.asarray(rmean, np.float64)) / magnitude) <= 1e-6, "mean"
    fused_y, _ = ln.add_layer_norm(x, np.zeros_like(x))
    assert np.array_equal(fused_y.view(np.uint16), y.view(np.uint16))


def test_empty(dtype):
    x = np.zeros((0, 3), dtype)
    y, mean, rstd = ln.layer_norm(x, return_stats=True)
    assert y.shape == (0, 3) and y.dtype == dtype and mean.dtype == np.float32


@pytest.mark.parametrize("shape, axis", [((37, 1000), -1), ((3, 70001), -1), ((5, 32768), -1), ((4, 7, 33, 35), 1),
                                         ((5, 6, 7), (0, 2))])
def test_half_weights_read_natively_give_the_bits_of_float32_copies(simd, dtype, shape, axis):
    """Weights in x's half dtype are read by the kernels as they are; the
    conversion to float32 is exact, so the results must not change."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal(shape).astype(dtype)
    axes = tuple(sorted(np.atleast_1d(axis) % len(shape)))
    pshape = tuple(shape[a] for a in axes)
    w = rng.standard_normal(pshape).astype(dtype)
    b = rng.standard_normal(pshape).astype(dtype)
    w32, b32 = w.astype(np.float32), b.astype(np.float32)
    y, mean, rstd = ln.layer_norm(x, axis, w, b, return_stats=True)
    y32 = ln.layer_norm(x, axis, w32, b32)
    assert np.array_equal(y.view(np.uint16), y32.view(np.uint16))
    dy = rng.standard_normal(shape).astype(dtype)
    dx, dw, db = ln.layer_norm_backward(dy, x, mean, rstd, axis, w)
    dx32, dw32, db32 = ln.layer_norm_backward(dy, x, mean, rstd, axis, w32)
    assert np.array_equal(dx.view(np.uint16), dx32.view(np.uint16))
    assert dw.dtype == dtype and np.array_equal(dw, dw32.astype(dtype))
    r, s = ln.add_rms_norm(x, x, axis, w, eps=1e-6)
    r32, s32 = ln.add_rms_norm(x, x, axis, w32, eps=1e-6)
    assert np.array_equal(r.view(np.uint16), r32.view(np.uint16))


def quiet_bit(dtype):
    """The quiet bit of the half type's NaNs."""
    return 0x0200 if dtype == np.float16 else 0x0040


def assert_same_half_bits(got, expected, dtype):
    """got equals expected bit for bit, except that NaNs (in the same places)
    only have to be quiet."""
    nan = np.isnan(expected.astype(np.float32))
    assert np.array_equal(np.isnan(got.astype(np.float32)), nan)
    assert np.array_equal(got.view(np.uint16)[~nan], expected.view(np.uint16)[~nan])
    assert np.all(got.view(np.uint16)[nan] & quiet_bit(dtype)), "NaNs must come out quiet"


@pytest.mark.parametrize("cols", [256, 255])
def test_float32_nans_with_any_payload_narrow_to_nans(simd, rng, dtype, cols):
    """A float32 NaN whose payload fills the low half (which the rounding adds
    to) must still narrow to a NaN, not carry into the sign (0x7FFFFFFF would
    round to -0.0): a float32 bias of such NaNs gives NaN outputs, quiet, in
    the vector loops (256 columns) and the scalar tails (255)."""
    payloads = np.array([0x7FFFFFFF, 0xFFFFFFFF, 0x7FBFFFFF, 0x7F800001, 0xFFC0FFFF], np.uint32)
    x = rng.standard_normal((4, cols)).astype(dtype)
    bias = rng.standard_normal(cols).astype(np.float32)
    nan_columns = np.concatenate([np.arange(5), np.arange(cols - 5, cols)])
    bias.view(np.uint32)[nan_columns] = np.resize(payloads, nan_columns.size)
    y = ln.layer_norm(x, -1, np.ones(cols, np.float32), bias)
    values = y.astype(np.float32)
    assert np.all(np.isnan(values[:, nan_columns])), "a NaN bias narrowed to a number"
    others = np.setdiff1d(np.arange(cols), nan_columns)
    assert not np.any(np.isnan(values[:, others]))
    assert np.all(y.view(np.uint16)[:, nan_columns] & quiet_bit(dtype)), "NaNs must come out quiet"


def test_conversions_exact_for_every_half_value(simd, rng, dtype):
    """Every half bit pattern (zeros, subnormals, Inf, NaN) widens and narrows
    exactly: the fused add's stored sum x + r equals NumPy's bit for bit, with
    r = 0 (the value itself) and with random r (rounding, ties, overflow).
    Row lengths of 256 and 255 take the vector and the scalar conversions."""
    every = np.arange(1 << 16, dtype=np.uint16).view(dtype)
    for cols in (256, 255):
        x = every[: (len(every) // cols) * cols].reshape(-1, cols)
        for r in (np.zeros_like(x), (rng.standard_normal(x.shape) * 4.0).astype(dtype),
                  x[::-1].copy()):
            with np.errstate(all="ignore"):
                _, s = ln.add_layer_norm(x, r)
                expected = (x.astype(np.float32) + r.astype(np.float32)).astype(dtype)
            assert_same_half_bits(s, expected, dtype)


@pytest.mark.parametrize("cols", [256, 255])
def test_narrowing_of_any_float32_value(simd, rng, dtype, cols):
    """Rounding float32 results to the half type, bit for bit as NumPy (float16)
    and ml_dtypes (bfloat16) round: with a zero weight, y is the float32 bias
    narrowed.  Random bit patterns, patterns with exponents in and around the
    half type's range, exact ties (even and odd), and the edges (largest
    finite values, the tie to Inf, subnormals and the tie to zero).  Vector
    loops (256 columns) and scalar tails (255)."""
    tie_bits = 0x1000 if dtype == np.float16 else 0x8000     # half an ulp of the half type
    low_exponent, high_exponent = (0x60, 0x90) if dtype == np.float16 else (0x00, 0xFF)
    edges = np.array([65504.0, 65519.99, 65520.0, 2.0 ** -24, 2.0 ** -25, 2.0 ** -25 * 1.0000001, 6.1e-5,
                      3.3895314e38, 3.3961775e38, 1e-38, 1e-40, 1e-45, np.inf, -np.inf, np.nan, 1.0, -2.5],
                     np.float32)
    for trial in range(8):
        bits = rng.integers(0, 1 << 32, size=cols, dtype=np.uint64).astype(np.uint32)
        if trial % 2:
            exponents = rng.integers(low_exponent, high_exponent + 1, size=cols).astype(np.uint32)
            bits = (bits & np.uint32(0x807FFFFF)) | (exponents << np.uint32(23))
        if trial % 4 == 3:
            bits = (bits & ~np.uint32(2 * tie_bits - 1)) | np.uint32(tie_bits)
        bias = bits.view(np.float32).copy()
        bias[: edges.size] = edges * np.where(rng.random(edges.size) < 0.5, 1, -1).astype(np.float32)
        bias[bias == 0] = 0.0      # -0.0 + 0 * xhat is +0.0 or -0.0 by xhat's sign
        x = rng.standard_normal((2, cols)).astype(dtype)
        with np.errstate(all="ignore"):
            y = ln.layer_norm(x, -1, np.zeros(cols, np.float32), bias)
            expected = bias.astype(dtype)
        for row in y:
            assert_same_half_bits(row, expected, dtype)
