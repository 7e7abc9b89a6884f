/* Elementwise passes over one contiguous span (include after
 * kernel_common.h, inside a kernel template). */
#ifndef LAYERNORM_SPANS_H
#define LAYERNORM_SPANS_H

/* sum_out = x + residual, rounded to the storage type (the fused add). */
static inline void add_span(const E *x, const E *residual, E *sum_out, int64_t n)
{
    int64_t i = 0;
    for (; i + VL <= n; i += VL) STOREV(sum_out + i, LOADV(x + i) + LOADV(residual + i));
    for (; i < n; i++) STORE1(sum_out + i, LOAD1(x + i) + LOAD1(residual + i));
}

/* The value s[0] = x[0] + residual[0] as it is stored. */
static inline C rounded_sum(const E *x, const E *residual)
{
    E stored;
    STORE1(&stored, LOAD1(x) + LOAD1(residual));
    return LOAD1(&stored);
}

/* y = ((x - hi) - lo) * scale * weight + bias: the centred form with the mean
 * as a hi/lo pair (RMS norm passes hi = lo = 0).  weight/bias may be NULL;
 * `storage`: they are stored like x (see param_v). */
static inline void normalize_span(const E *x, E *y, int64_t n, C hi, C lo, C scale,
                                  const void *weight, const void *bias, int storage)
{
    const V vhi = vbroadcast(hi), vlo = vbroadcast(lo), vscale = vbroadcast(scale);
    int64_t i = 0;
#define LN_CENTRED(i) (((LOADV(x + (i)) - vhi) - vlo) * vscale)
    if (weight && bias)
        for (; i + VL <= n; i += VL)
            STOREV(y + i, LN_CENTRED(i) * param_v(weight, storage, i) + param_v(bias, storage, i));
    else if (weight)
        for (; i + VL <= n; i += VL) STOREV(y + i, LN_CENTRED(i) * param_v(weight, storage, i));
    else if (bias)
        for (; i + VL <= n; i += VL) STOREV(y + i, LN_CENTRED(i) + param_v(bias, storage, i));
    else
        for (; i + VL <= n; i += VL) STOREV(y + i, LN_CENTRED(i));
#undef LN_CENTRED
    for (; i < n; i++) {
        C v = ((LOAD1(x + i) - hi) - lo) * scale;
        if (weight) v *= param_1(weight, storage, i);
        if (bias) v += param_1(bias, storage, i);
        STORE1(y + i, v);
    }
}

#endif
