/* Backward of layer norm / RMS norm over the strided layout
 * x[outer][reduce][inner], inner > 1, without a transposed copy.
 * Template: compiled once per (SIMD level, dtype).  Formulas as in
 * backward_rows.c, with weight[r] shared by a whole row of `inner`.
 *
 * Work items are (group of outer indices, tile of LN_TILE inner positions);
 * the group size depends on the shape only.  A tile goes in columns of
 * vectors (backward_columns), its last positions one by one (backward_tile).
 * Pass 1 sums g and g*xhat down `reduce` per position (into float64); pass 2
 * writes dx and adds each row's dy*xhat and dy into the item's float64
 * partial of dweight/dbias; partials are added in item order.  Large dx
 * are streamed (dx_streamed).  Any thread count gives the same bits.
 */
#include "layernorm/kernel_common.h"

#define LN_MAX_PARTIALS (1 << 21)

/* Stream dx (the call moves x, dy and dx; see ln_stream_rows)?  When every
 * column row starts on a line.  NCHW, 2 threads, against not streaming:
 * AVX-512 (32, 64, 56, 56) 0.86x to 0.87x the time (float64 0.85x),
 * (16, 64, 56, 56) 0.80x, (8, 256, 64, 64) 0.92x; AVX2 (32, 64, 56, 56)
 * 0.88x (1 thread 0.87x, float64 0.90x), (16, 64, 56, 56) 0.88x; baseline
 * 0.96x (1 thread 0.93x), (16, 64, 56, 56) 0.87x; float16 0.91x at AVX-512,
 * 0.92x at AVX2, bfloat16 0.95x at AVX-512 (at AVX2 not streamed:
 * ln_stream_columns).  (AVX2 took 1.13x when measured before the second
 * pass prefetched the next column.) */
static inline int dx_streamed(const ln_backward_args *a)
{
    const int arrays_moved = 3;
    const int64_t bytes = a->layout.outer * a->layout.reduce * a->layout.inner * (int64_t)sizeof(E);
    return ln_stream_columns(a->dx, a->layout.inner, bytes, arrays_moved);
}

typedef struct {
    C mean[LN_TILE], rstd[LN_TILE], mean_g[LN_TILE], mean_gx[LN_TILE];
    double sum_g[LN_TILE], sum_gx[LN_TILE];
} tile_state;

static void load_statistics(const ln_backward_args *a, tile_state *st, int64_t stat, int64_t width)
{
    for (int64_t i = 0; i < width; i++) {
        st->mean[i] = a->mode == LN_MODE_RMS_NORM ? (C)0 : ((const C *)a->mean)[stat + i];
        st->rstd[i] = ((const C *)a->rstd)[stat + i];
        st->sum_g[i] = st->sum_gx[i] = 0;
    }
}

static inline void sum_row(tile_state *st, const E *x, const E *dy, C w, int64_t width)
{
    const V vw = vbroadcast(w);
    int64_t i = 0;
    for (; i + VL <= width; i += VL) {
        const V g = LOADV(dy + i) * vw;
        const V xhat = (LOADV(x + i) - vload_c(st->mean + i)) * vload_c(st->rstd + i);
        vd_add_widened(st->sum_g + i, g, 0);
        vd_add_widened(st->sum_gx + i, g * xhat, 0);
    }
    for (; i < width; i++) {
        const C g = LOAD1(dy + i) * w;
        st->sum_g[i] += g;
        st->sum_gx[i] += g * ((LOAD1(x + i) - st->mean[i]) * st->rstd[i]);
    }
}

/* dx for one row of the tile; returns sum(dy * xhat) and sum(dy) of the row. */
static inline void dx_row(const tile_state *st, const E *x, const E *dy, E *dx, C w, int64_t width,
                          double *dweight, double *dbias)
{
    const V vw = vbroadcast(w);
    V acc_w = vbroadcast(0), acc_b = vbroadcast(0);
    int64_t i = 0;
    for (; i + VL <= width; i += VL) {
        const V d = LOADV(dy + i);
        const V rstd = vload_c(st->rstd + i);
        const V xhat = (LOADV(x + i) - vload_c(st->mean + i)) * rstd;
        STOREV(dx + i, rstd * vmuladd(xhat, -vload_c(st->mean_gx + i), vmuladd(d, vw, -vload_c(st->mean_g + i))));
        acc_w = vmuladd(d, xhat, acc_w);
        acc_b += d;
    }
    C tail_w = 0, tail_b = 0;
    for (; i < width; i++) {
        const C d = LOAD1(dy + i);
        const C xhat = (LOAD1(x + i) - st->mean[i]) * st->rstd[i];
        STORE1(dx + i, st->rstd[i] * smuladd(xhat, -st->mean_gx[i], smuladd(d, w, -st->mean_g[i])));
        tail_w = smuladd(d, xhat, tail_w);
        tail_b += d;
    }
    *dweight += (double)lanes_sum(acc_w) + tail_w;
    *dbias += (double)lanes_sum(acc_b) + tail_b;
}

static void backward_tile(const ln_backward_args *a, int64_t o, int64_t i0, int64_t width,
                          tile_state *st, double *dweight, double *dbias)
{
    const int64_t reduce = a->layout.reduce, inner = a->layout.inner;
    const int64_t base = o * reduce * inner + i0;
    const int storage = a->params_in_storage_type;
#define LN_WEIGHT(r) (a->weight ? param_1(a->weight, storage, (r)) : (C)1)
    load_statistics(a, st, o * inner + i0, width);
    for (int64_t r = 0; r < reduce; r++) {
        const int64_t offset = base + r * inner;
        sum_row(st, (const E *)a->x + offset, (const E *)a->dy + offset, LN_WEIGHT(r), width);
    }
    for (int64_t i = 0; i < width; i++) {
        st->mean_g[i] = a->mode == LN_MODE_RMS_NORM ? (C)0 : (C)(st->sum_g[i] / (double)reduce);
        st->mean_gx[i] = (C)(st->sum_gx[i] / (double)reduce);
    }
    for (int64_t r = 0; r < reduce; r++) {
        const int64_t offset = base + r * inner;
        dx_row(st, (const E *)a->x + offset, (const E *)a->dy + offset, (E *)a->dx + offset,
               LN_WEIGHT(r), width, dweight + r, dbias + r);
    }
#undef LN_WEIGHT
}

/* backward_tile's arithmetic for `vectors` (a constant after inlining)
 * vectors of positions starting at inner index i, with the per-position
 * state in registers as far as they hold it instead of tile_state: pass 1
 * sums g and g*xhat down `reduce` in the compute type, into float64 every
 * LN_CHUNK_ROWS rows; pass 2 writes dx and adds each row's dy*xhat and dy
 * (summed over these positions) to dweight[r] and dbias[r]. */
static inline __attribute__((always_inline)) void backward_columns(const ln_backward_args *a, int64_t o, int64_t i,
                                                                   const int vectors, double *dweight, double *dbias,
                                                                   int stream)
{
    const int64_t reduce = a->layout.reduce, inner = a->layout.inner;
    const int64_t base = o * reduce * inner + i, stat = o * inner + i;
    const int rms = a->mode == LN_MODE_RMS_NORM;
    const int storage = a->params_in_storage_type;
    const E *x = (const E *)a->x, *dy = (const E *)a->dy;
    E *dx = (E *)a->dx;
    V mean[LN_COLUMN_VECTORS], rstd[LN_COLUMN_VECTORS];
    double sum_g[LN_COLUMN_VECTORS * VL], sum_gx[LN_COLUMN_VECTORS * VL];
    for (int k = 0; k < vectors; k++) {
        mean[k] = rms ? vbroadcast(0) : vload_c((const C *)a->mean + stat + k * VL);
        rstd[k] = vload_c((const C *)a->rstd + stat + k * VL);
    }
    for (int64_t j = 0; j < vectors * VL; j++) sum_g[j] = sum_gx[j] = 0;
#define LN_WEIGHT(r) vbroadcast(a->weight ? param_1(a->weight, storage, (r)) : (C)1)
    for (int64_t first = 0; first < reduce; first += LN_CHUNK_ROWS) {
        const int64_t last = first + LN_CHUNK_ROWS < reduce ? first + LN_CHUNK_ROWS : reduce;
        V sg[LN_COLUMN_VECTORS], sgx[LN_COLUMN_VECTORS];
        for (int k = 0; k < vectors; k++) sg[k] = sgx[k] = vbroadcast(0);
        for (int64_t r = first; r < last; r++) {
            const int64_t at = base + r * inner;
            const V w = LN_WEIGHT(r);
            ln_prefetch_column(x + at + vectors * VL, dy + at + vectors * VL, dx + at,
                               vectors * VL * (int64_t)sizeof(E), stream);
            for (int k = 0; k < vectors; k++) {
                const V g = LOADV(dy + at + k * VL) * w;
                sg[k] += g;
                sgx[k] = vmuladd(g, (LOADV(x + at + k * VL) - mean[k]) * rstd[k], sgx[k]);
            }
        }
        for (int k = 0; k < vectors; k++) {
            vd_add_widened(sum_g + k * VL, sg[k], 0);
            vd_add_widened(sum_gx + k * VL, sgx[k], 0);
        }
    }
    /* the divides in loops of their own, which the compiler vectorizes (each
     * lane rounds as the scalar divide does) */
    C mg[LN_COLUMN_VECTORS * VL], mgx[LN_COLUMN_VECTORS * VL];
    for (int64_t j = 0; j < vectors * VL; j++) mg[j] = rms ? (C)0 : (C)(sum_g[j] / (double)reduce);
    for (int64_t j = 0; j < vectors * VL; j++) mgx[j] = (C)(sum_gx[j] / (double)reduce);
    V mean_g[LN_COLUMN_VECTORS], mean_gx[LN_COLUMN_VECTORS];
    for (int k = 0; k < vectors; k++) {
        mean_g[k] = vload_c(mg + k * VL);
        mean_gx[k] = vload_c(mgx + k * VL);
    }
    for (int64_t r = 0; r < reduce; r++) {
        const int64_t at = base + r * inner;
        const V w = LN_WEIGHT(r);
        ln_prefetch_next_column(x + at, dy + at, vectors * VL * (int64_t)sizeof(E));
        V acc_w = vbroadcast(0), acc_b = vbroadcast(0);
        for (int k = 0; k < vectors; k++) {
            const V d = LOADV(dy + at + k * VL);
            const V xhat = (LOADV(x + at + k * VL) - mean[k]) * rstd[k];
            const V result = rstd[k] * vmuladd(xhat, -mean_gx[k], vmuladd(d, w, -mean_g[k]));
            if (stream) STREAMV(dx + at + k * VL, result);
            else STOREV(dx + at + k * VL, result);
            acc_w = vmuladd(d, xhat, acc_w);
            acc_b += d;
        }
        dweight[r] += (double)lanes_sum(acc_w);
        dbias[r] += (double)lanes_sum(acc_b);
    }
#undef LN_WEIGHT
}

/* One work item's positions [i0, i0 + width) of outer index o: whole columns
 * of vectors, then backward_tile for the positions left. */
static void backward_item(const ln_backward_args *a, int64_t o, int64_t i0, int64_t width, tile_state *st,
                          double *dweight, double *dbias, int stream)
{
    int64_t i = 0;
    for (; i + LN_COLUMN_VECTORS * VL <= width; i += LN_COLUMN_VECTORS * VL)
        if (stream) backward_columns(a, o, i0 + i, LN_COLUMN_VECTORS, dweight, dbias, 1);
        else backward_columns(a, o, i0 + i, LN_COLUMN_VECTORS, dweight, dbias, 0);
    for (; i + 4 * VL <= width; i += 4 * VL) backward_columns(a, o, i0 + i, 4, dweight, dbias, stream);
    for (; i + VL <= width; i += VL) backward_columns(a, o, i0 + i, 1, dweight, dbias, stream);
    if (i < width) backward_tile(a, o, i0 + i, width - i, st, dweight, dbias);
}

int FN(backward_strided)(const ln_backward_args *a)
{
    const int64_t outer = a->layout.outer, reduce = a->layout.reduce, inner = a->layout.inner;
    if (outer < 0 || reduce <= 0 || inner < 1 || !a->rstd) return LN_ERROR_ARGUMENT;
    if (a->mode == LN_MODE_LAYER_NORM && !a->mean) return LN_ERROR_ARGUMENT;
    const int64_t tiles = (inner + LN_TILE - 1) / LN_TILE;
    /* Items hold ceil(outer / groups) outer indices each, so that the float64
     * partials (2 * reduce per item) stay within LN_MAX_PARTIALS. */
    int64_t groups = outer;
    if (groups * tiles * reduce * 2 > LN_MAX_PARTIALS) {
        groups = LN_MAX_PARTIALS / (tiles * reduce * 2);
        if (groups < 1) groups = 1;
    }
    const int64_t per_group = groups ? (outer + groups - 1) / groups : 0;
    if (per_group) groups = (outer + per_group - 1) / per_group;
    const int64_t items = groups * tiles;
    double *partial = malloc((size_t)(2 * reduce * (items ? items : 1)) * sizeof *partial);
    if (!partial) return LN_ERROR_NO_MEMORY;
    int status = LN_OK;
    const int stream = dx_streamed(a);

    const int64_t chunk = ln_dynamic_chunk(items, per_group * reduce * (inner < LN_TILE ? inner : LN_TILE),
                                           a->num_threads);
    #pragma omp parallel num_threads(a->num_threads) if (ln_parallel_if(outer * reduce * inner, a->num_threads))
    {
        tile_state *st = malloc(sizeof *st);   /* once per thread, not per item */
        if (!st) {
            #pragma omp atomic write
            status = LN_ERROR_NO_MEMORY;
        }
        #pragma omp for schedule(dynamic, chunk)
        for (int64_t item = 0; item < items; item++) {
            if (!st) continue;
            const int64_t g = item / tiles, i0 = (item % tiles) * LN_TILE;
            const int64_t width = inner - i0 < LN_TILE ? inner - i0 : LN_TILE;
            const int64_t first = g * per_group, last = first + per_group < outer ? first + per_group : outer;
            double *dweight = partial + 2 * item * reduce, *dbias = dweight + reduce;
            /* zeroed here, by the thread that fills it, rather than by a
             * calloc on one thread before the others start: NCHW 2 threads
             * 0.95x to 0.97x the time at AVX-512, 0.98x at AVX2 and at the
             * baseline; (16, 64, 56, 56) 0.94x */
            memset(dweight, 0, (size_t)(2 * reduce) * sizeof *dweight);
            for (int64_t o = first; o < last; o++) backward_item(a, o, i0, width, st, dweight, dbias, stream);
        }
        if (stream) ln_stream_fence();
        free(st);
    }
    if (status == LN_OK) {
        ln_sum_partials(a, partial, items, 0, reduce);
    }
    free(partial);
    return status;
}
