/* C-level driver for the kernels' public API (include/layernorm/layernorm.h).
 *
 * Calls ln_forward / ln_backward for every dtype, both modes, with and
 * without weight/bias/residual, y aliasing x, on row, long-row and strided
 * layouts, at every SIMD level this CPU runs and at 1, 2 and 3 threads.
 * Every buffer is malloc'ed with its exact size, so AddressSanitizer reports
 * any read or write past an array; UndefinedBehaviorSanitizer the rest.
 * Results are checked (loosely: accuracy is the Python suite's job) against
 * a double-precision computation, and the thread counts must agree bit for bit.
 *
 * Built and run by tests/test_c_driver.py with -fsanitize=address,undefined.
 * Exit status 0 when every check passed.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "layernorm/layernorm.h"

static int failures = 0;
static int checks = 0;

#define CHECK(cond, ...)                                                     \
    do {                                                                     \
        checks++;                                                            \
        if (!(cond)) {                                                       \
            failures++;                                                      \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);             \
            fprintf(stderr, __VA_ARGS__);                                    \
            fprintf(stderr, "\n");                                           \
        }                                                                    \
    } while (0)

/* ------------------------------------------------------------ data */

static uint64_t rng_state = 88172645463325252ull;

static double uniform(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (double)(rng_state >> 11) / 9007199254740992.0;
}

static double normal(void) /* Irwin-Hall: good enough for test data */
{
    double s = 0;
    for (int i = 0; i < 12; i++) s += uniform();
    return s - 6.0;
}

static const size_t item_size[LN_NUM_DTYPES] = {4, 8, 2, 2};
static const char *dtype_name[LN_NUM_DTYPES] = {"float32", "float64", "float16", "bfloat16"};

static uint16_t float_to_bf16(float f)
{
    uint32_t bits;
    memcpy(&bits, &f, 4);
    return (uint16_t)((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
}

static float bf16_to_float(uint16_t h)
{
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* element i of a stored array as a double, and storing a double (rounded) */
static double get(int dtype, const void *p, size_t i)
{
    switch (dtype) {
    case LN_FLOAT32: return ((const float *)p)[i];
    case LN_FLOAT64: return ((const double *)p)[i];
    case LN_FLOAT16: return (double)((const _Float16 *)p)[i];
    default: return bf16_to_float(((const uint16_t *)p)[i]);
    }
}

static void put(int dtype, void *p, size_t i, double v)
{
    switch (dtype) {
    case LN_FLOAT32: ((float *)p)[i] = (float)v; break;
    case LN_FLOAT64: ((double *)p)[i] = v; break;
    case LN_FLOAT16: ((_Float16 *)p)[i] = (_Float16)(float)v; break;
    default: ((uint16_t *)p)[i] = float_to_bf16((float)v); break;
    }
}

/* compute type: double for float64 data, float otherwise */
static int compute_dtype(int dtype) { return dtype == LN_FLOAT64 ? LN_FLOAT64 : LN_FLOAT32; }

/* exact-size allocations (malloc(0) avoided) */
static void *alloc(size_t n, size_t size) { return malloc(n ? n * size : 1); }

static void *random_array(int dtype, size_t n, double offset, double spread)
{
    void *p = alloc(n, item_size[dtype]);
    for (size_t i = 0; i < n; i++) put(dtype, p, i, offset + spread * normal());
    return p;
}

static double tolerance(int dtype)
{
    return dtype == LN_FLOAT64 ? 1e-9 : dtype == LN_FLOAT32 ? 1e-4 : 2e-2;
}

/* ------------------------------------------------------------ one case */

typedef struct {
    int64_t outer, reduce, inner;
} shape3;

typedef struct {
    int dtype, mode, with_weight, with_bias, with_residual, y_is_x;
} options;

static int same_bytes(const void *a, const void *b, size_t n) { return n == 0 || memcmp(a, b, n) == 0; }

/* forward + backward at `threads`; results in freshly malloc'ed buffers */
typedef struct {
    void *y, *s, *mean, *rstd, *dx, *dweight, *dbias;
} results;

static void free_results(results *r)
{
    free(r->y); free(r->s); free(r->mean); free(r->rstd);
    free(r->dx); free(r->dweight); free(r->dbias);
}

static results run(const options *o, shape3 sh, const void *x, const void *residual, const void *dy,
                   const void *weight, const void *bias, int threads)
{
    const int dt = o->dtype, cdt = compute_dtype(dt);
    const size_t n = (size_t)(sh.outer * sh.reduce * sh.inner), ns = (size_t)(sh.outer * sh.inner);
    const size_t es = item_size[dt], cs = item_size[cdt];
    const int ln_mode = o->mode == LN_MODE_LAYER_NORM;
    results r = {0};
    r.y = alloc(n, es);
    if (o->y_is_x) memcpy(r.y, x, n * es);           /* y aliases its own x */
    r.s = o->with_residual ? alloc(n, es) : NULL;
    r.mean = ln_mode ? alloc(ns, cs) : NULL;
    r.rstd = alloc(ns, cs);

    ln_forward_args f = {0};
    f.mode = o->mode;
    f.layout.outer = sh.outer; f.layout.reduce = sh.reduce; f.layout.inner = sh.inner;
    f.x = o->y_is_x ? r.y : x;
    f.residual = o->with_residual ? residual : NULL;
    f.sum_out = r.s;
    f.y = r.y;
    f.weight = o->with_weight ? weight : NULL;
    f.bias = o->with_bias && ln_mode ? bias : NULL;
    f.mean = r.mean;
    f.rstd = r.rstd;
    f.eps = 1e-5;
    f.num_threads = threads;
    CHECK(ln_forward(dt, &f) == LN_OK, "ln_forward failed");

    /* backward of normalize(s) with s = x (+ residual) */
    const void *s = o->with_residual ? r.s : x;
    r.dx = alloc(n, es);
    r.dweight = alloc((size_t)sh.reduce, cs);
    r.dbias = ln_mode ? alloc((size_t)sh.reduce, cs) : NULL;
    ln_backward_args b = {0};
    b.mode = o->mode;
    b.layout = f.layout;
    b.dy = dy;
    b.x = s;
    b.mean = r.mean;
    b.rstd = r.rstd;
    b.weight = f.weight;
    b.dx = r.dx;
    b.dweight = r.dweight;
    b.dbias = r.dbias;
    b.num_threads = threads;
    CHECK(ln_backward(dt, &b) == LN_OK, "ln_backward failed");
    return r;
}

/* double-precision check of the forward and backward results */
static void verify(const options *o, shape3 sh, const void *x, const void *residual, const void *dy,
                   const void *weight, const void *bias, const results *r, const char *label)
{
    const int dt = o->dtype, cdt = compute_dtype(dt);
    const int ln_mode = o->mode == LN_MODE_LAYER_NORM;
    const double tol = tolerance(dt);
    double max_err_y = 0, max_err_dx = 0, max_err_dw = 0, max_err_db = 0, scale_dw = 1, scale_db = 1;
    const int64_t R = sh.reduce;
    double *dw = calloc((size_t)R, sizeof(double)), *db = calloc((size_t)R, sizeof(double));
    double *xhat = malloc((size_t)R * sizeof(double)), *g = malloc((size_t)R * sizeof(double));
    for (int64_t o_ = 0; o_ < sh.outer; o_++) {
        for (int64_t in = 0; in < sh.inner; in++) {
            const size_t base = (size_t)(o_ * R * sh.inner + in), st = (size_t)(o_ * sh.inner + in);
            double mean = 0, var = 0;
            for (int64_t k = 0; k < R; k++) {
                const size_t i = base + (size_t)(k * sh.inner);
                double v = get(dt, x, i);
                if (o->with_residual) {
                    double sv = get(dt, r->s, i);
                    CHECK(fabs(sv - (v + get(dt, residual, i))) <= tol * (1 + fabs(sv)), "%s: s", label);
                    v = sv;
                }
                xhat[k] = v;
                mean += v;
            }
            mean = ln_mode ? mean / (double)R : 0;
            for (int64_t k = 0; k < R; k++) var += (xhat[k] - mean) * (xhat[k] - mean);
            const double rstd = 1.0 / sqrt(var / (double)R + 1e-5);
            if (ln_mode) CHECK(fabs(get(cdt, r->mean, st) - mean) <= tol * (1 + fabs(mean)), "%s: mean", label);
            CHECK(fabs(get(cdt, r->rstd, st) - rstd) <= tol * rstd, "%s: rstd", label);
            double sum_g = 0, sum_gx = 0;
            for (int64_t k = 0; k < R; k++) {
                const size_t i = base + (size_t)(k * sh.inner);
                xhat[k] = (xhat[k] - mean) * rstd;
                const double w = o->with_weight ? get(cdt, weight, (size_t)k) : 1.0;
                const double bb = o->with_bias && ln_mode ? get(cdt, bias, (size_t)k) : 0.0;
                const double y = xhat[k] * w + bb;
                max_err_y = fmax(max_err_y, fabs(get(dt, r->y, i) - y) / (1 + fabs(y)));
                g[k] = get(dt, dy, i) * w;
                sum_g += g[k];
                sum_gx += g[k] * xhat[k];
                dw[k] += get(dt, dy, i) * xhat[k];
                db[k] += get(dt, dy, i);
            }
            for (int64_t k = 0; k < R; k++) {
                const size_t i = base + (size_t)(k * sh.inner);
                const double dx = rstd * (g[k] - (ln_mode ? sum_g / (double)R : 0) - xhat[k] * sum_gx / (double)R);
                max_err_dx = fmax(max_err_dx, fabs(get(dt, r->dx, i) - dx) / (rstd * (1 + fabs(g[k]) + fabs(sum_g) / (double)R)));
            }
        }
    }
    for (int64_t k = 0; k < R; k++) {
        scale_dw = fmax(scale_dw, fabs(dw[k]));
        scale_db = fmax(scale_db, fabs(db[k]));
    }
    for (int64_t k = 0; k < R; k++) {
        max_err_dw = fmax(max_err_dw, fabs(get(cdt, r->dweight, (size_t)k) - dw[k]) / scale_dw);
        if (ln_mode) max_err_db = fmax(max_err_db, fabs(get(cdt, r->dbias, (size_t)k) - db[k]) / scale_db);
    }
    CHECK(max_err_y <= tol, "%s: y error %g", label, max_err_y);
    CHECK(max_err_dx <= tol, "%s: dx error %g", label, max_err_dx);
    CHECK(max_err_dw <= tol, "%s: dweight error %g", label, max_err_dw);
    CHECK(max_err_db <= tol, "%s: dbias error %g", label, max_err_db);
    free(dw); free(db); free(xhat); free(g);
}

static void run_case(const options *o, shape3 sh, int level)
{
    const int dt = o->dtype, cdt = compute_dtype(dt);
    const size_t n = (size_t)(sh.outer * sh.reduce * sh.inner), ns = (size_t)(sh.outer * sh.inner);
    const size_t es = item_size[dt], cs = item_size[cdt];
    char label[200];
    snprintf(label, sizeof label, "%s %s %s (%lld, %lld, %lld) w%d b%d r%d alias%d",
             ln_simd_name(level), dtype_name[dt], o->mode ? "rms" : "ln", (long long)sh.outer,
             (long long)sh.reduce, (long long)sh.inner, o->with_weight, o->with_bias, o->with_residual,
             o->y_is_x);
    void *x = random_array(dt, n, 3.0, 1.0);
    void *residual = random_array(dt, n, 0.0, 1.0);
    void *dy = random_array(dt, n, 0.5, 1.0);
    void *weight = random_array(cdt, (size_t)sh.reduce, 1.0, 0.2);
    void *bias = random_array(cdt, (size_t)sh.reduce, 0.0, 0.5);

    results one = run(o, sh, x, residual, dy, weight, bias, 1);
    verify(o, sh, x, residual, dy, weight, bias, &one, label);
    for (int threads = 2; threads <= 3; threads++) {
        results more = run(o, sh, x, residual, dy, weight, bias, threads);
        int same = same_bytes(one.y, more.y, n * es) && same_bytes(one.rstd, more.rstd, ns * cs)
                && same_bytes(one.dx, more.dx, n * es)
                && same_bytes(one.dweight, more.dweight, (size_t)sh.reduce * cs)
                && (!one.mean || same_bytes(one.mean, more.mean, ns * cs))
                && (!one.dbias || same_bytes(one.dbias, more.dbias, (size_t)sh.reduce * cs))
                && (!one.s || same_bytes(one.s, more.s, n * es));
        CHECK(same, "%s: 1 and %d threads differ", label, threads);
        free_results(&more);
    }
    free_results(&one);
    free(x); free(residual); free(dy); free(weight); free(bias);
}

static void argument_errors(void)
{
    float x[4] = {1, 2, 3, 4}, y[4];
    ln_forward_args f = {0};
    f.layout.outer = 1; f.layout.reduce = 4; f.layout.inner = 1;
    f.x = x; f.y = y; f.eps = 1e-5; f.num_threads = 1;
    CHECK(ln_forward(LN_NUM_DTYPES, &f) == LN_ERROR_DTYPE, "bad dtype");
    CHECK(ln_forward(-1, &f) == LN_ERROR_DTYPE, "negative dtype");
    CHECK(ln_forward(LN_FLOAT32, NULL) == LN_ERROR_ARGUMENT, "NULL args");
    f.num_threads = 0;
    CHECK(ln_forward(LN_FLOAT32, &f) == LN_ERROR_ARGUMENT, "zero threads");
    f.num_threads = 1;
    f.residual = x;   /* residual without sum_out */
    CHECK(ln_forward(LN_FLOAT32, &f) == LN_ERROR_ARGUMENT, "residual without sum_out");
    f.residual = NULL;
    f.x = NULL;
    CHECK(ln_forward(LN_FLOAT32, &f) == LN_ERROR_ARGUMENT, "NULL x");
    f.x = x;
    f.layout.outer = -1;
    CHECK(ln_forward(LN_FLOAT32, &f) == LN_ERROR_ARGUMENT, "negative outer");
    f.layout.outer = 1;
    CHECK(ln_forward(LN_FLOAT32, &f) == LN_OK, "valid call");

    ln_backward_args b = {0};
    float dx[4], rstd[1] = {1}, mean[1] = {0};
    b.layout = f.layout; b.dy = x; b.x = x; b.dx = dx; b.rstd = rstd; b.num_threads = 1;
    CHECK(ln_backward(LN_FLOAT32, &b) == LN_ERROR_ARGUMENT, "layer-norm backward without mean");
    b.mean = mean;
    CHECK(ln_backward(LN_FLOAT32, &b) == LN_OK, "valid backward");
    CHECK(ln_backward(7, &b) == LN_ERROR_DTYPE, "backward bad dtype");
    CHECK(ln_select_simd(99) == LN_ERROR_ARGUMENT, "unknown level");
    CHECK(ln_openmp_set_threads(0) == LN_ERROR_ARGUMENT, "zero threads setting");
}

int main(void)
{
    static const shape3 shapes[] = {
        {1, 1, 1}, {3, 1, 1}, {2, 2, 1}, {5, 7, 1}, {4, 33, 1}, {3, 100, 1}, {2, 1000, 1},
        {257, 64, 1}, {1, 100003, 1}, {2, 65537, 1},                /* rows, long rows */
        {2, 3, 5}, {3, 16, 33}, {1, 7, 1000}, {2, 1, 9}, {1, 5000, 3}, {1, 2, 70001}, {9, 5, 17},
    };
    const int nshapes = (int)(sizeof shapes / sizeof shapes[0]);
    const int best = ln_simd_best_supported(), mask = ln_simd_compiled_mask();
    argument_errors();
    for (int level = LN_SIMD_BASELINE; level <= best; level++) {
        if (!(mask & (1 << level))) continue;
        CHECK(ln_select_simd(level) == LN_OK && ln_simd_level() == level, "select %d", level);
        for (int dt = 0; dt < LN_NUM_DTYPES; dt++)
            for (int mode = 0; mode < 2; mode++)
                for (int variant = 0; variant < 4; variant++)
                    for (int s = 0; s < nshapes; s++) {
                        /* variants: plain; weight+bias; residual+weight; plain with y aliasing x */
                        options o = {dt, mode, variant == 1 || variant == 2, variant == 1, variant == 2,
                                     variant == 3};
                        const int64_t size = shapes[s].outer * shapes[s].reduce * shapes[s].inner;
                        if (variant != 1 && size > 50000) continue;   /* keep the big ones few */
                        run_case(&o, shapes[s], level);
                    }
        printf("level %s done\n", ln_simd_name(level));
    }
    printf("%d checks, %d failures\n", checks, failures);
    return failures ? 1 : 0;
}
