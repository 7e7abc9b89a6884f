"""The machine, the library versions and the layernorm build a run measured."""
import contextlib
import datetime
import importlib
import io
import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SIMD_LEVELS = ("baseline", "avx2", "avx512")


def import_layernorm():
    """Import the package under test: installed first, else the source tree (in-place build)."""
    try:
        import layernorm
        return layernorm
    except ImportError as first:
        src = str(REPO / "src")
        if src not in sys.path:
            sys.path.insert(0, src)
            for name in [m for m in sys.modules if m == "layernorm" or m.startswith("layernorm.")]:
                del sys.modules[name]
            try:
                import layernorm
                return layernorm
            except ImportError:
                pass
        raise SystemExit(
            f"the layernorm package is required ({first}); install it with "
            f"`pip install .` (or build in place) and retry") from None


def cpu_flags():
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    m = re.search(r"^flags\s*:\s*(.*)$", text, re.M)
    return set(m.group(1).split()) if m else set()


def cpu_model():
    try:
        text = Path("/proc/cpuinfo").read_text()
        m = re.search(r"^model name\s*:\s*(.*)$", text, re.M)
        if m:
            return m.group(1).strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def supported_levels():
    """SIMD levels this CPU can run (x86 flags; non-x86: baseline only)."""
    flags = cpu_flags()
    levels = ["baseline"]
    if {"avx2", "fma"} <= flags:
        levels.append("avx2")
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags:
        levels.append("avx512")
    return levels


def _version(module):
    try:
        return importlib.import_module(module).__version__
    except Exception:
        return None


def _git(*args):
    try:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except Exception:
        return ""


def machine():
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    commit = _git("rev-parse", "--short", "HEAD")
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no")) if commit else None
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": affinity,
        "cpu_simd_levels": supported_levels(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "git_commit": (commit + ("-dirty" if dirty else "")) if commit else "",
        "versions": {m: _version(m) for m in
                     ("numpy", "torch", "onnxruntime", "onnx", "ml_dtypes", "threadpoolctl",
                      "matplotlib")},
    }


def load_average():
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def busy_warning(load, cpus):
    """A warning when other work already keeps the CPUs busy (None when idle)."""
    if load and cpus and load[0] > 0.5 * cpus:
        return (f"the machine is busy (1-minute load average {load[0]} on {cpus} CPUs "
                f"before the run): timings, multi-thread ones most of all, are unreliable")
    return None


def layernorm_info(ln):
    """Version, location and show_config() of the imported layernorm."""
    buf = io.StringIO()
    config = None
    try:
        with contextlib.redirect_stdout(buf):
            ret = ln.show_config()
        config = ret if ret is not None else buf.getvalue()
    except Exception as e:
        config = f"show_config() unavailable ({type(e).__name__}: {e})"
    if not isinstance(config, (str, dict, list)):
        config = str(config)
    text = config if isinstance(config, str) else json.dumps(config, default=str)
    if isinstance(config, dict) and config.get("simd_level"):
        text = f"simd {config['simd_level']}"
    m = re.search(r"simd\W{0,4}(baseline|avx512|avx2)", text, re.I) or \
        re.search(r"\b(baseline|avx512|avx2)\b", text, re.I)
    threads = None
    try:
        threads = ln.get_num_threads()
    except Exception:
        pass
    return {
        "version": getattr(ln, "__version__", "?"),
        "file": getattr(ln, "__file__", "?"),
        "config": config,
        "config_text": buf.getvalue(),
        "simd_reported": m.group(1).lower() if m else None,
        "default_threads": threads,
        "env_LAYERNORM_SIMD": os.environ.get("LAYERNORM_SIMD"),
    }
