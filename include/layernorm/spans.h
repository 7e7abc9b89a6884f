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
 * `storage`: they are stored like x (see param_v).  `stream`: y's aligned
 * vectors are streamed (n a multiple of VL, see ln_stream_rows); the
 * unaligned first and last vectors are computed before any store (x may be
 * y), and their elements outside the streamed vectors stored last, so every
 * element has the vector arithmetic. */
static inline V normalized_v(const E *x, int64_t i, V vhi, V vlo, V vscale, const void *weight,
                             const void *bias, int storage)
{
    V v = ((LOADV(x + i) - vhi) - vlo) * vscale;
    if (weight && bias) return v * param_v(weight, storage, i) + param_v(bias, storage, i);
    if (weight) return v * param_v(weight, storage, i);
    if (bias) return v + param_v(bias, storage, i);
    return v;
}

static inline void normalize_streamed(const E *x, E *y, int64_t n, V vhi, V vlo, V vscale,
                                      const void *weight, const void *bias, int storage)
{
    /* elements before y's first aligned vector (y is aligned to sizeof(E)) */
    const int64_t skip = (int64_t)((LN_VECTOR_BYTES - (uintptr_t)y % LN_VECTOR_BYTES) % LN_VECTOR_BYTES) / (int64_t)sizeof(E);
    V head = vbroadcast(0), tail = vbroadcast(0);
    if (skip) {
        head = normalized_v(x, 0, vhi, vlo, vscale, weight, bias, storage);
        tail = normalized_v(x, n - VL, vhi, vlo, vscale, weight, bias, storage);
    }
    int64_t i = skip;
#define LN_STREAM_LOOP(W, B) \
    for (; i + VL <= n; i += VL) STREAMV(y + i, normalized_v(x, i, vhi, vlo, vscale, W, B, storage))
    if (weight && bias) LN_STREAM_LOOP(weight, bias);
    else if (weight) LN_STREAM_LOOP(weight, NULL);
    else if (bias) LN_STREAM_LOOP(NULL, bias);
    else LN_STREAM_LOOP(NULL, NULL);
#undef LN_STREAM_LOOP
    if (skip) {   /* only the elements outside the streamed lines: a normal store into a streamed line would fetch it back */
        memcpy(y, &head, (size_t)skip * sizeof(E));
        memcpy(y + i, (const E *)&tail + (i - (n - VL)), (size_t)(n - i) * sizeof(E));
    }
}

static inline void normalize_span(const E *x, E *y, int64_t n, C hi, C lo, C scale,
                                  const void *weight, const void *bias, int storage, int stream)
{
    const V vhi = vbroadcast(hi), vlo = vbroadcast(lo), vscale = vbroadcast(scale);
    if (stream && n >= 2 * VL) {
        normalize_streamed(x, y, n, vhi, vlo, vscale, weight, bias, storage);
        return;
    }
    int64_t i = 0;
    if (weight && bias)
        for (; i + VL <= n; i += VL) STOREV(y + i, normalized_v(x, i, vhi, vlo, vscale, weight, bias, storage));
    else if (weight)
        for (; i + VL <= n; i += VL) STOREV(y + i, normalized_v(x, i, vhi, vlo, vscale, weight, NULL, storage));
    else if (bias)
        for (; i + VL <= n; i += VL) STOREV(y + i, normalized_v(x, i, vhi, vlo, vscale, NULL, bias, storage));
    else
        for (; i + VL <= n; i += VL) STOREV(y + i, normalized_v(x, i, vhi, vlo, vscale, NULL, NULL, storage));
    for (; i < n; i++) {
        C v = ((LOAD1(x + i) - hi) - lo) * scale;
        if (weight) v *= param_1(weight, storage, i);
        if (bias) v += param_1(bias, storage, i);
        STORE1(y + i, v);
    }
}

#endif
