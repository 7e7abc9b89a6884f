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

/* recip[s] = 1 / (s + 1) for every step of a block. */
static inline void fill_reciprocals(C *recip)
{
    for (int64_t s = 0; s < LN_STEPS_PER_BLOCK; s++) recip[s] = (C)1 / (C)(s + 1);
}

static inline ln_moments block_welford(const E *x, int64_t n, C shift, const C *recip)
{
    enum { K = LN_ACCUMULATORS };
    const int64_t step = VL * K;
    const int64_t steps = n / step;
    const V vshift = vbroadcast(shift);
    V mean[K], m2[K];
    for (int k = 0; k < K; k++) mean[k] = m2[k] = vbroadcast(0);
    for (int64_t s = 0; s < steps; s++) {
        const V inv = vbroadcast(recip[s]);
        const E *p = x + s * step;
        for (int k = 0; k < K; k++) {
            const V v = LOADV(p + k * VL) - vshift;
            const V delta = v - mean[k];
            mean[k] += delta * inv;
            m2[k] += delta * (v - mean[k]);
        }
    }
    ln_moments total = {0, 0, 0};
    if (steps > 0) {
        C count = (C)steps;   /* every accumulator and lane has seen `steps` values */
        for (int width = K / 2; width >= 1; width /= 2) {
            for (int k = 0; k < width; k++) {
                const V delta = mean[k + width] - mean[k];
                mean[k] += delta * (C)0.5;
                m2[k] += m2[k + width] + delta * delta * (count * (C)0.5);
            }
            count *= 2;
        }
        C lane_mean[VL], lane_m2[VL];
        memcpy(lane_mean, &mean[0], sizeof lane_mean);
        memcpy(lane_m2, &m2[0], sizeof lane_m2);
        for (int64_t width = VL / 2; width >= 1; width /= 2) {
            for (int64_t i = 0; i < width; i++) {
                const C delta = lane_mean[i + width] - lane_mean[i];
                lane_mean[i] += delta * (C)0.5;
                lane_m2[i] += lane_m2[i + width] + delta * delta * (count * (C)0.5);
            }
            count *= 2;
        }
        total = (ln_moments){(double)(steps * step), lane_mean[0], lane_m2[0]};
    }
    ln_moments tail = {0, 0, 0};
    for (int64_t i = steps * step; i < n; i++) {
        const double v = (double)(LOAD1(x + i) - shift);
        tail.n += 1;
        const double delta = v - tail.mean;
        tail.mean += delta / tail.n;
        tail.m2 += delta * (v - tail.mean);
    }
    chan_merge(&total, tail);
    return total;
}

static inline double block_sum_squares(const E *x, int64_t n)
{
    enum { K = LN_ACCUMULATORS };
    const int64_t step = VL * K;
    const int64_t steps = n / step;
    V acc[K];
    for (int k = 0; k < K; k++) acc[k] = vbroadcast(0);
    for (int64_t s = 0; s < steps; s++) {
        const E *p = x + s * step;
        for (int k = 0; k < K; k++) {
            const V v = LOADV(p + k * VL);
            acc[k] += v * v;
        }
    }
    for (int width = K / 2; width >= 1; width /= 2)
        for (int k = 0; k < width; k++) acc[k] += acc[k + width];
    double total = (double)hsum(acc[0]);
    C tail = 0;
    for (int64_t i = steps * step; i < n; i++) {
        const C v = LOAD1(x + i);
        tail += v * v;
    }
    return total + (double)tail;
}

#endif
