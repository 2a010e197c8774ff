"""PNG charts of a bench result (memkernels._plot, no dependencies)."""

from __future__ import annotations

import os
from typing import Dict, List

from memkernels import _plot


def draw_plots(result: Dict[str, object], out_dir: str) -> List[str]:
    """PNG charts of a bench result: per op, median time and percent of the
    floor per implementation and part; per sweep, time against the swept
    size. Returns the files written."""
    files = []
    rows = result["results"]
    for op in sorted({r["op"] for r in rows}):
        op_rows = [r for r in rows if r["op"] == op]
        groups = sorted({f"{r['case']} {r['part']}" for r in op_rows})
        impls = sorted({r["impl"] for r in op_rows})
        for metric, label, scale in (("median_s", "ms", 1e3), ("pct_floor", "% of floor", 1.0)):
            series = {}
            for impl in impls:
                vals = []
                for g in groups:
                    hit = [r[metric] * scale for r in op_rows if f"{r['case']} {r['part']}" == g and r["impl"] == impl]
                    vals.append(hit[0] if hit else float("nan"))
                series[impl] = vals
            name = os.path.join(out_dir, f"{op}_{'time' if metric == 'median_s' else 'floor'}.png")
            _plot.bar_chart(name, f"{op}: {label}", label, groups, series)
            files.append(name)
    sweeps = result.get("sweeps") or []
    for op, param in sorted({(p["op"], p["param"]) for p in sweeps}):
        pts = [p for p in sweeps if p["op"] == op and p["param"] == param]
        series = {}
        for p in pts:
            series.setdefault(f"{p['impl']} {p['part']}", []).append((p["value"], p["median_s"] * 1e3))
        name = os.path.join(out_dir, f"sweep_{op}_{param}.png")
        _plot.line_chart(name, f"{op}: time vs {param}", param, "ms", series)
        files.append(name)
    return files
