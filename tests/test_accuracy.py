"""Accuracy with a large common offset: float32 output within 1e-6 absolute
of the float64 reference for rows with mean up to 3e4 and unit spread
(PyTorch misses by 1e-3 and a naive E[x^2] - E[x]^2 by 1e3); float64 within 1e-12."""
import numpy as np
import pytest

import layernorm as ln
from conftest import FLOAT32, FLOAT64, ONE_PASS_KINDS, assert_close, one_pass_rows, random_array, ref, use_threads

OFFSETS = [1e2, 1e4, 3e4, -3e4]
FLOATS = [pytest.param(FLOAT32, id="float32"), pytest.param(FLOAT64, id="float64")]
ROWS = [pytest.param((64, 768), -1, id="64x768"), pytest.param((4, 65536), -1, id="4x65536"),
        pytest.param((1, 65536), -1, id="1x65536")]
STRIDED = [pytest.param((4, 768, 4, 4), 1, id="4x768x4x4-axis1"),
           pytest.param((2, 256, 7, 9), 1, id="2x256x7x9-axis1"),
           pytest.param((3, 64, 12, 10), (1, 2), id="3x64x12x10-axes12"),
           pytest.param((1, 65536, 2), 1, id="1x65536x2-axis1"),
           pytest.param((1, 3, 65536), 1, id="1x3x65536-axis1")]


def check_offset_accuracy(shape, axis, dtype, offset, rng):
    x = random_array(rng, shape, dtype, offset=offset)
    y, mean, rstd = ln.layer_norm(x, axis, return_stats=True)
    ry, rmean, rrstd = ref.layer_norm(x, axis)
    assert_close(y, ry, dtype, what=f"y with offset {offset}", rtol=0)   # 1e-6 / 1e-12 absolute
    assert_close(rstd, rrstd, what="rstd")
    # mean is stored in the statistics' dtype: within its rounding
    assert_close(mean, rmean, tol=float(np.finfo(mean.dtype).eps), what="mean")
    return x


@pytest.mark.parametrize("offset", OFFSETS)
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("shape, axis", ROWS + STRIDED)
def test_large_offset(simd, rng, shape, axis, dtype, offset):
    check_offset_accuracy(shape, axis, dtype, offset, rng)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape, axis", [((1, 1 << 20), -1), ((2, 1 << 19), -1), ((1, 1 << 16, 8), 1)])
def test_large_offset_split_rows(rng, threads, shape, axis):
    """Long rows split across threads: the Chan merge keeps the accuracy."""
    with use_threads(threads):
        check_offset_accuracy(shape, axis, FLOAT32, 3e4, rng)


@pytest.mark.parametrize("offset", [1e4, 3e4])
def test_large_offset_with_weight_and_bias(simd, rng, offset):
    x = random_array(rng, (16, 768), FLOAT32, offset=offset)
    weight = np.linspace(0.5, 1.0, 768, dtype=np.float32)
    bias = np.linspace(-0.25, 0.25, 768, dtype=np.float32)
    assert_close(ln.layer_norm(x, -1, weight, bias), ref.layer_norm(x, -1, weight, bias)[0], rtol=0)


@pytest.mark.parametrize("offset", [1e4, 3e4])
@pytest.mark.parametrize("shape, axis", [((64, 768), -1), ((4, 768, 4, 4), 1)])
def test_large_offset_fused_add(simd, rng, offset, shape, axis):
    x = random_array(rng, shape, FLOAT32, offset=offset)
    r = random_array(rng, shape, FLOAT32)
    y, s = ln.add_layer_norm(x, r, axis)
    assert_close(y, ref.layer_norm(s, axis)[0], rtol=0)


def test_small_spread_on_huge_offset_float64(simd, rng):
    """float64: offset 1e8, spread 1 (the float64 analogue of 3e4 in float32)."""
    x = random_array(rng, (8, 4096), FLOAT64, offset=1e8)
    assert_close(ln.layer_norm(x), ref.layer_norm(x)[0], tol=1e-9)


def test_constant_offset_rows_are_exact(simd):
    """x = c + d with d exactly representable: the centred values are exact."""
    d = np.tile(np.array([-1.5, -0.5, 0.5, 1.5], np.float32), 192)         # 768, mean 0
    for c in (1e2, 1e4, 3e4):
        x = (np.float32(c) + d).reshape(1, -1)
        y, mean, rstd = ln.layer_norm(x, eps=0.0, return_stats=True)
        assert mean[0, 0] == np.float32(c)
        assert_close(y, (d / np.sqrt(1.25)).reshape(1, -1))


@pytest.mark.parametrize("cols", [128, 768, 1000])
@pytest.mark.parametrize("kind", ONE_PASS_KINDS)
def test_one_pass_moments_and_their_fallback(simd, rng, kind, cols):
    """float32 rows of 128 elements or more take both moments in one pass,
    shifted by the mean of their first 64 (AVX2: 32) values; rows whose shift
    lies too far from the mean take the second pass.  Either way rstd within
    5e-7 relative, the mean within 2e-7 of the row's largest value, and y
    within 5e-7 of that value normalized (without the second pass, the
    "first 64 apart" rows' rstd missed by 1.8e-6)."""
    x = one_pass_rows(rng, kind, 256, cols).astype(FLOAT32)
    y, mean, rstd = ln.layer_norm(x, return_stats=True)
    ry, rmean, rrstd = ref.layer_norm(x, -1)
    magnitude = np.max(np.abs(x.astype(np.float64)), axis=-1, keepdims=True)
    assert np.max(np.abs(rstd - rrstd) / rrstd) <= 5e-7, "rstd"
    assert np.max(np.abs(mean - rmean) / magnitude) <= 2e-7, "mean"
    assert np.max(np.abs(y - ry) / (magnitude * rrstd)) <= 5e-7, "y"
    assert np.array_equal(ln.add_layer_norm(x, np.zeros_like(x))[0], y)
