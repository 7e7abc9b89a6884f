"""Hypothesis property tests: random shapes (1-4-D, small dims including 1),
axis sets (any spelling), dtypes, memory layouts (transposes, stepped and
reversed slices) and optional weight/bias; every function against the
float64 reference, at every SIMD level."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import layernorm as ln
from conftest import (BFLOAT16, FLOAT16, FLOAT32, FLOAT64, SIMD_LEVELS, check_layer_norm,
                      check_layer_norm_backward, check_rms_norm, check_rms_norm_backward,
                      param_shape, use_simd)

DTYPES = [FLOAT32, FLOAT64, FLOAT16] + ([BFLOAT16] if BFLOAT16 is not None else [])
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
level_param = pytest.mark.parametrize("level", SIMD_LEVELS)


@st.composite
def cases(draw, dtypes=DTYPES):
    """(x, axis, weight, bias, dy) with x in a random memory layout."""
    ndim = draw(st.integers(1, 4))
    shape = tuple(draw(st.lists(st.integers(1, 6), min_size=ndim, max_size=ndim)))
    axes = draw(st.lists(st.integers(0, ndim - 1), min_size=1, max_size=ndim, unique=True))
    # spelling: each axis positive or negative, any order, int when single
    axis = [a - ndim if draw(st.booleans()) else a for a in axes]
    axis = axis[0] if len(axis) == 1 and draw(st.booleans()) else tuple(axis)
    dtype = draw(st.sampled_from(dtypes))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    offset = draw(st.sampled_from([0.0, 1.0, -3.0, 100.0]))
    x = layout_view(draw, rng, shape, lambda s: (offset + rng.standard_normal(s)).astype(dtype))
    dy = layout_view(draw, rng, shape, lambda s: rng.standard_normal(s).astype(dtype))
    pshape = param_shape(shape, axis)
    params_dtype = draw(st.sampled_from([dtype, FLOAT32] if dtype.itemsize == 2 else [dtype]))
    weight = rng.uniform(0.5, 1.5, pshape).astype(params_dtype) if draw(st.booleans()) else None
    bias = rng.uniform(-1, 1, pshape).astype(params_dtype) if draw(st.booleans()) else None
    return x, axis, weight, bias, dy


def layout_view(draw, rng, shape, make):
    """An array of `shape` built by make(storage_shape), seen through a random
    per-axis step (negative allowed) and a random transpose."""
    ndim = len(shape)
    order = draw(st.permutations(range(ndim)))
    steps = [draw(st.sampled_from([1, 1, 2, -1, -2, 3])) for _ in range(ndim)]
    stored_shape = tuple(shape[order[i]] * abs(steps[i]) for i in range(ndim))
    stored = make(stored_shape)
    view = stored[tuple(slice(None, None, s) for s in steps)]
    return view.transpose(np.argsort(order))


@level_param
@SETTINGS
@given(case=cases())
def test_layer_norm_matches_reference(level, case):
    x, axis, weight, bias, _ = case
    with use_simd(level):
        y, _, _ = check_layer_norm(x, axis, weight, bias)
        # the layout never changes the bits
        same = ln.layer_norm(np.ascontiguousarray(x), axis, weight, bias)
    assert y.tobytes() == same.tobytes()


@level_param
@SETTINGS
@given(case=cases())
def test_layer_norm_backward_matches_reference(level, case):
    x, axis, weight, _, dy = case
    with use_simd(level):
        check_layer_norm_backward(x, dy, axis, weight)


@level_param
@SETTINGS
@given(case=cases())
def test_rms_norm_matches_reference(level, case):
    x, axis, weight, _, dy = case
    with use_simd(level):
        check_rms_norm(x, axis, weight)
        check_rms_norm_backward(x, dy, axis, weight)


@level_param
@SETTINGS
@given(case=cases(dtypes=[FLOAT32, FLOAT64]))
def test_fused_add_is_the_composition(level, case):
    x, axis, weight, bias, r = case
    with use_simd(level):
        y, s = ln.add_layer_norm(x, r, axis, weight, bias)
        assert np.array_equal(s, x + r)
        assert np.array_equal(y, ln.layer_norm(x + r, axis, weight, bias))
        y, s = ln.add_rms_norm(x, r, axis, weight)
        assert np.array_equal(s, x + r)
        assert np.array_equal(y, ln.rms_norm(x + r, axis, weight))


@SETTINGS
@given(case=cases(dtypes=[FLOAT32, FLOAT64]))
def test_in_place_equals_out_of_place(case):
    x, axis, weight, bias, _ = case
    expected = ln.layer_norm(x, axis, weight, bias)
    assert ln.layer_norm(x, axis, weight, bias, out=x) is x
    assert np.array_equal(x, expected)
