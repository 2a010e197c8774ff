"""pytest-benchmark cases for the ProductKeyMemory layer (kernels backend vs
reference backend, same parameters) and for one value-table training step
(memkernels' fused backward+update vs torch's dense AdamW and SparseAdam).
CPU runs the quick shapes; a GPU also runs the paper ones."""

import pytest
import torch

from memkernels import bench
from memkernels.nn import ProductKeyMemory
from conftest import DEVICES

ALL = bench.PRESETS["quick"] + bench.PRESETS["paper"]
LAYERS = {c.name: c for c in ALL if isinstance(c, bench.LayerCase)}
STEPS = {c.name: c for c in ALL if isinstance(c, bench.UpdateCase)}


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", sorted(LAYERS))
@pytest.mark.parametrize("backend", ["kernels", "reference"])
def test_layer_forward_backward(benchmark, device, case, backend):
    c = LAYERS[case]
    if device == "cpu" and c.dim > 1024:
        pytest.skip("paper shapes are GPU-sized")
    dtype = getattr(torch, c.dtype)
    layer = ProductKeyMemory(c.dim, n_keys=c.n_keys, heads=c.heads, knn=c.knn, k_dim=c.k_dim, backend=backend,
                             device=device, dtype=dtype)
    x = torch.randn(c.T, c.dim, device=device, dtype=dtype)

    def run():
        layer(x).backward(torch.ones(c.T, c.dim, device=device, dtype=dtype))
        layer.zero_grad(set_to_none=True)
        _sync(device)

    benchmark.group = f"{case} {device}"
    benchmark.pedantic(run, warmup_rounds=2, rounds=5 if device == "cpu" else 20, iterations=1)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", sorted(STEPS))
@pytest.mark.parametrize("impl", ["memkernels_fused", "torch_dense_adamw", "torch_sparse_adam"])
def test_train_step(benchmark, device, case, impl):
    c = STEPS[case]
    if device == "cpu" and c.D > 64:
        pytest.skip("paper shapes are GPU-sized")
    step = bench.make_train_step(impl, c, torch.device(device))
    idx = torch.randint(0, c.N, (c.T, c.B), device=device)
    w = torch.rand(c.T, c.B, device=device)
    gout = torch.randn(c.T, c.D, device=device, dtype=getattr(torch, c.dtype))

    def run():
        step(idx, w, gout)
        _sync(device)

    benchmark.group = f"{case} {device}"
    benchmark.pedantic(run, warmup_rounds=2, rounds=5 if device == "cpu" else 20, iterations=1)
