"""Argument errors (type, message, nothing written), `out=` semantics, and
that no function modifies its inputs."""
import re

import numpy as np
import pytest

import layernorm as ln
from conftest import (BFLOAT16, FLOAT32, FLOAT64, assert_close, assert_sentinel, fill_sentinel, in_layout,
                      keepdims_shape, param_shape, python_subprocess, random_array, random_params, ref,
                      unchanged)


@pytest.fixture
def x(rng):
    return random_array(rng, (4, 5, 6), FLOAT32)


# ---------------------------------------------------------------- axis

@pytest.mark.parametrize("axis, shown", [(3, "3"), (-4, "-4"), ((0, 3), "3"), ([1, -7], "-7"),
                                         (100, "100")])
def test_axis_out_of_range(x, axis, shown):
    with pytest.raises(ValueError, match=rf"axis.*{shown}|{shown}.*axis"):
        ln.layer_norm(x, axis)


@pytest.mark.parametrize("axis", [(1, 1), (0, 2, 0), (2, -1), [-3, 0]])
def test_duplicate_axes(x, axis):
    with pytest.raises(ValueError, match="axis.*duplicate|duplicate.*axis"):
        ln.layer_norm(x, axis)


@pytest.mark.parametrize("axis", [1.0, "1", True, False, None, (0, 1.5), (True,), [0, "2"],
                                  np.float64(2.0), {"a": 1}])
def test_axis_of_wrong_type(x, axis):
    with pytest.raises(TypeError, match="axis") as info:
        ln.layer_norm(x, axis)
    assert repr(axis) in str(info.value) or str(axis) in str(info.value)


def test_empty_axis_sequence(x):
    with pytest.raises(ValueError, match="axis"):
        ln.layer_norm(x, ())


@pytest.mark.parametrize("function", ["layer_norm", "rms_norm", "layer_norm_backward",
                                      "rms_norm_backward", "add_layer_norm", "add_rms_norm"])
def test_every_function_checks_axis(x, function):
    args = {"layer_norm": (x,), "rms_norm": (x,),
            "layer_norm_backward": (x, x, np.zeros((4, 5, 1), np.float32), np.ones((4, 5, 1), np.float32)),
            "rms_norm_backward": (x, x, np.ones((4, 5, 1), np.float32)),
            "add_layer_norm": (x, x), "add_rms_norm": (x, x)}[function]
    f = getattr(ln, function)
    with pytest.raises(ValueError, match="axis.*5|5.*axis"):
        f(*args, axis=5)
    with pytest.raises(ValueError, match="duplicate"):
        f(*args, axis=(2, -1))
    with pytest.raises(TypeError, match="axis"):
        f(*args, axis=2.0)


# ---------------------------------------------------------------- weight, bias, eps

@pytest.mark.parametrize("name", ["weight", "bias"])
@pytest.mark.parametrize("axis, shape", [(-1, (5,)), (-1, (6, 1)), (-1, ()), ((1, 2), (6, 5)),
                                         ((1, 2), (30,)), ((0, 2), (4, 5)), (1, (6,))])
def test_parameter_of_wrong_shape(x, name, axis, shape):
    with pytest.raises(ValueError, match=rf"{name}.*{re.escape(str(shape))}"):
        ln.layer_norm(x, axis, **{name: np.ones(shape, np.float32)})


@pytest.mark.parametrize("function", ["rms_norm", "add_rms_norm", "add_layer_norm"])
def test_parameter_shapes_checked_everywhere(x, function):
    args = (x,) if function == "rms_norm" else (x, x)
    with pytest.raises(ValueError, match="weight"):
        getattr(ln, function)(*args, -1, np.ones(5, np.float32))
    if function == "add_layer_norm":
        with pytest.raises(ValueError, match="bias"):
            ln.add_layer_norm(x, x, -1, None, np.ones(7, np.float32))


@pytest.mark.parametrize("name", ["weight", "bias"])
@pytest.mark.parametrize("value", [np.ones(6, np.complex64), np.array(["a"] * 6), np.array([None] * 6)],
                         ids=["complex", "str", "object"])
def test_parameter_of_wrong_kind(x, name, value):
    with pytest.raises(TypeError, match=name):
        ln.layer_norm(x, -1, **{name: value})


@pytest.mark.parametrize("eps", [float("nan"), float("inf"), -float("inf"), -1e-5, -1])
def test_eps_non_finite_or_negative(x, eps):
    with pytest.raises(ValueError, match="eps") as info:
        ln.layer_norm(x, eps=eps)
    assert repr(eps) in str(info.value) or str(eps) in str(info.value)
    for function in (ln.rms_norm, lambda x, eps: ln.add_layer_norm(x, x, eps=eps),
                     lambda x, eps: ln.add_rms_norm(x, x, eps=eps)):
        with pytest.raises(ValueError, match="eps"):
            function(x, eps=eps)


@pytest.mark.parametrize("eps", ["1e-5", [1e-5], True, 1j])
def test_eps_of_wrong_type(x, eps):
    with pytest.raises(TypeError, match="eps"):
        ln.layer_norm(x, eps=eps)


def test_layer_norm_eps_none_is_refused(x):
    """Only the RMS functions give eps=None a meaning."""
    with pytest.raises(TypeError, match="eps"):
        ln.layer_norm(x, eps=None)


# ---------------------------------------------------------------- out=

def bad_outs(shape, dtype):
    read_only = np.zeros(shape, dtype)
    read_only.flags.writeable = False
    return [
        pytest.param(np.zeros(shape[:-1] + (shape[-1] + 1,), dtype), ValueError, "shape", id="shape"),
        pytest.param(np.zeros(shape[::-1], dtype), ValueError, "shape", id="reversed-shape"),
        pytest.param(np.zeros(shape, np.float64 if dtype == FLOAT32 else np.float32), TypeError, "dtype",
                     id="dtype"),
        pytest.param(np.zeros(shape, np.dtype(dtype).newbyteorder("S")), TypeError, "dtype",
                     id="byteswapped"),
        pytest.param(read_only, ValueError, "read-only|writ", id="read-only"),
    ]


@pytest.mark.parametrize("out, error, message", bad_outs((4, 5, 6), FLOAT32))
@pytest.mark.parametrize("axis", [-1, 1, (0, 2)])
def test_bad_out_raises_and_is_untouched(x, axis, out, error, message):
    writeable = out.flags.writeable
    out.flags.writeable = True
    fill_sentinel(out)
    out.flags.writeable = writeable
    with pytest.raises(error, match=rf"out.*({message})|({message}).*out"):
        ln.layer_norm(x, axis, out=out)
    assert_sentinel(out)


def test_out_not_an_array(x):
    with pytest.raises(TypeError, match="out"):
        ln.layer_norm(x, out=np.zeros_like(x).tolist())


def test_out_untouched_when_another_argument_is_bad(x):
    out = fill_sentinel(np.empty_like(x))
    for kwargs in ({"weight": np.ones(5, np.float32)}, {"bias": np.ones(2, np.float32)},
                   {"eps": -1.0}, {"axis": 3}, {"axis": (0, 0)}):
        with pytest.raises((ValueError, TypeError)):
            ln.layer_norm(x, out=out, **kwargs)
        assert_sentinel(out)


@pytest.mark.parametrize("axis", [-1, 1, (0, 2), (0, 1, 2)])
def test_out_preallocated(simd, x, axis):
    expected = ln.layer_norm(x, axis)
    out = fill_sentinel(np.empty_like(x))
    result = ln.layer_norm(x, axis, out=out)
    assert result is out
    assert np.array_equal(out, expected)
    y, mean, rstd = ln.layer_norm(x, axis, out=fill_sentinel(out), return_stats=True)
    assert y is out and np.array_equal(out, expected)
    assert mean.shape == rstd.shape


@pytest.mark.parametrize("axis", [-1, 1, (0, 2), (0, 1, 2)])
@pytest.mark.parametrize("layout", ["C", "F", "strided", "negative"])
def test_out_is_x_in_place(simd, rng, axis, layout):
    base = random_array(rng, (4, 5, 6), FLOAT64)
    weight, bias = random_params(rng, param_shape(base.shape, axis), FLOAT64)
    expected = ln.layer_norm(base, axis, weight, bias)
    x = in_layout(base, layout)
    result = ln.layer_norm(x, axis, weight, bias, out=x)
    assert result is x
    assert np.array_equal(x, expected)


@pytest.mark.parametrize("axis", [-1, 1, (0, 2)])
@pytest.mark.parametrize("layout", ["F", "negative", "transposed"])
def test_non_contiguous_out(x, axis, layout):
    out = in_layout(np.zeros(x.shape, np.float32), layout)
    assert not out.flags.c_contiguous
    assert ln.layer_norm(x, axis, out=out) is out
    assert np.array_equal(out, ln.layer_norm(x, axis))


@pytest.mark.parametrize("axis", [-1, 1, (0, 2)])
def test_out_with_gaps(x, axis):
    """A stepped view: the result lands in the view, the skipped elements stay."""
    parent = fill_sentinel(np.empty(x.shape[:-1] + (2 * x.shape[-1],), np.float32))
    out = parent[..., ::2]
    assert ln.layer_norm(x, axis, out=out) is out
    assert np.array_equal(out, ln.layer_norm(x, axis))
    assert_sentinel(parent[..., 1::2])


@pytest.mark.parametrize("shift", [1, 3, -2])
@pytest.mark.parametrize("axis", [-1, 0, (0, 1)])
def test_out_partially_overlapping_x(rng, shift, axis):
    """out is x's buffer shifted by some rows: y is still layer_norm of the original x,
    and the part of x that out does not cover is not touched."""
    rows, cols = 10, 8
    buffer = random_array(rng, (rows + abs(shift), cols), FLOAT64)
    original = buffer.copy()
    x_rows = slice(0, rows) if shift > 0 else slice(-shift, rows - shift)
    out_rows = slice(shift, rows + shift) if shift > 0 else slice(0, rows)
    x, out = buffer[x_rows], buffer[out_rows]
    expected = ln.layer_norm(x.copy(), axis)
    result = ln.layer_norm(x, axis, out=out)
    assert result is out
    assert np.array_equal(out, expected)
    covered = np.zeros(len(buffer), bool)
    covered[out_rows] = True
    assert np.array_equal(buffer[~covered], original[~covered])


def test_out_overlapping_with_interleaved_view(rng):
    buffer = random_array(rng, (6, 20), FLOAT64)
    x = buffer[:, :10]
    out = buffer[:, 5:15]
    expected = ln.layer_norm(x.copy())
    original = buffer.copy()
    ln.layer_norm(x, out=out)
    assert np.array_equal(out, expected)
    assert np.array_equal(buffer[:, :5], original[:, :5])
    assert np.array_equal(buffer[:, 15:], original[:, 15:])


@pytest.mark.parametrize("axis", [-1, 0])
def test_out_overlapping_weight_and_bias(rng, axis):
    """weight and bias are rows of the out buffer: they are read before being overwritten."""
    x = random_array(rng, (6, 6), FLOAT32)
    buffer = random_params(rng, (6, 6), FLOAT32)[0]
    weight, bias = buffer[1], buffer[:, 2]
    expected = ln.layer_norm(x, axis, weight.copy(), bias.copy())
    assert ln.layer_norm(x, axis, weight, bias, out=buffer) is buffer
    assert np.array_equal(buffer, expected)


# ---------------------------------------------------------------- inputs untouched

@pytest.mark.parametrize("axis", [-1, 1, (0, 2)])
@pytest.mark.parametrize("layout", ["C", "F", "negative", "byteswapped"])
def test_no_function_modifies_its_inputs(simd, rng, axis, layout):
    shape = (4, 5, 6)
    pshape, sshape = param_shape(shape, axis), keepdims_shape(shape, axis)
    x = in_layout(random_array(rng, shape, FLOAT32), layout)
    r = in_layout(random_array(rng, shape, FLOAT32), layout)
    dy = in_layout(random_array(rng, shape, FLOAT32), layout)
    weight, bias = random_params(rng, pshape, FLOAT32)
    mean = np.zeros(sshape, np.float32)
    rstd = np.ones(sshape, np.float32)
    with unchanged(x, r, dy, weight, bias, mean, rstd):
        ln.layer_norm(x, axis, weight, bias, return_stats=True)
        ln.rms_norm(x, axis, weight, return_stats=True)
        ln.add_layer_norm(x, r, axis, weight, bias)
        ln.add_rms_norm(x, r, axis, weight)
        ln.layer_norm_backward(dy, x, mean, rstd, axis, weight)
        ln.rms_norm_backward(dy, x, rstd, axis, weight)


def test_list_inputs_are_not_modified():
    x = [[1.0, 2.0, 3.0], [4.0, 5.0, 7.0]]
    copy = [row[:] for row in x]
    ln.layer_norm(x)
    ln.add_layer_norm(x, x)
    assert x == copy


# ---------------------------------------------------------------- the 0-d case

@pytest.mark.parametrize("function", [ln.layer_norm, ln.rms_norm, lambda x: ln.add_layer_norm(x, x)],
                         ids=["layer_norm", "rms_norm", "add_layer_norm"])
def test_zero_dimensional_input_is_refused(function):
    """No axis -1 in a 0-d array (as numpy.mean(x, axis=-1)): ValueError naming axis,
    not a silently reshaped (1,) result."""
    for x in (np.array(2.0, np.float32), np.float64(1.0), 3.0):
        with pytest.raises(ValueError, match="axis"):
            function(x)


def test_out_error_messages_name_the_value(x):
    with pytest.raises(ValueError, match=r"\(4, 5, 7\)"):
        ln.layer_norm(x, out=np.zeros((4, 5, 7), np.float32))
    with pytest.raises(TypeError, match="float64"):
        ln.layer_norm(x, out=np.zeros((4, 5, 6), np.float64))


def test_float64_out_for_integer_input():
    x = np.arange(12).reshape(3, 4)
    out = np.empty((3, 4), np.float64)
    assert ln.layer_norm(x, out=out) is out
    assert_close(out, ref.layer_norm(x)[0], FLOAT64)
    with pytest.raises(TypeError, match="out"):
        ln.layer_norm(x, out=np.empty((3, 4), np.int64))


@pytest.mark.skipif(BFLOAT16 is None, reason="ml_dtypes not installed")
def test_bfloat16_without_layernorm_importing_ml_dtypes():
    """import layernorm leaves ml_dtypes alone (its import takes half a
    second); bfloat16 arrays work once the caller has imported it, through
    the general path (the first call, and transposed data) and the fast one,
    and show_config reports bfloat16 as installed all along."""
    out = python_subprocess(
        "import sys, numpy as np, layernorm as ln\n"
        "assert 'ml_dtypes' not in sys.modules\n"
        "assert ln.show_config()['bfloat16'] and 'ml_dtypes' not in sys.modules\n"
        "import ml_dtypes\n"
        "x = np.linspace(-1, 2, 48).reshape(3, 16).astype(ml_dtypes.bfloat16)\n"
        "w = np.linspace(0.5, 1.5, 16).astype(ml_dtypes.bfloat16)\n"
        "y, mean, rstd = ln.layer_norm(x, -1, w, return_stats=True)\n"
        "again = ln.layer_norm(x, -1, w)\n"
        "transposed = ln.layer_norm(x.T, 0, w)\n"
        "dx, dw, db = ln.layer_norm_backward(x, x, mean, rstd, -1, w)\n"
        "print(y.dtype, again.tobytes() == y.tobytes(), transposed.T.tobytes() == y.tobytes(), dx.dtype, dw.dtype)")
    assert out.split("\n")[-2].split() == ["bfloat16", "True", "True", "bfloat16", "bfloat16"]
