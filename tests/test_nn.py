"""memkernels.nn.ProductKeyMemory: the kernels backend equals the reference
backend, shared pools, state_dict, training, torch.compile, usage statistics,
decoding, optimizer groups and bad configuration, on every device."""

import math

import pytest
import torch

import memkernels
from memkernels.nn import ProductKeyMemory, ValuePool, param_groups, value_parameters

SMALL = dict(n_keys=16, heads=2, knn=4, k_dim=16)


def pair(device, dtype=torch.float32, **kw):
    """A kernels-backend layer and a reference-backend copy with the same parameters."""
    cfg = {**SMALL, **kw}
    m = ProductKeyMemory(32, **cfg, device=device, dtype=dtype)
    r = ProductKeyMemory(32, **cfg, backend="reference", device=device, dtype=dtype)
    r.load_state_dict(m.state_dict())
    return m, r


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 2e-5)])
@pytest.mark.parametrize("variant", [dict(), dict(memory_plus=False), dict(memory_plus=False, v_dim=24),
                                     dict(gate=True, qk_norm=False), dict(v_dim=40)])
def test_kernels_equal_reference(device, dtype, tol, variant):
    m, r = pair(device, dtype, **variant)
    x = torch.randn(3, 7, 32, device=device, dtype=dtype)
    y, yr = m(x), r(x)
    assert y.shape == x.shape and y.dtype == dtype
    torch.testing.assert_close(y, yr, atol=tol, rtol=tol)
    g = torch.randn_like(y)
    y.backward(g)
    yr.backward(g)
    for (name, p), (_, pr) in zip(m.named_parameters(), r.named_parameters()):
        assert p.grad is not None, name
        scale = max(1.0, pr.grad.abs().max().item())
        torch.testing.assert_close(p.grad, pr.grad, atol=tol * scale, rtol=tol, msg=name)


def test_sparse_values_gradient(device):
    m, r = pair(device, sparse=True)
    x = torch.randn(10, 32, device=device)
    m(x).square().sum().backward()
    r(x).square().sum().backward()
    g = m.values.weight.grad
    assert g.is_sparse
    torch.testing.assert_close(g.to_dense(), r.values.weight.grad, atol=2e-5, rtol=2e-5)


def test_shared_pool_accumulates_both_layers(device):
    pool = ValuePool(16**2, 32, device=device)
    a = ProductKeyMemory(32, **SMALL, values=pool, device=device)
    b = ProductKeyMemory(32, **SMALL, values=pool, device=device)
    assert a.values is b.values
    model = torch.nn.Sequential(a, b)
    assert sum(1 for _ in value_parameters(model)) == 1
    x = torch.randn(6, 32, device=device)
    ya = a(x)
    yb = b(x)
    ga = torch.autograd.grad(ya.sum(), pool.weight, retain_graph=True)[0]
    gb = torch.autograd.grad(yb.sum(), pool.weight, retain_graph=True)[0]
    (ya.sum() + yb.sum()).backward()
    torch.testing.assert_close(pool.weight.grad, ga + gb)
    assert (ga != 0).any() and (gb != 0).any()


def test_state_dict_round_trip(device, tmp_path):
    m = ProductKeyMemory(32, **SMALL, device=device)
    path = tmp_path / "pkm.pt"
    torch.save(m.state_dict(), path)
    m2 = ProductKeyMemory(32, **SMALL, device=device)
    m2.load_state_dict(torch.load(path))
    x = torch.randn(4, 32, device=device)
    assert torch.equal(m(x), m2(x))


def test_training_lowers_loss(device):
    torch.manual_seed(1)
    m = ProductKeyMemory(32, **SMALL, device=device)
    x = torch.randn(64, 32, device=device)
    target = torch.randn(64, 32, device=device)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        loss = (m(x) - target).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_sparse_training_with_param_groups(device):
    m = ProductKeyMemory(32, **SMALL, sparse=True, device=device)
    dense, values = param_groups(m, lr=1e-2, weight_decay=0.1)
    assert values["lr"] == 1e-3 and values["params"] == [m.values.weight] and values["memory_values"]
    assert all(p is not m.values.weight for p in dense["params"])
    opt = torch.optim.AdamW([dense])
    opt_values = torch.optim.SparseAdam(values["params"], lr=1e-2)
    x = torch.randn(16, 32, device=device)
    before = m.values.weight.detach().clone()
    loss = m(x).square().mean()
    loss.backward()
    opt.step()
    opt_values.step()
    changed = (m.values.weight.detach() != before).any(dim=1)
    assert 0 < changed.sum() < m.values.n_slots  # only touched rows move


def test_torch_compile_fullgraph(device):
    m, _ = pair(device)
    x = torch.randn(2, 5, 32, device=device)
    compiled = torch.compile(m, fullgraph=True)
    y = compiled(x)
    y.sum().backward()
    g_compiled = {n: p.grad.clone() for n, p in m.named_parameters()}
    m.zero_grad()
    y_eager = m(x)
    y_eager.sum().backward()
    torch.testing.assert_close(y, y_eager)
    for n, p in m.named_parameters():
        torch.testing.assert_close(g_compiled[n], p.grad, msg=n)


def test_bf16_autocast(device):
    m, r = pair(device)
    x = torch.randn(4, 6, 32, device=device)
    with torch.autocast(device_type=device, dtype=torch.bfloat16):
        y = m(x)
        yr = r(x)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), yr.float(), atol=3e-2, rtol=3e-2)
    y.float().sum().backward()
    assert m.values.weight.grad is not None and m.keys.grad is not None


def test_usage_statistics_match_hand_count(device):
    m = ProductKeyMemory(32, **SMALL, track_usage=True, device=device)
    x = torch.randn(50, 32, device=device)
    m.train()
    m(x)
    m(x[:10])
    with torch.no_grad():
        q = m.query_norm(m.query_proj(torch.cat([x, x[:10]])).view(60, 2, 16))
        _, idx = memkernels.pk_topk(q, m.keys, 4)
    counts = torch.bincount(idx.flatten().cpu(), minlength=256)
    assert torch.equal(m.usage_counts.cpu(), counts)
    stats = m.usage_stats()
    c = counts.double()
    p = c / c.sum()
    nz = p > 0
    assert math.isclose(stats["coverage"].item(), (counts > 0).double().mean().item())
    assert math.isclose(stats["kl_uniform"].item(), (p[nz] * torch.log(p[nz] * 256)).sum().item(), rel_tol=1e-9)
    top = math.ceil(256 / 100)
    assert math.isclose(stats["top1pct_share"].item(), (c.sort(descending=True).values[:top].sum() / c.sum()).item())
    assert stats["hits"].item() == 60 * 2 * 4
    m.eval()
    m(x)
    assert stats["hits"].item() == m.usage_stats()["hits"].item()  # eval does not count
    m.reset_usage()
    assert m.usage_counts.sum().item() == 0


@pytest.mark.parametrize("shape", [(1, 1, 32), (4, 1, 32), (32,)])
def test_decoding_shapes(device, shape):
    m = ProductKeyMemory(32, **SMALL, device=device).eval()
    x = torch.randn(*shape, device=device)
    with torch.no_grad():
        y = m(x)
    assert y.shape == x.shape


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_decoding_does_not_synchronise():
    m = ProductKeyMemory(32, **SMALL, device="cuda").eval()
    x = torch.randn(2, 1, 32, device="cuda")
    m(x)  # warm up (lazy initialisation may synchronise)
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.no_grad():
            m(x)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_bad_configuration():
    with pytest.raises(ValueError, match=r"k_dim must be even and at least 2; got 15"):
        ProductKeyMemory(32, n_keys=16, knn=4, k_dim=15)
    with pytest.raises(ValueError, match=r"knn must be in \[1, n_keys=16\]; got 17"):
        ProductKeyMemory(32, n_keys=16, knn=17, k_dim=16)
    with pytest.raises(ValueError, match=r"backend must be 'kernels' or 'reference'; got 'cuda'"):
        ProductKeyMemory(32, **SMALL, backend="cuda")
    with pytest.raises(ValueError, match=r"shared value pool is \[100, 32\]; this layer needs \[256, 32\]"):
        ProductKeyMemory(32, **SMALL, values=ValuePool(100, 32))
    with pytest.raises(ValueError, match=r"without output_proj, v_dim must equal dim; got 24 and 32"):
        ProductKeyMemory(32, **SMALL, v_dim=24, memory_plus=False, output_proj=False)
    with pytest.raises(ValueError, match=r"query_dropout must be in \[0, 1\); got 1.5"):
        ProductKeyMemory(32, **SMALL, query_dropout=1.5)
    m = ProductKeyMemory(32, **SMALL)
    with pytest.raises(RuntimeError, match=r"input's last dimension must be dim=32; got shape \(4, 31\)"):
        m(torch.randn(4, 31))


def test_defaults_follow_the_paper():
    m = ProductKeyMemory(64, device="meta")
    assert (m.n_keys, m.heads, m.knn, m.k_dim, m.v_dim) == (1024, 4, 32, 512, 64)
    assert m.values.weight.shape == (1024**2, 64) and m.memory_plus and m.query_norm is not None
    small = ProductKeyMemory(32, **SMALL)
    assert small.keys.abs().max() <= 1 / math.sqrt(16)
    assert abs(small.values.weight.std().item() - 32**-0.5) < 0.02
