"""memkernels.optim.SparseRowOptimizer and the row-sparse update kernels:
equivalence with PyTorch's optimizers on the touched rows, untouched rows
unchanged, state_dict, determinism, bf16 tables with stochastic rounding, the
fused backward path, and no table-sized allocation in a training step."""

import copy
import dataclasses

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import memkernels
from memkernels import reference
from memkernels.nn import ProductKeyMemory, param_groups
from memkernels.optim import SparseRowOptimizer

N, D = 64, 12


def batches(device, steps=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        idx = torch.randint(0, 24, (10, 3), generator=g).to(device)  # rows >= 24 never touched
        w = torch.rand(10, 3, generator=g).to(device)
        target = torch.randn(10, D, generator=g).to(device)
        out.append((idx, w, target))
    return out


def train(table, opt, data, sparse=True):
    for idx, w, target in data:
        out = memkernels.embedding_bag(table, idx, w, sparse=sparse)
        (out - target).square().sum().backward()
        opt.step()
        opt.zero_grad()


def fresh(device, dtype=torch.float32, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.Parameter(torch.randn(N, D, generator=g).to(device=device, dtype=dtype))


def test_sgd_matches_torch(device):
    a, b = fresh(device), fresh(device)
    data = batches(device)
    train(a, SparseRowOptimizer([a], "sgd", lr=0.05), data)
    train(b, torch.optim.SGD([b], lr=0.05), data)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_adam_matches_sparse_adam(device):
    a, b = fresh(device), fresh(device)
    data = batches(device, steps=6)
    train(a, SparseRowOptimizer([a], "adam", lr=0.05, betas=(0.8, 0.95), eps=1e-6), data)
    train(b, torch.optim.SparseAdam([b], lr=0.05, betas=(0.8, 0.95), eps=1e-6), data)
    torch.testing.assert_close(a, b, atol=2e-6, rtol=2e-6)


@pytest.mark.parametrize("algorithm", ["adamw", "adagrad_rowwise", "adam_rowwise"])
@pytest.mark.parametrize("max_row_norm", [0.0, 0.5])
def test_against_written_reference(device, algorithm, max_row_norm):
    table = fresh(device)
    opt = SparseRowOptimizer([table], algorithm, lr=0.05, betas=(0.9, 0.99), eps=1e-5, weight_decay=0.1,
                             max_row_norm=max_row_norm)
    ref = table.detach().double().cpu()
    v_shape = (N,) if algorithm == "adam_rowwise" else (N, D)
    state = {"step": 0, "m": torch.zeros(N, D, dtype=torch.float64), "v": torch.zeros(v_shape, dtype=torch.float64),
             "sum": torch.zeros(N, dtype=torch.float64)}
    for idx, w, target in batches(device, steps=5):
        out = memkernels.embedding_bag(table, idx, w, sparse=True)
        (out - target).square().sum().backward()
        grad = table.grad.coalesce()
        rows, g = grad.indices()[0].cpu(), grad.values().cpu()
        ref = reference.sparse_row_step(ref, rows, g, state, algorithm, 0.05, (0.9, 0.99), 1e-5, 0.1, max_row_norm)
        opt.step()
        opt.zero_grad()
        torch.testing.assert_close(table.detach().double().cpu(), ref, atol=1e-5, rtol=1e-5)
    if algorithm == "adam_rowwise":  # one second moment per row
        st = opt.state[table]
        assert st["exp_avg"].shape == (N, D) and st["exp_avg_sq"].shape == (N,)
        torch.testing.assert_close(st["exp_avg_sq"].double().cpu(), state["v"], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("algorithm", ["sgd", "adam", "adagrad_rowwise", "adam_rowwise"])
def test_untouched_rows_and_state_unchanged(device, algorithm):
    table = fresh(device)
    before = table.detach().clone()
    opt = SparseRowOptimizer([table], algorithm, lr=0.1, weight_decay=0.5)
    train(table, opt, batches(device))
    assert torch.equal(table.detach()[24:], before[24:])  # bit for bit
    assert not torch.equal(table.detach()[:24], before[:24])
    for key, st in opt.state[table].items():
        if key != "step":
            assert (st[24:] == 0).all(), key


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_state_dict_round_trip(device, dtype):
    data = batches(device, steps=6)
    a = fresh(device, dtype)
    opt_a = SparseRowOptimizer([a], "adam", lr=0.05, weight_decay=0.01)
    train(a, opt_a, data)  # uninterrupted
    b = fresh(device, dtype)
    opt_b = SparseRowOptimizer([b], "adam", lr=0.05, weight_decay=0.01)
    train(b, opt_b, data[:3])
    saved_table, saved_state = b.detach().clone(), copy.deepcopy(opt_b.state_dict())
    c = torch.nn.Parameter(saved_table)
    opt_c = SparseRowOptimizer([c], "adam", lr=0.05, weight_decay=0.01)
    opt_c.load_state_dict(saved_state)
    # The moments stay fp32 for a bf16 table (torch.optim would cast them).
    assert opt_c.state[c]["exp_avg"].dtype == torch.float32 and int(opt_c.state[c]["step"]) == 3
    train(c, opt_c, data[3:])
    assert torch.equal(a, c)


def test_lr_scheduler_and_groups(device):
    a, b = fresh(device), fresh(device, seed=2)
    opt = SparseRowOptimizer([{"params": [a], "lr": 0.1}, {"params": [b], "lr": 0.0}], "sgd")
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    b0 = b.detach().clone()
    for idx, w, target in batches(device, steps=2):
        loss = (memkernels.embedding_bag(a, idx, w, sparse=True) - target).square().sum()
        loss = loss + memkernels.embedding_bag(b, idx, w, sparse=True).sum()
        loss.backward()
        opt.step()
        opt.zero_grad()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.025)
    assert torch.equal(b.detach(), b0)  # lr 0: unchanged


def test_deterministic_including_stochastic_rounding(device):
    def run():
        t = fresh(device, torch.bfloat16)
        train(t, SparseRowOptimizer([t], "adam", lr=0.01, stochastic_rounding=True, seed=7), batches(device))
        return t.detach()

    assert torch.equal(run(), run())


def test_bf16_tables_round_to_nearest_without_sr(device):
    t = fresh(device, torch.bfloat16)
    rows = torch.tensor([1, 5], device=device)
    g = torch.randn(2, D, device=device)
    expected = t.detach().clone()
    expected[rows] = (t.detach()[rows].float() - 0.01 * g).to(torch.bfloat16)
    torch.ops.memkernels.sparse_row_update(t.data, rows, g, None, None, "sgd", [0.01, 0.9, 0.999, 1e-8, 0, 0], 1,
                                           False, 0)
    assert torch.equal(t.detach(), expected)


def test_bf16_stochastic_rounding_is_unbiased_and_seeded(device):
    width = 4096
    table = torch.ones(2, width, device=device, dtype=torch.bfloat16)
    # 1 - lr * g lands 30 % of the way from one bf16 value to the next.
    lo = torch.tensor(1.0, dtype=torch.bfloat16)
    step = 2.0**-7  # bf16 spacing just below 1.0 is 2**-8; just above, 2**-7
    g = torch.full((2, width), -0.3 * step / 0.01, device=device)  # w - lr*g = 1 + 0.3 * step
    rows = torch.tensor([0, 1], device=device)
    hyper = [0.01, 0.9, 0.999, 1e-8, 0.0, 0.0]
    t1, t2 = table.clone(), table.clone()
    torch.ops.memkernels.sparse_row_update(t1, rows, g, None, None, "sgd", hyper, 1, True, 123)
    torch.ops.memkernels.sparse_row_update(t2, rows, g, None, None, "sgd", hyper, 1, True, 123)
    assert torch.equal(t1, t2)
    vals = set(t1.float().unique().tolist())
    assert vals <= {1.0, 1.0 + step} and len(vals) == 2
    frac_up = (t1.float() > 1.0).float().mean().item()
    assert abs(frac_up - 0.3) < 0.03
    t3 = table.clone()
    torch.ops.memkernels.sparse_row_update(t3, rows, g, None, None, "sgd", hyper, 1, True, 124)
    assert not torch.equal(t1, t3)
    assert lo.item() == 1.0


# ---- the fused path --------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["adam", "adam_rowwise"])
def test_fused_backward_equals_unfused(device, algorithm):
    data = batches(device, steps=5)
    a, b = fresh(device), fresh(device)
    opt_a = SparseRowOptimizer([a], algorithm, lr=0.05, weight_decay=0.01)
    opt_b = SparseRowOptimizer([b], algorithm, lr=0.05, weight_decay=0.01)
    opt_a.fuse(a)
    for idx, w, target in data:
        wa, wb = w.clone().requires_grad_(), w.clone().requires_grad_()
        (memkernels.embedding_bag(a, idx, wa) - target).square().sum().backward()
        opt_a.step()
        (memkernels.embedding_bag(b, idx, wb, sparse=True) - target).square().sum().backward()
        opt_b.step()
        opt_b.zero_grad()
        assert a.grad is None
        assert torch.equal(wa.grad, wb.grad)
    assert torch.equal(a, b)


def test_layer_fused_training_step(device):
    torch.manual_seed(0)
    layer = ProductKeyMemory(32, n_keys=16, heads=2, knn=4, k_dim=16, device=device)
    twin = ProductKeyMemory(32, n_keys=16, heads=2, knn=4, k_dim=16, sparse=True, device=device)
    twin.load_state_dict(layer.state_dict())
    opts = []
    for m, fused in ((layer, True), (twin, False)):
        dense, values = param_groups(m, lr=1e-2)
        opt_dense = torch.optim.Adam([dense])
        opt_values = SparseRowOptimizer(values["params"], "adam", lr=values["lr"])
        if fused:
            m.fuse_value_updates(opt_values)
        opts.append((opt_dense, opt_values))
    x = torch.randn(20, 32, device=device)
    for _ in range(3):
        for m, (opt_dense, opt_values) in zip((layer, twin), opts):
            m(x).square().mean().backward()
            opt_dense.step()
            opt_values.step()
            opt_dense.zero_grad()
            opt_values.zero_grad()
    assert layer.values.weight.grad is None
    for (n, p), (_, q) in zip(layer.named_parameters(), twin.named_parameters()):
        assert torch.equal(p, q), n


def test_torch_compile_with_fused_value_updates(device):
    """A compiled model whose value table trains by fused updates: the lookup
    runs outside the graph (exactly one graph break per lookup), the update
    is applied in its backward (the table never gets a gradient) and the
    training matches eager training of a twin; fullgraph=True is refused."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    cfg = dict(n_keys=16, heads=2, knn=4, k_dim=16, device=device)
    layer, twin = ProductKeyMemory(32, **cfg), ProductKeyMemory(32, **cfg)
    twin.load_state_dict(layer.state_dict())
    opts = []
    for m in (layer, twin):
        dense, values = param_groups(m, lr=1e-2)
        opt_values = SparseRowOptimizer(values["params"], "adam", lr=values["lr"])
        m.fuse_value_updates(opt_values)
        opts.append((torch.optim.Adam([dense]), opt_values))
    model = torch.nn.Sequential(torch.nn.Linear(32, 32, device=device), layer)
    eager = torch.nn.Sequential(torch.nn.Linear(32, 32, device=device), twin)
    eager[0].load_state_dict(model[0].state_dict())
    opts[0][0].add_param_group({"params": model[0].parameters()})
    opts[1][0].add_param_group({"params": eager[0].parameters()})
    explain = torch._dynamo.explain(model)(torch.randn(4, 32, device=device))
    assert explain.graph_break_count == 1, explain.break_reasons
    assert "disable" in str(explain.break_reasons[0].reason)
    torch._dynamo.reset()
    compiled = torch.compile(model)
    before = layer.values.weight.detach().clone()
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        x = torch.randn(20, 32, generator=g).to(device)
        for m, (opt_dense, opt_values) in ((compiled, opts[0]), (eager, opts[1])):
            m(x).square().mean().backward()
            opt_dense.step()
            opt_values.step()
            opt_dense.zero_grad()
    assert layer.values.weight.grad is None
    assert not torch.equal(layer.values.weight, before)  # the fused update ran
    for (n, p), (_, q) in zip(model.named_parameters(), eager.named_parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=n)
    st, st_twin = opts[0][1].state[layer.values.weight], opts[1][1].state[twin.values.weight]
    torch.testing.assert_close(st["exp_avg_sq"], st_twin["exp_avg_sq"], rtol=1e-3, atol=1e-9)
    torch._dynamo.reset()
    with pytest.raises(Exception, match="disable"):
        torch.compile(model, fullgraph=True)(torch.randn(4, 32, device=device))
    torch._dynamo.reset()


class _AllocationLog(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.shapes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.layout == torch.strided:  # dense storage only
                self.shapes.append((str(func), tuple(t.shape)))
        return out


@pytest.mark.parametrize("fused", [True, False])
def test_training_step_allocates_nothing_table_sized(device, fused):
    n_keys, dim = 64, 16
    layer = ProductKeyMemory(dim, n_keys=n_keys, heads=2, knn=4, k_dim=8, sparse=not fused, device=device)
    dense, values = param_groups(layer, lr=1e-3)
    opt_dense = torch.optim.Adam([dense])
    opt_values = SparseRowOptimizer(values["params"], "adam", lr=1e-3)
    if fused:
        layer.fuse_value_updates(opt_values)
    x = torch.randn(8, dim, device=device)
    for step in range(2):  # the first step allocates the optimizer state (once)
        log = _AllocationLog()
        with log:
            layer(x).square().mean().backward()
            opt_dense.step()
            opt_values.step()
            opt_dense.zero_grad()
            opt_values.zero_grad()
    big = [(f, s) for f, s in log.shapes if s and s[0] >= n_keys**2]
    assert not big, big


def test_opcheck_update_ops(device):
    table = torch.randn(N, D, device=device)
    rows = torch.tensor([1, 4, 9], device=device)
    grads = torch.randn(3, D, device=device)
    m, v = torch.zeros(N, D, device=device), torch.zeros(N, D, device=device)
    hyper = [0.01, 0.9, 0.999, 1e-8, 0.0, 0.0]
    torch.library.opcheck(torch.ops.memkernels.sparse_row_update.default,
                          (table, rows, grads, m, v, "adam", hyper, 1, False, 0))
    idx = torch.randint(0, N, (5, 3), device=device)
    w = torch.rand(5, 3, device=device)
    gout = torch.randn(5, D, device=device)
    torch.library.opcheck(torch.ops.memkernels.embedding_bag_backward_update.default,
                          (gout, table, idx, w, m, v, "adam", hyper, 1, False, 0))


@pytest.mark.parametrize("kind,state_dtype", [("adam", torch.float32), ("adagrad_rowwise", torch.float32),
                                              ("sgd", torch.float32), ("adam_rowwise", torch.float32),
                                              ("adam", torch.bfloat16), ("adam_rowwise", torch.bfloat16)])
def test_fused_backward_update_bf16_stochastic_rounding(device, kind, state_dtype):
    """On a bf16 table the fused op applies the fp32 row gradients (more precise
    than the bf16 sparse gradient autograd would carry): it equals the sparse
    backward's fp32 rows fed to the standalone update, bit for bit, with fp32
    or bf16 moments."""
    g = torch.Generator().manual_seed(5)
    table = torch.randn(N, D, generator=g).to(device=device, dtype=torch.bfloat16)
    a, b = table.clone(), table.clone()
    wide = dict(device=device, dtype=state_dtype)
    sa = [torch.zeros(N, D, **wide), torch.zeros(N, D, **wide)]
    sb = [torch.zeros(N, D, **wide), torch.zeros(N, D, **wide)]
    if kind == "adagrad_rowwise":
        sa = [torch.zeros(N, device=device), None]
        sb = [torch.zeros(N, device=device), None]
    if kind == "adam_rowwise":
        sa = [torch.zeros(N, D, **wide), torch.zeros(N, device=device)]
        sb = [torch.zeros(N, D, **wide), torch.zeros(N, device=device)]
    if kind == "sgd":
        sa = sb = [None, None]
    hyper = [0.05, 0.9, 0.99, 1e-6, 0.01, 1.0]
    for step, (idx, w, target) in enumerate(batches(device, steps=3), start=1):
        gout = target.bfloat16()
        torch.ops.memkernels.embedding_bag_backward_update(gout, a, idx, w, sa[0], sa[1], kind, hyper, step, True, 3)
        rows, row_grads, _ = torch.ops.memkernels.embedding_bag_backward_sparse(gout.float(), b.float(), idx, w)
        torch.ops.memkernels.sparse_row_update(b, rows, row_grads, sb[0], sb[1], kind, hyper, step, True, 3)
        assert torch.equal(a, b)
        for x, y in zip(sa, sb):
            assert x is None or torch.equal(x, y)
    assert not torch.equal(a, table)


def test_stochastic_rounding_of_a_column_shard_matches_the_whole_table(device):
    """column_offset: a column shard of a bf16 table (a strided view) rounds its
    new values with the bits of the whole table's columns."""
    g = torch.Generator().manual_seed(4)
    table = torch.randn(N, 8, generator=g).to(device=device, dtype=torch.bfloat16)
    rows = torch.arange(0, N, 3, device=device)
    grads = (torch.randn(rows.numel(), 8, generator=g) * 1e-2).to(device)
    update = memkernels.RowUpdate("sgd", lr=0.1, stochastic_rounding=True, seed=9)
    whole = table.clone()
    memkernels.sparse_row_update(whole, rows, grads, update)
    shards = table.clone()
    for start in (0, 4):
        memkernels.sparse_row_update(shards[:, start:start + 4], rows, grads[:, start:start + 4].contiguous(),
                                     dataclasses.replace(update, column_offset=start))
    assert torch.equal(shards, whole)
    unshifted = table.clone()
    memkernels.sparse_row_update(unshifted[:, 4:], rows, grads[:, 4:].contiguous(), update)
    assert not torch.equal(unshifted[:, 4:], whole[:, 4:])  # the offset is what makes them agree


# ---- bf16 optimizer state -----------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["adamw", "adam_rowwise"])
def test_bf16_state_follows_the_written_reference(device, algorithm):
    """state_dtype=torch.bfloat16: the [N, D] moments are bf16 (half the
    bytes), [N] states fp32, and training follows the float64 reference to
    within the moments' rounding."""
    table = fresh(device)
    opt = SparseRowOptimizer([table], algorithm, lr=0.05, betas=(0.9, 0.99), eps=1e-5, weight_decay=0.1,
                             state_dtype=torch.bfloat16)
    ref = table.detach().double().cpu()
    v_shape = (N,) if algorithm == "adam_rowwise" else (N, D)
    state = {"step": 0, "m": torch.zeros(N, D, dtype=torch.float64), "v": torch.zeros(v_shape, dtype=torch.float64)}
    for idx, w, target in batches(device, steps=5):
        out = memkernels.embedding_bag(table, idx, w, sparse=True)
        (out - target).square().sum().backward()
        grad = table.grad.coalesce()
        ref = reference.sparse_row_step(ref, grad.indices()[0].cpu(), grad.values().cpu(), state, algorithm, 0.05,
                                        (0.9, 0.99), 1e-5, 0.1, 0.0)
        opt.step()
        opt.zero_grad()
    st = opt.state[table]
    assert st["exp_avg"].dtype == torch.bfloat16
    assert st["exp_avg_sq"].dtype == (torch.float32 if algorithm == "adam_rowwise" else torch.bfloat16)
    torch.testing.assert_close(table.detach().double().cpu(), ref, atol=3e-3, rtol=1e-2)
    torch.testing.assert_close(st["exp_avg"].double().cpu(), state["m"], atol=1e-2, rtol=1e-2)


def test_bf16_state_rounds_stochastically_and_reproducibly(device):
    """Each new bf16 moment is rounded stochastically: a first moment 30 % of
    the way from 1 to the next bf16 (1 + 2**-7) rounds up about 30 % of the
    time; the same seed gives the same bits, another seed others; the fused
    path stores the same bits as the standalone update."""
    rows_n, d = 4000, 8
    x = 1.0 + 0.3 * 2.0**-7
    grads = torch.full((rows_n, d), x / (1 - 0.9), device=device)
    rows = torch.arange(rows_n, device=device)

    def first_moment(seed):
        table = torch.zeros(rows_n, d, device=device)
        m = torch.zeros(rows_n, d, device=device, dtype=torch.bfloat16)
        v = torch.zeros(rows_n, d, device=device, dtype=torch.bfloat16)
        memkernels.sparse_row_update(table, rows, grads, memkernels.RowUpdate("adam", lr=0.01, seed=seed), m, v)
        return m

    m = first_moment(3)
    assert set(m.float().unique().tolist()) == {1.0, 1.0 + 2.0**-7}
    up = (m.float() > 1).double().mean().item()
    assert 0.27 < up < 0.33, up
    assert torch.equal(first_moment(3), m) and not torch.equal(first_moment(4), m)


def test_bf16_state_bad_configurations(device):
    table = torch.zeros(10, 4, device=device)
    rows, grads = torch.tensor([1], device=device), torch.ones(1, 4, device=device)
    m = torch.zeros(10, 4, device=device, dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="both \\[N, D\\] states alike"):
        memkernels.sparse_row_update(table, rows, grads, memkernels.RowUpdate("adam", lr=0.1), m,
                                     torch.zeros(10, 4, device=device))
    t64 = torch.zeros(10, 4, device=device, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="must be Double"):
        memkernels.sparse_row_update(t64, rows, grads.double(), memkernels.RowUpdate("adam", lr=0.1), m, m)
    with pytest.raises(ValueError, match="not for float64 tables"):
        SparseRowOptimizer([torch.nn.Parameter(t64)], "adam", state_dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="state_dtype"):
        SparseRowOptimizer([torch.nn.Parameter(table)], "adam", state_dtype=torch.float16)


@pytest.mark.parametrize("algorithm", ["adamw", "adam_rowwise"])
@pytest.mark.parametrize("fused", [False, True])
def test_capturable_step_count_on_the_device(device, algorithm, fused):
    """capturable=True keeps the step count on the table's device, where the
    update reads it: training is bitwise that of the host-side count (fused
    and sparse paths), the count advances without a host read, and a state
    dict round trip keeps it on the device."""
    data = batches(device, steps=4)
    tables, opts = [], []
    for capturable in (False, True):
        t = fresh(device, torch.bfloat16)
        opt = SparseRowOptimizer([t], algorithm, lr=0.05, weight_decay=0.01, stochastic_rounding=True,
                                 capturable=capturable)
        if fused:
            opt.fuse(t)
        tables.append(t)
        opts.append(opt)
    for idx, w, target in data:
        for t, opt in zip(tables, opts):
            out = memkernels.embedding_bag(t, idx, w, sparse=not fused)
            (out - target).square().sum().backward()
            opt.step()
            opt.zero_grad()
    assert torch.equal(tables[0], tables[1])
    host, dev = opts[0].state[tables[0]], opts[1].state[tables[1]]
    assert host["step"].device.type == "cpu" and dev["step"].device == tables[1].device
    assert int(dev["step"]) == len(data)
    for key in host:
        assert torch.equal(host[key].cpu(), dev[key].cpu()), key
    saved = copy.deepcopy(opts[1].state_dict())
    c = torch.nn.Parameter(tables[1].detach().clone())
    opt_c = SparseRowOptimizer([c], algorithm, lr=0.05, weight_decay=0.01, stochastic_rounding=True,
                               capturable=True)
    opt_c.load_state_dict(saved)
    assert opt_c.state[c]["step"].device == c.device and int(opt_c.state[c]["step"]) == len(data)


def test_run_time_step_and_lr_scale_of_the_ops(device):
    """RowUpdate.step_tensor / lr_scale: read when the op runs, so the same
    RowUpdate serves every step; equal to the host-side step and lr."""
    a, b = fresh(device), fresh(device)
    sa, sb = [torch.zeros(N, D, device=device) for _ in range(2)], [torch.zeros(N, D, device=device) for _ in range(2)]
    step = torch.zeros((), dtype=torch.int64, device=device)
    scale = torch.full((), 0.5, dtype=torch.float32, device=device)
    run_time = memkernels.RowUpdate("adam", lr=0.1, weight_decay=0.01, step=1, step_tensor=step, lr_scale=scale)
    for i, (idx, w, target) in enumerate(batches(device, steps=3)):
        host = memkernels.RowUpdate("adam", lr=0.05, weight_decay=0.01, step=i + 1)
        gout = target.to(a.dtype)
        step += 1
        ga = memkernels.ops.embedding_bag_backward_update(gout, a, idx, w, host, *sa)
        gb = memkernels.ops.embedding_bag_backward_update(gout, b, idx, w, run_time, *sb)
        assert torch.equal(ga, gb)
        assert torch.equal(a, b) and torch.equal(sa[0], sb[0]) and torch.equal(sa[1], sb[1])
    with pytest.raises(RuntimeError, match="step_tensor must be one"):
        bad = dataclasses.replace(run_time, step_tensor=torch.zeros(2, dtype=torch.int64, device=device))
        memkernels.ops.embedding_bag_backward_update(gout, b, idx, w, bad, *sb)
    with pytest.raises(RuntimeError, match="lr_scale must be one"):
        bad = dataclasses.replace(run_time, lr_scale=torch.ones((), dtype=torch.float64, device=device))
        memkernels.ops.embedding_bag_backward_update(gout, b, idx, w, bad, *sb)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_graph_captures_a_whole_training_step():
    """Forward, backward with the fused row-sparse AdamW update of the values,
    and torch's capturable Adam for the rest, captured in ONE CUDA graph and
    replayed on new inputs: a capture fails if anything in it synchronises
    the host, and every replay matches an eager twin (same kernels, so the
    same numbers), with the step counts advanced on the device."""
    torch.manual_seed(0)
    dim, T = 64, 48

    def build():
        torch.manual_seed(0)
        layer = ProductKeyMemory(dim, n_keys=32, heads=2, knn=8, k_dim=32, device="cuda")
        dense, values = param_groups(layer, lr=1e-2)
        opt_dense = torch.optim.Adam(dense["params"], lr=1e-3, capturable=True)
        # The values' learning rate a device tensor: a schedule reaches the graph.
        opt_values = SparseRowOptimizer(values["params"], "adamw", lr=torch.tensor(values["lr"], device="cuda"),
                                        weight_decay=0.01, capturable=True)
        layer.fuse_value_updates(opt_values)
        opt_values.sched = torch.optim.lr_scheduler.StepLR(opt_values, step_size=1, gamma=0.5)
        return layer, opt_dense, opt_values

    def step(layer, opt_dense, x, target):
        loss = (layer(x) - target).square().mean()
        loss.backward()
        opt_dense.step()
        return loss

    graphed, eager = build(), build()
    data = [(torch.randn(T, dim, device="cuda"), torch.randn(T, dim, device="cuda")) for _ in range(6)]
    static_x, static_t = data[0][0].clone(), data[0][1].clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up (state allocated, first-call checks) outside the capture
        for x, t in data[:2]:
            for layer, opt_dense, _ in (graphed, eager):
                opt_dense.zero_grad(set_to_none=True)
                step(layer, opt_dense, x, t)
    torch.cuda.current_stream().wait_stream(side)
    layer, opt_dense, opt_values = graphed
    opt_dense.zero_grad(set_to_none=True)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_loss = step(layer, opt_dense, static_x, static_t)
    # The capture itself ran nothing: replay it on each new batch.
    for x, t in data[2:]:
        static_x.copy_(x)
        static_t.copy_(t)
        graph.replay()
        opt_values.sched.step()
        e_layer, e_dense, e_values = eager
        e_dense.zero_grad(set_to_none=True)
        e_loss = step(e_layer, e_dense, x, t)
        e_values.sched.step()
        torch.testing.assert_close(static_loss, e_loss)
        for (n, p), (_, q) in zip(layer.named_parameters(), e_layer.named_parameters()):
            torch.testing.assert_close(p, q, msg=lambda m, n=n: f"{n}: {m}")
    values = layer.values.weight
    assert int(opt_values.state[values]["step"]) == 2 + len(data[2:])
    assert float(opt_values.param_groups[0]["lr"]) == pytest.approx(1e-3 * 0.5 ** len(data[2:]))  # value_lr
    assert values.grad is None


@pytest.mark.parametrize("fused", [False, True])
def test_tensor_lr_follows_a_scheduler_like_a_float_lr(device, fused):
    """A one-element float32 lr tensor (what a captured graph needs: the
    update reads it when it runs, torch's schedulers fill it in place) trains
    bitwise as the same float schedule (lrs exact in float32)."""
    data = batches(device, steps=4)
    tables, opts, scheds = [], [], []
    for tensor_lr in (False, True):
        t = fresh(device)
        lr = torch.tensor(0.5, device=device) if tensor_lr else 0.5
        opt = SparseRowOptimizer([t], "adamw", lr=lr, weight_decay=0.25, capturable=tensor_lr)
        if fused:
            opt.fuse(t)
        tables.append(t)
        opts.append(opt)
        scheds.append(torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5))
    for idx, w, target in data:
        for t, opt, sched in zip(tables, opts, scheds):
            out = memkernels.embedding_bag(t, idx, w, sparse=not fused)
            (out - target).square().sum().backward()
            opt.step()
            opt.zero_grad()
            sched.step()
    assert torch.is_tensor(opts[1].param_groups[0]["lr"]) and float(opts[1].param_groups[0]["lr"]) == 0.5 ** 5
    assert torch.equal(tables[0], tables[1])
    with pytest.raises(ValueError, match="a tensor lr must be one float32"):
        bad = SparseRowOptimizer([tables[1]], "sgd", lr=torch.tensor(0.5, dtype=torch.float64, device=device))
        bad.fuse(tables[1])
        memkernels.embedding_bag(tables[1], data[0][0], data[0][1]).sum().backward()
