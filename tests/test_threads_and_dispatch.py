"""Thread control and determinism; runtime SIMD dispatch."""
import re
import threading

import numpy as np
import pytest

import layernorm as ln
from layernorm import _kernels
from conftest import (ALL_DTYPES, DEFAULT_SIMD, FLOAT32, FLOAT64, SIMD_LEVELS, assert_close,
                      assert_matches_reference, param_shape, python_subprocess, random_array,
                      random_params, ref, stats_dtype, use_simd, use_threads)

# Shapes that reach every kernel path: many rows, few long rows, long rows
# whose backward goes four to a group (float32/float64 rows of 180000: the
# last group of two, dweight/dbias over several float64 flushes), one very
# long row (split across threads), the strided (NCHW channel) layout, a
# transpose.
PATH_CASES = [
    pytest.param((300, 1000), -1, id="many-rows"),
    pytest.param((3, 100000), -1, id="few-long-rows"),
    pytest.param((20, 20001), -1, id="long-rows-in-groups"),
    pytest.param((18, 180000), -1, id="long-rows-in-fours"),
    pytest.param((1, 1 << 20), -1, id="one-long-row"),
    pytest.param((8, 16, 33, 35), 1, id="strided"),
    pytest.param((4, 100, 300), 1, id="strided-deep"),
    pytest.param((1, 3, 1 << 18), 1, id="strided-wide"),
    pytest.param((1, 1 << 18, 2), 1, id="strided-long"),
    pytest.param((30, 40, 50), (0, 2), id="transposed"),
    pytest.param((65536, 16), -1, id="short-rows"),
]


def run_everything(x, r, dy, axis, weight, bias):
    """Every function's outputs, as one flat list of arrays."""
    y, mean, rstd = ln.layer_norm(x, axis, weight, bias, return_stats=True)
    yr, rrms = ln.rms_norm(x, axis, weight, return_stats=True)
    return [y, mean, rstd, yr, rrms,
            *ln.layer_norm_backward(dy, x, mean, rstd, axis, weight),
            *ln.rms_norm_backward(dy, x, rrms, axis, weight),
            *ln.add_layer_norm(x, r, axis, weight, bias),
            *ln.add_rms_norm(x, r, axis, weight)]


def same_bits(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("shape, axis", PATH_CASES)
def test_bitwise_identical_for_any_thread_count(simd, rng, shape, axis, dtype):
    x = random_array(rng, shape, dtype, offset=10.0)
    r = random_array(rng, shape, dtype)
    dy = random_array(rng, shape, dtype)
    weight, bias = random_params(rng, param_shape(shape, axis), stats_dtype(dtype))
    results = {}
    for n in (1, 2, 3):
        with use_threads(n):
            results[n] = run_everything(x, r, dy, axis, weight, bias)
    for n in (2, 3):
        for i, (a, b) in enumerate(zip(results[1], results[n])):
            assert same_bits(a, b), f"output {i} differs between 1 and {n} threads"


def test_threads_agree_with_reference_on_a_long_row(rng):
    """The threaded long-row split merges moments correctly (not just consistently)."""
    x = random_array(rng, (1, 1 << 20), FLOAT32, offset=3e4)
    with use_threads(2):
        y, mean, rstd = ln.layer_norm(x, return_stats=True)
    ry, rmean, rrstd = ref.layer_norm(x)
    assert_close(y, ry)
    assert_close(mean, rmean, tol=1e-7)
    assert_close(rstd, rrstd)


def test_set_num_threads_returns_previous_and_get_reflects_it():
    original = ln.get_num_threads()
    try:
        assert ln.set_num_threads(1) == original
        assert ln.get_num_threads() == 1
        assert ln.set_num_threads(3) == 1
        assert ln.get_num_threads() == 3
        assert ln.set_num_threads(np.int64(2)) == 3
        assert ln.get_num_threads() == 2
    finally:
        ln.set_num_threads(original)
    assert ln.get_num_threads() == original


@pytest.mark.parametrize("n, error", [(0, ValueError), (-1, ValueError), (1.5, TypeError),
                                      (True, TypeError), ("2", TypeError), (None, TypeError),
                                      (2.0, TypeError)])
def test_set_num_threads_rejects_invalid_values(n, error):
    before = ln.get_num_threads()
    with pytest.raises(error, match=re.escape(repr(n))):
        ln.set_num_threads(n)
    assert ln.get_num_threads() == before


def test_default_thread_count_is_every_available_core():
    if not _kernels.openmp_enabled():
        pytest.skip("serial build")
    out = python_subprocess("import os, layernorm as ln; "
                            "print(ln.get_num_threads(), len(os.sched_getaffinity(0)))")
    threads, cores = map(int, out.split())
    assert threads == cores


@pytest.mark.parametrize("value, expected", [("1", 1), ("3", 3)])
def test_environment_variable_sets_default(value, expected):
    out = python_subprocess("import layernorm as ln; print(ln.get_num_threads())",
                            LAYERNORM_NUM_THREADS=value)
    assert int(out) == expected


def test_environment_variable_invalid_is_ignored_with_a_warning():
    code = ("import warnings\n"
            "with warnings.catch_warnings(record=True) as caught:\n"
            "    warnings.simplefilter('always')\n"
            "    import layernorm as ln\n"
            "print(ln.get_num_threads())\n"
            "print('|'.join(str(w.message) for w in caught))")
    default = python_subprocess(code).splitlines()[0]
    for value in ("abc", "0", "-2", "1.5"):
        threads, messages = python_subprocess(code, LAYERNORM_NUM_THREADS=value).splitlines()
        assert threads == default, value
        assert "LAYERNORM_NUM_THREADS" in messages and value in messages, value


def test_threadpoolctl_limits_openmp():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    if not _kernels.openmp_enabled():
        pytest.skip("serial build")
    with use_threads(2):
        with threadpoolctl.threadpool_limits(1, user_api="openmp"):
            assert ln.get_num_threads() == 1
        assert ln.get_num_threads() == 2


def test_concurrent_python_threads(rng):
    """The GIL is released around the kernels: concurrent calls from Python
    threads are safe and give the single-threaded results."""
    inputs = [random_array(rng, (64, 2000), FLOAT32, offset=i) for i in range(4)]
    expected = [ln.layer_norm(x, return_stats=True) for x in inputs]
    results = [None] * len(inputs)
    errors = []

    def work(i):
        try:
            for _ in range(20):
                results[i] = ln.layer_norm(inputs[i], return_stats=True)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for got, want in zip(results, expected):
        for a, b in zip(got, want):
            assert same_bits(a, b)


# ---------------------------------------------------------------- SIMD dispatch

def test_levels_available():
    assert SIMD_LEVELS[0] == "baseline"
    assert set(SIMD_LEVELS) <= {"baseline", "avx2", "avx512"}
    assert DEFAULT_SIMD in SIMD_LEVELS


def test_default_level_is_the_best_available():
    out = python_subprocess("from layernorm import _kernels as k; print(k.simd_level(), "
                            "k.simd_levels_available()[-1])")
    level, best = out.split()
    assert level == best


@pytest.mark.parametrize("level", SIMD_LEVELS)
def test_environment_forces_level(level):
    code = ("import layernorm as ln, layernorm._kernels as k\n"
            "cfg = ln.show_config()\n"
            "print('LEVEL', k.simd_level(), cfg['simd_level'])")
    out = python_subprocess(code, LAYERNORM_SIMD=level)
    assert f"LEVEL {level} {level}" in out
    assert f"SIMD level in use : {level}" in out or level in out.splitlines()[1]


def test_environment_unknown_level_falls_back_to_best():
    out = python_subprocess("from layernorm import _kernels as k; print(k.simd_level(), "
                            "k.simd_levels_available()[-1])", LAYERNORM_SIMD="sse9000")
    level, best = out.split()
    assert level == best


def test_select_simd_rejects_unknown_level():
    with pytest.raises(ValueError, match="sse9000"):
        _kernels.select_simd("sse9000")
    assert _kernels.simd_level() == DEFAULT_SIMD


def test_show_config(capsys):
    cfg = ln.show_config()
    printed = capsys.readouterr().out
    assert cfg["simd_level"] == _kernels.simd_level() and cfg["simd_level"] in printed
    assert cfg["num_threads"] == ln.get_num_threads()
    assert cfg["simd_levels_available"] == SIMD_LEVELS
    with use_simd("baseline"):
        assert ln.show_config()["simd_level"] == "baseline"


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("shape, axis", [((37, 999), -1), ((4, 33, 35), 1), ((1, 300001), -1)])
def test_every_level_agrees_with_reference(rng, dtype, shape, axis):
    """Large offsets, odd lengths and a long row, at every level in one process."""
    x = random_array(rng, shape, dtype, offset=100.0)
    ry, rmean, rrstd = ref.layer_norm(x, axis)
    for level in SIMD_LEVELS:
        with use_simd(level):
            y, mean, rstd = ln.layer_norm(x, axis, return_stats=True)
        assert_matches_reference(y, ry, what=f"y at {level}")
        assert_close(mean, rmean, tol=1e-7 if dtype != FLOAT64 else 1e-12, what=f"mean at {level}")
        assert_close(rstd, rrstd, tol=2e-6 if dtype != FLOAT64 else 1e-12, what=f"rstd at {level}")


def test_long_half_weights_are_read_natively_at_the_simd_levels(simd):
    """Which half-precision weights the kernels read as they are: those
    serving few rows, small calls, and at AVX2/AVX-512 weights of 32768
    entries and more (their float32 copies would cost more than the call)."""
    pay = _kernels.native_half_params_pay
    assert pay(3 * 70001, 70001) and pay(1000, 100)
    assert not pay(16384 * 1024, 1024) and not pay(4096 * 768, 768)
    assert pay(64 * 262144, 262144) == (simd != "baseline")
    assert pay(5 * 32768, 32768) == (simd != "baseline") and not pay(5 * 32767, 32767)
