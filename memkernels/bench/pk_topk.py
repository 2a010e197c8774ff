"""Bench of memkernels.pk_topk (staged and, on CUDA with 16-bit inputs, the
fused kernel) against the composite as the paper's released layer writes it
(half-scores in the inputs' dtype) and its torch.compile; the fp32 oracle
(memkernels.reference.pk_topk) is timed too, without a speedup against it."""

from __future__ import annotations

from typing import List

import torch

import memkernels
from memkernels import reference

from .baselines import compiled, pk_topk_paper_style
from .cases import PKCase, pk_topk_counts
from .harness import BUDGET_S, Row, add_speedups, make_row, peak_bytes, peak_reset, time_fn


# The baselines speedups are taken against (the oracle is not one).
SPEED_BASELINES = ("paper_composite", "paper_composite_compiled")


def bench_pk_topk(case: PKCase, device: torch.device, ceilings, reps: int,
                  parts=("forward", "forward+backward"),
                  baselines=SPEED_BASELINES + ("reference_fp32",)) -> List[Row]:
    dtype = getattr(torch, case.dtype)
    g = torch.Generator(device=device).manual_seed(0)
    queries = [torch.randn(case.T, case.H, case.Dk, generator=g, device=device, dtype=dtype) for _ in range(3)]
    keys = torch.randn(case.H, 2, case.n_keys, case.Dk // 2, generator=g, device=device, dtype=dtype)
    grads = [torch.randn(case.T, case.H, case.k, generator=g, device=device) for _ in range(3)]
    elt = keys.element_size()
    impls = {"memkernels": memkernels.pk_topk}
    if device.type == "cuda" and dtype in (torch.float16, torch.bfloat16) and case.k <= 128:
        impls["memkernels_fused"] = lambda q, kk, k: memkernels.pk_topk(q, kk, k, impl="fused")
    candidates = {"paper_composite": pk_topk_paper_style, "paper_composite_compiled": compiled(pk_topk_paper_style),
                  "reference_fp32": reference.pk_topk}
    impls.update({name: candidates[name] for name in baselines})
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

            base = peak_reset(device)
            try:
                times = time_fn(call, device, warmup=2, reps=reps, budget_s=BUDGET_S, label=f"{case.name} {impl} {part}")
            except torch.OutOfMemoryError:
                continue
            peak = peak_bytes(device, base)
            nbytes, flops = pk_topk_counts(case.T, case.H, case.n_keys, case.Dk, case.k, elt, "forward")
            if backward:
                b_bytes, b_flops = pk_topk_counts(case.T, case.H, case.n_keys, case.Dk, case.k, elt, "backward")
                nbytes, flops = nbytes + b_bytes, flops + b_flops
            rows.append(make_row("pk_topk", case, impl, part, device, times, nbytes, flops, ceilings, peak))
    keys.requires_grad_(False)
    for q in queries:
        q.requires_grad_(False)
    ours = [i for i in impls if i.startswith("memkernels")]
    add_speedups(rows, pairs={(o, b) for o in ours for b in SPEED_BASELINES})
    return rows
