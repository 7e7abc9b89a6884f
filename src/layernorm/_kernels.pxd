# Declarations of the C API in include/layernorm/layernorm.h.
from libc.stdint cimport int64_t

cdef extern from "layernorm/layernorm.h" nogil:
    ctypedef struct ln_layout:
        int64_t outer, reduce, inner

    ctypedef struct ln_forward_args:
        int mode
        ln_layout layout
        const void *x
        const void *residual
        void *sum_out
        void *y
        const void *weight
        const void *bias
        int params_in_storage_type
        void *mean
        void *rstd
        double eps
        int num_threads

    ctypedef struct ln_backward_args:
        int mode
        ln_layout layout
        const void *dy
        const void *x
        const void *mean
        const void *rstd
        const void *weight
        int params_in_storage_type
        void *dx
        void *dweight
        void *dbias
        int num_threads

    int ln_forward(int dtype, const ln_forward_args *args)
    int ln_backward(int dtype, const ln_backward_args *args)
    enum: LN_SIMD_BASELINE
    int ln_simd_level()
    int ln_simd_best_supported()
    int ln_simd_compiled_mask()
    int ln_select_simd(int level)
    const char *ln_simd_name(int level)
    int ln_bf16_instructions_available()
    int ln_use_bf16_instructions(int use)
    int ln_bf16_instructions_in_use()
    int ln_openmp_enabled()
    int ln_openmp_max_threads()
    int ln_openmp_set_threads(int n)
