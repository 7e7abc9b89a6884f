"""No kernel reads or writes past an array's end.

The SIMD paths take a row's last elements with masked loads and stores (or
scalar code); an unmasked vector there would touch the bytes after the row.
Every array here ends where an unreadable page starts, so such an access
crashes.  The calls run in a subprocess, so a crash fails the test rather
than the test run.
"""
import pytest

from conftest import python_subprocess

SCRIPT = r"""
import ctypes, mmap
import numpy as np
import layernorm as ln
from layernorm import _kernels

PAGE = mmap.PAGESIZE
libc = ctypes.CDLL(None)
libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
keep = []

def at_page_end(template):
    # a copy of `template` whose last byte is the last one before a page that
    # cannot be read or written
    nbytes = template.nbytes
    pages = (nbytes + PAGE - 1) // PAGE + 1
    block = mmap.mmap(-1, pages * PAGE)
    base = ctypes.addressof(ctypes.c_char.from_buffer(block))
    assert libc.mprotect(base + (pages - 1) * PAGE, PAGE, 0) == 0    # PROT_NONE
    keep.append(block)
    raw = np.frombuffer(block, np.uint8, count=nbytes, offset=(pages - 1) * PAGE - nbytes)
    array = raw.view(template.dtype).reshape(template.shape)
    array[...] = template
    return array

dtypes = [np.float32, np.float64, np.float16]
try:
    import ml_dtypes
    dtypes.append(ml_dtypes.bfloat16)
except ImportError:
    pass
rng = np.random.default_rng(0)
calls = 0
for level in _kernels.simd_levels_available():
    _kernels.select_simd(level)
    for dtype in dtypes:
        for shape, axis in [((3, 30), -1), ((5, 7), -1), ((2, 100), -1), ((1, 17), -1), ((4, 1000), -1),
                            ((2, 3, 5), 1), ((3, 9, 7), (1, 2))]:
            axes = (axis,) if isinstance(axis, int) else axis
            pshape = tuple(shape[a % len(shape)] for a in axes)
            x = at_page_end(rng.standard_normal(shape).astype(dtype))
            r = at_page_end(rng.standard_normal(shape).astype(dtype))
            dy = at_page_end(rng.standard_normal(shape).astype(dtype))
            for pdtype in (np.float32 if dtype != np.float64 else np.float64, dtype):
                w = at_page_end(rng.uniform(0.5, 1.5, pshape).astype(pdtype))
                b = at_page_end(rng.uniform(-0.5, 0.5, pshape).astype(pdtype))
                y = at_page_end(np.zeros(shape, dtype))
                s = at_page_end(np.zeros(shape, dtype))
                expected, mean, rstd = ln.layer_norm(np.array(x), axis, np.array(w), np.array(b), return_stats=True)
                got = ln.layer_norm(x, axis, w, b, out=y)
                assert got is y and np.array_equal(y, expected, equal_nan=True), (level, dtype, shape)
                ln.rms_norm(x, axis, w, out=y)
                ln.add_layer_norm(x, r, axis, w, b, out=y, sum_out=s)
                ln.add_rms_norm(x, r, axis, w, out=y, sum_out=s)
                ln.layer_norm_backward(dy, x, mean, rstd, axis, w)
                ln.rms_norm_backward(dy, x, ln.rms_norm(x, axis, w, return_stats=True)[1], axis, w)
                y2 = at_page_end(np.array(x))
                ln.layer_norm(y2, axis, w, b, out=y2)    # in place
                assert np.array_equal(y2, expected, equal_nan=True)
                calls += 1
print(calls)
"""


def test_no_access_past_the_end_of_any_array():
    out = python_subprocess(SCRIPT)
    assert int(out.strip().splitlines()[-1]) > 0
