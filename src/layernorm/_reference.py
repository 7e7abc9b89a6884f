"""Slow NumPy reference implementations.

Every kernel is tested against these.  They favour clarity over speed: the
textbook two-pass formulas, computed in long double (80-bit on x86, where a
float64 mean of data near 3e4 is itself off by 1e-12) and returned as
float64, whatever the input dtype.
"""
import numpy as np

WIDE = np.longdouble


def _wide(a):
    return np.asarray(a, dtype=WIDE)


def _f64(*arrays):
    return tuple(np.asarray(a, dtype=np.float64) for a in arrays)


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
    return _wide(p).reshape(shape)


def layer_norm(x, axis=-1, weight=None, bias=None, eps=1e-5):
    """Return (y, mean, rstd) in float64; mean/rstd keep the reduced dims."""
    x = _wide(x)
    axes = _axes(x.ndim, axis)
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    rstd = 1 / np.sqrt(var + WIDE(eps))
    y = (x - mean) * rstd
    if weight is not None:
        y = y * _broadcast_param(weight, x, axes)
    if bias is not None:
        y = y + _broadcast_param(bias, x, axes)
    return _f64(y, mean, rstd)


def layer_norm_backward(dy, x, mean, rstd, axis=-1, weight=None):
    """Analytic gradient of layer_norm; returns (dx, dweight, dbias) in float64."""
    x, dy, mean, rstd = _wide(x), _wide(dy), _wide(mean), _wide(rstd)
    axes = _axes(x.ndim, axis)
    others = tuple(a for a in range(x.ndim) if a not in axes)
    n = int(np.prod(_param_shape(x, axes)))
    xhat = (x - mean) * rstd
    g = dy if weight is None else dy * _broadcast_param(weight, x, axes)
    sum_g = g.sum(axis=axes, keepdims=True)
    sum_gx = (g * xhat).sum(axis=axes, keepdims=True)
    dx = rstd * (g - sum_g / n - xhat * sum_gx / n) if n else np.zeros_like(x)
    pshape = _param_shape(x, axes)
    dweight = (dy * xhat).sum(axis=others).reshape(pshape)
    dbias = dy.sum(axis=others).reshape(pshape)
    return _f64(dx, dweight, dbias)


def default_rms_eps(dtype):
    """PyTorch's default: machine epsilon of float32, or of float64 for float64."""
    dt = np.dtype(dtype)
    return float(np.finfo(np.float64 if dt == np.float64 else np.float32).eps)


def rms_norm(x, axis=-1, weight=None, eps=None):
    """Return (y, rrms) in float64."""
    x0 = np.asarray(x)
    if eps is None:
        eps = default_rms_eps(x0.dtype)
    x = _wide(x0)
    axes = _axes(x.ndim, axis)
    rrms = 1 / np.sqrt((x * x).mean(axis=axes, keepdims=True) + WIDE(eps))
    y = x * rrms
    if weight is not None:
        y = y * _broadcast_param(weight, x, axes)
    return _f64(y, rrms)


def rms_norm_backward(dy, x, rrms, axis=-1, weight=None):
    """Analytic gradient of rms_norm; returns (dx, dweight) in float64."""
    x, dy, rrms = _wide(x), _wide(dy), _wide(rrms)
    axes = _axes(x.ndim, axis)
    others = tuple(a for a in range(x.ndim) if a not in axes)
    n = int(np.prod(_param_shape(x, axes)))
    xhat = x * rrms
    g = dy if weight is None else dy * _broadcast_param(weight, x, axes)
    sum_gx = (g * xhat).sum(axis=axes, keepdims=True)
    dx = rrms * (g - xhat * sum_gx / n) if n else np.zeros_like(x)
    dweight = (dy * xhat).sum(axis=others).reshape(_param_shape(x, axes))
    return _f64(dx, dweight)
