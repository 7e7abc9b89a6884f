/* Forward layer norm / RMS norm over the row layout x[rows][cols]
 * (normalized axes trailing and contiguous), with the optional fused
 * residual add.  Template: compiled once per (SIMD level, dtype).
 *
 * Each row's statistics are merged from fixed LN_BLOCK-element blocks in
 * block order, then the row is normalized while it is still in cache.  Many
 * rows: threads take whole rows.  A few long rows: threads take blocks, the
 * block moments are merged in order, then threads normalize blocks.  Both give
 * the same bits for any thread count.
 */
#include "layernorm/kernel_common.h"
#include "layernorm/moments.h"
#include "layernorm/spans.h"

typedef struct { C hi, lo, scale; } row_transform;

/* Turn merged moments into the normalize-pass constants and the outputs. */
static inline row_transform finish_layer_norm(ln_moments m, C shift, double eps, C *mean_out, C *rstd_out)
{
    const double rstd = 1.0 / sqrt(m.m2 * (1.0 / m.n) + eps);
    if (mean_out) *mean_out = (C)((double)shift + m.mean);
    if (rstd_out) *rstd_out = (C)rstd;
    return (row_transform){shift, (C)m.mean, (C)rstd};
}

static inline row_transform finish_rms_norm(double sum_squares, int64_t n, double eps, C *rrms_out)
{
    const double rrms = 1.0 / sqrt(sum_squares * (1.0 / (double)n) + eps);
    if (rrms_out) *rrms_out = (C)rrms;
    return (row_transform){0, 0, (C)rrms};
}

/* The source of row r's statistics: x, or the stored sum x + residual. */
static inline const E *row_source(const ln_forward_args *a, int64_t offset)
{
    return a->residual ? (const E *)a->sum_out + offset : (const E *)a->x + offset;
}

/* The row's first stored value, the shift of its Welford moments.  Read it
 * before the fused add writes sum_out, which may alias the residual. */
static inline C row_shift(const ln_forward_args *a, int64_t offset)
{
    const E *x = (const E *)a->x + offset;
    return a->residual ? rounded_sum(x, (const E *)a->residual + offset) : LOAD1(x);
}

/* Rows handled together: their moments first, then one vectorizable finish
 * (divides and square roots of the group at once), then the normalize pass
 * of each row, still in cache.  Each row's arithmetic is its own. */
#define LN_ROW_GROUP 8

static void forward_row_group(const ln_forward_args *a, int64_t first, int64_t count, const C *recip)
{
    const int64_t cols = a->layout.reduce;
    const int rms = a->mode == LN_MODE_RMS_NORM;
    const double inv_n = 1.0 / (double)cols;
    C shift[LN_ROW_GROUP];
    double mean[LN_ROW_GROUP], m2[LN_ROW_GROUP], rstd[LN_ROW_GROUP];
    for (int64_t g = 0; g < count; g++) {
        const int64_t offset = (first + g) * cols;
        shift[g] = rms ? 0 : row_shift(a, offset);
        if (a->residual)
            add_span((const E *)a->x + offset, (const E *)a->residual + offset, (E *)a->sum_out + offset, cols);
        const E *src = row_source(a, offset);
        if (rms) {
            double sum_squares = 0;
            for (int64_t start = 0; start < cols; start += LN_BLOCK)
                sum_squares += block_sum_squares(src + start, cols - start < LN_BLOCK ? cols - start : LN_BLOCK);
            mean[g] = 0;
            m2[g] = sum_squares;
        } else {
            ln_moments m = {0, 0, 0};
            for (int64_t start = 0; start < cols; start += LN_BLOCK)
                chan_merge(&m, block_welford(src + start, cols - start < LN_BLOCK ? cols - start : LN_BLOCK,
                                             shift[g], recip));
            mean[g] = m.mean;
            m2[g] = m.m2;
        }
    }
    for (int64_t g = 0; g < count; g++) rstd[g] = 1.0 / sqrt(m2[g] * inv_n + a->eps);
    for (int64_t g = 0; g < count; g++) {
        const int64_t r = first + g, offset = r * cols;
        if (a->rstd) ((C *)a->rstd)[r] = (C)rstd[g];
        if (a->mean && !rms) ((C *)a->mean)[r] = (C)((double)shift[g] + mean[g]);
        normalize_span(row_source(a, offset), (E *)a->y + offset, cols, shift[g], (C)mean[g], (C)rstd[g],
                       a->weight, a->bias, a->params_in_storage_type);
    }
}

/* A few long rows: blocks of every row are spread over the threads. */
static int forward_split_rows(const ln_forward_args *a, const C *recip)
{
    const int64_t rows = a->layout.outer, cols = a->layout.reduce;
    const int64_t blocks_per_row = (cols + LN_BLOCK - 1) / LN_BLOCK;
    const int64_t items = rows * blocks_per_row;
    ln_moments *partial = malloc((size_t)items * sizeof *partial);
    row_transform *transform = malloc((size_t)rows * sizeof *transform);
    if (!partial || !transform) { free(partial); free(transform); return LN_ERROR_NO_MEMORY; }
    const int rms = a->mode == LN_MODE_RMS_NORM;
    for (int64_t r = 0; r < rows; r++) transform[r].hi = rms ? 0 : row_shift(a, r * cols);

    #pragma omp parallel num_threads(a->num_threads) if (ln_parallel_if(rows * cols, a->num_threads))
    {
        #pragma omp for schedule(static)
        for (int64_t item = 0; item < items; item++) {
            const int64_t r = item / blocks_per_row, start = (item % blocks_per_row) * LN_BLOCK;
            const int64_t len = cols - start < LN_BLOCK ? cols - start : LN_BLOCK;
            const int64_t offset = r * cols + start;
            if (a->residual)
                add_span((const E *)a->x + offset, (const E *)a->residual + offset, (E *)a->sum_out + offset, len);
            const E *src = row_source(a, offset);
            if (rms)
                partial[item] = (ln_moments){(double)len, block_sum_squares(src, len), 0};
            else
                partial[item] = block_welford(src, len, transform[r].hi, recip);
        }
        #pragma omp single
        for (int64_t r = 0; r < rows; r++) {
            C *mean_out = a->mean ? (C *)a->mean + r : NULL;
            C *rstd_out = a->rstd ? (C *)a->rstd + r : NULL;
            const ln_moments *p = partial + r * blocks_per_row;
            if (rms) {
                double sum_squares = 0;
                for (int64_t b = 0; b < blocks_per_row; b++) sum_squares += p[b].mean;
                transform[r] = finish_rms_norm(sum_squares, cols, a->eps, rstd_out);
            } else {
                ln_moments m = {0, 0, 0};
                for (int64_t b = 0; b < blocks_per_row; b++) chan_merge(&m, p[b]);
                transform[r] = finish_layer_norm(m, transform[r].hi, a->eps, mean_out, rstd_out);
            }
        }
        #pragma omp for schedule(static)
        for (int64_t item = 0; item < items; item++) {
            const int64_t r = item / blocks_per_row, start = (item % blocks_per_row) * LN_BLOCK;
            const int64_t len = cols - start < LN_BLOCK ? cols - start : LN_BLOCK;
            const row_transform t = transform[r];
            normalize_span(row_source(a, r * cols + start), (E *)a->y + r * cols + start, len, t.hi, t.lo, t.scale,
                           param_at(a->weight, a->params_in_storage_type, start),
                           param_at(a->bias, a->params_in_storage_type, start), a->params_in_storage_type);
        }
    }
    free(partial);
    free(transform);
    return LN_OK;
}

int FN(forward_rows)(const ln_forward_args *a)
{
    const int64_t rows = a->layout.outer, cols = a->layout.reduce;
    if (rows < 0 || cols <= 0 || a->layout.inner != 1) return LN_ERROR_ARGUMENT;
    if (a->residual && !a->sum_out) return LN_ERROR_ARGUMENT;
    C recip[LN_STEPS_PER_BLOCK + 1];
    fill_reciprocals(recip, cols);
    if (rows < LN_SPLIT_BELOW_ROWS && cols > LN_BLOCK && rows * cols >= LN_PARALLEL_MIN_ELEMENTS)
        return forward_split_rows(a, recip);
    const int64_t groups = (rows + LN_ROW_GROUP - 1) / LN_ROW_GROUP;
#define LN_GROUP_AT(g) forward_row_group(a, (g) * LN_ROW_GROUP, \
                                         rows - (g) * LN_ROW_GROUP < LN_ROW_GROUP ? rows - (g) * LN_ROW_GROUP : LN_ROW_GROUP, recip)
    if (!ln_parallel_if(rows * cols, a->num_threads)) {
        /* small call: no OpenMP region at all, its start-up costs microseconds */
        for (int64_t g = 0; g < groups; g++) LN_GROUP_AT(g);
        return LN_OK;
    }
    #pragma omp parallel for schedule(static) num_threads(a->num_threads)
    for (int64_t g = 0; g < groups; g++) LN_GROUP_AT(g);
#undef LN_GROUP_AT
    return LN_OK;
}
