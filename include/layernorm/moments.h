/* Moments of one block of a row, in vector lanes (include after
 * kernel_common.h, inside a kernel template).
 *
 * Layer norm: Welford in VL lanes x LN_ACCUMULATORS independent accumulators
 * on data shifted by the row's first element, reciprocals from a table (no
 * divide in the loop), lanes merged pairwise with Chan's formula in a fixed
 * order, the tail by scalar Welford.  The shift makes float32 exact for rows
 * with a large common offset: x - shift is exact when both are close, and
 * the mean is carried as the pair (shift, mean of shifted data).
 * RMS norm: sum of squares in the same lanes.
 * Short rows (one block) take their moments from the partial sums below,
 * in sets of eight rows (forward_rows.c).
 * `addend` (may be NULL): the data is x + addend as the storage type holds
 * it (the fused add, when its stored sum is not read back).
 */
#ifndef LAYERNORM_MOMENTS_H
#define LAYERNORM_MOMENTS_H

typedef struct { double n, mean, m2; } ln_moments;

static inline void chan_merge(ln_moments *acc, ln_moments part)
{
    if (part.n == 0) return;
    if (acc->n == 0) { *acc = part; return; }
    const double n = acc->n + part.n;
    const double delta = part.mean - acc->mean;
    acc->mean += delta * (part.n / n);
    acc->m2 += part.m2 + delta * delta * (acc->n * part.n / n);
    acc->n = n;
}

/* recip[s] = 1 / (s + 1) for the steps (plus a partial one) that a block of
 * `block_len` elements takes.  recip must hold LN_STEPS_PER_BLOCK + 1 values. */
static inline void fill_reciprocals(C *recip, int64_t block_len)
{
    const int64_t steps = (block_len < LN_BLOCK ? block_len : LN_BLOCK) / (VL * LN_ACCUMULATORS);
    for (int64_t s = 0; s <= steps; s++) recip[s] = (C)1 / (C)(s + 1);
}

/* Chan's merge of accumulator b into a, both vectors of lanes that have seen
 * count_a and count_b values. */
static inline void merge_lanes(V *mean_a, V *m2_a, C *count_a, V mean_b, V m2_b, C count_b)
{
    if (count_b == 0) return;
    if (*count_a == 0) { *mean_a = mean_b; *m2_a = m2_b; *count_a = count_b; return; }
    const C n = *count_a + count_b;
    const V delta = mean_b - *mean_a;
    *mean_a += delta * (count_b / n);
    *m2_a += m2_b + delta * delta * (*count_a * count_b / n);
    *count_a = n;
}

static inline __attribute__((always_inline)) ln_moments block_welford(const E *x, const E *addend, int64_t n, C shift, const C *recip)
{
    enum { K = LN_ACCUMULATORS };
    const int64_t step = VL * K;
    const int64_t vectors = n / VL, steps = vectors / K, extra = vectors - steps * K;
    const V vshift = vbroadcast(shift);
    V mean[K], m2[K];
    C count[K];
    for (int k = 0; k < K; k++) mean[k] = m2[k] = vbroadcast(0), count[k] = (C)(steps + (k < extra));
#define LN_WELFORD_UPDATE(k, i, inv)                      \
    do {                                                  \
        const V v = load_or_sum(x, addend, i) - vshift;   \
        const V delta = v - mean[k];                      \
        mean[k] = vmuladd(delta, (inv), mean[k]);         \
        m2[k] = vmuladd(delta, v - mean[k], m2[k]);       \
    } while (0)
    for (int64_t s = 0; s < steps; s++) {
        const V inv = vbroadcast(recip[s]);
        for (int k = 0; k < K; k++) LN_WELFORD_UPDATE(k, s * step + k * VL, inv);
    }
    /* leftover whole vectors: one more step for the first `extra` accumulators */
    for (int k = 0; k < extra; k++) LN_WELFORD_UPDATE(k, steps * step + k * VL, vbroadcast(recip[steps]));
#undef LN_WELFORD_UPDATE
    if (extra == 0) {
        /* equal counts (the usual case): no divides */
        const C half_count = (C)steps * (C)0.5;
        C scale = half_count;
        for (int width = K / 2; width >= 1; width /= 2, scale *= 2)
            for (int k = 0; k < width; k++) {
                const V delta = mean[k + width] - mean[k];
                mean[k] += delta * (C)0.5;
                m2[k] += m2[k + width] + delta * delta * scale;
            }
        count[0] = (C)(steps * K);
    } else {
        for (int width = K / 2; width >= 1; width /= 2)
            for (int k = 0; k < width; k++)
                merge_lanes(&mean[k], &m2[k], &count[k], mean[k + width], m2[k + width], count[k + width]);
    }
    ln_moments total = {0, 0, 0};
    if (count[0] > 0) {
        C lane_mean, lane_m2;
        lanes_welford(mean[0], m2[0], count[0], &lane_mean, &lane_m2);
        total = (ln_moments){(double)(vectors * VL), lane_mean, lane_m2};
    }
    /* fewer than VL elements left: exact two-pass moments, one divide */
    const int64_t done = vectors * VL;
    if (done < n) {
        double sum = 0, tail_m2 = 0;
        for (int64_t i = done; i < n; i++) sum += (double)(load1_or_sum(x, addend, i) - shift);
        const double tail_mean = sum / (double)(n - done);
        for (int64_t i = done; i < n; i++) {
            const double d = (double)(load1_or_sum(x, addend, i) - shift) - tail_mean;
            tail_m2 += d * d;
        }
        chan_merge(&total, (ln_moments){(double)(n - done), tail_mean, tail_m2});
    }
    return total;
}

/* Sums over the whole vectors of x[0, n), LOAD(i) being the vector at element
 * i, left in VL lanes: four accumulators in turn, then added pairwise.
 * ACCUMULATE(acc, v) is the new acc for loaded vector v.  Named accumulators,
 * not an array: GCC kept an array of them on the stack. */
_Static_assert(LN_ACCUMULATORS == 4, "LN_PARTIAL_SUMS has four accumulators");
#define LN_PARTIAL_SUMS(n, LOAD, ACCUMULATE) \
    LN_PARTIAL_SUMS_THEN(n, LOAD, ACCUMULATE, LN_ACCUMULATE_TAIL(acc3_, vectors_ * VL, (n) - vectors_ * VL, ACCUMULATE))
/* ... of whole vectors only (n a multiple of VL) */
#define LN_WHOLE_VECTOR_SUMS(n, LOAD, ACCUMULATE) LN_PARTIAL_SUMS_THEN(n, LOAD, ACCUMULATE, (void)0)
#define LN_PARTIAL_SUMS_THEN(n, LOAD, ACCUMULATE, TAIL)                              \
    do {                                                                             \
        const int64_t vectors_ = (n) / VL;                                           \
        V acc0_ = vbroadcast(0), acc1_ = acc0_, acc2_ = acc0_, acc3_ = acc0_;        \
        int64_t v_ = 0;                                                              \
        for (; v_ + 4 <= vectors_; v_ += 4) {                                        \
            acc0_ = ACCUMULATE(acc0_, LOAD(v_ * VL));                                \
            acc1_ = ACCUMULATE(acc1_, LOAD((v_ + 1) * VL));                          \
            acc2_ = ACCUMULATE(acc2_, LOAD((v_ + 2) * VL));                          \
            acc3_ = ACCUMULATE(acc3_, LOAD((v_ + 3) * VL));                          \
        }                                                                            \
        if (v_ < vectors_) acc0_ = ACCUMULATE(acc0_, LOAD(v_ * VL));                 \
        if (v_ + 1 < vectors_) acc1_ = ACCUMULATE(acc1_, LOAD((v_ + 1) * VL));       \
        if (v_ + 2 < vectors_) acc2_ = ACCUMULATE(acc2_, LOAD((v_ + 2) * VL));       \
        TAIL;                                                                        \
        return (acc0_ + acc2_) + (acc1_ + acc3_);                                    \
    } while (0)
/* The elements after the whole vectors: one masked vector into acc3 (see
 * LN_MASKED_TAILS; the tail_* sums below are then 0), or left to those sums. */
#if LN_MASKED_TAILS
#define LN_ACCUMULATE_TAIL(acc, i, count, ACCUMULATE)                                               \
    do {                                                                                            \
        if ((count) > 0)                                                                            \
            (acc) = ln_blend_lanes_below((acc), ACCUMULATE((acc), load_tail_or_sum(x, addend, (i), (count))), (count)); \
    } while (0)
#else
#define LN_ACCUMULATE_TAIL(acc, i, count, ACCUMULATE) do { } while (0)
#endif

#define LN_ADD_SHIFTED(acc, v) ((acc) + ln_add_on_fma((v), vshift_neg, vone))
#define LN_ADD_SQUARED_DEVIATION(acc, v) ({ const V deviation_ = ln_add_on_fma((v), vshift_neg, vone) - vmean; vmuladd(deviation_, deviation_, acc); })
#define LN_ADD_SQUARE(acc, v) ({ const V loaded_ = (v); vmuladd(loaded_, loaded_, acc); })
#define LN_LOAD_DATA(i) load_or_sum(x, addend, i)

/* x - shift */
static inline __attribute__((always_inline)) V partial_shifted_sum(const E *x, const E *addend, int64_t n, C shift)
{
    const V vshift_neg = vbroadcast(-shift), vone = ln_opaque_one();
    LN_PARTIAL_SUMS(n, LN_LOAD_DATA, LN_ADD_SHIFTED);
}

/* (x - shift - mean)^2 */
static inline __attribute__((always_inline)) V partial_squared_deviations(const E *x, const E *addend, int64_t n, C shift, C mean)
{
    const V vshift_neg = vbroadcast(-shift), vmean = vbroadcast(mean), vone = ln_opaque_one();
    LN_PARTIAL_SUMS(n, LN_LOAD_DATA, LN_ADD_SQUARED_DEVIATION);
}

/* x^2 */
static inline __attribute__((always_inline)) V partial_squares(const E *x, const E *addend, int64_t n)
{
    LN_PARTIAL_SUMS(n, LN_LOAD_DATA, LN_ADD_SQUARE);
}

/* partial_shifted_sum and, into *squares, the partial sums of (x - shift)^2:
 * both moments in one read of the row (see LN_ONE_PASS_MOMENTS in
 * forward_rows.c).  Eight accumulators, four a sum. */
#define LN_SUM_AND_SQUARE(s, q, d)                                   \
    do {                                                             \
        const V d_ = (d);                                            \
        (s) += d_;                                                   \
        (q) = vmuladd(d_, d_, (q));                                  \
    } while (0)
#define LN_SUMS_AND_SQUARES(n, LOAD)                                                          \
    do {                                                                                      \
        const int64_t vectors_ = (n) / VL;                                                    \
        V s0_ = vbroadcast(0), s1_ = s0_, s2_ = s0_, s3_ = s0_, q0_ = s0_, q1_ = s0_, q2_ = s0_, q3_ = s0_; \
        int64_t v_ = 0;                                                                       \
        for (; v_ + 4 <= vectors_; v_ += 4) {                                                 \
            LN_SUM_AND_SQUARE(s0_, q0_, LOAD(v_ * VL));                                       \
            LN_SUM_AND_SQUARE(s1_, q1_, LOAD((v_ + 1) * VL));                                 \
            LN_SUM_AND_SQUARE(s2_, q2_, LOAD((v_ + 2) * VL));                                 \
            LN_SUM_AND_SQUARE(s3_, q3_, LOAD((v_ + 3) * VL));                                 \
        }                                                                                     \
        if (v_ < vectors_) LN_SUM_AND_SQUARE(s0_, q0_, LOAD(v_ * VL));                        \
        if (v_ + 1 < vectors_) LN_SUM_AND_SQUARE(s1_, q1_, LOAD((v_ + 1) * VL));              \
        if (v_ + 2 < vectors_) LN_SUM_AND_SQUARE(s2_, q2_, LOAD((v_ + 2) * VL));              \
        LN_SUMS_AND_SQUARES_TAIL(s3_, q3_, vectors_ * VL, (n) - vectors_ * VL);              \
        *squares = (q0_ + q2_) + (q1_ + q3_);                                                 \
        return (s0_ + s2_) + (s1_ + s3_);                                                     \
    } while (0)
static inline __attribute__((always_inline)) V partial_shifted_sum_squares(const E *x, const E *addend, int64_t n, C shift,
                                                                            V *squares)
{
    const V vshift_neg = vbroadcast(-shift), vone = ln_opaque_one();
#if LN_MASKED_TAILS
#define LN_SUMS_AND_SQUARES_TAIL(s, q, i, count)                                                \
    do {                                                                                        \
        if ((count) > 0) {                                                                      \
            V s_ = (s), q_ = (q);                                                               \
            LN_SUM_AND_SQUARE(s_, q_, ln_add_on_fma(load_tail_or_sum(x, addend, (i), (count)), vshift_neg, vone)); \
            (s) = ln_blend_lanes_below((s), s_, (count));                                       \
            (q) = ln_blend_lanes_below((q), q_, (count));                                       \
        }                                                                                       \
    } while (0)
#else
#define LN_SUMS_AND_SQUARES_TAIL(s, q, i, count) do { } while (0)
#endif
#define LN_LOAD_SHIFTED(i) ln_add_on_fma(load_or_sum(x, addend, i), vshift_neg, vone)
    LN_SUMS_AND_SQUARES(n, LN_LOAD_SHIFTED);
#undef LN_LOAD_SHIFTED
#undef LN_SUMS_AND_SQUARES_TAIL
}

/* partial_shifted_sum and partial_squares of a row of whole vectors that
 * also store each vector of x - shift (or of x, for the squares) in `kept`,
 * where the passes that follow read it instead of loading and converting x
 * again (see KEEPS_ROWS in forward_rows.c). */
#define LN_ADD(acc, v) ((acc) + (v))
#define LN_KEEP(i, VALUE) ({ const V kept_ = (VALUE); vstore_c(kept + (i), kept_); kept_; })
#define LN_KEEP_SHIFTED(i) LN_KEEP(i, ln_add_on_fma(load_or_sum(x, addend, i), vshift_neg, vone))
#define LN_KEEP_DATA(i) LN_KEEP(i, load_or_sum(x, addend, i))
#define LN_LOAD_KEPT(i) vload_c(kept + (i))
#define LN_ADD_KEPT_DEVIATION(acc, v) ({ const V deviation_ = (v) - vmean; vmuladd(deviation_, deviation_, acc); })
static inline __attribute__((always_inline)) V partial_shifted_sum_keeping(const E *x, const E *addend, int64_t n, C shift, C *kept)
{
    const V vshift_neg = vbroadcast(-shift), vone = ln_opaque_one();
    LN_WHOLE_VECTOR_SUMS(n, LN_KEEP_SHIFTED, LN_ADD);
}
static inline __attribute__((always_inline)) V partial_squares_keeping(const E *x, const E *addend, int64_t n, C *kept)
{
    LN_WHOLE_VECTOR_SUMS(n, LN_KEEP_DATA, LN_ADD_SQUARE);
}
/* partial_shifted_sum_squares of a row of whole vectors, keeping x - shift
 * (the same values) */
static inline __attribute__((always_inline)) V partial_shifted_sum_squares_keeping(const E *x, const E *addend, int64_t n, C shift,
                                                                                    C *kept, V *squares)
{
    const V vshift_neg = vbroadcast(-shift), vone = ln_opaque_one();
#define LN_SUMS_AND_SQUARES_TAIL(s, q, i, count) do { } while (0)
    LN_SUMS_AND_SQUARES(n, LN_KEEP_SHIFTED);
#undef LN_SUMS_AND_SQUARES_TAIL
}
#undef LN_SUMS_AND_SQUARES
#undef LN_SUM_AND_SQUARE
/* partial_squared_deviations from the kept x - shift: the same values
 * (ln_add_on_fma rounds x - shift as it did), so the same bits */
static inline __attribute__((always_inline)) V partial_kept_squared_deviations(const C *kept, int64_t n, C mean)
{
    const V vmean = vbroadcast(mean);
    LN_WHOLE_VECTOR_SUMS(n, LN_LOAD_KEPT, LN_ADD_KEPT_DEVIATION);
}
#undef LN_ADD
#undef LN_KEEP
#undef LN_KEEP_SHIFTED
#undef LN_KEEP_DATA
#undef LN_LOAD_KEPT
#undef LN_ADD_KEPT_DEVIATION

#undef LN_ADD_SHIFTED
#undef LN_ADD_SQUARED_DEVIATION
#undef LN_ADD_SQUARE
#undef LN_LOAD_DATA

/* The same three sums over the elements after the whole vectors, in C
 * (none with LN_MASKED_TAILS: the vector sums took them). */
static inline C tail_shifted_sum(const E *x, const E *addend, int64_t n, C shift)
{
    C sum = 0;
    for (int64_t i = LN_TAIL_START(n); i < n; i++) sum += load1_or_sum(x, addend, i) - shift;
    return sum;
}
static inline C tail_squared_deviations(const E *x, const E *addend, int64_t n, C shift, C mean)
{
    C sum = 0;
    for (int64_t i = LN_TAIL_START(n); i < n; i++) {
        const C d = (load1_or_sum(x, addend, i) - shift) - mean;
        sum += d * d;
    }
    return sum;
}
static inline C tail_squares(const E *x, const E *addend, int64_t n)
{
    C sum = 0;
    for (int64_t i = LN_TAIL_START(n); i < n; i++) {
        const C v = load1_or_sum(x, addend, i);
        sum += v * v;
    }
    return sum;
}

/* Statistics in float64, two passes, one element at a time, of the n values
 * x[0], x[stride], x[2 stride], ... (x + addend, see load1_or_sum): the
 * moments of x - shift, or (rms) the sum of squares in m2.  The fallback for
 * a row or strided position whose float32 sums overflowed (n * variance
 * above the float32 range); non-finite data gives non-finite statistics here
 * too. */
static inline ln_moments float64_statistics(const E *x, const E *addend, int64_t n, int64_t stride, C shift, int rms)
{
    double sum = 0, m2 = 0;
    for (int64_t i = 0; i < n && !rms; i++) sum += (double)load1_or_sum(x, addend, i * stride) - (double)shift;
    const double mean = sum / (double)n;
    for (int64_t i = 0; i < n; i++) {
        const double v = (double)load1_or_sum(x, addend, i * stride);
        const double d = rms ? v : (v - (double)shift) - mean;
        m2 += d * d;
    }
    return (ln_moments){(double)n, mean, m2};
}

/* RMS norm: the sum of squares of a block. */
static inline __attribute__((always_inline)) double block_sum_squares(const E *x, const E *addend, int64_t n)
{
    return (double)lanes_sum(partial_squares(x, addend, n)) + (double)tail_squares(x, addend, n);
}

#endif
