# The common call, checked and run in C (included by _kernels.pyx).
#
# functional.py calls fast_forward / fast_backward first.  They take the
# call only when every argument is already exactly what the kernel reads:
# a C-contiguous ndarray of a kernel dtype normalized over one block of
# adjacent axes (axis an int or a tuple of ints): trailing ones (the row
# layout) or followed by others (the strided layout, the channel axis of
# NCHW say), weight/bias None or C-contiguous arrays of the
# parameter dtype and shape; out (and sum_out) None, x itself (the residual
# itself), or writeable C-contiguous arrays that overlap no input.
# Anything else returns None and the general (validating) path runs, which
# also raises every error; so these functions never raise for bad input.
# Measured (timeit medians, float32 with weight and bias, 2 threads): the
# same checks in Python cost (8, 16) 1.88 us per layer_norm call and
# (20, 5, 10, 10) over its last 3 axes 3.61 us; here 0.41 us and 1.92 us.
from cpython.ref cimport Py_INCREF
from libc.math cimport INFINITY
from libc.float cimport DBL_EPSILON, FLT_EPSILON
from libc.stdint cimport int64_t, uint64_t

cdef extern from "numpy/arrayobject.h":
    object PyArray_NewFromDescr(type subtype, cnp.dtype descr, int nd, cnp.npy_intp *dims,
                                cnp.npy_intp *strides, void *data, int flags, object obj)

from layernorm._buffer_pool import empty as _pooled_empty, MIN_POOLED_BYTES as _MIN_POOLED_BYTES

cdef cnp.dtype _FLOAT32 = np.dtype(np.float32)
cdef cnp.dtype _FLOAT64 = np.dtype(np.float64)
cdef cnp.dtype _FLOAT16 = np.dtype(np.float16)
cdef object _BFLOAT16 = None     # set by _dtypes.py once the caller has imported ml_dtypes

# Below this many elements a call counts as small (the kernels' own
# single-thread threshold, LN_PARALLEL_MIN_ELEMENTS).
cdef int64_t _SMALL_CALL_ELEMENTS = 32768


# Weights of at least this many entries are read natively at the SIMD
# levels: their float32 copies (128 KB and more) come from fresh pages every
# call, and numpy converts float16 at about 1.2 ns an entry.
cdef int64_t _NATIVE_PARAMS_MIN_ENTRIES = 32768


cpdef bint native_half_params_pay(int64_t size, int64_t param_size):
    """Read half-precision weight/bias in x's dtype (converting each entry
    every time a row uses it) rather than a float32 copy (converted once per
    call)?  Native wins when each entry serves few rows (x at most 4x the
    weight's size), when the call is small (the copy's own overhead
    dominates), and at the AVX2/AVX-512 levels for weights of 32768 entries
    and more.  Forward, float16/bfloat16 weights, 2 threads, native time /
    copy time: (64, 262144) 0.60/0.86 at AVX-512, 0.63/0.97 at AVX2
    (rms_norm 0.55, fused add 0.60, backward 0.82 in float16 at AVX-512);
    (512, 32768) 0.90/0.97 and 0.99/0.99.  Shorter weights: (1024, 16384)
    0.95 at AVX-512 but 1.01 at AVX2, (16384, 1024) and (4096, 768) 0.97 to
    1.07, so the copy stays.  The baseline level converts float16 in integer
    code, and there native took 1.16x to 1.22x at every size."""
    return (size <= 4 * param_size or size < _SMALL_CALL_ELEMENTS
            or (param_size >= _NATIVE_PARAMS_MIN_ENTRIES and ln_simd_level() != LN_SIMD_BASELINE))


def set_bfloat16_dtype(dtype):
    """The bfloat16 dtype (ml_dtypes), or None."""
    global _BFLOAT16
    _BFLOAT16 = dtype


cdef int kernel_code(cnp.dtype dtype):
    """The kernel dtype code of `dtype`, or -1."""
    if dtype is _FLOAT32 or cnp.PyArray_EquivTypes(dtype, _FLOAT32):
        return FLOAT32
    if dtype is _FLOAT64 or cnp.PyArray_EquivTypes(dtype, _FLOAT64):
        return FLOAT64
    if dtype is _FLOAT16 or cnp.PyArray_EquivTypes(dtype, _FLOAT16):
        return FLOAT16
    if _BFLOAT16 is not None and (dtype is _BFLOAT16 or cnp.PyArray_EquivTypes(dtype, _BFLOAT16)):
        return BFLOAT16
    return -1


cdef int axes_block(object axis, int ndim, int *first):
    """Last axis of `axis` when it names one block of adjacent axes of an
    ndim array (an int, or a tuple or list of ints in any order, without
    repeats), with its first axis in *first; else -1."""
    cdef Py_ssize_t a, count, lowest, highest
    cdef uint64_t seen = 0
    if type(axis) is int:
        try:
            a = axis
        except OverflowError:
            return -1
        if a < 0:
            a += ndim
        if a < 0 or a >= ndim:
            return -1
        first[0] = a
        return a
    if type(axis) is list:
        axis = tuple(axis)
    if type(axis) is not tuple or ndim > 64:
        return -1
    count = len(<tuple>axis)
    if count == 0:
        return -1
    lowest, highest = ndim, -1
    for item in <tuple>axis:
        if type(item) is not int:
            return -1
        try:
            a = item
        except OverflowError:
            return -1
        if a < 0:
            a += ndim
        if a < 0 or a >= ndim or seen & (<uint64_t>1 << a):
            return -1
        seen |= <uint64_t>1 << a
        lowest = a if a < lowest else lowest
        highest = a if a > highest else highest
    if count != highest - lowest + 1:
        return -1
    first[0] = lowest
    return highest


cdef inline bint is_floating(cnp.dtype dtype):
    """A NumPy floating dtype, or bfloat16 (whose kind is not "f"): the
    parameter dtypes the fast path converts."""
    return dtype.kind == b"f" or kernel_code(dtype) == BFLOAT16


cdef object as_kernel_param(object param, cnp.dtype target, int ndim, cnp.npy_intp *dims):
    """weight/bias of exactly the normalized shape in another floating dtype
    (float64 weights with float32 x, say, or half-precision ones read as
    float32) converted to `target`, as functional's as_parameter converts
    them; anything else unchanged, for is_exact to judge."""
    if type(param) is not cnp.ndarray or is_exact(param, target, ndim, dims):
        return param
    cdef cnp.ndarray p = <cnp.ndarray>param
    if cnp.PyArray_NDIM(p) != ndim:
        return param
    cdef int i
    for i in range(ndim):
        if cnp.PyArray_DIMS(p)[i] != dims[i]:
            return param
    if not is_floating(p.descr):
        return param
    return p.astype(target, order="C")


cdef inline bint is_exact(object array, cnp.dtype dtype, int ndim, cnp.npy_intp *dims):
    """array is None, or a C-contiguous ndarray of exactly dtype and shape."""
    if array is None:
        return True
    if type(array) is not cnp.ndarray:
        return False
    cdef cnp.ndarray a = <cnp.ndarray>array
    if cnp.PyArray_NDIM(a) != ndim or not cnp.PyArray_IS_C_CONTIGUOUS(a):
        return False
    cdef int i
    for i in range(ndim):
        if cnp.PyArray_DIMS(a)[i] != dims[i]:
            return False
    cdef cnp.dtype own = a.descr
    return own is dtype or cnp.PyArray_EquivTypes(own, dtype)


cdef inline bint overlaps(cnp.ndarray a, object other):
    """Do two C-contiguous arrays share bytes?  (numpy.may_share_memory's
    bounds test, exact for contiguous arrays.)"""
    if other is None:
        return False
    cdef cnp.ndarray b = <cnp.ndarray>other
    cdef char *a0 = <char *>cnp.PyArray_DATA(a)
    cdef char *b0 = <char *>cnp.PyArray_DATA(b)
    return a0 < b0 + cnp.PyArray_NBYTES(b) and b0 < a0 + cnp.PyArray_NBYTES(a)


cdef bint is_separate_output(object out, cnp.dtype dtype, int ndim, cnp.npy_intp *dims,
                             object x, object residual, object weight, object bias):
    """out is a writeable C-contiguous array of exactly dtype and shape that
    shares no memory with any input."""
    if out is None or not is_exact(out, dtype, ndim, dims):
        return False
    cdef cnp.ndarray o = <cnp.ndarray>out
    return (cnp.PyArray_ISWRITEABLE(o) and not overlaps(o, x) and not overlaps(o, residual)
            and not overlaps(o, weight) and not overlaps(o, bias))


cdef object empty_array(int ndim, cnp.npy_intp *dims, cnp.dtype dtype):
    """An uninitialized C-contiguous array; large ones from the buffer pool."""
    cdef cnp.npy_intp nbytes = dtype.itemsize
    cdef int i
    for i in range(ndim):
        nbytes *= dims[i]
    if nbytes >= _MIN_POOLED_BYTES:
        return _pooled_empty(tuple([dims[i] for i in range(ndim)]), dtype)
    Py_INCREF(dtype)   # PyArray_NewFromDescr steals a reference to the descriptor
    return PyArray_NewFromDescr(cnp.ndarray, dtype, ndim, dims, NULL, NULL, 0, None)


cdef inline int current_threads():
    return ln_openmp_max_threads() if ln_openmp_enabled() else 1


def fast_forward(int mode, x, axis, weight, bias, eps, out, bint return_stats,
                 residual=None, sum_out=None):
    """layer_norm / rms_norm / add_*_norm for the common call, or None when
    the general path must run (see the top of this file)."""
    if type(x) is not cnp.ndarray:
        return None
    cdef cnp.ndarray xa = <cnp.ndarray>x
    cdef int ndim = cnp.PyArray_NDIM(xa)
    cdef cnp.dtype dtype = xa.descr
    cdef int code = kernel_code(dtype)
    if code < 0 or ndim == 0 or not cnp.PyArray_IS_C_CONTIGUOUS(xa):
        return None
    cdef double e
    if eps is None and mode == RMS_NORM:
        # rms_norm's default, as functional._default_rms_eps
        e = DBL_EPSILON if code == FLOAT64 else FLT_EPSILON
    elif type(eps) is float:
        e = eps
    elif type(eps) is int or isinstance(eps, (np.floating, np.integer)):
        e = float(eps)    # check_eps's conversion (a bool is neither)
    else:
        return None
    if not (0.0 <= e < INFINITY):
        return None
    cdef int64_t size = cnp.PyArray_SIZE(xa)
    if size == 0:
        return None
    cdef int start = 0
    cdef int last = axes_block(axis, ndim, &start)
    if last < 0:
        return None
    cdef cnp.npy_intp *dims = cnp.PyArray_DIMS(xa)
    cdef int pdim = last - start + 1
    cdef int64_t n = 1, inner = 1
    cdef int i
    for i in range(start, last + 1):
        n *= dims[i]
    for i in range(last + 1, ndim):
        inner *= dims[i]
    cdef cnp.dtype stat_dtype = _FLOAT64 if code == FLOAT64 else _FLOAT32
    # half precision: weights in x's dtype are read natively when they pay
    cdef bint storage = False
    if code == FLOAT16 or code == BFLOAT16:
        given = weight if weight is not None else bias
        storage = (given is not None and is_exact(weight, dtype, pdim, dims + start)
                   and is_exact(bias, dtype, pdim, dims + start)
                   and native_half_params_pay(size, n))
    cdef cnp.dtype param_dtype = dtype if storage else stat_dtype
    # the copies the general path would make (exact), here rather than
    # through it: (4096, 768) float16 with float16 weight and bias took 1.08x
    # the time of float32 ones that way; (8, 16) float32 with float64 ones
    # 6.7 us a call against 0.6 us
    weight = as_kernel_param(weight, param_dtype, pdim, dims + start)
    bias = as_kernel_param(bias, param_dtype, pdim, dims + start)
    if not (is_exact(weight, param_dtype, pdim, dims + start) and is_exact(bias, param_dtype, pdim, dims + start)):
        return None
    s = None
    if residual is not None:
        if not is_exact(residual, dtype, ndim, dims):
            return None
        if sum_out is None:
            s = empty_array(ndim, dims, dtype)
        elif ((sum_out is residual and cnp.PyArray_ISWRITEABLE(<cnp.ndarray>residual))
              or is_separate_output(sum_out, dtype, ndim, dims, x, residual, weight, bias)):
            s = sum_out
        else:
            return None
    if out is None:
        y = empty_array(ndim, dims, dtype)
    elif out is x and residual is None and cnp.PyArray_ISWRITEABLE(xa):
        y = out
    elif (is_separate_output(out, dtype, ndim, dims, x, residual, weight, bias)
          and not overlaps(<cnp.ndarray>out, s)):
        y = out
    else:
        return None
    mean = rstd = None
    cdef cnp.npy_intp stat_dims[64]
    if return_stats:
        for i in range(ndim):
            stat_dims[i] = 1 if start <= i <= last else dims[i]
        rstd = empty_array(ndim, stat_dims, stat_dtype)
        if mode == LAYER_NORM:
            mean = empty_array(ndim, stat_dims, stat_dtype)

    cdef ln_forward_args args
    cdef int status
    args.mode = mode
    args.layout.outer = size // (n * inner)
    args.layout.reduce = n
    args.layout.inner = inner
    args.x = cnp.PyArray_DATA(xa)
    args.residual = data_or_null(residual)
    args.sum_out = data_or_null(s)
    args.y = data_or_null(y)
    args.weight = data_or_null(weight)
    args.bias = data_or_null(bias)
    args.params_in_storage_type = storage
    args.mean = data_or_null(mean)
    args.rstd = data_or_null(rstd)
    args.eps = e
    args.num_threads = current_threads()
    with nogil:
        status = ln_forward(code, &args)
    check(status, "the forward kernel")
    if residual is not None:
        return y, s
    if not return_stats:
        return y
    return (y, mean, rstd) if mode == LAYER_NORM else (y, rstd)


def fast_backward(int mode, dy, x, mean, rstd, axis, weight):
    """layer_norm_backward / rms_norm_backward for the common call:
    C-contiguous dy and x of one kernel dtype and shape over one block of
    adjacent axes,
    statistics of the exact shape in the statistics dtype (float32, float64
    for float64 x), weight of the exact shape in that dtype or (half
    precision) in x's.  None when the general path must run."""
    if type(x) is not cnp.ndarray or type(dy) is not cnp.ndarray:
        return None
    cdef cnp.ndarray xa = <cnp.ndarray>x
    cdef int ndim = cnp.PyArray_NDIM(xa)
    cdef cnp.dtype dtype = xa.descr
    cdef int code = kernel_code(dtype)
    if code < 0 or ndim == 0 or not cnp.PyArray_IS_C_CONTIGUOUS(xa):
        return None
    cdef int64_t size = cnp.PyArray_SIZE(xa)
    cdef cnp.npy_intp *dims = cnp.PyArray_DIMS(xa)
    if size == 0 or not is_exact(dy, dtype, ndim, dims):
        return None
    cdef int start = 0
    cdef int last = axes_block(axis, ndim, &start)
    if last < 0:
        return None
    cdef int pdim = last - start + 1
    cdef int64_t n = 1, inner = 1
    cdef cnp.npy_intp stat_dims[64]
    cdef int i
    for i in range(ndim):
        stat_dims[i] = 1 if start <= i <= last else dims[i]
        if start <= i <= last:
            n *= dims[i]
        elif i > last:
            inner *= dims[i]
    cdef cnp.dtype stat_dtype = _FLOAT64 if code == FLOAT64 else _FLOAT32
    # half precision: a weight in x's dtype is read natively when that pays;
    # any other floating weight goes in as a copy in the statistics dtype.
    # The parameter gradients come back in the weight's dtype, as in
    # functional._backward.
    cdef bint storage = False
    cdef cnp.dtype gradient_dtype = stat_dtype
    if type(weight) is cnp.ndarray and is_floating((<cnp.ndarray>weight).descr):
        gradient_dtype = (<cnp.ndarray>weight).descr
    if (code == FLOAT16 or code == BFLOAT16) and weight is not None and is_exact(weight, dtype, pdim, dims + start):
        storage = native_half_params_pay(size, n)
    weight = as_kernel_param(weight, dtype if storage else stat_dtype, pdim, dims + start)
    if not (is_exact(mean, stat_dtype, ndim, stat_dims) and is_exact(rstd, stat_dtype, ndim, stat_dims)
            and rstd is not None and (mean is not None or mode == RMS_NORM)
            and is_exact(weight, dtype if storage else stat_dtype, pdim, dims + start)):
        return None
    dx = empty_array(ndim, dims, dtype)
    dweight = empty_array(pdim, dims + start, stat_dtype)
    dbias = empty_array(pdim, dims + start, stat_dtype) if mode == LAYER_NORM else None

    cdef ln_backward_args args
    cdef int status
    args.mode = mode
    args.layout.outer = size // (n * inner)
    args.layout.reduce = n
    args.layout.inner = inner
    args.dy = data_or_null(dy)
    args.x = cnp.PyArray_DATA(xa)
    args.mean = data_or_null(mean)
    args.rstd = data_or_null(rstd)
    args.weight = data_or_null(weight)
    args.params_in_storage_type = storage
    args.dx = data_or_null(dx)
    args.dweight = data_or_null(dweight)
    args.dbias = data_or_null(dbias)
    args.num_threads = current_threads()
    with nogil:
        status = ln_backward(code, &args)
    check(status, "the backward kernel")
    if not (gradient_dtype is stat_dtype or cnp.PyArray_EquivTypes(gradient_dtype, stat_dtype)):
        dweight = dweight.astype(gradient_dtype)
        dbias = None if dbias is None else dbias.astype(gradient_dtype)
    return (dx, dweight, dbias) if mode == LAYER_NORM else (dx, dweight)
