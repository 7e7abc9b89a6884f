"""bfloat16 at the AVX-512 level runs kernels built with AVX512-BF16's
vcvtneps2bf16 where the CPU has it (the rest of the suite runs those there).
They must give the bits of the integer rounding that the level uses without
it: the instruction treats subnormal inputs as zero, so a vector holding one
is narrowed by integers; NaNs come out quiet, ties go to even, overflow goes
to Inf."""
from contextlib import contextmanager

import numpy as np
import pytest

import layernorm as ln
from layernorm import _kernels
from conftest import use_simd, use_threads

bfloat16 = pytest.importorskip("ml_dtypes").bfloat16

pytestmark = pytest.mark.skipif(not _kernels.bf16_instructions_available(),
                                reason="no AVX512-BF16 on this CPU, or the compiler could not build it")


@contextmanager
def bf16_instructions(use):
    _kernels.use_bf16_instructions(use)
    try:
        assert _kernels.bf16_instructions_in_use() == use
        yield
    finally:
        _kernels.use_bf16_instructions(True)


def narrowing_calls(rng):
    """Calls whose bfloat16 outputs go through every kernel's narrowing, with
    float32 results that are subnormal (weights near 1e-38), normal, Inf
    (weights near 1e38) and NaN, mixed within vectors."""
    calls = []
    for shape, axis in (((64, 256), -1), ((600, 64), -1), ((3, 70000), -1), ((2, 300000), -1),
                        ((4, 16, 160), 1), ((3, 5, 7), (0, 2))):
        x = rng.standard_normal(shape).astype(bfloat16)
        x.flat[::97] = np.nan
        axes = tuple(sorted(np.atleast_1d(axis) % len(shape)))
        pshape = tuple(shape[a] for a in axes)
        scale = np.where(rng.random(pshape) < 0.5, 1e-38, 1.0) * rng.uniform(0.01, 2, pshape)
        scale[..., ::13] = 3e38
        weight = scale.astype(np.float32)
        bias = (rng.standard_normal(pshape) * 1e-39).astype(np.float32)
        r = (rng.standard_normal(shape) * 1e-38).astype(bfloat16)
        tiny_x = (x.astype(np.float32) * np.float32(1e-38)).astype(bfloat16)   # subnormal sums
        dy = rng.standard_normal(shape).astype(bfloat16)
        _, mean, rstd = ln.layer_norm(x, axis, return_stats=True)
        calls += [
            lambda x=x, a=axis, w=weight, b=bias: ln.layer_norm(x, a, w, b),
            lambda x=x, a=axis, w=weight: ln.rms_norm(x, a, w),
            lambda x=tiny_x, r=r, a=axis, w=weight, b=bias: ln.add_layer_norm(x, r, a, w, b),
            lambda x=x, dy=dy, m=mean, s=rstd, a=axis, w=weight: ln.layer_norm_backward(dy, x, m, s, a, w)[0],
        ]
    return calls


def outputs_bits(calls):
    results = []
    with np.errstate(all="ignore"):
        for call in calls:
            out = call()
            for array in out if isinstance(out, tuple) else (out,):
                results.append(np.ascontiguousarray(array).view(np.uint16).copy())
    return results


@pytest.mark.parametrize("threads", [1, 2])
def test_bf16_instructions_give_the_bits_of_integer_rounding(rng, threads):
    calls = narrowing_calls(rng)
    with use_simd("avx512"), use_threads(threads):
        with bf16_instructions(False):
            integer = outputs_bits(calls)
        with bf16_instructions(True):
            instructions = outputs_bits(calls)
    subnormal = 0
    for a, b in zip(integer, instructions):
        assert np.array_equal(a, b)
        subnormal += np.count_nonzero(((a & 0x7F80) == 0) & ((a & 0x007F) != 0))
    assert subnormal > 1000, "the calls should produce subnormal bfloat16 outputs"


def test_only_the_avx512_level_takes_them():
    with use_simd("avx512"):
        assert _kernels.bf16_instructions_in_use()
    with use_simd("avx2"):
        assert not _kernels.bf16_instructions_in_use()
        _kernels.use_bf16_instructions(True)
        assert not _kernels.bf16_instructions_in_use()
    assert ln.show_config()["bfloat16_instructions"] == (_kernels.simd_level() == "avx512")
