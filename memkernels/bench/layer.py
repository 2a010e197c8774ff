"""Bench of the ProductKeyMemory layer: the kernels backend against the
reference backend, and plain PKM against the `product-key-memory` package
when it is installed."""

from __future__ import annotations

from typing import List

import torch

from memkernels.nn import ProductKeyMemory

from .cases import LayerCase, layer_bytes, layer_flops
from .harness import BUDGET_S, Row, add_speedups, make_row, peak_bytes, peak_reset, time_fn


def product_key_memory_layer(case: LayerCase, device, dtype):
    """The `product-key-memory` package's PKM at this case's configuration,
    or None when the package is not installed."""
    try:
        from product_key_memory import PKM
    except ImportError:
        return None
    return PKM(case.dim, heads=case.heads, num_keys=case.n_keys, topk=case.knn, dim_head=case.k_dim).to(
        device=device, dtype=dtype)


def bench_layer(case: LayerCase, device: torch.device, ceilings, reps: int) -> List[Row]:
    """ProductKeyMemory forward+backward: kernels backend vs reference backend,
    same parameters."""
    dtype = getattr(torch, case.dtype)
    cfg = dict(n_keys=case.n_keys, heads=case.heads, knn=case.knn, k_dim=case.k_dim, device=device, dtype=dtype)
    torch.manual_seed(0)
    layer = ProductKeyMemory(case.dim, **cfg)
    xs = [torch.randn(case.T, case.dim, device=device, dtype=dtype) for _ in range(3)]
    elt = torch.empty((), dtype=dtype).element_size()
    variants = [("memkernels", layer, "kernels"), ("reference", layer, "reference")]
    external = product_key_memory_layer(case, device, dtype)
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

            base = peak_reset(device)
            try:
                times = time_fn(call, device, warmup=2, reps=reps, budget_s=BUDGET_S, label=f"{case.name} {impl} {part}")
            except torch.OutOfMemoryError:
                continue
            finally:
                module.zero_grad(set_to_none=True)
            peak = peak_bytes(device, base)
            flops = layer_flops(case) * (3 if backward else 1)
            nbytes = layer_bytes(case, elt) * (2 if backward else 1)
            rows.append(make_row("layer", case, impl, part, device, times, nbytes, flops, ceilings, peak))
    add_speedups(rows, pairs={("memkernels", "reference"), ("memkernels_plain", "product-key-memory")})
    return rows
