/* Forward layer norm / RMS norm over the strided layout x[outer][reduce][inner]
 * with inner > 1 (e.g. the channel axis of NCHW), with the optional fused
 * residual add.  Template: compiled once per (SIMD level, dtype).
 *
 * No transposed copy: work items are (outer index, tile of LN_TILE inner
 * positions).  Pass 1 walks down `reduce`, updating per-position Welford
 * moments (double accumulators, data shifted by the position's first value);
 * pass 2 normalizes the tile, which is still in cache.  Each output depends
 * on its item only, so any thread count gives the same bits.
 */
#include "layernorm/kernel_common.h"
#include "layernorm/spans.h"

typedef struct {
    C shift[LN_TILE], lo[LN_TILE], scale[LN_TILE];
    double mean[LN_TILE], m2[LN_TILE];
} tile_state;

/* One row of the tile (reduce index r) into the running moments. */
static inline void accumulate_row(tile_state *st, const E *x, int64_t width, int64_t r, int rms)
{
    int64_t i = 0;
    if (rms) {
        for (; i + VL <= width; i += VL) {
            const VD v = vwiden(LOADV(x + i));
            vd_store(st->m2 + i, vd_load(st->m2 + i) + v * v);
        }
        for (; i < width; i++) { const double v = LOAD1(x + i); st->m2[i] += v * v; }
        return;
    }
    if (r == 0) {
        for (; i + VL <= width; i += VL) vstore_c(st->shift + i, LOADV(x + i));
        for (; i < width; i++) st->shift[i] = LOAD1(x + i);
        for (i = 0; i < width; i++) st->mean[i] = st->m2[i] = 0;
        return;
    }
    const double inv = 1.0 / (double)(r + 1);
    for (; i + VL <= width; i += VL) {
        const VD v = vwiden(LOADV(x + i) - vload_c(st->shift + i));
        const VD mean = vd_load(st->mean + i);
        const VD delta = v - mean;
        const VD new_mean = mean + delta * inv;
        vd_store(st->mean + i, new_mean);
        vd_store(st->m2 + i, vd_load(st->m2 + i) + delta * (v - new_mean));
    }
    for (; i < width; i++) {
        const double v = (double)(LOAD1(x + i) - st->shift[i]);
        const double delta = v - st->mean[i];
        st->mean[i] += delta * inv;
        st->m2[i] += delta * (v - st->mean[i]);
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

static void forward_tile(const ln_forward_args *a, int64_t o, int64_t i0, int64_t width, tile_state *st)
{
    const int64_t reduce = a->layout.reduce, inner = a->layout.inner;
    const int64_t base = o * reduce * inner + i0;
    const int rms = a->mode == LN_MODE_RMS_NORM;
    const E *src = a->residual ? (const E *)a->sum_out : (const E *)a->x;
    if (rms) {
        for (int64_t i = 0; i < width; i++) st->shift[i] = st->lo[i] = 0, st->m2[i] = 0;
    }
    for (int64_t r = 0; r < reduce; r++) {
        const int64_t offset = base + r * inner;
        if (a->residual)
            add_span((const E *)a->x + offset, (const E *)a->residual + offset, (E *)a->sum_out + offset, width);
        accumulate_row(st, src + offset, width, r, rms);
    }
    const int64_t stat = o * inner + i0;
    for (int64_t i = 0; i < width; i++) {
        const double rstd = 1.0 / sqrt(st->m2[i] / (double)reduce + a->eps);
        st->scale[i] = (C)rstd;
        if (!rms) st->lo[i] = (C)st->mean[i];
        if (a->rstd) ((C *)a->rstd)[stat + i] = (C)rstd;
        if (a->mean && !rms) ((C *)a->mean)[stat + i] = (C)((double)st->shift[i] + st->mean[i]);
    }
    const C *weight = a->weight, *bias = a->bias;
    for (int64_t r = 0; r < reduce; r++) {
        const int64_t offset = base + r * inner;
        normalize_row(st, src + offset, (E *)a->y + offset, width, weight ? weight[r] : 1, bias ? bias[r] : 0);
    }
}

int FN(forward_strided)(const ln_forward_args *a)
{
    const int64_t outer = a->layout.outer, reduce = a->layout.reduce, inner = a->layout.inner;
    if (outer < 0 || reduce <= 0 || inner < 1) return LN_ERROR_ARGUMENT;
    if (a->residual && !a->sum_out) return LN_ERROR_ARGUMENT;
    const int64_t tiles = (inner + LN_TILE - 1) / LN_TILE, items = outer * tiles;
    int status = LN_OK;

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
            forward_tile(a, o, i0, inner - i0 < LN_TILE ? inner - i0 : LN_TILE, st);
        }
        free(st);
    }
    return status;
}
