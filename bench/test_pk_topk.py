"""pytest-benchmark cases for memkernels.pk_topk against the composite as the
paper's released layer writes it (einsum in the inputs' dtype, topk, k x k
combine, topk, gather: memkernels.bench.baselines) and its torch.compile,
forward and forward+backward, in the same run. CPU runs the quick shape; a
GPU also runs the reference shape."""

import pytest
import torch

from memkernels import bench, pk_topk
from memkernels.bench.baselines import compiled, pk_topk_paper_style
from conftest import DEVICES

CASES = {c.name: c for c in bench.PRESETS["quick"] + bench.PRESETS["paper"] if isinstance(c, bench.PKCase)}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("part", ["forward", "forward+backward"])
@pytest.mark.parametrize("impl", ["memkernels", "paper_composite", "paper_composite_compiled"])
def test_pk_topk(benchmark, device, case, part, impl):
    c = CASES[case]
    if device == "cpu" and c.T > 2048:
        pytest.skip("reference shapes are GPU-sized")
    dtype = getattr(torch, c.dtype)
    query = torch.randn(c.T, c.H, c.Dk, device=device).to(dtype)
    keys = torch.randn(c.H, 2, c.n_keys, c.Dk // 2, device=device).to(dtype)
    grad = torch.randn(c.T, c.H, c.k, device=device)
    fn = {"memkernels": pk_topk, "paper_composite": pk_topk_paper_style,
          "paper_composite_compiled": compiled(pk_topk_paper_style)}[impl]
    backward = part == "forward+backward"
    query.requires_grad_(backward)
    keys.requires_grad_(backward)

    def run():
        scores, _ = fn(query, keys, c.k)
        if backward:
            torch.autograd.grad(scores, (query, keys), grad)
        if device == "cuda":
            torch.cuda.synchronize()

    benchmark.group = f"{case} {part} {device}"
    benchmark.extra_info.update(case=case, part=part, impl=impl, device=device)
    benchmark.pedantic(run, warmup_rounds=2, rounds=10 if device == "cpu" else 30, iterations=1)
