/* Internal: the per-(SIMD level, dtype) kernels and the dispatch table that
 * holds the ones chosen at run time (src/kernels/dispatch.c). */
#ifndef LAYERNORM_KERNEL_TABLE_H
#define LAYERNORM_KERNEL_TABLE_H

#include "layernorm/layernorm.h"

typedef int (*ln_forward_kernel)(const ln_forward_args *args);
typedef int (*ln_backward_kernel)(const ln_backward_args *args);

typedef struct {
    ln_forward_kernel forward_rows;      /* inner == 1 */
    ln_forward_kernel forward_strided;   /* inner > 1 */
    ln_backward_kernel backward_rows;
    ln_backward_kernel backward_strided;
} ln_kernel_set;

#define LN_DECLARE_KERNELS(dt, isa)                                          \
    int ln_forward_rows_##dt##_##isa(const ln_forward_args *args);           \
    int ln_forward_strided_##dt##_##isa(const ln_forward_args *args);        \
    int ln_backward_rows_##dt##_##isa(const ln_backward_args *args);         \
    int ln_backward_strided_##dt##_##isa(const ln_backward_args *args);

#define LN_DECLARE_LEVEL(isa)                                                \
    LN_DECLARE_KERNELS(f32, isa) LN_DECLARE_KERNELS(f64, isa)                \
    LN_DECLARE_KERNELS(f16, isa) LN_DECLARE_KERNELS(bf16, isa)

#endif
