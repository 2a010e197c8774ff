"""Did a change make it faster? Compares two bench.json files row by row.

    python -m memkernels.bench compare BEFORE.json AFTER.json [--threshold 0.05] [--out DIR]

Rows are matched by (op, case, impl, part); the runs may come from the same or
different devices. For each matched row it prints both medians with their
spread (interquartile range over the median, from every timed call) and the
time ratio AFTER / BEFORE. A row is a regression when the ratio is above
1 + threshold and the runs' middle halves do not overlap (AFTER's first
quartile above BEFORE's third); the command then exits 1. A ratio above the
threshold inside the noise is marked "~" and not counted. Runs whose cases of the same name have
different shapes are refused (exit 2), naming the case and the fields.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from typing import Dict, List, Optional, Sequence, Tuple

Key = Tuple[str, str, str, str]  # op, case, impl, part


class ShapeMismatch(ValueError):
    """Two runs hold cases of the same name with different shapes."""


def quartiles(times: Sequence[float]) -> Optional[Tuple[float, float]]:
    """(first, third) quartile of the timed calls, or None for fewer than two."""
    if len(times) < 2:
        return None
    q1, _, q3 = statistics.quantiles(times, n=4, method="inclusive")
    return q1, q3


def spread(times: Sequence[float]) -> float:
    """Interquartile range over the median (0 for fewer than two samples)."""
    q = quartiles(times)
    return 0.0 if q is None else (q[1] - q[0]) / statistics.median(times)


def shape_differences(a: dict, b: dict) -> List[str]:
    """'case X: field 1 vs 2, ...' for each case name in both runs whose shapes differ."""
    shapes_a = {r["case"]: r["shape"] for r in a["results"]}
    shapes_b = {r["case"]: r["shape"] for r in b["results"]}
    out = []
    for case in sorted(set(shapes_a) & set(shapes_b)):
        sa, sb = shapes_a[case], shapes_b[case]
        fields = [f"{k} {sa.get(k)!r} vs {sb.get(k)!r}" for k in sorted(set(sa) | set(sb)) if sa.get(k) != sb.get(k)]
        if fields:
            out.append(f"case {case}: " + ", ".join(fields))
    return out


def compare(a: dict, b: dict, threshold: float = 0.05) -> Dict[str, object]:
    """Matched rows of two bench results (``a`` before, ``b`` after).

    Returns ``rows`` (key, medians, spreads, ``ratio`` = b / a time,
    ``regression``), ``only_a``, ``only_b`` (unmatched keys) and
    ``regressions`` (messages). Raises ShapeMismatch when a case of the same
    name has different shapes in the two runs.
    """
    diffs = shape_differences(a, b)
    if diffs:
        raise ShapeMismatch("the runs' shapes differ: " + "; ".join(diffs))

    def index(result: dict) -> Dict[Key, dict]:
        return {(r["op"], r["case"], r["impl"], r["part"]): r for r in result["results"]}

    ia, ib = index(a), index(b)
    rows, regressions = [], []
    for key in [k for k in ia if k in ib]:
        ra, rb = ia[key], ib[key]
        ratio = rb["median_s"] / ra["median_s"]
        qa, qb = quartiles(ra.get("times_s", [])), quartiles(rb.get("times_s", []))
        beyond_noise = qa is None or qb is None or qb[0] > qa[1]
        slower = ratio > 1.0 + threshold
        regressed = slower and beyond_noise
        rows.append({"op": key[0], "case": key[1], "impl": key[2], "part": key[3],
                     "median_a_s": ra["median_s"], "median_b_s": rb["median_s"],
                     "spread_a": spread(ra.get("times_s", [])), "spread_b": spread(rb.get("times_s", [])),
                     "ratio": ratio, "regression": regressed, "within_noise": slower and not beyond_noise})
        if regressed:
            regressions.append(f"{key[1]} {key[2]} {key[3]}: {ratio:.3f}x the time "
                               f"({ra['median_s'] * 1e3:.4g} -> {rb['median_s'] * 1e3:.4g} ms)")
    return {"rows": rows, "only_a": [k for k in ia if k not in ib], "only_b": [k for k in ib if k not in ia],
            "regressions": regressions, "threshold": threshold,
            "device_a": a["environment"].get("device_name"), "device_b": b["environment"].get("device_name")}


def format_comparison(c: Dict[str, object], name_a: str, name_b: str) -> str:
    head = (f"{'case':<18}{'impl':<30}{'part':<18}{'A ms':>10}{'±IQR':>7}{'B ms':>10}{'±IQR':>7}"
            f"{'B/A':>8}")
    lines = [f"A: {name_a} ({c['device_a']})", f"B: {name_b} ({c['device_b']})", head, "-" * len(head)]
    for r in c["rows"]:
        flag = (f"  REGRESSION (> {1 + c['threshold']:.2f}x, beyond the noise)" if r["regression"]
                else "  ~ (slower, within the noise)" if r["within_noise"] else "")
        lines.append(f"{r['case']:<18}{r['impl']:<30}{r['part']:<18}{r['median_a_s'] * 1e3:>10.4g}"
                     f"{100 * r['spread_a']:>6.1f}%{r['median_b_s'] * 1e3:>10.4g}{100 * r['spread_b']:>6.1f}%"
                     f"{r['ratio']:>8.3f}{flag}")
    for key in c["only_a"]:
        lines.append(f"only in A: {' '.join(key[1:])}")
    for key in c["only_b"]:
        lines.append(f"only in B: {' '.join(key[1:])}")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, object]:
    p = argparse.ArgumentParser(prog="python -m memkernels.bench compare", description=__doc__.split("\n\n")[0])
    p.add_argument("before", help="bench.json of the baseline run (A)")
    p.add_argument("after", help="bench.json of the run to judge (B)")
    p.add_argument("--threshold", type=float, default=0.05,
                   help="flag rows whose time ratio B/A exceeds 1 + this (default 0.05)")
    p.add_argument("--out", default=None, help="folder for compare.json and compare.png")
    args = p.parse_args(argv)
    with open(args.before) as f:
        a = json.load(f)
    with open(args.after) as f:
        b = json.load(f)
    try:
        c = compare(a, b, args.threshold)
    except ShapeMismatch as e:
        print(f"compare: refused: {e}", file=sys.stderr)
        raise SystemExit(2)
    if args.out:
        from .plots import draw_comparison

        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "compare.json"), "w") as f:
            json.dump(c, f, indent=1)
        notices: List[str] = []
        c["plots"] = draw_comparison(c, args.out, notices)
        for msg in notices:
            print(msg)
    print(format_comparison(c, args.before, args.after))
    for msg in c["regressions"]:
        print(f"REGRESSION {msg}")
    c["errors"] = c["regressions"]
    return c
