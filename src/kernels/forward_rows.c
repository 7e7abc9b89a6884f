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

/* Where the forward streams its outputs (see ln_stream_rows), and whether
 * it prefetches the next row group's inputs. */
typedef struct {
    int y;     /* y */
    int staged; /* y's rows go through an L1 buffer and each row group is
                * streamed as one span (see stage_row_outputs) */
    int sum;   /* the fused add's sum_out, which is then never read back: the
                * statistics and y recompute x + residual (the same values),
                * so x and residual must not be overwritten by y or sum_out */
    int prefetch; /* a call from memory (see prefetch_row_groups): the next
                   * group's rows are prefetched where y streams or is staged
                   * (and for bfloat16, PREFETCHES_FOR_STORED_Y) */
    int descending; /* y is stored just ahead of the normalize pass's inputs,
                     * or one row ahead: 1 reverse order, 2 no pairs of rows
                     * (see ln_stores_alias_next_loads) */
    int sum_descending; /* the fused add's sum is stored just ahead of x or
                         * residual: each row's add in reverse (add_span) */
} memory_plan;

/* The shortest rows whose outputs stream (ln_stream_rows decides the rest).
 * float32/float64 at AVX2 and AVX-512, any: (262144, 64) float32, 2
 * threads, y aligned, took 0.86x the time at AVX-512 (float64 0.69x, rms
 * 0.88x, fused add 0.79x), 0.70x to 0.77x at AVX2 (float64 0.65x, rms 0.78x,
 * fused add 0.73x; (65536, 256) 0.59x, 1 thread 0.58x).  (An earlier
 * measurement had AVX2 at 1.09x, when streaming began at y's first 32-byte
 * vector rather than its first line: see LN_STREAMED_SPAN.)  Elsewhere rows
 * of 2 KB: (262144, 64) took 1.04x at the baseline (four stores a line),
 * float16 1.07x at AVX2 and 1.03x at AVX-512, bfloat16 1.02x to 1.03x; rows
 * of 2 KB gained: (32768, 512) float32 0.98x at the baseline, (16384, 1024)
 * float16 0.89x to 0.94x at AVX-512, 0.87x at AVX2, bfloat16 0.92x to 0.96x
 * at AVX-512.  bfloat16 at AVX2, bound by its rounding, streams in pairs of
 * vectors (STREAMV2, one NaN test): (16384, 1024) 0.94x to 0.95x the time of
 * not streaming, (64, 262144) 0.87x to 0.88x; with y 16 bytes off a line
 * 1.01x to 1.05x and 0.87x.  (The long-row split streams by ln_stream_rows
 * alone: without streaming, bfloat16 (1, 16777216) took 1.17x at AVX2.) */
#if LN_VECTOR_BYTES >= 32 && (LN_DT == LN_DT_FLOAT32 || LN_DT == LN_DT_FLOAT64)
#define STREAMED_ROW_MIN_BYTES 0
#define STAGES_ROWS 1      /* see stage_row_outputs */
#else
#define STREAMED_ROW_MIN_BYTES 2048
#define STAGES_ROWS (LN_VECTOR_BYTES >= 32 && !LN_ROUNDING_BOUND)
#endif
/* Whether the fused add's sum streams along with y (memory_plan.sum).  Not
 * where LN_ROUNDING_BOUND: recomputing the rounded x + residual in both
 * passes costs more than the sum's read-for-ownership, bfloat16 (16384, 1024)
 * at AVX2 took 2.04x the time of streaming y alone. */
#define SUM_STREAMS (!LN_ROUNDING_BOUND)
static inline int stream_row_outputs(const void *y, int64_t rows, int64_t cols, int arrays)
{
    return ln_stream_rows(y, rows, cols, arrays) && cols * (int64_t)sizeof(E) >= STREAMED_ROW_MIN_BYTES;
}

/* The fused add's sum streams (with y) as y would, and float32/float64
 * sums also off a line in rows of at least STREAMED_SUM_OFF_LINE_MIN_BYTES:
 * LN_STREAMED_SPAN stores a row's partial lines at both ends with ordinary
 * stores, so no line is partly streamed.  A user's sum_out from
 * numpy.empty_like lies 16 bytes off a line.  A/B against not streaming it
 * (bench/compare_builds.py --sum-ahead 4112: 16 bytes off a line, nothing
 * aliased), 2 threads: float32 (4096, 768) 0.77x to 0.78x the time at
 * AVX-512, 0.73x at AVX2, 0.96x at the baseline, 1 thread 0.78x;
 * (16384, 512) 0.82x; (65536, 256) 0.97x; float64 (8192, 256) 0.87x.
 * Half precision lost: float16 (16384, 1024) 1.14x, bfloat16 1.27x.
 * Where y is staged (off a line too) rather than streamed, the sum streams
 * in rows of STREAMED_SUM_STAGED_MIN_BYTES and more (--output-offset 16,
 * against not streaming): (4096, 768) 0.72x at AVX-512, 0.67x at AVX2,
 * (16384, 512) 0.87x; rows of 1 KB lost ((65536, 256) 1.05x). */
#define STREAMED_SUM_OFF_LINE_MIN_BYTES 1024
#define STREAMED_SUM_STAGED_MIN_BYTES 2048
#define STREAMS_SUMS_OFF_LINE (LN_DT == LN_DT_FLOAT32 || LN_DT == LN_DT_FLOAT64)
static inline int stream_row_sums(const void *sum_out, int64_t rows, int64_t cols, int arrays)
{
    const int64_t row_bytes = cols * (int64_t)sizeof(E);
    if (stream_row_outputs(sum_out, rows, cols, arrays)) return 1;
    return LN_CAN_STREAM && STREAMS_SUMS_OFF_LINE && arrays * rows * row_bytes >= LN_STREAM_MIN_BYTES
           && row_bytes % 64 == 0 && row_bytes >= STREAMED_SUM_OFF_LINE_MIN_BYTES && (uintptr_t)sum_out % sizeof(E) == 0;
}

/* Rows shorter than 4 KB, of whole lines, that stream_row_outputs does not
 * stream (y off a line; half-precision rows under 2 KB wherever y starts):
 * each row group is normalized into an L1 buffer with the ordinary stores
 * (the same bits) and streamed from there as one span, whose only partly
 * written lines are its two ends.  float32 and float64 at AVX2 and AVX-512,
 * measured with y 16 bytes off a line (numpy.empty's usual address), 2
 * threads: AVX-512 (262144, 64) float32 0.82x to 0.87x the time, float64
 * 0.77x; AVX2 (262144, 64) 0.93x, (65536, 256) 0.76x, float64 (131072, 64)
 * 0.78x, the fused add 0.94x (1 thread 1.03x).  Rows not of whole lines
 * lost ((65536, 250) 1.04x to 1.05x at AVX-512), so they are not staged.
 * At the baseline staging lost (1.17x to 1.24x).  Half precision is staged
 * since the buffer is copied as bytes (stream_staged): through LOADV and
 * STREAMV, which converted each vector to float32 and back, float16 at
 * AVX-512 had lost (1.00x to 1.04x).  A/B against not staging, on an Intel
 * Xeon host (the figures above came from an AMD EPYC one), 2 threads,
 * AVX-512, y aligned: (262144, 64) float16 0.82x, bfloat16 0.86x to 0.92x,
 * rms 0.81x and 0.85x to 0.89x, fused add float16 0.87x; (131072, 128)
 * bfloat16 0.92x, fused add float16 0.82x, float16 at 1 thread 0.74x;
 * (32768, 512) float16 0.77x, bfloat16 0.99x; (65536, 256) float16 0.81x to
 * 0.94x, bfloat16 0.97x to 1.01x, rms 0.99x to 1.01x (once each 1.12x and
 * 1.16x: this host's noise, or a loss).  y off a line: (262144, 64) float16
 * 0.90x to 0.97x, (16384, 1024) float16 0.81x to 0.83x, bfloat16 0.98x.
 * AVX2 (262144, 64) float16 0.80x (1 thread 0.94x); not bfloat16 at AVX2
 * (LN_ROUNDING_BOUND): 1.09x, (65536, 256) 1.16x. */
#define LN_STAGED_BYTES (LN_ROW_GROUP * 4096)
static inline int stage_row_outputs(const void *y, int64_t rows, int64_t cols, int arrays)
{
    const int64_t row_bytes = cols * (int64_t)sizeof(E);
    return LN_CAN_STREAM && STAGES_ROWS && arrays * rows * row_bytes >= LN_STREAM_MIN_BYTES && row_bytes < 4096
           && row_bytes % 64 == 0 && (uintptr_t)y % sizeof(E) == 0 && !stream_row_outputs(y, rows, cols, arrays);
}

/* While a row group is normalized, each of its rows prefetches the same row
 * of the next group (x, and the fused add's residual) into L2
 * (LN_PREFETCH_LOCALITY): the next group's first pass then finds its lines
 * there instead of waiting on the hardware prefetcher, which is idle through
 * this group's in-cache passes.
 * The same bits: only where the data comes from changes.  A/B
 * (bench/compare_builds.py), 2 threads, AVX-512 unless stated:
 * (16384, 1024) float32 0.84x to 0.87x the time (AVX2 0.86x, baseline
 * 0.90x), float16 0.71x (AVX2 0.88x), bfloat16 0.71x, rms 0.87x; (4096, 768)
 * float32 0.81x to 0.85x (AVX2 0.84x); (65536, 256) float32 0.80x;
 * (32768, 512) float32 0.87x, float64 0.93x; (8192, 2048) float16 0.86x.
 * Where it does not pay, it is off:
 * - groups whose inputs take more than LN_PREFETCH_GROUP_BYTES ((4096, 4096)
 *   float32, 128 KB groups, took 1.1x to 1.2x prefetching x alone into L1;
 *   into L2, with groups up to 256 KB prefetched, 1.14x, float16 1.27x,
 *   (2048, 8192) 1.09x, the fused add (16384, 1024) 1.03x);
 * - rows under LN_PREFETCH_MIN_ROW_BYTES: half-precision short rows are
 *   bound by their arithmetic, not their reads ((131072, 128) float16 took
 *   1.17x, (65536, 256) 1.08x; rows of 1 KB were even, 0.95x to 1.0x);
 *   float32 (262144, 64) was even (1.01x); into L2 (262144, 64) float16
 *   1.04x, bfloat16 1.01x, float32 0.99x, (131072, 128) float16 1.02x;
 * - calls whose inputs take less than LN_PREFETCH_MIN_BYTES, which a loop
 *   finds in the L3 ((4096, 768) float16 1.04x; float32 (2048, 768) 0.98x;
 *   into L2 1.02x and 0.98x);
 * - calls whose y is stored, neither streamed nor staged (x and y together
 *   under LN_STREAM_MIN_BYTES), though they still count as calls from
 *   memory (memory_plan.prefetch: no paired rows, no kept rows): on an Intel
 *   Xeon host with a 300 MiB L3 the hardware prefetcher kept up with those,
 *   and with no prefetch (4096, 768) float32 took 0.89x the time (AVX2
 *   0.83x, baseline 0.85x; float16 (8192, 768) 0.93x); with the paired
 *   rows of calls in cache as well, AVX2 took 1.18x.  bfloat16 keeps it
 *   (PREFETCHES_FOR_STORED_Y): without, (8192, 768) took 1.06x (AVX2 1.10x),
 *   (6000, 1000) 1.06x.
 *   Where y streams the prefetch still paid there: without it (65536, 256)
 *   took 1.05x, bfloat16 (16384, 1024) 1.09x.  (So the (4096, 768) gain
 *   above no longer held on this host.)
 * The fused add with its two inputs prefetches only groups of rows up to
 * 2 KB: at 64 KB, (16384, 1024) float32 was even (1.00x). */
#define LN_PREFETCH_GROUP_BYTES 32768
#define PREFETCHES_FOR_STORED_Y (LN_DT == LN_DT_BFLOAT16)
#if LN_DT == LN_DT_FLOAT16 || LN_DT == LN_DT_BFLOAT16
#define LN_PREFETCH_MIN_ROW_BYTES 1024
#else
#define LN_PREFETCH_MIN_ROW_BYTES 512
#endif
static inline int prefetch_row_groups(const ln_forward_args *a, int64_t group)
{
    const int64_t row_bytes = a->layout.reduce * (int64_t)sizeof(E), inputs = a->residual ? 2 : 1;
    return inputs * group * row_bytes <= LN_PREFETCH_GROUP_BYTES && row_bytes >= LN_PREFETCH_MIN_ROW_BYTES
           && inputs * a->layout.outer * row_bytes >= LN_PREFETCH_MIN_BYTES;
}

static inline void prefetch_row(const E *row, int64_t bytes)
{
    for (int64_t line = 0; line < bytes; line += 64) __builtin_prefetch((const char *)row + line, 0, LN_PREFETCH_LOCALITY);
    __builtin_prefetch((const char *)row + bytes - 1, 0, LN_PREFETCH_LOCALITY);   /* a row off a line ends in one more */
}

static inline void prefetch_next_group_row(const ln_forward_args *a, int64_t row)
{
    if (row >= a->layout.outer) return;
    const int64_t cols = a->layout.reduce, row_bytes = cols * (int64_t)sizeof(E);
    prefetch_row((const E *)a->x + row * cols, row_bytes);
    if (a->residual) prefetch_row((const E *)a->residual + row * cols, row_bytes);
}

/* How far ahead y's stores may lie and take the reverse order instead
 * (normalize_span_descending).  Calls from memory (those that prefetch)
 * pay for the reverse order where nothing aliases: (4096, 768) float32,
 * 2 threads, 1.05x to 1.09x the time of ascending at d = 256 to 1024, so
 * there the window ends where the stall has faded; in cache, the reverse
 * order costs nothing measurable. */
static inline int64_t alias_window(int prefetch)
{
    if (!prefetch) return 512;
    return sizeof(E) == 4 ? 128 : 256;
}

/* Add each row's fused-add sum in reverse (add_span)?  Where the sum lies
 * just ahead of x or residual (96 bytes for 4-byte types, 192 for others),
 * in calls from memory (x and residual together at least
 * LN_PREFETCH_MIN_BYTES).  A/B against ascending at each d, the sum
 * d bytes ahead of x modulo 1 MB (bench/compare_builds.py --sum-ahead d),
 * (4096, 768), 2 threads, AVX-512: float32 d = 16 and 32 (the sum off a line, not
 * streamed) 0.91x the time, 64 0.83x, 128 1.05x, 192 to 512 1.10x to 1.12x
 * (where nothing aliases, the reverse order costs that much); float16 32
 * 0.39x, 64 0.66x, 128 0.88x, 192 0.97x, 256 1.00x; float64 32 0.75x,
 * 64 0.72x, 128 0.93x, 192 0.99x, 256 1.02x; (16384, 1024) float32 16 0.83x,
 * 64 0.89x.  In cache the stall costs little ((256, 768), 1 thread, 1.01x
 * to 1.05x), and the reverse add of a sum off a line lost there (1.13x:
 * the statistics pass then reads the row's start back from stores still in
 * flight), so calls in cache keep the ascending add. */
static inline int adds_sums_descending(const ln_forward_args *a)
{
    const int64_t inputs_bytes = 2 * a->layout.outer * a->layout.reduce * (int64_t)sizeof(E);
    return inputs_bytes >= LN_PREFETCH_MIN_BYTES && ln_sum_aliases_sources(a, sizeof(E) == 4 ? 96 : 192);
}

static inline memory_plan plan_memory(const ln_forward_args *a, int64_t group)
{
    const int64_t rows = a->layout.outer, cols = a->layout.reduce, bytes = rows * cols * (int64_t)sizeof(E);
    const int arrays = ln_forward_arrays_moved(a);
    memory_plan plan = {stream_row_outputs(a->y, rows, cols, arrays), stage_row_outputs(a->y, rows, cols, arrays), 0,
                        prefetch_row_groups(a, group), 0, 0};
    if ((plan.y || (plan.staged && cols * (int64_t)sizeof(E) >= STREAMED_SUM_STAGED_MIN_BYTES)) && a->residual
        && SUM_STREAMS)
        plan.sum = stream_row_sums(a->sum_out, rows, cols, arrays) && ln_outputs_apart_from_inputs(a, bytes);
    /* (y in place, 0 bytes ahead, is not: every load of x comes before the
     * store that matches it) */
    if (!plan.y && !plan.staged) {
        if (ln_y_aliases_sources(a, plan.sum, 1, alias_window(plan.prefetch))) plan.descending = 1;
        /* rows one apart: row g's stores would alias row g + 1's loads of
         * the same iteration of normalize_span_pair */
        else if (ln_y_aliases_sources(a, plan.sum, cols * (int64_t)sizeof(E), 512)) plan.descending = 2;
    }
    plan.sum_descending = adds_sums_descending(a);
    return plan;
}

/* Row r's data: x, or the fused add's x + residual, as (data, addend) for
 * load_or_sum: the stored sum, or (sum streamed) x and residual. */
typedef struct { const E *data, *addend; } row_data;

static inline __attribute__((always_inline)) row_data row_source(const ln_forward_args *a, int64_t offset, int sum_streamed)
{
    if (!a->residual) return (row_data){(const E *)a->x + offset, NULL};
    if (sum_streamed) return (row_data){(const E *)a->x + offset, (const E *)a->residual + offset};
    return (row_data){(const E *)a->sum_out + offset, NULL};
}

/* The row's first stored value, the shift of its Welford moments.  Read it
 * before the fused add writes sum_out, which may alias the residual. */
static inline C row_shift(const ln_forward_args *a, int64_t offset)
{
    const E *x = (const E *)a->x + offset;
    return a->residual ? load1_or_sum(x, (const E *)a->residual + offset, 0) : LOAD1(x);
}

/* One block's statistics: Welford moments of the shifted data (layer norm),
 * or the sum of squares in m2 (RMS norm). */
static inline __attribute__((always_inline)) ln_moments block_statistics(row_data src, int64_t start, int64_t len, C shift, const C *recip, int rms)
{
    const E *addend = src.addend ? src.addend + start : NULL;
    if (rms) return (ln_moments){(double)len, 0, block_sum_squares(src.data + start, addend, len)};
    return block_welford(src.data + start, addend, len, shift, recip);
}

/* Blocks merge in block order: Chan's formula, or a plain sum for RMS. */
static inline void merge_statistics(ln_moments *acc, ln_moments part, int rms)
{
    if (rms) {
        acc->n += part.n;
        acc->m2 += part.m2;
    } else {
        chan_merge(acc, part);
    }
}

/* The most rows finished together: a row group, or every row of the split path. */
#define LN_MAX_FINISHED_ROWS LN_SPLIT_BELOW_ROWS

/* Doubles in one vector register at this level. */
#define LN_FINISH_VECTOR (LN_VECTOR_BYTES / 8)
_Static_assert(LN_MAX_FINISHED_ROWS % LN_FINISH_VECTOR == 0, "finish_rows rounds row counts up to whole vectors");

/* rstd (1/rms for RMS) of rows first..first+count-1 from their merged
 * statistics, their mean/rstd outputs and normalize-pass constants.  The
 * divides and square roots of all rows come first, off the rows' paths. */
static void finish_rows(const ln_forward_args *a, int64_t first, int64_t count, const C *shift,
                        const ln_moments *stats, row_transform *t)
{
    const int rms = a->mode == LN_MODE_RMS_NORM;
    const double inv_n = 1.0 / (double)a->layout.reduce;
    /* whole vectors of rows (the unused slots at 1), so that the square
     * roots and divides are vector instructions; each lane rounds as the
     * scalar ones do */
    const int64_t slots = (count + LN_FINISH_VECTOR - 1) / LN_FINISH_VECTOR * LN_FINISH_VECTOR;
    double variance[LN_MAX_FINISHED_ROWS], rstd[LN_MAX_FINISHED_ROWS];
    for (int64_t g = 0; g < count; g++) variance[g] = stats[g].m2 * inv_n + a->eps;
    for (int64_t g = count; g < slots; g++) variance[g] = 1.0;
    for (int64_t g = 0; g < slots; g++) rstd[g] = 1.0 / sqrt(variance[g]);
    for (int64_t g = 0; g < count; g++) {
        const int64_t r = first + g;
        t[g] = (row_transform){shift[g], rms ? (C)0 : (C)stats[g].mean, (C)rstd[g]};
        if (a->rstd) ((C *)a->rstd)[r] = (C)rstd[g];
        if (a->mean && !rms) ((C *)a->mean)[r] = (C)((double)shift[g] + stats[g].mean);
    }
}

/* Rows handled together: their moments first, then one finish for all, then
 * the normalize pass of each row, still in cache.  Each row's arithmetic is
 * its own. */
#define LN_ROW_GROUP 8
/* ... fewer for long rows: a group's rows are read twice, so they should
 * still be in L2 for the second read (measured on (64, 262144) float32, 2
 * threads: 1-row groups take 0.86x to 0.92x the time of 8-row groups). */
#define LN_ROW_GROUP_ELEMENTS 32768
/* Rows of at most LN_SHORT_GROUP_MAX_BYTES that take short_rows_statistics
 * go 16 to a group, folded as two sets of 8: on such rows a group's time is
 * set by chains of latency (the lane folds, the mean's divide, rstd's square
 * root and divide), which the other set's work now fills.  The same bits
 * (each row's arithmetic is its own).  A/B (bench/compare_builds.py), 2
 * threads, against 8-row groups, AVX-512: (262144, 64) float16 0.89x the
 * time, bfloat16 0.84x to 0.89x, float32 1.03x to 1.05x (1.07x staged),
 * rms float16 0.81x, fused add float16 0.92x; (524288, 32) float32 0.85x,
 * float16 1.02x; (131072, 128) float16 0.96x, bfloat16 1.03x.  AVX2
 * (262144, 64): float32 0.89x, float16 0.96x, bfloat16 0.92x.  Float32
 * rows of 400 and 512 bytes lost (1.04x to 1.13x, measured in one build). */
#define LN_SHORT_ROW_GROUP 16
#define LN_SHORT_GROUP_MAX_BYTES 256
#define LN_MAX_ROW_GROUP LN_SHORT_ROW_GROUP
_Static_assert(LN_MAX_ROW_GROUP <= LN_MAX_FINISHED_ROWS, "a row group must fit finish_rows' buffers");
_Static_assert(LN_ROW_GROUP == 8 && LN_SHORT_ROW_GROUP == 16, "short_rows_statistics folds one or two sets of 8 rows");
_Static_assert(LN_SHORT_ROW_GROUP * LN_SHORT_GROUP_MAX_BYTES <= LN_STAGED_BYTES, "a short-row group must fit the staging buffer");

/* The fused add's sum_out for the row at `offset` (nothing without one). */
static inline void store_row_sum(const ln_forward_args *a, int64_t offset, int sum_streamed, int sum_descending)
{
    if (a->residual)
        add_span((const E *)a->x + offset, (const E *)a->residual + offset, (E *)a->sum_out + offset,
                 a->layout.reduce, sum_streamed, sum_descending);
}

/* Row r's shift (0 for RMS), read before its fused add, then the add. */
static inline __attribute__((always_inline)) C prepare_row(const ln_forward_args *a, int64_t r, int sum_streamed,
                                                          int sum_descending, int rms)
{
    const int64_t offset = r * a->layout.reduce;
    const C shift = rms ? 0 : row_shift(a, offset);
    store_row_sum(a, offset, sum_streamed, sum_descending);
    return shift;
}

/* Rows up to this many elements take short_rows_statistics, at the AVX2 and
 * AVX-512 levels in float32 compute (forward, 2 threads, against Welford:
 * (262144, 64) float16 0.78x the time, bfloat16 0.83x, float32 0.94x;
 * (16384, 1024) float32 0.89x, float16 0.84x).  Not for float64: 8 lanes
 * or fewer make Welford's lane merge cheap, and its rows are twice the bytes
 * ((262144, 64) 1.04x, (65536, 256) 1.05x-1.13x).  Not at the baseline
 * level: with 4 lanes and float16 converted in integer code the extra pass
 * costs more than it saves (float32 (16384, 1024) 1.26x, (32768, 512) 1.28x,
 * float16 (262144, 64) 1.18x).  Nor for longer rows, whose per-row costs are
 * spread over more elements (AVX2 float16 (8192, 2048) 1.15x).  The one
 * loss kept: the float32 fused add on (262144, 64), four arrays streamed
 * from memory, took 1.08x to 1.13x the time; it stays on this path because
 * add_layer_norm(x, r) must give the bits of layer_norm(x + r). */
#if LN_VECTOR_BYTES >= 32 && LN_DT != LN_DT_FLOAT64
#define LN_SHORT_ROW_MAX_COLS 1024
#else
#define LN_SHORT_ROW_MAX_COLS 0
#endif

/* Layer norm rows of at least LN_ONE_PASS_MIN_COLS on the short-row path
 * (float32, float16 and bfloat16 at AVX2 and AVX-512) take both moments in
 * one pass, sum (x - shift) and sum (x - shift)^2, with the mean of the
 * row's first LN_SHIFT_VECTORS vectors as the shift.  Then
 * m2 = sum d^2 - n mean(d)^2 loses to cancellation the factor
 * sum d^2 / m2 = 1 + ((shift - mean) / sd)^2 (never more than
 * cols / (LN_SHIFT_VECTORS * VL)), so rows where that exceeds
 * LN_ONE_PASS_MAX_SPREAD (a trend, outliers among the first values, an
 * overflow) take the second pass as before, from the same shift.  The
 * second pass loaded x again (and converted half precision): rows in cache
 * and half-precision rows are bound by that arithmetic, not by memory.
 * A/B (bench/compare_builds.py) against two passes, 2 threads, AVX-512
 * (the half-precision (65536, 256) figures and the lower ends of the
 * half-precision ranges with the first vector's mean as the shift):
 * float16 (4096, 768) 0.82x to 0.85x the time, (16384, 1024) 0.84x,
 * (65536, 256) 0.87x, (131072, 128) 0.96x; bfloat16 0.86x to 0.88x, 0.87x
 * to 0.93x, 0.93x and 1.03x; float32 (1024, 768) 0.87x to 0.90x, (4096, 768)
 * 0.93x to 0.96x, (16384, 1024) 0.96x, (131072, 128) 0.89x, the fused add
 * (4096, 768) 0.86x (float16 0.91x); 1 thread (64, 768) 0.89x; AVX2
 * (4096, 768) float32 0.94x, float16 0.87x, bfloat16 0.89x, (1024, 768)
 * float32 0.86x.  Rows of 64 run the code as before: float16 (262144, 64)
 * read 1.04x to 1.07x, and as much with the one pass compiled out, so the
 * code's placement, not its work.  With the first vector's mean as the
 * shift (a quarter of the values: twice as far from the mean) the worst
 * float16 rstd error of 20000 Gaussian rows of 1000 went from 1.1e-7 to
 * 3.9e-7 at AVX2; with four vectors' mean it is 2.6e-7 (1.2e-7 at
 * AVX-512, as with two passes). */
#define LN_ONE_PASS_MOMENTS 1
#define LN_ONE_PASS_MIN_COLS 128
#define LN_ONE_PASS_MAX_SPREAD 2.0
/* 64 values at AVX-512 (32 at AVX2): on Gaussian rows the shift's distance
 * from the mean is then about sd / 8, and the factor above about 1.02 */
#define LN_SHIFT_VECTORS 4
_Static_assert(LN_ONE_PASS_MIN_COLS >= LN_SHIFT_VECTORS * LN_LANES, "the shift's vectors must lie in the row");

#if LN_SHORT_ROW_MAX_COLS > 0
/* Statistics of a group of short rows (cols <= LN_SHORT_ROW_MAX_COLS), while
 * the group sits in L1/L2: layer norm by two passes, the sum of the shifted
 * data, then the sum of squared deviations from its mean (m2 is centred on
 * the very mean returned), or in one pass where LN_ONE_PASS_MOMENTS allows;
 * RMS norm by the sum of squares.  The lane sums of
 * the group's rows are folded together (lanes_sum_8): on rows of 64 elements
 * the per-row latency of Welford's lane merge and of one-row reductions, not
 * the bytes, set the time.  Each row's fused add comes just before its first
 * pass, so that the rows are read in order. */
static inline __attribute__((always_inline)) void short_rows_statistics(const ln_forward_args *a, int64_t first, int64_t count,
                                                                         const int folded, int sum_streamed,
                                                                         int sum_descending, C *shift,
                                                                         ln_moments *stats, const int64_t cols, C *kept)
{
    const int rms = a->mode == LN_MODE_RMS_NORM;
    const int one_pass = LN_ONE_PASS_MOMENTS && !rms && cols >= LN_ONE_PASS_MIN_COLS;
    V partial[LN_MAX_ROW_GROUP], partial_sq[LN_MAX_ROW_GROUP];
    C sums[LN_MAX_ROW_GROUP], mean[LN_MAX_ROW_GROUP], squares[LN_MAX_ROW_GROUP];
#define LN_ROW_SRC(g) row_source(a, (first + (g)) * cols, sum_streamed)
    for (int64_t g = 0; g < folded; g++) {
        partial[g] = partial_sq[g] = vbroadcast(0);
        if (g >= count) continue;
        const int64_t offset = (first + g) * cols;
        store_row_sum(a, offset, sum_streamed, sum_descending);
        const row_data src = row_source(a, offset, sum_streamed);
        if (rms) {
            partial[g] = kept ? partial_squares_keeping(src.data, src.addend, cols, kept + g * cols)
                              : partial_squares(src.data, src.addend, cols);
            continue;
        }
        if (one_pass) {
            /* the mean of the row's first LN_SHIFT_VECTORS vectors */
            const V first_sum = (load_or_sum(src.data, src.addend, 0) + load_or_sum(src.data, src.addend, VL))
                                + (load_or_sum(src.data, src.addend, 2 * VL) + load_or_sum(src.data, src.addend, 3 * VL));
            shift[g] = lanes_sum(first_sum) * (C)(1.0 / (LN_SHIFT_VECTORS * VL));
            partial[g] = kept ? partial_shifted_sum_squares_keeping(src.data, src.addend, cols, shift[g], kept + g * cols,
                                                                    &partial_sq[g])
                              : partial_shifted_sum_squares(src.data, src.addend, cols, shift[g], &partial_sq[g]);
            continue;
        }
        /* the shift (the row's first value) from the row's first vector: with
         * a scalar load of the row's head first, (262144, 64) float32 took
         * 1.1x the time (1 thread, out of cache) */
        shift[g] = cols >= VL ? load_or_sum(src.data, src.addend, 0)[0] : load1_or_sum(src.data, src.addend, 0);
        partial[g] = kept ? partial_shifted_sum_keeping(src.data, src.addend, cols, shift[g], kept + g * cols)
                          : partial_shifted_sum(src.data, src.addend, cols, shift[g]);
    }
    for (int64_t h = 0; h < folded; h += 8) lanes_sum_8(partial + h, sums + h);
    if (rms) {
        for (int64_t g = 0; g < count; g++) {
            const row_data src = LN_ROW_SRC(g);
            /* the tail's own float32 sum may overflow too (a value of 1e20 in
             * the tail gave rrms 0 and y 0): test it as well */
            const C tail = tail_squares(src.data, src.addend, cols);
            stats[g] = (ln_moments){(double)cols, 0, (double)sums[g] + (double)tail};
            if (!isfinite(sums[g]) || !isfinite(tail)) stats[g] = float64_statistics(src.data, src.addend, cols, 1, 0, 1);
        }
        return;
    }
    /* the means of all `folded` rows at once (padding rows sum to 0), so that
     * the divides are vector instructions */
    C tails[LN_MAX_ROW_GROUP];
    for (int64_t g = 0; g < folded; g++)
        tails[g] = g < count ? tail_shifted_sum(LN_ROW_SRC(g).data, LN_ROW_SRC(g).addend, cols, shift[g]) : 0;
    for (int64_t g = 0; g < folded; g++) mean[g] = (sums[g] + tails[g]) / (C)cols;
    if (one_pass) {
        for (int64_t h = 0; h < folded; h += 8) lanes_sum_8(partial_sq + h, squares + h);
        for (int64_t g = 0; g < count; g++) {
            const row_data src = LN_ROW_SRC(g);
            /* the sum of squared deviations from the very mean returned,
             * sum (d - m)^2 = sum d^2 - m (2 sum d - n m), in float64 */
            const C tail_squares = tail_squared_deviations(src.data, src.addend, cols, shift[g], 0);
            const double q = (double)squares[g] + (double)tail_squares, m = (double)mean[g];
            double m2 = q - m * (2 * ((double)sums[g] + (double)tails[g]) - (double)cols * m);
            int finite = isfinite(mean[g]);
            if (!(isfinite(q) && LN_ONE_PASS_MAX_SPREAD * m2 >= q)) {
                /* the shift is too far from the mean (or a sum overflowed):
                 * the second pass, as without LN_ONE_PASS_MOMENTS */
                const C deviations = lanes_sum(kept ? partial_kept_squared_deviations(kept + g * cols, cols, mean[g])
                                                    : partial_squared_deviations(src.data, src.addend, cols, shift[g], mean[g]));
                const C tail = tail_squared_deviations(src.data, src.addend, cols, shift[g], mean[g]);
                m2 = (double)deviations + (double)tail;
                finite = finite && isfinite(deviations) && isfinite(tail);
            }
            stats[g] = (ln_moments){(double)cols, mean[g], m2};
            if (!finite) stats[g] = float64_statistics(src.data, src.addend, cols, 1, shift[g], 0);
        }
        return;
    }
    for (int64_t g = 0; g < folded; g++)
        partial[g] = g >= count ? vbroadcast(0)
                     : kept     ? partial_kept_squared_deviations(kept + g * cols, cols, mean[g])
                                : partial_squared_deviations(LN_ROW_SRC(g).data, LN_ROW_SRC(g).addend, cols, shift[g], mean[g]);
    for (int64_t h = 0; h < folded; h += 8) lanes_sum_8(partial + h, sums + h);
    for (int64_t g = 0; g < count; g++) {
        const row_data src = LN_ROW_SRC(g);
        const C tail = tail_squared_deviations(src.data, src.addend, cols, shift[g], mean[g]);
        const double m2 = (double)sums[g] + (double)tail;
        stats[g] = (ln_moments){(double)cols, mean[g], m2};
        /* the tail's own float32 sum may overflow too: test it as well */
        if (!isfinite(sums[g]) || !isfinite(tail) || !isfinite(mean[g]))
            stats[g] = float64_statistics(src.data, src.addend, cols, 1, shift[g], 0);
    }
#undef LN_ROW_SRC
}
#endif

/* The normalize pass of a group's kept rows (see keeps_rows) into out: y,
 * or the staging buffer. */
static inline __attribute__((always_inline)) void normalize_kept_group(const ln_forward_args *a, const C *kept, E *out,
                                                                        int64_t count, const row_transform *t,
                                                                        const int64_t cols)
{
    for (int64_t g = 0; g < count; g++)
        normalize_kept(kept + g * cols, out + g * cols, cols, t[g].lo, t[g].scale, a->weight, a->bias,
                       a->params_in_storage_type);
}

/* `bytes` bytes from the staging buffer to y: whole lines with streaming
 * stores, the partial lines at both ends with ordinary ones.  A copy of the
 * bytes: through LOADV and STREAMV, half-precision values were converted to
 * float32 and back on their way out. */
static inline void stream_staged(E *y, const E *staged, int64_t bytes)
{
    char *out = (char *)y;
    const char *in = (const char *)staged;
    int64_t head = (int64_t)((64 - (uintptr_t)out % 64) % 64);
    if (head > bytes) head = bytes;
    const int64_t end = head + (bytes - head) / 64 * 64;
#if LN_CAN_STREAM && LN_VECTOR_BYTES == 64
    for (int64_t i = head; i < end; i += 64) _mm512_stream_si512((void *)(out + i), _mm512_load_si512(in + i));
#elif LN_CAN_STREAM && LN_VECTOR_BYTES == 32
    for (int64_t i = head; i < end; i += 32)
        _mm256_stream_si256((__m256i *)(out + i), _mm256_load_si256((const __m256i *)(in + i)));
#else
    memcpy(out + head, in + head, (size_t)(end - head));
#endif
    memcpy(out, in, (size_t)head);
    memcpy(out + end, in + end, (size_t)(bytes - end));
}

/* The normalize pass of a row group (from x, or from the kept rows) through
 * an L1 buffer, then streamed as one span (see stage_row_outputs). */
static inline __attribute__((always_inline)) void normalize_group_staged(const ln_forward_args *a, int64_t first, int64_t count,
                                                                          const row_transform *t, int sum_streamed, int prefetch,
                                                                          const int64_t cols, const C *kept)
{
    /* the buffer starts as far into a line as y does, so that the streaming
     * loop's loads are aligned too */
    E buffer[(LN_STAGED_BYTES + 64) / sizeof(E)] __attribute__((aligned(64)));
    E *y = (E *)a->y + first * cols, *staged = buffer + (uintptr_t)y % 64 / sizeof(E);
    if (kept) {
        normalize_kept_group(a, kept, staged, count, t, cols);
    } else {
        for (int64_t g = 0; g < count; g++) {
            const row_data src = row_source(a, (first + g) * cols, sum_streamed);
            if (prefetch) prefetch_next_group_row(a, first + count + g);
            normalize_span(src.data, src.addend, staged + g * cols, cols, t[g].hi, t[g].lo, t[g].scale,
                           a->weight, a->bias, a->params_in_storage_type, 0);
        }
    }
    stream_staged(y, staged, count * cols * (int64_t)sizeof(E));
}

/* The normalize pass takes the rows of a group in pairs that share the
 * weight and bias loads (normalize_span_pair), where y is stored (not
 * streamed or staged) and the next group is not prefetched: in-cache calls,
 * whose normalize pass was bound by its three loads a vector.  The same
 * bits.  A/B (bench/compare_builds.py), 2 threads, against a row at a time,
 * AVX-512: (20, 500) float32 0.92x to 0.94x the time, (64, 768) 0.92x,
 * (512, 64) 0.94x, (8192, 256) 0.93x, (2048, 768) 0.90x to 0.92x, float64
 * (20, 500) 0.94x, rms (20, 500) 0.96x; AVX2 (20, 500) 0.92x to 0.93x,
 * (64, 768) 0.95x, (8192, 256) 0.93x.  Not where the next group is
 * prefetched: (4096, 768) took 1.08x to 1.10x (two rows' prefetches and
 * stores at once).  Not at the baseline ((64, 768) 1.13x) nor for float16
 * and bfloat16 (AVX2 bfloat16 (512, 64) 1.06x, float16 at AVX-512 0.97x). */
#define PAIRS_ROWS (LN_VECTOR_BYTES >= 32 && (LN_DT == LN_DT_FLOAT32 || LN_DT == LN_DT_FLOAT64))

/* Half-precision rows of at most LN_SHORT_GROUP_MAX_BYTES, of whole vectors,
 * whose outputs are stored or staged (not streamed, nor prefetched for): the
 * first statistics pass keeps each vector of x - shift (of x for RMS norm),
 * converted to float32, in an L1 buffer, from which the second pass and the
 * normalize pass read it; they no longer load and convert x again, nor
 * subtract the shift.  The same bits (the same roundings of the same values;
 * only which NaN a NaN output carries may differ).  A/B
 * (bench/compare_builds.py) against converting x in each pass: in cache, 1
 * thread, (4096, 128) float16 0.81x to 0.88x the time at AVX-512 (AVX2
 * 0.88x), bfloat16 0.88x (AVX2 0.86x); (8192, 64) float16 0.88x to 0.91x
 * (AVX2 0.92x), bfloat16 0.89x (AVX2 0.87x); rms (4096, 128) bfloat16
 * 0.95x, fused add float16 0.88x.  2 threads, AVX-512, out of cache:
 * (262144, 64) float16 0.93x to 0.97x (AVX2 0.93x), bfloat16 0.96x to
 * 1.03x, rms float16 0.96x to 1.01x, fused add 0.98x to 1.02x; (131072, 128)
 * float16 0.98x to 1.04x.  Not float32, whose in-cache rows take the paired
 * normalize pass (PAIRS_ROWS) and have no conversions to save: kept, (8192,
 * 64) took 1.05x the time at AVX-512 and AVX2, (1024, 64) 1.08x, rms 1.08x,
 * (65536, 64) at 2 threads 1.07x; only (4096, 32) at AVX2 gained (0.90x). */
#define KEEPS_ROWS (LN_DT == LN_DT_FLOAT16 || LN_DT == LN_DT_BFLOAT16)
/* Longer rows (up to LN_SHORT_ROW_MAX_COLS, 8-row groups, a buffer of up to
 * 32 KB) are kept only for bfloat16 layer norm in calls whose x takes at
 * most KEPT_LONG_ROWS_MAX_BYTES (in the L2 caches).  A/B, AVX-512, 2
 * threads unless stated: (1024, 768) bfloat16 0.91x the time (1 thread
 * 0.92x, AVX2 0.91x), (512, 768) 0.93x (1 thread 0.91x), (2048, 512) 0.87x
 * (1 thread 0.86x), (1024, 1024) 0.97x; the fused add (1024, 768) 1.00x.
 * From L3 the gain went: (4096, 768) 1.06x at 1 thread, 0.95x to 1.05x at 2
 * threads from one spell of the host to the next; (2048, 1024) 1.08x and
 * 1.10x.  float16 gained less and not everywhere ((4096, 768) 0.96x to
 * 1.00x, (2048, 1024) 1.06x, AVX2 (1024, 768) 1.04x); RMS norm, with one
 * statistics pass to save, lost ((4096, 768) bfloat16 1.20x, float16
 * 1.05x); and calls from memory lost ((65536, 256) float16 1.05x to 1.20x,
 * (32768, 512) 1.14x with the next group prefetched). */
#define KEPT_LONG_ROWS_MAX_BYTES ((int64_t)2 << 20)
static inline int keeps_rows(const ln_forward_args *a, int64_t cols, memory_plan plan)
{
    const int64_t row_bytes = cols * (int64_t)sizeof(E);
    if (!KEEPS_ROWS || cols % VL != 0 || plan.y || plan.prefetch) return 0;
    return row_bytes <= LN_SHORT_GROUP_MAX_BYTES
           || (LN_DT == LN_DT_BFLOAT16 && a->mode != LN_MODE_RMS_NORM && cols <= LN_SHORT_ROW_MAX_COLS
               && a->layout.outer * row_bytes <= KEPT_LONG_ROWS_MAX_BYTES);
}
#if LN_SHORT_ROW_MAX_COLS > 0
_Static_assert(LN_SHORT_ROW_GROUP * (LN_SHORT_GROUP_MAX_BYTES / sizeof(E)) <= LN_ROW_GROUP * LN_SHORT_ROW_MAX_COLS,
               "a group of kept short rows must fit kept_rows");
#endif

/* The normalize pass of a row group in reverse: rows and their vectors
 * (see ln_stores_alias_next_loads).  Out of line, so that the usual path
 * does not carry its code. */
static __attribute__((noinline)) void normalize_group_descending(const ln_forward_args *a, int64_t first, int64_t count,
                                                                 const row_transform *t, memory_plan plan)
{
    const int64_t cols = a->layout.reduce;
    for (int64_t g = count - 1; g >= 0; g--) {
        const int64_t offset = (first + g) * cols;
        const row_data src = row_source(a, offset, plan.sum);
        if (PREFETCHES_FOR_STORED_Y && plan.prefetch) prefetch_next_group_row(a, first + count + g);   /* (y stored here) */
        normalize_span_descending(src.data, src.addend, (E *)a->y + offset, cols, t[g].hi, t[g].lo, t[g].scale,
                                  a->weight, a->bias, a->params_in_storage_type);
    }
}

/* GCC cannot see that both statistics paths set stats[g] for every g <
 * count before finish_rows reads them. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
static inline __attribute__((always_inline)) void row_group_body(const ln_forward_args *a, int64_t first, int64_t count,
                                                                  const C *recip, memory_plan plan, const int64_t cols)
{
    const int rms = a->mode == LN_MODE_RMS_NORM;
    /* the general path's statistics start at zero for the group's rows only
     * (zeroing all 16 rows' for every group cost (262144, 64) float32 1.2x
     * the time); the short-row path sets every row's */
    C shift[LN_MAX_ROW_GROUP] = {0};
    ln_moments stats[LN_MAX_ROW_GROUP];
    row_transform t[LN_MAX_ROW_GROUP];
    C *kept = NULL;
#if LN_SHORT_ROW_MAX_COLS > 0
    /* 16 short rows or 8 longer ones (see keeps_rows) */
    C kept_rows[LN_ROW_GROUP * LN_SHORT_ROW_MAX_COLS] __attribute__((aligned(64)));
    if (cols <= LN_SHORT_ROW_MAX_COLS) {
        /* `folded` (count rounded up to sets of 8, the last padded with
         * zeros) a constant, so that the partial sums stay in registers */
        if (keeps_rows(a, cols, plan)) kept = kept_rows;
        if (count > LN_ROW_GROUP) short_rows_statistics(a, first, count, LN_SHORT_ROW_GROUP, plan.sum, plan.sum_descending, shift, stats,
                                                      cols, kept);
        else short_rows_statistics(a, first, count, LN_ROW_GROUP, plan.sum, plan.sum_descending, shift, stats, cols, kept);
    } else
#endif
    {
        for (int64_t g = 0; g < count; g++) {
            stats[g] = (ln_moments){0, 0, 0};
            shift[g] = prepare_row(a, first + g, plan.sum, plan.sum_descending, rms);
            const row_data src = row_source(a, (first + g) * cols, plan.sum);
            for (int64_t start = 0; start < cols; start += LN_BLOCK)
                merge_statistics(&stats[g], block_statistics(src, start, cols - start < LN_BLOCK ? cols - start : LN_BLOCK,
                                                             shift[g], recip, rms), rms);
            if (!isfinite(stats[g].m2) || !isfinite(stats[g].mean)) stats[g] = float64_statistics(src.data, src.addend, cols, 1, shift[g], rms);
        }
    }
    finish_rows(a, first, count, shift, stats, t);
    if (plan.staged) {
        normalize_group_staged(a, first, count, t, plan.sum, plan.prefetch, cols, kept);
        return;
    }
    if (kept) {
        normalize_kept_group(a, kept, (E *)a->y + first * cols, count, t, cols);
        return;
    }
    if (__builtin_expect(plan.descending == 1, 0)) {
        normalize_group_descending(a, first, count, t, plan);
        return;
    }
    int64_t g = 0;
    if (PAIRS_ROWS && !plan.y && !plan.prefetch && !plan.descending)
        for (; g + 2 <= count; g += 2) {
            const int64_t offset = (first + g) * cols;
            const row_data src0 = row_source(a, offset, plan.sum), src1 = row_source(a, offset + cols, plan.sum);
            normalize_span_pair(src0.data, src0.addend, (E *)a->y + offset, t[g].hi, t[g].lo, t[g].scale,
                                src1.data, src1.addend, (E *)a->y + offset + cols, t[g + 1].hi, t[g + 1].lo, t[g + 1].scale,
                                cols, a->weight, a->bias, a->params_in_storage_type);
        }
    for (; g < count; g++) {
        const int64_t offset = (first + g) * cols;
        const row_data src = row_source(a, offset, plan.sum);
        if (plan.prefetch && (plan.y || PREFETCHES_FOR_STORED_Y)) prefetch_next_group_row(a, first + count + g);
        normalize_span(src.data, src.addend, (E *)a->y + offset, cols, t[g].hi, t[g].lo, t[g].scale,
                       a->weight, a->bias, a->params_in_storage_type, plan.y);
    }
}

#pragma GCC diagnostic pop

/* The body specialized on whether the sum is recomputed (SUM), so that the
 * usual case reads its data without a per-vector test for an addend, and on
 * the row length COLS where it is a constant. */
#define LN_ROW_GROUP_COPY(name, COLS, SUM)                                                                 \
    static __attribute__((noinline)) void name(const ln_forward_args *a, int64_t first, int64_t count,    \
                                               const C *recip, memory_plan plan)                          \
    {                                                                                                     \
        row_group_body(a, first, count, recip, (memory_plan){plan.y, plan.staged, SUM, plan.prefetch, plan.descending,         \
                                     plan.sum_descending}, COLS);                                                   \
    }
LN_ROW_GROUP_COPY(row_group, a->layout.reduce, 0)
LN_ROW_GROUP_COPY(row_group_summed, a->layout.reduce, 1)
/* Rows of 64 and 128 elements (attention heads' widths) with the length a
 * constant, so that their per-row loops unroll.  A/B against the runtime
 * length (bench/compare_builds.py), in cache, 1 thread, AVX-512: (8192, 64)
 * float16 0.82x the time, bfloat16 0.83x, float32 0.86x, float64 0.73x;
 * (4096, 128) float16 0.88x, bfloat16 0.87x, float32 0.92x, float64 0.79x;
 * AVX2 (8192, 64) float32 0.81x, float16 0.84x, bfloat16 0.90x; baseline
 * 0.86x to 0.91x.  2 threads, (262144, 64): float16 0.81x, bfloat16 0.83x,
 * rms float16 0.94x, float32 0.99x (bound by memory).  The same bits as the
 * runtime length at every level and dtype: the constant only folds exact
 * operations (a Chan merge's scale of 1), now that no multiply-add is fused
 * but those written out (setup.py; before that, float64 rows of 64 moved by
 * an ulp).  Each copy is its own function (inlined into one,
 * (4096, 128) bfloat16 took 1.5x the time), and the per-vector helpers are
 * always_inline: with six copies in the unit GCC's inlining budget ran out
 * and the loops called load_or_sum (bfloat16 (1024, 768) took 1.9x). */
LN_ROW_GROUP_COPY(row_group_64, 64, 0)
LN_ROW_GROUP_COPY(row_group_64_summed, 64, 1)
LN_ROW_GROUP_COPY(row_group_128, 128, 0)
LN_ROW_GROUP_COPY(row_group_128_summed, 128, 1)
#undef LN_ROW_GROUP_COPY

static void forward_row_group(const ln_forward_args *a, int64_t first, int64_t count, const C *recip,
                              memory_plan plan)
{
    const int64_t cols = a->layout.reduce;
    if (cols == 64) (plan.sum ? row_group_64_summed : row_group_64)(a, first, count, recip, plan);
    else if (cols == 128) (plan.sum ? row_group_128_summed : row_group_128)(a, first, count, recip, plan);
    else (plan.sum ? row_group_summed : row_group)(a, first, count, recip, plan);
}

/* A few long rows (fewer than LN_SPLIT_BELOW_ROWS): blocks of every row are
 * spread over the threads. */
static int forward_split_rows(const ln_forward_args *a, const C *recip)
{
    const int64_t rows = a->layout.outer, cols = a->layout.reduce;
    const int64_t blocks_per_row = (cols + LN_BLOCK - 1) / LN_BLOCK;
    const int64_t items = rows * blocks_per_row;
    ln_moments *partial = malloc((size_t)items * sizeof *partial);
    if (!partial) return LN_ERROR_NO_MEMORY;
    const int rms = a->mode == LN_MODE_RMS_NORM;
    /* blocks of whole lines (LN_BLOCK elements) in rows of whole lines */
    const int arrays = ln_forward_arrays_moved(a);
    const int stream = ln_stream_rows(a->y, rows, cols, arrays);
    /* The fused add's sum streams too: it is read back only after every
     * block's statistics, long out of the caches, so a stored sum would cost
     * its read-for-ownership for nothing.  The statistics then come from
     * x + residual, read before the block's sum is written (sum_out may be
     * the residual or x). */
    const int stream_sum = stream && a->residual && ln_stream_rows(a->sum_out, rows, cols, arrays);
    const int sum_descending = adds_sums_descending(a);
    C shift[LN_MAX_FINISHED_ROWS] = {0};
    ln_moments stats[LN_MAX_FINISHED_ROWS] = {{0, 0, 0}};
    row_transform transform[LN_MAX_FINISHED_ROWS];
    for (int64_t r = 0; r < rows; r++) shift[r] = rms ? 0 : row_shift(a, r * cols);

    #pragma omp parallel num_threads(a->num_threads) if (ln_parallel_if(rows * cols, a->num_threads))
    {
        #pragma omp for schedule(static)
        for (int64_t item = 0; item < items; item++) {
            const int64_t r = item / blocks_per_row, start = (item % blocks_per_row) * LN_BLOCK;
            const int64_t len = cols - start < LN_BLOCK ? cols - start : LN_BLOCK;
            const int64_t offset = r * cols + start;
            if (stream_sum) {
                partial[item] = block_statistics(row_source(a, offset, 1), 0, len, shift[r], recip, rms);
                add_span((const E *)a->x + offset, (const E *)a->residual + offset, (E *)a->sum_out + offset, len, 1, sum_descending);
                continue;
            }
            if (a->residual)
                add_span((const E *)a->x + offset, (const E *)a->residual + offset, (E *)a->sum_out + offset, len, 0, sum_descending);
            partial[item] = block_statistics(row_source(a, offset, 0), 0, len, shift[r], recip, rms);
        }
        /* the streamed sum is read back after the barrier */
        if (stream_sum) ln_stream_fence();
        #pragma omp single
        {
            for (int64_t r = 0; r < rows; r++) {
                stats[r] = (ln_moments){0, 0, 0};
                for (int64_t b = 0; b < blocks_per_row; b++)
                    merge_statistics(&stats[r], partial[r * blocks_per_row + b], rms);
                if (!isfinite(stats[r].m2) || !isfinite(stats[r].mean))
                    stats[r] = float64_statistics(row_source(a, r * cols, 0).data, NULL, cols, 1, shift[r], rms);
            }
            finish_rows(a, 0, rows, shift, stats, transform);
        }
        #pragma omp for schedule(static)
        for (int64_t item = 0; item < items; item++) {
            const int64_t r = item / blocks_per_row, start = (item % blocks_per_row) * LN_BLOCK;
            const int64_t len = cols - start < LN_BLOCK ? cols - start : LN_BLOCK;
            const row_transform t = transform[r];
            normalize_span(row_source(a, r * cols + start, 0).data, NULL, (E *)a->y + r * cols + start, len, t.hi, t.lo, t.scale,
                           param_at(a->weight, a->params_in_storage_type, start),
                           param_at(a->bias, a->params_in_storage_type, start), a->params_in_storage_type, stream);
        }
        if (stream) ln_stream_fence();
    }
    free(partial);
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
    const int short_group = LN_SHORT_ROW_MAX_COLS > 0 && cols * (int64_t)sizeof(E) <= LN_SHORT_GROUP_MAX_BYTES;
    const int64_t most = short_group ? LN_SHORT_ROW_GROUP : LN_ROW_GROUP;
    const int64_t group = ln_rows_per_group(LN_ROW_GROUP_ELEMENTS, cols, most);
    const memory_plan plan = plan_memory(a, group);
    const int64_t groups = (rows + group - 1) / group;
#define LN_GROUP_AT(g) forward_row_group(a, (g) * group, rows - (g) * group < group ? rows - (g) * group : group, recip, plan)
    if (!ln_parallel_if(rows * cols, a->num_threads)) {
        /* small call: no OpenMP region at all, its start-up costs microseconds */
        for (int64_t g = 0; g < groups; g++) LN_GROUP_AT(g);
        if (plan.y || plan.staged) ln_stream_fence();
        return LN_OK;
    }
    const int64_t chunk = ln_dynamic_chunk(groups, group * cols, a->num_threads);
    #pragma omp parallel num_threads(a->num_threads)
    {
        #pragma omp for schedule(dynamic, chunk)
        for (int64_t g = 0; g < groups; g++) LN_GROUP_AT(g);
        /* once per thread: a fence per group would wait for its lines each time */
        if (plan.y || plan.staged) ln_stream_fence();
    }
#undef LN_GROUP_AT
    return LN_OK;
}
