/* Forward layer norm / RMS norm over the strided layout x[outer][reduce][inner]
 * with inner > 1 (e.g. the channel axis of NCHW), with the optional fused
 * residual add.  Template: compiled once per (SIMD level, dtype).
 *
 * No transposed copy: work items are (outer index, tile of LN_TILE inner
 * positions), split into columns of a few vectors.  Pass 1 walks down
 * `reduce`, updating per-position Welford moments in registers on data
 * shifted by the position's first value, merged every LN_CHUNK_ROWS rows into
 * float64 moments (Chan); pass 2 normalizes the column, which is still in
 * cache.  Large outputs are written with streaming stores (stream_columns).
 * Each output depends on its position only, so any thread count gives the
 * same bits.
 */
#include "layernorm/kernel_common.h"
#include "layernorm/moments.h"

/* Chan's merge of a chunk's per-position moments (as float64 vectors) into
 * the float64 moments at mean and m2, weights wb = nb / n and wab = na * nb
 * / n.  Written in vectors, not as a scalar loop for the loop vectorizer:
 * that took the loop in some copies of forward_columns and not in others
 * (depending on unrelated code), and the copies then contracted the
 * multiply-adds differently (last-bit differences between builds). */
static inline void chan_merge_wide(double *mean, double *m2, VDN chunk_mean, VDN chunk_m2, double wb, double wab)
{
    const VDN merged_mean = *(const VDN_unaligned *)mean, delta = chunk_mean - merged_mean;
    *(VDN_unaligned *)mean = merged_mean + delta * wb;
    *(VDN_unaligned *)m2 = *(const VDN_unaligned *)m2 + (chunk_m2 + delta * delta * wab);
}

/* Statistics and normalization of `vectors` (a constant after inlining)
 * vectors of positions starting at inner index i: walking down `reduce`, the
 * shifted Welford state is kept in registers as far as they hold it (16
 * vectors' state partly spills to L1 at every level) and is merged into float64 every
 * LN_CHUNK_ROWS rows; then the rows, still in L1 or L2, are normalized.
 * forward_positions does the same arithmetic one position at a time.
 * `stream`: y with streaming stores; `stream_sum`: the fused add's sum too,
 * and the second pass recomputes x + residual instead of reading the sum
 * back from memory (constants in the 16-vector columns, whose calls are
 * specialized on them). */
static inline __attribute__((always_inline)) void forward_columns(const ln_forward_args *a, int64_t o, int64_t i,
                                                                  const int vectors, const C *recip, int stream,
                                                                  int stream_sum)
{
    const int64_t reduce = a->layout.reduce, inner = a->layout.inner;
    const int64_t base = o * reduce * inner + i;
    const int rms = a->mode == LN_MODE_RMS_NORM;
    const E *x = (const E *)a->x, *residual = (const E *)a->residual;
    E *sum_out = (E *)a->sum_out;
    const E *src = residual ? sum_out : x;
    /* the output and parameter pointers in locals: the vector stores may
     * alias anything, so a->y and a->weight were loaded again after each */
    E *const y = (E *)a->y;
    const void *const weight = a->weight, *const bias = a->bias;
    V shift[LN_MAX_COLUMN_VECTORS], mean[LN_MAX_COLUMN_VECTORS], m2[LN_MAX_COLUMN_VECTORS];
    double merged_mean[LN_MAX_COLUMN_VECTORS * VL], merged_m2[LN_MAX_COLUMN_VECTORS * VL];
    for (int64_t j = 0; j < vectors * VL; j++) merged_mean[j] = merged_m2[j] = 0;
    for (int k = 0; k < vectors; k++) shift[k] = vbroadcast(0);
    /* one vector of a column row: the fused add, then the moments, which
     * are each position's own (so the order of the vectors keeps the bits) */
#define LN_COLUMN_STATISTICS_VECTOR(k)                                                 \
    do {                                                                               \
        const int64_t p = at + (k) * VL;                                               \
        V v;                                                                           \
        if (stream_sum) {                                                              \
            v = load_or_sum(x, residual, p);   /* rounded to E, as the stored sum is */ \
            STREAMV(sum_out + p, v);                                                   \
        } else {                                                                       \
            if (residual) STOREV(sum_out + p, LOADV(x + p) + LOADV(residual + p));     \
            v = LOADV(src + p);                                                        \
        }                                                                              \
        if (rms) {                                                                     \
            m2[k] = vmuladd(v, v, m2[k]);                                              \
        } else {                                                                       \
            if (r == 0) shift[k] = v;                                                  \
            v -= shift[k];                                                             \
            const V delta = v - mean[k];                                               \
            mean[k] = vmuladd(delta, inv, mean[k]);                                    \
            m2[k] = vmuladd(delta, v - mean[k], m2[k]);                                \
        }                                                                              \
    } while (0)
    /* a column row's vectors from its last where the fused add's sum lies
     * just ahead of x or residual (see ln_stores_alias_next_loads), in calls
     * large enough to stream y.  A/B against ascending, the sum d bytes
     * ahead of x modulo 1 MB (bench/compare_builds.py --sum-ahead d), NCHW
     * (32, 64, 56, 56) float32, 2 threads, AVX-512: d = 16 and 32 (the sum
     * off a line, not streamed) 0.92x the time, 64 0.72x, 128 0.87x, 192 to
     * 512 0.95x to 0.98x; in the L3, (8, 64, 28, 28) at 1 thread, where the
     * stall costs nothing measurable, the reverse order took 1.03x. */
    const int sum_descending = stream && vectors > 1 && ln_sum_aliases_sources(a, 512);
    for (int64_t first = 0; first < reduce; first += LN_CHUNK_ROWS) {
        const int64_t last = first + LN_CHUNK_ROWS < reduce ? first + LN_CHUNK_ROWS : reduce;
        for (int k = 0; k < vectors; k++) mean[k] = m2[k] = vbroadcast(0);
        for (int64_t r = first; r < last; r++) {
            const int64_t at = base + r * inner;
            const V inv = vbroadcast(recip[r - first]);
            ln_prefetch_column(x + at + vectors * VL, residual ? residual + at + vectors * VL : NULL,
                               y + at, vectors * VL * (int64_t)sizeof(E), stream);
            ln_prefetch_pair_column(x + at, residual ? residual + at : NULL, vectors * VL * (int64_t)sizeof(E));
            if (__builtin_expect(sum_descending, 0))
                for (int k = vectors - 1; k >= 0; k--) LN_COLUMN_STATISTICS_VECTOR(k);
            else
                for (int k = 0; k < vectors; k++) LN_COLUMN_STATISTICS_VECTOR(k);
        }
        /* Chan-merge this chunk of rows into the float64 moments */
        const double n = (double)last, nb = (double)(last - first), wb = nb / n, wab = (double)first * nb / n;
        for (int k = 0; k < vectors; k++)
            for (int part = 0; part < LN_WIDE_PARTS; part++) {
                const int64_t j = k * VL + part * (VL / LN_WIDE_PARTS);
                chan_merge_wide(merged_mean + j, merged_m2 + j, v_widened(mean[k], part), v_widened(m2[k], part), wb, wab);
            }
    }
#undef LN_COLUMN_STATISTICS_VECTOR
    C lo[LN_MAX_COLUMN_VECTORS * VL], scale[LN_MAX_COLUMN_VECTORS * VL], shift_c[LN_MAX_COLUMN_VECTORS * VL];
    for (int k = 0; k < vectors; k++) vstore_c(shift_c + k * VL, shift[k]);
    const double inv_n = 1.0 / (double)reduce;
    const int64_t stat = o * inner + i;
    /* one vectorized test of all positions first: a branch per position cost
     * as much as a few of its reads */
    int all_finite = 1;
    for (int64_t j = 0; j < vectors * VL; j++) all_finite &= (isfinite(merged_m2[j]) != 0) & (isfinite(merged_mean[j]) != 0);
    if (!all_finite)
      for (int64_t j = 0; j < vectors * VL; j++)
        if (!isfinite(merged_m2[j]) || !isfinite(merged_mean[j])) {
            const ln_moments exact = stream_sum ? float64_statistics(x + base + j, residual + base + j, reduce, inner, shift_c[j], rms)
                                                : float64_statistics(src + base + j, NULL, reduce, inner, shift_c[j], rms);
            merged_mean[j] = exact.mean, merged_m2[j] = exact.m2;
        }
    /* the square roots and divides in a loop of their own, which the
     * compiler vectorizes (each lane rounds as the scalar instructions do):
     * as scalars they cost a position more than its reads */
    double rstd[LN_MAX_COLUMN_VECTORS * VL];
    for (int64_t j = 0; j < vectors * VL; j++) rstd[j] = 1.0 / sqrt(merged_m2[j] * inv_n + a->eps);
    for (int64_t j = 0; j < vectors * VL; j++) {
        scale[j] = (C)rstd[j];
        lo[j] = rms ? (C)0 : (C)merged_mean[j];
    }
    if (a->rstd)
        for (int64_t j = 0; j < vectors * VL; j++) ((C *)a->rstd)[stat + j] = scale[j];
    if (a->mean && !rms)
        for (int64_t j = 0; j < vectors * VL; j++) ((C *)a->mean)[stat + j] = (C)((double)shift_c[j] + merged_mean[j]);
    V vlo[LN_MAX_COLUMN_VECTORS], vscale[LN_MAX_COLUMN_VECTORS];
    for (int k = 0; k < vectors; k++) {
        vlo[k] = vload_c(lo + k * VL);
        vscale[k] = vload_c(scale + k * VL);
    }
    const int storage = a->params_in_storage_type;
    /* the multiply-add written out, as in forward_positions: left to the
     * compiler, the two contracted differently when there is no weight
     * (w = 1), and the bits of a position depended on whether it fell in a
     * column or among the positions left over, which y's address decides
     * (positions_before_line) */
#define LN_NORMALIZE_COLUMN_VECTOR(k)                                                  \
    do {                                                                               \
        const int64_t p = at + (k) * VL;                                               \
        const V data = stream_sum ? load_or_sum(x, residual, p) : LOADV(src + p);      \
        const V value = vmuladd(((data - shift[k]) - vlo[k]) * vscale[k], w, b);       \
        if (stream) STREAMV(y + p, value);                                             \
        else STOREV(y + p, value);                                                     \
    } while (0)
    /* a column row's vectors from its last where y lies just ahead of the
     * data (see ln_stores_alias_next_loads): NCHW (32, 64, 56, 56), 2
     * threads, AVX-512, with x and y on 1 MB boundaries, y 64 bytes ahead
     * took 2.02x the time of y at x's offset, 128 bytes 1.26x, 256 1.07x */
    const int descending = vectors > 1 && ln_y_aliases_sources(a, stream_sum, 1, 512);
    for (int64_t r = 0; r < reduce; r++) {
        const int64_t at = base + r * inner;
        ln_prefetch_next_column(x + at, residual ? residual + at : NULL, vectors * VL * (int64_t)sizeof(E));
        const V w = vbroadcast(weight ? param_1(weight, storage, r) : 1);
        const V b = vbroadcast(bias ? param_1(bias, storage, r) : 0);
        if (__builtin_expect(descending, 0))
            for (int k = vectors - 1; k >= 0; k--) LN_NORMALIZE_COLUMN_VECTOR(k);
        else
            for (int k = 0; k < vectors; k++) LN_NORMALIZE_COLUMN_VECTOR(k);
    }
#undef LN_NORMALIZE_COLUMN_VECTOR
}

/* Stream the columns' output `out` (y, or the fused add's sum) of `bytes`
 * bytes?  When every column row starts on a line and the arrays the call
 * moves (x and y; the fused add's x, residual, sum and y) together reach
 * LN_STREAM_MIN_BYTES (the outputs would not stay cached anyway), as
 * ln_stream_rows counts them; the fused add's sum is then streamed too and
 * x + residual recomputed in the second pass (as forward_rows does).  NCHW
 * (32, 64, 56, 56), 2 threads, against not streaming:
 * - AVX-512 float32: forward 0.90x the time, RMS 0.91x, float64 0.93x; the
 *   fused add 0.90x, float64 0.85x, (12, 64, 56, 56) 0.88x, add_rms 0.84x;
 * - AVX2 float32: forward 0.93x (1 thread 0.91x, out= 16 bytes off a line
 *   0.95x), RMS 0.82x to 0.88x, float64 0.99x; the fused add 0.90x, float64
 *   0.92x, add_rms 0.91x;
 * - baseline float32: forward 0.88x (1 thread 0.89x), RMS 0.83x, float64
 *   0.93x; the fused add 0.67x, (16, 64, 56, 56) 0.53x;
 * - float16 at AVX-512 and AVX2, bfloat16 at AVX-512: forward 0.96x to
 *   1.01x, the fused add 0.71x to 0.78x (bfloat16 at AVX2: ln_stream_columns).
 * (The forward took 1.28x at AVX2 and float16 1.00x when measured before
 * the second pass prefetched the next column (ln_prefetch_next_column), so
 * only AVX-512 and the fused add streamed then.) */
static inline int stream_columns(const ln_forward_args *a, const void *out, int64_t inner, int64_t bytes)
{
    return ln_stream_columns(out, inner, bytes, ln_forward_arrays_moved(a));
}

/* The positions at a tile's end that fill no whole vector: forward_columns'
 * arithmetic, one position at a time. */
static void forward_positions(const ln_forward_args *a, int64_t o, int64_t i, int64_t count, const C *recip)
{
    const int64_t reduce = a->layout.reduce, inner = a->layout.inner;
    const int rms = a->mode == LN_MODE_RMS_NORM;
    const int storage = a->params_in_storage_type;
    const E *x = (const E *)a->x, *residual = (const E *)a->residual;
    E *sum_out = (E *)a->sum_out;
    const E *src = residual ? sum_out : x;
    for (int64_t j = 0; j < count; j++) {
        const int64_t base = o * reduce * inner + i + j;
        C shift = 0;
        double merged_mean = 0, merged_m2 = 0;
        for (int64_t first = 0; first < reduce; first += LN_CHUNK_ROWS) {
            const int64_t last = first + LN_CHUNK_ROWS < reduce ? first + LN_CHUNK_ROWS : reduce;
            C mean = 0, m2 = 0;
            for (int64_t r = first; r < last; r++) {
                const int64_t p = base + r * inner;
                if (residual) STORE1(sum_out + p, LOAD1(x + p) + LOAD1(residual + p));
                C v = LOAD1(src + p);
                if (rms) {
                    m2 = smuladd(v, v, m2);
                } else {
                    if (r == 0) shift = v;
                    v -= shift;
                    const C delta = v - mean;
                    mean = smuladd(delta, recip[r - first], mean);
                    m2 = smuladd(delta, v - mean, m2);
                }
            }
            const double n = (double)last, nb = (double)(last - first), wb = nb / n, wab = (double)first * nb / n;
            const double delta = (double)mean - merged_mean;
            merged_mean += delta * wb;
            merged_m2 += (double)m2 + delta * delta * wab;
        }
        if (!isfinite(merged_m2) || !isfinite(merged_mean)) {
            const ln_moments exact = float64_statistics(src + base, NULL, reduce, inner, shift, rms);
            merged_mean = exact.mean, merged_m2 = exact.m2;
        }
        const double rstd = 1.0 / sqrt(merged_m2 * (1.0 / (double)reduce) + a->eps);
        const C scale = (C)rstd, lo = rms ? (C)0 : (C)merged_mean;
        const int64_t stat = o * inner + i + j;
        if (a->rstd) ((C *)a->rstd)[stat] = scale;
        if (a->mean && !rms) ((C *)a->mean)[stat] = (C)((double)shift + merged_mean);
        for (int64_t r = 0; r < reduce; r++) {
            const int64_t p = base + r * inner;
            const C w = a->weight ? param_1(a->weight, storage, r) : 1, b = a->bias ? param_1(a->bias, storage, r) : 0;
            STORE1((E *)a->y + p, smuladd(((LOAD1(src + p) - shift) - lo) * scale, w, b));
        }
    }
}

/* float32 and float64 columns take half their usual vectors where that
 * brings a column (its `reduce` rows) within LN_L1_COLUMN_BYTES, so that the
 * normalize pass reads it back from L1 rather than L2.  A/B
 * (bench/compare_builds.py) against the usual widths, 2 threads, AVX-512
 * unless stated, on an Intel Xeon with a 48 KB L1: NCHW (32, 64, 56, 56)
 * float32 0.91x the time (1 thread, (2, 64, 56, 56) 0.94x; AVX2, whose
 * streamed columns go from 32 vectors to 16, 0.88x), (16, 64, 56, 56)
 * 0.92x, float64 0.92x, rms 0.94x, the fused add 0.99x; AVX2 (8, 128, 56, 56)
 * 0.95x, (8, 96, 56, 56) 0.94x.  Columns still wider than that keep their
 * width: 8 vectors for (8, 256, 64, 64) took 1.13x.  A 48 KB budget also
 * gained on (32, 96, 56, 56) (0.94x), but 32 KB is the L1 of most x86-64
 * cores.
 * Not half precision, whose columns are half the bytes and whose time is
 * its arithmetic's: float16 (16, 128, 56, 56) took 1.06x (bfloat16 0.98x).
 * The same bits: a position's arithmetic is the same in every column. */
#define LN_L1_COLUMN_BYTES (32 << 10)
static inline int column_vectors(const ln_forward_args *a, int stream)
{
    const int wide = stream ? LN_STREAMED_COLUMN_VECTORS : LN_COLUMN_VECTORS;
    const int64_t column_row_vector = a->layout.reduce * VL * (int64_t)sizeof(E);
    const int halves = (LN_DT == LN_DT_FLOAT32 || LN_DT == LN_DT_FLOAT64) && column_row_vector * wide > LN_L1_COLUMN_BYTES
                       && column_row_vector * (wide / 2) <= LN_L1_COLUMN_BYTES;
    return halves ? wide / 2 : wide;
}

/* Positions [i, i + width) of outer index o: columns of
 * LN_STREAMED_COLUMN_VECTORS vectors where y streams, then of
 * LN_COLUMN_VECTORS (or half as many, see column_vectors), 4 and 1, then the
 * positions left one at a time. */
static inline void forward_span(const ln_forward_args *a, int64_t o, int64_t i, int64_t width, const C *recip,
                                int stream, int stream_sum)
{
    const int64_t end = i + width;
    const int widest = column_vectors(a, stream);
    /* columns of `vectors` vectors, specialized on the streaming flags */
#define LN_SPECIALIZED_COLUMNS(vectors)                                                  \
    for (; i + (vectors) * VL <= end; i += (vectors) * VL)                               \
        if (stream_sum) forward_columns(a, o, i, (vectors), recip, 1, 1);                \
        else if (stream) forward_columns(a, o, i, (vectors), recip, 1, 0);               \
        else forward_columns(a, o, i, (vectors), recip, 0, 0)
    if (widest < LN_COLUMN_VECTORS) {
        LN_SPECIALIZED_COLUMNS(LN_COLUMN_VECTORS / 2);
    }
    /* (wider than LN_COLUMN_VECTORS only where y streams) */
    if (LN_STREAMED_COLUMN_VECTORS > LN_COLUMN_VECTORS && widest > LN_COLUMN_VECTORS) {
        for (; i + LN_STREAMED_COLUMN_VECTORS * VL <= end; i += LN_STREAMED_COLUMN_VECTORS * VL) {
            if (stream_sum) forward_columns(a, o, i, LN_STREAMED_COLUMN_VECTORS, recip, 1, 1);
            else forward_columns(a, o, i, LN_STREAMED_COLUMN_VECTORS, recip, 1, 0);
        }
    }
    LN_SPECIALIZED_COLUMNS(LN_COLUMN_VECTORS);
#undef LN_SPECIALIZED_COLUMNS
    for (; i + 4 * VL <= end; i += 4 * VL) forward_columns(a, o, i, 4, recip, stream, stream_sum);
    for (; i + VL <= end; i += VL) forward_columns(a, o, i, 1, recip, stream, stream_sum);
    if (i < end) forward_positions(a, o, i, end - i, recip);
}

/* The positions before y's first line boundary, when every row of y starts
 * as far into a line (rows of whole lines): the tiles begin after them, so
 * that the columns' stores are aligned and may stream.  numpy.empty's large
 * arrays start 16 bytes into a line: NCHW (32, 64, 56, 56), 2 threads,
 * AVX-512, with such an out= took 0.58x to 0.61x the time (rms 0.55x, the
 * fused add with such out= and sum_out 0.70x; measured with the change
 * before it, 0.95x, included).  The head positions go first, unstreamed;
 * each position's arithmetic is the same in every kind of column. */
static inline int64_t positions_before_line(const void *y, int64_t inner)
{
    const uintptr_t offset = (uintptr_t)y % 64;
    if (offset == 0 || offset % sizeof(E) != 0 || inner * (int64_t)sizeof(E) % 64 != 0) return 0;
    const int64_t lead = (int64_t)((64 - offset) / sizeof(E));
    return lead < inner ? lead : 0;
}

int FN(forward_strided)(const ln_forward_args *a)
{
    const int64_t outer = a->layout.outer, reduce = a->layout.reduce, inner = a->layout.inner;
    if (outer < 0 || reduce <= 0 || inner < 1) return LN_ERROR_ARGUMENT;
    if (a->residual && !a->sum_out) return LN_ERROR_ARGUMENT;
    const int64_t lead = positions_before_line(a->y, inner);
    const int64_t tiles = (inner - lead + LN_TILE - 1) / LN_TILE, items = outer * tiles;
    C recip[LN_CHUNK_ROWS];
    for (int64_t r = 0; r < LN_CHUNK_ROWS; r++) recip[r] = (C)1 / (C)(r + 1);

    const int64_t chunk = ln_dynamic_chunk(items, reduce * (inner < LN_TILE ? inner : LN_TILE), a->num_threads);
    const int64_t bytes = outer * reduce * inner * (int64_t)sizeof(E);
    const int stream = stream_columns(a, (const E *)a->y + lead, inner, bytes);
    const int stream_sum = stream && a->residual && stream_columns(a, (const E *)a->sum_out + lead, inner, bytes)
                           && ln_outputs_apart_from_inputs(a, bytes);
    #pragma omp parallel num_threads(a->num_threads) if (ln_parallel_if(outer * reduce * inner, a->num_threads))
    {
        #pragma omp for schedule(dynamic, chunk)
        for (int64_t item = 0; item < items; item++) {
            const int64_t o = item / tiles, i0 = lead + (item % tiles) * LN_TILE;
            if (lead && item % tiles == 0) forward_span(a, o, 0, lead, recip, 0, 0);
            forward_span(a, o, i0, inner - i0 < LN_TILE ? inner - i0 : LN_TILE, recip, stream, stream_sum);
        }
        if (stream) ln_stream_fence();
    }
    return LN_OK;
}
