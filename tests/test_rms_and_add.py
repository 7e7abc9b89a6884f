"""rms_norm and rms_norm_backward against the reference and finite
differences; add_layer_norm / add_rms_norm against the unfused composition,
with out= / sum_out= and their errors."""
import numpy as np
import pytest

import layernorm as ln
from conftest import (FLOAT32, FLOAT64, assert_close, assert_sentinel, check_rms_norm,
                      check_rms_norm_backward, fill_sentinel, in_layout, keepdims_shape,
                      numeric_gradient, param_shape, random_array, random_params, ref,
                      shape_axis_cases, unchanged)

SHAPES = [(6,), (3, 5), (2, 3, 4), (2, 3, 2, 3)]
FLOATS = [FLOAT32, FLOAT64]
AXES_3D = [-1, 1, (0, 2), (1, 2), (0, 1, 2)]   # rows, strided, transposed, rows, all


# ---------------------------------------------------------------- rms_norm

@pytest.mark.parametrize("with_weight", [False, True], ids=["no-weight", "weight"])
@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("shape, axes", shape_axis_cases(SHAPES))
def test_rms_norm_every_axis_set(simd, rng, shape, axes, dtype, with_weight):
    x = random_array(rng, shape, dtype, offset=0.3)
    weight = random_params(rng, param_shape(shape, axes), dtype)[0] if with_weight else None
    y, rrms = check_rms_norm(x, axes, weight)
    assert rrms.shape == keepdims_shape(shape, axes)
    assert np.array_equal(ln.rms_norm(x, axes, weight), y)


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("shape, axis", [((5, 1000), -1), ((3, 4097), -1), ((2, 33, 17), 1),
                                         ((1, 70000), -1), ((4, 6, 5), (0, 2))])
def test_rms_norm_kernel_paths(simd, rng, dtype, shape, axis):
    x = random_array(rng, shape, dtype, offset=-1.0)
    weight = random_params(rng, param_shape(shape, axis), dtype)[0]
    check_rms_norm(x, axis, weight)


@pytest.mark.parametrize("dtype, default", [(FLOAT32, np.finfo(np.float32).eps),
                                            (FLOAT64, np.finfo(np.float64).eps),
                                            (np.int64, np.finfo(np.float64).eps)], ids=str)
def test_rms_norm_default_eps(dtype, default):
    """eps=None is float32's machine epsilon, float64's for float64 data.  The data is
    small enough for eps to matter."""
    x = np.array([[1e-4, -2e-4, 3e-4], [2e-8, 1e-8, -1e-8]])
    if np.dtype(dtype).kind == "i":
        x = np.array([[0, 0, 0], [0, 1, 0]])
    x = x.astype(dtype)
    y, rrms = ln.rms_norm(x, return_stats=True)
    assert np.array_equal(y, ln.rms_norm(x, eps=float(default)))
    _, expected = ref.rms_norm(x.astype(np.float64), eps=float(default))
    assert_close(rrms, expected, tol=1e-6 if dtype == FLOAT32 else 1e-12)
    other = np.finfo(np.float64 if default == np.finfo(np.float32).eps else np.float32).eps
    if np.dtype(dtype).kind == "f":
        assert not np.allclose(y, ln.rms_norm(x, eps=float(other)), rtol=1e-3)


def test_rms_norm_eps(rng):
    x = random_array(rng, (3, 8), FLOAT64, scale=0.01)
    for eps in (0.0, 1e-6, 1e-3, 1.0):
        assert_close(ln.rms_norm(x, eps=eps), ref.rms_norm(x, eps=eps)[0])


def test_rms_norm_zero_rows_and_empty():
    y, rrms = ln.rms_norm(np.zeros((2, 5), np.float32), return_stats=True)
    assert np.array_equal(y, np.zeros((2, 5), np.float32))
    assert_close(rrms, np.full((2, 1), 1 / np.sqrt(np.finfo(np.float32).eps)))
    y, rrms = ln.rms_norm(np.zeros((3, 0)), return_stats=True)
    assert y.shape == (3, 0) and rrms.shape == (3, 1) and np.all(np.isnan(rrms))


@pytest.mark.parametrize("layout", ["F", "strided", "negative", "transposed", "byteswapped"])
@pytest.mark.parametrize("axis", AXES_3D)
def test_rms_norm_layouts_and_out(rng, layout, axis):
    x = random_array(rng, (4, 5, 6), FLOAT32)
    weight = random_params(rng, param_shape(x.shape, axis), FLOAT32)[0]
    expected = ln.rms_norm(x, axis, weight)
    assert np.array_equal(ln.rms_norm(in_layout(x, layout), axis, weight), expected)
    out = in_layout(np.zeros_like(x), layout if layout != "byteswapped" else "C")
    assert ln.rms_norm(x, axis, weight, out=out) is out
    assert np.array_equal(out, expected)
    inplace = in_layout(x, layout if layout != "byteswapped" else "F")
    assert ln.rms_norm(inplace, axis, weight, out=inplace) is inplace
    assert np.array_equal(inplace, expected)


def test_rms_norm_errors(rng):
    x = random_array(rng, (4, 6), FLOAT32)
    out = fill_sentinel(np.empty_like(x))
    for kwargs, error, name in [({"weight": np.ones(4, np.float32)}, ValueError, "weight"),
                                ({"eps": -1.0}, ValueError, "eps"),
                                ({"eps": float("nan")}, ValueError, "eps"),
                                ({"eps": "1"}, TypeError, "eps"),
                                ({"axis": 2}, ValueError, "axis")]:
        with pytest.raises(error, match=name):
            ln.rms_norm(x, out=out, **kwargs)
        assert_sentinel(out)
    with pytest.raises(ValueError, match="out"):
        ln.rms_norm(x, out=np.empty((4, 5), np.float32))
    with pytest.raises(TypeError, match="out"):
        ln.rms_norm(x, out=np.empty((4, 6), np.float64))
    with pytest.raises(TypeError, match="x"):
        ln.rms_norm(x.astype(np.complex64))


def test_rms_norm_rejects_bias(rng):
    with pytest.raises(TypeError):
        ln.rms_norm(random_array(rng, (2, 3)), -1, None, None, bias=np.zeros(3))


# ---------------------------------------------------------------- rms_norm_backward

@pytest.mark.parametrize("with_weight", [False, True], ids=["no-weight", "weight"])
@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("shape, axes", shape_axis_cases(SHAPES))
def test_rms_backward_every_axis_set(simd, rng, shape, axes, dtype, with_weight):
    x = random_array(rng, shape, dtype, offset=0.2)
    dy = random_array(rng, shape, dtype)
    weight = random_params(rng, param_shape(shape, axes), dtype)[0] if with_weight else None
    check_rms_norm_backward(x, dy, axes, weight)


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("shape, axis", [((5, 1000), -1), ((13, 2048), -1), ((2, 33, 17), 1), ((1, 70000), -1),
                                         ((4, 6, 5), (0, 2)), ((65536, 4), -1)])
def test_rms_backward_kernel_paths(simd, rng, dtype, shape, axis):
    x = random_array(rng, shape, dtype, offset=1.0)
    dy = random_array(rng, shape, dtype, offset=0.5)
    weight = random_params(rng, param_shape(shape, axis), dtype)[0]
    check_rms_norm_backward(x, dy, axis, weight)


@pytest.mark.parametrize("with_weight", [False, True], ids=["no-weight", "weight"])
@pytest.mark.parametrize("shape, axes", shape_axis_cases(SHAPES))
def test_rms_backward_against_finite_differences(rng, shape, axes, with_weight):
    x = random_array(rng, shape, FLOAT64)
    g = random_array(rng, shape, FLOAT64)
    weight = random_params(rng, param_shape(shape, axes), FLOAT64)[0]
    used_weight = weight if with_weight else None

    def loss():
        return float(np.sum(ln.rms_norm(x, axes, used_weight, eps=1e-5) * g))

    _, rrms = ln.rms_norm(x, axes, used_weight, eps=1e-5, return_stats=True)
    dx, dweight = ln.rms_norm_backward(g, x, rrms, axes, used_weight)
    np.testing.assert_allclose(dx, numeric_gradient(loss, x), atol=1e-7, err_msg="dx")
    if not with_weight:
        used_weight = weight = np.ones_like(weight)
    np.testing.assert_allclose(dweight, numeric_gradient(loss, weight), atol=1e-7, err_msg="dweight")


def test_rms_backward_dtypes_and_errors(rng):
    x = random_array(rng, (4, 5, 6), FLOAT32)
    _, rrms = ln.rms_norm(x, 1, return_stats=True)
    dx, dweight = ln.rms_norm_backward(x, x, rrms, 1)
    assert dx.dtype == np.float32 and dweight.dtype == np.float32 and dweight.shape == (5,)
    cases = [((x[:, :4], x, rrms, 1), ValueError, "dy"),
             ((x, x, rrms[:, :, :3], 1), ValueError, "rrms"),
             ((x, x, rrms, 1, np.ones(6, np.float32)), ValueError, "weight"),
             ((x.astype(np.float64), x, rrms, 1), TypeError, "dy"),
             ((x, x, rrms.astype(np.complex64), 1), TypeError, "rrms"),
             ((x, x, rrms, 3), ValueError, "axis")]
    for args, error, name in cases:
        with pytest.raises(error, match=name):
            ln.rms_norm_backward(*args)


# ---------------------------------------------------------------- add_layer_norm / add_rms_norm

def unfused(kind, x, r, axis, weight, bias, eps):
    s = x + r
    if kind == "layer":
        return ln.layer_norm(s, axis, weight, bias, eps), s
    return ln.rms_norm(s, axis, weight, eps), s


def fused(kind, x, r, axis, weight, bias, eps, **kwargs):
    if kind == "layer":
        return ln.add_layer_norm(x, r, axis, weight, bias, eps, **kwargs)
    return ln.add_rms_norm(x, r, axis, weight, eps, **kwargs)


KINDS = [pytest.param("layer", id="add_layer_norm"), pytest.param("rms", id="add_rms_norm")]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("shape, axis", [((4, 5, 6), -1), ((4, 5, 6), 1), ((4, 5, 6), (0, 2)),
                                         ((4, 5, 6), (0, 1, 2)), ((7, 1000), -1), ((2, 70000), -1),
                                         ((1, 1 << 17), -1), ((3, 16, 33), 1), ((5, 3), 0)])
def test_fused_add_equals_unfused_bitwise(simd, rng, kind, dtype, shape, axis):
    x = random_array(rng, shape, dtype, offset=2.0)
    r = random_array(rng, shape, dtype, scale=3.0)
    weight, bias = random_params(rng, param_shape(shape, axis), dtype)
    eps = 1e-5 if kind == "layer" else None
    y, s = fused(kind, x, r, axis, weight, bias, eps)
    ey, es = unfused(kind, x, r, axis, weight, bias, eps)
    assert s.dtype == y.dtype == dtype
    assert np.array_equal(s, es), "s != x + residual"
    assert np.array_equal(y, ey), "y != normalize(x + residual)"
    # and the composition is right
    reference = ref.layer_norm if kind == "layer" else ref.rms_norm
    args = (weight, bias) if kind == "layer" else (weight,)
    assert_close(y, reference(es, axis, *args)[0], dtype)


@pytest.mark.parametrize("kind", KINDS)
def test_fused_add_defaults(rng, kind):
    x = random_array(rng, (3, 16), FLOAT32, scale=0.001)
    r = random_array(rng, (3, 16), FLOAT32, scale=0.001)
    y, s = ln.add_layer_norm(x, r) if kind == "layer" else ln.add_rms_norm(x, r)
    expected = ln.layer_norm(x + r) if kind == "layer" else ln.rms_norm(x + r)
    assert np.array_equal(y, expected)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("axis", AXES_3D)
@pytest.mark.parametrize("layout", ["C", "F", "negative", "strided"])
def test_sum_out_is_residual_in_place(simd, rng, kind, axis, layout):
    shape = (4, 5, 6)
    x0, r0 = random_array(rng, shape, FLOAT32), random_array(rng, shape, FLOAT32)
    weight, bias = random_params(rng, param_shape(shape, axis), FLOAT32)
    ey, es = unfused(kind, x0, r0, axis, weight, bias, 1e-5)
    x, r = in_layout(x0, layout), in_layout(r0, layout)
    with unchanged(x):
        y, s = fused(kind, x, r, axis, weight, bias, 1e-5, sum_out=r)
    assert s is r and np.array_equal(r, es)
    assert np.array_equal(y, ey)
    # the transformer pattern: residual stream updated in place, y written over x
    x, r = in_layout(x0, layout), in_layout(r0, layout)
    y, s = fused(kind, x, r, axis, weight, bias, 1e-5, out=x, sum_out=r)
    assert y is x and s is r
    assert np.array_equal(x, ey) and np.array_equal(r, es)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("axis", [-1, 1, (0, 2)])
def test_fused_add_preallocated_outputs(rng, kind, axis):
    shape = (4, 5, 6)
    x, r = random_array(rng, shape, FLOAT64), random_array(rng, shape, FLOAT64)
    ey, es = unfused(kind, x, r, axis, None, None, 1e-5)
    for out, sum_out in [(np.empty(shape), np.empty(shape)),
                         (np.empty(shape, order="F"), np.empty(shape[::-1]).T),
                         (np.empty(shape), None), (None, np.empty(shape)), (None, x)]:
        result_y, result_s = fused(kind, x.copy(), r, axis, None, None, 1e-5, out=out, sum_out=sum_out)
        if out is not None:
            assert result_y is out
        if sum_out is not None:
            assert result_s is sum_out
        assert np.array_equal(result_y, ey) and np.array_equal(result_s, es)


@pytest.mark.parametrize("kind", KINDS)
def test_sum_out_is_x(rng, kind):
    x, r = random_array(rng, (5, 7), FLOAT32), random_array(rng, (5, 7), FLOAT32)
    ey, es = unfused(kind, x, r, -1, None, None, 1e-5)
    y, s = fused(kind, x, r, -1, None, None, 1e-5, sum_out=x)
    assert s is x and np.array_equal(x, es) and np.array_equal(y, ey)


@pytest.mark.parametrize("kind", KINDS)
def test_fused_add_inputs_unchanged(rng, kind):
    x, r = random_array(rng, (4, 5, 6), FLOAT32), random_array(rng, (4, 5, 6), FLOAT32)
    for axis in AXES_3D:
        with unchanged(x, r):
            fused(kind, x, r, axis, None, None, 1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_residual_errors(rng, kind):
    x = random_array(rng, (4, 6), FLOAT32)
    cases = [(np.ones(6, np.float32), ValueError, r"residual.*\(6,\)"),
             (np.ones((6, 4), np.float32), ValueError, "residual"),
             (np.ones((4, 6, 1), np.float32), ValueError, "residual"),
             (np.ones((4, 6), np.float64), TypeError, "residual.*float64"),
             (np.ones((4, 6), np.float16), TypeError, "residual"),
             (np.ones((4, 6), np.complex64), TypeError, "residual"),
             (None, TypeError, "residual")]
    for residual, error, message in cases:
        with pytest.raises(error, match=message):
            fused(kind, x, residual, -1, None, None, 1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_residual_as_list(rng, kind):
    x, r = random_array(rng, (3, 4), FLOAT32), random_array(rng, (3, 4), FLOAT32)
    y, s = fused(kind, x, r.tolist(), -1, None, None, 1e-5)
    assert np.array_equal(s, x + r) and s.dtype == np.float32


def read_only(shape, dtype=np.float32):
    a = fill_sentinel(np.empty(shape, dtype))
    a.flags.writeable = False
    return a


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", ["out", "sum_out"])
@pytest.mark.parametrize("make_bad, error", [
    (lambda: fill_sentinel(np.empty((4, 5), np.float32)), ValueError),
    (lambda: fill_sentinel(np.empty((4, 6), np.float64)), TypeError),
    (lambda: read_only((4, 6)), ValueError),
], ids=["shape", "dtype", "read-only"])
def test_out_and_sum_out_errors_write_nothing(rng, kind, name, make_bad, error):
    x, r = random_array(rng, (4, 6), FLOAT32), random_array(rng, (4, 6), FLOAT32)
    bad = make_bad()
    good = fill_sentinel(np.empty((4, 6), np.float32))
    other = "sum_out" if name == "out" else "out"
    with unchanged(x, r), pytest.raises(error, match=name):
        fused(kind, x, r, -1, None, None, 1e-5, **{name: bad, other: good})
    assert_sentinel(bad)
    assert_sentinel(good)


@pytest.mark.parametrize("kind", KINDS)
def test_out_and_sum_out_must_differ(rng, kind):
    x, r = random_array(rng, (4, 6), FLOAT32), random_array(rng, (4, 6), FLOAT32)
    both = fill_sentinel(np.empty((4, 6), np.float32))
    with pytest.raises(ValueError, match="out.*sum_out|sum_out.*out"):
        fused(kind, x, r, -1, None, None, 1e-5, out=both, sum_out=both)
    assert_sentinel(both)
    buffer = fill_sentinel(np.empty((5, 6), np.float32))
    with pytest.raises(ValueError, match="out.*sum_out|sum_out.*out"):
        fused(kind, x, r, -1, None, None, 1e-5, out=buffer[:4], sum_out=buffer[1:])
    assert_sentinel(buffer)
    with pytest.raises(ValueError, match="out.*sum_out|sum_out.*out"):
        fused(kind, x, r, -1, None, None, 1e-5, out=x, sum_out=x)


@pytest.mark.parametrize("kind", KINDS)
def test_fused_add_empty(kind):
    x = np.zeros((0, 4), np.float32)
    y, s = fused(kind, x, x, -1, None, None, 1e-5)
    assert y.shape == s.shape == (0, 4) and y.dtype == s.dtype == np.float32


ALIASES = [("x", None), ("residual", None), (None, "x"), (None, "residual"), ("x", "residual"),
           ("residual", "x")]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("out_name, sum_name", ALIASES)
@pytest.mark.parametrize("shape, axis", [((6, 40), -1), ((4, 5, 6), 1), ((4, 5, 6), (0, 2)),
                                         ((2, 1 << 17), -1), ((3, 16, 1000), 1)])
def test_outputs_aliasing_inputs(simd, rng, kind, out_name, sum_name, shape, axis):
    """out and sum_out may be x or residual themselves (the in-place residual stream)."""
    x, r = random_array(rng, shape, FLOAT32), random_array(rng, shape, FLOAT32, offset=5.0)
    ey, es = unfused(kind, x, r, axis, None, None, 1e-5)
    arrays = {"x": x, "residual": r, None: None}
    y, s = fused(kind, x, r, axis, None, None, 1e-5, out=arrays[out_name], sum_out=arrays[sum_name])
    assert y is arrays[out_name] or out_name is None
    assert s is arrays[sum_name] or sum_name is None
    assert np.array_equal(y, ey), "y"
    assert np.array_equal(s, es), "s"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("target", ["out", "sum_out"])
@pytest.mark.parametrize("source", ["x", "residual"])
@pytest.mark.parametrize("shift", [1, -2])
def test_outputs_partially_overlapping_inputs(rng, kind, target, source, shift):
    """An output overlapping x or residual partially: results as computed from the
    original inputs, and the rest of the shared buffer untouched."""
    rows, cols = 8, 32
    buffer = random_array(rng, (rows + abs(shift), cols), FLOAT32)
    original = buffer.copy()
    in_rows = slice(0, rows) if shift > 0 else slice(-shift, rows - shift)
    out_rows = slice(shift, rows + shift) if shift > 0 else slice(0, rows)
    inputs = {"x": random_array(rng, (rows, cols), FLOAT32),
              "residual": random_array(rng, (rows, cols), FLOAT32)}
    inputs[source] = buffer[in_rows]
    ey, es = unfused(kind, inputs["x"].copy(), inputs["residual"].copy(), -1, None, None, 1e-5)
    output = buffer[out_rows]
    y, s = fused(kind, inputs["x"], inputs["residual"], -1, None, None, 1e-5, **{target: output})
    assert (y if target == "out" else s) is output
    assert np.array_equal(output, ey if target == "out" else es)
    assert np.array_equal(s if target == "out" else y, es if target == "out" else ey)
    covered = np.zeros(len(buffer), bool)
    covered[out_rows] = True
    assert np.array_equal(buffer[~covered], original[~covered])
