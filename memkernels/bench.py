"""memkernels bench suite: each op side by side with its PyTorch baselines, in
one process on one device, against ceilings measured at start-up.

    python -m memkernels.bench                      # quick preset on CPU, paper preset on a GPU
    python -m memkernels.bench --preset paper --out results/

For every case it reports the median time, the bytes the op must move (a
written count, see ``embedding_bag_bytes``), the achieved GB/s, the percent of
the measured copy bandwidth, peak memory, and the speedup over each baseline.
It prints a table last and writes ``bench.json`` into ``--out``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F

import memkernels
from memkernels import reference

# ---- timing ---------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(fn: Callable[[int], object], device: torch.device, warmup: int = 3, reps: int = 20,
            budget_s: Optional[float] = None) -> List[float]:
    """Seconds per call of ``fn(i)`` for ``reps`` calls after ``warmup``.

    ``i`` is the call number, so ``fn`` can rotate among several input sets
    and keep caches from flattering. On CUDA each call is timed with events.
    With ``budget_s``, slow functions get fewer calls (at least 3): the
    number of calls is cut so they take about ``budget_s`` seconds.
    """
    t0 = time.perf_counter()
    for i in range(warmup):
        fn(i)
    _sync(device)
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


def _peak_reset(device):
    """Starts a peak-memory window; returns the bytes allocated at its start.

    Collects garbage first: a previous implementation's optimizer state can
    sit in a reference cycle, and counting it in the base would understate
    the next one's peak (seen on a GPU: a 16M-row SparseAdam step reported
    0.9 GB)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    return 0


def _peak_bytes(device, base):
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device) - base)
    return None


# Seconds of timed calls per case and implementation, at most (slow baselines
# get fewer calls, never fewer than 3).
BUDGET_S = 3.0

# ---- ceilings -----------------------------------------------------------------------


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


# ---- byte counts -----------------------------------------------------------------------


def embedding_bag_bytes(N: int, D: int, T: int, B: int, elt: int, idx: int, unique_rows: int, part: str) -> int:
    """The fewest bytes each part must move through memory.

    forward: every gathered row once (T*B*D), indices and fp32 weights, the
        output once.
    backward_sparse: grad_out once, each distinct value row read once (for the
        weights' gradient) and its gradient written once, indices and weights
        read, the weights' gradient written.
    backward_dense: as sparse, plus the dense gradient's untouched rows
        written (zeros): N*D in all instead of U*D.
    """
    pairs = T * B
    if part == "forward":
        return pairs * D * elt + pairs * (idx + 4) + T * D * elt
    common = T * D * elt + unique_rows * D * elt + pairs * (idx + 4) + pairs * 4
    if part == "backward_sparse":
        return common + unique_rows * D * elt
    if part == "backward_dense":
        return common + N * D * elt
    raise ValueError(part)


# ---- cases -----------------------------------------------------------------------------


def pk_topk_counts(T: int, H: int, n: int, Dk: int, k: int, elt: int, part: str):
    """(bytes, FLOPs) pk_topk must move and do.

    forward: query and keys read once, scores (fp32) and slot ids (int64)
        written once; FLOPs of the two half-score products, 2*T*H*n*Dk (the
        selections are comparisons, not counted).
    backward (through the selected pairs): grad_scores and indices read,
        the selected key rows read (at most 2*k per token and head, counted as
        2*k), query read again and grad_query written, grad_keys written (dense,
        all of it); FLOPs 2 * 2 * T*H*2k*(Dk/2).
    """
    half = Dk // 2
    if part == "forward":
        return T * H * Dk * elt + H * 2 * n * half * elt + T * H * k * (4 + 8), 2 * T * H * n * Dk
    if part == "backward":
        nbytes = T * H * k * (4 + 8) + T * H * 2 * k * half * elt + 2 * T * H * Dk * elt + H * 2 * n * half * elt
        return nbytes, 4 * T * H * 2 * k * half
    raise ValueError(part)


@dataclass
class PKCase:
    name: str
    T: int
    H: int
    n_keys: int
    Dk: int
    k: int
    dtype: str


@dataclass
class LayerCase:
    name: str
    T: int
    dim: int
    n_keys: int
    heads: int
    knn: int
    k_dim: int
    dtype: str


def layer_flops(c: LayerCase) -> int:
    """Forward FLOPs of a Memory+ ProductKeyMemory layer (v_dim = dim):
    query projection, sub-key scores, weighted value bag, W_s and W_o."""
    per_token = (2 * c.dim * c.heads * c.k_dim + 2 * c.heads * c.n_keys * c.k_dim
                 + 2 * c.heads * c.knn * c.dim + 4 * c.dim * c.dim)
    return c.T * per_token


def layer_bytes(c: LayerCase, elt: int) -> int:
    """Fewest bytes of a layer forward: x read, the selected value rows
    gathered, the weights of the projections and the keys read, y written."""
    weights = (c.dim * c.heads * c.k_dim + c.heads * c.n_keys * c.k_dim + 2 * c.dim * c.dim) * elt
    return 2 * c.T * c.dim * elt + c.T * c.heads * c.knn * c.dim * elt + weights


@dataclass
class UpdateCase:
    """A training step of a value table: forward, backward and an Adam-type update."""
    name: str
    N: int
    D: int
    T: int
    B: int
    dtype: str


@dataclass
class EBCase:
    name: str
    N: int
    D: int
    T: int
    B: int
    dtype: str
    index_dtype: str = "int64"


PRESETS = {
    # CPU-sized: the whole suite well under a minute.
    "quick": [
        EBCase("eb_cpu", 65536, 256, 2048, 128, "float32"),
        PKCase("pk_cpu", 1024, 4, 1024, 512, 32, "float32"),
        LayerCase("layer_cpu", 1024, 256, 256, 4, 32, 128, "float32"),
        UpdateCase("update_N=16k", 1 << 14, 64, 1024, 32, "float32"),
        UpdateCase("update_N=256k", 1 << 18, 64, 1024, 32, "float32"),
        UpdateCase("update_N=1M", 1 << 20, 64, 1024, 32, "float32"),
    ],
    # The design's reference shapes (GPU).
    "paper": [
        EBCase("eb_ref_bag32", 1 << 20, 4096, 4096, 32, "bfloat16"),
        EBCase("eb_ref_bag128", 1 << 20, 4096, 4096, 128, "bfloat16"),
        PKCase("pk_ref", 4096, 4, 1024, 512, 32, "bfloat16"),
        LayerCase("layer_ref", 4096, 4096, 1024, 4, 32, 512, "bfloat16"),
        # D=256 fp32 so that dense AdamW (table, gradient, two moments) still
        # fits at 16M rows (64 GB in all); larger tables skip on out-of-memory.
        UpdateCase("update_N=64k", 1 << 16, 256, 4096, 32, "float32"),
        UpdateCase("update_N=1M", 1 << 20, 256, 4096, 32, "float32"),
        UpdateCase("update_N=4M", 1 << 22, 256, 4096, 32, "float32"),
        UpdateCase("update_N=16M", 1 << 24, 256, 4096, 32, "float32"),
    ],
    # For the test suite: tiny, seconds.
    "tiny": [
        EBCase("eb_tiny", 1000, 24, 16, 4, "float32"),
        PKCase("pk_tiny", 16, 2, 64, 32, 8, "float32"),
        LayerCase("layer_tiny", 32, 32, 16, 2, 4, 16, "float32"),
        UpdateCase("update_tiny", 1000, 8, 16, 4, "float32"),
    ],
}


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


def _inputs(case: EBCase, device, sets: int):
    dtype = getattr(torch, case.dtype)
    idt = getattr(torch, case.index_dtype)
    g = torch.Generator(device=device).manual_seed(0)
    values = torch.randn(case.N, case.D, generator=g, device=device, dtype=dtype)
    batches = []
    for _ in range(sets):
        idx = torch.randint(0, case.N, (case.T, case.B), generator=g, device=device).to(idt)
        w = torch.randn(case.T, case.B, generator=g, device=device)
        gout = torch.randn(case.T, case.D, generator=g, device=device, dtype=dtype)
        batches.append((idx, w, gout))
    return values, batches


def torch_computes_weights_grad(values) -> bool:
    """False where PyTorch's embedding_bag has no backward for per-sample
    weights (bfloat16 on CUDA): its rows then time the values' gradient only."""
    return not (values.is_cuda and values.dtype == torch.bfloat16)


def _eb_impls(values, batches, case):
    """forward and forward+backward callables per implementation."""
    dtype = values.dtype

    def ours(i, backward, sparse=False):
        idx, w, gout = batches[i % len(batches)]
        v = values.requires_grad_(backward)
        ww = w.requires_grad_(backward)
        out = memkernels.embedding_bag(v, idx, ww, sparse=sparse, check_indices=False)
        if backward:
            torch.autograd.grad(out, (v, ww), gout)
        return out

    # PyTorch's CUDA kernel has no bfloat16 backward for per-sample weights:
    # there its rows compute the values' gradient only (less work than ours).
    torch_grad_w = torch_computes_weights_grad(values)

    def torch_op(i, backward, sparse=False):
        idx, w, gout = batches[i % len(batches)]
        v = values.requires_grad_(backward)
        ww = w.detach().to(dtype).requires_grad_(backward and torch_grad_w)
        out = F.embedding_bag(idx, v, mode="sum", per_sample_weights=ww, sparse=sparse)
        if backward:
            torch.autograd.grad(out, (v, ww) if torch_grad_w else (v,), gout)
        return out

    def ref(i, backward):
        idx, w, gout = batches[i % len(batches)]
        v = values.requires_grad_(backward)
        ww = w.requires_grad_(backward)
        out = reference.embedding_bag(v, idx, ww)
        if backward:
            torch.autograd.grad(out, (v, ww), gout)
        return out

    return {
        "memkernels": lambda i, bw: ours(i, bw),
        "memkernels_sparse": lambda i, bw: ours(i, bw, sparse=True),
        "torch.F.embedding_bag": torch_op,
        "torch.F.embedding_bag_sparse": lambda i, bw: torch_op(i, bw, sparse=True),
        "reference": ref,
    }


def bench_embedding_bag(case: EBCase, device: torch.device, ceilings, reps: int, impls=None) -> List[Row]:
    values, batches = _inputs(case, device, sets=3)
    elt = values.element_size()
    idx_bytes = 8 if case.index_dtype == "int64" else 4
    unique = int(statistics.mean(torch.unique(b[0]).numel() for b in batches))
    rows: List[Row] = []
    all_impls = _eb_impls(values, batches, case)
    for impl, fn in all_impls.items():
        if impls and impl not in impls:
            continue
        for part, backward in (("forward", False), ("forward+backward", True)):
            if impl.endswith("_sparse") and not backward:
                continue
            base = _peak_reset(device)
            try:
                times = time_fn(lambda i: fn(i, backward), device, warmup=2, reps=reps, budget_s=BUDGET_S)
            except torch.OutOfMemoryError:
                continue
            peak = _peak_bytes(device, base)
            nbytes = embedding_bag_bytes(case.N, case.D, case.T, case.B, elt, idx_bytes, unique, "forward")
            if backward:
                bpart = "backward_sparse" if impl.endswith("_sparse") else "backward_dense"
                nbytes += embedding_bag_bytes(case.N, case.D, case.T, case.B, elt, idx_bytes, unique, bpart)
            flops = 2 * case.T * case.B * case.D * (3 if backward else 1)
            rows.append(_row("embedding_bag", case, impl, part, device, times, nbytes, flops, ceilings, peak))
            if backward and impl.startswith("torch.") and not torch_computes_weights_grad(values):
                rows[-1].note = "values' gradient only: torch has no bf16 weights gradient on CUDA"
    values.requires_grad_(False)
    _speedups(rows)
    return rows


def _row(op, case, impl, part, device, times, nbytes, flops, ceilings, peak) -> Row:
    med = statistics.median(times)
    floor = max(nbytes / (ceilings["copy_GBps"] * 1e9), flops / (ceilings["matmul_TFLOPs"] * 1e12))
    return Row(op, case.name, impl, part, device.type, asdict(case), med, times, nbytes, nbytes / med / 1e9,
               100.0 * nbytes / med / 1e9 / ceilings["copy_GBps"], peak, flops, flops / med / 1e12,
               100.0 * floor / med)


def _speedups(rows: List[Row], pairs=None) -> None:
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


def bench_layer(case: LayerCase, device: torch.device, ceilings, reps: int) -> List[Row]:
    """ProductKeyMemory forward+backward: kernels backend vs reference backend,
    same parameters."""
    from .nn import ProductKeyMemory

    dtype = getattr(torch, case.dtype)
    cfg = dict(n_keys=case.n_keys, heads=case.heads, knn=case.knn, k_dim=case.k_dim, device=device, dtype=dtype)
    torch.manual_seed(0)
    layer = ProductKeyMemory(case.dim, **cfg)
    xs = [torch.randn(case.T, case.dim, device=device, dtype=dtype) for _ in range(3)]
    elt = torch.empty((), dtype=dtype).element_size()
    variants = [("memkernels", layer, "kernels"), ("reference", layer, "reference")]
    external = _product_key_memory_layer(case, device, dtype)
    if external is not None:
        # The published package's plain PKM (no Memory+), against ours in the
        # same configuration.
        plain = ProductKeyMemory(case.dim, **cfg, memory_plus=False)
        variants += [("memkernels_plain", plain, "kernels"), ("product-key-memory", external, None)]
    rows: List[Row] = []
    for impl, module, backend in variants:
        if backend is not None:
            module.backend = backend
        for part, backward in (("forward", False), ("forward+backward", True)):
            def call(i, module=module):
                with torch.set_grad_enabled(backward):
                    x = xs[i % 3]
                    y = module(x) if backend is not None else module(x.unsqueeze(0))
                    if backward:
                        y.backward(torch.ones_like(y))

            base = _peak_reset(device)
            try:
                times = time_fn(call, device, warmup=2, reps=reps, budget_s=BUDGET_S)
            except torch.OutOfMemoryError:
                continue
            finally:
                module.zero_grad(set_to_none=True)
            peak = _peak_bytes(device, base)
            flops = layer_flops(case) * (3 if backward else 1)
            nbytes = layer_bytes(case, elt) * (2 if backward else 1)
            rows.append(_row("layer", case, impl, part, device, times, nbytes, flops, ceilings, peak))
    _speedups(rows, pairs={("memkernels", "reference"), ("memkernels_plain", "product-key-memory")})
    return rows


def make_train_step(impl: str, case: UpdateCase, device: torch.device, generator=None):
    """A fresh value table and optimizer for `impl`, and the step
    ``step(indices, weights, grad_out)``: forward, backward, update.

    impl: ``memkernels_fused`` (SparseRowOptimizer fused into the backward),
    ``memkernels_sparse`` (sparse gradient + SparseRowOptimizer),
    ``torch_dense_adamw`` (F.embedding_bag + AdamW) or ``torch_sparse_adam``
    (F.embedding_bag(sparse=True) + SparseAdam)."""
    from .optim import SparseRowOptimizer

    dtype = getattr(torch, case.dtype)
    table = torch.nn.Parameter(torch.randn(case.N, case.D, generator=generator, device=device, dtype=dtype))
    if impl.startswith("memkernels"):
        opt = SparseRowOptimizer([table], "adam", lr=1e-3)
        if impl == "memkernels_fused":
            opt.fuse(table)
    elif impl == "torch_dense_adamw":
        opt = torch.optim.AdamW([table], lr=1e-3)
    elif impl == "torch_sparse_adam":
        opt = torch.optim.SparseAdam([table], lr=1e-3)
    else:
        raise ValueError(f"unknown train-step impl {impl!r}")

    def step(idx, w, gout):
        if impl.startswith("memkernels"):
            out = memkernels.embedding_bag(table, idx, w, sparse=impl == "memkernels_sparse", check_indices=False)
        else:
            out = F.embedding_bag(idx, table, mode="sum", per_sample_weights=w.to(dtype),
                                  sparse=impl == "torch_sparse_adam")
        out.backward(gout)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def bench_update(case: UpdateCase, device: torch.device, ceilings, reps: int) -> List[Row]:
    """One training step of a value table (forward, backward, Adam-type
    update), four ways: memkernels' fused backward+update, memkernels' sparse
    gradient + SparseRowOptimizer, torch's dense gradient + AdamW, and torch's
    sparse gradient + SparseAdam. Ours should stay flat as N grows."""

    dtype = getattr(torch, case.dtype)
    g = torch.Generator(device=device).manual_seed(0)
    data = []
    for _ in range(3):
        idx = torch.randint(0, case.N, (case.T, case.B), generator=g, device=device)
        w = torch.rand(case.T, case.B, generator=g, device=device)
        gout = torch.randn(case.T, case.D, generator=g, device=device, dtype=dtype)
        data.append((idx, w, gout))
    unique = int(statistics.mean(torch.unique(b[0]).numel() for b in data))
    elt = torch.empty((), dtype=dtype).element_size()
    base = embedding_bag_bytes(case.N, case.D, case.T, case.B, elt, 8, unique, "forward")
    base += embedding_bag_bytes(case.N, case.D, case.T, case.B, elt, 8, unique, "backward_sparse")
    # The update reads and writes each touched row and its two fp32 moments.
    nbytes = base + unique * case.D * 2 * (elt + 8)

    rows: List[Row] = []
    for impl in ("memkernels_fused", "memkernels_sparse", "torch_dense_adamw", "torch_sparse_adam"):
        base_mem = _peak_reset(device)
        try:
            step = make_train_step(impl, case, device, g)
            times = time_fn(lambda i: step(*data[i % 3]), device, warmup=2, reps=reps, budget_s=BUDGET_S)
        except torch.OutOfMemoryError:
            continue
        finally:
            step = None
        peak = _peak_bytes(device, base_mem)
        rows.append(_row("train_step", case, impl, "fwd+bwd+update", device, times, nbytes,
                         6 * case.T * case.B * case.D, ceilings, peak))
    _speedups(rows, pairs={("memkernels_fused", "torch_dense_adamw"), ("memkernels_fused", "torch_sparse_adam"),
                           ("memkernels_sparse", "torch_sparse_adam")})
    return rows


def _product_key_memory_layer(case: LayerCase, device, dtype):
    """The `product-key-memory` package's PKM at this case's configuration,
    or None when the package is not installed."""
    try:
        from product_key_memory import PKM
    except ImportError:
        return None
    return PKM(case.dim, heads=case.heads, num_keys=case.n_keys, topk=case.knn, dim_head=case.k_dim).to(
        device=device, dtype=dtype)


def bench_pk_topk(case: PKCase, device: torch.device, ceilings, reps: int,
                  parts=("forward", "forward+backward")) -> List[Row]:
    dtype = getattr(torch, case.dtype)
    g = torch.Generator(device=device).manual_seed(0)
    queries = [torch.randn(case.T, case.H, case.Dk, generator=g, device=device, dtype=dtype) for _ in range(3)]
    keys = torch.randn(case.H, 2, case.n_keys, case.Dk // 2, generator=g, device=device, dtype=dtype)
    grads = [torch.randn(case.T, case.H, case.k, generator=g, device=device) for _ in range(3)]
    elt = keys.element_size()
    impls = {"memkernels": memkernels.pk_topk, "composite": reference.pk_topk}
    if device.type == "cuda" and dtype in (torch.float16, torch.bfloat16) and case.k <= 128:
        impls["memkernels_fused"] = lambda q, kk, k: memkernels.pk_topk(q, kk, k, impl="fused")
    rows: List[Row] = []
    for impl, fn in impls.items():
        for part, backward in (("forward", False), ("forward+backward", True)):
            if part not in parts:
                continue
            def call(i):
                q = queries[i % 3].requires_grad_(backward)
                kk = keys.requires_grad_(backward)
                scores, _ = fn(q, kk, case.k)
                if backward:
                    torch.autograd.grad(scores, (q, kk), grads[i % 3].to(scores.dtype))

            base = _peak_reset(device)
            try:
                times = time_fn(call, device, warmup=2, reps=reps, budget_s=BUDGET_S)
            except torch.OutOfMemoryError:
                continue
            peak = _peak_bytes(device, base)
            nbytes, flops = pk_topk_counts(case.T, case.H, case.n_keys, case.Dk, case.k, elt, "forward")
            if backward:
                b_bytes, b_flops = pk_topk_counts(case.T, case.H, case.n_keys, case.Dk, case.k, elt, "backward")
                nbytes, flops = nbytes + b_bytes, flops + b_flops
            rows.append(_row("pk_topk", case, impl, part, device, times, nbytes, flops, ceilings, peak))
    keys.requires_grad_(False)
    for q in queries:
        q.requires_grad_(False)
    _speedups(rows)
    return rows


# Cases that raised something other than out-of-memory, in this process.
ERRORS: List[str] = []


def bench_case(case, device: torch.device, ceilings, reps: int, **kw) -> List[Row]:
    """One case's rows; a case whose inputs do not fit the device is skipped."""
    bench = {EBCase: bench_embedding_bag, PKCase: bench_pk_topk, LayerCase: bench_layer,
             UpdateCase: bench_update}[type(case)]
    try:
        return bench(case, device, ceilings, reps, **kw)
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


# ---- scaling sweeps ---------------------------------------------------------------------------

# (op, swept field, base case, values). The embedding-bag sweeps time the
# sparse backward (it should stay flat in N) against torch's sparse one.
SWEEPS = {
    "quick": [
        ("embedding_bag", "T", EBCase("eb_sweep", 1 << 16, 128, 512, 32, "float32"), [256, 512, 1024, 2048, 4096]),
        ("embedding_bag", "N", EBCase("eb_sweep", 1 << 16, 128, 1024, 32, "float32"), [1 << 12, 1 << 14, 1 << 16, 1 << 18]),
        ("embedding_bag", "D", EBCase("eb_sweep", 1 << 14, 128, 1024, 32, "float32"), [32, 64, 128, 256, 512]),
        ("pk_topk", "k", PKCase("pk_sweep", 256, 4, 512, 256, 32, "float32"), [8, 16, 32, 64]),
        ("pk_topk", "n_keys", PKCase("pk_sweep", 256, 4, 512, 256, 32, "float32"), [128, 256, 512, 1024]),
    ],
    "paper": [
        ("embedding_bag", "T", EBCase("eb_sweep", 1 << 20, 1024, 4096, 32, "bfloat16"), [1024, 2048, 4096, 8192, 16384]),
        ("embedding_bag", "N", EBCase("eb_sweep", 1 << 20, 1024, 4096, 32, "bfloat16"), [1 << 16, 1 << 18, 1 << 20, 1 << 22, 1 << 24]),
        ("embedding_bag", "D", EBCase("eb_sweep", 1 << 20, 1024, 4096, 32, "bfloat16"), [256, 512, 1024, 2048, 4096]),
        ("pk_topk", "k", PKCase("pk_sweep", 4096, 4, 1024, 512, 32, "bfloat16"), [8, 16, 32, 64, 128]),
        ("pk_topk", "n_keys", PKCase("pk_sweep", 4096, 4, 1024, 512, 32, "bfloat16"), [256, 512, 1024, 2048, 4096, 8192]),
    ],
    "tiny": [
        ("embedding_bag", "N", EBCase("eb_sweep", 1000, 16, 16, 4, "float32"), [100, 1000]),
        ("pk_topk", "k", PKCase("pk_sweep", 8, 2, 32, 16, 4, "float32"), [2, 4]),
    ],
}


def run_sweeps(preset: str, device: torch.device, ceilings, reps: int) -> List[Dict[str, object]]:
    points = []
    for op, field_name, base, values in SWEEPS[preset]:
        for value in values:
            case = replace(base, **{field_name: value}, name=f"{base.name}_{field_name}={value}")
            if op == "embedding_bag":
                rows = bench_case(case, device, ceilings, reps,
                                  impls={"memkernels_sparse", "torch.F.embedding_bag_sparse"})
            else:
                rows = bench_case(case, device, ceilings, reps, parts=("forward",))
            for r in rows:
                points.append({"op": op, "param": field_name, "value": value, "impl": r.impl, "part": r.part,
                               "median_s": r.median_s, "GBps": r.GBps, "pct_floor": r.pct_floor})
    return points


# ---- plots --------------------------------------------------------------------------------------


def draw_plots(result: Dict[str, object], out_dir: str) -> List[str]:
    """PNG charts of a bench result: per op, median time and percent of the
    floor per implementation and part; per sweep, time against the swept
    size. Returns the files written."""
    from . import _plot

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


# ---- entry point -----------------------------------------------------------------------------


def environment(device: torch.device) -> Dict[str, object]:
    env = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
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
    p = argparse.ArgumentParser(prog="python -m memkernels.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="quick (CPU-sized) or paper (reference shapes); default: paper on a GPU, else quick")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--reps", type=int, default=None, help="timed calls per case (default 20, 5 for tiny)")
    p.add_argument("--out", default=None, help="folder for bench.json and the PNG plots")
    p.add_argument("--no-sweeps", action="store_true", help="skip the scaling sweeps")
    p.add_argument("--cases", default=None,
                   help="comma-separated case names (or name prefixes) of the preset to run, e.g. pk_ref,update_N=16M")
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
    for case in cases:
        rows += bench_case(case, device, ceilings, reps)
    sweeps = [] if args.no_sweeps else run_sweeps(preset, device, ceilings, reps)
    result = {"environment": environment(device), "preset": preset, "ceilings": ceilings,
              "results": [asdict(r) for r in rows], "sweeps": sweeps, "errors": list(ERRORS)}
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "bench.json"), "w") as f:
            json.dump(result, f, indent=1)
        result["plots"] = draw_plots(result, args.out)
    env = result["environment"]
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


if __name__ == "__main__":
    sys.exit(1 if main()["errors"] else 0)
