"""Argument checks shared by the array functions.

Everything is checked before any output is written; messages name the
argument and the offending value.
"""
import math
import numbers

import numpy as np

from ._dtypes import kernel_dtype, is_real_floating_or_integer


def as_input(x, name, dtype=None):
    """A C-contiguous, native-byte-order array in its kernel dtype.

    Never modifies `x`; copies only when the layout or dtype requires it.
    """
    array = np.asarray(x)
    target = kernel_dtype(array.dtype, name) if dtype is None else dtype
    return np.asarray(array, dtype=target, order="C")   # unlike ascontiguousarray, keeps 0-d


def check_same_shape(array, name, shape, reference="x"):
    if array.shape != tuple(shape):
        raise ValueError(f"{name} must have the shape of {reference} {tuple(shape)}, got {array.shape}")


def check_eps(eps, name="eps"):
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {eps!r}")
    eps = float(eps)
    if not math.isfinite(eps) or eps < 0:
        raise ValueError(f"{name} must be finite and >= 0, got {eps!r}")
    return eps


def as_parameter(p, name, shape, dtype):
    """weight/bias: exactly `shape`, converted to the compute `dtype`."""
    if p is None:
        return None
    array = np.asarray(p)
    if not is_real_floating_or_integer(array.dtype):
        raise TypeError(f"{name} must be a real array, got dtype {array.dtype}")
    if array.shape != tuple(shape):
        raise ValueError(f"{name} must have the normalized shape {tuple(shape)}, got {array.shape}")
    return np.ascontiguousarray(array, dtype=dtype)


def check_output(out, name, shape, dtype):
    """A caller's output array: right type, shape, dtype, and writeable."""
    if out is None:
        return None
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(out).__name__}")
    if out.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {out.shape}")
    if out.dtype != dtype:
        raise TypeError(f"{name} must have dtype {dtype}, got {out.dtype}")
    if not out.flags.writeable:
        raise ValueError(f"{name} is read-only")
    return out


def same_buffer(a, b):
    """True if a and b are the very same elements in the same layout."""
    return (a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
            and a.strides == b.strides and a.shape == b.shape and a.dtype == b.dtype)


def writable_in_place(out, inputs):
    """Can the kernel write straight into `out`?  Only if it is C-contiguous,
    native, and either is exactly one of the inputs or overlaps none."""
    if not (out.flags.c_contiguous and out.dtype.isnative):
        return False
    for array in inputs:
        if array is not None and np.may_share_memory(out, array) and not same_buffer(out, array):
            return False
    return True

