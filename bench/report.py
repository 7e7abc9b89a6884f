"""Tables (terminal and markdown), JSON and the GB/s chart of a benchmark run.

Every ratio is computed from medians of the same run (same process, same
SIMD level, same thread count, same case) and is a time ratio t(A) / t(B).
"""
import json
import math
from collections import defaultdict

import sections as sections_mod
import targets as targets_mod

CHART_IMPLS = [("ln_out", "layernorm out="), ("ln", "layernorm"), ("ort", "ONNX Runtime"),
               ("torch", "PyTorch"), ("numpy", "NumPy")]
CHART_COLORS = {"ln_out": "#1b5e20", "ln": "#66bb6a", "ort": "#1f77b4", "torch": "#ff7f0e",
                "numpy": "#9e9e9e"}
LEVEL_ORDER = {"avx512": 0, "avx2": 1, "baseline": 2, "auto": 3}


def fmt_time(s):
    if s is None or not math.isfinite(s):
        return "-"
    if s < 1e-3:
        return f"{s * 1e6:.3g} us"
    if s < 1:
        return f"{s * 1e3:.3g} ms"
    return f"{s:.3g} s"


def fmt_us(s):
    return "-" if s is None else f"{s * 1e6:.3g} us"


def fmt_ratio(r):
    return "-" if r is None or not math.isfinite(r) else f"{r:.2f}x"


def _index(run):
    """{(section, case, threads): {impl: result row}}."""
    idx = defaultdict(dict)
    for r in run.get("results", []):
        idx[(r["section"], r["case"], r["threads"])][r["impl"]] = r
    return idx


def _sections():
    return {s.key: s for s in sections_mod.all_sections()}


def ratios(run):
    """Every ratio and difference of a run, as JSON-ready rows."""
    out = []
    secs = _sections()
    for (skey, case, threads), rows in _index(run).items():
        sec = secs.get(skey)
        if sec is None:
            continue
        for label, a, b in sec.ratios:
            if a in rows and b in rows:
                out.append({"section": skey, "case": case, "threads": threads, "ratio": label,
                            "value": rows[a]["median_s"] / rows[b]["median_s"]})
        for label, a, b in sec.diffs:
            if a in rows and b in rows:
                out.append({"section": skey, "case": case, "threads": threads, "diff": label,
                            "value_us": (rows[a]["median_s"] - rows[b]["median_s"]) * 1e6})
    return out


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def section_markdown(run, section, level_heading="###"):
    """The section's tables for one run: one table per thread count."""
    idx = _index(run)
    parts = []
    threads_seen = sorted({r["threads"] for r in run.get("results", [])
                           if r["section"] == section.key})
    case_order = [c.name for c in section.cases]
    for threads in threads_seen:
        case_names = [c for c in case_order if (section.key, c, threads) in idx]
        if not case_names:
            continue
        present = [i for i in section.impls
                   if any(i.key in idx[(section.key, c, threads)] for c in case_names)]
        header = ["case"] + [i.label for i in present]
        header += [lbl for lbl, a, b in section.ratios
                   if any(a in idx[(section.key, c, threads)] and b in idx[(section.key, c, threads)]
                          for c in case_names)]
        used_ratios = [r for r in section.ratios if r[0] in header]
        used_diffs = [d for d in section.diffs
                      if any(d[1] in idx[(section.key, c, threads)] and
                             d[2] in idx[(section.key, c, threads)] for c in case_names)]
        header += [d[0] for d in used_diffs]
        rows = []
        for c in case_names:
            res = idx[(section.key, c, threads)]
            row = [c]
            for i in present:
                r = res.get(i.key)
                if r is None:
                    row.append("-")
                elif section.micro:
                    row.append(fmt_us(r["median_s"]))
                else:
                    row.append(f"{fmt_time(r['median_s'])} ({r['gbps']:.1f})")
            for _, a, b in used_ratios:
                row.append(fmt_ratio(res[a]["median_s"] / res[b]["median_s"])
                           if a in res and b in res else "-")
            for _, a, b in used_diffs:
                row.append(f"{(res[a]['median_s'] - res[b]['median_s']) * 1e6:+.2f} us"
                           if a in res and b in res else "-")
            rows.append(row)
        unit = "median time" if section.micro else "median time (GB/s)"
        parts.append(f"{level_heading} {section.title} - SIMD {run['simd']}, "
                     f"{threads} thread{'s' if threads > 1 else ''}\n\n"
                     f"Cells: {unit}; ratios t(A)/t(B). {section.about}\n\n"
                     + _table(header, rows))
    return "\n\n".join(parts)


def skipped_markdown(run):
    """Skipped implementations, one line per (section, implementation, reason)."""
    groups = defaultdict(list)
    attempted = defaultdict(set)   # section -> case names measured or skipped
    for s in run.get("skipped", []):
        groups[(s["section"], s["label"], s["reason"])].append(s["case"])
        attempted[s["section"]].add(s["case"])
    for r in run.get("results", []):
        attempted[r["section"]].add(r["case"])
    lines = []
    for (sec, label, reason), cases in sorted(groups.items()):
        uniq = list(dict.fromkeys(cases))
        where = "all cases" if len(uniq) > 1 and set(uniq) == attempted[sec] else ", ".join(uniq)
        lines.append(f"- {sec} / {label}: {reason} ({where})")
    return "\n".join(lines)


def includes_markdown(run_sections):
    lines = []
    for sec in run_sections:
        lines.append(f"- **{sec.title}**")
        for i in sec.impls:
            if i.includes:
                lines.append(f"  - {i.label}: {i.includes}")
    return "\n".join(lines)


def details_markdown(run):
    header = ["section", "case", "thr", "impl", "median", "best", "IQR/med", "GB/s",
              "samples x batch", "max abs err"]
    rows = []
    for r in run.get("results", []):
        err = r.get("max_abs_err")
        rows.append([r["section"], r["case"], str(r["threads"]), r["label"],
                     fmt_time(r["median_s"]), fmt_time(r["best_s"]), f"{r['spread']:.0%}",
                     f"{r['gbps']:.2f}", f"{r['samples']} x {r['batch']}",
                     "-" if err is None else f"{err:.2g}"])
    return _table(header, rows)


def targets_markdown(run):
    rows = []
    for t in run.get("targets", []):
        bw = t.get("worst_bandwidths")
        rows.append([str(t["issue"]), t["target"], t["where"], t["bound"],
                     f"{t['worst_text']} ({t['worst_case']})",
                     "-" if bw is None else f"{bw[1]:.2f}x / {bw[0]:.2f}x",
                     f"{t['passed']}/{t['of']}", "yes" if t["ok"] else "**no**"])
    if not rows:
        return ""
    threads = run["targets"][0]["threads"]
    return (f"Issue targets at {threads} thread{'s' if threads > 1 else ''} "
            "(worst case shown). *Bandwidth*: the worst case's layernorm call as it ran "
            "/ as it would have to run to just meet the bound, counting the fewest bytes "
            "the call can move (each x-sized and weight-sized array once), as a multiple "
            "of the bandwidth of the same run's numpy.copyto of that case; a need above "
            "1x asks the call to move its bytes faster than the copy moves its own:\n\n"
            + _table(["issue", "target", "cases", "bound", "worst (case)",
                      "bandwidth ran / needs (x copy)", "cases met", "met"], rows))


def _config_text(info):
    if info.get("config_text", "").strip():
        return info["config_text"].strip()
    cfg = info.get("config")
    if isinstance(cfg, str):
        return cfg.strip()
    return json.dumps(cfg, indent=1, default=str)


def document_markdown(doc):
    m = doc["machine"]
    v = m["versions"]
    secs = _sections()
    lines = [f"# layernorm benchmark: {doc['name']}", "",
             f"- date: {m['date']}; command: `{doc['command']}`; wall time {doc['seconds']} s",
             f"- CPU: {m['cpu']}; {m['usable_cpus']} usable of {m['logical_cpus']} logical CPUs; "
             f"SIMD levels: {', '.join(m['cpu_simd_levels'])}",
             f"- Python {m['python']}, " + ", ".join(f"{k} {val}" for k, val in v.items() if val)
             + (f"; git {m['git_commit']}" if m.get("git_commit") else ""),
             "- timing: warm-up, then interleaved rounds per case; median of per-call times "
             "(tiny calls in batches): "
             + ", ".join(f"{k}={val}" for k, val in doc["timing"].items()),
             "- ratios are t(A)/t(B) from the same run: `X/ln` > 1 means layernorm is faster; "
             "`ln/copy` <= 1 means layernorm runs at memory-copy speed",
             f"- load average (1, 5, 15 min) before / after: {m.get('load_average_start')} / "
             f"{m.get('load_average_end')}", ""]
    if m.get("warning"):
        lines += [f"**Warning: {m['warning']}.**", ""]
    run_sections = []
    for run in doc["runs"]:
        lines.append(f"## SIMD level: {run['simd']}")
        lines.append("")
        if run.get("error"):
            lines += [f"**failed:** {run['error']}", ""]
            continue
        info = run.get("layernorm", {})
        lines.append(f"layernorm {info.get('version')} ({info.get('file')}), "
                     f"reported SIMD level `{info.get('simd_reported')}`, "
                     f"LAYERNORM_SIMD={info.get('env_LAYERNORM_SIMD')}; "
                     f"run took {run.get('seconds')} s.")
        if run.get("ort_rms_op"):
            lines.append(f"ONNX Runtime RMS op: {run['ort_rms_op']}.")
        lines.append("")
        tm = targets_markdown(run)
        if tm:
            lines += [tm, ""]
        present = [k for k in secs if any(r["section"] == k for r in run["results"])]
        for key in present:
            lines += [section_markdown(run, secs[key]), ""]
            if secs[key] not in run_sections:
                run_sections.append(secs[key])
        sk = skipped_markdown(run)
        if run.get("unavailable") or sk:
            lines += ["Skipped:", ""] + [f"- {u}" for u in run.get("unavailable", [])]
            lines += [sk, ""]
        if run.get("notes"):
            lines += ["Notes:", ""] + [f"- {n}" for n in run["notes"]] + [""]
        lines += ["<details><summary>layernorm show_config()</summary>", "", "```",
                  _config_text(info), "```", "", "</details>", ""]
        lines += [f"<details><summary>All measurements (SIMD {run['simd']})</summary>", "",
                  details_markdown(run), "", "</details>", ""]
    lines += ["## What each timed call includes", "",
              "All inputs are created (and, for PyTorch, wrapped zero-copy with "
              "`torch.from_numpy`) outside the timed call; weight and bias are on. "
              "layernorm, PyTorch and ONNX Runtime run with the same thread count; "
              "NumPy and numpy.copyto are single-threaded.", "",
              includes_markdown(run_sections), ""]
    return "\n".join(lines)


def summary_text(doc):
    lines = [f"total wall time {doc['seconds']} s"]
    if doc["machine"].get("warning"):
        lines.append(f"WARNING: {doc['machine']['warning']}")
    for run in doc["runs"]:
        if run.get("error"):
            lines.append(f"SIMD {run['simd']}: FAILED ({run['error']})")
            continue
        lines.append(f"SIMD {run['simd']}: {len(run['results'])} measurements, "
                     f"{len(run['skipped'])} skipped, {run.get('seconds')} s")
        tg = run.get("targets", [])
        if tg:
            missed = [t for t in tg if not t["ok"]]
            lines.append(f"  issue targets met: {len(tg) - len(missed)}/{len(tg)}")
            for t in missed:
                bw = t.get("worst_bandwidths")
                reach = ("" if bw is None else
                         f" (ran at {bw[1]:.2f}x copy bandwidth, needs {bw[0]:.2f}x)")
                lines.append(f"  missed (issue {t['issue']}): {t['target']} [{t['bound']}], "
                             f"worst {t['worst_text']} on {t['worst_case']}{reach}")
        sk = skipped_markdown(run)
        if sk:
            lines.append("  skipped:\n" + "\n".join("  " + s for s in sk.splitlines()))
        for n in run.get("notes", []):
            lines.append(f"  note: {n}")
    return "\n".join(lines)


def _short(case_name):
    """'(20, 5, 10, 10) last 3' -> '20x5x10x10\nlast 3' for axis labels."""
    shape, _, rest = case_name.partition(")")
    label = shape.strip("( ").replace(", ", "x")
    return label + ("\n" + rest.strip() if rest.strip() else "")


def chart(doc, path):
    """GB/s per forward case: a row of panels per SIMD level, a column per thread count."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    runs = sorted([r for r in doc["runs"] if any(x["section"] == "forward" for x in r["results"])],
                  key=lambda r: LEVEL_ORDER.get(r["simd"], 9))
    if not runs:
        return None
    threads = sorted({x["threads"] for r in runs for x in r["results"]})
    nrows, ncols = len(runs), len(threads)
    fig, axes = plt.subplots(nrows, ncols, squeeze=False, sharey=True,
                             figsize=(6.5 * ncols, 3.2 * nrows + 0.8), layout="constrained")
    case_order = [c.name for c in _sections()["forward"].cases]
    width = 0.8 / len(CHART_IMPLS)
    for ri, run in enumerate(runs):
        idx = _index(run)
        for ti, t in enumerate(threads):
            ax = axes[ri][ti]
            names = [c for c in case_order if ("forward", c, t) in idx]
            for k, (key, label) in enumerate(CHART_IMPLS):
                xs, ys = [], []
                for ci, c in enumerate(names):
                    r = idx[("forward", c, t)].get(key)
                    if r:
                        xs.append(ci - 0.4 + width * (k + 0.5))
                        ys.append(r["gbps"])
                ax.bar(xs, ys, width, label=label, color=CHART_COLORS[key])
            for ci, c in enumerate(names):
                r = idx[("forward", c, t)].get("copy")
                if r:
                    ax.hlines(r["gbps"], ci - 0.45, ci + 0.45, colors="black", linewidth=2,
                              label="numpy.copyto" if ci == 0 else None)
            ax.set_xticks(range(len(names)))
            ax.set_xticklabels([_short(n) for n in names], fontsize=6.5)
            ax.set_yscale("log")
            ax.set_ylim(bottom=0.02)
            ax.set_title(f"SIMD {run['simd']}, {t} thread{'s' if t > 1 else ''}", fontsize=9)
            ax.grid(axis="y", which="major", alpha=0.4)
            if ti == 0:
                ax.set_ylabel("GB/s (read x + write y)", fontsize=8)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.suptitle("layer_norm forward, float32, median throughput (higher is better)",
                 fontsize=10)
    fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), fontsize=8,
               frameon=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_all(doc, out_dir, name, draw_chart=True):
    """Write <name>.json, <name>.md and the chart; return the written paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for run in doc["runs"]:
        run["ratios"] = ratios(run)
        run["targets"] = targets_mod.evaluate(run, _sections())
    paths = []
    jp = out_dir / f"{name}.json"
    jp.write_text(json.dumps(doc, indent=1, default=str))
    paths.append(jp)
    md = document_markdown(doc)
    if draw_chart:
        png = out_dir / ("forward_gbps.png" if name == "benchmark" else f"{name}_forward_gbps.png")
        drawn = chart(doc, png)
        if drawn:
            paths.append(drawn)
            md = md.replace("\n## SIMD level", f"\n![forward GB/s]({png.name})\n\n## SIMD level", 1)
        else:
            md += "\n(matplotlib not installed: no chart)\n"
    mp = out_dir / f"{name}.md"
    mp.write_text(md)
    paths.insert(1, mp)
    return paths
