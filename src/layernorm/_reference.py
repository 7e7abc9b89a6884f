"""Slow float64 NumPy reference implementations.

Every kernel is tested against these, and the benchmarks use them as the
NumPy baseline.  They favour clarity over speed: everything is computed in
float64 with the textbook two-pass formulas, whatever the input dtype.
"""
import numpy as np


def _axes(ndim, axis):
    axes = (axis,) if np.ndim(axis) == 0 else tuple(axis)
    return tuple(sorted(int(a) % ndim if ndim else int(a) for a in axes))


def _param_shape(x, axes):
    return tuple(x.shape[a] for a in axes)


def _broadcast_param(p, x, axes):
    """Reshape a parameter of the normalized shape to broadcast against x."""
    shape = [1] * x.ndim
    for a in axes:
        shape[a] = x.shape[a]
    return np.asarray(p, dtype=np.float64).reshape(shape)


def layer_norm(x, axis=-1, weight=None, bias=None, eps=1e-5):
    """Return (y, mean, rstd) in float64; mean/rstd keep the reduced dims."""
    x = np.asarray(x, dtype=np.float64)
    axes = _axes(x.ndim, axis)
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    rstd = 1.0 / np.sqrt(var + eps)
    y = (x - mean) * rstd
    if weight is not None:
        y = y * _broadcast_param(weight, x, axes)
    if bias is not None:
        y = y + _broadcast_param(bias, x, axes)
    return y, mean, rstd


def layer_norm_backward(dy, x, mean, rstd, axis=-1, weight=None):
    """Analytic gradient of layer_norm; returns (dx, dweight, dbias) in float64."""
    x = np.asarray(x, dtype=np.float64)
    dy = np.asarray(dy, dtype=np.float64)
    axes = _axes(x.ndim, axis)
    others = tuple(a for a in range(x.ndim) if a not in axes)
    mean = np.asarray(mean, dtype=np.float64)
    rstd = np.asarray(rstd, dtype=np.float64)
    n = int(np.prod(_param_shape(x, axes)))
    xhat = (x - mean) * rstd
    g = dy if weight is None else dy * _broadcast_param(weight, x, axes)
    sum_g = g.sum(axis=axes, keepdims=True)
    sum_gx = (g * xhat).sum(axis=axes, keepdims=True)
    dx = rstd * (g - sum_g / n - xhat * sum_gx / n) if n else np.zeros_like(x)
    pshape = _param_shape(x, axes)
    dweight = (dy * xhat).sum(axis=others).reshape(pshape)
    dbias = dy.sum(axis=others).reshape(pshape)
    return dx, dweight, dbias


def default_rms_eps(dtype):
    """PyTorch's default: machine epsilon of float32, or of float64 for float64."""
    dt = np.dtype(dtype)
    return float(np.finfo(np.float64 if dt == np.float64 else np.float32).eps)


def rms_norm(x, axis=-1, weight=None, eps=None):
    """Return (y, rrms) in float64."""
    x0 = np.asarray(x)
    if eps is None:
        eps = default_rms_eps(x0.dtype)
    x = x0.astype(np.float64)
    axes = _axes(x.ndim, axis)
    rrms = 1.0 / np.sqrt((x * x).mean(axis=axes, keepdims=True) + eps)
    y = x * rrms
    if weight is not None:
        y = y * _broadcast_param(weight, x, axes)
    return y, rrms


def rms_norm_backward(dy, x, rrms, axis=-1, weight=None):
    """Analytic gradient of rms_norm; returns (dx, dweight) in float64."""
    x = np.asarray(x, dtype=np.float64)
    dy = np.asarray(dy, dtype=np.float64)
    rrms = np.asarray(rrms, dtype=np.float64)
    axes = _axes(x.ndim, axis)
    others = tuple(a for a in range(x.ndim) if a not in axes)
    n = int(np.prod(_param_shape(x, axes)))
    xhat = x * rrms
    g = dy if weight is None else dy * _broadcast_param(weight, x, axes)
    sum_gx = (g * xhat).sum(axis=axes, keepdims=True)
    dx = rrms * (g - xhat * sum_gx / n) if n else np.zeros_like(x)
    dweight = (dy * xhat).sum(axis=others).reshape(_param_shape(x, axes))
    return dx, dweight
