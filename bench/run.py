#!/usr/bin/env python
"""Benchmark layernorm side by side with NumPy, PyTorch, ONNX Runtime and a memory copy.

    python bench/run.py                 # full run: every SIMD level, 1 and 2 threads
    python bench/run.py --quick         # short timings, the default SIMD level only
    python bench/run.py --ops forward,small --threads 2 --simd avx2
    python bench/run.py --render bench/results/benchmark.json   # tables again, no timing

Each SIMD level runs in its own subprocess with LAYERNORM_SIMD set (the package
picks its kernels at import); ``--simd auto`` runs in this process with the
level the package chooses by itself.  Every competitor is optional.
Results go to bench/results/<name>.md and .json, and a GB/s chart to
bench/results/forward_gbps.png when matplotlib is installed.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import cases as cases_mod                          # noqa: E402
import environment                                 # noqa: E402
import reference                                   # noqa: E402
import report                                      # noqa: E402
import sections as sections_mod                    # noqa: E402
from competitors import Skip, load_adapters        # noqa: E402
from timing import TimingConfig, measure           # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Sections (--ops): " + ", ".join(sections_mod.OPS))
    p.add_argument("--quick", action="store_true",
                   help="short timings (a sanity check, ~1-2 minutes); default --simd auto")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], metavar="N",
                   help="thread counts (default: 1 2); forward, small and layers run at "
                        "each, the other sections at the largest only")
    p.add_argument("--all-threads", action="store_true",
                   help="run every section at every --threads value")
    p.add_argument("--simd", nargs="+", default=None, metavar="LEVEL",
                   help="SIMD levels: auto | all | baseline avx2 avx512 "
                        "(default: all, or auto with --quick)")
    p.add_argument("--ops", default=",".join(sections_mod.OPS),
                   help="comma-separated sections to run (default: all)")
    p.add_argument("--cases", default="",
                   help="comma-separated patterns; keep only matching cases, "
                        "e.g. '16384x1024,32x64x56x56,8x16'")
    p.add_argument("--skip", default="",
                   help="comma-separated libraries to leave out: numpy,torch,onnxruntime,copy")
    g = p.add_argument_group("timing (defaults: full run / --quick)")
    d, q = TimingConfig(), TimingConfig.quick()
    g.add_argument("--warmup", type=int,
                   help=f"warm-up calls per implementation ({d.warmup} / {q.warmup})")
    g.add_argument("--min-iters", type=int,
                   help=f"at least this many samples ({d.min_iters} / {q.min_iters})")
    g.add_argument("--min-time", type=float,
                   help=f"and at least this many seconds ({d.min_time} / {q.min_time})")
    g.add_argument("--max-time", type=float,
                   help=f"but stop after this many seconds ({d.max_time} / {q.max_time})")
    g.add_argument("--rounds", type=int,
                   help=f"interleaved rounds per group ({d.rounds} / {q.rounds})")
    o = p.add_argument_group("output")
    o.add_argument("--name", help="results file stem (default: benchmark, or quick)")
    o.add_argument("--out-dir", default=str(HERE / "results"), help="default: bench/results")
    o.add_argument("--no-chart", action="store_true", help="do not draw the PNG chart")
    o.add_argument("--no-check", action="store_true",
                   help="do not check outputs against the float64 reference")
    o.add_argument("--seed", type=int, default=0)
    p.add_argument("--render", metavar="JSON",
                   help="write the tables and chart of a saved run again (ratios and "
                        "targets recomputed, nothing timed)")
    p.add_argument("--worker-json", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.ops = [s.strip() for s in args.ops.split(",") if s.strip()]
    args.case_patterns = [s.strip() for s in args.cases.split(",") if s.strip()]
    args.skip_libs = {s.strip() for s in args.skip.split(",") if s.strip()}
    if args.simd is None:
        args.simd = ["auto"] if args.quick else ["all"]
    if args.name is None:
        args.name = "quick" if args.quick else "benchmark"
    if any(t < 1 for t in args.threads):
        p.error("--threads must be >= 1")
    return args


def timing_config(args):
    cfg = TimingConfig.quick() if args.quick else TimingConfig()
    for field in ("warmup", "min_iters", "min_time", "max_time", "rounds"):
        value = getattr(args, field)
        if value is not None:
            setattr(cfg, field, value)
    return cfg


def resolve_levels(requested):
    levels = []
    for level in requested:
        for lv in (environment.supported_levels() if level == "all" else [level]):
            if lv not in ("auto",) + environment.SIMD_LEVELS:
                raise SystemExit(f"unknown SIMD level {lv!r}")
            if lv not in levels:
                levels.append(lv)
    return levels


# --------------------------------------------------------------------------
# one SIMD level, in this process

def _first(out):
    return out[0] if isinstance(out, (tuple, list)) else out


class LevelRunner:
    def __init__(self, args, level):
        self.args = args
        self.level = level
        self.cfg = timing_config(args)
        self.ln = environment.import_layernorm()
        self.adapters = load_adapters(self.ln)
        for key in args.skip_libs:
            if key in self.adapters and key != "layernorm":
                self.adapters[key].error = "left out with --skip"
        self.have_dtypes = cases_mod.half_dtypes()
        self.results, self.skipped, self.notes = [], [], []

    def skip(self, section, impl, case, threads, reason):
        self.skipped.append({"section": section.key, "impl": impl.key, "label": impl.label,
                             "case": case.name, "threads": threads, "reason": reason})

    def build(self, section, impl, data, threads, refs):
        """The timed callable for ``impl`` on this case, or None (skip recorded)."""
        case = data.case
        adapter = self.adapters.get(impl.lib)
        if adapter is None or not adapter.available:
            self.skip(section, impl, case, threads, adapter.error if adapter else "no adapter")
            return None
        if impl.dtype not in ("float32", "float64") and impl.dtype not in self.have_dtypes:
            self.skip(section, impl, case, threads, f"{impl.dtype}: ml_dtypes not installed")
            return None
        method = getattr(adapter, impl.method, None)
        if method is None:
            self.skip(section, impl, case, threads, f"{adapter.name} has no {impl.method} rows")
            return None
        try:
            fn = method(data, **dict(impl.kwargs))
            out = fn()            # probe: also the output checked below
        except Skip as e:
            self.skip(section, impl, case, threads, str(e))
            return None
        except Exception as e:    # NotImplementedError, missing feature, library error
            msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
            self.skip(section, impl, case, threads, f"{type(e).__name__}: {msg}")
            return None
        err = None
        if impl.check and not self.args.no_check:
            try:
                y = np.asarray(adapter.as_numpy(_first(out)))
                if y.size == case.size:
                    y = y.reshape(case.shape)
                subset = reference.check_subset(case)
                key = (impl.check, impl.dtype)
                if key not in refs:
                    refs[key] = reference.compute(impl.check, case, data, impl.dtype, subset)
                err = reference.max_abs_error(reference.take(y, subset), refs[key])
                if reference.is_suspicious(err, impl.dtype, impl.check, refs[key]):
                    self.notes.append(f"large error: {section.key} {case.name} {impl.label} "
                                      f"t={threads}: max abs error {err:.3g} vs the float64 "
                                      f"reference")
            except Exception as e:
                self.notes.append(f"check failed: {section.key} {case.name} {impl.label}: "
                                  f"{type(e).__name__}: {e}")
        return fn, err

    def run_group(self, section, data, refs, threads):
        """Time every implementation of ``section`` on one case at one thread count."""
        case = data.case
        for a in self.adapters.values():
            if a.available:
                a.set_threads(threads)
        fns, errs = {}, {}
        for impl in section.impls:
            built = self.build(section, impl, data, threads, refs)
            if built:
                fns[impl.key], errs[impl.key] = built
        if not fns:
            return
        timings = measure(fns, self.cfg)
        fns.clear()
        parts = []
        for key, t in timings.items():
            impl = section.impl(key)
            nbytes = section.bytes_moved(impl, case)
            self.results.append({
                "section": section.key, "case": case.name, "shape": list(case.shape),
                "axes": list(case.axes), "dtype": impl.dtype, "threads": threads,
                "impl": key, "label": impl.label, "lib": impl.lib,
                "median_s": t.median, "q1_s": t.q1, "q3_s": t.q3, "best_s": t.best,
                "spread": t.spread, "samples": t.samples, "batch": t.batch,
                "calls": t.calls, "bytes": nbytes, "gbps": nbytes / t.median / 1e9,
                "max_abs_err": errs.get(key)})
            parts.append(f"{impl.label} {report.fmt_time(t.median)}")
        print(f"  [{self.level}] {section.key:8s} {case.name:24s} t={threads}: "
              + " | ".join(parts), flush=True)

    def run_cases(self, sections, seconds):
        """Case by case (its arrays are generated once and shared by all sections)."""
        plan = {}
        for section in sections:
            for case in cases_mod.select_cases(section.cases, self.args.case_patterns):
                plan.setdefault(case, []).append(section)
        for case, secs in plan.items():
            data = cases_mod.CaseData(case, self.args.seed)
            for section in secs:
                refs = {}    # float64 references, per section to bound memory
                ts = time.time()
                counts = self.args.threads
                if not (section.every_thread_count or self.args.all_threads):
                    counts = [max(counts)]
                for threads in counts:
                    self.run_group(section, data, refs, threads)
                for a in self.adapters.values():
                    if a.available:
                        a.release()
                seconds[section.key] = round(seconds.get(section.key, 0) + time.time() - ts, 1)
                del refs
            del data

    def run(self):
        info = environment.layernorm_info(self.ln)
        print(f"== SIMD {self.level}: layernorm {info['version']} from {info['file']}; "
              f"reported SIMD level: {info['simd_reported']}", flush=True)
        missing = [f"{a.name}: {a.error}" for a in self.adapters.values() if not a.available]
        for m in missing:
            print(f"   (skipping {m})")
        t0 = time.time()
        run = {"simd": self.level, "layernorm": info,
               "libraries": {a.key: (a.version() if a.available else None)
                             for a in self.adapters.values()},
               "unavailable": missing, "timing": vars(self.cfg),
               "threads": self.args.threads, "results": self.results,
               "skipped": self.skipped, "notes": self.notes}
        sections = sections_mod.select(self.args.ops)
        run["section_seconds"] = {}
        self.run_cases(sections, run["section_seconds"])
        for section in sections:
            print()
            print(report.section_markdown(run, section), flush=True)
        print(f"\n  seconds per section: {run['section_seconds']}")
        ort = self.adapters.get("onnxruntime")
        if ort is not None and ort.available and "rms" in self.args.ops:
            run["ort_rms_op"] = ort.rms_op()
        run["seconds"] = round(time.time() - t0, 1)
        return run


# --------------------------------------------------------------------------
# several SIMD levels, one subprocess each

def worker_argv(args, level, path):
    argv = [sys.executable, str(Path(__file__).resolve()), "--simd", level,
            "--worker-json", path, "--threads", *map(str, args.threads),
            "--ops", ",".join(args.ops), "--seed", str(args.seed)]
    if args.quick:
        argv.append("--quick")
    if args.cases:
        argv += ["--cases", args.cases]
    if args.skip:
        argv += ["--skip", args.skip]
    if args.no_check:
        argv.append("--no-check")
    if args.all_threads:
        argv.append("--all-threads")
    for field in ("warmup", "min_iters", "min_time", "max_time", "rounds"):
        value = getattr(args, field)
        if value is not None:
            argv += ["--" + field.replace("_", "-"), str(value)]
    return argv


def run_in_subprocess(args, level):
    env = dict(os.environ)
    if level == "auto":
        env.pop("LAYERNORM_SIMD", None)
    else:
        env["LAYERNORM_SIMD"] = level
    fd, path = tempfile.mkstemp(prefix=f"lnbench-{level}-", suffix=".json")
    os.close(fd)
    try:
        proc = subprocess.run(worker_argv(args, level, path), env=env)
        if proc.returncode == 0:
            with open(path) as f:
                return json.load(f)
        return {"simd": level, "error": f"worker exited with status {proc.returncode}",
                "results": [], "skipped": [], "notes": []}
    finally:
        os.unlink(path)


def main(argv=None):
    args = parse_args(argv)
    sections_mod.select(args.ops)   # validate early
    if args.render:
        doc = json.loads(Path(args.render).read_text())
        name = Path(args.render).stem
        paths = report.write_all(doc, Path(args.render).parent, name,
                                 draw_chart=not args.no_chart)
        print(report.summary_text(doc))
        for p in paths:
            print(f"wrote {p}")
        return 0
    if args.worker_json:
        run = LevelRunner(args, args.simd[0]).run()
        with open(args.worker_json, "w") as f:
            json.dump(run, f, default=str)
        return 0
    levels = resolve_levels(args.simd)
    load_start = environment.load_average()
    warning = environment.busy_warning(load_start, environment.machine()["usable_cpus"])
    if warning:
        print(f"WARNING: {warning}", flush=True)
    t0 = time.time()
    runs = []
    for level in levels:
        if level == "auto" and "LAYERNORM_SIMD" not in os.environ:
            runs.append(LevelRunner(args, level).run())
        else:
            runs.append(run_in_subprocess(args, level))
    machine = environment.machine()
    machine["load_average_start"] = load_start
    machine["load_average_end"] = environment.load_average()
    if warning:
        machine["warning"] = warning
    doc = {"name": args.name, "machine": machine,
           "command": " ".join(["python", "bench/run.py"] + (sys.argv[1:] if argv is None
                                                             else list(argv))),
           "timing": vars(timing_config(args)), "runs": runs,
           "seconds": round(time.time() - t0, 1)}
    paths = report.write_all(doc, Path(args.out_dir), args.name,
                             draw_chart=not args.no_chart and "forward" in args.ops)
    print()
    print(report.summary_text(doc))
    for p in paths:
        print(f"wrote {p}")
    return 0 if all("error" not in r for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
