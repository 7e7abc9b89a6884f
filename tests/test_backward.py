"""layer_norm_backward: against the analytic float64 reference, against
finite differences of layer_norm, accuracy of the parameter gradients,
layouts, dtypes and argument errors."""
import numpy as np
import pytest

import layernorm as ln
from conftest import (BFLOAT16, FLOAT16, FLOAT32, FLOAT64, assert_close, check_layer_norm_backward,
                      check_rms_norm_backward, in_layout, keepdims_shape, numeric_gradient, param_shape,
                      random_array, random_params, ref, shape_axis_cases, stats_dtype, use_threads)

SHAPES = [(5,), (3, 4), (2, 3, 4), (2, 3, 2, 3)]


@pytest.mark.parametrize("with_weight", [False, True], ids=["no-weight", "weight"])
@pytest.mark.parametrize("dtype", [FLOAT32, FLOAT64], ids=str)
@pytest.mark.parametrize("shape, axes", shape_axis_cases(SHAPES + [(3, 1, 4, 2)]))
def test_against_reference_every_axis_set(simd, rng, shape, axes, dtype, with_weight):
    x = random_array(rng, shape, dtype, offset=0.5)
    dy = random_array(rng, shape, dtype)
    weight = random_params(rng, param_shape(shape, axes), dtype)[0] if with_weight else None
    check_layer_norm_backward(x, dy, axes, weight)


@pytest.mark.parametrize("with_weight", [False, True], ids=["no-weight", "weight"])
@pytest.mark.parametrize("shape, axes", shape_axis_cases(SHAPES))
def test_against_finite_differences(rng, shape, axes, with_weight):
    """d/d(x, weight, bias) of sum(layer_norm(x, weight, bias) * g), in float64."""
    x = random_array(rng, shape, FLOAT64)
    g = random_array(rng, shape, FLOAT64)
    weight, bias = random_params(rng, param_shape(shape, axes), FLOAT64)
    if not with_weight:
        weight = None

    def loss():
        return float(np.sum(ln.layer_norm(x, axes, weight, bias) * g))

    _, mean, rstd = ln.layer_norm(x, axes, weight, bias, return_stats=True)
    dx, dweight, dbias = ln.layer_norm_backward(g, x, mean, rstd, axes, weight)
    np.testing.assert_allclose(dx, numeric_gradient(loss, x), atol=1e-7, err_msg="dx")
    np.testing.assert_allclose(dbias, numeric_gradient(loss, bias), atol=1e-7, err_msg="dbias")
    if weight is None:     # dweight is still the gradient for a weight of ones
        weight = np.ones(param_shape(shape, axes))
    np.testing.assert_allclose(dweight, numeric_gradient(loss, weight), atol=1e-7, err_msg="dweight")


@pytest.mark.parametrize("dtype", [FLOAT32, FLOAT64], ids=str)
@pytest.mark.parametrize("shape, axis", [((7, 1000), -1), ((40, 1024), -1), ((13, 2048), -1), ((10, 8192), -1),
                                         ((3, 4097), -1), ((2, 64, 9), 1),
                                         ((4, 6, 5, 33), (1, 2)), ((5, 8, 3), (0, 2)),
                                         ((1, 50000), -1), ((20, 20001), -1), ((3, 1 << 19), -1),
                                         ((18, 180000), -1), ((2, 130, 300), 1)])
def test_kernel_paths(simd, rng, dtype, shape, axis):
    """Row, strided, transposed and long-row layouts (rows: row groups whose
    dx runs in steps of rows, rows a multiple of 4 KB apart in shorter steps
    than a group; long rows: one group of rows, several groups summed in
    float64, several summed in place, groups of four rows (their last one
    shorter); strided: columns of 16, 4 and 1 vectors and single positions,
    reduce sums over several chunks of rows)."""
    x = random_array(rng, shape, dtype, offset=3.0)
    dy = random_array(rng, shape, dtype)
    weight = random_params(rng, param_shape(shape, axis), dtype)[0]
    check_layer_norm_backward(x, dy, axis, weight)


# Calls from memory whose dx is streamed (x, dy and dx of 32 MB or more, rows
# of whole lines) take their rows one at a time (backward_row_block_by_rows)
# at the levels that do (half precision: rows of 1 KB and more, not at the
# baseline).  Row blocks of 125 rows (the last of 106; half precision 128 and
# 86): chains of carried rows that end before LN_CARRIED_ROWS.
ROW_AT_A_TIME_CASES = [
    pytest.param(FLOAT32, (2731, 1024), id="float32-4KB-rows"),
    pytest.param(FLOAT32, (43691, 64), id="float32-256B-rows"),
    pytest.param(FLOAT64, (2731, 512), id="float64"),
    pytest.param(FLOAT16, (5462, 1024), id="float16"),
    pytest.param(BFLOAT16, (5462, 1024), id="bfloat16",
                 marks=pytest.mark.skipif(BFLOAT16 is None, reason="ml_dtypes not installed")),
]


@pytest.mark.parametrize("dtype, shape", ROW_AT_A_TIME_CASES)
def test_calls_from_memory_one_row_at_a_time(simd, rng, dtype, shape):
    """Against the reference (layer norm with a weight, RMS norm without),
    the same bits at 1 and 2 threads, and dx rows with the bits of a small
    call's (whose rows go in groups)."""
    x = random_array(rng, shape, dtype, offset=3.0)
    dy = random_array(rng, shape, dtype)
    weight = random_params(rng, shape[1:], stats_dtype(dtype))[0]
    _, mean, rstd = ln.layer_norm(x, -1, weight, return_stats=True)
    with use_threads(2):
        grads = check_layer_norm_backward(x, dy, -1, weight)
        rms_grads = check_rms_norm_backward(x, dy, -1)
    with use_threads(1):
        again = ln.layer_norm_backward(dy, x, mean, rstd, -1, weight)
        _, rrms = ln.rms_norm(x, -1, return_stats=True)
        rms_again = ln.rms_norm_backward(dy, x, rrms, -1)
    for got, expected in zip(grads + rms_grads, again + rms_again):
        assert got.tobytes() == expected.tobytes(), "1 and 2 threads differ"
    small = ln.layer_norm_backward(dy[-3:], x[-3:], mean[-3:], rstd[-3:], -1, weight)[0]
    assert grads[0][-3:].tobytes() == small.tobytes()


@pytest.mark.parametrize("shape, axis", [((262144, 8), -1), ((131072, 64), -1), ((4096, 64, 4), 1),
                                         ((16, 32, 8192), 1), ((512, 8192), -1)])
def test_parameter_gradients_accurate_over_many_rows(simd, rng, shape, axis):
    """float32 dweight/dbias within 1e-5 relative error when summing 262144 rows
    (row blocks), 131072 rows (one at a time), strided positions one at a
    time, 131072 strided positions (in columns of vectors) or 512 long rows
    (running sums of 16 rows).

    dy has a large component along xhat and a non-zero mean, so dweight and
    dbias are large sums that a plain float32 accumulation would get wrong."""
    x = random_array(rng, shape, FLOAT32, offset=1.0)
    _, mean, rstd = ln.layer_norm(x, axis, return_stats=True)
    xhat = (x - mean) * rstd
    dy = (1.0 + 0.5 * xhat + 0.1 * rng.standard_normal(shape)).astype(np.float32)
    _, dweight, dbias = ln.layer_norm_backward(dy, x, mean, rstd, axis)
    _, rdweight, rdbias = ref.layer_norm_backward(dy, x, mean, rstd, axis)
    for got, expected in ((dweight, rdweight), (dbias, rdbias)):
        error = np.abs(got.astype(np.float64) - expected) / np.abs(expected)
        assert error.max() <= 1e-5, error.max()


def test_single_element_normalized_shape_has_zero_weight_gradient(simd, rng):
    """normalized_shape (1,): xhat == 0, so dweight is exactly 0 (PyTorch's folded
    form gives a non-zero value here); dx is 0 up to rounding of rstd * dy."""
    for dtype in (FLOAT32, FLOAT64):
        x = random_array(rng, (64, 1), dtype, offset=100.0)
        dy = random_array(rng, (64, 1), dtype)
        weight = np.array([1.5], dtype)
        _, mean, rstd = ln.layer_norm(x, -1, weight, return_stats=True)
        dx, dweight, dbias = ln.layer_norm_backward(dy, x, mean, rstd, -1, weight)
        assert np.array_equal(dweight, np.zeros(1, dtype))
        assert np.all(np.abs(dx) <= 4 * np.finfo(dtype).eps * rstd * weight * np.abs(dy))
        assert_close(dbias, dy.sum(axis=0, dtype=np.float64), tol=1e-6)


@pytest.mark.parametrize("dtype", [FLOAT32, FLOAT64], ids=str)
def test_output_shapes_and_dtypes(rng, dtype):
    shape, axis = (3, 4, 5), (0, 2)
    x = random_array(rng, shape, dtype)
    _, mean, rstd = ln.layer_norm(x, axis, return_stats=True)
    dx, dweight, dbias = ln.layer_norm_backward(x, x, mean, rstd, axis)
    assert dx.shape == shape and dx.dtype == dtype
    assert dweight.shape == dbias.shape == (3, 5)
    assert dweight.dtype == dbias.dtype == stats_dtype(dtype)
    weight = np.ones((3, 5), dtype)
    _, dweight, dbias = ln.layer_norm_backward(x, x, mean, rstd, axis, weight)
    assert dweight.dtype == dbias.dtype == dtype


@pytest.mark.parametrize("layout", ["F", "strided", "negative", "transposed", "byteswapped"])
@pytest.mark.parametrize("axis", [-1, 1, (0, 2)])
def test_layouts(rng, layout, axis):
    shape = (4, 5, 6)
    x = random_array(rng, shape, FLOAT64)
    dy = random_array(rng, shape, FLOAT64)
    weight = random_params(rng, param_shape(shape, axis), FLOAT64)[0]
    _, mean, rstd = ln.layer_norm(x, axis, weight, return_stats=True)
    expected = ln.layer_norm_backward(dy, x, mean, rstd, axis, weight)
    got = ln.layer_norm_backward(in_layout(dy, layout), in_layout(x, layout), in_layout(mean, layout),
                                 in_layout(rstd, layout), axis, in_layout(weight, layout))
    for g, e in zip(got, expected):
        assert np.array_equal(g, e)


def test_array_likes_and_reference_statistics(rng):
    """Lists are accepted; float64 reference statistics work with float64 data."""
    x = random_array(rng, (3, 4), FLOAT64)
    dy = random_array(rng, (3, 4), FLOAT64)
    _, mean, rstd = ref.layer_norm(x)
    expected = ln.layer_norm_backward(dy, x, mean, rstd)
    got = ln.layer_norm_backward(dy.tolist(), x.tolist(), mean.tolist(), rstd.tolist())
    for g, e in zip(got, expected):
        assert np.array_equal(g, e)
    for g, e in zip(got, ref.layer_norm_backward(dy, x, mean, rstd)):
        assert_close(g, e)


def test_empty_arrays():
    x = np.zeros((0, 5), np.float32)
    dx, dweight, dbias = ln.layer_norm_backward(x, x, np.zeros((0, 1), np.float32),
                                                np.ones((0, 1), np.float32))
    assert dx.shape == (0, 5) and dx.dtype == np.float32
    assert np.array_equal(dweight, np.zeros(5)) and np.array_equal(dbias, np.zeros(5))
    x = np.zeros((3, 0))
    dx, dweight, dbias = ln.layer_norm_backward(x, x, np.zeros((3, 1)), np.ones((3, 1)))
    assert dx.shape == (3, 0) and dweight.shape == dbias.shape == (0,)


def test_inputs_equal_to_outputs_are_allowed(rng):
    """dy and x may be the same array."""
    x = random_array(rng, (4, 9), FLOAT64)
    _, mean, rstd = ln.layer_norm(x, return_stats=True)
    got = ln.layer_norm_backward(x, x, mean, rstd)
    expected = ln.layer_norm_backward(x.copy(), x, mean, rstd)
    for g, e in zip(got, expected):
        assert np.array_equal(g, e)


# ---------------------------------------------------------------- errors

@pytest.fixture
def case(rng):
    x = random_array(rng, (4, 5, 6), FLOAT32)
    _, mean, rstd = ln.layer_norm(x, 1, return_stats=True)
    return {"dy": x.copy(), "x": x, "mean": mean, "rstd": rstd, "axis": 1,
            "weight": np.ones(5, np.float32)}


@pytest.mark.parametrize("name, shape", [("dy", (4, 5, 7)), ("dy", (5, 4, 6)), ("dy", (4, 5, 6, 1)),
                                         ("mean", (4, 5, 6)), ("mean", (4, 6)), ("rstd", (1, 1, 6)),
                                         ("rstd", (4, 1, 6, 1)), ("weight", (6,)), ("weight", (5, 1))])
def test_shape_mismatch_names_the_argument(case, name, shape):
    case[name] = np.ones(shape, np.float32)
    with pytest.raises(ValueError, match=name) as info:
        ln.layer_norm_backward(**case)
    assert str(shape) in str(info.value)


def test_x_shape_checked_against_statistics(case):
    case["x"] = case["x"][:, :, :5]
    with pytest.raises(ValueError, match="dy|mean|x"):
        ln.layer_norm_backward(**case)


@pytest.mark.parametrize("dtype", [np.float64, np.float16])
def test_dy_dtype_mismatch_is_a_type_error(case, dtype):
    case["dy"] = case["dy"].astype(dtype)
    with pytest.raises(TypeError, match="dy"):
        ln.layer_norm_backward(**case)


@pytest.mark.parametrize("name", ["dy", "x", "rstd"])
def test_missing_arrays_are_type_errors_naming_them(case, name):
    """None for an array the backward needs: a TypeError that names it (dy
    was turned into a NaN scalar and reported as of the wrong shape)."""
    case[name] = None
    with pytest.raises(TypeError, match=rf"^{name}\b"):
        ln.layer_norm_backward(**case)
    args = dict(case, rrms=case["rstd"])
    del args["mean"], args["rstd"]
    if name == "rstd":
        args["rrms"] = None
    with pytest.raises(TypeError, match=rf"^{'rrms' if name == 'rstd' else name}\b"):
        ln.rms_norm_backward(**args)


@pytest.mark.parametrize("name", ["dy", "x", "mean", "rstd", "weight"])
def test_complex_arguments_are_type_errors(case, name):
    case[name] = np.asarray(case[name]).astype(np.complex64)
    with pytest.raises(TypeError, match=name):
        ln.layer_norm_backward(**case)


def test_statistics_shape_is_keepdims(case):
    assert case["mean"].shape == keepdims_shape((4, 5, 6), 1)
    case["mean"] = case["mean"].squeeze(1)
    with pytest.raises(ValueError, match="mean"):
        ln.layer_norm_backward(**case)
