/* layernorm public C API.
 *
 * Every operation works on a C-contiguous array viewed as x[outer][reduce][inner]
 * and normalizes over `reduce`: inner == 1 is the row layout (normalized axes
 * trailing), inner > 1 the strided layout (a block of axes followed by others,
 * e.g. the channel axis of NCHW).  Statistics have outer*inner entries.
 * Weights and biases have `reduce` entries in the compute type (float for
 * float32/float16/bfloat16 data, double for float64), or in x's storage type
 * when params_in_storage_type is set.  All entry points return
 * an int status (LN_OK on success) and never allocate more than O(statistics)
 * scratch; results are bitwise identical for any num_threads.
 */
#ifndef LAYERNORM_LAYERNORM_H
#define LAYERNORM_LAYERNORM_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum ln_status {
    LN_OK = 0,
    LN_ERROR_ARGUMENT = 1,   /* a size or pointer the kernel cannot work with */
    LN_ERROR_NO_MEMORY = 2,  /* scratch allocation failed */
    LN_ERROR_DTYPE = 3       /* no kernel for this dtype */
};

enum ln_dtype { LN_FLOAT32 = 0, LN_FLOAT64 = 1, LN_FLOAT16 = 2, LN_BFLOAT16 = 3, LN_NUM_DTYPES = 4 };

enum ln_mode { LN_MODE_LAYER_NORM = 0, LN_MODE_RMS_NORM = 1 };

enum ln_simd_level { LN_SIMD_BASELINE = 0, LN_SIMD_AVX2 = 1, LN_SIMD_AVX512 = 2 };

typedef struct {
    int64_t outer, reduce, inner;  /* layout x[outer][reduce][inner] */
} ln_layout;

/* Forward: y = normalize(s) * weight + bias with s = x (+ residual).
 * LN:  mean/rstd statistics;  RMS: rstd holds 1/rms and mean is unused.   */
typedef struct {
    int mode;                 /* enum ln_mode */
    ln_layout layout;
    const void *x;            /* IN  [outer][reduce][inner], storage dtype */
    const void *residual;     /* IN  same shape, or NULL */
    void *sum_out;            /* OUT s = x + residual (required with residual) */
    void *y;                  /* OUT same shape as x (may alias x or sum_out) */
    const void *weight;       /* IN  [reduce] compute type, or NULL */
    const void *bias;         /* IN  [reduce] compute type, or NULL (LN only) */
    int params_in_storage_type;  /* weight/bias stored like x (e.g. float16) instead */
    void *mean;               /* OUT [outer][inner] compute type, or NULL */
    void *rstd;               /* OUT [outer][inner] compute type, or NULL */
    double eps;
    int num_threads;
} ln_forward_args;

/* Backward of the forward above (without residual: its gradient is dx). */
typedef struct {
    int mode;                 /* enum ln_mode */
    ln_layout layout;
    const void *dy;           /* IN  [outer][reduce][inner] */
    const void *x;            /* IN  [outer][reduce][inner] */
    const void *mean;         /* IN  [outer][inner] compute type (LN only) */
    const void *rstd;         /* IN  [outer][inner] compute type (rrms for RMS) */
    const void *weight;       /* IN  [reduce] compute type, or NULL */
    int params_in_storage_type;  /* weight stored like x (e.g. float16) instead */
    void *dx;                 /* OUT [outer][reduce][inner] */
    void *dweight;            /* OUT [reduce] compute type, or NULL */
    void *dbias;              /* OUT [reduce] compute type, or NULL (LN only) */
    int num_threads;
} ln_backward_args;

int ln_forward(int dtype, const ln_forward_args *args);
int ln_backward(int dtype, const ln_backward_args *args);

/* Runtime configuration: the SIMD level chosen at first use (or forced with
 * ln_select_simd / the LAYERNORM_SIMD environment variable), the best level
 * this CPU supports and the build, and the OpenMP runtime's thread count. */
int ln_simd_level(void);
int ln_simd_best_supported(void);
int ln_simd_compiled_mask(void);            /* bit i set: level i was built */
int ln_select_simd(int level);              /* LN_ERROR_ARGUMENT if unavailable */
const char *ln_simd_name(int level);
/* bfloat16 at the AVX-512 level: kernels built with AVX512-BF16's conversion
 * (the same bits), taken by default where the CPU has it. */
int ln_bf16_instructions_available(void);   /* built, and this CPU has AVX512-BF16 */
int ln_use_bf16_instructions(int use);       /* allow them (default) or not */
int ln_bf16_instructions_in_use(void);
int ln_openmp_enabled(void);
int ln_openmp_max_threads(void);
int ln_openmp_set_threads(int n);

#ifdef __cplusplus
}
#endif
#endif
