/* Forward layer norm / RMS norm over the strided layout x[outer][reduce][inner]
 * with inner > 1 (e.g. the channel axis of NCHW), with the optional fused
 * residual add.  Template: compiled once per (SIMD level, dtype).
 *
 * No transposed copy: work items are (outer index, tile of LN_TILE inner
 * positions).  Pass 1 walks down `reduce`, updating per-position Welford
 * moments in the compute type on data shifted by the position's first value,
 * merged every LN_CHUNK_ROWS rows into float64 moments (Chan); pass 2
 * normalizes the tile, which is still in cache.  Each output depends
 * on its item only, so any thread count gives the same bits.
 */
#include "layernorm/kernel_common.h"
#include "layernorm/spans.h"

/* Rows of `reduce` folded into the float Welford state before it is merged
 * into the float64 state: bounds the float rounding for long reductions. */
#define LN_CHUNK_ROWS 64

typedef struct {
    C shift[LN_TILE], lo[LN_TILE], scale[LN_TILE];
    C chunk_mean[LN_TILE], chunk_m2[LN_TILE];     /* this chunk, in the compute type */
    double mean[LN_TILE], m2[LN_TILE];            /* chunks merged so far */
} tile_state;

/* Row r of the chunk that started at row `first` into the chunk moments:
 * Welford on data shifted by each position's first value (exact for data
 * with a large common offset), one reciprocal per row. */
static inline void accumulate_row(tile_state *st, const E *x, int64_t width, int64_t r, int64_t first, int rms)
{
    int64_t i = 0;
    if (rms) {
        for (; i + VL <= width; i += VL) {
            const V v = LOADV(x + i);
            vstore_c(st->chunk_m2 + i, vload_c(st->chunk_m2 + i) + v * v);
        }
        for (; i < width; i++) { const C v = LOAD1(x + i); st->chunk_m2[i] += v * v; }
        return;
    }
    if (r == 0) {
        for (; i + VL <= width; i += VL) vstore_c(st->shift + i, LOADV(x + i));
        for (; i < width; i++) st->shift[i] = LOAD1(x + i);
    }
    const C inv = (C)1 / (C)(r - first + 1);
    for (i = 0; i + VL <= width; i += VL) {
        const V v = LOADV(x + i) - vload_c(st->shift + i);
        const V mean = vload_c(st->chunk_mean + i);
        const V delta = v - mean;
        const V new_mean = mean + delta * inv;
        vstore_c(st->chunk_mean + i, new_mean);
        vstore_c(st->chunk_m2 + i, vload_c(st->chunk_m2 + i) + delta * (v - new_mean));
    }
    for (; i < width; i++) {
        const C v = LOAD1(x + i) - st->shift[i];
        const C delta = v - st->chunk_mean[i];
        st->chunk_mean[i] += delta * inv;
        st->chunk_m2[i] += delta * (v - st->chunk_mean[i]);
    }
}

/* Chan-merge the chunk (count_b rows) into the float64 state (count_a rows)
 * and clear the chunk.  Loops over the tile state only, so they vectorize. */
static inline void merge_chunk(tile_state *restrict st, int64_t width, double count_a, double count_b, int rms)
{
    const double n = count_a + count_b, wb = count_b / n, wab = count_a * count_b / n;
    if (rms) {
        for (int64_t i = 0; i < width; i++) st->m2[i] += (double)st->chunk_m2[i];
    } else {
        for (int64_t i = 0; i < width; i++) {
            const double delta = (double)st->chunk_mean[i] - st->mean[i];
            st->mean[i] += delta * wb;
            st->m2[i] += (double)st->chunk_m2[i] + delta * delta * wab;
        }
    }
    for (int64_t i = 0; i < width; i++) st->chunk_mean[i] = st->chunk_m2[i] = 0;
}

/* rstd (in `scale`), the low part of the mean (in `lo`), and the full mean
 * (into `m2`, no longer needed) for every position of the tile. */
static inline void finish_tile(tile_state *restrict st, int64_t width, int64_t reduce, double eps, int rms)
{
    const double inv_n = 1.0 / (double)reduce;
    for (int64_t i = 0; i < width; i++) st->scale[i] = (C)(1.0 / sqrt(st->m2[i] * inv_n + eps));
    if (rms) return;
    for (int64_t i = 0; i < width; i++) {
        st->lo[i] = (C)st->mean[i];
        st->m2[i] = (double)st->shift[i] + st->mean[i];
    }
}

static inline void normalize_row(const tile_state *st, const E *x, E *y, int64_t width, C w, C b)
{
    const V vw = vbroadcast(w), vb = vbroadcast(b);
    int64_t i = 0;
    for (; i + VL <= width; i += VL) {
        const V c = (LOADV(x + i) - vload_c(st->shift + i)) - vload_c(st->lo + i);
        STOREV(y + i, c * vload_c(st->scale + i) * vw + vb);
    }
    for (; i < width; i++) STORE1(y + i, ((LOAD1(x + i) - st->shift[i]) - st->lo[i]) * st->scale[i] * w + b);
}

/* Positions handled together by forward_columns: enough independent vectors
 * to hide the Welford chain's latency, few enough to stay in registers. */
#define LN_COLUMN_VECTORS 4

/* Register-blocked statistics and normalization of `vectors` (a constant
 * after inlining) vectors of positions starting at inner index i: walking
 * down `reduce`, the shifted Welford state stays in registers (no state
 * loads or stores per row) and is merged into float64 every LN_CHUNK_ROWS
 * rows; then the rows, still in L1, are normalized.  Same arithmetic as the
 * tile path: each position's result does not depend on the blocking. */
static inline __attribute__((always_inline)) void forward_columns(const ln_forward_args *a, int64_t o, int64_t i,
                                                                  const int vectors, const C *recip)
{
    const int64_t reduce = a->layout.reduce, inner = a->layout.inner;
    const int64_t base = o * reduce * inner + i;
    const int rms = a->mode == LN_MODE_RMS_NORM;
    const E *x = (const E *)a->x, *residual = (const E *)a->residual;
    E *sum_out = (E *)a->sum_out;
    const E *src = residual ? sum_out : x;
    V shift[LN_COLUMN_VECTORS], mean[LN_COLUMN_VECTORS], m2[LN_COLUMN_VECTORS];
    double merged_mean[LN_COLUMN_VECTORS * VL], merged_m2[LN_COLUMN_VECTORS * VL];
    for (int64_t j = 0; j < vectors * VL; j++) merged_mean[j] = merged_m2[j] = 0;
    for (int k = 0; k < vectors; k++) shift[k] = vbroadcast(0);
    for (int64_t first = 0; first < reduce; first += LN_CHUNK_ROWS) {
        const int64_t last = first + LN_CHUNK_ROWS < reduce ? first + LN_CHUNK_ROWS : reduce;
        for (int k = 0; k < vectors; k++) mean[k] = m2[k] = vbroadcast(0);
        for (int64_t r = first; r < last; r++) {
            const int64_t at = base + r * inner;
            const V inv = vbroadcast(recip[r - first]);
            for (int k = 0; k < vectors; k++) {
                const int64_t p = at + k * VL;
                if (residual) STOREV(sum_out + p, LOADV(x + p) + LOADV(residual + p));
                V v = LOADV(src + p);
                if (rms) {
                    m2[k] += v * v;
                } else {
                    if (r == 0) shift[k] = v;
                    v -= shift[k];
                    const V delta = v - mean[k];
                    mean[k] += delta * inv;
                    m2[k] += delta * (v - mean[k]);
                }
            }
        }
        /* Chan-merge this chunk of rows into the float64 moments */
        const double n = (double)last, nb = (double)(last - first), wb = nb / n, wab = (double)first * nb / n;
        for (int k = 0; k < vectors; k++) {
            C chunk_mean[VL], chunk_m2[VL];
            vstore_c(chunk_mean, mean[k]);
            vstore_c(chunk_m2, m2[k]);
            for (int64_t l = 0; l < VL; l++) {
                const int64_t j = k * VL + l;
                const double delta = (double)chunk_mean[l] - merged_mean[j];
                merged_mean[j] += delta * wb;
                merged_m2[j] += (double)chunk_m2[l] + delta * delta * wab;
            }
        }
    }
    C lo[LN_COLUMN_VECTORS * VL], scale[LN_COLUMN_VECTORS * VL], shift_c[LN_COLUMN_VECTORS * VL];
    for (int k = 0; k < vectors; k++) vstore_c(shift_c + k * VL, shift[k]);
    const double inv_n = 1.0 / (double)reduce;
    const int64_t stat = o * inner + i;
    for (int64_t j = 0; j < vectors * VL; j++) {
        const double rstd = 1.0 / sqrt(merged_m2[j] * inv_n + a->eps);
        scale[j] = (C)rstd;
        lo[j] = rms ? (C)0 : (C)merged_mean[j];
        if (a->rstd) ((C *)a->rstd)[stat + j] = (C)rstd;
        if (a->mean && !rms) ((C *)a->mean)[stat + j] = (C)((double)shift_c[j] + merged_mean[j]);
    }
    V vlo[LN_COLUMN_VECTORS], vscale[LN_COLUMN_VECTORS];
    for (int k = 0; k < vectors; k++) {
        vlo[k] = vload_c(lo + k * VL);
        vscale[k] = vload_c(scale + k * VL);
    }
    const int storage = a->params_in_storage_type;
    for (int64_t r = 0; r < reduce; r++) {
        const int64_t at = base + r * inner;
        const V w = vbroadcast(a->weight ? param_1(a->weight, storage, r) : 1);
        const V b = vbroadcast(a->bias ? param_1(a->bias, storage, r) : 0);
        for (int k = 0; k < vectors; k++) {
            const V c = (LOADV(src + at + k * VL) - shift[k]) - vlo[k];
            STOREV((E *)a->y + at + k * VL, c * vscale[k] * w + b);
        }
    }
}

static void forward_tile(const ln_forward_args *a, int64_t o, int64_t i0, int64_t width, tile_state *st)
{
    const int64_t reduce = a->layout.reduce, inner = a->layout.inner;
    const int64_t base = o * reduce * inner + i0;
    const int rms = a->mode == LN_MODE_RMS_NORM;
    const E *src = a->residual ? (const E *)a->sum_out : (const E *)a->x;
    for (int64_t i = 0; i < width; i++) {
        st->shift[i] = st->lo[i] = 0;
        st->mean[i] = st->m2[i] = 0;
        st->chunk_mean[i] = st->chunk_m2[i] = 0;
    }
    for (int64_t first = 0; first < reduce; first += LN_CHUNK_ROWS) {
        const int64_t last = first + LN_CHUNK_ROWS < reduce ? first + LN_CHUNK_ROWS : reduce;
        for (int64_t r = first; r < last; r++) {
            const int64_t offset = base + r * inner;
            if (a->residual)
                add_span((const E *)a->x + offset, (const E *)a->residual + offset, (E *)a->sum_out + offset, width);
            accumulate_row(st, src + offset, width, r, first, rms);
        }
        merge_chunk(st, width, (double)first, (double)(last - first), rms);
    }
    finish_tile(st, width, reduce, a->eps, rms);
    const int64_t stat = o * inner + i0;
    if (a->rstd) memcpy((C *)a->rstd + stat, st->scale, (size_t)width * sizeof(C));
    if (a->mean && !rms)
        for (int64_t i = 0; i < width; i++) ((C *)a->mean)[stat + i] = (C)st->m2[i];
    const int storage = a->params_in_storage_type;
    for (int64_t r = 0; r < reduce; r++) {
        const int64_t offset = base + r * inner;
        normalize_row(st, src + offset, (E *)a->y + offset, width,
                      a->weight ? param_1(a->weight, storage, r) : 1, a->bias ? param_1(a->bias, storage, r) : 0);
    }
}

int FN(forward_strided)(const ln_forward_args *a)
{
    const int64_t outer = a->layout.outer, reduce = a->layout.reduce, inner = a->layout.inner;
    if (outer < 0 || reduce <= 0 || inner < 1) return LN_ERROR_ARGUMENT;
    if (a->residual && !a->sum_out) return LN_ERROR_ARGUMENT;
    const int64_t tiles = (inner + LN_TILE - 1) / LN_TILE, items = outer * tiles;
    int status = LN_OK;
    C recip[LN_CHUNK_ROWS];
    for (int64_t r = 0; r < LN_CHUNK_ROWS; r++) recip[r] = (C)1 / (C)(r + 1);

    #pragma omp parallel num_threads(a->num_threads) if (ln_parallel_if(outer * reduce * inner, a->num_threads))
    {
        tile_state *st = malloc(sizeof *st);   /* once per thread, not per item */
        if (!st) {
            #pragma omp atomic write
            status = LN_ERROR_NO_MEMORY;
        }
        #pragma omp for schedule(static)
        for (int64_t item = 0; item < items; item++) {
            if (!st) continue;
            const int64_t o = item / tiles, i0 = (item % tiles) * LN_TILE;
            const int64_t width = inner - i0 < LN_TILE ? inner - i0 : LN_TILE;
            int64_t i = 0;
            for (; i + LN_COLUMN_VECTORS * VL <= width; i += LN_COLUMN_VECTORS * VL)
                forward_columns(a, o, i0 + i, LN_COLUMN_VECTORS, recip);
            for (; i + VL <= width; i += VL) forward_columns(a, o, i0 + i, 1, recip);
            if (i < width) forward_tile(a, o, i0 + i, width - i, st);   /* fewer than VL positions */
        }
        free(st);
    }
    return status;
}
