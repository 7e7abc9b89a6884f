"""Time one call with its output at chosen offsets from its input modulo 1 MB.

On Intel cores that compare the low 20 bits of a load's address with earlier
stores, an output that lies a few hundred bytes ahead of its input modulo
1 MB stalls the loads that follow each store (see "Where out= lies against x"
in the README).  This places x on a 1 MB boundary and y (or the fused add's
sum) OFFSET bytes past another, for every offset given, and prints each
offset's median time over that of offset 0, all offsets interleaved in one
process.

    python bench/output_placement.py 4096x768 --threads 2
    python bench/output_placement.py 32x64x3136 --axis 1 --offsets 0,64,128,256
    python bench/output_placement.py 4096x768 --op add_sum --dtype float16
"""
import argparse
import time

import numpy as np

import layernorm as ln
from layernorm._config import config

MEGABYTE = 1 << 20


def placed(shape, dtype, offset):
    """An empty C-contiguous array starting `offset` bytes past a 1 MB boundary."""
    nbytes = int(np.prod(shape)) * dtype.itemsize
    buffer = np.empty(nbytes + offset + 2 * MEGABYTE, np.uint8)
    start = (-buffer.ctypes.data) % MEGABYTE + offset
    return buffer[start:start + nbytes].view(dtype).reshape(shape)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("shape", help="e.g. 4096x768")
    parser.add_argument("--axis", type=int, default=-1)
    parser.add_argument("--dtype", default="float32", help="float32, float64, float16 or bfloat16")
    parser.add_argument("--op", choices=["layer_norm", "rms_norm", "add_sum"], default="layer_norm",
                        help="add_sum: add_layer_norm with its sum_out placed at the offsets")
    parser.add_argument("--offsets", default="0,16,64,128,192,256,512,1024,4096",
                        help="bytes past x's offset modulo 1 MB (multiples of the item size)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--simd", default=None, help="force a SIMD level (as LAYERNORM_SIMD)")
    parser.add_argument("--seconds", type=float, default=4.0)
    args = parser.parse_args()

    if args.dtype == "bfloat16":
        import ml_dtypes
        dtype = np.dtype(ml_dtypes.bfloat16)
    else:
        dtype = np.dtype(args.dtype)
    if args.simd:
        from layernorm import _kernels
        _kernels.select_simd(args.simd)
    ln.set_num_threads(args.threads)
    shape = tuple(int(v) for v in args.shape.split("x"))
    rng = np.random.default_rng(0)
    x = placed(shape, dtype, 0)
    x[...] = rng.standard_normal(shape).astype(dtype)
    residual = placed(shape, dtype, MEGABYTE // 2)
    residual[...] = rng.standard_normal(shape).astype(dtype)
    spare = placed(shape, dtype, MEGABYTE // 4)
    offsets = [int(v) for v in args.offsets.split(",")]
    if 0 not in offsets:
        offsets.insert(0, 0)

    def call(out):
        if args.op == "layer_norm":
            return ln.layer_norm(x, args.axis, out=out)
        if args.op == "rms_norm":
            return ln.rms_norm(x, args.axis, out=out)
        return ln.add_layer_norm(x, residual, args.axis, out=spare, sum_out=out)

    outputs = {offset: placed(shape, dtype, offset) for offset in offsets}
    for out in outputs.values():
        call(out)
    start = time.perf_counter()
    call(outputs[0])
    batch = max(1, int(3e-4 / (time.perf_counter() - start)))
    samples = {offset: [] for offset in offsets}
    end = time.perf_counter() + args.seconds
    while time.perf_counter() < end:
        for offset, out in outputs.items():
            call(out)
            start = time.perf_counter()
            for _ in range(batch):
                call(out)
            samples[offset].append((time.perf_counter() - start) / batch)
    median = {offset: float(np.median(t)) for offset, t in samples.items()}
    print(f"{args.op} {args.shape} axis {args.axis} {dtype} threads={args.threads} "
          f"simd={config()['simd_level']}: "
          f"offset 0 {median[0] * 1e6:.1f} us")
    print("  ".join(f"{offset}: {median[offset] / median[0]:.2f}x" for offset in offsets))


if __name__ == "__main__":
    main()
