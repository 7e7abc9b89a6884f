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
 * groups of LN_GROUP rows in the compute type (calls from memory: one row at
 * a time, see rows_one_at_a_time), flushes them every LN_CARRIED_ROWS rows
 * into its own float64 partial, and the partials are added in block order.
 * Long rows
 * go in groups of rows that all threads share, by column chunks instead (see
 * backward_long_rows).  Any thread count gives the same bits.
 */
#include "layernorm/kernel_common.h"

/* Rows whose dx pass runs column by column together (their dweight/dbias
 * sums stay in registers, in the compute type, then go to float64). */
#define LN_GROUP 8
/* ... in steps of fewer rows where rows are a multiple of 4 KB apart: a
 * column's lines of all the rows of a step then fall in one set of the
 * 8-way L1, and 8 rows of x and dy (16 lines) evicted each other at every
 * column.  Each step adds its dweight/dbias sums to a compute-type carry,
 * and the group's last step takes them on to float64.  A/B against steps of
 * 8 rows (bench/compare_builds.py), 2 threads: (16384, 1024) float32 0.82x
 * the time at AVX-512, 0.80x at AVX2, 0.84x at the baseline; (8192, 2048)
 * 0.82x at AVX2; float64 (8192, 1024) 0.67x; the long-row path's
 * (2048, 8192) 0.87x (AVX2 0.91x).  1 thread, in cache, x, dy and dx at
 * one page offset (as numpy.empty places large arrays): (48, 1024) 0.90x
 * at AVX-512, 0.86x at AVX2, 0.97x at the baseline; (24, 2048) 0.90x,
 * 0.85x, 0.92x.  (With the three arrays 1 KB apart in their pages, 8 rows
 * did not conflict and the baseline's steps of 4 took 1.08x.)  Not for
 * rows 2 KB apart ((32768, 512) 1.04x from memory), nor 16-row groups in
 * steps of 8 (0.86x to 0.94x in cache, but (4096, 768) 1.08x and
 * (32768, 512) 1.04x from memory). */
#define LN_DX_ROWS_4K 4
static inline int64_t dx_step_rows(int64_t cols)
{
    return cols * (int64_t)sizeof(E) % 4096 == 0 ? LN_DX_ROWS_4K : LN_GROUP;
}
/* A row block's groups add their dweight/dbias sums to a compute-type
 * carry, which goes to the block's float64 partial every this many rows
 * (the block's last group too), rather than every group: each such flush
 * loads, adds and stores four vectors of float64 per column vector, and on
 * a row group of 8 that was a third more stores than dx's own.  The
 * choice depends on the shape only.  A/B (bench/compare_builds.py), 2
 * threads, against a flush every group: (4096, 768) float32 0.89x the time
 * at AVX-512, 0.88x at AVX2, 0.97x at the baseline (1 thread 0.93x);
 * (16384, 1024) 0.98x, 0.79x at AVX2, 0.96x at the baseline; (8192, 2048)
 * 0.96x; (262144, 64) 1.00x, 0.94x at AVX2; float64 (8192, 1024) 0.98x;
 * float16 (16384, 1024) 0.90x, bfloat16 0.98x.  Every 16 and 32 rows
 * gained less ((4096, 768) every 32 rows took 1.05x to 1.07x the time of
 * every 64), every 256 rows no more (0.98x to 1.00x).  The float32
 * dweight/dbias error of the many-rows test's data stays at the final
 * rounding: (4096, 768) 7.1e-8 relative (6.2e-8 before), (16384, 1024)
 * 7.0e-8 (6.1e-8), (262144, 64) 6.0e-8 (5.9e-8). */
#define LN_CARRIED_ROWS 64
/* ... fewer for long rows: a group holds at most this many elements per array. */
#define LN_GROUP_ELEMENTS 16384
/* Row blocks of the dweight/dbias reduction: at least this many rows each
 * (every block costs a float64 partial of 2 * cols values, written and
 * merged) ...  128 rather than 32: A/B (bench/compare_builds.py), 2
 * threads, float32: (4096, 768) 0.90x the time at AVX-512 (32 blocks, not
 * 64), 0.91x at AVX2, 0.97x at the baseline, float16 0.95x; (2048, 768)
 * 0.88x, (1024, 768) 0.92x, (512, 768) 0.79x, (8192, 768) 0.96x,
 * (256, 4096) 0.97x.  Calls of 8192 rows and more keep LN_MAX_ROW_BLOCKS. */
#define LN_MIN_BLOCK_ROWS 128
/* ... at most this many blocks ... */
#define LN_MAX_ROW_BLOCKS 64
/* ... and at most this many float64 partial values in all. */
#define LN_MAX_PARTIALS (1 << 21)

typedef struct { double sum_g, sum_g_xhat; } row_sums;

/* Row groups of rows of 1 KB or more prefetch the next group's x and dy
 * rows (into L2: a group and its successor do not fit in L1 together) while
 * their dx pass runs from the caches, in the order the next first pass reads
 * them (see dx_column_vectors).  The same bits.  A/B
 * (bench/compare_builds.py), 2 threads, AVX-512 unless stated, against no
 * prefetch: float32 (16384, 1024) 0.94x the time (AVX2 0.88x, baseline
 * 0.91x), (32768, 512) 0.78x, (65536, 256) 0.76x, (8192, 768) 0.82x,
 * (4096, 4096) 0.85x, (4096, 768) 0.83x to 0.87x (AVX2 0.83x, baseline
 * 0.84x); float64 (8192, 1024) 0.84x.  The next group's rows prefetched
 * column by column instead, as the dx pass reads its own, lost for float32
 * from memory ((16384, 1024) 1.03x to 1.14x); against that, float16
 * (16384, 1024) took 0.89x (AVX2 0.88x), bfloat16 0.84x, float32
 * (4096, 768) 0.98x.
 * Shorter rows gained nothing ((262144, 64) float32 1.04x, float16 1.03x,
 * AVX2 float32 0.92x; bfloat16 (65536, 256) 0.99x), and calls under 8 MB
 * of inputs are left alone.  (Most of these calls now go a row at a time
 * instead, with a prefetch of their own: see rows_one_at_a_time.) */
static inline int prefetch_row_groups(const ln_backward_args *a)
{
    const int64_t row_bytes = a->layout.reduce * (int64_t)sizeof(E), inputs = 2 * a->layout.outer * row_bytes;
    return row_bytes >= 1024 && inputs >= LN_PREFETCH_MIN_BYTES;
}

static inline V grad_in(const void *weight, int storage, const E *dy, int64_t i)
{
    return weight ? LOADV(dy + i) * param_v(weight, storage, i) : LOADV(dy + i);
}

/* sum(g) and sum(g * xhat) over one block, in lanes with LN_ACCUMULATORS
 * accumulators each.  Named accumulators, not arrays: with the multiply-add
 * written out (vmuladd), GCC kept an array of them on the stack at AVX2, and
 * each step waited on a store and a load ((128, 768) in cache took 1.07x the
 * time of the contracted code, 1.03x with named accumulators). */
_Static_assert(LN_ACCUMULATORS == 4, "block_sums has four accumulators");
static inline row_sums block_sums(const E *x, const E *dy, const void *weight, int storage, int64_t n,
                                  C mean, C rstd)
{
    const V vmean = vbroadcast(mean);
    V sg0 = vbroadcast(0), sg1 = sg0, sg2 = sg0, sg3 = sg0, sgx0 = sg0, sgx1 = sg0, sgx2 = sg0, sgx3 = sg0;
    const int64_t step = VL * LN_ACCUMULATORS, steps = n / step;
    /* sum(g * xhat) as rstd * sum(g * (x - mean)): one multiply per block,
     * not per vector.  A/B (bench/compare_builds.py), 2 threads, AVX-512:
     * (4096, 768) float32 0.975x the time (AVX2 0.93x, float16 0.97x),
     * (262144, 64) 0.965x, (16384, 1024) 0.99x, (64, 262144) 0.99x. */
#define LN_SUM_STEP(sg, sgx, i)                                     \
    do {                                                            \
        const V g_ = grad_in(weight, storage, dy, i);               \
        const V centred_ = LOADV(x + (i)) - vmean;                  \
        sg += g_;                                                   \
        sgx = vmuladd(g_, centred_, sgx);                           \
    } while (0)
    for (int64_t s = 0; s < steps; s++) {
        LN_SUM_STEP(sg0, sgx0, s * step);
        LN_SUM_STEP(sg1, sgx1, s * step + VL);
        LN_SUM_STEP(sg2, sgx2, s * step + 2 * VL);
        LN_SUM_STEP(sg3, sgx3, s * step + 3 * VL);
    }
    /* the up to three whole vectors left, as LN_PARTIAL_SUMS takes them: in
     * C one element at a time, they were most of the time of a row of 500
     * (52 of its elements at AVX-512, on one dependency chain) */
    const int64_t done = steps * step, left = n / VL - steps * LN_ACCUMULATORS;
    if (left > 0) LN_SUM_STEP(sg0, sgx0, done);
    if (left > 1) LN_SUM_STEP(sg1, sgx1, done + VL);
    if (left > 2) LN_SUM_STEP(sg2, sgx2, done + 2 * VL);
#undef LN_SUM_STEP
#if LN_MASKED_TAILS
    /* the elements after the whole vectors: one masked vector into sg3/sgx3 */
    const int64_t tail_at = n / VL * VL, tail = n - tail_at;
    if (tail > 0) {
        const V d_ = LOADV_TAIL(dy + tail_at, tail);
        const V g_ = weight ? d_ * param_v_tail(weight, storage, tail_at, tail) : d_;
        const V centred_ = LOADV_TAIL(x + tail_at, tail) - vmean;
        sg3 = ln_blend_lanes_below(sg3, sg3 + g_, tail);
        sgx3 = ln_blend_lanes_below(sgx3, vmuladd(g_, centred_, sgx3), tail);
    }
#endif
    /* pairwise, as the arrays were: (0 + 2) + (1 + 3) */
    sg0 += sg2, sg1 += sg3, sgx0 += sgx2, sgx1 += sgx3;
    sg0 += sg1, sgx0 += sgx1;
    C tail_g = 0, tail_gx = 0;
    for (int64_t i = LN_TAIL_START(n); i < n; i++) {
        const C g = weight ? LOAD1(dy + i) * param_1(weight, storage, i) : LOAD1(dy + i);
        tail_g += g;
        tail_gx = smuladd(g, LOAD1(x + i) - mean, tail_gx);
    }
    return (row_sums){(double)lanes_sum(sg0) + tail_g, ((double)lanes_sum(sgx0) + tail_gx) * (double)rstd};
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

/* A row's constants for dx, the means negated once here rather than at
 * every use: GCC negated and broadcast them in registers for every vector
 * of dx, instead of broadcasting them from memory (see vsplat).  With
 * vsplat and the one-instruction widening of v_widened, 1 thread, in
 * cache: (64, 768) float32 0.96x the time at AVX-512, 0.92x at AVX2;
 * (512, 64) 0.89x and 0.92x; (128, 500) 0.93x and 0.89x.  From memory,
 * 2 threads: (4096, 768) 1.01x, (32768, 512) 1.01x, (262144, 64) 0.96x. */
typedef struct { C mean, rstd, neg_mean_g, neg_mean_gx; } row_coefficients;

/* Stream dx (see ln_stream_rows; the call moves x, dy and dx)?  Only when
 * every vector of it is aligned: dx comes from the buffer pool, whose blocks
 * are. */
static inline int dx_streamed(const ln_backward_args *a)
{
    const int arrays_moved = 3;
    return ln_stream_rows(a->dx, a->layout.outer, a->layout.reduce, arrays_moved) && (uintptr_t)a->dx % 64 == 0;
}

/* Stream dweight/dbias (when each is written once, see backward_long_rows)?
 * The same size rule as ln_stream_rows, and vectors that are all aligned.
 * Measured on (1, 16777216) float32 with a weight, 2 threads: 0.90x to 0.91x
 * the time. */
static inline int params_streamed(const ln_backward_args *a)
{
    const int64_t bytes = a->layout.reduce * (int64_t)sizeof(C);
    return LN_CAN_STREAM_C && bytes >= LN_STREAM_MIN_BYTES && bytes % 64 == 0
           && (uintptr_t)a->dweight % 64 == 0 && (uintptr_t)a->dbias % 64 == 0;
}

static inline C row_mean(const ln_backward_args *a, int64_t r)
{
    return a->mode == LN_MODE_RMS_NORM ? (C)0 : ((const C *)a->mean)[r];
}

static inline row_coefficients coefficients(const ln_backward_args *a, int64_t r, row_sums s)
{
    const int64_t cols = a->layout.reduce;
    const int rms = a->mode == LN_MODE_RMS_NORM;
    return (row_coefficients){row_mean(a, r), ((const C *)a->rstd)[r],
                              rms ? -(C)0 : -(C)(s.sum_g / (double)cols), -(C)(s.sum_g_xhat / (double)cols)};
}

/* Where a group's dweight/dbias column sums go, per array (dweight, dbias):
 * into a float64 sum, directly or through a running sum in the compute type
 * that collects a few groups of rows first (it cuts the float64 traffic).
 * Row blocks: into their partials, through the block's carry where rows fit
 * it (see LN_CARRIED_ROWS; dx_group_in_steps passes the carry as the
 * running sums).  A few long rows: the running sum is the result itself. */
typedef struct {
    C *running_w, *running_b;        /* compute-type running sums, or NULL */
    double *wide_w, *wide_b;         /* float64 sums, or NULL (then running is the result) */
    int stream;                      /* running is the result, written once: streaming stores */
    int restart;                     /* the running sums start over with this group */
    int flush;                       /* ... and end with it: add them to the float64 sums */
    int first_flush;                 /* the float64 sums start with this flush */
} group_sink;

static inline void sink_one_v(const group_sink *s, C *running, double *wide, int64_t i, V v)
{
    if (!running && !wide) return;   /* not wanted */
    if (!s->restart) v += vload_c(running + i);
    if (wide && s->flush)
        vd_add_widened(wide + i, v, s->first_flush);
    else if (running && s->stream)
        stream_c(running + i, v);
    else if (running)
        vstore_c(running + i, v);
}

static inline void sink_one_1(const group_sink *s, C *running, double *wide, int64_t i, C v)
{
    if (!running && !wide) return;
    if (!s->restart) v += running[i];
    if (wide && s->flush)
        wide[i] = (s->first_flush ? 0 : wide[i]) + (double)v;
    else if (running)
        running[i] = v;
}

static inline void sink_v(const group_sink *s, int64_t i, V w, V b)
{
    sink_one_v(s, s->running_w, s->wide_w, i, w);
    sink_one_v(s, s->running_b, s->wide_b, i, b);
}

static inline void sink_1(const group_sink *s, int64_t i, C w, C b)
{
    sink_one_1(s, s->running_w, s->wide_w, i, w);
    sink_one_1(s, s->running_b, s->wide_b, i, b);
}

/* Storage-type vectors in a 64-byte line of dx, and the most that a column
 * step of dx_group takes: a whole line (four vectors at most: float16/
 * bfloat16 at the baseline, which does not stream, take half a line), but
 * two lines where a vector is a line (float32/float64 at AVX-512).  Two
 * such vectors a step against one, A/B (bench/compare_builds.py) on an
 * Intel Xeon host, 2 threads: float32 (4096, 768) 0.89x the time (1 thread
 * 0.96x), (16384, 1024) 0.87x, (32768, 512) 0.94x, (65536, 256) 0.95x,
 * (64, 262144) 0.98x, (262144, 64) 1.01x to 1.04x; float64 (8192, 1024)
 * 1.00x; in cache, 1 thread, (256, 768) 1.01x, (20, 500) 1.01x.  Four
 * lost against two ((4096, 768) 1.09x, (65536, 256) 1.03x), and at AVX2 a
 * step of two lines lost against one ((4096, 768) 1.05x). */
#define LN_LINE_VECTORS (LN_LINE_ELEMENTS / VL)
#define LN_DX_MAX_VECTORS (LN_LINE_VECTORS == 1 ? 2 : LN_LINE_VECTORS < 4 ? LN_LINE_VECTORS : 4)

/* dx of `vectors` (at most LN_DX_MAX_VECTORS) adjacent column vectors at i
 * of a group of rows, with their dy*xhat and dy sums into the sink (see
 * dx_group).  Where the storage type narrows two at once (LN_HAS_STOREV2),
 * stored in pairs. */
static inline __attribute__((always_inline)) void dx_column_vectors(const E *x, const E *dy, E *dx, int64_t cols, int64_t count,
                                                                   const row_coefficients *c, int64_t i, const int vectors,
                                                                   const void *weight, int storage, const group_sink *sink,
                                                                   int stream, int64_t prefetch_at, int64_t prefetch_rows)
{
    if (prefetch_rows) {
        /* the next group's rows in order, as many lines as this step reads */
        const int64_t from = prefetch_at + i * prefetch_rows, to = from + vectors * VL * prefetch_rows;
        for (int64_t at = from; at < to; at += LN_LINE_ELEMENTS) {
            __builtin_prefetch(x + at, 0, LN_PREFETCH_LOCALITY);
            __builtin_prefetch(dy + at, 0, LN_PREFETCH_LOCALITY);
        }
    }
    V w[LN_DX_MAX_VECTORS], acc_w[LN_DX_MAX_VECTORS], acc_b[LN_DX_MAX_VECTORS];
    for (int k = 0; k < vectors; k++) {
        w[k] = weight ? param_v(weight, storage, i + k * VL) : vbroadcast(1);
        acc_w[k] = acc_b[k] = vbroadcast(0);
    }
    for (int64_t g = 0; g < count; g++) {
        V result[LN_DX_MAX_VECTORS];
        for (int k = 0; k < vectors; k++) {
            const int64_t at = g * cols + i + k * VL;
            const V d = LOADV(dy + at);
            const V xhat = (LOADV(x + at) - vsplat(c[g].mean)) * vsplat(c[g].rstd);
            result[k] = vsplat(c[g].rstd) * vmuladd(xhat, vsplat(c[g].neg_mean_gx), vmuladd(d, w[k], vsplat(c[g].neg_mean_g)));
            /* one vector: stored before the sums are updated (after them,
             * float32 (20, 500) at AVX-512 took 1.1x the time) */
            if (vectors == 1) {
                if (stream) STREAMV(dx + at, result[0]);
                else STOREV(dx + at, result[0]);
            }
            acc_w[k] = vmuladd(d, xhat, acc_w[k]);
            acc_b[k] += d;
        }
        /* several vectors: stored here (the test in each loop, not one `if`
         * around both: that compiled differently and bfloat16 (16384, 1024)
         * at AVX2 took 1.07x the time) */
        E *const out = dx + g * cols + i;
        int k = 0;
#ifdef LN_HAS_STOREV2
        for (; vectors > 1 && k + 2 <= vectors; k += 2) {
            if (stream) STREAMV2(out + k * VL, result[k], result[k + 1]);
            else STOREV2(out + k * VL, result[k], result[k + 1]);
        }
#endif
        for (; vectors > 1 && k < vectors; k++) {
            if (stream) STREAMV(out + k * VL, result[k]);
            else STOREV(out + k * VL, result[k]);
        }
    }
    if (sink)
        for (int k = 0; k < vectors; k++) sink_v(sink, i + k * VL, acc_w[k], acc_b[k]);
}

/* dx over columns [begin, end) of a group of rows (at most LN_GROUP, or a
 * step of a group, see dx_step_rows; coefficients in c), column vector by
 * column vector, so that the rows' dy*xhat and dy sums stay in registers and
 * reach the sink once (sink NULL: dweight/dbias not wanted).  With
 * streaming, dx + begin is aligned to a line (dx_streamed, LN_LONG_CHUNK).
 * Meanwhile prefetch_rows rows from prefetch_at elements after the first
 * row's x (and dy) are prefetched, spread over the columns. */
static inline __attribute__((always_inline)) void dx_group(const ln_backward_args *a, int64_t first, int64_t count, const row_coefficients *c,
                     int64_t begin, int64_t end, const group_sink *sink, int stream, int64_t prefetch_at,
                     int64_t prefetch_rows)
{
    const int64_t cols = a->layout.reduce;
    const void *weight = a->weight;
    const int storage = a->params_in_storage_type;
    const E *x = (const E *)a->x + first * cols, *dy = (const E *)a->dy + first * cols;
    E *dx = (E *)a->dx + first * cols;
    int64_t i = begin;
    /* A whole line of each row per step, where a vector is less than a
     * line: the stores of a line then come one after another, not a row
     * group apart (streamed, a line written in parts a group apart went out
     * in parts).  A/B against a vector a step (bench/compare_builds.py),
     * 2 threads: (16384, 1024) float32 0.69x the time at AVX2, 0.48x at the
     * baseline; (4096, 768) 0.67x and 0.49x; (262144, 64) 0.79x and 0.69x;
     * (64, 262144) 0.92x and 0.70x; float64 (8192, 1024) 0.68x and 0.51x;
     * float16 (16384, 1024) 0.81x at AVX-512, 0.56x at AVX2, 0.92x at the
     * baseline; bfloat16 0.78x, 0.82x, 0.94x.  Stored, not streamed, too:
     * (20, 500) float32 0.93x at AVX2, 0.84x at the baseline. */
    if (LN_DX_MAX_VECTORS > 1)
        for (; i + LN_DX_MAX_VECTORS * VL <= end; i += LN_DX_MAX_VECTORS * VL)
            dx_column_vectors(x, dy, dx, cols, count, c, i, LN_DX_MAX_VECTORS, weight, storage, sink, stream, prefetch_at, prefetch_rows);
#ifdef LN_HAS_STOREV2
    for (; i + 2 * VL <= end; i += 2 * VL)
        dx_column_vectors(x, dy, dx, cols, count, c, i, 2, weight, storage, sink, stream, prefetch_at, prefetch_rows);
#endif
    for (; i + VL <= end; i += VL)
        dx_column_vectors(x, dy, dx, cols, count, c, i, 1, weight, storage, sink, stream, prefetch_at, prefetch_rows);
    for (; i < end; i++) {
        const C w = weight ? param_1(weight, storage, i) : 1;
        C acc_w = 0, acc_b = 0;
        for (int64_t g = 0; g < count; g++) {
            const int64_t at = g * cols + i;
            const C d = LOAD1(dy + at);
            const C xhat = (LOAD1(x + at) - c[g].mean) * c[g].rstd;
            STORE1(dx + at, c[g].rstd * smuladd(xhat, c[g].neg_mean_gx, smuladd(d, w, c[g].neg_mean_g)));
            acc_w = smuladd(d, xhat, acc_w);
            acc_b += d;
        }
        if (sink) sink_1(sink, i, acc_w, acc_b);
    }
}

/* dx_group over a group of `count` rows in steps of at most `step_rows`
 * (see dx_step_rows), each step's dweight/dbias sums chained to the next
 * through running sums: the group's own (sink->running_*), or `carry` (2 *
 * cols values) where it has none.  The first step takes the group's
 * restart, the last its flush and streaming; each step prefetches its share
 * of the next group's `next_rows` rows.  Most groups are one step. */
static inline __attribute__((always_inline)) void dx_group_in_steps(const ln_backward_args *a, int64_t first, int64_t count,
                                                                   const row_coefficients *c, int64_t begin, int64_t end,
                                                                   const group_sink *sink, int stream, int64_t next_rows,
                                                                   int64_t step_rows, C *carry)
{
    const int64_t cols = a->layout.reduce;
    for (int64_t s = 0; s < count; s += step_rows) {
        const int64_t step = count - s < step_rows ? count - s : step_rows, last_step = s + step == count;
        group_sink step_sink;
        if (sink) {
            step_sink = *sink;
            if (!step_sink.running_w && !step_sink.running_b) step_sink.running_w = carry, step_sink.running_b = carry + cols;
            step_sink.restart = s == 0 && sink->restart;
            step_sink.flush = last_step && sink->flush;
            step_sink.stream = last_step && sink->stream;
        }
        /* (the last step takes the rest: all of them, when it is the only one) */
        const int64_t ahead = next_rows - s, prefetch_rows = ahead < 0 ? 0 : last_step || ahead < step ? ahead : step;
        dx_group(a, first + s, step, c + s, begin, end, sink ? &step_sink : NULL, stream, count * cols, prefetch_rows);
    }
}

/* Row block b of a call's row blocks: its rows' sums and dx, group by group,
 * and their dweight/dbias sums into the block's float64 partial. */
static void backward_row_block(const ln_backward_args *a, int64_t b, int64_t rows_per_block, int64_t group,
                               int64_t dx_rows, double *partial, int stream, int prefetch)
{
    const int64_t rows = a->layout.outer, cols = a->layout.reduce;
    const int64_t first = b * rows_per_block;
    const int64_t last = first + rows_per_block < rows ? first + rows_per_block : rows;
    /* dweight/dbias sums carried from step to step (a group of more rows
     * than a step has fewer than LN_GROUP_ELEMENTS / LN_DX_ROWS_4K columns)
     * and from group to group for LN_CARRIED_ROWS rows, where rows fit */
    C carry[2 * (LN_GROUP_ELEMENTS / LN_DX_ROWS_4K)];
    const int carry_fits = 2 * cols <= (int64_t)(sizeof carry / sizeof carry[0]);
    const int64_t chain = carry_fits && group < LN_CARRIED_ROWS ? LN_CARRIED_ROWS / group : 1;
    for (int64_t g0 = first, index = 0; g0 < last; g0 += group, index++) {
        const int64_t count = last - g0 < group ? last - g0 : group;
        row_coefficients c[LN_GROUP];
        for (int64_t g = 0; g < count; g++) {
            const int64_t r = g0 + g;
            const E *x = (const E *)a->x + r * cols, *dy = (const E *)a->dy + r * cols;
            c[g] = coefficients(a, r, sum_row(x, dy, a->weight, a->params_in_storage_type, cols, row_mean(a, r),
                                              ((const C *)a->rstd)[r]));
        }
        /* the carry restarts with every chain's first group, and its last
         * (or the block's last group) adds it to the partial */
        const group_sink sink = {NULL, NULL, partial ? partial + 2 * b * cols : NULL,
                                 partial ? partial + (2 * b + 1) * cols : NULL, 0, index % chain == 0,
                                 index % chain == chain - 1 || g0 + count >= last, index < chain};
        const int64_t rows_after = rows - (g0 + count);
        const int64_t next_group = prefetch ? (rows_after < group ? rows_after : group) : 0;
        dx_group_in_steps(a, g0, count, c, 0, cols, partial ? &sink : NULL, stream, next_group, dx_rows, carry);
    }
}

/* Calls from memory take their rows one at a time rather than in groups:
 * the row sums, then dx (streamed) and the row's dy*xhat and dy added to a
 * compute-type carry in L1 (flushed to the block's float64 partial every
 * LN_CARRIED_ROWS rows), while the row ROW_PREFETCH_BYTES ahead is
 * prefetched into L1.  A group's dx pass reads 8 rows (up to 64 KB of x and
 * dy) back from L2 and streams to 8 rows at once; one row stays in L1.
 * Which calls:
 * - dx streamed (so x, dy and dx of LN_STREAM_MIN_BYTES and more, rows of
 *   whole lines): with dx stored, (2048, 1024) took 1.16x the time and
 *   (2731, 1000) 1.21x;
 * - so never in cache, where the carry's loads and stores, which a group
 *   amortizes over 8 rows, cost more ((1024, 768) took 1.24x);
 * - rows of at most ROW_AT_A_TIME_MAX_BYTES ((4096, 4096) float32, a 32 KB
 *   carry, took 1.11x);
 * - not half precision in rows under 1 KB, bound by its conversions
 *   ((262144, 64) float16 1.07x, bfloat16 1.12x, (65536, 256) float16
 *   1.12x), nor at the baseline (float16 (4096, 768) 1.05x).
 * dx has the same bits either way; dweight/dbias are summed in another
 * order (the choice depends on the shape only).  A/B against the groups
 * (bench/compare_builds.py), 2 threads, AVX-512 unless stated: float32
 * (4096, 768) 0.79x the time (AVX2 0.83x, baseline 0.94x, 1 thread 0.78x
 * to 0.80x), (16384, 1024) 0.89x, (32768, 512) 0.84x, (65536, 256) 0.80x,
 * (262144, 64) 0.68x, (8192, 2048) 0.94x; float64 (4096, 768) 0.81x;
 * float16 (16384, 1024) 0.79x, (8192, 768) 0.87x; bfloat16 (16384, 1024)
 * 0.85x.  Calls that keep the groups: (2048, 1024), (2731, 1000), float16
 * (4096, 768) (dx not streamed) 1.00x; (1024, 768) 1.00x. */
#define ROW_AT_A_TIME_MAX_BYTES 8192
#define ROW_AT_A_TIME_MAX_COLS (ROW_AT_A_TIME_MAX_BYTES / (int64_t)sizeof(C))
/* Prefetched this far ahead (at least one row).  A/B, float32 (4096, 768),
 * (16384, 1024), (65536, 256): 2 KB ahead 0.79x, 0.87x, 0.88x the time of
 * the groups; 4 KB 0.80x, 0.91x, 0.81x; 8 KB 0.84x, 0.90x, 0.81x; 16 KB
 * 0.94x, 0.99x, 0.93x.  Into L2 (LN_PREFETCH_LOCALITY) instead of L1,
 * (4096, 768) took 0.87x. */
#define ROW_PREFETCH_BYTES 4096
static inline int rows_one_at_a_time(const ln_backward_args *a)
{
    const int64_t cols = a->layout.reduce, row_bytes = cols * (int64_t)sizeof(E);
    const int half = LN_DT == LN_DT_FLOAT16 || LN_DT == LN_DT_BFLOAT16;
    /* dx_streamed implies inputs of far more than LN_PREFETCH_MIN_BYTES and rows
     * of whole lines, so of whole vectors (dx_row has no tail); the carry's
     * bound implies rows of at most ROW_AT_A_TIME_MAX_BYTES (sizeof(E) <=
     * sizeof(C)) */
    return dx_streamed(a) && cols % VL == 0 && cols <= ROW_AT_A_TIME_MAX_COLS
           && (!half || (LN_VECTOR_BYTES >= 32 && row_bytes >= 1024));
}

/* Row r's dx, and its dy*xhat and dy added to the carry (2 * cols values:
 * dweight's, then dbias's) or, with `flush`, added with the carry to the
 * float64 sums (wide_w, wide_b; NULL: not wanted).  `restart`: the carry
 * starts over with this row.  The row `ahead` rows on is prefetched into L1
 * (ahead 0: none).  dx is streamed, and rows are of whole vectors (see
 * rows_one_at_a_time). */
static inline __attribute__((always_inline)) void dx_row(const ln_backward_args *a, int64_t r, const row_coefficients *c,
                                                         C *carry, double *wide_w, double *wide_b, const int restart,
                                                         const int flush, int first_flush, int64_t ahead)
{
    const int64_t cols = a->layout.reduce;
    const void *weight = a->weight;
    const int storage = a->params_in_storage_type;
    const E *x = (const E *)a->x + r * cols, *dy = (const E *)a->dy + r * cols;
    E *dx = (E *)a->dx + r * cols;
    C *carry_w = carry, *carry_b = carry + cols;
    const int want = wide_w || wide_b;
    const int64_t next = ahead * cols;
    for (int64_t i = 0; i < cols; i += VL) {
        if (next && i % LN_LINE_ELEMENTS == 0) {
            __builtin_prefetch(x + next + i, 0, 3);
            __builtin_prefetch(dy + next + i, 0, 3);
        }
        const V d = LOADV(dy + i);
        const V xhat = (LOADV(x + i) - vsplat(c->mean)) * vsplat(c->rstd);
        const V w = weight ? param_v(weight, storage, i) : vbroadcast(1);
        const V result = vsplat(c->rstd) * vmuladd(xhat, vsplat(c->neg_mean_gx), vmuladd(d, w, vsplat(c->neg_mean_g)));
        STREAMV(dx + i, result);
        if (!want) continue;
        const V sum_w = vmuladd(d, xhat, restart ? vbroadcast(0) : vload_c(carry_w + i));
        const V sum_b = restart ? d : d + vload_c(carry_b + i);
        if (flush) {
            if (wide_w) vd_add_widened(wide_w + i, sum_w, first_flush);
            if (wide_b) vd_add_widened(wide_b + i, sum_b, first_flush);
        } else {
            vstore_c(carry_w + i, sum_w);
            vstore_c(carry_b + i, sum_b);
        }
    }
}

/* Row block b a row at a time (see rows_one_at_a_time), its dweight/dbias
 * into the block's float64 partial (NULL: not wanted). */
static void backward_row_block_by_rows(const ln_backward_args *a, int64_t b, int64_t rows_per_block, double *partial)
{
    const int64_t rows = a->layout.outer, cols = a->layout.reduce;
    const int64_t first = b * rows_per_block;
    const int64_t last = first + rows_per_block < rows ? first + rows_per_block : rows;
    const int64_t row_bytes = cols * (int64_t)sizeof(E), ahead = (ROW_PREFETCH_BYTES + row_bytes - 1) / row_bytes;
    double *wide_w = partial ? partial + 2 * b * cols : NULL, *wide_b = partial ? partial + (2 * b + 1) * cols : NULL;
    C carry[2 * ROW_AT_A_TIME_MAX_COLS] __attribute__((aligned(64)));
    for (int64_t r = first, index = 0; r < last; r++, index++) {
        const E *x = (const E *)a->x + r * cols, *dy = (const E *)a->dy + r * cols;
        const row_coefficients c = coefficients(a, r, sum_row(x, dy, a->weight, a->params_in_storage_type, cols,
                                                              row_mean(a, r), ((const C *)a->rstd)[r]));
        const int restart = index % LN_CARRIED_ROWS == 0, flush = index % LN_CARRIED_ROWS == LN_CARRIED_ROWS - 1 || r + 1 == last;
        const int first_flush = index < LN_CARRIED_ROWS;
        const int64_t prefetch = r + ahead < rows ? ahead : 0;
        /* the carry's four cases compiled apart, without a test per vector */
        if (restart && flush) dx_row(a, r, &c, carry, wide_w, wide_b, 1, 1, first_flush, prefetch);
        else if (restart) dx_row(a, r, &c, carry, wide_w, wide_b, 1, 0, first_flush, prefetch);
        else if (flush) dx_row(a, r, &c, carry, wide_w, wide_b, 0, 1, first_flush, prefetch);
        else dx_row(a, r, &c, carry, wide_w, wide_b, 0, 0, first_flush, prefetch);
    }
}

/* Many rows: threads take row blocks; each block owns a float64 partial. */
static int backward_row_blocks(const ln_backward_args *a)
{
    const int64_t rows = a->layout.outer, cols = a->layout.reduce;
    const int want_params = a->dweight || a->dbias;
    int64_t blocks = (rows + LN_MIN_BLOCK_ROWS - 1) / LN_MIN_BLOCK_ROWS;
    if (blocks > LN_MAX_ROW_BLOCKS) blocks = LN_MAX_ROW_BLOCKS;
    if (blocks * cols > LN_MAX_PARTIALS) blocks = LN_MAX_PARTIALS / cols > 1 ? LN_MAX_PARTIALS / cols : 1;
    const int64_t rows_per_block = (rows + blocks - 1) / blocks;
    blocks = (rows + rows_per_block - 1) / rows_per_block;
    /* a group's rows are read twice, so they should stay in L2 in between */
    const int64_t group = ln_rows_per_group(LN_GROUP_ELEMENTS, cols, LN_GROUP);
    const int64_t dx_rows = dx_step_rows(cols);
    /* Not zeroed: each block's first flush stores its partial (first_flush).
     * A calloc's memset of up to 16 MB ran on one thread before the threads
     * started, and evicted the inputs from L2.  A/B against calloc
     * (bench/compare_builds.py), 2 threads: (4096, 768) float32 0.91x and
     * 0.92x the time at AVX-512, 0.89x to 1.04x at AVX2 (four runs), 0.96x
     * at the baseline; (2048, 768) 0.87x, (512, 768) 0.91x, (256, 4096)
     * 0.85x, (16384, 1024) 0.97x, (262144, 64) 1.00x. */
    double *partial = want_params ? malloc((size_t)(2 * blocks * cols) * sizeof *partial) : NULL;
    if (want_params && !partial) return LN_ERROR_NO_MEMORY;
    const int stream = dx_streamed(a);
    const int prefetch = prefetch_row_groups(a);
    const int by_rows = rows_one_at_a_time(a);
#define LN_ROW_BLOCK(b)                                                                                    \
    do {                                                                                                   \
        if (by_rows) backward_row_block_by_rows(a, (b), rows_per_block, partial);                          \
        else backward_row_block(a, (b), rows_per_block, group, dx_rows, partial, stream, prefetch);       \
    } while (0)

    if (!ln_parallel_if(rows * cols, a->num_threads)) {
        /* small call: no OpenMP region at all, its start-up costs microseconds */
        for (int64_t b = 0; b < blocks; b++) LN_ROW_BLOCK(b);
        if (stream) ln_stream_fence();
        if (want_params) ln_sum_partials(a, partial, blocks, 0, cols);
        free(partial);
        return LN_OK;
    }
    const int64_t chunk = ln_dynamic_chunk(blocks, rows_per_block * cols, a->num_threads);
    #pragma omp parallel num_threads(a->num_threads)
    {
        #pragma omp for schedule(dynamic, chunk)
        for (int64_t b = 0; b < blocks; b++) LN_ROW_BLOCK(b);
        if (stream) ln_stream_fence();
        if (want_params) {
            ln_sum_partials_shared(a, partial, blocks);
        }
    }
#undef LN_ROW_BLOCK
    free(partial);
    return LN_OK;
}

/* Long rows: the rows go in small groups that the threads share.  For a
 * group: the row sums by (row, block) items, merged in block order; then dx
 * and the group's dweight/dbias sums by column chunks, each chunk taking the
 * group's rows in order while they are still in L2.  (Row blocks would read
 * and write a float64 partial of 2 * cols values for every long row.)
 * Measured (float32, 2 threads, against the row blocks): (64, 262144) 0.87x
 * the time, (256, 32768) 0.77x, (2048, 8192) 0.83x, but (4096, 5000) 1.16x. */
#define LN_LONG_ROW_ELEMENTS 8192
/* A group holds at most this many elements per array (at least one row):
 * x and dy of the group are read twice and should stay in L2 in between. */
#define LN_LONG_GROUP_ELEMENTS (1 << 17)
/* ... but rows of at most this many bytes go at least two to a group: the
 * group's dweight/dbias running sums (2 * cols values) are read and written
 * once per group, which for one row per group cost more than reading x and
 * dy back from L3 instead of L2.  Float32, 2 threads, on an AMD EPYC host:
 * (64, 262144) took 0.93x to 0.96x the time; (32, 524288) 1.04x, so longer
 * rows are not paired (but see LN_LONG_QUAD_MIN_BYTES). */
#define LN_LONG_PAIR_MAX_BYTES (1 << 20)
/* ... and rows whose pair of rows takes, with the running sums, at least
 * this many bytes (x and dy of two rows, 2 * cols compute-type sums) go four
 * to a group, whatever their length: that pair did not stay in a 2 MB L2
 * per thread anyway, and four rows read and write the running sums half as
 * often.  A/B (bench/compare_builds.py) on an Intel Xeon host (2 MB L2 a
 * core, 300 MB L3), 2 threads, AVX-512, against pairs (and single rows over
 * 1 MB): float32 (64, 262144) 0.89x to 0.93x the time (AVX2 0.87x to 0.91x,
 * 1 thread 0.89x to 0.96x), float16 0.90x to 0.93x; (32, 524288) 0.74x,
 * (8, 2097152) 0.66x to 0.68x.  Below it, pairs stay: (128, 131072)
 * float32 in fours took 1.11x (in eights 1.14x; a pair and its sums, 3 MB,
 * fit the two L2s).  Groups of eight gained 2% to 4% more on this host,
 * whose L3 holds their 16 to 64 MB; an L3 of 32 MB would not. */
#define LN_LONG_QUAD_MIN_BYTES ((int64_t)4 << 20)
static inline int64_t long_row_group(int64_t cols)
{
    const int64_t row_bytes = cols * (int64_t)sizeof(E), pair_bytes = 2 * 2 * row_bytes + 2 * cols * (int64_t)sizeof(C);
    int64_t group = ln_rows_per_group(LN_LONG_GROUP_ELEMENTS, cols, LN_GROUP);
    if (group < 2 && row_bytes <= LN_LONG_PAIR_MAX_BYTES) group = 2;
    if (group < 4 && pair_bytes >= LN_LONG_QUAD_MIN_BYTES) group = 4;
    return group;
}
/* Rows summed in the compute-type running sums before they go to float64:
 * each flush reads and writes 2 * cols float64 values.  16 rather than 8:
 * (64, 262144) float32, 2 threads, 0.93x the time (32: 0.90x-0.92x); the
 * float32 dweight's worst relative error there went from 3.1e-6 to 5.7e-6
 * (5.1e-6 with 32), against 1e-5 required. */
#define LN_LONG_FLUSH_ROWS 16
/* Columns per dx work item. */
#define LN_LONG_CHUNK 1024

static int backward_long_rows(const ln_backward_args *a)
{
    const int64_t rows = a->layout.outer, cols = a->layout.reduce;
    const int64_t blocks_per_row = (cols + LN_BLOCK - 1) / LN_BLOCK;
    const int64_t chunks = (cols + LN_LONG_CHUNK - 1) / LN_LONG_CHUNK;
    const void *weight = a->weight;
    const int storage = a->params_in_storage_type;
    const int64_t group = long_row_group(cols);
    /* dweight/dbias: a few rows are summed in the compute type, in place in
     * the result; more rows are summed in float64, with compute-type running
     * sums of LN_LONG_FLUSH_ROWS rows in between (the choice depends on the shape only). */
    const int wide = rows >= LN_SPLIT_BELOW_ROWS && (a->dweight || a->dbias);
    row_sums *partial = malloc((size_t)(2 * group * blocks_per_row) * sizeof *partial);
    double *wide_sums = wide ? malloc((size_t)(2 * cols) * sizeof *wide_sums) : NULL;
    if (!partial || (wide && !wide_sums)) { free(partial); free(wide_sums); return LN_ERROR_NO_MEMORY; }
    const int64_t dx_rows = dx_step_rows(cols);
    const int stream = dx_streamed(a);
    /* one group of rows (a single long row, say) writes dweight/dbias once */
    const int stream_params = !wide && rows <= group && params_streamed(a);
    /* float64 sums: the groups' compute-type sums go there every
     * LN_LONG_FLUSH_ROWS rows */
    const int64_t groups_per_flush = LN_LONG_FLUSH_ROWS / group;

    /* One barrier per group, after its row sums, rather than three (the sums,
     * the merge by one thread, dx): every thread merges the sums itself (the
     * same adds in the same order, so the same bits), and dx ends without a
     * barrier.  That is safe because
     * - the row sums alternate between two buffers: a group's sums are written
     *   only after every thread has passed the previous group's barrier, so has
     *   finished merging the buffer's last group (two groups before);
     * - a column chunk's dweight/dbias running sums are read and written by the
     *   same thread in every group (a static schedule of the same count);
     * - the float64 merge at the end waits for a barrier of its own.
     * A/B against three barriers (bench/compare_builds.py), 2 threads, float32:
     * (64, 262144) 0.96x and 0.95x the time at AVX-512, 0.99x at AVX2;
     * (256, 32768) 0.97x, (2048, 8192) 0.97x, (8, 2097152) 0.96x,
     * (1, 16777216) 0.99x; 1 thread (64, 262144) 0.99x. */
    #pragma omp parallel num_threads(a->num_threads) if (ln_parallel_if(rows * cols, a->num_threads))
    {
        row_coefficients coef[LN_GROUP];
        for (int64_t g0 = 0; g0 < rows; g0 += group) {
            const int64_t count = rows - g0 < group ? rows - g0 : group;
            const int64_t items = count * blocks_per_row;
            row_sums *sums = partial + (g0 / group % 2) * group * blocks_per_row;   /* two buffers, see above */
            /* items by block, then row: a thread sums the columns it takes
             * for dx below, so their lines stay in its own caches */
            #pragma omp for schedule(static)
            for (int64_t item = 0; item < items; item++) {
                const int64_t g = item % count, b = item / count;
                const int64_t r = g0 + g, start = b * LN_BLOCK;
                const int64_t offset = r * cols + start;
                sums[g * blocks_per_row + b] = block_sums((const E *)a->x + offset, (const E *)a->dy + offset,
                                           param_at(weight, storage, start), storage,
                                           cols - start < LN_BLOCK ? cols - start : LN_BLOCK,
                                           row_mean(a, r), ((const C *)a->rstd)[r]);
            }
            /* every thread merges the row sums, into its own coefficients */
            for (int64_t g = 0; g < count; g++) {
                row_sums s = {0, 0};
                for (int64_t b = 0; b < blocks_per_row; b++) {
                    s.sum_g += sums[g * blocks_per_row + b].sum_g;
                    s.sum_g_xhat += sums[g * blocks_per_row + b].sum_g_xhat;
                }
                coef[g] = coefficients(a, g0 + g, s);
            }
            const int64_t index = g0 / group;    /* this group's number */
            const group_sink sink = {(C *)a->dweight, (C *)a->dbias,
                                     wide && a->dweight ? wide_sums : NULL, wide && a->dbias ? wide_sums + cols : NULL,
                                     stream_params, index % groups_per_flush == 0,
                                     index % groups_per_flush == groups_per_flush - 1 || g0 + group >= rows,
                                     index < groups_per_flush};
            #pragma omp for schedule(static) nowait
            for (int64_t chunk = 0; chunk < chunks; chunk++) {
                const int64_t begin = chunk * LN_LONG_CHUNK;
                dx_group_in_steps(a, g0, count, coef, begin, cols - begin < LN_LONG_CHUNK ? cols : begin + LN_LONG_CHUNK,
                                  a->dweight || a->dbias ? &sink : NULL, stream, 0, dx_rows, NULL);
            }
        }
        if (stream || stream_params) ln_stream_fence();
        #pragma omp barrier
        if (wide) ln_sum_partials_shared(a, wide_sums, 1);
    }
    free(partial);
    free(wide_sums);
    return LN_OK;
}

int FN(backward_rows)(const ln_backward_args *a)
{
    const int64_t rows = a->layout.outer, cols = a->layout.reduce;
    if (rows < 0 || cols <= 0 || a->layout.inner != 1 || !a->rstd) return LN_ERROR_ARGUMENT;
    if (a->mode == LN_MODE_LAYER_NORM && !a->mean) return LN_ERROR_ARGUMENT;
    const int long_rows = rows < LN_SPLIT_BELOW_ROWS ? cols > LN_BLOCK : cols >= LN_LONG_ROW_ELEMENTS;
    if (long_rows && rows * cols >= LN_PARALLEL_MIN_ELEMENTS)
        return backward_long_rows(a);
    return backward_row_blocks(a);
}
