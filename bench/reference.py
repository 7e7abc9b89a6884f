"""float64 references used to sanity-check every timed implementation's output.

A benchmark of a wrong answer is worthless: each implementation's first call
is compared against these (max absolute error, reported in the JSON and in the
detail tables), and a result far off is flagged in the report's notes.
The references are computed once per (case, kind) in float64 from the exact
input values the implementations received (half-precision inputs included).
"""
import numpy as np

from cases import EPS, RMS_EPS

# Max abs error above which an output is flagged as suspicious.
SUSPICIOUS = {"float64": 1e-6, "float32": 1e-2, "float16": 0.1, "bfloat16": 0.5}


def _f64(a):
    return np.asarray(a).astype(np.float64)


def _bparam(p, case):
    return _f64(p).reshape(case.param_broadcast_shape())


def layer_norm(case, x, w, b):
    x = _f64(x)
    mean = x.mean(axis=case.axes, keepdims=True)
    xc = x - mean
    rstd = 1.0 / np.sqrt(np.square(xc).mean(axis=case.axes, keepdims=True) + EPS)
    return xc * rstd * _bparam(w, case) + _bparam(b, case)


def rms_norm(case, x, w):
    x = _f64(x)
    rrms = 1.0 / np.sqrt(np.square(x).mean(axis=case.axes, keepdims=True) + RMS_EPS)
    return x * rrms * _bparam(w, case)


def layer_norm_backward_dx(case, dy, x, w):
    x, dy = _f64(x), _f64(dy)
    n = case.cols
    mean = x.mean(axis=case.axes, keepdims=True)
    xc = x - mean
    rstd = 1.0 / np.sqrt(np.square(xc).mean(axis=case.axes, keepdims=True) + EPS)
    xhat = xc * rstd
    g = dy * _bparam(w, case)
    sg = g.sum(axis=case.axes, keepdims=True)
    sgx = (g * xhat).sum(axis=case.axes, keepdims=True)
    return rstd * (g - sg / n - xhat * sgx / n)


def check_subset(case, limit=256):
    """(axis, indices) of the rows to check, or None for the whole array.

    Large arrays are checked on up to ``limit`` evenly spaced indices of their
    first non-normalized axis (whole normalized slices, so statistics are
    exact); this keeps the float64 references cheap.
    """
    outer = [a for a in range(case.ndim) if a not in case.axes]
    if not outer or case.shape[outer[0]] <= limit:
        return None
    a = outer[0]
    return a, np.unique(np.linspace(0, case.shape[a] - 1, limit).astype(np.intp))


def take(arr, subset):
    return arr if subset is None else np.take(arr, subset[1], axis=subset[0])


def compute(kind, case, data, dtype, subset=None):
    """Reference output of ``kind`` for ``case`` with inputs in ``dtype``,
    restricted to ``subset`` (see :func:`check_subset`)."""
    def g(name):
        a = data.get(name, dtype)
        return a if name in ("w", "b") else take(a, subset)
    if kind == "layer_norm":
        return layer_norm(case, g("x"), g("w"), g("b"))
    if kind == "rms_norm":
        return rms_norm(case, g("x"), g("w"))
    if kind == "add_layer_norm":   # the sum is rounded to dtype, as every implementation does
        return layer_norm(case, (g("x") + g("r")), g("w"), g("b"))
    if kind == "add_rms_norm":
        return rms_norm(case, (g("x") + g("r")), g("w"))
    if kind == "layer_norm_backward":
        return layer_norm_backward_dx(case, g("dy"), g("x"), g("w"))
    raise ValueError(kind)


def max_abs_error(output, ref, chunk=1 << 18):
    """max |output - ref|, in cache-sized float64 chunks (no full-size temporaries)."""
    out = np.asarray(output)
    if out.shape != ref.shape:
        return float("inf")
    out, ref = out.reshape(-1), ref.reshape(-1)
    err = 0.0
    for i in range(0, out.size, chunk):
        d = out[i:i + chunk].astype(np.float64)
        d -= ref[i:i + chunk]
        np.abs(d, out=d)
        err = max(err, float(d.max()))
    return err


def is_suspicious(err, dtype, kind, ref):
    limit = SUSPICIOUS.get(dtype, 1e-2)
    if kind == "layer_norm_backward":   # dx scales with rstd and dy: relative check
        limit *= max(1.0, float(np.max(np.abs(ref))) if ref.size else 1.0)
    return not (err <= limit)
