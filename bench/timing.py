"""Median timing of several callables, interleaved so drift hits them all alike.

Method (per group of callables that are compared with each other):

1. Warm-up: each callable has already run once (its output is checked before
   timing); it runs ``warmup`` more times (fewer if it is slow: warm-up stops
   after ~0.1 s), then its per-call time is estimated.
2. Batching: a callable faster than ``sample_time`` is timed in batches of
   ``batch`` back-to-back calls so one sample lasts about ``sample_time``; the
   sample's per-call time is batch time / batch.  Slow callables: batch = 1.
3. Rounds: the callables take turns, ``rounds`` times.  In each turn a callable
   gets one untimed warm call (after a pause that lets the worker threads of
   the previous callable's library stop spinning: see ``wait_for_idle``), then
   samples until it has at least
   ``min_iters / rounds`` samples *and* ``min_time / rounds`` seconds, or until
   ``max_time / rounds`` seconds have passed (at least one sample).
4. The result is the median of all per-call sample times (plus quartiles).

The garbage collector is off while timing.  Callables are measured in the same
process, in the same rounds, so ratios between them are taken from one run.
"""
from dataclasses import dataclass, asdict
import gc
import math
import time

import numpy as np

_clock = time.perf_counter


@dataclass
class TimingConfig:
    warmup: int = 2             # calls after the (untimed) output-check call
    min_iters: int = 15
    min_time: float = 0.2       # seconds per callable (summed over rounds)
    max_time: float = 0.6       # seconds per callable, cap (summed over rounds)
    rounds: int = 3
    sample_time: float = 2e-4   # tiny calls are batched up to this per sample
    pause: float = 0.003        # seconds of sleep before each turn ...
    idle_wait: float = 0.25     # ... then at most this long until no thread spins

    @classmethod
    def quick(cls):
        return cls(warmup=0, min_iters=4, min_time=0.02, max_time=0.08, rounds=2,
                   sample_time=1e-4, pause=0.002, idle_wait=0.05)


@dataclass
class Timing:
    median: float   # seconds per call
    q1: float
    q3: float
    best: float
    samples: int
    batch: int
    calls: int

    @property
    def spread(self):
        """Interquartile range relative to the median."""
        return (self.q3 - self.q1) / self.median if self.median > 0 else float("nan")

    def to_dict(self):
        d = asdict(self)
        d["spread"] = self.spread
        return d


def _calibrate(fn, cfg):
    """Warm up ``fn``; return (batch size, seconds per call, first sample or None).

    The caller has already run ``fn`` once (to check its output), so warm-up
    starts from a warm call.  For a slow callable (batch 1) the timed
    calibration call is kept as its first sample.
    """
    t_start = _clock()
    for _ in range(cfg.warmup):
        fn()
        if _clock() - t_start > 0.1:
            break
    t0 = _clock()
    fn()
    per_call = _clock() - t0
    if per_call >= cfg.sample_time:
        return 1, per_call, per_call
    k = 8
    while True:
        t0 = _clock()
        for _ in range(k):
            fn()
        dt = _clock() - t0
        if dt >= cfg.sample_time or k >= 1 << 20:
            break
        k *= 4
    per_call = dt / k
    return max(1, math.ceil(cfg.sample_time / max(per_call, 1e-9))), per_call, None


def wait_for_idle(cfg):
    """Sleep ``cfg.pause``, then until the process's threads use almost no CPU.

    Thread pools keep spinning after a call: ONNX Runtime's for about 50 ms,
    which on a 2-core machine took one core from whatever ran next (a fused
    add measured 1.3x slower when it followed ONNX Runtime's turn than when
    it did not).  A 5 ms window with under 0.5 ms of process CPU time means
    every thread is asleep; the wait ends there, or after ``cfg.idle_wait``.
    """
    time.sleep(cfg.pause)
    deadline = _clock() + cfg.idle_wait
    while _clock() < deadline:
        cpu = time.process_time()
        time.sleep(0.005)
        if time.process_time() - cpu < 0.0005:
            return


def _sample(fn, batch):
    if batch == 1:
        t0 = _clock()
        fn()
        return _clock() - t0
    loop = range(batch)
    t0 = _clock()
    for _ in loop:
        fn()
    return (_clock() - t0) / batch


def measure(fns, cfg):
    """Time each callable of the dict ``fns``; return {key: Timing}."""
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        calib = {k: _calibrate(f, cfg) for k, f in fns.items()}
        samples = {k: [] if c[2] is None else [c[2]] for k, c in calib.items()}
        calls = {k: 0 if c[2] is None else 1 for k, c in calib.items()}
        rounds = max(1, cfg.rounds)
        iters_per_round = math.ceil(cfg.min_iters / rounds)
        time_per_round = cfg.min_time / rounds
        cap_per_round = max(cfg.max_time, cfg.min_time) / rounds
        for _ in range(rounds):
            for k, f in fns.items():
                batch, per_call, _ = calib[k]
                wait_for_idle(cfg)
                if per_call < 5e-3:    # slower calls do not fit in cache anyway
                    f()
                    calls[k] += 1
                t_start = _clock()
                n = 0
                while True:
                    samples[k].append(_sample(f, batch))
                    n += 1
                    elapsed = _clock() - t_start
                    if n >= iters_per_round and elapsed >= time_per_round:
                        break
                    if elapsed >= cap_per_round:
                        break
                calls[k] += n * batch
    finally:
        if gc_was_enabled:
            gc.enable()
    out = {}
    for k, s in samples.items():
        a = np.asarray(s)
        q1, med, q3 = np.percentile(a, [25, 50, 75])
        out[k] = Timing(float(med), float(q1), float(q3), float(a.min()),
                        len(s), calib[k][0], calls[k])
    return out
