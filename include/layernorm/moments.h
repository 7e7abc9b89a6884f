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
        mean[k] += delta * (inv);                         \
        m2[k] += delta * (v - mean[k]);                   \
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
        /* every lane has seen count[0] values: equal-count halving in a
         * fixed order; unrolled so that each level has a constant width */
        C lane_mean[VL], lane_m2[VL], scale = count[0] * (C)0.5;
        memcpy(lane_mean, &mean[0], sizeof lane_mean);
        memcpy(lane_m2, &m2[0], sizeof lane_m2);
#pragma GCC unroll 8
        for (int64_t width = VL / 2; width >= 1; width /= 2) {
#pragma GCC ivdep   /* lanes [0, width) and [width, 2 width) do not overlap */
            for (int64_t i = 0; i < width; i++) {
                const C delta = lane_mean[i + width] - lane_mean[i];
                lane_mean[i] += delta * (C)0.5;
                lane_m2[i] += lane_m2[i + width] + delta * delta * scale;
            }
            scale *= 2;
        }
        total = (ln_moments){(double)(vectors * VL), lane_mean[0], lane_m2[0]};
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

static inline __attribute__((always_inline)) double block_sum_squares(const E *x, const E *addend, int64_t n)
{
    enum { K = LN_ACCUMULATORS };
    const int64_t step = VL * K;
    const int64_t steps = n / step;
    V acc[K];
    for (int k = 0; k < K; k++) acc[k] = vbroadcast(0);
    for (int64_t s = 0; s < steps; s++) {
        for (int k = 0; k < K; k++) {
            const V v = load_or_sum(x, addend, s * step + k * VL);
            acc[k] += v * v;
        }
    }
    for (int width = K / 2; width >= 1; width /= 2)
        for (int k = 0; k < width; k++) acc[k] += acc[k + width];
    double total = (double)hsum(acc[0]);
    C tail = 0;
    for (int64_t i = steps * step; i < n; i++) {
        const C v = load1_or_sum(x, addend, i);
        tail += v * v;
    }
    return total + (double)tail;
}

#endif
