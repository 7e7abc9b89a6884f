"""The performance targets of the issues, checked against a run's medians.

Each target is a ratio (or a time) from one section's table, a bound, and the
cases it applies to.  Targets are evaluated at the largest thread count of the
run (the issues state them for 2 threads), separately for every SIMD level.

For a ratio target, ``bandwidths`` says whether it is within the memory bus's
reach: the bandwidth layernorm's call would need to meet the bound exactly
(needs) and the bandwidth it ran at (reached), both counting the fewest bytes
the call can move (``Section.least_bytes``) and both as multiples of the
bandwidth of the same run's copy of that case.  Needs above 1x: the target
asks the call to move its bytes faster than ``numpy.copyto`` moves the copy's.
"""
from dataclasses import dataclass

from cases import FORWARD_CASES

LARGE = 1 << 20   # "large cases": at least a million elements
SMALL_FOR_BANDWIDTH = 1 << 16   # below: no bandwidth figures (fixed costs dominate)


def _trailing(c):
    return c.trailing


def _large(c):
    return c.size >= LARGE


def _named(*names):
    return lambda c: c.name in names


@dataclass(frozen=True)
class Target:
    issue: int
    text: str
    section: str
    ratio: str           # a ratio label of the section, or "time:<impl key>"
    bound: float
    at_most: bool        # True: value <= bound; False: value >= bound
    where: object        # Case -> bool
    where_text: str

    def value(self, rows):
        if self.ratio.startswith("time:"):
            r = rows.get(self.ratio[5:])
            return None if r is None else r["median_s"]
        return None

    def ok(self, v):
        return v <= self.bound if self.at_most else v >= self.bound

    def fmt(self, v):
        if self.ratio.startswith("time:"):
            return f"{v * 1e6:.2f} us"
        return f"{v:.2f}x"

    def fmt_bound(self):
        b = f"{self.bound * 1e6:g} us" if self.ratio.startswith("time:") else f"{self.bound:g}x"
        return ("<= " if self.at_most else ">= ") + b


T = Target
TARGETS = [
    T(2, "as fast as ONNX Runtime", "forward", "ORT/ln", 1.0, False, _trailing, "trailing axes"),
    T(2, "3x faster than PyTorch", "forward", "PyTorch/ln", 3.0, False,
      _named("(16384, 1024)"), "(16384, 1024)"),
    T(3, "backward 2x faster than PyTorch autograd", "backward", "PyTorch/ln", 2.0, False,
      _trailing, "trailing axes"),
    T(3, "backward at most 2x the forward", "backward", "ln bwd/fwd", 2.0, True,
      lambda c: True, "all cases"),
    T(4, "rms_norm 3x faster than PyTorch", "rms", "PyTorch/ln", 3.0, False, _large,
      "large cases"),
    T(4, "fused add_layer_norm 1.5x faster than the pair", "add", "pair/fused", 1.5, False,
      _large, "large cases"),
    T(4, "fused add_rms_norm 1.5x faster than the pair", "add_rms", "pair/fused", 1.5, False,
      _large, "large cases"),
    T(4, "float16 element throughput 1.6x float32", "half", "f32/f16 (ln)", 1.6, False,
      _large, "large cases"),
    T(4, "bfloat16 element throughput 1.6x float32", "half", "f32/bf16 (ln)", 1.6, False,
      _large, "large cases"),
    T(5, "out= at most 1.0x copy", "forward", "ln out=/copy", 1.0, True,
      _named("(16384, 1024)", "(262144, 64)", "(64, 262144)"), "3 large trailing cases"),
    T(5, "out= at most 1.3x copy", "forward", "ln out=/copy", 1.3, True,
      _named("(4096, 768)"), "(4096, 768)"),
    T(5, "out= at most 1.6x copy", "forward", "ln out=/copy", 1.6, True,
      _named("(1, 16777216)"), "(1, 16777216)"),
    T(5, "out= at most 2.0x copy", "forward", "ln out=/copy", 2.0, True,
      _named("(32, 64, 56, 56) axis 1"), "NCHW axis 1"),
    T(5, "1.2x faster than ONNX Runtime", "forward", "ORT/ln", 1.2, False, _trailing,
      "trailing axes"),
    T(5, "4x faster than PyTorch", "forward", "PyTorch/ln", 4.0, False,
      _named("(16384, 1024)", "(32, 64, 56, 56) axis 1"), "(16384, 1024), NCHW"),
    T(5, "(8, 16) in at most 1.5 us", "small", "time:ln", 1.5e-6, True, _named("(8, 16)"),
      "(8, 16)"),
    T(5, "(20, 5, 10, 10) last 3 in at most 2.5 us", "small", "time:ln", 2.5e-6, True,
      _named("(20, 5, 10, 10) last 3"), "(20, 5, 10, 10) last 3"),
    T(5, "small calls at most half of PyTorch", "small", "PyTorch/ln", 2.0, False,
      lambda c: True, "both small cases"),
]


def _bandwidths(target, sec, case, rows, a, b, copy_row):
    """(needs, reached): the multiples of the copy's bandwidth at which
    layernorm's call would just meet the bound t(a) / t(b), and at which it
    ran.  None for small cases (their time is calls' fixed costs, not bytes),
    or without a copy of the case."""
    if case.size < SMALL_FOR_BANDWIDTH or copy_row is None:
        return None
    # at most R: t(a) <= R t(b), layernorm is a; at least R: t(b) <= t(a) / R
    ours, goal = ((a, target.bound * rows[b]["median_s"]) if target.at_most
                  else (b, rows[a]["median_s"] / target.bound))
    least = sec.least_bytes(sec.impl(ours), case)
    copy_bandwidth = copy_row["bytes"] / copy_row["median_s"]
    return least / goal / copy_bandwidth, least / rows[ours]["median_s"] / copy_bandwidth


def evaluate(run, sections):
    """[{target fields, per-case values, worst, passed}] for one run."""
    from cases import SMALL_CASES
    results = run.get("results", [])
    if not results:
        return []
    threads = max(r["threads"] for r in results)
    idx = {}
    for r in results:
        if r["threads"] == threads:
            idx.setdefault((r["section"], r["case"]), {})[r["impl"]] = r
    all_cases = {c.name: c for c in FORWARD_CASES + SMALL_CASES}
    out = []
    for t in TARGETS:
        sec = sections.get(t.section)
        if sec is None:
            continue
        ratio = next((x for x in sec.ratios if x[0] == t.ratio), None)
        values, bandwidths = {}, {}
        for (skey, cname), rows in idx.items():
            case = all_cases.get(cname)
            if skey != t.section or case is None or not t.where(case):
                continue
            if ratio:
                _, a, b = ratio
                if a in rows and b in rows:
                    values[cname] = rows[a]["median_s"] / rows[b]["median_s"]
                    copy_row = idx.get(("forward", cname), {}).get("copy")
                    pair = _bandwidths(t, sec, case, rows, a, b, copy_row)
                    if pair is not None:
                        bandwidths[cname] = pair
            else:
                v = t.value(rows)
                if v is not None:
                    values[cname] = v
        if not values:
            continue
        worst_case = (max if t.at_most else min)(values, key=values.get)
        out.append({"issue": t.issue, "target": t.text, "section": t.section,
                    "bound": t.fmt_bound(), "where": t.where_text, "threads": threads,
                    "values": values, "worst_case": worst_case,
                    "worst": values[worst_case],
                    "bandwidths": bandwidths,   # case -> (needs, reached), x copy
                    "worst_bandwidths": bandwidths.get(worst_case),
                    "passed": sum(t.ok(v) for v in values.values()), "of": len(values),
                    "ok": all(t.ok(v) for v in values.values()),
                    "worst_text": t.fmt(values[worst_case])})
    return out
