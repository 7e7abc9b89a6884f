"""layer_norm against the float64 reference: shapes, axis sets, layouts,
dtypes, weight/bias, statistics, input kinds, empty arrays."""
import numpy as np
import pytest

import layernorm as ln
from conftest import (ALL_DTYPES, BFLOAT16, FLOAT32, FLOAT64, LAYOUTS, assert_close, axis_sets, check_layer_norm,
                      empty_off_a_line, in_layout, keepdims_shape, negative_form, param_shape, random_array,
                      random_params, ref, shape_axis_cases, stats_dtype, use_threads)

SHAPES = [(7,), (4, 6), (3, 5, 4), (2, 3, 4, 5), (3, 1, 4, 2)]
FLOATS = [FLOAT32, FLOAT64]


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("shape, axes", shape_axis_cases(SHAPES))
def test_every_axis_set(simd, rng, shape, axes, dtype):
    x = random_array(rng, shape, dtype)
    weight, bias = random_params(rng, param_shape(shape, axes), dtype)
    check_layer_norm(x, axes, weight, bias)


@pytest.mark.parametrize("shape, axes", shape_axis_cases([(2, 3, 4, 5)]))
def test_axis_spellings_agree(rng, shape, axes):
    """Positive, negative, mixed, unsorted, list and tuple spellings of the same axes."""
    x = random_array(rng, shape, FLOAT64)
    expected = ln.layer_norm(x, axes)
    negative = negative_form(axes, len(shape))
    mixed = tuple(a if i % 2 else a - len(shape) for i, a in enumerate(axes))
    spellings = [negative, list(axes), list(reversed(negative)), mixed]
    if len(axes) == 1:
        spellings += [axes[0], negative[0], np.int64(axes[0]), np.intp(negative[0])]
    for spelling in spellings:
        assert np.array_equal(ln.layer_norm(x, spelling), expected), spelling


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("axes", [(3,), (2, 3), (1,), (0, 2), (1, 2)])
def test_layouts(simd, rng, layout, dtype, axes):
    base = random_array(rng, (3, 4, 5, 6), dtype)
    x = in_layout(base, layout)
    assert np.array_equal(x, base)
    weight, bias = random_params(rng, param_shape(base.shape, axes), dtype)
    y, _, _ = check_layer_norm(x, axes, in_layout(weight, layout), in_layout(bias, layout))
    # the layout never changes the result
    assert np.array_equal(y, ln.layer_norm(base, axes, weight, bias))


def test_fortran_and_transposed_2d_views(rng):
    x = random_array(rng, (40, 30), FLOAT32)
    for view in (np.asfortranarray(x), x.T.copy().T, x[::-1, ::-1].copy()[::-1, ::-1]):
        for axis in (0, 1, (0, 1)):
            assert np.array_equal(ln.layer_norm(view, axis), ln.layer_norm(x, axis))


@pytest.mark.parametrize("step", [2, -1, -3])
def test_sliced_views(rng, step):
    big = random_array(rng, (9, 50), FLOAT32)
    view = big[::step, 1::abs(step)] if step > 0 else big[::step, ::step]
    for axis in (0, 1, -1, (0, 1)):
        check_layer_norm(view, axis)


@pytest.mark.parametrize("with_weight", [False, True])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("shape, axes", [((6, 33), (1,)), ((4, 3, 10), (1,)), ((3, 4, 5), (0, 2))])
def test_weight_and_bias(simd, rng, with_weight, with_bias, dtype, shape, axes):
    x = random_array(rng, shape, dtype)
    weight, bias = random_params(rng, param_shape(shape, axes), dtype)
    weight = weight if with_weight else None
    bias = bias if with_bias else None
    y, _, _ = check_layer_norm(x, axes, weight, bias)
    plain = ln.layer_norm(x, axes)
    if weight is None and bias is None:
        assert np.array_equal(y, plain)
    else:
        assert not np.allclose(y, plain)


def test_weight_and_bias_array_likes(rng):
    """Weight/bias as lists, other float dtypes, integer values, non-contiguous views."""
    x = random_array(rng, (5, 4), FLOAT32)
    weight, bias = [1.0, 2.0, 3.0, 4.0], [0, 1, 0, -1]
    expected = ln.layer_norm(x, -1, np.array(weight, np.float32), np.array(bias, np.float32))
    assert np.array_equal(ln.layer_norm(x, -1, weight, bias), expected)
    assert np.array_equal(ln.layer_norm(x, -1, np.array(weight)[::-1][::-1], np.array(bias, np.int64)),
                          expected)


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("shape, axes", [((20, 5, 10, 10), (1, 2, 3)), ((20, 5, 10, 10), (2, 3)),
                                         ((20, 5, 10, 10), (3,)), ((2, 3, 4, 5), (0, 2)),
                                         ((2, 3, 4, 5), (1,))])
def test_return_stats(rng, dtype, shape, axes):
    x = random_array(rng, shape, dtype, offset=2.0, scale=3.0)
    y, mean, rstd = ln.layer_norm(x, axes, return_stats=True)
    assert mean.shape == rstd.shape == keepdims_shape(shape, axes)
    assert mean.dtype == rstd.dtype == stats_dtype(dtype)
    _, rmean, rrstd = ref.layer_norm(x, axes)
    assert_close(mean, rmean, what="mean")
    assert_close(rstd, rrstd, what="rstd")
    assert np.array_equal(y, ln.layer_norm(x, axes))
    # the statistics describe y: (x - mean) * rstd
    assert_close(y, (x.astype(np.float64) - mean) * rstd.astype(np.float64), what="y from stats")


def test_rstd_includes_eps(rng):
    x = np.array([[1.0, -1.0, 1.0, -1.0]])         # variance 1
    for eps in (0.0, 1e-5, 0.25, 3.0):
        _, mean, rstd = ln.layer_norm(x, eps=eps, return_stats=True)
        assert mean[0, 0] == 0.0
        assert rstd[0, 0] == pytest.approx(1 / np.sqrt(1 + eps), rel=1e-15)


def test_constant_rows_give_bias(simd):
    x = np.full((3, 64), 5.0, np.float32)
    bias = np.linspace(-1, 1, 64, dtype=np.float32)
    y, mean, rstd = ln.layer_norm(x, bias=bias, eps=1e-5, return_stats=True)
    assert np.array_equal(y, np.broadcast_to(bias, x.shape))
    assert np.all(mean == 5.0)
    assert_close(rstd, np.full(mean.shape, 1 / np.sqrt(1e-5)))


def test_seed_example(simd, rng):
    """x of shape (20, 5, 10, 10) normalized over its last 3, last 2 and last axis."""
    x = random_array(rng, (20, 5, 10, 10), FLOAT32)
    for axes in ((-3, -2, -1), (-2, -1), -1):
        y = ln.layer_norm(x, axes)
        assert y.shape == x.shape and y.dtype == np.float32
        assert_close(y, ref.layer_norm(x, axes)[0])
        moments_axes = axes if isinstance(axes, tuple) else (axes,)
        np.testing.assert_allclose(y.mean(axis=moments_axes, dtype=np.float64), 0, atol=1e-6)
        np.testing.assert_allclose(y.var(axis=moments_axes, dtype=np.float64), 1, atol=1e-3)


@pytest.mark.parametrize("dtype", [np.int8, np.int32, np.int64, np.uint8, np.uint64, np.bool_])
def test_integer_and_bool_inputs_become_float64(dtype):
    x = np.array([[0, 1, 1, 0, 1], [1, 1, 0, 0, 0]]).astype(dtype)
    y, mean, rstd = ln.layer_norm(x, return_stats=True)
    assert y.dtype == mean.dtype == rstd.dtype == np.float64
    assert np.array_equal(mean, np.mean(x, axis=-1, keepdims=True))
    assert_close(y, ref.layer_norm(x.astype(np.float64))[0])


def test_large_integers_are_exact_in_float64():
    x = np.array([2**40, 2**40 + 2, 2**40 + 4], dtype=np.int64)
    assert_close(ln.layer_norm(x, eps=0.0), [-np.sqrt(1.5), 0.0, np.sqrt(1.5)])


def test_array_likes():
    nested = [[1.0, 2.0, 4.0], [0.5, -1.0, 3.0]]
    expected = ln.layer_norm(np.array(nested))
    assert np.array_equal(ln.layer_norm(nested), expected)
    assert np.array_equal(ln.layer_norm(tuple(map(tuple, nested))), expected)
    assert ln.layer_norm([[1, 2, 3]]).dtype == np.float64


def test_single_element_row():
    assert ln.layer_norm([3.0]).tolist() == [0.0]


@pytest.mark.parametrize("dtype", FLOATS + [np.float16], ids=str)
def test_output_dtype_is_input_dtype(rng, dtype):
    x = random_array(rng, (4, 8), dtype)
    for axis in (-1, 0, (0, 1)):
        assert ln.layer_norm(x, axis).dtype == dtype
        assert ln.layer_norm(x, axis, np.ones(param_shape(x.shape, axis)),
                             return_stats=True)[0].dtype == dtype


def test_byteswapped_input_gives_native_result(rng):
    x = random_array(rng, (4, 8), FLOAT64)
    swapped = x.astype(">f8" if np.little_endian else "<f8")
    y = ln.layer_norm(swapped)
    assert y.dtype == np.float64 and y.dtype.isnative
    assert np.array_equal(y, ln.layer_norm(x))


@pytest.mark.parametrize("x", [np.ones((2, 3), np.complex128), np.ones((2, 3), np.complex64),
                               np.array([[1, "a"]], object), np.array([["a", "b"]]),
                               np.array([[b"a", b"b"]]), np.ones((2, 3), np.longdouble),
                               np.zeros((2, 3), "datetime64[s]"), [[1j, 2j]]],
                         ids=["complex128", "complex64", "object", "str", "bytes", "longdouble",
                              "datetime", "list-complex"])
def test_unsupported_kinds_raise_type_error(x):
    if np.asarray(x).dtype == np.longdouble and np.dtype(np.longdouble) == np.float64:
        pytest.skip("longdouble is float64 here")
    with pytest.raises(TypeError, match="x"):
        ln.layer_norm(x)


@pytest.mark.parametrize("shape, axes, stats_nan", [
    ((0, 5), (1,), False), ((0, 5), (0,), True), ((0, 5), (0, 1), True),
    ((3, 0), (1,), True), ((3, 0), (0,), False), ((2, 0, 3), (1,), True),
    ((2, 0, 3), (0, 2), False), ((0,), (0,), True), ((4, 0, 0), (0,), False)])
@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_empty_arrays(shape, axes, stats_nan, dtype):
    x = np.zeros(shape, dtype)
    weight = np.ones(param_shape(shape, axes), dtype)
    y, mean, rstd = ln.layer_norm(x, axes, weight, weight, return_stats=True)
    assert y.shape == shape and y.dtype == dtype
    assert mean.shape == rstd.shape == keepdims_shape(shape, axes)
    assert mean.dtype == rstd.dtype == stats_dtype(dtype)
    if stats_nan:    # mean over zero elements, as numpy.mean gives
        assert np.all(np.isnan(mean)) and np.all(np.isnan(rstd))
    assert ln.layer_norm(x, axes).shape == shape


def test_eps_is_used(rng):
    x = random_array(rng, (3, 16), FLOAT64, scale=0.01)
    for eps in (0.0, 1e-5, 1e-2, 1):
        assert_close(ln.layer_norm(x, eps=eps), ref.layer_norm(x, eps=eps)[0])
    assert not np.allclose(ln.layer_norm(x, eps=0.0), ln.layer_norm(x, eps=1e-2))


def test_eps_accepts_real_numbers(rng):
    x = random_array(rng, (3, 16), FLOAT64)
    expected = ln.layer_norm(x, eps=1e-3)
    for eps in (np.float32(1e-3), np.float64(1e-3)):
        np.testing.assert_allclose(ln.layer_norm(x, eps=eps), expected, rtol=1e-9)
    assert np.array_equal(ln.layer_norm(x, eps=1), ln.layer_norm(x, eps=1.0))


def test_default_eps_is_1e_5(rng):
    x = random_array(rng, (3, 16), FLOAT64, scale=0.003)
    assert np.array_equal(ln.layer_norm(x), ln.layer_norm(x, eps=1e-5))


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("n", [1, 2, 3, 7, 8, 15, 16, 17, 31, 33, 63, 64, 65, 127, 129, 255, 1000, 4097])
def test_row_lengths_around_vector_widths(simd, rng, dtype, n):
    """Remainder handling of every SIMD width."""
    x = random_array(rng, (3, n), dtype, offset=1.0)
    weight, bias = random_params(rng, (n,), dtype)
    check_layer_norm(x, -1, weight, bias)


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("shape", [(2, 3, 1), (2, 3, 7), (2, 5, 16), (2, 9, 33), (1, 4, 100),
                                   (3, 2, 1000), (2, 3, 5, 4)])
def test_strided_inner_lengths(simd, rng, dtype, shape):
    """axis=1 over (outer, reduce, inner...) with inner sizes around vector widths."""
    x = random_array(rng, shape, dtype, offset=-2.0)
    weight, bias = random_params(rng, (shape[1],), dtype)
    check_layer_norm(x, 1, weight, bias)


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("reduce", [16, 40, 64, 100, 128])
def test_strided_column_widths_give_the_same_bits(simd, rng, dtype, reduce):
    """Each position's result is its own, whatever column takes it: 16
    vectors, or 8 where that brings a column within 32 KB (float32 and
    float64 at AVX-512 for 40 and 64 rows, at AVX2 for 100 and 128, see
    column_vectors in forward_strided.c), 4 or 1 vectors, or one position
    (an inner length of 1 would be the row layout, with arithmetic of its own)."""
    x = random_array(rng, (2, reduce, 272), dtype, offset=-2.0)
    weight, bias = random_params(rng, (reduce,), dtype)
    y, rms = ln.layer_norm(x, 1, weight, bias), ln.rms_norm(x, 1, weight)
    # relative as well: the weight takes y beyond unit spread
    assert_close(y, ref.layer_norm(x, 1, weight, bias)[0])
    assert_close(rms, ref.rms_norm(x, 1, weight)[0])
    for part in (slice(3, 5), slice(5, 21), slice(16, 80), slice(128, 272)):
        narrow = np.ascontiguousarray(x[..., part])
        assert ln.layer_norm(narrow, 1, weight, bias).tobytes() == y[..., part].tobytes(), part
        assert ln.rms_norm(narrow, 1, weight).tobytes() == rms[..., part].tobytes(), part


@pytest.mark.parametrize("offset", [0.0, -2.0, 3e4])
def test_strided_float32_within_1e_6(simd, rng, offset):
    """float32 over the middle axis, unit-spread data with a common offset:
    within 1e-6 of the float64 reference, as the row layout.  The columns'
    Welford means gather roundings along each chunk of rows (LN_CHUNK_ROWS):
    with chunks of 64 y came up to 1.4e-6 away."""
    for reduce in (32, 48, 64, 96, 128, 256):
        x = random_array(rng, (8, reduce, 272), FLOAT32, offset=offset)
        assert_close(ln.layer_norm(x, 1), ref.layer_norm(x, 1)[0], rtol=0, what=f"reduce {reduce}")


def test_axes_of_length_one(rng):
    """Length-1 axes between normalized axes do not change anything."""
    x = random_array(rng, (3, 1, 4, 1, 5), FLOAT64)
    squeezed = x.reshape(3, 4, 5)
    assert_close(ln.layer_norm(x, (0, 2)), ln.layer_norm(squeezed, (0, 1)).reshape(x.shape))
    assert_close(ln.layer_norm(x, (2, 4)), ln.layer_norm(squeezed, (1, 2)).reshape(x.shape))
    assert_close(ln.layer_norm(x, (0, 1, 2)), ln.layer_norm(squeezed, (0, 1)).reshape(x.shape))
    for axes in axis_sets(5):
        check_layer_norm(x, axes)


def test_normalizing_a_length_one_axis_gives_bias(rng):
    x = random_array(rng, (4, 1), FLOAT32, offset=10.0)
    bias = np.array([0.25], np.float32)
    y, mean, rstd = ln.layer_norm(x, -1, np.array([3.0], np.float32), bias, return_stats=True)
    assert np.array_equal(y, np.full_like(x, 0.25))
    assert np.array_equal(mean, x)


def test_extreme_magnitudes(simd, rng):
    """Tiny and huge rows (whose variance is a normal float32) keep the accuracy."""
    base = random_array(rng, (4, 300), FLOAT64)
    for scale in (1e-18, 1e-10, 1e10, 1e18):
        x = (base * scale).astype(np.float32)
        y = ln.layer_norm(x, eps=0.0)
        assert np.all(np.isfinite(y)), scale
        assert_close(y, ref.layer_norm(x, eps=0.0)[0], tol=2e-6, what=f"scale {scale}")


@pytest.mark.parametrize("shape, axis", [((4, 300), -1), ((3, 5000), -1), ((2, 40000), -1),
                                         ((300, 4), 0), ((3, 300, 70), 1)],
                         ids=["short rows", "long rows", "split rows", "strided", "strided columns"])
def test_sums_of_squares_beyond_float32(simd, rng, shape, axis):
    """n * variance above the float32 range (std 1e36): the float32 sums
    overflow, and the row (or position) is summed again in float64 instead
    of normalizing to zeros, on every path."""
    x = random_array(rng, shape, FLOAT64, scale=1e36).astype(np.float32)
    with use_threads(2):
        assert_close(ln.layer_norm(x, axis, eps=0.0), ref.layer_norm(x, axis, eps=0.0)[0], tol=2e-6)
        assert_close(ln.rms_norm(x, axis, eps=0.0), ref.rms_norm(x, axis, eps=0.0)[0], tol=2e-6)


@pytest.mark.parametrize("cols", [3, 7, 15, 17, 30, 100, 1000])
@pytest.mark.parametrize("dtype", [FLOAT32] + ([BFLOAT16] if BFLOAT16 is not None else []))
def test_a_huge_value_anywhere_in_a_short_row(simd, dtype, cols):
    """A value whose square overflows float32 (1e20), at the row's start, in
    its whole vectors or among the elements after them (which the SIMD
    levels sum apart), takes the float64 sums: not rstd 0 and y 0."""
    for at in sorted({0, cols // 2, cols - 1}):
        x = np.ones((2, cols), np.float64)
        x[:, ::2] = -1
        x[:, at] = 1e20
        x = x.astype(dtype)
        for y, want in [(ln.layer_norm(x, eps=0.0), ref.layer_norm(x, eps=0.0)[0]),
                        (ln.rms_norm(x, eps=0.0), ref.rms_norm(x, eps=0.0)[0]),
                        (ln.add_layer_norm(x, np.zeros_like(x), eps=0.0)[0], ref.layer_norm(x, eps=0.0)[0])]:
            assert_close(y.astype(np.float64), want, tol=2e-6 if dtype == FLOAT32 else 1e-2, what=f"at {at}")


def test_non_finite_values_propagate(simd):
    x = np.ones((3, 40), np.float32)
    x[0, 5] = np.nan
    x[1, 7] = np.inf
    y = ln.layer_norm(x)
    assert np.all(np.isnan(y[0])) and np.all(np.isnan(y[1]))
    assert np.array_equal(y[2], np.zeros(40, np.float32))


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("cols", [16, 32, 64, 100, 128, 300])
def test_a_row_has_the_same_bits_in_any_group(simd, rng, dtype, cols):
    """Short rows are handled in groups of 8 or 16 whose lane sums are folded
    together; a row's result must not depend on which rows share its group,
    or where in the group it sits: slices at other offsets, and single rows,
    give the full call's bits (layer norm, RMS norm, the fused add)."""
    x = (rng.standard_normal((45, cols)) * 3 + 1).astype(dtype)
    r = rng.standard_normal((45, cols)).astype(dtype)
    weight, bias = random_params(rng, (cols,), dtype)
    full = ln.layer_norm(x, -1, weight, bias, return_stats=True)
    full_rms = ln.rms_norm(x, -1, weight, eps=1e-6, return_stats=True)
    full_add = ln.add_layer_norm(x, r, -1, weight, bias)
    for begin, end in [(0, 1), (3, 11), (7, 30), (17, 18), (29, 45)]:
        part = ln.layer_norm(x[begin:end], -1, weight, bias, return_stats=True)
        for got, want in zip(part, full):
            assert got.tobytes() == want[begin:end].tobytes(), f"layer_norm rows {begin}:{end}"
        part = ln.rms_norm(x[begin:end], -1, weight, eps=1e-6, return_stats=True)
        for got, want in zip(part, full_rms):
            assert got.tobytes() == want[begin:end].tobytes(), f"rms_norm rows {begin}:{end}"
        part = ln.add_layer_norm(x[begin:end], r[begin:end], -1, weight, bias)
        for got, want in zip(part, full_add):
            assert got.tobytes() == want[begin:end].tobytes(), f"add_layer_norm rows {begin}:{end}"


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("shape", [(9, 37), (6, 100), (6, 500), (5, 512), (12, 64), (3, 1000)])
def test_row_bits_do_not_depend_on_the_output_address(simd, rng, dtype, shape):
    """Rows stored through an output off a 64-byte line take their first
    elements as one masked vector, so that the rest of the stores are
    aligned (aligned_store_head); where that head lies depends on the
    address.  Outputs (y, and the fused add's sum) at every item offset
    within a line, and in place (y into x, the sum into the residual), give
    the allocated call's bits: rows of odd lengths (each row lies
    differently), and of whole vectors (every row of a pair lies alike),
    with weight and bias, without them, and for RMS norm."""
    x = (rng.standard_normal(shape) * 2 + 1).astype(dtype)
    r = rng.standard_normal(shape).astype(dtype)
    weight, bias = random_params(rng, shape[1:], dtype)
    calls = {
        "layer_norm": lambda out, x=x: ln.layer_norm(x, -1, weight, bias, out=out),
        "no params": lambda out, x=x: ln.layer_norm(x, -1, out=out),
        "rms_norm": lambda out, x=x: ln.rms_norm(x, -1, weight, eps=1e-6, out=out),
    }
    expected = {name: call(None) for name, call in calls.items()}
    expected_add = ln.add_layer_norm(x, r, -1, weight, bias)
    for offset in range(64 // np.dtype(dtype).itemsize):
        for name, call in calls.items():
            out = empty_off_a_line(shape, dtype, offset)
            call(out)
            assert out.tobytes() == expected[name].tobytes(), f"{name}, output {offset} items off a line"
            in_place = empty_off_a_line(shape, dtype, offset)
            in_place[...] = x
            call(in_place, x=in_place)
            assert in_place.tobytes() == expected[name].tobytes(), f"{name} in place, {offset} items off a line"
        out, sum_out = empty_off_a_line(shape, dtype, offset), empty_off_a_line(shape, dtype, offset)
        ln.add_layer_norm(x, r, -1, weight, bias, out=out, sum_out=sum_out)
        assert sum_out.tobytes() == expected_add[1].tobytes(), f"sum {offset} items off a line"
        assert out.tobytes() == expected_add[0].tobytes(), f"add_layer_norm, output {offset} items off a line"
        residual_stream = empty_off_a_line(shape, dtype, offset)
        residual_stream[...] = r
        y, _ = ln.add_layer_norm(x, residual_stream, -1, weight, bias, sum_out=residual_stream)
        assert residual_stream.tobytes() == expected_add[1].tobytes(), f"sum in place, {offset} items off a line"
        assert y.tobytes() == expected_add[0].tobytes(), f"add_layer_norm, sum in place {offset} items off a line"


MEGABYTE = 1 << 20


def arrays_a_megabyte_apart(shape, dtype, offsets_bytes):
    """Empty C-contiguous arrays of `shape`, the k-th starting k MB plus
    offsets_bytes[k] past one 1 MB boundary of one buffer."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    assert nbytes + max(offsets_bytes) < MEGABYTE
    buffer = np.empty((len(offsets_bytes) + 1) * MEGABYTE, np.uint8)
    base = (-buffer.ctypes.data) % MEGABYTE
    return [buffer[base + k * MEGABYTE + offset:base + k * MEGABYTE + offset + nbytes].view(dtype).reshape(shape)
            for k, offset in enumerate(offsets_bytes)]


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("shape", [(9, 37), (6, 500), (12, 512), (16, 64), (8, 768)])
def test_row_bits_do_not_depend_on_where_y_lies_against_x(simd, rng, dtype, shape):
    """An output just ahead of x modulo 1 MB is normalized from each row's
    end to its start, and rows one row apart modulo 1 MB are not paired
    (stores_alias_next_loads): the same bits as the allocated call, for y
    0 to 600 bytes and one row (plus a little) ahead of x, behind it, and
    for the fused add ahead of x, of the residual and of its stored sum."""
    itemsize = np.dtype(dtype).itemsize
    row_bytes = shape[1] * itemsize
    values = (rng.standard_normal(shape) * 2 + 1).astype(dtype)
    residual_values = rng.standard_normal(shape).astype(dtype)
    weight, bias = random_params(rng, shape[1:], dtype)
    expected = ln.layer_norm(values, -1, weight, bias)
    expected_plain = ln.layer_norm(values, -1)
    expected_rms = ln.rms_norm(values, -1, weight, eps=1e-6)
    expected_add = ln.add_layer_norm(values, residual_values, -1, weight, bias)
    aheads = sorted({0, itemsize, 16, 64, 96, 128, 200, 256, 512, 600, row_bytes, row_bytes + 64})
    for ahead in [a // itemsize * itemsize for a in aheads]:
        x, y = arrays_a_megabyte_apart(shape, dtype, [64, 64 + ahead])
        x[...] = values
        where = f"y {ahead} bytes ahead of x modulo 1 MB"
        assert ln.layer_norm(x, -1, weight, bias, out=y).tobytes() == expected.tobytes(), where
        assert ln.layer_norm(x, -1, out=y).tobytes() == expected_plain.tobytes(), where
        assert ln.rms_norm(x, -1, weight, eps=1e-6, out=y).tobytes() == expected_rms.tobytes(), where
        assert x.tobytes() == values.tobytes(), where
        y_behind, x_ahead = arrays_a_megabyte_apart(shape, dtype, [64, 64 + ahead])
        x_ahead[...] = values
        assert ln.layer_norm(x_ahead, -1, weight, bias, out=y_behind).tobytes() == expected.tobytes(), \
            f"y {ahead} bytes behind x"
        # the fused add: y ahead of x, of the residual and of the sum
        x, residual, sum_out, y = arrays_a_megabyte_apart(shape, dtype, [64, 64, 64, 64 + ahead])
        x[...], residual[...] = values, residual_values
        got = ln.add_layer_norm(x, residual, -1, weight, bias, out=y, sum_out=sum_out)
        assert got[0].tobytes() == expected_add[0].tobytes(), f"add_layer_norm, {where}"
        assert got[1].tobytes() == expected_add[1].tobytes(), f"add_layer_norm sum, {where}"
        # and the sum written into the residual, y ahead of it
        residual[...] = residual_values
        got = ln.add_layer_norm(x, residual, -1, weight, bias, out=y, sum_out=residual)
        assert got[0].tobytes() == expected_add[0].tobytes(), f"add_layer_norm, sum in place, {where}"
        assert residual.tobytes() == expected_add[1].tobytes(), f"add_layer_norm sum in place, {where}"


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("shape", [(2, 16, 200), (3, 7, 64), (2, 5, 37)])
def test_strided_bits_do_not_depend_on_where_y_lies_against_x(simd, rng, dtype, shape):
    """The strided kernel (normalizing axis 1) takes a column row's vectors
    from its last where y lies just ahead of x modulo 1 MB
    (ln_y_aliases_sources): the allocated call's bits, for layer norm, RMS
    norm and the fused add."""
    itemsize = np.dtype(dtype).itemsize
    values = (rng.standard_normal(shape) * 2 + 1).astype(dtype)
    residual_values = rng.standard_normal(shape).astype(dtype)
    weight, bias = random_params(rng, shape[1:2], dtype)
    expected = ln.layer_norm(values, 1, weight, bias)
    expected_rms = ln.rms_norm(values, 1, weight, eps=1e-6)
    expected_add = ln.add_layer_norm(values, residual_values, 1, weight, bias)
    for ahead in [a // itemsize * itemsize for a in (0, 16, 64, 100, 256, 512, 640)]:
        x, y = arrays_a_megabyte_apart(shape, dtype, [64, 64 + ahead])
        x[...] = values
        where = f"y {ahead} bytes ahead of x modulo 1 MB"
        assert ln.layer_norm(x, 1, weight, bias, out=y).tobytes() == expected.tobytes(), where
        assert ln.rms_norm(x, 1, weight, eps=1e-6, out=y).tobytes() == expected_rms.tobytes(), where
        x, residual, sum_out, y = arrays_a_megabyte_apart(shape, dtype, [64, 64, 64, 64 + ahead])
        x[...], residual[...] = values, residual_values
        got = ln.add_layer_norm(x, residual, 1, weight, bias, out=y, sum_out=sum_out)
        assert got[0].tobytes() == expected_add[0].tobytes(), f"add_layer_norm, {where}"
        assert got[1].tobytes() == expected_add[1].tobytes(), f"add_layer_norm sum, {where}"


def empty_past_a_megabyte(shape, dtype, offset_bytes):
    """An empty C-contiguous array of any size starting offset_bytes past a
    1 MB boundary (of a buffer of its own)."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    buffer = np.empty(nbytes + offset_bytes + MEGABYTE, np.uint8)
    start = (-buffer.ctypes.data) % MEGABYTE + offset_bytes
    return buffer[start:start + nbytes].view(dtype).reshape(shape)


# The fused add's sum just ahead of x or the residual modulo 1 MB is added
# from each row's end (add_span) only in calls from memory (x and residual
# of 8 MB and more), and streamed when the four arrays take 32 MB (and, in
# half precision, rows take 2 KB; float32/float64 rows of 1 KB also off a
# line): arrays of 4.5 MB and 8.5 MB cover both, and rows of 2**20 the few
# long rows that threads split.  y on a line streams; off a line, rows under
# 4 KB are staged (and float32/float64 sums stream along in rows of 2 KB).
SUM_AHEAD_CASES = [(4_500_000, 768), (8_500_000, 768), (8_500_000, 1024), (8_500_000, 1 << 20)]


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("array_bytes, cols", SUM_AHEAD_CASES)
def test_row_sum_bits_do_not_depend_on_where_the_sum_lies(simd, rng, dtype, array_bytes, cols):
    """add_layer_norm / add_rms_norm with sum_out 0 to 4 KB past x, or past
    the residual, modulo 1 MB (on a line or off it, so streamed or stored),
    y on a line or off it: the allocated call's y and sum, and x and
    residual unchanged."""
    itemsize = np.dtype(dtype).itemsize
    shape = (-(-array_bytes // (cols * itemsize)), cols)
    values = rng.standard_normal(shape).astype(dtype)
    residual_values = rng.standard_normal(shape).astype(dtype)
    weight, bias = random_params(rng, shape[1:], dtype)
    expected = ln.add_layer_norm(values, residual_values, -1, weight, bias)
    expected_rms = ln.add_rms_norm(values, residual_values, -1, weight)
    for ahead_of, y_offset in (("x", 0), ("residual", 0), ("x", 16)):
        for ahead in (0, 16, 64, 128, 4096 + 16):
            x = empty_past_a_megabyte(shape, dtype, 0 if ahead_of == "x" else MEGABYTE // 2)
            residual = empty_past_a_megabyte(shape, dtype, MEGABYTE // 2 if ahead_of == "x" else 0)
            sum_out = empty_past_a_megabyte(shape, dtype, ahead)
            y = empty_past_a_megabyte(shape, dtype, MEGABYTE // 4 + y_offset)
            x[...], residual[...] = values, residual_values
            where = f"sum {ahead} bytes ahead of {ahead_of} modulo 1 MB, y {y_offset} bytes off a line"
            ln.add_layer_norm(x, residual, -1, weight, bias, out=y, sum_out=sum_out)
            assert y.tobytes() == expected[0].tobytes(), where
            assert sum_out.tobytes() == expected[1].tobytes(), where
            ln.add_rms_norm(x, residual, -1, weight, out=y, sum_out=sum_out)
            assert y.tobytes() == expected_rms[0].tobytes(), f"add_rms_norm, {where}"
            assert sum_out.tobytes() == expected_rms[1].tobytes(), f"add_rms_norm, {where}"
            assert x.tobytes() == values.tobytes() and residual.tobytes() == residual_values.tobytes(), where


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_strided_sum_bits_do_not_depend_on_where_the_sum_lies(simd, rng, dtype):
    """The strided kernel adds a column row's vectors from its last where
    the fused add's sum lies just ahead of x or the residual modulo 1 MB, in
    calls that stream y (the four arrays 32 MB): the allocated call's bits."""
    shape = (8 * 4 // np.dtype(dtype).itemsize, 64, 4096)
    values = rng.standard_normal(shape).astype(dtype)
    residual_values = rng.standard_normal(shape).astype(dtype)
    weight, bias = random_params(rng, shape[1:2], dtype)
    expected = ln.add_layer_norm(values, residual_values, 1, weight, bias)
    for ahead_of in ("x", "residual"):
        for ahead in (0, 16, 64, 512, 4096 + 64):
            x = empty_past_a_megabyte(shape, dtype, 0 if ahead_of == "x" else MEGABYTE // 2)
            residual = empty_past_a_megabyte(shape, dtype, MEGABYTE // 2 if ahead_of == "x" else 0)
            sum_out = empty_past_a_megabyte(shape, dtype, ahead)
            x[...], residual[...] = values, residual_values
            where = f"sum {ahead} bytes ahead of {ahead_of} modulo 1 MB"
            y, _ = ln.add_layer_norm(x, residual, 1, weight, bias, sum_out=sum_out)
            assert y.tobytes() == expected[0].tobytes(), where
            assert sum_out.tobytes() == expected[1].tobytes(), where
            assert x.tobytes() == values.tobytes() and residual.tobytes() == residual_values.tobytes(), where


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("with_weight, with_bias", [(False, False), (False, True), (True, False), (True, True)])
def test_strided_bits_do_not_depend_on_the_output_address(simd, rng, dtype, with_weight, with_bias):
    """Over a middle axis, a position's bits must not depend on whether it
    falls in a vector column or among the positions handled one at a time:
    which it is depends on the shape and, for an output off a 64-byte line,
    on its address (the columns start at its first line).  Outputs at every
    offset, in place, and a narrower slice (its last positions left over)
    give the bits of the allocated call; with and without weight and bias
    (without a weight the two once contracted the multiply-add differently)."""
    shape = (3, 5, 64)
    x = (rng.standard_normal(shape) * 2 + 1).astype(dtype)
    weight = rng.uniform(0.5, 1.5, 5).astype(FLOAT32) if with_weight else None
    bias = rng.uniform(-1, 1, 5).astype(FLOAT32) if with_bias else None
    expected = ln.layer_norm(x, 1, weight, bias)
    expected_rms = ln.rms_norm(x, 1, weight, eps=1e-6)
    for offset in range(4):
        out = empty_off_a_line(shape, dtype, offset)
        ln.layer_norm(x, 1, weight, bias, out=out)
        assert out.tobytes() == expected.tobytes(), f"output {offset} items off a line"
        ln.rms_norm(x, 1, weight, eps=1e-6, out=out)
        assert out.tobytes() == expected_rms.tobytes(), f"rms output {offset} items off a line"
        in_place = empty_off_a_line(shape, dtype, offset)
        in_place[...] = x
        ln.layer_norm(in_place, 1, weight, bias, out=in_place)
        assert in_place.tobytes() == expected.tobytes(), f"in place {offset} items off a line"
    for inner in (17, 5):
        narrow = ln.layer_norm(np.ascontiguousarray(x[:, :, :inner]), 1, weight, bias)
        assert narrow.tobytes() == np.ascontiguousarray(expected[:, :, :inner]).tobytes()
