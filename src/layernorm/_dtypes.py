"""Which dtypes the kernels take, and how other inputs convert.

float32/float64/float16 and bfloat16 (``ml_dtypes.bfloat16``, when that
package is installed) run natively; booleans and integers convert to float64
as ``numpy.mean`` does; everything else is refused.  Half precision is
computed in float32 with float32 statistics.
"""
import importlib.util
import sys

import numpy as np

from . import _kernels

FLOAT32 = np.dtype(np.float32)
FLOAT64 = np.dtype(np.float64)
FLOAT16 = np.dtype(np.float16)

KERNEL_CODES = {FLOAT32: _kernels.FLOAT32, FLOAT64: _kernels.FLOAT64, FLOAT16: _kernels.FLOAT16}

# ml_dtypes' bfloat16, taken up once the caller has imported ml_dtypes.
# layernorm does not import it: that takes half a second (0.52 s against
# numpy's 0.04 s on the development host), and no bfloat16 array exists
# before the caller has imported it.
_bfloat16 = None


def bfloat16_dtype():
    """ml_dtypes' bfloat16 dtype once ml_dtypes has been imported, else None."""
    global _bfloat16
    if _bfloat16 is None:
        scalar_type = getattr(sys.modules.get("ml_dtypes"), "bfloat16", None)
        if scalar_type is not None:
            _bfloat16 = np.dtype(scalar_type)
            KERNEL_CODES[_bfloat16] = _kernels.BFLOAT16
            _kernels.set_bfloat16_dtype(_bfloat16)
    return _bfloat16


def is_bfloat16(dtype):
    bfloat16 = bfloat16_dtype()
    return bfloat16 is not None and np.dtype(dtype) == bfloat16


def bfloat16_installed():
    """Is ml_dtypes installed (without importing it)?"""
    return "ml_dtypes" in sys.modules or importlib.util.find_spec("ml_dtypes") is not None


bfloat16_dtype()   # ml_dtypes imported before layernorm


def kernel_dtype(dtype, name):
    """The storage dtype the kernels run on for data of `dtype`.

    Raises TypeError naming argument `name` for dtypes with no exact real
    floating-point meaning here (complex, object, strings, long double...).
    """
    dtype = np.dtype(dtype)
    native = dtype.newbyteorder("=") if not dtype.isnative else dtype
    if native in KERNEL_CODES or is_bfloat16(native):
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
    return np.dtype(dtype).kind in "biuf" or is_bfloat16(dtype)
