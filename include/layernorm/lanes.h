/* Reductions across the lanes of one vector V, in a fixed pairwise order:
 * lane i meets lane i + width for width = VL/2, VL/4, ..., 1, whatever the
 * compiler would choose for a reduction (include from kernel_common.h).
 *
 * Each level folds the upper half of the lanes onto the lower half as two
 * half-width vectors, so the lanes stay in registers (written on lane
 * arrays, GCC stored the vector and reloaded single lanes).
 */
#ifndef LAYERNORM_LANES_H
#define LAYERNORM_LANES_H

/* VL for the preprocessor */
#if LN_DT == LN_DT_FLOAT64
#define LN_LANES (LN_VECTOR_BYTES / 8)
#else
#define LN_LANES (LN_VECTOR_BYTES / 4)
#endif

typedef C LN_V2 __attribute__((vector_size(2 * sizeof(C))));
#if LN_LANES >= 4
typedef C LN_V4 __attribute__((vector_size(4 * sizeof(C))));
#endif
#if LN_LANES >= 8
typedef C LN_V8 __attribute__((vector_size(8 * sizeof(C))));
#endif

#define LN_LOW_OF_16 0, 1, 2, 3, 4, 5, 6, 7
#define LN_HIGH_OF_16 8, 9, 10, 11, 12, 13, 14, 15
#define LN_LOW_OF_8 0, 1, 2, 3
#define LN_HIGH_OF_8 4, 5, 6, 7
#define LN_LOW_OF_4 0, 1
#define LN_HIGH_OF_4 2, 3
/* The two halves of vector v (an lvalue), as vectors of half its lanes. */
#define LN_LOW(v, lanes) __builtin_shufflevector(v, v, LN_LOW_OF_##lanes)
#define LN_HIGH(v, lanes) __builtin_shufflevector(v, v, LN_HIGH_OF_##lanes)

/* The sum of v's lanes. */
static inline C lanes_sum(V v)
{
#if LN_LANES == 16
    const LN_V8 v8 = LN_LOW(v, 16) + LN_HIGH(v, 16);
#elif LN_LANES == 8
    const LN_V8 v8 = v;
#endif
#if LN_LANES >= 8
    const LN_V4 v4 = LN_LOW(v8, 8) + LN_HIGH(v8, 8);
#elif LN_LANES == 4
    const LN_V4 v4 = v;
#endif
#if LN_LANES >= 4
    const LN_V2 v2 = LN_LOW(v4, 4) + LN_HIGH(v4, 4);
#else
    const LN_V2 v2 = v;
#endif
    return v2[0] + v2[1];
}

/* One level of Chan's merge for lanes that have all seen the same count:
 * the upper half (mean_hi, m2_hi) into the lower half; `scale` is half the
 * count each lane has seen. */
#define LN_WELFORD_FOLD(mean_lo, m2_lo, mean_hi, m2_hi, scale) \
    do {                                                        \
        const __typeof__(mean_lo) delta = (mean_hi) - (mean_lo); \
        (mean_lo) += delta * (C)0.5;                            \
        (m2_lo) += (m2_hi) + delta * delta * (scale);           \
    } while (0)

/* Declares mean_out, m2_out (type T, half the lanes of mean_in, m2_in) and
 * folds the upper half of the lanes into them; `scale` doubles for the next
 * level. */
#define LN_WELFORD_HALVE(T, mean_in, m2_in, lanes, mean_out, m2_out)                          \
    T mean_out = LN_LOW(mean_in, lanes), m2_out = LN_LOW(m2_in, lanes);                       \
    LN_WELFORD_FOLD(mean_out, m2_out, LN_HIGH(mean_in, lanes), LN_HIGH(m2_in, lanes), scale); \
    scale *= 2

/* Welford moments (mean, m2) of VL lanes that have each seen `count` values,
 * merged into one. */
static inline void lanes_welford(V mean, V m2, C count, C *mean_out, C *m2_out)
{
    C scale = count * (C)0.5;
#if LN_LANES == 16
    LN_WELFORD_HALVE(LN_V8, mean, m2, 16, mean8, m2_8);
#elif LN_LANES == 8
    LN_V8 mean8 = mean, m2_8 = m2;
#endif
#if LN_LANES >= 8
    LN_WELFORD_HALVE(LN_V4, mean8, m2_8, 8, mean4, m2_4);
#elif LN_LANES == 4
    LN_V4 mean4 = mean, m2_4 = m2;
#endif
#if LN_LANES >= 4
    LN_WELFORD_HALVE(LN_V2, mean4, m2_4, 4, mean2, m2_2);
#else
    LN_V2 mean2 = mean, m2_2 = m2;
#endif
    C mean1 = mean2[0], m2_1 = m2_2[0];
    LN_WELFORD_FOLD(mean1, m2_1, mean2[1], m2_2[1], scale);
    *mean_out = mean1;
    *m2_out = m2_1;
}

#if LN_LANES >= 8
/* Lane sums of 8 rows at once, for vectors of 8 or 16 lanes.  Vector s[g]
 * holds row g's VL partial sums.  A pair fold at width w takes two vectors
 * made of runs of 2w lanes (one run per row) and returns one made of runs of
 * w lanes: lane i of each run plus lane i + w, the first vector's rows then
 * the second's.  Each lane meets the same partner as in lanes_sum, so every
 * row gets the bits lanes_sum gives it, but the 8 rows share each shuffle
 * and their additions overlap instead of waiting on one another (on rows of
 * 64 elements the per-row reduction's latency, not the bytes, set the time). */
#define LN_PAIR_LOW_16_8 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23
#define LN_PAIR_HIGH_16_8 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31
#define LN_PAIR_LOW_16_4 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27
#define LN_PAIR_HIGH_16_4 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31
#define LN_PAIR_LOW_16_2 0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29
#define LN_PAIR_HIGH_16_2 2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31
#define LN_PAIR_LOW_16_1 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30
#define LN_PAIR_HIGH_16_1 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31
#define LN_PAIR_LOW_8_4 0, 1, 2, 3, 8, 9, 10, 11
#define LN_PAIR_HIGH_8_4 4, 5, 6, 7, 12, 13, 14, 15
#define LN_PAIR_LOW_8_2 0, 1, 4, 5, 8, 9, 12, 13
#define LN_PAIR_HIGH_8_2 2, 3, 6, 7, 10, 11, 14, 15
#define LN_PAIR_LOW_8_1 0, 2, 4, 6, 8, 10, 12, 14
#define LN_PAIR_HIGH_8_1 1, 3, 5, 7, 9, 11, 13, 15
#define LN_PAIR_FOLD_(a, b, lanes, w) \
    (__builtin_shufflevector(a, b, LN_PAIR_LOW_##lanes##_##w) + __builtin_shufflevector(a, b, LN_PAIR_HIGH_##lanes##_##w))
#define LN_PAIR_FOLD(a, b, lanes, w) LN_PAIR_FOLD_(a, b, lanes, w)

/* sums[g] = the sum of s[g]'s lanes, for g < 8 */
static inline void lanes_sum_8(const V s[8], C sums[8])
{
#if LN_LANES == 16
    const V a0 = LN_PAIR_FOLD(s[0], s[1], 16, 8), a1 = LN_PAIR_FOLD(s[2], s[3], 16, 8);
    const V a2 = LN_PAIR_FOLD(s[4], s[5], 16, 8), a3 = LN_PAIR_FOLD(s[6], s[7], 16, 8);
    const V b0 = LN_PAIR_FOLD(a0, a1, 16, 4), b1 = LN_PAIR_FOLD(a2, a3, 16, 4);
    const V c0 = LN_PAIR_FOLD(b0, b1, 16, 2);
    const V d0 = LN_PAIR_FOLD(c0, c0, 16, 1);   /* rows 0..7, twice */
    memcpy(sums, &d0, 8 * sizeof(C));
#elif LN_LANES == 8
    const V a0 = LN_PAIR_FOLD(s[0], s[1], 8, 4), a1 = LN_PAIR_FOLD(s[2], s[3], 8, 4);
    const V a2 = LN_PAIR_FOLD(s[4], s[5], 8, 4), a3 = LN_PAIR_FOLD(s[6], s[7], 8, 4);
    const V b0 = LN_PAIR_FOLD(a0, a1, 8, 2), b1 = LN_PAIR_FOLD(a2, a3, 8, 2);
    const V c0 = LN_PAIR_FOLD(b0, b1, 8, 1);
    memcpy(sums, &c0, 8 * sizeof(C));
#endif
}
#endif

#endif
