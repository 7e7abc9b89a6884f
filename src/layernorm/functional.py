"""Array functions: layer norm and RMS norm over any axes, forward and
backward, with the fused residual add.

Each function validates every argument first (nothing is written before
that), maps the axes onto the kernels' layout (see ``_axes``) and calls one
C kernel with the GIL released.  The common call (contiguous, one block of
adjacent axes, arguments already of the kernel's dtypes) is checked and run in C
first, by ``_kernels.fast_forward``/``fast_backward``.  float16/bfloat16 are
computed in float32; statistics are float32, or float64 for float64 input.
"""
import numpy as np

from . import _kernels, _buffer_pool
from ._axes import normalize_axes, plan_layout, keepdims_shape, param_shape
from ._dtypes import KERNEL_CODES, FLOAT32, FLOAT64, compute_dtype, is_bfloat16, kernel_dtype
from ._threads import get_num_threads
from ._validation import (as_input, as_parameter, check_eps, check_output, check_same_shape,
                          writable_in_place)

__all__ = ["layer_norm", "layer_norm_backward", "rms_norm", "rms_norm_backward",
           "add_layer_norm", "add_rms_norm"]

_LAYER_NORM, _RMS_NORM = _kernels.LAYER_NORM, _kernels.RMS_NORM


_POOLED_BYTES = _buffer_pool.MIN_POOLED_BYTES


def _empty_like(array):
    """A C-contiguous output of `array`'s shape and dtype (empty_like would
    keep a transposed view's strides); large ones come from the buffer pool."""
    if array.nbytes < _POOLED_BYTES:
        return np.empty(array.shape, array.dtype)
    return _buffer_pool.empty(array.shape, array.dtype)


def _contiguous(view):
    """A C-contiguous copy of a (transposed) view, into a pooled buffer."""
    result = _empty_like(view)
    np.copyto(result, view)
    return result


def _default_rms_eps(dtype):
    return float(np.finfo(FLOAT64 if dtype == FLOAT64 else FLOAT32).eps)


def _forward_result(mode, y, s, mean, rstd, fused_add, return_stats):
    """What the forward functions return: (y, s) for the fused add, else y,
    or with statistics (y, mean, rstd) / (y, rrms)."""
    if fused_add:
        return y, s
    if not return_stats:
        return y
    return (y, mean, rstd) if mode == _LAYER_NORM else (y, rstd)


def _as_companion(array, name, dtype, shape, reference="x"):
    """An input that must match x's (kernel) dtype and shape: dy, residual."""
    _require_array(array, name)     # numpy.asarray would make None a NaN scalar
    if isinstance(array, np.ndarray) and kernel_dtype(array.dtype, name) != dtype:
        raise TypeError(f"{name} has dtype {array.dtype} but {reference} has {dtype}; they must agree")
    converted = as_input(array, name, dtype)
    check_same_shape(converted, name, shape, reference)
    return converted


def _as_statistic(stat, name, shape, dtype):
    array = np.asarray(stat)
    if array.dtype.kind not in "fiu" and not is_bfloat16(array.dtype):
        raise TypeError(f"{name} must be a real array, got dtype {array.dtype}")
    if array.shape != tuple(shape):
        raise ValueError(f"{name} must have the statistics shape {tuple(shape)} "
                         f"(x's shape with the normalized axes set to 1), got {array.shape}")
    return np.ascontiguousarray(array, dtype=dtype)


def _params_in_storage_type(dtype, size, *params):
    """Read half-precision weight/bias natively (in x's dtype) instead of a
    float32 copy?  Native reads convert every entry each time a row uses it;
    a copy converts once per call.  Native wins when each entry serves few
    rows or when the call is small (see _kernels.native_half_params_pay)."""
    if compute_dtype(dtype) == dtype:
        return False
    given = [p for p in params if p is not None]
    if not given or not all(isinstance(p, np.ndarray) and p.dtype == dtype for p in given):
        return False
    return _kernels.native_half_params_pay(size, given[0].size)


def _inverse(permutation):
    return tuple(int(i) for i in np.argsort(permutation))


def _require_array(array, name):
    if array is None:
        raise TypeError(f"{name} must be an array, got None")


def _into(result, out):
    """Deliver a result into the caller's `out` (if any) and return it."""
    if out is None or result is out:
        return result if out is None else out
    np.copyto(out, result)
    return out


def _forward(mode, x, axis, weight, bias, eps, out, return_stats, residual=None, sum_out=None):
    xa = as_input(x, "x")
    dtype, stat_dtype = xa.dtype, compute_dtype(xa.dtype)
    ra = None if residual is None else _as_companion(residual, "residual", dtype, xa.shape)
    axes = normalize_axes(axis, xa.ndim)
    pshape = param_shape(xa.shape, axes)
    storage = _params_in_storage_type(dtype, xa.size, weight, bias)
    w = as_parameter(weight, "weight", pshape, dtype if storage else stat_dtype)
    b = as_parameter(bias, "bias", pshape, dtype if storage else stat_dtype)
    eps = _default_rms_eps(dtype) if eps is None and mode == _RMS_NORM else check_eps(eps)
    check_output(out, "out", xa.shape, dtype)
    check_output(sum_out, "sum_out", xa.shape, dtype)
    if out is not None and sum_out is not None and np.may_share_memory(out, sum_out):
        raise ValueError("out and sum_out must be different, non-overlapping arrays")
    # ---- validation done: from here on outputs may be written ----
    sshape = keepdims_shape(xa.shape, axes)
    want_mean = return_stats and mode == _LAYER_NORM
    mean = np.empty(sshape, stat_dtype) if want_mean else None
    rstd = np.empty(sshape, stat_dtype) if return_stats else None
    plan = plan_layout(xa.shape, axes)
    inputs = (xa, ra, w, b)

    if xa.size == 0:
        y, s = _empty_forward(xa, ra, out, sum_out, mean, rstd)
    elif plan.kind == "transpose":
        xk = _contiguous(xa.transpose(plan.permutation))
        rk = None if ra is None else _contiguous(ra.transpose(plan.permutation))
        yk = _empty_like(xk)
        sk = None if ra is None else _empty_like(xk)
        _kernels.forward(KERNEL_CODES[dtype], mode, plan.layout, xk, rk, sk, yk, w, b, mean, rstd,
                         eps, get_num_threads(), storage)
        inverse = _inverse(plan.permutation)
        y = _into(_contiguous(yk.transpose(inverse)), out)
        s = None if ra is None else _into(_contiguous(sk.transpose(inverse)), sum_out)
    else:
        yk = out if out is not None and writable_in_place(out, inputs) else _empty_like(xa)
        sk = None
        if ra is not None:
            sk = sum_out if sum_out is not None and writable_in_place(sum_out, inputs) else _empty_like(xa)
        _kernels.forward(KERNEL_CODES[dtype], mode, plan.layout, xa, ra, sk, yk, w, b, mean, rstd,
                         eps, get_num_threads(), storage)
        y = _into(yk, out)
        s = None if ra is None else _into(sk, sum_out)

    return _forward_result(mode, y, s, mean, rstd, residual is not None, return_stats)


def _empty_forward(xa, ra, out, sum_out, mean, rstd):
    """Empty input: empty outputs; statistics of empty rows are NaN, as numpy.mean's."""
    for stat in (mean, rstd):
        if stat is not None:
            stat.fill(np.nan)
    y = out if out is not None else np.empty_like(xa)
    s = None
    if ra is not None:
        s = sum_out if sum_out is not None else np.empty_like(xa)
    return y, s


def _backward(mode, dy, x, mean, rstd, axis, weight):
    xa = as_input(x, "x")
    dtype, stat_dtype = xa.dtype, compute_dtype(xa.dtype)
    dya = _as_companion(dy, "dy", dtype, xa.shape)
    axes = normalize_axes(axis, xa.ndim)
    pshape, sshape = param_shape(xa.shape, axes), keepdims_shape(xa.shape, axes)
    m = _as_statistic(mean, "mean", sshape, stat_dtype) if mode == _LAYER_NORM else None
    r = _as_statistic(rstd, "rstd" if mode == _LAYER_NORM else "rrms", sshape, stat_dtype)
    storage = _params_in_storage_type(dtype, xa.size, weight)
    w = as_parameter(weight, "weight", pshape, dtype if storage else stat_dtype)
    param_dtype = stat_dtype
    if weight is not None:
        wdt = np.asarray(weight).dtype
        param_dtype = wdt if (wdt.kind == "f" or is_bfloat16(wdt)) else stat_dtype
    # ---- validation done ----
    # the kernels write every element; empty inputs sum to zero
    allocate = np.zeros if xa.size == 0 else _buffer_pool.empty
    dweight = allocate(pshape, stat_dtype)
    dbias = allocate(pshape, stat_dtype) if mode == _LAYER_NORM else None
    plan = plan_layout(xa.shape, axes)
    if xa.size == 0:
        dx = np.empty_like(xa)
    elif plan.kind == "transpose":
        xk = _contiguous(xa.transpose(plan.permutation))
        dyk = _contiguous(dya.transpose(plan.permutation))
        dxk = _empty_like(xk)
        _kernels.backward(KERNEL_CODES[dtype], mode, plan.layout, dyk, xk, m, r, w, dxk, dweight, dbias,
                          get_num_threads(), storage)
        dx = _contiguous(dxk.transpose(_inverse(plan.permutation)))
    else:
        dx = _empty_like(xa)
        _kernels.backward(KERNEL_CODES[dtype], mode, plan.layout, dya, xa, m, r, w, dx, dweight, dbias,
                          get_num_threads(), storage)
    dweight = dweight.astype(param_dtype, copy=False)
    if dbias is None:
        return dx, dweight
    return dx, dweight, dbias.astype(param_dtype, copy=False)


def layer_norm(x, axis=-1, weight=None, bias=None, eps=1e-5, *, out=None, return_stats=False):
    """Layer normalization over `axis`: ``(x - mean) / sqrt(var + eps) * weight + bias``.

    Parameters
    ----------
    x : array_like
        float16, bfloat16 (ml_dtypes), float32 or float64; integers and
        booleans are converted to float64.
    axis : int or sequence of ints
        The axes normalized together (negative values count from the end).
    weight, bias : array_like, optional
        Shape ``tuple(x.shape[a] for a in sorted(axes))``.
    eps : float
        Added to the (biased) variance.
    out : ndarray, optional
        Where to write y; ``out=x`` normalizes in place.
    return_stats : bool
        Also return ``mean`` and ``rstd = 1/sqrt(var + eps)``, shaped like x
        with the normalized axes set to 1 (float32, float64 for float64 x).

    Returns
    -------
    y, or (y, mean, rstd)
    """
    y = _kernels.fast_forward(_LAYER_NORM, x, axis, weight, bias, eps, out, return_stats)
    if y is not None:
        return y
    return _forward(_LAYER_NORM, x, axis, weight, bias, eps, out, return_stats)


def rms_norm(x, axis=-1, weight=None, eps=None, *, out=None, return_stats=False):
    """RMS normalization over `axis`: ``x / sqrt(mean(x**2) + eps) * weight``.

    ``eps=None`` uses float32's machine epsilon (float64's for float64 x), as
    PyTorch does.  With ``return_stats`` returns ``(y, rrms)``,
    ``rrms = 1/sqrt(mean(x**2) + eps)`` shaped like x with the normalized axes
    set to 1.  Other arguments as in :func:`layer_norm`.
    """
    y = _kernels.fast_forward(_RMS_NORM, x, axis, weight, None, eps, out, return_stats)
    if y is not None:
        return y
    return _forward(_RMS_NORM, x, axis, weight, None, eps, out, return_stats)


def add_layer_norm(x, residual, axis=-1, weight=None, bias=None, eps=1e-5, *, out=None, sum_out=None):
    """Fused residual add and layer norm: ``s = x + residual; y = layer_norm(s)``.

    One pass writes both; ``sum_out=residual`` updates the residual stream in
    place.  `residual` must have x's shape and dtype.  Returns ``(y, s)``.
    """
    _require_array(residual, "residual")
    result = _kernels.fast_forward(_LAYER_NORM, x, axis, weight, bias, eps, out, False, residual, sum_out)
    if result is not None:
        return result
    return _forward(_LAYER_NORM, x, axis, weight, bias, eps, out, False, residual, sum_out)


def add_rms_norm(x, residual, axis=-1, weight=None, eps=None, *, out=None, sum_out=None):
    """Fused residual add and RMS norm: ``s = x + residual; y = rms_norm(s)``.  Returns ``(y, s)``."""
    _require_array(residual, "residual")
    result = _kernels.fast_forward(_RMS_NORM, x, axis, weight, None, eps, out, False, residual, sum_out)
    if result is not None:
        return result
    return _forward(_RMS_NORM, x, axis, weight, None, eps, out, False, residual, sum_out)


def layer_norm_backward(dy, x, mean, rstd, axis=-1, weight=None):
    """Gradients of :func:`layer_norm`.

    `mean` and `rstd` are the statistics ``layer_norm(..., return_stats=True)``
    returned.  Returns ``(dx, dweight, dbias)``: dx has x's shape and dtype;
    dweight and dbias have the normalized shape, summed over all other axes
    (in weight's dtype when weight is given, else the statistics' dtype).
    """
    if mean is not None:
        result = _kernels.fast_backward(_LAYER_NORM, dy, x, mean, rstd, axis, weight)
        if result is not None:
            return result
    return _backward(_LAYER_NORM, dy, x, mean, rstd, axis, weight)


def rms_norm_backward(dy, x, rrms, axis=-1, weight=None):
    """Gradients of :func:`rms_norm`: returns ``(dx, dweight)``."""
    result = _kernels.fast_backward(_RMS_NORM, dy, x, None, rrms, axis, weight)
    if result is not None:
        return result
    return _backward(_RMS_NORM, dy, x, None, rrms, axis, weight)
