/* Runtime CPU dispatch and the public entry points.
 *
 * Built for baseline x86-64 (or the portable target).  At first use it reads
 * cpuid and xgetbv (the OS must save the wide registers), honours
 * LAYERNORM_SIMD=baseline|avx2|avx512, and fills the one table of kernel
 * pointers.  ln_forward / ln_backward pick the row or strided kernel.
 */
#include <stdlib.h>
#include <string.h>
#include "layernorm/layernorm.h"
#include "layernorm/kernel_table.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
#define LN_X86 1
#include <cpuid.h>
#endif

LN_DECLARE_LEVEL(baseline)
#ifdef LN_BUILD_AVX2
LN_DECLARE_LEVEL(avx2)
#endif
#ifdef LN_BUILD_AVX512
LN_DECLARE_LEVEL(avx512)
#endif
#ifdef LN_BUILD_AVX512BF16
LN_DECLARE_KERNELS(bf16, avx512bf16)
#endif

#define LN_KERNEL_SET(dt, isa) \
    {ln_forward_rows_##dt##_##isa, ln_forward_strided_##dt##_##isa, \
     ln_backward_rows_##dt##_##isa, ln_backward_strided_##dt##_##isa}
#define LN_LEVEL_SETS(isa) \
    {LN_KERNEL_SET(f32, isa), LN_KERNEL_SET(f64, isa), LN_KERNEL_SET(f16, isa), LN_KERNEL_SET(bf16, isa)}

/* The dispatch table: the only global state of the C library. */
static struct {
    int level;                               /* -1 until first use */
    ln_kernel_set kernels[LN_NUM_DTYPES];
    int bf16_instructions;                   /* AVX-512 level: take the AVX512-BF16 bfloat16 kernels where they run */
} dispatch = {-1, {{0}}, 1};

static const ln_kernel_set baseline_sets[LN_NUM_DTYPES] = LN_LEVEL_SETS(baseline);
#ifdef LN_BUILD_AVX2
static const ln_kernel_set avx2_sets[LN_NUM_DTYPES] = LN_LEVEL_SETS(avx2);
#endif
#ifdef LN_BUILD_AVX512
static const ln_kernel_set avx512_sets[LN_NUM_DTYPES] = LN_LEVEL_SETS(avx512);
#endif
#ifdef LN_BUILD_AVX512BF16
static const ln_kernel_set avx512bf16_set = LN_KERNEL_SET(bf16, avx512bf16);
#endif

static const ln_kernel_set *level_sets(int level)
{
    switch (level) {
    case LN_SIMD_BASELINE: return baseline_sets;
#ifdef LN_BUILD_AVX2
    case LN_SIMD_AVX2: return avx2_sets;
#endif
#ifdef LN_BUILD_AVX512
    case LN_SIMD_AVX512: return avx512_sets;
#endif
    default: return NULL;
    }
}

int ln_simd_compiled_mask(void)
{
    int mask = 1 << LN_SIMD_BASELINE;
#ifdef LN_BUILD_AVX2
    mask |= 1 << LN_SIMD_AVX2;
#endif
#ifdef LN_BUILD_AVX512
    mask |= 1 << LN_SIMD_AVX512;
#endif
    return mask;
}

#ifdef LN_X86
static unsigned long long read_xcr0(void)
{
    unsigned int eax, edx;
    __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
    return ((unsigned long long)edx << 32) | eax;
}
#endif

/* The best level that this CPU and OS can run (ignoring what was built). */
static int cpu_best_level(void)
{
#ifdef LN_X86
    unsigned int a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return LN_SIMD_BASELINE;
    const int osxsave = (c >> 27) & 1, avx = (c >> 28) & 1, fma = (c >> 12) & 1, f16c = (c >> 29) & 1;
    if (!(osxsave && avx && fma && f16c)) return LN_SIMD_BASELINE;
    const unsigned long long xcr0 = read_xcr0();
    if ((xcr0 & 0x6) != 0x6) return LN_SIMD_BASELINE;            /* XMM and YMM state */
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return LN_SIMD_BASELINE;
    const int avx2 = (b >> 5) & 1;
    if (!avx2) return LN_SIMD_BASELINE;
    const int avx512 = ((b >> 16) & 1) && ((b >> 17) & 1) && ((b >> 30) & 1) && ((b >> 31) & 1); /* F DQ BW VL */
    if (avx512 && (xcr0 & 0xE0) == 0xE0) return LN_SIMD_AVX512;   /* opmask and ZMM state */
    return LN_SIMD_AVX2;
#else
    return LN_SIMD_BASELINE;
#endif
}

/* AVX512-BF16 (cpuid leaf 7, subleaf 1, EAX bit 5), on a CPU that runs the
 * AVX-512 level. */
static int cpu_has_avx512_bf16(void)
{
#ifdef LN_X86
    unsigned int a, b, c, d;
    if (cpu_best_level() < LN_SIMD_AVX512 || !__get_cpuid_count(7, 1, &a, &b, &c, &d)) return 0;
    return (a >> 5) & 1;
#else
    return 0;
#endif
}

int ln_bf16_instructions_available(void)
{
#ifdef LN_BUILD_AVX512BF16
    return cpu_has_avx512_bf16();
#else
    return 0;
#endif
}

int ln_simd_best_supported(void)
{
    int level = cpu_best_level();
    while (level > LN_SIMD_BASELINE && !(ln_simd_compiled_mask() & (1 << level))) level--;
    return level;
}

const char *ln_simd_name(int level)
{
    switch (level) {
    case LN_SIMD_BASELINE: return "baseline";
    case LN_SIMD_AVX2: return "avx2";
    case LN_SIMD_AVX512: return "avx512";
    default: return "unknown";
    }
}

int ln_select_simd(int level)
{
    if (level < LN_SIMD_BASELINE || level > ln_simd_best_supported()) return LN_ERROR_ARGUMENT;
    const ln_kernel_set *sets = level_sets(level);
    if (!sets) return LN_ERROR_ARGUMENT;
    memcpy(dispatch.kernels, sets, sizeof dispatch.kernels);
#ifdef LN_BUILD_AVX512BF16
    if (level == LN_SIMD_AVX512 && dispatch.bf16_instructions && ln_bf16_instructions_available())
        dispatch.kernels[LN_BFLOAT16] = avx512bf16_set;
#endif
    dispatch.level = level;
    return LN_OK;
}

/* First use: LAYERNORM_SIMD if set and runnable, else the best level. */
static void ensure_dispatch(void)
{
    if (dispatch.level >= 0) return;
    const char *forced = getenv("LAYERNORM_SIMD");
    if (forced) {
        for (int level = LN_SIMD_BASELINE; level <= LN_SIMD_AVX512; level++)
            if (strcmp(forced, ln_simd_name(level)) == 0 && ln_select_simd(level) == LN_OK) return;
    }
    ln_select_simd(ln_simd_best_supported());
}

int ln_use_bf16_instructions(int use)
{
    ensure_dispatch();
    dispatch.bf16_instructions = use != 0;
    return ln_select_simd(dispatch.level);
}

int ln_bf16_instructions_in_use(void)
{
#ifdef LN_BUILD_AVX512BF16
    ensure_dispatch();
    return dispatch.kernels[LN_BFLOAT16].forward_rows == avx512bf16_set.forward_rows;
#else
    return 0;
#endif
}

int ln_simd_level(void)
{
    ensure_dispatch();
    return dispatch.level;
}

int ln_forward(int dtype, const ln_forward_args *args)
{
    if (dtype < 0 || dtype >= LN_NUM_DTYPES) return LN_ERROR_DTYPE;
    if (!args || !args->x || !args->y || args->num_threads < 1) return LN_ERROR_ARGUMENT;
    ensure_dispatch();
    const ln_kernel_set *k = &dispatch.kernels[dtype];
    return args->layout.inner == 1 ? k->forward_rows(args) : k->forward_strided(args);
}

int ln_backward(int dtype, const ln_backward_args *args)
{
    if (dtype < 0 || dtype >= LN_NUM_DTYPES) return LN_ERROR_DTYPE;
    if (!args || !args->x || !args->dy || !args->dx || args->num_threads < 1) return LN_ERROR_ARGUMENT;
    ensure_dispatch();
    const ln_kernel_set *k = &dispatch.kernels[dtype];
    return args->layout.inner == 1 ? k->backward_rows(args) : k->backward_strided(args);
}

/* OpenMP shim: the package builds (serially) without OpenMP. */
int ln_openmp_enabled(void)
{
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

int ln_openmp_max_threads(void)
{
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

int ln_openmp_set_threads(int n)
{
    if (n < 1) return LN_ERROR_ARGUMENT;
#ifdef _OPENMP
    omp_set_num_threads(n);
#endif
    return LN_OK;
}
