"""`python -m layernorm`: the build configuration, an example, a quick timing."""
import time

import numpy as np

import layernorm as ln


def median_seconds(fn, min_time=0.2, min_runs=5):
    fn()
    times = []
    deadline = time.perf_counter() + min_time
    while len(times) < min_runs or time.perf_counter() < deadline:
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def numpy_layer_norm(x, eps=1e-5):
    mean = x.mean(axis=-1, keepdims=True)
    var = x.var(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps)


def main():
    ln.show_config()
    x = np.array([[0.0, 1.0, 2.0, 3.0, 4.0], [3e4, 3e4 + 1, 3e4 + 2, 3e4 + 3, 3e4 + 4]], dtype=np.float32)
    y, mean, rstd = ln.layer_norm(x, return_stats=True)
    print("\nlayer_norm of")
    print(x)
    print("=")
    print(y)
    print(f"mean = {mean.ravel()}, rstd = {rstd.ravel()}")

    rng = np.random.default_rng(0)
    print("\nmedian time, float32, last axis:")
    for shape in [(8, 16), (4096, 768)]:
        data = rng.standard_normal(shape, dtype=np.float32)
        ours = median_seconds(lambda: ln.layer_norm(data))
        theirs = median_seconds(lambda: numpy_layer_norm(data))
        print(f"  {str(shape):12s} layernorm {ours * 1e6:10.1f} us   numpy {theirs * 1e6:10.1f} us"
              f"   ({theirs / ours:.1f}x)")


if __name__ == "__main__":
    main()
