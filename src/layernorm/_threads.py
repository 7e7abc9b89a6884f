"""Thread control.

The kernels use the OpenMP runtime they were linked with, so its thread
count is the one setting: ``set_num_threads``, the ``LAYERNORM_NUM_THREADS``
environment variable (read at import) and
``threadpoolctl.threadpool_limits(n, user_api="openmp")`` all change it.
Like every OpenMP setting it applies to the calling Python thread (and to
threads started after the import, for the environment variable).
"""
import operator
import os
import warnings

from . import _kernels

_serial_setting = [1]   # what get_num_threads reports in a build without OpenMP


def _check_count(n, name):
    if isinstance(n, bool):
        raise TypeError(f"{name} must be a positive int, got {n!r}")
    try:
        n = operator.index(n)
    except TypeError:
        raise TypeError(f"{name} must be a positive int, got {n!r}") from None
    if n < 1:
        raise ValueError(f"{name} must be a positive int, got {n!r}")
    return n


def get_num_threads():
    """Number of threads the kernels use."""
    if _kernels.openmp_enabled():
        return _kernels.openmp_max_threads()
    return _serial_setting[0]


def set_num_threads(n):
    """Set the number of threads the kernels use; return the previous count.

    Results are bitwise identical for any count.  Without OpenMP in the
    build the kernels stay serial and the value is only recorded.
    """
    n = _check_count(n, "n")
    previous = get_num_threads()
    if _kernels.openmp_enabled():
        _kernels.openmp_set_threads(n)
    else:
        _serial_setting[0] = n
    return previous


def _apply_environment():
    value = os.environ.get("LAYERNORM_NUM_THREADS")
    if not value:
        return
    try:
        set_num_threads(int(value))
    except (TypeError, ValueError):
        warnings.warn(f"LAYERNORM_NUM_THREADS must be a positive int, got {value!r}; ignoring it")


_apply_environment()
