"""The bench entry point: runs a preset's cases and sweeps on one device,
prints the table last, writes bench.json and the plots; ``compare`` judges
one run against another (compare.py).

    python -m memkernels.bench                      # quick preset on CPU, paper preset on a GPU
    python -m memkernels.bench --preset paper --out results/
    python -m memkernels.bench compare BEFORE.json AFTER.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, replace
from typing import Callable, Dict, List, Optional

import torch

import memkernels

from .cases import PRESETS, SWEEPS, EBCase, LayerCase, PKCase, UpdateCase
from .embedding_bag import bench_embedding_bag
from .harness import ERRORS, PROGRESS, Row, measure_ceilings
from .layer import bench_layer
from .pk_topk import bench_pk_topk
from .plots import draw_plots
from .train_step import bench_update

# The bench function of each case type.
RUNNERS: Dict[type, Callable[..., List[Row]]] = {
    EBCase: bench_embedding_bag,
    PKCase: bench_pk_topk,
    LayerCase: bench_layer,
    UpdateCase: bench_update,
}

# Cases (or baselines) that raised something other than out-of-memory, in
# this process: harness.ERRORS.


def bench_case(case, device: torch.device, ceilings, reps: int, **kw) -> List[Row]:
    """One case's rows; a case whose inputs do not fit the device is skipped."""
    try:
        return RUNNERS[type(case)](case, device, ceilings, reps, **kw)
    except torch.OutOfMemoryError:
        print(f"skipped {case.name}: out of memory on {device}")
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return []
    except Exception as e:  # noqa: BLE001 - one failing case must not hide the others' numbers
        # Recorded and reported (main() exits non-zero); the remaining cases run
        # unless the device is left unusable.
        msg = f"{case.name}: {type(e).__name__}: {e}"
        print(f"FAILED case {msg}")
        ERRORS.append(msg)
        return []


def run_sweeps(preset: str, device: torch.device, ceilings, reps: int) -> List[Dict[str, object]]:
    points = []
    for op, field_name, base, values in SWEEPS[preset]:
        for value in values:
            case = replace(base, **{field_name: value}, name=f"{base.name}_{field_name}={value}")
            if op == "embedding_bag":
                rows = bench_case(case, device, ceilings, reps,
                                  impls={"memkernels_sparse", "torch.F.embedding_bag_sparse"})
            else:
                # The compiled baseline would recompile at every point: eager only.
                rows = bench_case(case, device, ceilings, reps, parts=("forward",), baselines=("paper_composite",))
            for r in rows:
                points.append({"op": op, "param": field_name, "value": value, "impl": r.impl, "part": r.part,
                               "shape": r.shape, "median_s": r.median_s, "times_s": r.times_s, "GBps": r.GBps,
                               "pct_floor": r.pct_floor})
    return points


def _run(cmd: List[str], cwd: Optional[str] = None) -> Optional[str]:
    """A command's first line of output, or None when it cannot run."""
    if shutil.which(cmd[0]) is None:
        return None
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20, cwd=cwd)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = out.stdout.strip().splitlines()
    return lines[0].strip() if out.returncode == 0 and lines else None


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def source_commit() -> Optional[str]:
    """The commit of the code that runs: the git checkout memkernels is
    imported from (an editable install; "-dirty" with uncommitted changes to
    tracked files), else the commit the installed package was built from
    (memkernels/BUILD_COMMIT, written by setup.py), else None (an sdist)."""
    pkg = os.path.dirname(os.path.abspath(memkernels.__file__))
    src = os.path.dirname(pkg)
    if os.path.isdir(os.path.join(src, ".git")):
        head = _run(["git", "rev-parse", "HEAD"], cwd=src)
        if head:
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=src,
                                   capture_output=True, text=True, timeout=20).stdout.strip()
            return head + ("-dirty" if dirty else "")
    try:
        with open(os.path.join(pkg, "BUILD_COMMIT")) as f:
            return f.read().strip() or None
    except OSError:
        return None


def environment(device: torch.device, argv: Optional[List[str]] = None) -> Dict[str, object]:
    """What is needed to reproduce a run: where and when, the command, the
    code (commit and build facts), the device and its driver, the software
    versions. The preset, repetitions, ceilings and every case's shape are
    beside it in the result."""
    env = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": " ".join(["python", "-m", "memkernels.bench"] + list(sys.argv[1:] if argv is None else argv)),
        "commit": source_commit(),
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
        "cpu": _cpu_name(),
        "driver": (_run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
                   if device.type == "cuda" else None),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "threads": torch.get_num_threads(),
        "memkernels": memkernels.build_info(),
        "python": platform.python_version(),
    }
    return env


def format_table(rows: List[Row]) -> str:
    head = (f"{'case':<15}{'impl':<30}{'part':<18}{'median ms':>10}{'GB/s':>8}{'% copy':>8}{'TFLOP/s':>9}"
            f"{'% floor':>8}{'peak MB':>9}  speedup")
    lines = [head, "-" * len(head)]
    for r in rows:
        peak = f"{r.peak_bytes / 2**20:.0f}" if r.peak_bytes is not None else "-"
        sp = ", ".join(f"{v:.2f}x vs {k}" for k, v in r.speedup.items())
        lines.append(f"{r.case:<15}{r.impl:<30}{r.part:<18}{r.median_s * 1e3:>10.3f}{r.GBps:>8.1f}"
                     f"{r.pct_copy:>8.1f}{r.TFLOPs:>9.3f}{r.pct_floor:>8.1f}{peak:>9}  {sp}"
                     + (f" ({r.note})" if r.note else ""))
    return "\n".join(lines)


def main(argv=None) -> Dict[str, object]:
    """Runs the bench (or, with ``compare`` first, compares two runs); returns
    the result, whose ``errors`` are non-empty when something failed."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["compare"]:
        from .compare import main as compare_main

        return compare_main(argv[1:])
    p = argparse.ArgumentParser(prog="python -m memkernels.bench", description="memkernels bench suite: each op side by side with its PyTorch baselines.")
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="quick (CPU-sized) or paper (reference shapes); default: paper on a GPU, else quick")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--reps", type=int, default=None, help="timed calls per case (default 20, 5 for tiny)")
    p.add_argument("--out", default=None, help="folder for bench.json and the PNG plots")
    p.add_argument("--no-sweeps", action="store_true", help="skip the scaling sweeps")
    p.add_argument("--cases", default=None,
                   help="comma-separated case names (or name prefixes) of the preset to run, e.g. pk_ref,update_N=16M")
    p.epilog = "python -m memkernels.bench compare BEFORE.json AFTER.json: the change's ratio per row (--help there)"
    args = p.parse_args(argv)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    preset = args.preset or ("paper" if device.type == "cuda" else "quick")
    reps = args.reps or (5 if preset == "tiny" else 20)
    ceilings = measure_ceilings(device, quick=preset in ("tiny", "quick"))
    ERRORS.clear()
    rows: List[Row] = []
    cases = PRESETS[preset]
    if args.cases:
        wanted = [w.strip() for w in args.cases.split(",") if w.strip()]
        cases = [c for c in cases if any(c.name.startswith(w) for w in wanted)]
        if not cases:
            p.error(f"--cases {args.cases!r} matches no case of preset {preset!r}: "
                    + ", ".join(c.name for c in PRESETS[preset]))
    env = environment(device, argv)

    def save(results, sweeps, complete):
        out = {"environment": env, "preset": preset, "reps": reps, "ceilings": ceilings,
               "results": [asdict(r) for r in results], "sweeps": sweeps, "errors": list(ERRORS),
               "complete": complete}
        if args.out:
            os.makedirs(args.out, exist_ok=True)
            with open(os.path.join(args.out, "bench.json"), "w") as f:
                json.dump(out, f, indent=1)
        return out

    PROGRESS.start()
    for i, case in enumerate(cases, start=1):
        PROGRESS.prefix = f"case {i}/{len(cases)}: "
        rows += bench_case(case, device, ceilings, reps)
        save(rows, [], complete=False)  # a run stopped by a time limit keeps the cases it finished
    PROGRESS.prefix = "sweep: "
    sweeps = [] if args.no_sweeps else run_sweeps(preset, device, ceilings, reps)
    PROGRESS.clear()
    PROGRESS.prefix = ""
    result = save(rows, sweeps, complete=True)
    notices: List[str] = []
    if args.out:
        result["plots"] = draw_plots(result, args.out, notices)
    for msg in notices:
        print(msg)
    print(f"memkernels bench: {env['device_name']} ({device.type}), torch {env['torch']}, preset {preset}")
    print(f"ceilings: copy {ceilings['copy_GBps']:.1f} GB/s, matmul {ceilings['matmul_TFLOPs']:.2f} TFLOP/s "
          f"({ceilings['matmul_dtype']})")
    if sweeps:
        print("sweeps (median ms):")
        for op, param in sorted({(p["op"], p["param"]) for p in sweeps}):
            pts = [p for p in sweeps if p["op"] == op and p["param"] == param]
            for impl in sorted({p["impl"] for p in pts}):
                line = "  ".join(f"{p['value']}:{p['median_s'] * 1e3:.3g}" for p in pts if p["impl"] == impl)
                print(f"  {op} vs {param:<7} {impl:<30} {line}")
    print(format_table(rows))
    for msg in result["errors"]:
        print(f"FAILED case {msg}")
    return result
