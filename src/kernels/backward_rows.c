/* Backward of layer norm / RMS norm over the row layout x[rows][cols].
 * Template: compiled once per (SIMD level, dtype).
 *
 *   xhat = (x - mean) * rstd           (RMS: mean = 0, rstd = 1/rms)
 *   g    = dy * weight
 *   dx   = rstd * (g - mean(g) - xhat * mean(g * xhat))   (RMS: no mean(g))
 *   dweight = sum over rows of dy * xhat,  dbias = sum over rows of dy
 *
 * One visit per row: the two row sums, then dx and the row's share of
 * dweight/dbias while x and dy are in cache.  dweight/dbias: rows are grouped
 * in fixed row blocks (their size depends on the shape only); a block sums
 * groups of LN_GROUP rows in the compute type, flushes them into its own
 * float64 partial, and the partials are added in block order.  A few long
 * rows are split across threads by column blocks instead.  Any thread count
 * gives the same bits.
 */
#include "layernorm/kernel_common.h"

/* Rows whose dx pass runs column by column together (their dweight/dbias
 * sums stay in registers, in the compute type, then go to float64). */
#define LN_GROUP 8
/* ... fewer for long rows: a group holds at most this many elements per array. */
#define LN_GROUP_ELEMENTS 16384
/* Row blocks of the dweight/dbias reduction: at least this many rows each
 * (every block costs a float64 partial of 2 * cols values) ... */
#define LN_MIN_BLOCK_ROWS 32
/* ... at most this many blocks ... */
#define LN_MAX_ROW_BLOCKS 64
/* ... and at most this many float64 partial values in all. */
#define LN_MAX_PARTIALS (1 << 21)

typedef struct { double sum_g, sum_g_xhat; } row_sums;

static inline V grad_in(const void *weight, int storage, const E *dy, int64_t i)
{
    return weight ? LOADV(dy + i) * param_v(weight, storage, i) : LOADV(dy + i);
}

/* sum(g) and sum(g * xhat) over one block, in lanes with K accumulators. */
static inline row_sums block_sums(const E *x, const E *dy, const void *weight, int storage, int64_t n,
                                  C mean, C rstd)
{
    enum { K = LN_ACCUMULATORS };
    const V vmean = vbroadcast(mean), vrstd = vbroadcast(rstd);
    V sg[K], sgx[K];
    for (int k = 0; k < K; k++) sg[k] = sgx[k] = vbroadcast(0);
    const int64_t step = VL * K, steps = n / step;
    for (int64_t s = 0; s < steps; s++) {
        for (int k = 0; k < K; k++) {
            const int64_t i = s * step + k * VL;
            const V g = grad_in(weight, storage, dy, i);
            const V xhat = (LOADV(x + i) - vmean) * vrstd;
            sg[k] += g;
            sgx[k] += g * xhat;
        }
    }
    for (int width = K / 2; width >= 1; width /= 2)
        for (int k = 0; k < width; k++) sg[k] += sg[k + width], sgx[k] += sgx[k + width];
    C tail_g = 0, tail_gx = 0;
    for (int64_t i = steps * step; i < n; i++) {
        const C g = weight ? LOAD1(dy + i) * param_1(weight, storage, i) : LOAD1(dy + i);
        tail_g += g;
        tail_gx += g * ((LOAD1(x + i) - mean) * rstd);
    }
    return (row_sums){(double)hsum(sg[0]) + tail_g, (double)hsum(sgx[0]) + tail_gx};
}

static inline row_sums sum_row(const E *x, const E *dy, const void *weight, int storage, int64_t cols,
                               C mean, C rstd)
{
    row_sums total = {0, 0};
    for (int64_t start = 0; start < cols; start += LN_BLOCK) {
        const row_sums b = block_sums(x + start, dy + start, param_at(weight, storage, start), storage,
                                      cols - start < LN_BLOCK ? cols - start : LN_BLOCK, mean, rstd);
        total.sum_g += b.sum_g;
        total.sum_g_xhat += b.sum_g_xhat;
    }
    return total;
}

/* dx over a span, and dy*xhat, dy added into acc_w/acc_b (each may be NULL). */
static inline void dx_span(const E *x, const E *dy, E *dx, const void *weight, int storage, int64_t n,
                           C mean, C rstd, C mean_g, C mean_gx, C *acc_w, C *acc_b)
{
    const V vmean = vbroadcast(mean), vrstd = vbroadcast(rstd);
    const V vmg = vbroadcast(mean_g), vmgx = vbroadcast(mean_gx);
    int64_t i = 0;
    for (; i + VL <= n; i += VL) {
        const V d = LOADV(dy + i);
        const V g = weight ? d * param_v(weight, storage, i) : d;
        const V xhat = (LOADV(x + i) - vmean) * vrstd;
        STOREV(dx + i, vrstd * ((g - vmg) - xhat * vmgx));
        if (acc_w) vstore_c(acc_w + i, vload_c(acc_w + i) + d * xhat);
        if (acc_b) vstore_c(acc_b + i, vload_c(acc_b + i) + d);
    }
    for (; i < n; i++) {
        const C d = LOAD1(dy + i);
        const C g = weight ? d * param_1(weight, storage, i) : d;
        const C xhat = (LOAD1(x + i) - mean) * rstd;
        STORE1(dx + i, rstd * ((g - mean_g) - xhat * mean_gx));
        if (acc_w) acc_w[i] += d * xhat;
        if (acc_b) acc_b[i] += d;
    }
}

typedef struct { C mean, rstd, mean_g, mean_gx; } row_coefficients;

static inline C row_mean(const ln_backward_args *a, int64_t r)
{
    return a->mode == LN_MODE_RMS_NORM ? (C)0 : ((const C *)a->mean)[r];
}

static inline row_coefficients coefficients(const ln_backward_args *a, int64_t r, row_sums s)
{
    const int64_t cols = a->layout.reduce;
    const int rms = a->mode == LN_MODE_RMS_NORM;
    return (row_coefficients){row_mean(a, r), ((const C *)a->rstd)[r],
                              rms ? (C)0 : (C)(s.sum_g / (double)cols), (C)(s.sum_g_xhat / (double)cols)};
}

/* dx for a group of rows (at most LN_GROUP, coefficients in c), column
 * vector by column vector, so that the group's dy*xhat and dy sums stay in
 * registers and reach the float64 partials once per group. */
static void dx_group(const ln_backward_args *a, int64_t first, int64_t count, const row_coefficients *c,
                     double *partial_w, double *partial_b)
{
    const int64_t cols = a->layout.reduce;
    const void *weight = a->weight;
    const int storage = a->params_in_storage_type;
    const E *x = (const E *)a->x + first * cols, *dy = (const E *)a->dy + first * cols;
    E *dx = (E *)a->dx + first * cols;
    int64_t i = 0;
    for (; i + VL <= cols; i += VL) {
        const V w = weight ? param_v(weight, storage, i) : vbroadcast(1);
        V acc_w = vbroadcast(0), acc_b = vbroadcast(0);
        for (int64_t g = 0; g < count; g++) {
            const int64_t at = g * cols + i;
            const V d = LOADV(dy + at);
            const V xhat = (LOADV(x + at) - vbroadcast(c[g].mean)) * vbroadcast(c[g].rstd);
            STOREV(dx + at, vbroadcast(c[g].rstd) * ((d * w - vbroadcast(c[g].mean_g)) - xhat * vbroadcast(c[g].mean_gx)));
            acc_w += d * xhat;
            acc_b += d;
        }
        if (partial_w) {
            vd_store(partial_w + i, vd_load(partial_w + i) + vwiden(acc_w));
            vd_store(partial_b + i, vd_load(partial_b + i) + vwiden(acc_b));
        }
    }
    for (; i < cols; i++) {
        const C w = weight ? param_1(weight, storage, i) : 1;
        C acc_w = 0, acc_b = 0;
        for (int64_t g = 0; g < count; g++) {
            const int64_t at = g * cols + i;
            const C d = LOAD1(dy + at);
            const C xhat = (LOAD1(x + at) - c[g].mean) * c[g].rstd;
            STORE1(dx + at, c[g].rstd * ((d * w - c[g].mean_g) - xhat * c[g].mean_gx));
            acc_w += d * xhat;
            acc_b += d;
        }
        if (partial_w) {
            partial_w[i] += (double)acc_w;
            partial_b[i] += (double)acc_b;
        }
    }
}

/* Many rows: threads take row blocks; each block owns a float64 partial. */
static int backward_row_blocks(const ln_backward_args *a)
{
    const int64_t rows = a->layout.outer, cols = a->layout.reduce;
    const void *weight = a->weight;
    const int storage = a->params_in_storage_type;
    const int want_params = a->dweight || a->dbias;
    int64_t blocks = (rows + LN_MIN_BLOCK_ROWS - 1) / LN_MIN_BLOCK_ROWS;
    if (blocks > LN_MAX_ROW_BLOCKS) blocks = LN_MAX_ROW_BLOCKS;
    if (blocks * cols > LN_MAX_PARTIALS) blocks = LN_MAX_PARTIALS / cols > 1 ? LN_MAX_PARTIALS / cols : 1;
    const int64_t rows_per_block = (rows + blocks - 1) / blocks;
    blocks = (rows + rows_per_block - 1) / rows_per_block;
    /* a group's rows are read twice, so they should stay in L2 in between */
    int64_t group = LN_GROUP_ELEMENTS / cols;
    group = group < 1 ? 1 : group > LN_GROUP ? LN_GROUP : group;
    double *partial = want_params ? calloc((size_t)(2 * blocks * cols), sizeof *partial) : NULL;
    if (want_params && !partial) return LN_ERROR_NO_MEMORY;

    #pragma omp parallel for schedule(static) num_threads(a->num_threads) if (ln_parallel_if(rows * cols, a->num_threads))
    for (int64_t b = 0; b < blocks; b++) {
        const int64_t first = b * rows_per_block;
        const int64_t last = first + rows_per_block < rows ? first + rows_per_block : rows;
        for (int64_t g0 = first; g0 < last; g0 += group) {
            const int64_t count = last - g0 < group ? last - g0 : group;
            row_coefficients c[LN_GROUP];
            for (int64_t g = 0; g < count; g++) {
                const int64_t r = g0 + g;
                const E *x = (const E *)a->x + r * cols, *dy = (const E *)a->dy + r * cols;
                c[g] = coefficients(a, r, sum_row(x, dy, weight, storage, cols, row_mean(a, r),
                                                  ((const C *)a->rstd)[r]));
            }
            dx_group(a, g0, count, c, partial ? partial + 2 * b * cols : NULL,
                     partial ? partial + (2 * b + 1) * cols : NULL);
        }
    }
    if (!want_params) return LN_OK;

    #pragma omp parallel for schedule(static) num_threads(a->num_threads) if (ln_parallel_if(blocks * cols, a->num_threads))
    for (int64_t j = 0; j < cols; j++) {
        double w = 0, bsum = 0;
        for (int64_t b = 0; b < blocks; b++) {
            w += partial[2 * b * cols + j];
            bsum += partial[(2 * b + 1) * cols + j];
        }
        if (a->dweight) ((C *)a->dweight)[j] = (C)w;
        if (a->dbias) ((C *)a->dbias)[j] = (C)bsum;
    }
    free(partial);
    return LN_OK;
}

/* A few long rows: row sums by column blocks in parallel, merged in order;
 * then dx and dweight/dbias by column blocks, rows in order within each. */
static int backward_split_rows(const ln_backward_args *a)
{
    const int64_t rows = a->layout.outer, cols = a->layout.reduce;
    const int64_t blocks_per_row = (cols + LN_BLOCK - 1) / LN_BLOCK, items = rows * blocks_per_row;
    const void *weight = a->weight;
    const int storage = a->params_in_storage_type;
    row_sums *partial = malloc((size_t)items * sizeof *partial);
    row_coefficients *coef = malloc((size_t)rows * sizeof *coef);
    if (!partial || !coef) { free(partial); free(coef); return LN_ERROR_NO_MEMORY; }

    #pragma omp parallel num_threads(a->num_threads) if (ln_parallel_if(rows * cols, a->num_threads))
    {
        #pragma omp for schedule(static)
        for (int64_t item = 0; item < items; item++) {
            const int64_t r = item / blocks_per_row, start = (item % blocks_per_row) * LN_BLOCK;
            const int64_t offset = r * cols + start;
            partial[item] = block_sums((const E *)a->x + offset, (const E *)a->dy + offset,
                                       param_at(weight, storage, start), storage,
                                       cols - start < LN_BLOCK ? cols - start : LN_BLOCK,
                                       row_mean(a, r), ((const C *)a->rstd)[r]);
        }
        #pragma omp single
        for (int64_t r = 0; r < rows; r++) {
            row_sums s = {0, 0};
            for (int64_t b = 0; b < blocks_per_row; b++) {
                s.sum_g += partial[r * blocks_per_row + b].sum_g;
                s.sum_g_xhat += partial[r * blocks_per_row + b].sum_g_xhat;
            }
            coef[r] = coefficients(a, r, s);
        }
        /* fewer than LN_SPLIT_BELOW_ROWS rows: dweight/dbias accumulate in
         * place, in row order, in the compute type */
        #pragma omp for schedule(static)
        for (int64_t b = 0; b < blocks_per_row; b++) {
            const int64_t start = b * LN_BLOCK, len = cols - start < LN_BLOCK ? cols - start : LN_BLOCK;
            C *dweight = a->dweight ? (C *)a->dweight + start : NULL;
            C *dbias = a->dbias ? (C *)a->dbias + start : NULL;
            if (dweight) memset(dweight, 0, (size_t)len * sizeof(C));
            if (dbias) memset(dbias, 0, (size_t)len * sizeof(C));
            for (int64_t r = 0; r < rows; r++) {
                const int64_t offset = r * cols + start;
                const row_coefficients c = coef[r];
                dx_span((const E *)a->x + offset, (const E *)a->dy + offset, (E *)a->dx + offset,
                        param_at(weight, storage, start), storage, len, c.mean, c.rstd, c.mean_g, c.mean_gx,
                        dweight, dbias);
            }
        }
    }
    free(partial);
    free(coef);
    return LN_OK;
}

int FN(backward_rows)(const ln_backward_args *a)
{
    const int64_t rows = a->layout.outer, cols = a->layout.reduce;
    if (rows < 0 || cols <= 0 || a->layout.inner != 1 || !a->rstd) return LN_ERROR_ARGUMENT;
    if (a->mode == LN_MODE_LAYER_NORM && !a->mean) return LN_ERROR_ARGUMENT;
    if (rows < LN_SPLIT_BELOW_ROWS && cols > LN_BLOCK && rows * cols >= LN_PARALLEL_MIN_ELEMENTS)
        return backward_split_rows(a);
    return backward_row_blocks(a);
}
