"""Pictures of a bench result, drawn with matplotlib (the ``plot`` extra:
``pip install memkernels[plot]``). Without matplotlib nothing is drawn and
the caller is told why; the table and the JSON do not need it.

- ``roofline_<device>.png``: every row as a point at its arithmetic
  intensity (FLOPs per byte of its written count) and achieved TFLOP/s,
  under the roof of the measured copy bandwidth and matmul rate;
- ``speedup_<op>.png``: per case and part, the speedup of each memkernels
  implementation over each baseline, the ratio written on its bar;
- ``sweep_<op>_<param>.png``: median time against the swept size on log axes,
  the interquartile range of the timed calls as a band;
- ``compare.png`` (from ``compare``): the time ratio of each matched row.
"""

from __future__ import annotations

import os
import statistics
from typing import Dict, List, Optional

MISSING = "plots need matplotlib: pip install 'memkernels[plot]' (the table and bench.json are written without it)"


def pyplot(notice: Optional[list] = None):
    """matplotlib's pyplot on the file-only Agg backend; None without
    matplotlib, and then MISSING is appended to ``notice`` when given."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        if notice is not None:
            notice.append(MISSING)
        return None
    return plt


def _save(plt, fig, path: str, files: List[str]) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    files.append(path)


def roofline(plt, result: Dict[str, object], path: str, files: List[str]) -> None:
    ceil = result["ceilings"]
    peak_tflops, bw_gbs = ceil["matmul_TFLOPs"], ceil["copy_GBps"]
    rows = [r for r in result["results"] if r["bytes"] > 0 and r["flops"] > 0]
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(8, 5.5))
    ais = [r["flops"] / r["bytes"] for r in rows]
    lo, hi = min(ais + [peak_tflops * 1e3 / bw_gbs]) / 4, max(ais + [peak_tflops * 1e3 / bw_gbs]) * 4
    xs = [lo * (hi / lo) ** (i / 200) for i in range(201)]
    ax.plot(xs, [min(peak_tflops, bw_gbs * x / 1e3) for x in xs], color="black", lw=1.5,
            label=f"roof: copy {bw_gbs:.0f} GB/s, matmul {peak_tflops:.1f} TFLOP/s")
    markers = "osD^v<>pPX*h"
    impls = sorted({r["impl"] for r in rows})
    for i, impl in enumerate(impls):
        pts = [(r["flops"] / r["bytes"], r["TFLOPs"]) for r in rows if r["impl"] == impl]
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], marker=markers[i % len(markers)], s=40,
                   label=impl, zorder=3)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOPs per byte of the written count)")
    ax.set_ylabel("achieved TFLOP/s")
    env = result.get("environment", {})
    ax.set_title(f"roofline: {env.get('device_name', '')} ({env.get('device', '')}), preset {result.get('preset')}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    _save(plt, fig, path, files)


def speedups(plt, rows: List[dict], op: str, path: str, files: List[str]) -> None:
    bars = []  # (group label, baseline, ratio)
    for r in rows:
        for base, ratio in sorted(r["speedup"].items()):
            bars.append((f"{r['case']}\n{r['part']}\n{r['impl']}", base, ratio))
    if not bars:
        return
    groups = list(dict.fromkeys(b[0] for b in bars))
    bases = sorted({b[1] for b in bars})
    width = 0.8 / len(bases)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.5 * len(groups) * max(1.0, len(bases) / 2)), 5.2))
    for j, base in enumerate(bases):
        xs, ys = [], []
        for gi, g in enumerate(groups):
            hit = [b[2] for b in bars if b[0] == g and b[1] == base]
            if hit:
                xs.append(gi + (j - (len(bases) - 1) / 2) * width)
                ys.append(hit[0])
        rects = ax.bar(xs, ys, width, label=f"vs {base}")
        ax.bar_label(rects, labels=[f"{y:.2f}x" for y in ys], fontsize=7, padding=2)
    ax.axhline(1.0, color="black", lw=0.8)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, fontsize=7, rotation=30, ha="right", rotation_mode="anchor")
    ax.set_ylabel("speedup (baseline time / memkernels time)")
    ax.set_title(f"{op}: speedup over each baseline")
    ax.legend(fontsize=7)
    _save(plt, fig, path, files)


def _quartiles(times: List[float]):
    if len(times) < 2:
        t = times[0] if times else float("nan")
        return t, t
    q1, _, q3 = statistics.quantiles(times, n=4, method="inclusive")
    return q1, q3


def sweep(plt, pts: List[dict], op: str, param: str, path: str, files: List[str]) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.8))
    for series in sorted({(p["impl"], p["part"]) for p in pts}):
        sel = sorted((p for p in pts if (p["impl"], p["part"]) == series), key=lambda p: p["value"])
        xs = [p["value"] for p in sel]
        ax.plot(xs, [p["median_s"] * 1e3 for p in sel], marker="o", label=f"{series[0]} {series[1]}")
        bands = [_quartiles(p.get("times_s") or [p["median_s"]]) for p in sel]
        ax.fill_between(xs, [b[0] * 1e3 for b in bands], [b[1] * 1e3 for b in bands], alpha=0.25)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel(param)
    ax.set_ylabel("time per call, ms (median; band: interquartile range)")
    ax.set_title(f"{op}: time against {param}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    _save(plt, fig, path, files)


def draw_plots(result: Dict[str, object], out_dir: str, notice: Optional[list] = None) -> List[str]:
    """Draws the pictures of a bench result into out_dir; returns the files
    written (none without matplotlib, and then MISSING is appended to
    ``notice`` when given)."""
    plt = pyplot(notice)
    files: List[str] = []
    if plt is None:
        return files
    device = result.get("environment", {}).get("device", "device")
    roofline(plt, result, os.path.join(out_dir, f"roofline_{device}.png"), files)
    rows = result["results"]
    for op in sorted({r["op"] for r in rows}):
        speedups(plt, [r for r in rows if r["op"] == op and r["speedup"]], op,
                 os.path.join(out_dir, f"speedup_{op}.png"), files)
    points = result.get("sweeps") or []
    for op, param in sorted({(p["op"], p["param"]) for p in points}):
        sweep(plt, [p for p in points if p["op"] == op and p["param"] == param], op, param,
              os.path.join(out_dir, f"sweep_{op}_{param}.png"), files)
    return files


def draw_comparison(c: Dict[str, object], out_dir: str, notice: Optional[list] = None) -> List[str]:
    """compare.png: the time ratio B/A of each matched row; regressions in
    red, slower-within-the-noise in orange."""
    plt = pyplot(notice)
    files: List[str] = []
    if plt is None:
        return files
    rows = c["rows"]
    if not rows:
        return files
    fig, ax = plt.subplots(figsize=(8, 0.3 * len(rows) + 1.5))
    labels = [f"{r['case']} {r['impl']} {r['part']}" for r in rows]
    ratios = [r["ratio"] for r in rows]
    colors = ["tab:red" if r["regression"] else "tab:orange" if r["within_noise"] else "tab:blue" for r in rows]
    ys = list(range(len(rows)))
    rects = ax.barh(ys, ratios, color=colors)
    ax.bar_label(rects, labels=[f"{x:.3f}" for x in ratios], fontsize=7, padding=2)
    ax.axvline(1.0, color="black", lw=0.8)
    ax.axvline(1.0 + c["threshold"], color="tab:red", lw=0.8, ls="--", label=f"threshold {1 + c['threshold']:.2f}")
    ax.set_yticks(ys)
    ax.set_yticklabels(labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("time ratio B / A (below 1: B is faster)")
    ax.set_title(f"A: {c['device_a']}  B: {c['device_b']}")
    ax.legend(fontsize=7)
    _save(plt, fig, os.path.join(out_dir, "compare.png"), files)
    return files
