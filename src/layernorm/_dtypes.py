"""Which dtypes the kernels take, and how other inputs convert.

float32/float64/float16 and bfloat16 (``ml_dtypes.bfloat16``, when that
package is installed) run natively; booleans and integers convert to float64
as ``numpy.mean`` does; everything else is refused.  Half precision is
computed in float32 with float32 statistics.
"""
import numpy as np

from . import _kernels

FLOAT32 = np.dtype(np.float32)
FLOAT64 = np.dtype(np.float64)
FLOAT16 = np.dtype(np.float16)


def _bfloat16_dtype():
    try:
        import ml_dtypes
    except ImportError:
        return None
    return np.dtype(ml_dtypes.bfloat16)


BFLOAT16 = _bfloat16_dtype()

KERNEL_CODES = {FLOAT32: _kernels.FLOAT32, FLOAT64: _kernels.FLOAT64, FLOAT16: _kernels.FLOAT16}
if BFLOAT16 is not None:
    KERNEL_CODES[BFLOAT16] = _kernels.BFLOAT16
    _kernels.set_bfloat16_dtype(BFLOAT16)


def kernel_dtype(dtype, name):
    """The storage dtype the kernels run on for data of `dtype`.

    Raises TypeError naming argument `name` for dtypes with no exact real
    floating-point meaning here (complex, object, strings, long double...).
    """
    dtype = np.dtype(dtype)
    native = dtype.newbyteorder("=") if not dtype.isnative else dtype
    if native in KERNEL_CODES:
        return native
    if dtype.kind in "biu":
        return FLOAT64
    raise TypeError(
        f"{name} has dtype {dtype}, which layernorm does not support; use float16, "
        f"bfloat16, float32 or float64 (integers and booleans convert to float64)")


def compute_dtype(dtype):
    """float64 for float64 data, float32 for everything else."""
    return FLOAT64 if dtype == FLOAT64 else FLOAT32


def is_real_floating_or_integer(dtype):
    return np.dtype(dtype).kind in "biuf" or np.dtype(dtype) == BFLOAT16
