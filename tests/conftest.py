"""Shared helpers for the array-function tests.

* SIMD levels: the `simd` fixture runs a test once per level this machine
  supports (``layernorm._kernels.simd_levels_available()``) and restores the
  default level afterwards; `use_simd` does the same inside a test body (for
  hypothesis tests, where function-scoped fixtures are not allowed).
* Thread counts: `use_threads`.
* Data and layouts: `random_array`, `in_layout`, `axis_sets`.
* Comparisons: `assert_close` (float32/float64 tolerances against the float64
  reference), `ulp_distance` / `assert_within_ulp` for float16/bfloat16,
  `assert_matches_reference` choosing between them by dtype.
* `check_layer_norm`, `check_rms_norm`, `check_layer_norm_backward`,
  `check_rms_norm_backward`: run a function and compare every output with the
  float64 reference (`layernorm._reference`, imported here as `ref`).
* `unchanged`: asserts that arrays are not modified by a block;
  `fill_sentinel` / `assert_sentinel`: nothing written to `out` on errors.
* `numeric_gradient`: central finite differences; `python_subprocess`.
"""
import contextlib
import itertools
import os
import sys

import numpy as np
import pytest

import layernorm as ln
from layernorm import _kernels
from layernorm import _reference as ref

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# where the package under test was imported from: the installed copy, or src/
# for an in-place build; subprocesses must import the same one
PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(ln.__file__)))

SIMD_LEVELS = _kernels.simd_levels_available()
DEFAULT_SIMD = _kernels.simd_level()

try:
    import ml_dtypes
    BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # bfloat16 cases are skipped
    BFLOAT16 = None

FLOAT16 = np.dtype(np.float16)
FLOAT32 = np.dtype(np.float32)
FLOAT64 = np.dtype(np.float64)

# float16 always; bfloat16 as a skipped param when ml_dtypes is missing
HALF_DTYPES = [
    pytest.param(FLOAT16, id="float16"),
    pytest.param(BFLOAT16, id="bfloat16",
                 marks=pytest.mark.skipif(BFLOAT16 is None, reason="ml_dtypes not installed")),
]
ALL_DTYPES = [pytest.param(FLOAT32, id="float32"), pytest.param(FLOAT64, id="float64")] + HALF_DTYPES

# Absolute/relative tolerances against the float64 reference, for unit-spread data.
TOLERANCE = {FLOAT32: 1e-6, FLOAT64: 1e-12}


def stats_dtype(dtype):
    """Statistics (and backward parameter gradients) dtype for data of `dtype`."""
    return FLOAT64 if np.dtype(dtype) == FLOAT64 else FLOAT32


# ---------------------------------------------------------------- SIMD / threads

@contextlib.contextmanager
def use_simd(level):
    _kernels.select_simd(level)
    try:
        assert _kernels.simd_level() == level
        yield level
    finally:
        _kernels.select_simd(DEFAULT_SIMD)


@pytest.fixture(params=SIMD_LEVELS)
def simd(request):
    """Run the test at every SIMD level the machine supports."""
    with use_simd(request.param) as level:
        yield level


@contextlib.contextmanager
def use_threads(n):
    previous = ln.set_num_threads(n)
    try:
        yield n
    finally:
        ln.set_num_threads(previous)


@pytest.fixture
def rng(request):
    """A generator seeded from the test's name: reproducible, different per test."""
    seed = sum(ord(c) * (i + 1) for i, c in enumerate(request.node.name))
    return np.random.default_rng(seed)


# ---------------------------------------------------------------- data

def axis_sets(ndim):
    """Every non-empty subset of range(ndim), as sorted tuples."""
    return [axes for k in range(1, ndim + 1) for axes in itertools.combinations(range(ndim), k)]


def shape_axis_cases(shapes):
    """(shape, axes) pytest params for every axis set of every shape."""
    return [pytest.param(shape, axes, id=f"{shape}-{axes}")
            for shape in shapes for axes in axis_sets(len(shape))]


def negative_form(axes, ndim):
    return tuple(a - ndim for a in axes)


def as_axes(axis, ndim):
    """`axis` (int or sequence) as a sorted tuple of non-negative axes."""
    return tuple(sorted(int(a) % ndim for a in np.atleast_1d(axis)))


def param_shape(shape, axis):
    """Shape of weight/bias (and dweight/dbias) for normalizing `shape` over `axis`."""
    return tuple(shape[a] for a in as_axes(axis, len(shape)))


def keepdims_shape(shape, axis):
    """Shape of the statistics: the normalized axes set to 1."""
    axes = as_axes(axis, len(shape))
    return tuple(1 if i in axes else n for i, n in enumerate(shape))


def random_array(rng, shape, dtype=FLOAT32, offset=0.0, scale=1.0):
    """Normal data with the given offset and spread, rounded to `dtype`."""
    return (offset + scale * rng.standard_normal(shape)).astype(dtype)


def random_params(rng, shape, dtype=FLOAT32):
    """A weight near 1 and a bias near 0 of the normalized shape."""
    weight = rng.uniform(0.5, 1.5, shape).astype(dtype)
    bias = rng.uniform(-0.5, 0.5, shape).astype(dtype)
    return weight, bias


LAYOUTS = ["C", "F", "strided", "negative", "transposed", "byteswapped", "misaligned"]


def in_layout(a, kind):
    """An array equal to `a` (same shape and values) stored in layout `kind`."""
    a = np.ascontiguousarray(a)
    if kind == "C":
        return a.copy()
    if kind == "F":
        return np.asfortranarray(a)
    if kind == "strided":          # every other element of a bigger buffer, on every axis
        big = np.zeros(tuple(2 * n for n in a.shape), a.dtype)
        view = big[tuple(slice(None, None, 2) for _ in a.shape)]
        view[...] = a
        return view
    if kind == "negative":         # negative strides on every axis
        flipped = a[tuple(slice(None, None, -1) for _ in a.shape)].copy()
        return flipped[tuple(slice(None, None, -1) for _ in a.shape)]
    if kind == "transposed":       # a transposed view of a C array
        order = tuple(reversed(range(a.ndim)))
        return np.ascontiguousarray(a.transpose(order)).transpose(order)
    if kind == "byteswapped":      # non-native byte order
        swapped = a.astype(a.dtype.newbyteorder("S"))
        assert not swapped.dtype.isnative
        return swapped
    if kind == "misaligned":       # data pointer not aligned to the element size
        raw = np.zeros(a.nbytes + a.itemsize + 1, np.uint8)
        view = raw[1:1 + a.nbytes].view(a.dtype).reshape(a.shape)
        view[...] = a
        assert not view.flags.aligned or a.itemsize == 1
        return view
    raise ValueError(kind)


def empty_off_a_line(shape, dtype, offset_items):
    """An empty C-contiguous array whose data starts offset_items past a
    64-byte line (numpy.empty's large arrays start 16 bytes past one)."""
    itemsize = np.dtype(dtype).itemsize
    count = int(np.prod(shape))
    buffer = np.empty(count * itemsize + 128, np.uint8)
    start = (-buffer.ctypes.data) % 64 + offset_items * itemsize
    return buffer[start:start + count * itemsize].view(dtype).reshape(shape)


# ---------------------------------------------------------------- comparisons

def assert_close(actual, expected, dtype=None, tol=None, what="result", rtol=None):
    """Same shape, dtype `dtype` (if given), values within `tol` absolute plus
    `rtol` (default: `tol`) relative; `tol` defaults to TOLERANCE[actual dtype]."""
    actual = np.asarray(actual)
    if dtype is not None:
        assert actual.dtype == np.dtype(dtype), f"{what}: dtype {actual.dtype}, expected {np.dtype(dtype)}"
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape}, expected {expected.shape}"
    if tol is None:
        tol = TOLERANCE[actual.dtype]
    np.testing.assert_allclose(actual.astype(np.float64), expected, rtol=tol if rtol is None else rtol,
                               atol=tol, err_msg=what)


def _ordered_bits(a):
    """16-bit floats as integers ordered like the floats (-0 == +0)."""
    bits = np.ascontiguousarray(a).view(np.uint16).astype(np.int32)
    return np.where(bits & 0x8000, 0x8000 - bits, bits)


ONE_PASS_KINDS = ["gaussian", "offset", "small spread", "trend", "outliers first", "two levels", "first 64 apart"]


def one_pass_rows(rng, kind, rows, cols):
    """Rows of `kind` (ONE_PASS_KINDS) for the tests of the one-pass moments
    (forward_rows.c, LN_ONE_PASS_MOMENTS): the first three kinds keep them,
    the rest have a shift (the mean of the first 64 or 32 values) too far
    from the mean and take the second pass, or would lose accuracy without it."""
    x = rng.standard_normal((rows, cols))
    if kind == "offset":
        x += 100.0
    elif kind == "small spread":
        x = 3.0 + 1e-2 * x
    elif kind == "trend":
        x = np.linspace(-3.0, 5.0, cols) + 0.1 * x
    elif kind == "outliers first":
        x[:, :3] = 50.0
    elif kind == "two levels":
        x[:, cols // 2:] += 8.0
    elif kind == "first 64 apart":
        x[:, :64] += 20.0
    return x


def ulp_distance(a, b):
    """Units in the last place between two float16 or two bfloat16 arrays."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.dtype.itemsize == 2
    return np.abs(_ordered_bits(a) - _ordered_bits(b))


def assert_within_ulp(actual, expected64, dtype, ulps=1, atol=0.0, what="result"):
    """`actual` (of half `dtype`) is within `ulps` of the float64 `expected64`
    rounded to `dtype`, or within `atol` of `expected64`: half results are
    float32 computations rounded once, so near zero (where bfloat16's ulp is
    far below float32's absolute error on the row) the float32 error decides."""
    actual = np.asarray(actual)
    assert actual.dtype == np.dtype(dtype), f"{what}: dtype {actual.dtype}, expected {np.dtype(dtype)}"
    exact = np.asarray(expected64, dtype=np.float64)
    expected = exact.astype(dtype)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape}, expected {expected.shape}"
    distance = ulp_distance(actual, expected)
    bad = (distance > ulps) & ~(np.abs(actual.astype(np.float64) - exact) <= atol)
    if np.any(bad):
        i = tuple(int(k) for k in np.argwhere(bad)[0])
        raise AssertionError(f"{what}: {int(np.count_nonzero(bad))} elements off, e.g. {distance[i]} ulps "
                             f"at {i}: got {actual[i]!r}, expected {expected[i]!r} (float64 {exact[i]!r})")


def assert_matches_reference(actual, expected64, what="result"):
    """Outputs of unit-spread data: float32/float64 within TOLERANCE absolute;
    float16/bfloat16 within 1 ulp (or float32's error)."""
    dtype = np.asarray(actual).dtype
    if dtype.itemsize == 2:
        assert_within_ulp(actual, expected64, dtype, atol=2e-6, what=what)
    else:
        assert_close(actual, expected64, what=what, rtol=0)


@contextlib.contextmanager
def unchanged(*arrays):
    """Assert that the block does not modify any of `arrays` (bit for bit)."""
    snapshots = [np.array(a, copy=True) for a in arrays]
    yield
    for i, (a, snap) in enumerate(zip(arrays, snapshots)):
        assert np.asarray(a).tobytes() == snap.tobytes(), f"argument {i} was modified"


def fill_sentinel(out):
    out[...] = 7
    return out


def assert_sentinel(out):
    assert np.all(np.asarray(out, dtype=np.float64) == 7), "out was written before the error"


def python_subprocess(code, **env):
    """Run `python -c code` importing the package under test; return stdout."""
    import subprocess
    environment = dict(os.environ, PYTHONPATH=PACKAGE_PARENT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for key in ("LAYERNORM_SIMD", "LAYERNORM_NUM_THREADS", "OMP_NUM_THREADS"):
        environment.pop(key, None)
    environment.update(env)
    done = subprocess.run([sys.executable, "-c", code], env=environment, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def numeric_gradient(loss, a, h=1e-6):
    """Central finite differences of the scalar `loss()` with respect to the
    float64 array `a`, perturbed in place one element at a time."""
    grad = np.zeros(a.shape)
    for i in np.ndindex(a.shape):
        saved = a[i]
        a[i] = saved + h
        up = loss()
        a[i] = saved - h
        down = loss()
        a[i] = saved
        grad[i] = (up - down) / (2 * h)
    return grad


def relative_error(actual, expected, floor=1.0):
    """max |actual - expected| / max(floor, max |expected|), in float64."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    if actual.size == 0:
        return 0.0
    return float(np.max(np.abs(actual - expected)) / max(floor, np.max(np.abs(expected))))


# ---------------------------------------------------------------- checks against the reference
#
# Each runs one function of the package on its inputs and compares every
# output with the float64 reference (`layernorm._reference`): float32/float64
# within TOLERANCE, float16/bfloat16 within 1 ulp (assert_matches_reference).
# Gradients dx are compared relative to their natural scale rstd * max|dy * weight|
# (a row with a tiny variance has a large rstd); dweight/dbias relative to their size.

GRAD_TOLERANCE = {FLOAT32: 2e-6, FLOAT64: 1e-12}


def _stats_tolerance(dtype):
    return 1e-12 if np.dtype(dtype) == FLOAT64 else 2e-6


def check_layer_norm(x, axis=-1, weight=None, bias=None, eps=1e-5):
    """layer_norm(x, return_stats=True) against the reference; returns (y, mean, rstd)."""
    x = np.asarray(x)
    y, mean, rstd = ln.layer_norm(x, axis, weight, bias, eps, return_stats=True)
    ry, rmean, rrstd = ref.layer_norm(x, axis, weight, bias, eps)
    dtype = x.dtype.newbyteorder("=")
    assert y.dtype == dtype, f"y has dtype {y.dtype}, expected {dtype}"
    assert_matches_reference(y, ry, what="y")
    tol = _stats_tolerance(dtype)
    assert_close(mean, rmean, stats_dtype(dtype), tol=tol, what="mean")
    assert_close(rstd, rrstd, stats_dtype(dtype), tol=tol, what="rstd")
    return y, mean, rstd


def check_rms_norm(x, axis=-1, weight=None, eps=None):
    """rms_norm(x, return_stats=True) against the reference; returns (y, rrms)."""
    x = np.asarray(x)
    y, rrms = ln.rms_norm(x, axis, weight, eps, return_stats=True)
    ry, rrrms = ref.rms_norm(x, axis, weight, eps)
    dtype = x.dtype.newbyteorder("=")
    assert y.dtype == dtype
    assert_matches_reference(y, ry, what="y")
    assert_close(rrms, rrrms, stats_dtype(dtype), tol=_stats_tolerance(dtype), what="rrms")
    return y, rrms


def _check_dx(dx, rdx, rstd, dy, weight, dtype):
    assert dx.dtype == dtype and dx.shape == rdx.shape, "dx dtype/shape"
    scale = np.asarray(rstd, np.float64) * np.max(np.abs(np.asarray(dy, np.float64)), initial=0)
    if weight is not None:
        scale = scale * np.max(np.abs(np.asarray(weight, np.float64)), initial=0)
    if dtype.itemsize == 2:
        assert_within_ulp(dx, rdx, dtype, atol=2e-6 * scale, what="dx")
    else:
        error = np.max(np.abs(dx.astype(np.float64) - rdx) / scale, initial=0.0)
        assert error <= GRAD_TOLERANCE[dtype], f"dx: error {error} relative to rstd * max|dy * weight|"


def _check_param_grad(got, expected, shape, weight, dtype, what, terms, axis):
    """`expected` sums `terms()` (float64, x's shape) over the axes that are
    not normalized (`axis` is the normalized ones)."""
    assert got.shape == shape, f"{what} shape {got.shape}, expected {shape}"
    grad_dtype = np.asarray(weight).dtype if weight is not None else stats_dtype(dtype)
    assert got.dtype == grad_dtype, f"{what} dtype {got.dtype}, expected {grad_dtype}"
    if grad_dtype.itemsize == 2:
        # a half gradient is a float32 sum rounded once: within 1 ulp, or,
        # where the terms cancel to a value whose half ulp is finer than
        # float32's error on that sum, within that error: (n + 2) float32
        # unit roundoffs of the terms' magnitudes for n terms
        magnitudes = np.abs(terms())
        others = tuple(d for d in range(magnitudes.ndim) if d not in as_axes(axis, magnitudes.ndim))
        n = magnitudes.size // max(1, got.size)
        atol = (n + 2) * 2.0 ** -24 * magnitudes.sum(axis=others).reshape(got.shape)
        assert_within_ulp(got, expected, grad_dtype, atol=atol, what=what)
    else:
        tol = 1e-5 if dtype.itemsize == 2 else GRAD_TOLERANCE[stats_dtype(dtype)]
        error = relative_error(got, expected)
        assert error <= tol, f"{what}: relative error {error}"


def check_layer_norm_backward(x, dy, axis=-1, weight=None):
    """layer_norm_backward with the forward's own statistics against the reference."""
    x, dy = np.asarray(x), np.asarray(dy)
    _, mean, rstd = ln.layer_norm(x, axis, weight, return_stats=True)
    dx, dweight, dbias = ln.layer_norm_backward(dy, x, mean, rstd, axis, weight)
    rdx, rdweight, rdbias = ref.layer_norm_backward(dy, x, mean, rstd, axis, weight)
    dtype = x.dtype.newbyteorder("=")
    _check_dx(dx, rdx, rstd, dy, weight, dtype)
    pshape = param_shape(x.shape, axis)
    dy64 = dy.astype(np.float64)
    _check_param_grad(dweight, rdweight, pshape, weight, dtype, "dweight",
                      lambda: dy64 * ((x.astype(np.float64) - mean) * rstd), axis)
    _check_param_grad(dbias, rdbias, pshape, weight, dtype, "dbias", lambda: dy64, axis)
    return dx, dweight, dbias


def check_rms_norm_backward(x, dy, axis=-1, weight=None):
    """rms_norm_backward with the forward's own statistics against the reference."""
    x, dy = np.asarray(x), np.asarray(dy)
    _, rrms = ln.rms_norm(x, axis, weight, return_stats=True)
    dx, dweight = ln.rms_norm_backward(dy, x, rrms, axis, weight)
    rdx, rdweight = ref.rms_norm_backward(dy, x, rrms, axis, weight)
    dtype = x.dtype.newbyteorder("=")
    _check_dx(dx, rdx, rrms, dy, weight, dtype)
    _check_param_grad(dweight, rdweight, param_shape(x.shape, axis), weight, dtype, "dweight",
                      lambda: dy.astype(np.float64) * (x.astype(np.float64) * rrms), axis)
    return dx, dweight
