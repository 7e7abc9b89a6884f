/* Elementwise passes over one contiguous span (include after
 * kernel_common.h, inside a kernel template). */
#ifndef LAYERNORM_SPANS_H
#define LAYERNORM_SPANS_H

/* VALUE(i) streamed at y + i for i in [begin, end), whole lines; in pairs of
 * vectors where the storage type narrows two at once (LN_HAS_STOREV2; a line
 * then holds whole pairs: two at AVX2 bfloat16, the one level that streams them) */
#ifdef LN_HAS_STOREV2
#define LN_STREAM_LINES(y, begin, end, VALUE)                                                       \
    for (i = (begin); i < (end);) {                                                                 \
        const V first_ = (VALUE);                                                                   \
        i += VL;                                                                                    \
        const V second_ = (VALUE);                                                                  \
        i += VL;                                                                                    \
        STREAMV2((y) + i - 2 * VL, first_, second_);                                                \
    }
#else
#define LN_STREAM_LINES(y, begin, end, VALUE) for (i = (begin); i < (end); i += VL) STREAMV((y) + i, (VALUE))
#endif
/* ... from the last line down to the first (see add_span) */
#ifdef LN_HAS_STOREV2
#define LN_STREAM_LINES_DESCENDING(y, begin, end, VALUE)                                            \
    for (int64_t at_ = (end) - 2 * VL; at_ >= (begin); at_ -= 2 * VL) {                             \
        i = at_;                                                                                    \
        const V first_ = (VALUE);                                                                   \
        i = at_ + VL;                                                                               \
        const V second_ = (VALUE);                                                                  \
        STREAMV2((y) + at_, first_, second_);                                                       \
    }
#else
#define LN_STREAM_LINES_DESCENDING(y, begin, end, VALUE)                                            \
    for (i = (end) - VL; i >= (begin); i -= VL) STREAMV((y) + i, (VALUE))
#endif

/* VALUE_AT(j) (a macro's name) stored at y + j for the whole vectors from i
 * (a variable the caller starts) up to n; i is left after them.  In pairs of
 * vectors where the storage type narrows two at once (LN_HAS_STOREV2). */
#ifdef LN_HAS_STOREV2
#define LN_STORE_VECTORS(y, n, VALUE_AT)                                                            \
    do {                                                                                            \
        for (; i + 2 * VL <= (n); i += 2 * VL) STOREV2((y) + i, VALUE_AT(i), VALUE_AT(i + VL));    \
        for (; i + VL <= (n); i += VL) STOREV((y) + i, VALUE_AT(i));                                \
    } while (0)
#else
#define LN_STORE_VECTORS(y, n, VALUE_AT) for (; i + VL <= (n); i += VL) STOREV((y) + i, VALUE_AT(i))
#endif

/* Store VALUE(i) (a V expression in i) at y + i for i in [0, n), with
 * streaming stores on y's whole 64-byte lines (n at least 2 * VL; see
 * ln_stream_rows).  The elements before the first whole line and after the
 * last are computed before any store (the inputs may be y) and stored at the
 * end with ordinary stores: a line that is partly streamed and partly stored
 * is fetched back (AVX2 float32 (16384, 1024) with y 16 bytes off a line,
 * when the streaming began at y's first 32-byte vector: 1.02x to 1.10x the
 * time of a copy, against 0.83x with y on a line).  Every element gets the
 * vector arithmetic, as in the unstreamed loops. */
#define LN_STREAMED_SPAN(y, n, VALUE) LN_STREAMED_SPAN_IN(y, n, VALUE, LN_STREAM_LINES)
/* ... with the whole lines in the order LINES (LN_STREAM_LINES or
 * LN_STREAM_LINES_DESCENDING) gives them */
#define LN_STREAMED_SPAN_IN(y, n, VALUE, LINES)                                                     \
    do {                                                                                            \
        /* the elements before y's first whole line (y is aligned to sizeof(E)), and the end of     \
         * the last whole line */                                                                   \
        int64_t skip_ = (int64_t)((64 - (uintptr_t)(y) % 64) % 64) / (int64_t)sizeof(E);           \
        if (skip_ > (n)) skip_ = (n);                                                               \
        const int64_t end_ = skip_ + ((n) - skip_) / LN_LINE_ELEMENTS * LN_LINE_ELEMENTS;           \
        /* head_[j] holds element j, tail_[VL + j] element end_ + j; the last vector of each is     \
         * moved back to end at n, so that no vector reads past the span */                         \
        E head_[LN_LINE_ELEMENTS + VL], tail_[LN_LINE_ELEMENTS + 2 * VL];                           \
        int64_t i;                                                                                  \
        for (int64_t at_ = 0; at_ < skip_; at_ += VL) {                                             \
            i = at_ + VL <= (n) ? at_ : (n) - VL;                                                   \
            STOREV(head_ + i, (VALUE));                                                             \
        }                                                                                           \
        for (int64_t at_ = end_; at_ < (n); at_ += VL) {                                            \
            i = at_ + VL <= (n) ? at_ : (n) - VL;                                                   \
            STOREV(tail_ + VL + (i - end_), (VALUE));                                               \
        }                                                                                           \
        LINES(y, skip_, end_, VALUE);                                                               \
        if (skip_) memcpy((y), head_, (size_t)skip_ * sizeof(E));                                   \
        if (end_ < (n)) memcpy((y) + end_, tail_ + VL, (size_t)((n) - end_) * sizeof(E));           \
    } while (0)

#if LN_MASKED_TAILS
/* Elements of y before its first vector boundary (VL elements of E): taken
 * first, as one masked vector, so that every whole vector after them is
 * stored aligned; 0 when y is on a boundary, or the span is short.  A store
 * across a 64-byte line costs twice: in L2, 1 thread, AVX-512 float32
 * (256, 768) with y 16 bytes off a line took 2.0x the time of y on a line,
 * AVX2 1.3x; x's alignment made no difference.  The head gets the vector
 * arithmetic (like the masked tail), so the bits do not depend on where y
 * lies.  A/B against every store where it fell (rows of 500 lie four ways),
 * AVX-512, 1 thread: layer norm (20, 500) float32 0.60x to 0.70x the time,
 * float64 0.57x to 0.68x, RMS norm 0.52x to 0.56x, the fused add 0.70x to
 * 0.74x, AVX2 0.75x; (256, 768) and (20, 512) with y 16 bytes off a line
 * 0.49x to 0.54x, (20, 512) and (40, 512) on a line 1.01x and 1.02x (the
 * alignment of every loop, setup.py, later made these 0.98x against the
 * same base, (256, 768) 0.92x); 2 threads, (4096, 768) 0.97x,
 * (16384, 1024) 0.98x, (262144, 64) 1.00x.  float16 and bfloat16 (20, 500)
 * 1.00x (their rows of 1000 bytes stay in L1). */
static inline __attribute__((always_inline)) int64_t aligned_store_head(const E *y, int64_t n)
{
    const uintptr_t vector_bytes = VL * sizeof(E), off = (uintptr_t)y % vector_bytes;
    if (off == 0 || off % sizeof(E) != 0 || n < 2 * VL) return 0;
    return (int64_t)((vector_bytes - off) / sizeof(E));
}
#endif

/* add_span from the span's end (streamed: the whole lines from the last;
 * stored: the elements after the last whole vector, the whole vectors from
 * the last, then the part before the first vector boundary).  Out of line,
 * so that the usual path's code stays as it was: with it inlined, the
 * ascending add of (4096, 768) (2 threads, AVX-512) took 1.09x to 1.18x the
 * time of the previous build with its sum 64 to 256 bytes ahead of x, 1.02x
 * with the sum at x's offset. */
static __attribute__((noinline)) void add_span_descending(const E *x, const E *residual, E *sum_out, int64_t n,
                                                          int stream)
{
    if (stream && n >= 2 * VL) {
        LN_STREAMED_SPAN_IN(sum_out, n, LOADV(x + i) + LOADV(residual + i), LN_STREAM_LINES_DESCENDING);
        return;
    }
    int64_t head = 0;
#if LN_MASKED_TAILS
    head = aligned_store_head(sum_out, n);
#endif
    const int64_t end = head + (n - head) / VL * VL;
    for (int64_t i = n - 1; i >= end; i--) STORE1(sum_out + i, LOAD1(x + i) + LOAD1(residual + i));
    for (int64_t i = end - VL; i >= head; i -= VL) STOREV(sum_out + i, LOADV(x + i) + LOADV(residual + i));
#if LN_MASKED_TAILS
    if (head) STOREV_TAIL(sum_out, LOADV_TAIL(x, head) + LOADV_TAIL(residual, head), head);
#endif
}

/* sum_out = x + residual, rounded to the storage type (the fused add);
 * `stream`: with streaming stores (see LN_STREAMED_SPAN).  `descending`:
 * from the span's end, for a sum_out that lies just ahead of x or residual
 * modulo 1 MB (see ln_stores_alias_next_loads).  Each element's sum is its
 * own, so the order does not change the bits. */
static inline void add_span(const E *x, const E *residual, E *sum_out, int64_t n, int stream, int descending)
{
    if (__builtin_expect(descending, 0)) {
        add_span_descending(x, residual, sum_out, n, stream);
        return;
    }
    if (stream && n >= 2 * VL) {
        LN_STREAMED_SPAN(sum_out, n, LOADV(x + i) + LOADV(residual + i));
        return;
    }
    int64_t i = 0;
#if LN_MASKED_TAILS
    i = aligned_store_head(sum_out, n);
    if (i) STOREV_TAIL(sum_out, LOADV_TAIL(x, i) + LOADV_TAIL(residual, i), i);
#endif
#define LN_SUM_AT(j) (LOADV(x + (j)) + LOADV(residual + (j)))
    LN_STORE_VECTORS(sum_out, n, LN_SUM_AT);
#undef LN_SUM_AT
    for (; i < n; i++) STORE1(sum_out + i, LOAD1(x + i) + LOAD1(residual + i));
}

/* y = ((x - hi) - lo) * scale * weight + bias: the centred form with the mean
 * as a hi/lo pair (RMS norm passes hi = lo = 0); x + addend when addend is
 * not NULL (see load_or_sum).  weight/bias may be NULL; `storage`: they are
 * stored like x (see param_v).  `stream`: y is written with streaming stores
 * (see LN_STREAMED_SPAN).
 * normalized_of is the arithmetic, which normalized_v and normalized_tail_v
 * share: `data` is x (+ addend) as loaded, w and b the weight and bias
 * vectors where has_weight / has_bias; normalized_centred takes it from
 * (data - hi) - lo. */
static inline __attribute__((always_inline)) V normalized_centred(V centred, V vscale, int has_weight, V w, int has_bias, V b)
{
    if (has_weight && has_bias) return vmuladd(centred * vscale, w, b);
    if (has_weight) return centred * vscale * w;
    if (has_bias) return vmuladd(centred, vscale, b);
    return centred * vscale;
}

static inline __attribute__((always_inline)) V normalized_of(V data, V vhi, V vlo, V vscale, int has_weight, V w,
                                                             int has_bias, V b)
{
    return normalized_centred((data - vhi) - vlo, vscale, has_weight, w, has_bias, b);
}

static inline __attribute__((always_inline)) V normalized_v(const E *x, const E *addend, int64_t i, V vhi, V vlo, V vscale,
                             const void *weight, const void *bias, int storage)
{
    return normalized_of(load_or_sum(x, addend, i), vhi, vlo, vscale, weight != NULL,
                         weight ? param_v(weight, storage, i) : vhi, bias != NULL, bias ? param_v(bias, storage, i) : vhi);
}

#if LN_MASKED_TAILS
/* normalized_v of the last `count` (< VL) elements at i (see LN_MASKED_TAILS) */
static inline __attribute__((always_inline)) V normalized_tail_v(const E *x, const E *addend, int64_t i, int64_t count,
                                                                 V vhi, V vlo, V vscale, const void *weight,
                                                                 const void *bias, int storage)
{
    return normalized_of(load_tail_or_sum(x, addend, i, count), vhi, vlo, vscale, weight != NULL,
                         weight ? param_v_tail(weight, storage, i, count) : vhi, bias != NULL,
                         bias ? param_v_tail(bias, storage, i, count) : vhi);
}

/* normalized_tail_v of the `count` (< VL) elements at i, stored at y + i:
 * a row's head before its first vector boundary, or its tail */
static inline __attribute__((always_inline)) void store_normalized_part(const E *x, const E *addend, E *y, int64_t i,
                                                                        int64_t count, V vhi, V vlo, V vscale,
                                                                        const void *weight, const void *bias, int storage)
{
    STOREV_TAIL(y + i, normalized_tail_v(x, addend, i, count, vhi, vlo, vscale, weight, bias, storage), count);
}
#endif

/* One element's normalized value, in scalar code: the elements after the
 * whole vectors where there are no masked tails. */
static inline __attribute__((always_inline)) C normalized_1(const E *x, const E *addend, int64_t i, C hi, C lo, C scale,
                                                            const void *weight, const void *bias, int storage)
{
    C v = ((load1_or_sum(x, addend, i) - hi) - lo) * scale;
    if (weight) v *= param_1(weight, storage, i);
    if (bias) v += param_1(bias, storage, i);
    return v;
}

/* normalized_v into y for the whole vectors of [i, n); returns where they
 * end.  Inlined with constant NULLs for each weight/bias case. */
static inline __attribute__((always_inline)) int64_t store_normalized_vectors(const E *x, const E *addend, E *y, int64_t i,
                                                                              int64_t n, V vhi, V vlo, V vscale,
                                                                              const void *weight, const void *bias, int storage)
{
#define LN_NORMALIZED_AT(j) normalized_v(x, addend, j, vhi, vlo, vscale, weight, bias, storage)
    LN_STORE_VECTORS(y, n, LN_NORMALIZED_AT);
#undef LN_NORMALIZED_AT
    return i;
}

static inline __attribute__((always_inline)) void normalize_span(const E *x, const E *addend, E *y, int64_t n, C hi, C lo, C scale,
                                  const void *weight, const void *bias, int storage, int stream)
{
    const V vhi = vbroadcast(hi), vlo = vbroadcast(lo), vscale = vbroadcast(scale);
#define LN_NORMALIZED(W, B) normalized_v(x, addend, i, vhi, vlo, vscale, W, B, storage)
    if (stream && n >= 2 * VL) {
        if (weight && bias) LN_STREAMED_SPAN(y, n, LN_NORMALIZED(weight, bias));
        else if (weight) LN_STREAMED_SPAN(y, n, LN_NORMALIZED(weight, NULL));
        else if (bias) LN_STREAMED_SPAN(y, n, LN_NORMALIZED(NULL, bias));
        else LN_STREAMED_SPAN(y, n, LN_NORMALIZED(NULL, NULL));
        return;
    }
#undef LN_NORMALIZED
    int64_t i = 0;
#if LN_MASKED_TAILS
    i = aligned_store_head(y, n);
    if (i) store_normalized_part(x, addend, y, 0, i, vhi, vlo, vscale, weight, bias, storage);
#endif
    if (weight && bias) i = store_normalized_vectors(x, addend, y, i, n, vhi, vlo, vscale, weight, bias, storage);
    else if (weight) i = store_normalized_vectors(x, addend, y, i, n, vhi, vlo, vscale, weight, NULL, storage);
    else if (bias) i = store_normalized_vectors(x, addend, y, i, n, vhi, vlo, vscale, NULL, bias, storage);
    else i = store_normalized_vectors(x, addend, y, i, n, vhi, vlo, vscale, NULL, NULL, storage);
#if LN_MASKED_TAILS
    if (i < n) {
        store_normalized_part(x, addend, y, i, n - i, vhi, vlo, vscale, weight, bias, storage);
        return;
    }
#endif
    for (; i < n; i++) STORE1(y + i, normalized_1(x, addend, i, hi, lo, scale, weight, bias, storage));
}

/* normalize_span (not streamed) from the span's end to its start: the same
 * parts (aligned head, whole vectors, tail) with the same arithmetic, so the
 * same bits, taken in the reverse order.  For y just ahead of x modulo 1 MB
 * (see ln_stores_alias_next_loads): in ascending order each store is followed by
 * loads of x at addresses that match it in their low 20 bits, and the core
 * holds those loads back. */
static inline __attribute__((always_inline)) void normalize_span_descending(const E *x, const E *addend, E *y, int64_t n, C hi,
                                                                           C lo, C scale, const void *weight,
                                                                           const void *bias, int storage)
{
    const V vhi = vbroadcast(hi), vlo = vbroadcast(lo), vscale = vbroadcast(scale);
    int64_t head = 0;
#if LN_MASKED_TAILS
    head = aligned_store_head(y, n);
#endif
    const int64_t vectors_end = head + (n - head) / VL * VL;
#if LN_MASKED_TAILS
    if (vectors_end < n) store_normalized_part(x, addend, y, vectors_end, n - vectors_end, vhi, vlo, vscale, weight, bias, storage);
#else
    for (int64_t i = n - 1; i >= vectors_end; i--) STORE1(y + i, normalized_1(x, addend, i, hi, lo, scale, weight, bias, storage));
#endif
#define LN_DESCENDING(W, B)                                                                                      \
    for (int64_t i = vectors_end - VL; i >= head; i -= VL)                                                        \
        STOREV(y + i, normalized_v(x, addend, i, vhi, vlo, vscale, W, B, storage))
    if (weight && bias) LN_DESCENDING(weight, bias);
    else if (weight) LN_DESCENDING(weight, NULL);
    else if (bias) LN_DESCENDING(NULL, bias);
    else LN_DESCENDING(NULL, NULL);
#undef LN_DESCENDING
#if LN_MASKED_TAILS
    if (head) store_normalized_part(x, addend, y, 0, head, vhi, vlo, vscale, weight, bias, storage);
#endif
}

/* normalize_span (not streamed) of a row of whole vectors from its kept
 * x - hi (see partial_shifted_sum_keeping; for RMS norm x, with hi 0): the
 * same arithmetic on the same values, so the same bits. */
static inline __attribute__((always_inline)) void store_normalized_kept(const C *kept, E *y, int64_t n, V vlo, V vscale,
                                                                        const void *weight, const void *bias, int storage)
{
#define LN_KEPT_NORMALIZED(i) normalized_centred(vload_c(kept + (i)) - vlo, vscale, weight != NULL,               \
                                                 weight ? param_v(weight, storage, i) : vlo, bias != NULL, \
                                                 bias ? param_v(bias, storage, i) : vlo)
    int64_t i = 0;
    LN_STORE_VECTORS(y, n, LN_KEPT_NORMALIZED);
#undef LN_KEPT_NORMALIZED
}

static inline __attribute__((always_inline)) void normalize_kept(const C *kept, E *y, int64_t n, C lo, C scale,
                                                                 const void *weight, const void *bias, int storage)
{
    const V vlo = vbroadcast(lo), vscale = vbroadcast(scale);
    if (weight && bias) store_normalized_kept(kept, y, n, vlo, vscale, weight, bias, storage);
    else if (weight) store_normalized_kept(kept, y, n, vlo, vscale, weight, NULL, storage);
    else if (bias) store_normalized_kept(kept, y, n, vlo, vscale, NULL, bias, storage);
    else store_normalized_kept(kept, y, n, vlo, vscale, NULL, NULL, storage);
}

/* normalize_span of two rows (not streamed) that share the weight and bias
 * loads of their whole vectors; the rest of each row as normalize_span
 * takes it.  The same arithmetic per element, so the same bits.  Rows that
 * lie differently against the vector boundaries (a length not a multiple of
 * VL) go one at a time, each with its own aligned head: (20, 500) float32
 * took 0.67x to 0.70x the time of pairs stored where they fell (AVX-512,
 * 1 thread).  Tested here and not by the caller, where the same test cost
 * rows of 512 1.06x the time (the code moved). */
static inline __attribute__((always_inline)) int64_t store_normalized_vector_pairs(
    const E *x0, const E *addend0, E *y0, const E *x1, const E *addend1, E *y1, int64_t n,
    int64_t i, V vhi0, V vlo0, V vscale0, V vhi1, V vlo1, V vscale1, const void *weight, const void *bias, int storage)
{
    for (; i + VL <= n; i += VL) {
        const V w = weight ? param_v(weight, storage, i) : vhi0, b = bias ? param_v(bias, storage, i) : vhi0;
        STOREV(y0 + i, normalized_of(load_or_sum(x0, addend0, i), vhi0, vlo0, vscale0, weight != NULL, w, bias != NULL, b));
        STOREV(y1 + i, normalized_of(load_or_sum(x1, addend1, i), vhi1, vlo1, vscale1, weight != NULL, w, bias != NULL, b));
    }
    return i;
}

static inline __attribute__((always_inline)) void normalize_span_pair(const E *x0, const E *addend0, E *y0, C hi0, C lo0, C scale0,
                                                                     const E *x1, const E *addend1, E *y1, C hi1, C lo1, C scale1,
                                                                     int64_t n, const void *weight, const void *bias, int storage)
{
    const V vhi0 = vbroadcast(hi0), vlo0 = vbroadcast(lo0), vscale0 = vbroadcast(scale0);
    const V vhi1 = vbroadcast(hi1), vlo1 = vbroadcast(lo1), vscale1 = vbroadcast(scale1);
#define LN_PAIRS(W, B) store_normalized_vector_pairs(x0, addend0, y0, x1, addend1, y1, n, i, vhi0, vlo0, vscale0, vhi1, vlo1, vscale1, W, B, storage)
    int64_t i = 0;
#if LN_MASKED_TAILS
    if (((uintptr_t)y0 - (uintptr_t)y1) % (VL * sizeof(E)) != 0) {
        normalize_span(x0, addend0, y0, n, hi0, lo0, scale0, weight, bias, storage, 0);
        normalize_span(x1, addend1, y1, n, hi1, lo1, scale1, weight, bias, storage, 0);
        return;
    }
    i = aligned_store_head(y0, n);
    if (i) {
        store_normalized_part(x0, addend0, y0, 0, i, vhi0, vlo0, vscale0, weight, bias, storage);
        store_normalized_part(x1, addend1, y1, 0, i, vhi1, vlo1, vscale1, weight, bias, storage);
    }
#endif
    if (weight && bias) i = LN_PAIRS(weight, bias);
    else if (weight) i = LN_PAIRS(weight, NULL);
    else if (bias) i = LN_PAIRS(NULL, bias);
    else i = LN_PAIRS(NULL, NULL);
#undef LN_PAIRS
    if (i == n) return;
    const void *w = weight ? param_at(weight, storage, i) : NULL, *b = bias ? param_at(bias, storage, i) : NULL;
    normalize_span(x0 + i, addend0 ? addend0 + i : NULL, y0 + i, n - i, hi0, lo0, scale0, w, b, storage, 0);
    normalize_span(x1 + i, addend1 ? addend1 + i : NULL, y1 + i, n - i, hi1, lo1, scale1, w, b, storage, 0);
}

#endif
