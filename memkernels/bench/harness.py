"""The bench harness: timing (CUDA events or wall clock, rotated inputs, a
time budget per case), peak memory windows, the device's measured ceilings,
and the result row with its derived rates, percent of floor and speedups."""

from __future__ import annotations

import gc
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, TextIO

import torch

# Seconds of timed calls per case and implementation, at most (slow baselines
# get fewer calls, never fewer than 3).
BUDGET_S = 3.0

# Failures of this process's bench run (a case, or one baseline of a case):
# printed at the end and stored in bench.json; the CLI exits non-zero.
ERRORS: List[str] = []


class Progress:
    """One status line on a terminal: what is being timed (case, impl, part)
    and the seconds since the run started, rewritten in place. Writes nothing
    when the stream is not a terminal, so logs and pipes stay clean."""

    def __init__(self, stream: Optional[TextIO] = None):
        self.stream = stream if stream is not None else sys.stderr
        self.prefix = ""
        self.t0 = time.perf_counter()

    @property
    def enabled(self) -> bool:
        isatty = getattr(self.stream, "isatty", None)
        return bool(isatty and isatty())

    def start(self) -> None:
        self.t0 = time.perf_counter()

    def show(self, text: str) -> None:
        if self.enabled:
            elapsed = time.perf_counter() - self.t0
            self.stream.write(f"\r\033[K[{elapsed:7.1f} s] {self.prefix}{text}")
            self.stream.flush()

    def clear(self) -> None:
        if self.enabled:
            self.stream.write("\r\033[K")
            self.stream.flush()


# The run's status line; the CLI sets its prefix (case i of n) and clears it.
PROGRESS = Progress()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(fn: Callable[[int], object], device: torch.device, warmup: int = 3, reps: int = 20,
            budget_s: Optional[float] = None, label: Optional[str] = None) -> List[float]:
    """Seconds per call of ``fn(i)`` for ``reps`` calls after ``warmup``.

    ``i`` is the call number, so ``fn`` can rotate among several input sets
    and keep caches from flattering. On CUDA each call is timed with events.
    With ``budget_s``, slow functions get fewer calls (at least 3): the
    number of calls is cut so they take about ``budget_s`` seconds.
    ``label`` is shown on the progress line while it runs.
    """
    if label:
        PROGRESS.show(label)
    t0 = time.perf_counter()
    for i in range(warmup):
        fn(i)
    sync(device)
    if budget_s is not None and warmup:
        per_call = (time.perf_counter() - t0) / warmup
        reps = min(reps, max(3, int(budget_s / max(per_call, 1e-9))))
    times = []
    if device.type == "cuda":
        for i in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn(i)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
    else:
        for i in range(reps):
            t0 = time.perf_counter()
            fn(i)
            times.append(time.perf_counter() - t0)
    return times


def peak_reset(device):
    """Starts a peak-memory window; returns the bytes allocated at its start.

    Collects garbage first: a previous implementation's optimizer state can
    sit in a reference cycle, and counting it in the base would understate
    the next implementation's peak."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    return 0


def peak_bytes(device, base):
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device) - base)
    return None


def measure_ceilings(device: torch.device, quick: bool) -> Dict[str, float]:
    """Copy bandwidth (bytes read + written per second) and matmul rate."""
    n_bytes = (256 << 20) if device.type == "cpu" or quick else (2 << 30)
    src = torch.empty(n_bytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    t = statistics.median(time_fn(lambda i: dst.copy_(src), device, warmup=3, reps=10))
    copy_gbs = 2 * n_bytes / t / 1e9
    src = dst = None  # free before the matmul
    if device.type == "cuda":
        n, dtype = (2048 if quick else 8192), torch.bfloat16
    else:
        n, dtype = 1024, torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    t = statistics.median(time_fn(lambda i: a @ b, device, warmup=2, reps=10))
    return {"copy_GBps": copy_gbs, "matmul_TFLOPs": 2 * n**3 / t / 1e12, "matmul_dtype": str(dtype)}


@dataclass
class Row:
    op: str
    case: str
    impl: str
    part: str
    device: str
    shape: Dict[str, object]
    median_s: float
    times_s: List[float]
    bytes: int
    GBps: float
    pct_copy: float
    peak_bytes: Optional[int]
    flops: int = 0
    TFLOPs: float = 0.0
    pct_floor: float = 0.0  # 100 * max(bytes / copy rate, flops / matmul rate) / median time
    speedup: Dict[str, float] = field(default_factory=dict)
    note: str = ""


def make_row(op, case, impl, part, device, times, nbytes, flops, ceilings, peak) -> Row:
    med = statistics.median(times)
    floor = max(nbytes / (ceilings["copy_GBps"] * 1e9), flops / (ceilings["matmul_TFLOPs"] * 1e12))
    return Row(op, case.name, impl, part, device.type, asdict(case), med, times, nbytes, nbytes / med / 1e9,
               100.0 * nbytes / med / 1e9 / ceilings["copy_GBps"], peak, flops, flops / med / 1e12,
               100.0 * floor / med)


def add_speedups(rows: List[Row], pairs=None) -> None:
    """Speedup of each memkernels row over each baseline row of the same part
    (sparse variants against sparse baselines, dense against dense), or only
    over the (ours, baseline) impl pairs given."""
    for r in rows:
        if not r.impl.startswith("memkernels"):
            continue
        for b in rows:
            if b.part != r.part or b.impl.startswith("memkernels"):
                continue
            if pairs is not None:
                if (r.impl, b.impl) in pairs:
                    r.speedup[b.impl] = b.median_s / r.median_s
            elif b.impl.endswith("_sparse") == r.impl.endswith("_sparse"):
                r.speedup[b.impl] = b.median_s / r.median_s
