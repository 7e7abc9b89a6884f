"""Cython bindings of the C kernels (include/layernorm/layernorm.h).

The Python layer (functional.py) validates everything and allocates every
output; these functions only take the raw pointers, release the GIL around
the C call and turn a non-zero status into an exception.
"""
import numpy as np
cimport numpy as cnp

cnp.import_array()

# Fill the dispatch table now, under the GIL: the kernels run without it, and
# two threads' first calls must not both initialize it.
ln_simd_level()

# storage dtype codes of the C API (enum ln_dtype)
FLOAT32, FLOAT64, FLOAT16, BFLOAT16 = 0, 1, 2, 3
LAYER_NORM, RMS_NORM = 0, 1

_STATUS_MESSAGES = {
    1: "invalid argument passed to the C kernel",
    2: "out of memory for the kernel's scratch space",
    3: "no kernel for this dtype",
}


cdef inline void *data_or_null(object array):
    return NULL if array is None else cnp.PyArray_DATA(<cnp.ndarray>array)


cdef inline int check(int status, str what) except -1:
    if status != 0:
        if status == 2:
            raise MemoryError(f"cannot run {what}: {_STATUS_MESSAGES[2]}")
        raise RuntimeError(f"cannot run {what}: {_STATUS_MESSAGES.get(status, 'status %d' % status)}")
    return 0


def forward(int dtype, int mode, tuple layout, x, residual, sum_out, y, weight, bias,
            mean, rstd, double eps, int num_threads, bint params_in_storage_type=False):
    """y = normalize(x [+ residual]) over layout (outer, reduce, inner).

    weight/bias are in the compute type, or in x's dtype with
    params_in_storage_type (half precision)."""
    cdef ln_forward_args args
    cdef int status
    args.mode = mode
    args.layout.outer, args.layout.reduce, args.layout.inner = layout
    args.x = data_or_null(x)
    args.residual = data_or_null(residual)
    args.sum_out = data_or_null(sum_out)
    args.y = data_or_null(y)
    args.weight = data_or_null(weight)
    args.bias = data_or_null(bias)
    args.params_in_storage_type = params_in_storage_type
    args.mean = data_or_null(mean)
    args.rstd = data_or_null(rstd)
    args.eps = eps
    args.num_threads = num_threads
    with nogil:
        status = ln_forward(dtype, &args)
    check(status, "the forward kernel")


def backward(int dtype, int mode, tuple layout, dy, x, mean, rstd, weight,
             dx, dweight, dbias, int num_threads, bint params_in_storage_type=False):
    """dx, dweight, dbias of normalize over layout (outer, reduce, inner)."""
    cdef ln_backward_args args
    cdef int status
    args.mode = mode
    args.layout.outer, args.layout.reduce, args.layout.inner = layout
    args.dy = data_or_null(dy)
    args.x = data_or_null(x)
    args.mean = data_or_null(mean)
    args.rstd = data_or_null(rstd)
    args.weight = data_or_null(weight)
    args.params_in_storage_type = params_in_storage_type
    args.dx = data_or_null(dx)
    args.dweight = data_or_null(dweight)
    args.dbias = data_or_null(dbias)
    args.num_threads = num_threads
    with nogil:
        status = ln_backward(dtype, &args)
    check(status, "the backward kernel")


def simd_level():
    """Name of the SIMD level in use."""
    return ln_simd_name(ln_simd_level()).decode()


def simd_levels_available():
    """Names of the levels that were built and that this CPU can run."""
    best = ln_simd_best_supported()
    mask = ln_simd_compiled_mask()
    return [ln_simd_name(level).decode() for level in range(best + 1) if mask & (1 << level)]


def select_simd(str name):
    """Force a SIMD level (one of simd_levels_available())."""
    available = simd_levels_available()
    if name not in available:
        raise ValueError(f"simd level {name!r} is not available here; choose one of {available}")
    check(ln_select_simd(["baseline", "avx2", "avx512"].index(name)), "select_simd")


def bf16_instructions_available():
    """True if the bfloat16 kernels built with AVX512-BF16 can run here."""
    return bool(ln_bf16_instructions_available())


def bf16_instructions_in_use():
    """True if bfloat16 calls run the AVX512-BF16 kernels (AVX-512 level)."""
    return bool(ln_bf16_instructions_in_use())


def use_bf16_instructions(bint use):
    """Allow (the default) or forbid the AVX512-BF16 bfloat16 kernels at the
    AVX-512 level; they give the same bits as the others."""
    check(ln_use_bf16_instructions(use), "use_bf16_instructions")


def openmp_enabled():
    return bool(ln_openmp_enabled())


def openmp_max_threads():
    return ln_openmp_max_threads()


def openmp_set_threads(int n):
    check(ln_openmp_set_threads(n), "set_num_threads")


include "_fast_path.pxi"
