"""A/B of two in-place builds' kernels, interleaved in one process.

On a shared machine the memory bandwidth drifts by tens of percent between
runs, so two builds timed in separate runs cannot be compared.  This loads
the `_kernels` extension of both source trees into one process (each from
its own file, so each has its own dispatch table) and alternates calls, with
`numpy.copyto` of the same array as the yardstick; it prints medians and the
new/old ratio.

    git worktree add /tmp/old HEAD~1 && (cd /tmp/old && python setup.py build_ext --inplace)
    python setup.py build_ext --inplace
    PYTHONPATH=src python bench/compare_builds.py /tmp/old/src src forward 16384x1024 --threads 2

Operations: forward (layer norm, weight and bias), rms, backward, add (the
fused add, sum not in place; --sum-ahead places it just ahead of x modulo
1 MB, see ln_stores_alias_next_loads).  float32 unless --dtype float64, float16 or
bfloat16 (ml_dtypes); half precision gets float32 weight, bias and statistics.
"""
import argparse
import glob
import importlib.util
import time

import numpy as np

# the kernels' dtype codes (include/layernorm/layernorm.h)
KERNEL_DTYPE_CODES = {"float32": 0, "float64": 1, "float16": 2, "bfloat16": 3}


def load_kernels(source_dir):
    importlib.import_module("layernorm")   # the package both extensions import from
    path = glob.glob(f"{source_dir}/layernorm/_kernels*.so")[0]
    spec = importlib.util.spec_from_file_location("layernorm._kernels", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def off_a_line(shape, dtype, offset):
    """An empty C-contiguous array starting `offset` bytes past a 64-byte line."""
    dtype = np.dtype(dtype)
    count = int(np.prod(shape))
    buffer = np.empty(count * dtype.itemsize + 128, np.uint8)
    start = (-buffer.ctypes.data) % 64 + offset
    return buffer[start:start + count * dtype.itemsize].view(dtype).reshape(shape)


MEGABYTE = 1 << 20


def past_a_megabyte(values, offset):
    """A copy of `values` starting `offset` bytes past a 1 MB boundary."""
    buffer = np.empty(values.nbytes + offset + MEGABYTE, np.uint8)
    start = (-buffer.ctypes.data) % MEGABYTE + offset
    copy = buffer[start:start + values.nbytes].view(values.dtype).reshape(values.shape)
    copy[...] = values
    return copy


def make_call(kernels, op, arrays, threads, code):
    x, r, dy, w, b, y, s, dx, dw, db, mean, rstd = arrays
    layout = x.shape if x.ndim == 3 else (*x.shape, 1)
    if op == "forward":
        return lambda: kernels.forward(code, 0, layout, x, None, None, y, w, b, None, None, 1e-5, threads)
    if op == "rms":
        return lambda: kernels.forward(code, 1, layout, x, None, None, y, w, None, None, None, 1e-6, threads)
    if op == "add":
        return lambda: kernels.forward(code, 0, layout, x, r, s, y, w, b, None, None, 1e-5, threads)
    if op == "backward":
        return lambda: kernels.backward(code, 0, layout, dy, x, mean, rstd, w, dx, dw, db, threads)
    raise SystemExit(f"unknown operation {op!r}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("old"), parser.add_argument("new")
    parser.add_argument("op", choices=["forward", "rms", "add", "backward"])
    parser.add_argument("shape", help="ROWSxCOLS, normalized over COLS, or OUTERxREDUCExINNER (the strided "
                                      "layout: NCHW over C is 32x64x3136)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--simd", default="avx512")
    parser.add_argument("--dtype", choices=list(KERNEL_DTYPE_CODES), default="float32")
    parser.add_argument("--outputs", choices=["pool", "numpy"], default="pool",
                        help="outputs from the library's pool (64-byte aligned, as when it allocates) or from "
                             "numpy.empty_like (often 16 bytes off a 64-byte line, as a user's out= may be)")
    parser.add_argument("--output-offset", type=int, default=None, metavar="BYTES",
                        help="outputs BYTES past a 64-byte line instead (a multiple of the item size)")
    parser.add_argument("--sum-ahead", type=int, default=None, metavar="BYTES",
                        help="add: x on a 1 MB boundary, the residual 512 KB and y 256 KB past others, and "
                             "the sum BYTES past another (ahead of x modulo 1 MB)")
    args = parser.parse_args()

    if args.dtype == "bfloat16":
        import ml_dtypes
        dtype = np.dtype(ml_dtypes.bfloat16)
    else:
        dtype = np.dtype(args.dtype)
    code = KERNEL_DTYPE_CODES[args.dtype]
    compute = np.dtype(np.float64 if dtype == np.float64 else np.float32)
    shape = tuple(int(v) for v in args.shape.split("x"))
    cols = shape[1]
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(dtype)
    # outputs as the library allocates them (64-byte aligned, which streaming needs)
    from layernorm import _buffer_pool
    empty = _buffer_pool.empty if args.outputs == "pool" else (lambda shape, dt: np.empty(shape, dt))
    if args.output_offset is not None:
        empty = lambda shape, dt: off_a_line(shape, dt, args.output_offset)
    # weight and bias written with values, not np.zeros: a large np.zeros array is calloc'ed pages that
    # all map the kernel's one zero page, so reading it costs nothing, and (1, 16777216) read its 64 MB
    # bias for free
    weight = (1 + 0.1 * rng.standard_normal(cols)).astype(compute)
    bias = (0.1 * rng.standard_normal(cols)).astype(compute)
    residual, y, sum_out = rng.standard_normal(x.shape).astype(dtype), empty(x.shape, dtype), empty(x.shape, dtype)
    if args.sum_ahead is not None:
        x = past_a_megabyte(x, 0)
        residual, y = past_a_megabyte(residual, MEGABYTE // 2), past_a_megabyte(y, MEGABYTE // 4)
        sum_out = past_a_megabyte(sum_out, args.sum_ahead)
    arrays = (x, residual, rng.standard_normal(x.shape).astype(dtype),
              weight, bias, y,
              sum_out, empty(x.shape, dtype),
              empty((cols,), compute), empty((cols,), compute),
              x.astype(compute).mean(1).ravel(), 1 / x.astype(compute).std(1).ravel())
    calls = {}
    for name, source in (("old", args.old), ("new", args.new)):
        kernels = load_kernels(source)
        kernels.select_simd(args.simd)
        kernels.openmp_set_threads(args.threads)
        calls[name] = make_call(kernels, args.op, arrays, args.threads, code)
    copy_out = np.empty_like(x)
    calls["copy"] = lambda: np.copyto(copy_out, x)

    samples = {name: [] for name in calls}
    # old and new swap places every round, so that each follows the copy (which evicts much of the
    # cache) as often as the other: in a fixed order, the same build against itself read 0.96 on
    # (4096, 768) float32, whose arrays the L3 holds
    orders = (("old", "new", "copy"), ("new", "old", "copy"))
    end = time.perf_counter() + args.seconds
    while time.perf_counter() < end or len(samples["copy"]) < 8:
        for name in orders[len(samples["copy"]) % 2]:
            start = time.perf_counter()
            calls[name]()
            samples[name].append(time.perf_counter() - start)
    median = {name: float(np.median(t)) * 1e3 for name, t in samples.items()}
    print(f"{args.op} {args.shape} {dtype} {args.simd} threads={args.threads}: "
          f"old {median['old']:.3f} ms ({median['old'] / median['copy']:.2f}x copy), "
          f"new {median['new']:.3f} ms ({median['new'] / median['copy']:.2f}x copy), "
          f"new/old {median['new'] / median['old']:.3f} ({len(samples['copy'])} rounds)")


if __name__ == "__main__":
    main()
