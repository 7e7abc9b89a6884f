/* Shared machinery of the kernel templates.
 *
 * Each kernel source in src/kernels is a template compiled once per
 * (SIMD level, dtype) by setup.py with:
 *   -DLN_DT=<0..3>            enum ln_dtype of the stored data
 *   -DLN_DT_NAME=f32|f64|f16|bf16
 *   -DLN_ISA_NAME=baseline|avx2|avx512
 *   -DLN_VECTOR_BYTES=16|32|64 width of one vector register at that level
 * and the level's -m flags.  The vectors are GCC/Clang vector extensions, so
 * the same source gives SSE2, AVX2+FMA or AVX-512 code (and portable code on
 * other architectures).  This header defines, for the dtype being built:
 *   E  storage type            C  compute type (float, or double for f64)
 *   V  vector of C, VL lanes   vd_add_widened  V added into VL doubles
 *   LOADV/STOREV/LOAD1/STORE1  conversions between storage and compute type
 *   NARROWV                    half types at AVX2/AVX-512: V rounded to E in a
 *                              register (STOREV stores it, STREAMV streams it)
 *   FN(name)                   ln_<name>_<dtype>_<isa>, the exported symbols
 * and includes lanes.h (reductions across a vector's lanes).
 */
#ifndef LAYERNORM_KERNEL_COMMON_H
#define LAYERNORM_KERNEL_COMMON_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include "layernorm/layernorm.h"
#include "layernorm/kernel_table.h"

#if !defined(LN_DT) || !defined(LN_DT_NAME) || !defined(LN_ISA_NAME) || !defined(LN_VECTOR_BYTES)
#error "kernel templates are compiled by setup.py with LN_DT, LN_DT_NAME, LN_ISA_NAME, LN_VECTOR_BYTES"
#endif

/* Preprocessor twins of enum ln_dtype (enums are invisible to #if). */
#define LN_DT_FLOAT32 0
#define LN_DT_FLOAT64 1
#define LN_DT_FLOAT16 2
#define LN_DT_BFLOAT16 3

#define LN_CAT4_(a, b, c, d) a##_##b##_##c##_##d
#define LN_CAT4(a, b, c, d) LN_CAT4_(a, b, c, d)
#define FN(name) LN_CAT4(ln, name, LN_DT_NAME, LN_ISA_NAME)

#if LN_DT == LN_DT_FLOAT64
typedef double C;
#else
typedef float C;
#endif

#define VL ((int64_t)(LN_VECTOR_BYTES / sizeof(C)))
/* Storage-type elements in a 64-byte cache line. */
#define LN_LINE_ELEMENTS ((int64_t)(64 / sizeof(E)))
typedef C V __attribute__((vector_size(LN_VECTOR_BYTES)));

static inline __attribute__((always_inline)) V vbroadcast(C c) { return (V){0} + c; }
/* c in every lane, exactly (c - (+0) is c for every c, -0 included, so GCC
 * drops the subtraction), for an inner loop's per-row constants: GCC then
 * broadcasts c from memory inside the instruction that uses it, where for
 * vbroadcast's 0 + c (-0 becomes +0) it kept an add and a register broadcast
 * at every use (the backward's dx).  vbroadcast stays as it was elsewhere:
 * its uses are outside inner loops, and changing it changes every kernel. */
static inline __attribute__((always_inline)) V vsplat(C c) { return c - (V){0}; }
static inline __attribute__((always_inline)) V vload_c(const C *p) { V v; memcpy(&v, p, sizeof v); return v; }
static inline __attribute__((always_inline)) void vstore_c(C *p, V v) { memcpy(p, &v, sizeof v); }
/* p[0, VL) += v in float64 (or = v, when first).  Written in native-width
 * double vectors: a float32 V widens to two of them, and GCC compiled the
 * generic double-width vector through 16-byte stack pieces whose
 * store-forwarding stalls cost the AVX2 row backward a third of its time. */
typedef double VDN __attribute__((vector_size(LN_VECTOR_BYTES)));
typedef double VDN_unaligned __attribute__((vector_size(LN_VECTOR_BYTES), aligned(8), may_alias));
static inline void vd_add_half(double *p, VDN v, int first)
{
    if (!first) v += *(const VDN_unaligned *)p;
    *(VDN_unaligned *)p = v;
}
/* Part `part` of v's VL lanes as float64: LN_WIDE_PARTS native-width double
 * vectors (a float32 V widens to two). */
#if LN_DT == LN_DT_FLOAT64
#define LN_WIDE_PARTS 1
#else
#define LN_WIDE_PARTS 2
#endif
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif
static inline VDN v_widened(V v, int part)
{
#if LN_DT == LN_DT_FLOAT64
    (void)part;
    return v;
#elif (defined(__x86_64__) || defined(__i386__)) && defined(__SSE2__)
    /* one conversion instruction per part: GCC compiled the generic
     * conversion below in quarters (AVX-512), or through the stack (AVX2) */
#if LN_VECTOR_BYTES == 64
    const __m512d whole = _mm512_castps_pd((__m512)v);
    return (VDN)_mm512_cvtps_pd(part ? _mm256_castpd_ps(_mm512_extractf64x4_pd(whole, 1)) : _mm512_castps512_ps256((__m512)v));
#elif LN_VECTOR_BYTES == 32
    return (VDN)_mm256_cvtps_pd(part ? _mm256_extractf128_ps((__m256)v, 1) : _mm256_castps256_ps128((__m256)v));
#else
    return (VDN)_mm_cvtps_pd(part ? _mm_movehl_ps((__m128)v, (__m128)v) : (__m128)v);
#endif
#else
    typedef float VFH __attribute__((vector_size(LN_VECTOR_BYTES / 2)));
#if LN_VECTOR_BYTES == 64
    const VFH lo = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7);
    const VFH hi = __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
#elif LN_VECTOR_BYTES == 32
    const VFH lo = __builtin_shufflevector(v, v, 0, 1, 2, 3), hi = __builtin_shufflevector(v, v, 4, 5, 6, 7);
#else
    const VFH lo = __builtin_shufflevector(v, v, 0, 1), hi = __builtin_shufflevector(v, v, 2, 3);
#endif
    return __builtin_convertvector(part ? hi : lo, VDN);
#endif
}
static inline void vd_add_widened(double *p, V v, int first)
{
    for (int part = 0; part < LN_WIDE_PARTS; part++) vd_add_half(p + part * (VL / LN_WIDE_PARTS), v_widened(v, part), first);
}

/* a * b + c, fused where the level has FMA.  The kernels are compiled with
 * -ffp-contract=off (see setup.py), so these are the only fused
 * multiply-adds: a vector path and the scalar path that must give its bits
 * use vmuladd and smuladd at the same places.  LN_FUSED_MULADD: this level
 * fuses them (ln_add_on_fma follows the same rule). */
#if defined(__FMA__) && (defined(__x86_64__) || defined(__i386__))
#define LN_FUSED_MULADD 1
#else
#define LN_FUSED_MULADD 0
#endif
#if LN_FUSED_MULADD
#include <immintrin.h>
static inline __attribute__((always_inline)) V vmuladd(V a, V b, V c)
{
#if LN_DT == LN_DT_FLOAT64 && LN_VECTOR_BYTES == 64
    return (V)_mm512_fmadd_pd((__m512d)a, (__m512d)b, (__m512d)c);
#elif LN_DT == LN_DT_FLOAT64 && LN_VECTOR_BYTES == 32
    return (V)_mm256_fmadd_pd((__m256d)a, (__m256d)b, (__m256d)c);
#elif LN_DT == LN_DT_FLOAT64
    return (V)_mm_fmadd_pd((__m128d)a, (__m128d)b, (__m128d)c);
#elif LN_VECTOR_BYTES == 64
    return (V)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)c);
#elif LN_VECTOR_BYTES == 32
    return (V)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c);
#else
    return (V)_mm_fmadd_ps((__m128)a, (__m128)b, (__m128)c);
#endif
}
#else
static inline __attribute__((always_inline)) V vmuladd(V a, V b, V c) { return a * b + c; }
#endif

/* The scalar a * b + c, fused exactly where vmuladd is, so that a scalar
 * path can give the bits of a vector one. */
static inline __attribute__((always_inline)) C smuladd(C a, C b, C c)
{
#if LN_FUSED_MULADD
#if LN_DT == LN_DT_FLOAT64
    return __builtin_fma(a, b, c);
#else
    return __builtin_fmaf(a, b, c);
#endif
#else
    return a * b + c;
#endif
}

/* v + neg, computed as fma(v, 1, neg) where the level has FMA: the same
 * rounding (the product is exact), but on the FMA pipes, which the adds of a
 * shifted sum leave idle (Zen 4 runs adds and FMAs on separate pipes).  `one`
 * comes from ln_opaque_one, so that the compiler does not fold the product
 * back into an add.  Used by the short-row statistics' two passes, where
 * each vector had two adds and at most one FMA.  A/B, AVX-512, the same bits:
 * forward (128, 768) in cache, 1 thread, float32 0.95x the time, float16
 * 0.92x, bfloat16 0.93x (AVX2 float16 0.84x); 2 threads (4096, 768) float16
 * 0.96x, (16384, 1024) float16 0.95x, float32 0.97x, fused add 0.95x.
 * Rows of 64 elements, bound by their per-row work, were even. */
static inline __attribute__((always_inline)) V ln_opaque_one(void)
{
    V one = vbroadcast(1);
#if LN_FUSED_MULADD
    __asm__("" : "+v"(one));
#endif
    return one;
}
static inline __attribute__((always_inline)) V ln_add_on_fma(V v, V neg, V one)
{
#if LN_FUSED_MULADD
    return vmuladd(v, one, neg);
#else
    (void)one;
    return v + neg;
#endif
}

#if LN_DT == LN_DT_FLOAT32
typedef float E;
static inline __attribute__((always_inline)) V LOADV(const E *p) { return vload_c(p); }
static inline __attribute__((always_inline)) void STOREV(E *p, V v) { vstore_c(p, v); }
static inline __attribute__((always_inline)) C LOAD1(const E *p) { return *p; }
static inline __attribute__((always_inline)) void STORE1(E *p, C c) { *p = c; }

#elif LN_DT == LN_DT_FLOAT64
typedef double E;
static inline __attribute__((always_inline)) V LOADV(const E *p) { return vload_c(p); }
static inline __attribute__((always_inline)) void STOREV(E *p, V v) { vstore_c(p, v); }
static inline __attribute__((always_inline)) C LOAD1(const E *p) { return *p; }
static inline __attribute__((always_inline)) void STORE1(E *p, C c) { *p = c; }

#elif LN_DT == LN_DT_FLOAT16
/* IEEE binary16 stored as its bits.  F16C / AVX-512 convert a whole vector in
 * one instruction; elsewhere a branch-free conversion on the bits and float
 * arithmetic (exact, round to nearest even; NaNs become the quiet NaN 0x7E00). */
typedef uint16_t E;
typedef uint16_t VH __attribute__((vector_size(LN_VECTOR_BYTES / 2)));
typedef uint32_t VU32 __attribute__((vector_size(LN_VECTOR_BYTES)));
typedef int32_t VI32 __attribute__((vector_size(LN_VECTOR_BYTES)));

static inline float half_bits_to_float(uint16_t h)
{
    const uint32_t w = (uint32_t)h << 16, sign = w & 0x80000000u, two_w = w + w;
    uint32_t bits = (two_w >> 4) + (0xE0u << 23);
    float normalized, denormalized;
    memcpy(&normalized, &bits, 4);
    normalized *= 0x1.0p-112f;                      /* rebias the exponent; Inf/NaN stay */
    bits = (two_w >> 17) | (126u << 23);
    memcpy(&denormalized, &bits, 4);
    denormalized -= 0.5f;                           /* subnormal halves, exactly */
    const float chosen = two_w < (1u << 27) ? denormalized : normalized;
    memcpy(&bits, &chosen, 4);
    bits |= sign;
    float out;
    memcpy(&out, &bits, 4);
    return out;
}

static inline uint16_t float_to_half_bits(float f)
{
    uint32_t w;
    memcpy(&w, &f, 4);
    const uint32_t shl1_w = w + w, sign = w & 0x80000000u;
    /* scale so that the float addition below rounds at the half's precision */
    float base = (fabsf(f) * 0x1.0p+112f) * 0x1.0p-110f;
    uint32_t bias = shl1_w & 0xFF000000u;
    if (bias < 0x71000000u) bias = 0x71000000u;
    uint32_t bias_bits = (bias >> 1) + 0x07800000u;
    float bias_value;
    memcpy(&bias_value, &bias_bits, 4);
    base = bias_value + base;
    uint32_t bits;
    memcpy(&bits, &base, 4);
    const uint32_t nonsign = ((bits >> 13) & 0x00007C00u) + (bits & 0x00000FFFu);
    return (uint16_t)((sign >> 16) | (shl1_w > 0xFF000000u ? 0x7E00u : nonsign));
}

#if LN_VECTOR_BYTES == 64 && defined(__AVX512F__)
#include <immintrin.h>
static inline __attribute__((always_inline)) V LOADV(const E *p) { return (V)_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p)); }
#define LN_NARROWV_IN_REGISTER 1
static inline __attribute__((always_inline)) __m256i NARROWV(V v) { return _mm512_cvtps_ph((__m512)v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
static inline __attribute__((always_inline)) void STOREV(E *p, V v) { _mm256_storeu_si256((__m256i *)p, NARROWV(v)); }
#elif LN_VECTOR_BYTES == 32 && defined(__F16C__)
#include <immintrin.h>
static inline __attribute__((always_inline)) V LOADV(const E *p) { return (V)_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)); }
#define LN_NARROWV_IN_REGISTER 1
static inline __attribute__((always_inline)) __m128i NARROWV(V v) { return _mm256_cvtps_ph((__m256)v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
static inline __attribute__((always_inline)) void STOREV(E *p, V v) { _mm_storeu_si128((__m128i *)p, NARROWV(v)); }
#elif LN_VECTOR_BYTES == 16 && defined(__SSE2__)
/* The scalar conversions above in SSE2 intrinsics: GCC's code for the
 * generic vectors below made float16 5.5x slower than float32 at baseline.
 * SSE2 has no unsigned 32-bit compares and no unsigned narrowing: those go
 * through shifts, a byte maximum and a signed pack (see each).  The byte
 * maximum, the NaN test by an unordered compare and STOREV2's one pack for
 * two vectors took float16 at baseline, 2 threads, to 0.81x to 0.87x the
 * time (forward, backward, rms, fused add); the same bits, NaN signs aside
 * (which NaN operand an operation passes on is the compiler's choice).
 * LOADV with fewer operations (no select) was slower: forward 1.02x. */
#include <immintrin.h>
static inline __attribute__((always_inline)) V LOADV(const E *p)
{
    const __m128i w = _mm_unpacklo_epi16(_mm_setzero_si128(), _mm_loadl_epi64((const __m128i *)p));
    const __m128i sign = _mm_and_si128(w, _mm_set1_epi32((int)0x80000000u)), two_w = _mm_add_epi32(w, w);
    const __m128i bits = _mm_add_epi32(_mm_srli_epi32(two_w, 4), _mm_set1_epi32(0xE0 << 23));
    const __m128 normalized = _mm_mul_ps(_mm_castsi128_ps(bits), _mm_set1_ps(0x1.0p-112f));
    const __m128i dbits = _mm_or_si128(_mm_srli_epi32(two_w, 17), _mm_set1_epi32(126 << 23));
    const __m128 denormalized = _mm_sub_ps(_mm_castsi128_ps(dbits), _mm_set1_ps(0.5f));
    /* two_w < 2^27, unsigned */
    const __m128i is_subnormal = _mm_cmpeq_epi32(_mm_srli_epi32(two_w, 27), _mm_setzero_si128());
    const __m128i chosen = _mm_or_si128(_mm_and_si128(is_subnormal, _mm_castps_si128(denormalized)),
                                        _mm_andnot_si128(is_subnormal, _mm_castps_si128(normalized)));
    return (V)_mm_castsi128_ps(_mm_or_si128(chosen, sign));
}
/* v rounded to binary16, each pattern sign-extended in its 32-bit lane (so
 * that the signed pack keeps it) */
static inline __attribute__((always_inline)) __m128i narrowed_lanes(V v)
{
    const __m128i w = _mm_castps_si128((__m128)v);
    const __m128i sign = _mm_and_si128(w, _mm_set1_epi32((int)0x80000000u));
    __m128 base = _mm_castsi128_ps(_mm_xor_si128(w, sign));
    base = _mm_mul_ps(_mm_mul_ps(base, _mm_set1_ps(0x1.0p+112f)), _mm_set1_ps(0x1.0p-110f));
    /* bias = max(exponent byte, 0x71) << 24: the unsigned byte maximum is the
     * unsigned compare and select in one instruction (the other bytes are 0) */
    const __m128i bias = _mm_max_epu8(_mm_and_si128(_mm_add_epi32(w, w), _mm_set1_epi32((int)0xFF000000u)),
                                      _mm_set1_epi32(0x71000000));
    const __m128i bias_bits = _mm_add_epi32(_mm_srli_epi32(bias, 1), _mm_set1_epi32(0x07800000));
    base = _mm_add_ps(_mm_castsi128_ps(bias_bits), base);
    const __m128i bits = _mm_castps_si128(base);
    const __m128i nonsign = _mm_add_epi32(_mm_and_si128(_mm_srli_epi32(bits, 13), _mm_set1_epi32(0x00007C00)),
                                          _mm_and_si128(bits, _mm_set1_epi32(0x00000FFF)));
    const __m128i is_nan = _mm_castps_si128(_mm_cmpunord_ps((__m128)v, (__m128)v));
    const __m128i magnitude = _mm_or_si128(_mm_and_si128(is_nan, _mm_set1_epi32(0x7E00)),
                                           _mm_andnot_si128(is_nan, nonsign));
    /* the pattern in the top half with its sign, shifted down arithmetically */
    return _mm_srai_epi32(_mm_or_si128(_mm_slli_epi32(magnitude, 16), sign), 16);
}
static inline __attribute__((always_inline)) void STOREV(E *p, V v)
{
    const __m128i narrow = narrowed_lanes(v);
    _mm_storel_epi64((__m128i *)p, _mm_packs_epi32(narrow, narrow));
}
/* STOREV(p, a); STOREV(p + VL, b): one pack and one store for both */
#define LN_HAS_STOREV2 1
static inline __attribute__((always_inline)) void STOREV2(E *p, V a, V b)
{
    _mm_storeu_si128((__m128i *)p, _mm_packs_epi32(narrowed_lanes(a), narrowed_lanes(b)));
}
#else
/* the scalar conversions above, lane-wise in vector registers */
static inline __attribute__((always_inline)) V LOADV(const E *p)
{
    VH h; memcpy(&h, p, sizeof h);
    const VU32 w = __builtin_convertvector(h, VU32) << 16, sign = w & 0x80000000u, two_w = w + w;
    VU32 bits = (two_w >> 4) + (0xE0u << 23);
    V normalized, denormalized;
    memcpy(&normalized, &bits, sizeof bits);
    normalized *= 0x1.0p-112f;
    bits = (two_w >> 17) | (126u << 23);
    memcpy(&denormalized, &bits, sizeof bits);
    denormalized -= 0.5f;
    VU32 nbits, dbits;
    memcpy(&nbits, &normalized, sizeof nbits);
    memcpy(&dbits, &denormalized, sizeof dbits);
    const VI32 is_subnormal = (VI32)(two_w < (1u << 27));
    const VU32 out = (VU32)((is_subnormal & (VI32)dbits) | (~is_subnormal & (VI32)nbits)) | sign;
    V v; memcpy(&v, &out, sizeof v); return v;
}
static inline __attribute__((always_inline)) void STOREV(E *p, V v)
{
    VU32 w; memcpy(&w, &v, sizeof w);
    const VU32 shl1_w = w + w, sign = w & 0x80000000u;
    VU32 absolute = w & 0x7FFFFFFFu;
    V base; memcpy(&base, &absolute, sizeof base);
    base = (base * 0x1.0p+112f) * 0x1.0p-110f;
    VU32 bias = shl1_w & 0xFF000000u;
    const VI32 small = (VI32)(bias < 0x71000000u);
    bias = (VU32)((small & ((VI32)(VU32){0} + 0x71000000)) | (~small & (VI32)bias));
    const VU32 bias_bits = (bias >> 1) + 0x07800000u;
    V bias_value; memcpy(&bias_value, &bias_bits, sizeof bias_value);
    base = bias_value + base;
    VU32 bits; memcpy(&bits, &base, sizeof bits);
    const VU32 nonsign = ((bits >> 13) & 0x00007C00u) + (bits & 0x00000FFFu);
    const VI32 is_nan = (VI32)(shl1_w > 0xFF000000u);
    const VU32 out = (sign >> 16) | (VU32)((is_nan & (VI32)((VU32){0} + 0x7E00u)) | (~is_nan & (VI32)nonsign));
    const VH h = __builtin_convertvector(out, VH);
    memcpy(p, &h, sizeof h);
}
#endif
#if defined(__F16C__)
/* One element by the vectors' own instructions: rows of 30 and 100 (whose
 * tails took the conversions in C) went at a third and two thirds of
 * bfloat16's speed.  The same values, and NaNs now as the vectors give them. */
static inline __attribute__((always_inline)) C LOAD1(const E *p) { return _cvtsh_ss(*p); }
static inline __attribute__((always_inline)) void STORE1(E *p, C c)
{
    *p = (E)_cvtss_sh(c, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}
#else
static inline __attribute__((always_inline)) C LOAD1(const E *p) { return half_bits_to_float(*p); }
static inline __attribute__((always_inline)) void STORE1(E *p, C c) { *p = float_to_half_bits(c); }
#endif

#elif LN_DT == LN_DT_BFLOAT16
/* bfloat16 is the top half of a float32: widen by a shift, narrow with
 * round-to-nearest-even on the bits, NaNs kept quiet. */
typedef uint16_t E;
typedef uint16_t VB16 __attribute__((vector_size(LN_VECTOR_BYTES / 2)));
typedef uint32_t VU32 __attribute__((vector_size(LN_VECTOR_BYTES)));
typedef int32_t VI32 __attribute__((vector_size(LN_VECTOR_BYTES)));
#if LN_VECTOR_BYTES == 64 && defined(__AVX512BW__)
/* The same arithmetic in intrinsics: GCC widens and narrows the generic
 * vectors below through vpermt2w and 256-bit halves, which made bfloat16
 * (4096, 768) no faster than float32.  (AVX512-BF16's vcvtneps2bf16: see
 * the variant below.) */
#include <immintrin.h>
/* 16 bfloat16 words as floats: one word permutation into the top halves,
 * the bottom halves zeroed by its mask (vpmovzxwd and a shift before: two
 * ops on the shuffle pipes; A/B forward, 2 threads, (512, 768) in cache
 * 0.90x the time, (4096, 768) 0.92x, (16384, 1024) and (262144, 64) 0.98x
 * to 1.01x) */
static inline __attribute__((always_inline)) V widened_bf16(__m256i words)
{
    const __m512i to_top = _mm512_set_epi16(15, 0, 14, 0, 13, 0, 12, 0, 11, 0, 10, 0, 9, 0, 8, 0,
                                            7, 0, 6, 0, 5, 0, 4, 0, 3, 0, 2, 0, 1, 0, 0, 0);
    return (V)_mm512_castsi512_ps(_mm512_maskz_permutexvar_epi16((__mmask32)0xAAAAAAAAu, to_top, _mm512_castsi256_si512(words)));
}
static inline __attribute__((always_inline)) V LOADV(const E *p) { return widened_bf16(_mm256_loadu_si256((const __m256i *)p)); }
#define LN_NARROWV_IN_REGISTER 1
static inline __attribute__((always_inline)) __m256i narrow_by_integers(V v)
{
    /* round in place in the top half of each float, NaNs get the quiet bit
     * there, and one word permutation gathers the top halves */
    const __m512i bits = _mm512_castps_si512((__m512)v);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
    const __m512i rounded = _mm512_add_epi32(_mm512_add_epi32(bits, _mm512_set1_epi32(0x7FFF)), lsb);
    const __mmask16 is_nan = _mm512_cmp_ps_mask((__m512)v, (__m512)v, _CMP_UNORD_Q);
    const __m512i top = _mm512_mask_or_epi32(rounded, is_nan, bits, _mm512_set1_epi32(0x00400000));
    const __m512i odd_words = _mm512_set_epi16(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1,
                                               31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
    return _mm512_castsi512_si256(_mm512_permutexvar_epi16(odd_words, top));
}
#ifdef __AVX512BF16__
/* NARROWV's integer narrowing out of line: inlined into every store, its
 * constants took registers from the loops around it.  A/B, 2 threads,
 * against inlined: forward NCHW (32, 64, 56, 56) 0.86x to 0.89x the time (1
 * thread 0.86x), rms NCHW 0.84x, backward (4096, 768) and NCHW 0.97x; row
 * forwards, fused adds and rms on rows 0.97x to 1.03x. */
static __attribute__((noinline, cold)) __m256i narrow_subnormals(V v) { return narrow_by_integers(v); }
/* The AVX512-BF16 variant (built beside the AVX-512 level, taken where the
 * CPU has the instruction): vcvtneps2bf16 rounds to nearest even and quiets
 * NaNs as narrow_by_integers does, but treats subnormal inputs as zero, so a
 * vector holding one is narrowed by integers instead.  The same bits
 * (tests/test_bf16_instructions.py).  A/B, 2 threads, against the integer
 * rounding: forward (4096, 768) 0.88x the time, (16384, 1024) 0.95x,
 * (262144, 64) 0.94x, NCHW (32, 64, 56, 56) 0.96x; rms (16384, 1024)
 * 0.93x, fused add (4096, 768) 0.92x, backward (16384, 1024) 0.95x. */
static inline __attribute__((always_inline)) __m256i NARROWV(V v)
{
    const __mmask16 subnormal = _mm512_fpclass_ps_mask((__m512)v, 0x20);
    if (__builtin_expect(subnormal == 0, 1)) return (__m256i)_mm512_cvtneps_pbh((__m512)v);
    return narrow_subnormals(v);
}
#else
static inline __attribute__((always_inline)) __m256i NARROWV(V v) { return narrow_by_integers(v); }
#endif
static inline __attribute__((always_inline)) void STOREV(E *p, V v) { _mm256_storeu_si256((__m256i *)p, NARROWV(v)); }
#elif LN_VECTOR_BYTES == 32 && defined(__AVX2__)
/* The same in AVX2 intrinsics: GCC's code for the generic vectors below made
 * bfloat16 (4096, 768) take 2.2x the time of float16 at AVX2.  NaNs are
 * quieted only in vectors that hold one (a branch on the compare's sign
 * mask, almost never taken): forward, 2 threads, (16384, 1024) 0.94x the
 * time, (4096, 768) 0.93x, (128, 768) in cache 0.92x; the SSE2 code below
 * likewise 0.82x to 0.84x.
 * Zen 4 runs shifts and shuffles on two of its four vector pipes, and the
 * widening, rounding and narrowing below were mostly those: the loads take
 * one shuffle, the rounding none, and STOREV2 narrows two vectors with one
 * NaN test.  A/B against a shift-based load and rounding and one vector a
 * store, forward, 2 threads: (512, 768) in cache 0.90x then 0.93x the time
 * (0.84x both), (16384, 1024) 0.93x then 0.94x, (262144, 64) 0.91x then
 * 0.98x, (4096, 768) 0.94x (STOREV2 alone); rms (16384, 1024) 0.93x. */
#include <immintrin.h>
static inline __attribute__((always_inline)) V LOADV(const E *p)
{
    /* the 8 words in both 128-bit lanes (a load, no shuffle), then one byte
     * shuffle puts words 0-3 and 4-7 into the top halves of the lanes' floats */
    const __m256i both = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)p));
    const __m256i to_top_halves = _mm256_setr_epi8(-1, -1, 0, 1, -1, -1, 2, 3, -1, -1, 4, 5, -1, -1, 6, 7,
                                                   -1, -1, 8, 9, -1, -1, 10, 11, -1, -1, 12, 13, -1, -1, 14, 15);
    return (V)_mm256_castsi256_ps(_mm256_shuffle_epi8(both, to_top_halves));
}
/* v's bits rounded to nearest even at bit 16 (NaNs aside): bit 16 as 0 or 1
 * by a minimum, not a shift */
static inline __attribute__((always_inline)) __m256i rounded_bits(V v)
{
    const __m256i bits = _mm256_castps_si256((__m256)v);
    const __m256i lsb = _mm256_min_epu32(_mm256_and_si256(bits, _mm256_set1_epi32(0x10000)), _mm256_set1_epi32(1));
    return _mm256_add_epi32(_mm256_add_epi32(bits, _mm256_set1_epi32(0x7FFF)), lsb);
}
#define LN_NARROWV_IN_REGISTER 1
static inline __attribute__((always_inline)) __m128i NARROWV(V v)
{
    const __m256i rounded = rounded_bits(v);
    const __m256 is_nan = _mm256_cmp_ps((__m256)v, (__m256)v, _CMP_UNORD_Q);
    __m256i top = rounded;
    if (__builtin_expect(_mm256_movemask_ps(is_nan) != 0, 0))
        top = _mm256_blendv_epi8(rounded, _mm256_or_si256(_mm256_castps_si256((__m256)v), _mm256_set1_epi32(0x00400000)),
                                 _mm256_castps_si256(is_nan));
    /* the top half of each float: gathered into the low 8 bytes of each
     * 128-bit lane, then the two lanes' low quadwords joined (one op fewer
     * than a shift, an extract and a pack) */
    const __m256i top_halves = _mm256_setr_epi8(2, 3, 6, 7, 10, 11, 14, 15, -1, -1, -1, -1, -1, -1, -1, -1,
                                                2, 3, 6, 7, 10, 11, 14, 15, -1, -1, -1, -1, -1, -1, -1, -1);
    const __m256i gathered = _mm256_shuffle_epi8(top, top_halves);
    return _mm256_castsi256_si128(_mm256_permute4x64_epi64(gathered, 0x08));
}
static inline __attribute__((always_inline)) void STOREV(E *p, V v) { _mm_storeu_si128((__m128i *)p, NARROWV(v)); }
/* NARROWV of a then b in one vector, neither holding a NaN: one pack of
 * their top halves (in the order [a0-3 b0-3 | a4-7 b4-7], which one quadword
 * permutation puts right) */
static inline __attribute__((always_inline)) __m256i narrowed_pair(V a, V b)
{
    const __m256i packed = _mm256_packus_epi32(_mm256_srli_epi32(rounded_bits(a), 16), _mm256_srli_epi32(rounded_bits(b), 16));
    return _mm256_permute4x64_epi64(packed, 0xD8);
}
static inline __attribute__((always_inline)) int pair_has_nan(V a, V b)
{
    return _mm256_movemask_ps(_mm256_cmp_ps((__m256)a, (__m256)b, _CMP_UNORD_Q)) != 0;
}
/* STOREV(p, a); STOREV(p + VL, b), with the same bits and one NaN test */
#define LN_HAS_STOREV2 1
static inline __attribute__((always_inline)) void STOREV2(E *p, V a, V b)
{
    if (__builtin_expect(pair_has_nan(a, b), 0)) {
        STOREV(p, a);
        STOREV(p + VL, b);
        return;
    }
    _mm256_storeu_si256((__m256i *)p, narrowed_pair(a, b));
}
/* the same with one streaming store, p aligned to 2 * VL * sizeof(E) */
static inline __attribute__((always_inline)) void STREAMV2(E *p, V a, V b)
{
    if (__builtin_expect(pair_has_nan(a, b), 0)) {
        _mm_stream_si128((__m128i *)p, NARROWV(a));
        _mm_stream_si128((__m128i *)(p + VL), NARROWV(b));
        return;
    }
    _mm256_stream_si256((__m256i *)p, narrowed_pair(a, b));
}
#elif LN_VECTOR_BYTES == 16 && defined(__SSE2__)
/* The same in SSE2 intrinsics (GCC's code for the generic vectors made
 * bfloat16 2.5x slower than float32 at baseline).  SSE2 has no unsigned
 * narrowing: the top halves are shifted down arithmetically, so that the
 * signed pack keeps their bits. */
#include <immintrin.h>
static inline __attribute__((always_inline)) V LOADV(const E *p)
{
    return (V)_mm_castsi128_ps(_mm_unpacklo_epi16(_mm_setzero_si128(), _mm_loadl_epi64((const __m128i *)p)));
}
/* v's bits rounded to nearest even at bit 16 (NaNs aside) */
static inline __attribute__((always_inline)) __m128i rounded_bits(V v)
{
    const __m128i bits = _mm_castps_si128((__m128)v);
    const __m128i lsb = _mm_and_si128(_mm_srli_epi32(bits, 16), _mm_set1_epi32(1));
    return _mm_add_epi32(_mm_add_epi32(bits, _mm_set1_epi32(0x7FFF)), lsb);
}
static inline __attribute__((always_inline)) void STOREV(E *p, V v)
{
    const __m128i rounded = rounded_bits(v);
    const __m128 is_nan = _mm_cmpunord_ps((__m128)v, (__m128)v);
    __m128i top = rounded;
    if (__builtin_expect(_mm_movemask_ps(is_nan) != 0, 0)) {
        const __m128i nan_lanes = _mm_castps_si128(is_nan);
        const __m128i quiet = _mm_or_si128(_mm_castps_si128((__m128)v), _mm_set1_epi32(0x00400000));
        top = _mm_or_si128(_mm_and_si128(nan_lanes, quiet), _mm_andnot_si128(nan_lanes, rounded));
    }
    const __m128i narrow = _mm_srai_epi32(top, 16);
    _mm_storel_epi64((__m128i *)p, _mm_packs_epi32(narrow, narrow));
}
/* STOREV(p, a); STOREV(p + VL, b), with the same bits: one NaN test (an
 * unordered compare of a with b) and one pack for both.  A/B, 2 threads:
 * forward (4096, 768) 0.95x the time, (16384, 1024) 0.93x, backward
 * (4096, 768) 0.78x, fused add 0.94x, rms 0.93x; the same bits but for
 * the signs of NaNs (which NaN operand passes on is the compiler's choice). */
#define LN_HAS_STOREV2 1
static inline __attribute__((always_inline)) void STOREV2(E *p, V a, V b)
{
    if (__builtin_expect(_mm_movemask_ps(_mm_cmpunord_ps((__m128)a, (__m128)b)) != 0, 0)) {
        STOREV(p, a);
        STOREV(p + VL, b);
        return;
    }
    const __m128i narrow_a = _mm_srai_epi32(rounded_bits(a), 16), narrow_b = _mm_srai_epi32(rounded_bits(b), 16);
    _mm_storeu_si128((__m128i *)p, _mm_packs_epi32(narrow_a, narrow_b));
}
#else
static inline __attribute__((always_inline)) V LOADV(const E *p)
{
    VB16 h; memcpy(&h, p, sizeof h);
    VU32 w = __builtin_convertvector(h, VU32) << 16;
    V v; memcpy(&v, &w, sizeof v); return v;
}
static inline __attribute__((always_inline)) void STOREV(E *p, V v)
{
    VU32 bits; memcpy(&bits, &v, sizeof bits);
    VU32 rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
    VI32 is_nan = (bits & 0x7FFFFFFFu) > 0x7F800000u;
    VU32 quiet = (bits >> 16) | 0x0040u;
    VU32 out = (VU32)((is_nan & (VI32)quiet) | (~is_nan & (VI32)rounded));
    VB16 h = __builtin_convertvector(out, VB16);
    memcpy(p, &h, sizeof h);
}
#endif
static inline __attribute__((always_inline)) C LOAD1(const E *p) { uint32_t w = (uint32_t)*p << 16; C c; memcpy(&c, &w, sizeof c); return c; }
static inline __attribute__((always_inline)) void STORE1(E *p, C c)
{
    uint32_t bits; memcpy(&bits, &c, sizeof bits);
    if ((bits & 0x7FFFFFFFu) > 0x7F800000u) { *p = (E)((bits >> 16) | 0x0040u); return; }
    *p = (E)((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
}
#else
#error "unknown LN_DT"
#endif

/* Do the `bytes` bytes at a and at b overlap? */
static inline int ln_overlap(const void *a, const void *b, int64_t bytes)
{
    return (const char *)a < (const char *)b + bytes && (const char *)b < (const char *)a + bytes;
}

/* Whether stores at `stored` are followed, within a few vectors, by loads
 * at addresses that match them in their low 20 bits: stored lies 0 to
 * `window` bytes past loaded + lead, modulo 1 MB.  This host's cores (Intel,
 * AVX-512) then hold each load back behind the store, as older cores did
 * for 4 KB.  Measured with x and y placed on 1 MB boundaries plus y's
 * offset d (forward, AVX-512): 1 thread, in L2, float32 (256, 768) d = 32
 * took 3.09x the time of d = 0, d = 128 1.74x, d = 352 1.21x, d = 448 1.0x,
 * d = 3072 (one row: paired rows) 2.24x; 2 threads, (4096, 768) float32
 * d = 16 to 112 1.53x to 1.60x, 128 1.02x; float64 d = 64 2.54x, 128 1.46x,
 * 192 1.13x, 256 1.06x; float16 d = 32 2.37x, 128 1.32x, 288 1.10x,
 * 512 1.04x.  Bits 12 to 19 count: placed on 4 KB boundaries only, d = 64
 * took 1.0x.  numpy.empty_like(x) right after x lies 16 bytes past x's
 * end, so for arrays of a whole number of MB it hits this. */
static inline int ln_stores_alias_next_loads(const void *stored, const void *loaded, int64_t lead, int64_t window)
{
    if (!stored || !loaded) return 0;
    const uintptr_t ahead = ((uintptr_t)stored - (uintptr_t)loaded - (uintptr_t)lead) & (((uintptr_t)1 << 20) - 1);
    return ahead <= (uintptr_t)window;
}

/* Whether y's stores alias the loads that follow them (see
 * ln_stores_alias_next_loads): the normalize pass's data is x, or the fused
 * add's stored sum, or x and residual where the sum streams and x + residual
 * is recomputed. */
static inline int ln_y_aliases_sources(const ln_forward_args *a, int sum_streamed, int64_t lead, int64_t window)
{
    if (!a->residual) return ln_stores_alias_next_loads(a->y, a->x, lead, window);
    if (!sum_streamed) return ln_stores_alias_next_loads(a->y, a->sum_out, lead, window);
    return ln_stores_alias_next_loads(a->y, a->x, lead, window) || ln_stores_alias_next_loads(a->y, a->residual, lead, window);
}

/* Whether the fused add's sum stores alias the loads of x and residual
 * that follow them (see ln_stores_alias_next_loads; sum_out in place of
 * either lies 0 bytes ahead, which is not). */
static inline int ln_sum_aliases_sources(const ln_forward_args *a, int64_t window)
{
    return a->residual && (ln_stores_alias_next_loads(a->sum_out, a->x, 1, window)
                           || ln_stores_alias_next_loads(a->sum_out, a->residual, 1, window));
}

/* The fused add's outputs (y and sum_out, `bytes` bytes each) overlap
 * neither input, so that a kernel that streams the sum may recompute
 * x + residual later instead of reading the sum back. */
static inline int ln_outputs_apart_from_inputs(const ln_forward_args *a, int64_t bytes)
{
    return !ln_overlap(a->sum_out, a->x, bytes) && !ln_overlap(a->sum_out, a->residual, bytes)
           && !ln_overlap(a->y, a->x, bytes) && !ln_overlap(a->y, a->residual, bytes);
}

/* Streaming (non-temporal) stores of whole aligned vectors, for outputs far
 * larger than the caches: they skip the read-for-ownership of the output's
 * lines, as memcpy does for large copies.  On x86: float32/float64 at every
 * level, float16/bfloat16 from AVX2 on (a narrowed vector is 16 or 32 bytes;
 * SSE2 has no 8-byte vector stream).  Elsewhere LN_CAN_STREAM is 0 and
 * STREAMV is never called. */
#if (defined(__x86_64__) || defined(__i386__)) && defined(__SSE2__)
#include <immintrin.h>
#define LN_CAN_STREAM_C 1
/* a compute-type vector (also dweight/dbias), p aligned to LN_VECTOR_BYTES */
static inline __attribute__((always_inline)) void stream_c(C *p, V v)
{
#if LN_DT == LN_DT_FLOAT64 && LN_VECTOR_BYTES == 64
    _mm512_stream_pd(p, (__m512d)v);
#elif LN_VECTOR_BYTES == 64
    _mm512_stream_ps(p, (__m512)v);
#elif LN_DT == LN_DT_FLOAT64 && LN_VECTOR_BYTES == 32
    _mm256_stream_pd(p, (__m256d)v);
#elif LN_VECTOR_BYTES == 32
    _mm256_stream_ps(p, (__m256)v);
#elif LN_DT == LN_DT_FLOAT64
    _mm_stream_pd(p, (__m128d)v);
#else
    _mm_stream_ps(p, (__m128)v);
#endif
}
#else
#define LN_CAN_STREAM_C 0
static inline __attribute__((always_inline)) void stream_c(C *p, V v) { vstore_c(p, v); }
#endif

#if (LN_DT == LN_DT_FLOAT32 || LN_DT == LN_DT_FLOAT64) && LN_CAN_STREAM_C
#define LN_CAN_STREAM 1
static inline __attribute__((always_inline)) void STREAMV(E *p, V v) { stream_c(p, v); }   /* p aligned to VL * sizeof(E) */
static inline void ln_stream_fence(void) { _mm_sfence(); }
#elif (LN_DT == LN_DT_FLOAT16 || LN_DT == LN_DT_BFLOAT16) && defined(LN_NARROWV_IN_REGISTER)
#define LN_CAN_STREAM 1
static inline __attribute__((always_inline)) void STREAMV(E *p, V v)   /* p aligned to VL * sizeof(E) */
{
    /* STOREV's rounding (NARROWV), then one streaming store: the same bits */
#if LN_VECTOR_BYTES == 64
    _mm256_stream_si256((__m256i *)p, NARROWV(v));
#else
    _mm_stream_si128((__m128i *)p, NARROWV(v));
#endif
}
static inline void ln_stream_fence(void) { _mm_sfence(); }
#else
#define LN_CAN_STREAM 0
static inline __attribute__((always_inline)) void STREAMV(E *p, V v) { STOREV(p, v); }
#ifdef LN_HAS_STOREV2
static inline __attribute__((always_inline)) void STREAMV2(E *p, V a, V b) { STOREV2(p, a, b); }
#endif
static inline void ln_stream_fence(void)
{
#if LN_CAN_STREAM_C
    _mm_sfence();   /* stream_c may still have been used */
#endif
}
#endif

/* Outputs are streamed when the arrays a call reads and writes take at least
 * this many bytes together: beyond any L3 here, so the output would not stay
 * cached anyway, and the cached part is left to the inputs.  Measured, 2
 * threads, AVX-512 float32: forward (16384, 1024) 0.86x the time,
 * (64, 262144) 0.78x, (8192, 768) (x and y 50 MB) 0.79x; backward
 * (4096, 768) (x, dy and dx 38 MB) 0.82x (AVX2 0.84x, baseline 0.95x,
 * float64 0.86x).  Below it nothing is gained: forward (4096, 768), x and y
 * 25 MB, 0.96x to 1.03x. */
#define LN_STREAM_MIN_BYTES ((int64_t)32 << 20)

/* The arrays of y's size that a forward moves, which ln_stream_rows and the
 * strided kernels' rule count: x and y, or the fused add's x, residual, sum
 * and y.  Fused add (4096, 768) float32, 2 threads, streamed (counting four)
 * against not: 0.82x to 0.84x the time with the machine busy (load 1.7),
 * 1.03x when it was quiet (load 0.8). */
static inline int ln_forward_arrays_moved(const ln_forward_args *a)
{
    return a->residual ? 4 : 2;
}

/* Stream an output of `rows` rows of `cols` elements at y, when the call
 * moves `arrays` arrays of its size (LN_STREAM_MIN_BYTES)?  Rows of whole
 * 64-byte lines, so that no row has a scalar tail and streamed and stored
 * rows have the same bits (the choice depends on y's address too), and at
 * least two vectors long (LN_STREAMED_SPAN).  Rows shorter than 4 KB only
 * when y starts on a line, so that no row has a partly written line: with y
 * 16 bytes off a line (numpy.empty's usual address) the forward on
 * (262144, 64) float32 took 1.05x the time, with y aligned 0.86x (2 threads,
 * AVX-512); the backward 0.73x at AVX-512, 0.65x at AVX2, 0.83x at the
 * baseline.  (The forward streams rows under 2 KB at AVX2 and AVX-512
 * float32/float64 only: see forward_rows.c.) */
static inline int ln_stream_rows(const void *y, int64_t rows, int64_t cols, int arrays)
{
    const int64_t row_bytes = cols * (int64_t)sizeof(E);
    return LN_CAN_STREAM && arrays * rows * row_bytes >= LN_STREAM_MIN_BYTES && row_bytes % 64 == 0
           && row_bytes >= 2 * VL * (int64_t)sizeof(E) && (uintptr_t)y % sizeof(E) == 0
           && (row_bytes >= 4096 || (uintptr_t)y % 64 == 0);
}

/* bfloat16 at AVX2 rounds with integer operations (AVX2 has no bfloat16
 * conversion), which bound its kernels more than their memory traffic does:
 * some streaming that pays elsewhere does not pay there (ln_stream_columns,
 * and the fused add's sum in forward_rows.c). */
#define LN_ROUNDING_BOUND (LN_VECTOR_BYTES == 32 && LN_DT == LN_DT_BFLOAT16)

/* Stream a strided-layout output at `out` ([outer][reduce][inner], `bytes`
 * bytes), when the call moves `arrays` arrays of its size (as
 * ln_stream_rows counts them)?  Every column row must start on a line, so
 * that whole vectors are streamed.  Not where LN_ROUNDING_BOUND: NCHW
 * (32, 64, 56, 56), 2 threads, streamed against not, forward 1.00x the time,
 * backward 1.01x, the fused add 1.12x (1.01x to 1.05x with its sum stored
 * normally).  The measurements for the others are at the callers
 * (forward_strided.c, backward_strided.c). */
static inline int ln_stream_columns(const void *out, int64_t inner, int64_t bytes, int arrays)
{
    return LN_CAN_STREAM && !LN_ROUNDING_BOUND && (uintptr_t)out % 64 == 0 && inner * (int64_t)sizeof(E) % 64 == 0
           && arrays * bytes >= LN_STREAM_MIN_BYTES;
}

/* Four independent accumulators per lane hide the add/FMA latency. */
#define LN_ACCUMULATORS 4
/* Reductions along a row run over fixed blocks of this many elements whose
 * partial results are merged in block order: the blocks, not the threads,
 * decide the arithmetic, so any thread count gives the same bits. */
#define LN_BLOCK 4096
/* Fewer rows than this (rows longer than one block, and a call big enough
 * to be parallel) are split across threads by blocks.  The choice depends on
 * the shape only, and both ways merge the same blocks in the same order. */
#define LN_SPLIT_BELOW_ROWS 16
/* Below this many elements a call stays on one thread: waking threads costs
 * more than it saves. */
#define LN_PARALLEL_MIN_ELEMENTS 32768

/* Work items per dynamically scheduled chunk, for `items` items of
 * `elements` elements each: at least LN_CHUNKS_PER_THREAD chunks per thread,
 * of at most LN_DYNAMIC_CHUNK_ELEMENTS.  Dynamic, not static: on a machine
 * whose cores other processes also use, a thread that loses its core for a
 * while no longer holds up the whole call; the others take its remaining
 * chunks.  (Items are independent, so the bits do not depend on which
 * thread takes which chunk.)  Large chunks: 256K-element chunks took 1.06x
 * to 1.18x the time of static scheduling on an idle machine, 1M-element
 * ones 0.97x to 0.98x. */
#define LN_DYNAMIC_CHUNK_ELEMENTS (1 << 20)
#define LN_CHUNKS_PER_THREAD 8
static inline int64_t ln_dynamic_chunk(int64_t items, int64_t elements, int threads)
{
    int64_t chunk = LN_DYNAMIC_CHUNK_ELEMENTS / (elements > 0 ? elements : 1);
    const int64_t balanced = items / ((int64_t)LN_CHUNKS_PER_THREAD * (threads > 0 ? threads : 1));
    if (chunk > balanced) chunk = balanced;
    return chunk < 1 ? 1 : chunk;
}
/* Width of the inner tile of the strided layout (elements). */
#define LN_TILE 256
/* Every software prefetch fills L2, not L1 (GCC's locality 1: prefetcht2).
 * The lines a kernel prefetches are read a group or a column later, and
 * pulled into L1 they evicted the lines the current passes were re-reading.
 * A/B (bench/compare_builds.py) on the earlier AMD EPYC host (a 32 KB L1, a
 * 1 MB L2), 2 threads, AVX-512 unless stated, against locality 3
 * (prefetcht0): the forward's row groups (16384, 1024) float32 0.88x to
 * 0.89x the time (AVX2 0.93x, baseline 0.77x), float16 0.75x, bfloat16
 * 0.74x, rms 0.80x, (8192, 2048) float16 0.82x, (65536, 256) 0.89x, float64
 * (32768, 512) 0.88x, (4096, 768) 0.94x; the strided kernels' reads, NCHW
 * (32, 64, 56, 56): forward 0.92x (AVX2 0.86x, float16 0.94x), fused add
 * 0.76x, backward 0.73x, (8, 256, 64, 64) 0.93x; and their output lines
 * (16, 64, 56, 56) 0.95x, its fused add 0.94x.  Locality 2 measured the same
 * as 1 (0.99x); 0 (prefetchnta) took 1.19x to 1.32x.  The same bits.
 * (One exception: ln_prefetch_column's two-input columns.)
 * On the Intel Xeon host since (48 KB, 2 MB), locality 3 against 1:
 * (16384, 1024) float32 1.09x, float16 1.13x, NCHW forward 1.02x, backward
 * 1.08x; but float32 rows of 1 KB and less gained ((65536, 256) 0.92x,
 * (131072, 128) 0.94x, (32768, 512) 0.98x; float16 (65536, 256) and the
 * backward even).  Locality 3 for float32 rows under 2 KB alone (a branch
 * in forward_rows.c's prefetch_row) then gave (65536, 256) 0.997x, rms
 * 1.04x, AVX2 1.02x: not taken. */
#define LN_PREFETCH_LOCALITY 1

/* Calls whose inputs take at least this many bytes count as calls from
 * memory, which prefetch the next rows (forward_rows.c's
 * prefetch_row_groups, backward_rows.c's); below it a loop finds its rows
 * in the L3 (the measurements are at those two). */
#define LN_PREFETCH_MIN_BYTES ((int64_t)8 << 20)

/* Strided-layout columns narrower than this many bytes prefetch, in their
 * first pass, the same rows of the next columns and their own output lines:
 * `reduce` rows far apart are more streams than the hardware prefetcher
 * follows when each gives it only a few lines at a time.  Measured on NCHW
 * (32, 64, 56, 56), 2 threads: 16-vector columns at AVX2 (512 B) took 0.83x
 * the time with it in the forward and 0.89x in the backward; at AVX-512 (1 KB)
 * the forward took 1.08x, so wider columns go without where their output
 * streams (ln_prefetch_column). */
#define LN_PREFETCH_BELOW_BYTES 1024
/* Rows of `reduce` summed (or Welford-updated) in the compute type by the
 * strided kernels before the result is merged into float64: bounds the
 * compute-type rounding for long reductions.  16 for float32: the
 * Welford mean's roundings add up along a chunk, and with 64 float32 y of
 * unit-spread data (offsets 0, -2 and 3e4, no weight) came up to 1.4e-6
 * from the float64 reference over 16 to 1000 rows, against the 1e-6 the
 * README promises; with 32 1.1e-6, with 16 0.75e-6 (the row layout 0.8e-6).
 * A/B (bench/compare_builds.py) against 64, 2 threads, AVX-512: NCHW
 * (32, 64, 56, 56) 1.03x the time (AVX2 1.03x, rms 1.03x, the backward
 * 1.01x, the fused add 1.00x), (8, 256, 64, 64) 1.06x (1 thread 1.10x; 32
 * rows 1.02x).  Half precision, whose outputs round to 1e-3 and coarser,
 * keeps 64 (16 took float16 1.05x, bfloat16 1.03x); float64's Welford error
 * is far below its tolerance. */
#define LN_CHUNK_ROWS (LN_DT == LN_DT_FLOAT32 ? 16 : 64)
/* Positions a strided kernel takes together in one column: long runs along
 * each of the `reduce` rows for the hardware prefetcher, and enough
 * independent vectors to hide the accumulation chains' latency.  On NCHW
 * (32, 64, 56, 56), 2 threads, forward, 4 vectors (whose state fits in
 * registers) took 1.36x the time of 16 at AVX-512 and 1.5x at AVX2: the long
 * runs win over the spills.  Narrower tile ends fall back to 4 vectors, then 1.
 * Walking tiles of 1024 positions row by row instead, with the per-position
 * state in L1 arrays (the same bits), took 1.31x the time (forward) and
 * 1.04x (fused add). */
#define LN_COLUMN_VECTORS 16
/* ... but 32 in the AVX2 forward's streamed columns (1 KB in float32, as
 * AVX-512's 16; bfloat16 does not stream there, see ln_stream_columns).
 * A/B (bench/compare_builds.py) against 16, 2 threads, NCHW
 * (32, 64, 56, 56): forward float32 0.86x to 0.87x the time (1 thread
 * 0.85x, out= 16 bytes off a line 0.86x), rms 0.84x, fused add 0.81x,
 * float64 0.88x, float16 0.88x; (24, 64, 56, 56) 0.82x, (8, 256, 64, 64)
 * 0.99x.  Not where y is stored: 32 there too made (16, 64, 56, 56) (x and
 * y 26 MB) take 1.25x at 1 thread, whose 512-byte columns prefetch the
 * next column and their output lines in their first pass
 * (ln_prefetch_column).  Nor in the backward (NCHW 1.00x, float64 1.02x).
 * The same bits: a position's arithmetic is the same in every column. */
#define LN_STREAMED_COLUMN_VECTORS (LN_VECTOR_BYTES == 32 ? 32 : LN_COLUMN_VECTORS)
#define LN_MAX_COLUMN_VECTORS (LN_STREAMED_COLUMN_VECTORS > LN_COLUMN_VECTORS ? LN_STREAMED_COLUMN_VECTORS : LN_COLUMN_VECTORS)

/* A strided column's first pass, at one row: prefetch the same row's lines
 * of the next column of `bytes` bytes in the inputs (`next_b` may be NULL)
 * and this column's output lines, when the column is narrower than
 * LN_PREFETCH_BELOW_BYTES or its output is stored, not `streamed`.  Wider
 * columns with stored outputs, A/B against not prefetching there, 2
 * threads, AVX-512, (16, 64, 56, 56) (x and y 26 MB): forward 0.64x to
 * 0.67x the time, rms 0.60x, float64 0.96x, fused add 0.95x, backward
 * 0.94x; (8, 64, 56, 56) at 1 thread 0.80x.  Where the output streams, they
 * took 1.09x (forward NCHW (32, 64, 56, 56)) to 1.43x (its fused add).
 * A streamed output's lines are not prefetched (the streaming stores do not
 * read them): baseline NCHW forward 0.82x.  Columns of two inputs (the fused
 * add's x and residual, the backward's x and dy) prefetch them into L1, the
 * exception to LN_PREFETCH_LOCALITY: against L2, NCHW at the baseline fused
 * add 0.76x, backward 0.84x; AVX-512 (16, 64, 56, 56) fused add 0.94x,
 * backward 0.95x (AVX2 backward 1.03x).  The same bits. */
static inline void ln_prefetch_column(const E *next_a, const E *next_b, const E *out, int64_t bytes, int streamed)
{
    if (bytes >= LN_PREFETCH_BELOW_BYTES && streamed) return;
    for (int64_t line = 0; line < bytes; line += 64) {
        if (next_b) {
            __builtin_prefetch((const char *)next_a + line, 0, 3);   /* into L1: see above */
            __builtin_prefetch((const char *)next_b + line, 0, 3);
        } else {
            __builtin_prefetch((const char *)next_a + line, 0, LN_PREFETCH_LOCALITY);
        }
        if (!streamed) __builtin_prefetch((const char *)out + line, 1, LN_PREFETCH_LOCALITY);
    }
}

/* A strided column's second pass, at one row, for columns of at least
 * LN_PREFETCH_BELOW_BYTES: prefetch the same row's lines of a later column
 * in the inputs (`column_b` may be NULL; both point at this column's row),
 * so that that column's first pass, which waits on memory, finds them in
 * cache (narrower columns prefetch in their first pass, ln_prefetch_column).
 * A/B, 2 threads, AVX-512 (1 KB columns in float32, 2 KB in float64), NCHW
 * (32, 64, 56, 56), the next column against none: forward 0.88x the time,
 * float64 0.82x, rms 0.83x, fused add 0.84x, backward 0.85x, float64 0.93x;
 * (16, 64, 56, 56) forward 0.98x, backward 0.92x; (8, 256, 64, 64) forward
 * and backward 0.96x.  LN_PREFETCH_COLUMNS_AHEAD columns on against the next
 * one: forward 0.90x to 0.94x, float64 0.90x, rms 0.90x, (16, 64, 56, 56)
 * 0.89x, (8, 256, 64, 64) 0.99x, fused add 0.99x, backward 0.96x,
 * (16, 64, 56, 56) 0.96x, (8, 256, 64, 64) 1.00x (2 ahead: forward 0.93x;
 * 4 ahead: 0.94x, but (8, 256, 64, 64) 1.05x).  Columns of two inputs
 * prefetch LN_PREFETCH_PAIR_COLUMNS_AHEAD on: the backward (x and dy), 2
 * against 3 on, NCHW 0.93x, (16, 64, 56, 56) 0.94x, (8, 256, 64, 64) 1.01x;
 * the fused add also prefetches the next column in its first pass
 * (ln_prefetch_pair_column; the backward with it too: 0.91x, 0.96x, but
 * 1.06x).  The same bits. */
#define LN_PREFETCH_COLUMNS_AHEAD 3
#define LN_PREFETCH_PAIR_COLUMNS_AHEAD 2
static inline void ln_prefetch_next_column(const E *column_a, const E *column_b, int64_t bytes)
{
    if (bytes < LN_PREFETCH_BELOW_BYTES) return;
    const int64_t ahead = (column_b ? LN_PREFETCH_PAIR_COLUMNS_AHEAD : LN_PREFETCH_COLUMNS_AHEAD) * bytes;
    const char *ahead_a = (const char *)column_a + ahead;
    const char *ahead_b = column_b ? (const char *)column_b + ahead : NULL;
    for (int64_t line = 0; line < bytes; line += 64) {
        __builtin_prefetch(ahead_a + line, 0, LN_PREFETCH_LOCALITY);
        if (ahead_b) __builtin_prefetch(ahead_b + line, 0, LN_PREFETCH_LOCALITY);
    }
}

/* The first pass of a column of at least LN_PREFETCH_BELOW_BYTES that reads
 * two inputs (the fused add's x and residual), at one row: prefetch the same
 * row of the next column in both, on top of the second pass's prefetch
 * LN_PREFETCH_PAIR_COLUMNS_AHEAD columns on.  A/B, 2 threads, AVX-512,
 * fused add, against the second pass's 3 columns on alone: NCHW
 * (32, 64, 56, 56) 0.80x the time, add_rms 0.95x, (16, 64, 56, 56) 0.85x,
 * (8, 256, 64, 64) 0.91x (screened in one build: first pass 1 ahead with
 * the second 1, 2 or 3 ahead 0.81x, 0.80x, 0.82x; first pass 2 ahead 0.82x
 * to 0.85x, 4 ahead 0.97x; the forward's one input gained nothing, 1.00x).
 * The same bits. */
static inline void ln_prefetch_pair_column(const E *column_a, const E *column_b, int64_t bytes)
{
    if (bytes < LN_PREFETCH_BELOW_BYTES || !column_b) return;
    for (int64_t line = 0; line < bytes; line += 64) {
        __builtin_prefetch((const char *)column_a + bytes + line, 0, LN_PREFETCH_LOCALITY);
        __builtin_prefetch((const char *)column_b + bytes + line, 0, LN_PREFETCH_LOCALITY);
    }
}

#define LN_STEPS_PER_BLOCK (LN_BLOCK / (LN_VECTOR_BYTES / 8 * LN_ACCUMULATORS))

/* weight/bias entries, stored in the compute type or (storage != 0) like x */
static inline __attribute__((always_inline)) V param_v(const void *p, int storage, int64_t i)
{
    return storage ? LOADV((const E *)p + i) : vload_c((const C *)p + i);
}
static inline __attribute__((always_inline)) C param_1(const void *p, int storage, int64_t i)
{
    return storage ? LOAD1((const E *)p + i) : ((const C *)p)[i];
}
static inline const void *param_at(const void *p, int storage, int64_t i)
{
    if (!p) return NULL;
    return storage ? (const void *)((const E *)p + i) : (const void *)((const C *)p + i);
}

/* x[i] (addend NULL), or x[i] + addend[i] rounded as the storage type
 * would hold it: the same values as a stored sum read back. */
static inline __attribute__((always_inline)) V load_or_sum(const E *x, const E *addend, int64_t i)
{
    if (!addend) return LOADV(x + i);
#if LN_DT == LN_DT_FLOAT32 || LN_DT == LN_DT_FLOAT64
    return LOADV(x + i) + LOADV(addend + i);
#else
    E stored[VL];
    STOREV(stored, LOADV(x + i) + LOADV(addend + i));
    return LOADV(stored);
#endif
}

static inline __attribute__((always_inline)) C load1_or_sum(const E *x, const E *addend, int64_t i)
{
    if (!addend) return LOAD1(x + i);
    E stored;
    STORE1(&stored, LOAD1(x + i) + LOAD1(addend + i));
    return LOAD1(&stored);
}

/* A row's last n % VL elements as one vector (LN_MASKED_TAILS): masked
 * loads (the other lanes 0) and masked stores, in the registers, so that
 * they get the vector arithmetic without a scalar loop.  Masked-off elements
 * are neither read nor written (no access past the row's end can fault).
 * AVX-512 for every dtype, AVX2 for float32 and float64; elsewhere the tails
 * stay scalar. */
#if LN_VECTOR_BYTES == 64 && defined(__AVX512BW__) && defined(__AVX512F__) && defined(__AVX512VL__)
#define LN_MASKED_TAILS 1
static inline __attribute__((always_inline)) unsigned ln_lanes_below(int64_t count)
{
    return ((unsigned)1 << count) - 1;
}
/* the `count` (< VL) elements at p */
static inline __attribute__((always_inline)) V LOADV_TAIL(const E *p, int64_t count)
{
#if LN_DT == LN_DT_FLOAT32
    return (V)_mm512_maskz_loadu_ps((__mmask16)ln_lanes_below(count), p);
#elif LN_DT == LN_DT_FLOAT64
    return (V)_mm512_maskz_loadu_pd((__mmask8)ln_lanes_below(count), p);
#elif LN_DT == LN_DT_FLOAT16
    return (V)_mm512_cvtph_ps(_mm256_maskz_loadu_epi16((__mmask16)ln_lanes_below(count), p));
#else
    return widened_bf16(_mm256_maskz_loadu_epi16((__mmask16)ln_lanes_below(count), p));
#endif
}
static inline __attribute__((always_inline)) void STOREV_TAIL(E *p, V v, int64_t count)
{
#if LN_DT == LN_DT_FLOAT32
    _mm512_mask_storeu_ps(p, (__mmask16)ln_lanes_below(count), (__m512)v);
#elif LN_DT == LN_DT_FLOAT64
    _mm512_mask_storeu_pd(p, (__mmask8)ln_lanes_below(count), (__m512d)v);
#else
    _mm256_mask_storeu_epi16(p, (__mmask16)ln_lanes_below(count), NARROWV(v));
#endif
}
static inline __attribute__((always_inline)) V vload_c_tail(const C *p, int64_t count)
{
#if LN_DT == LN_DT_FLOAT64
    return (V)_mm512_maskz_loadu_pd((__mmask8)ln_lanes_below(count), p);
#else
    return (V)_mm512_maskz_loadu_ps((__mmask16)ln_lanes_below(count), p);
#endif
}
/* acc with its lanes below `count` replaced by those of v */
static inline __attribute__((always_inline)) V ln_blend_lanes_below(V acc, V v, int64_t count)
{
#if LN_DT == LN_DT_FLOAT64
    return (V)_mm512_mask_mov_pd((__m512d)acc, (__mmask8)ln_lanes_below(count), (__m512d)v);
#else
    return (V)_mm512_mask_mov_ps((__m512)acc, (__mmask16)ln_lanes_below(count), (__m512)v);
#endif
}
#elif LN_VECTOR_BYTES == 32 && defined(__AVX2__) && (LN_DT == LN_DT_FLOAT32 || LN_DT == LN_DT_FLOAT64)
/* AVX2 has masked loads and stores of 32- and 64-bit lanes only: float32
 * and float64 (x, weight and bias all of the compute type). */
#define LN_MASKED_TAILS 1
/* all ones in the lanes below `count` */
static inline __attribute__((always_inline)) __m256i ln_lane_mask(int64_t count)
{
#if LN_DT == LN_DT_FLOAT64
    return _mm256_cmpgt_epi64(_mm256_set1_epi64x(count), _mm256_setr_epi64x(0, 1, 2, 3));
#else
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)count), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
#endif
}
static inline __attribute__((always_inline)) V LOADV_TAIL(const E *p, int64_t count)
{
#if LN_DT == LN_DT_FLOAT64
    return (V)_mm256_maskload_pd(p, ln_lane_mask(count));
#else
    return (V)_mm256_maskload_ps(p, ln_lane_mask(count));
#endif
}
static inline __attribute__((always_inline)) void STOREV_TAIL(E *p, V v, int64_t count)
{
#if LN_DT == LN_DT_FLOAT64
    _mm256_maskstore_pd(p, ln_lane_mask(count), (__m256d)v);
#else
    _mm256_maskstore_ps(p, ln_lane_mask(count), (__m256)v);
#endif
}
/* E is C here */
static inline __attribute__((always_inline)) V vload_c_tail(const C *p, int64_t count) { return LOADV_TAIL(p, count); }
static inline __attribute__((always_inline)) V ln_blend_lanes_below(V acc, V v, int64_t count)
{
#if LN_DT == LN_DT_FLOAT64
    return (V)_mm256_blendv_pd((__m256d)acc, (__m256d)v, _mm256_castsi256_pd(ln_lane_mask(count)));
#else
    return (V)_mm256_blendv_ps((__m256)acc, (__m256)v, _mm256_castsi256_ps(ln_lane_mask(count)));
#endif
}
#else
#define LN_MASKED_TAILS 0
#endif
#if LN_MASKED_TAILS
/* param_v and load_or_sum of the `count` (< VL) elements at i */
static inline __attribute__((always_inline)) V param_v_tail(const void *p, int storage, int64_t i, int64_t count)
{
    return storage ? LOADV_TAIL((const E *)p + i, count) : vload_c_tail((const C *)p + i, count);
}
static inline __attribute__((always_inline)) V load_tail_or_sum(const E *x, const E *addend, int64_t i, int64_t count)
{
    if (!addend) return LOADV_TAIL(x + i, count);
#if LN_DT == LN_DT_FLOAT32 || LN_DT == LN_DT_FLOAT64
    return LOADV_TAIL(x + i, count) + LOADV_TAIL(addend + i, count);
#else
    E stored[VL];
    STOREV(stored, LOADV_TAIL(x + i, count) + LOADV_TAIL(addend + i, count));
    return LOADV(stored);
#endif
}
#endif
/* Where the scalar loops over a span's last elements start: after the whole
 * vectors, or (LN_MASKED_TAILS) nowhere, the vector code having taken them. */
#if LN_MASKED_TAILS
#define LN_TAIL_START(n) (n)
#else
#define LN_TAIL_START(n) ((n) / VL * VL)
#endif

/* Rows handled together when each row holds `cols` elements and a group
 * should hold at most `budget` elements (at least one row, at most `most`). */
static inline int64_t ln_rows_per_group(int64_t budget, int64_t cols, int64_t most)
{
    const int64_t rows = budget / cols;
    return rows < 1 ? 1 : rows > most ? most : rows;
}

/* dweight/dbias entries [begin, end) of the backward from float64 partials of
 * `blocks` blocks, laid out [dweight of block 0][dbias of block 0][dweight of
 * block 1]... (layout.reduce values each), added in block order.  Entries go
 * LN_SUM_WIDTH at a time, so that their independent chains of adds overlap
 * (one entry at a time, the add latency made this merge 9% of the backward on
 * (4096, 768)); each entry's order, and so its bits, is unchanged. */
#define LN_SUM_WIDTH 8
/* Entries [j0, j0 + width) of ln_sum_partials; inlined with the width a
 * constant for the whole chunks, so that the sums stay in registers and the
 * stores are vector conversions. */
static inline __attribute__((always_inline)) void ln_sum_partials_at(const ln_backward_args *a, const double *partial,
                                                                    int64_t blocks, int64_t j0, int64_t width)
{
    const int64_t n = a->layout.reduce;
    double w[LN_SUM_WIDTH] = {0}, b[LN_SUM_WIDTH] = {0};
    for (int64_t block = 0; block < blocks; block++) {
        const double *pw = partial + 2 * block * n + j0, *pb = pw + n;
        for (int64_t k = 0; k < width; k++) {
            w[k] += pw[k];
            b[k] += pb[k];
        }
    }
    if (a->dweight)
        for (int64_t k = 0; k < width; k++) ((C *)a->dweight)[j0 + k] = (C)w[k];
    if (a->dbias)
        for (int64_t k = 0; k < width; k++) ((C *)a->dbias)[j0 + k] = (C)b[k];
}

static inline void ln_sum_partials(const ln_backward_args *a, const double *partial, int64_t blocks, int64_t begin,
                                   int64_t end)
{
    int64_t j0 = begin;
    for (; j0 + LN_SUM_WIDTH <= end; j0 += LN_SUM_WIDTH) ln_sum_partials_at(a, partial, blocks, j0, LN_SUM_WIDTH);
    if (j0 < end) ln_sum_partials_at(a, partial, blocks, j0, end - j0);
}

/* All of ln_sum_partials, shared by the threads of the enclosing parallel
 * region (an orphaned `omp for`: chunks of LN_SUM_CHUNK entries). */
#define LN_SUM_CHUNK 256
static inline void ln_sum_partials_shared(const ln_backward_args *a, const double *partial, int64_t blocks)
{
    const int64_t n = a->layout.reduce;
    #pragma omp for schedule(static)
    for (int64_t j = 0; j < n; j += LN_SUM_CHUNK) ln_sum_partials(a, partial, blocks, j, j + LN_SUM_CHUNK < n ? j + LN_SUM_CHUNK : n);
}

static inline int ln_parallel_if(int64_t elements, int num_threads)
{
    return num_threads > 1 && elements >= LN_PARALLEL_MIN_ELEMENTS;
}

#include "layernorm/lanes.h"

#endif
