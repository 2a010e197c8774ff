"""Column-sharded value pools (memkernels.distributed) against the
single-process model: gloo on the CPU, spawned processes at world sizes 2
and 4 (tests/dist_harness.py)."""

import os

import pytest
import torch
import torch.distributed as dist

import memkernels
from memkernels.nn import ProductKeyMemory, ValuePool
from memkernels.optim import SparseRowOptimizer

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch built without torch.distributed")

# Token counts per rank: uneven, and at world size 4 one rank has none.
COUNTS = {2: [3, 6], 4: [2, 0, 5, 4]}
DIM, V_DIM = 16, 16


def _mesh(world):
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh("cpu", (world,))


def _layer(seed=0, **kw):
    torch.manual_seed(seed)
    return ProductKeyMemory(DIM, n_keys=8, heads=2, knn=4, k_dim=8, v_dim=V_DIM, **kw)


def _tokens(world, step=0):
    g = torch.Generator().manual_seed(100 + step)
    n = sum(COUNTS[world])
    return torch.randn(n, DIM, generator=g), torch.randn(n, DIM, generator=g)


def _fused_pair(mesh, cfg, dtype=None, **layer_kw):
    """A single-process layer and a sharded twin, value tables trained by the
    fused optimizer ``cfg``, every other parameter frozen."""
    from memkernels import distributed as mkd

    ref, layer = _layer(**layer_kw), _layer(**layer_kw)
    for m in (ref, layer):
        if dtype is not None:
            m.values.weight.data = m.values.weight.data.to(dtype)
        for name, p in m.named_parameters():
            p.requires_grad_(name == "values.weight")
    mkd.shard_values(layer, mesh, value_grad="sum")
    opt_ref, opt = SparseRowOptimizer([ref.values.weight], **cfg), SparseRowOptimizer([layer.values.weight], **cfg)
    ref.fuse_value_updates(opt_ref)
    layer.fuse_value_updates(opt)
    return ref, layer, opt_ref, opt


def _mine(rank, world, t):
    start = sum(COUNTS[world][:rank])
    return t[start:start + COUNTS[world][rank]]


# ---- forward and every gradient -------------------------------------------------------------


def _forward_and_gradients(rank, world):
    from memkernels import distributed as mkd

    mesh = _mesh(world)
    # The lookup alone: bitwise the single-process embedding bag.
    torch.manual_seed(1)
    full = ValuePool(64, V_DIM)
    pool = ValuePool(64, V_DIM)
    pool.weight.data.copy_(full.weight.data)
    mkd.shard_values(pool, mesh)
    w = pool.weight
    assert isinstance(w, torch.distributed.tensor.DTensor)
    assert w.placements == (torch.distributed.tensor.Shard(1),)
    assert w.to_local().shape == (64, V_DIM // world)
    assert torch.equal(w.full_tensor(), full.weight.detach())
    g = torch.Generator().manual_seed(2)
    n = sum(COUNTS[world])
    idx, wts = torch.randint(0, 64, (n, 5), generator=g), torch.rand(n, 5, generator=g)
    out = pool.bag(_mine(rank, world, idx), _mine(rank, world, wts))
    assert torch.equal(out, _mine(rank, world, memkernels.embedding_bag(full.weight.detach(), idx, wts)))

    # The layer: forward, the value table's gradient, every dense gradient.
    for value_grad in ("sum", "mean"):
        ref, layer = _layer(), _layer()
        mkd.shard_values(layer, mesh, value_grad=value_grad)
        x, target = _tokens(world)
        y_ref = ref(x)
        (y_ref * target).sum().backward()
        y = layer(_mine(rank, world, x))
        assert y.shape == (COUNTS[world][rank], DIM)
        # The lookup is bitwise; the dense projections run torch's GEMMs over
        # fewer rows, which may round differently.
        torch.testing.assert_close(y, _mine(rank, world, y_ref), rtol=1e-5, atol=1e-6)
        (y * _mine(rank, world, target)).sum().backward()
        gv = layer.values.weight.grad
        assert isinstance(gv, torch.distributed.tensor.DTensor) and gv.placements == w.placements
        scale = 1.0 if value_grad == "sum" else 1.0 / world
        torch.testing.assert_close(gv.full_tensor(), ref.values.weight.grad * scale, rtol=1e-5, atol=1e-7)
        for name, p in layer.named_parameters():
            if name == "values.weight":
                continue
            grad = p.grad.clone()
            dist.all_reduce(grad)
            torch.testing.assert_close(grad, dict(ref.named_parameters())[name].grad, rtol=1e-4, atol=1e-6,
                                       msg=lambda m: f"{name}: {m}")

    # Under DDP (the value table left out of it), with the mean over ranks:
    # every gradient is the single-process one over world.
    ref, layer = _layer(), _layer()
    mkd.shard_values(layer, mesh)
    assert mkd.sharded_parameter_names(layer) == ["values.weight"]
    model = mkd.data_parallel(layer, mesh)
    x, target = _tokens(world)
    (ref(x) * target).sum().backward()
    (model(_mine(rank, world, x)) * _mine(rank, world, target)).sum().backward()
    torch.testing.assert_close(layer.keys.grad * world, ref.keys.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(layer.values.weight.grad.full_tensor() * world, ref.values.weight.grad, rtol=1e-5,
                               atol=1e-7)


@pytest.mark.parametrize("world", [2, 4])
def test_forward_and_every_gradient_match_one_process(world):
    from dist_harness import run

    run(_forward_and_gradients, world)


# ---- fused updates over several steps ------------------------------------------------------

UPDATES = [
    dict(algorithm="adamw", lr=1e-2, weight_decay=0.1, stochastic_rounding=True, seed=5),
    dict(algorithm="sgd", lr=0.5),
    dict(algorithm="adagrad_rowwise", lr=0.1),
    dict(algorithm="adam", lr=1e-2, max_row_norm=0.02),
    dict(algorithm="adam_rowwise", lr=1e-2, weight_decay=0.1),
    dict(algorithm="adam_rowwise", lr=1e-2, max_row_norm=0.02, capturable=True),
]


def _fused_updates(rank, world, dtype):
    from memkernels import distributed as mkd

    mesh = _mesh(world)
    n = sum(COUNTS[world])
    for cfg in UPDATES:
        # The pool alone, fed the same output gradients: the per-element rules
        # (SGD, Adam/AdamW) update the columns bitwise as one process does.
        torch.manual_seed(3)
        full, pool = ValuePool(64, V_DIM, dtype=dtype), ValuePool(64, V_DIM, dtype=dtype)
        pool.weight.data.copy_(full.weight.data)
        mkd.shard_values(pool, mesh, value_grad="sum")
        o_full, o_pool = SparseRowOptimizer([full.weight], **cfg), SparseRowOptimizer([pool.weight], **cfg)
        o_full.fuse(full.weight)
        o_pool.fuse(pool.weight)
        for step in range(3):
            g = torch.Generator().manual_seed(10 + step)
            idx, wts = torch.randint(0, 64, (n, 5), generator=g), torch.rand(n, 5, generator=g)
            gout = torch.randn(n, V_DIM, generator=g).to(dtype)
            full.bag(idx, wts).backward(gout)
            pool.bag(_mine(rank, world, idx), _mine(rank, world, wts)).backward(_mine(rank, world, gout))
        if cfg["algorithm"] in ("adamw", "sgd") and not cfg.get("max_row_norm"):
            assert torch.equal(pool.weight.full_tensor(), full.weight.detach()), cfg
        else:  # row statistics: local sums of squares all-reduced, another order
            tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-2)
            torch.testing.assert_close(pool.weight.full_tensor(), full.weight.detach(), **tol)

        # The layer: its dense projections run over each rank's tokens only, so
        # the output gradients reaching the pool round differently.
        ref, layer, opt_ref, opt = _fused_pair(mesh, cfg, dtype, track_usage=True)
        for step in range(3):
            x, target = _tokens(world, step)
            (ref(x).float() * target).sum().backward()
            (layer(_mine(rank, world, x)).float() * _mine(rank, world, target)).sum().backward()
        assert layer.values.weight.grad is None
        got, want = layer.values.weight.full_tensor(), ref.values.weight.detach()
        tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-2)
        torch.testing.assert_close(got, want, **tol, msg=lambda m: f"{cfg}: {m}")
        st, st_ref = opt.state[layer.values.weight], opt_ref.state[ref.values.weight]
        assert st["step"] == st_ref["step"] == 3
        for key in ("exp_avg", "exp_avg_sq", "sum"):
            if key in st:
                assert isinstance(st[key], torch.distributed.tensor.DTensor)
                torch.testing.assert_close(st[key].full_tensor(), st_ref[key], rtol=1e-5, atol=1e-7)
        # Usage counts every rank's lookups: the single-process counts, on every rank.
        assert torch.equal(layer.usage_counts, ref.usage_counts)


@pytest.mark.parametrize("world,dtype", [(2, torch.float32), (4, torch.float32), (2, torch.bfloat16)])
def test_fused_updates_over_steps_match_one_process(world, dtype):
    from dist_harness import run

    run(_fused_updates, world, dtype)


def _compiled(rank, world):
    """torch.compile of a sharded layer trained by fused updates: the lookup
    runs outside the graph (one graph break), every rank's tokens uneven, and
    training matches the single-process eager layer."""
    import torch._dynamo

    mesh = _mesh(world)
    ref, layer, opt_ref, opt = _fused_pair(mesh, dict(algorithm="adam", lr=1e-2))
    for p_ref, p in zip(ref.parameters(), layer.parameters()):
        p_ref.requires_grad_(True)
        p.requires_grad_(True)
    explain = torch._dynamo.explain(layer)(torch.randn(3, DIM))
    assert explain.graph_break_count == 1, explain.break_reasons
    torch._dynamo.reset()
    compiled = torch.compile(layer)
    for step in range(3):
        x, target = _tokens(world, step)
        y_ref = ref(x)
        (y_ref * target).sum().backward()
        y = compiled(_mine(rank, world, x))
        torch.testing.assert_close(y, _mine(rank, world, y_ref), rtol=1e-5, atol=1e-6)
        (y * _mine(rank, world, target)).sum().backward()
    assert layer.values.weight.grad is None
    torch.testing.assert_close(layer.values.weight.full_tensor(), ref.values.weight.detach(), rtol=1e-5, atol=1e-6)
    grad = layer.keys.grad.clone()
    dist.all_reduce(grad)
    torch.testing.assert_close(grad, ref.keys.grad, rtol=1e-4, atol=1e-6)
    torch._dynamo.reset()


def test_torch_compile_of_a_sharded_layer():
    from dist_harness import run

    run(_compiled, 2)


# ---- communication volume ---------------------------------------------------------------------


def _traffic(rank, world):
    from memkernels import distributed as mkd

    layer = _layer()
    mkd.shard_values(layer, _mesh(world), even_tokens=True)
    T, K = 6, layer.heads * layer.knn
    x = torch.randn(T, DIM)
    mkd.reset_comm_stats()
    layer(x).sum().backward()
    got = mkd.comm_stats()
    want = mkd.traffic_per_lookup(T, V_DIM, K, world, value_bytes=4, weight_bytes=4, index_bytes=4)
    for kind in ("gather", "outputs", "grad_outputs", "grad_weights"):
        assert got[kind] == want[kind], (kind, got, want)
    assert got["token_counts"] == 0 and got["row_stats"] == 0


@pytest.mark.parametrize("world", [2])
def test_bytes_moved_are_the_traffic_model(world):
    from dist_harness import run

    run(_traffic, world)


def test_traffic_model_columns_beat_rows_at_paper_scale():
    from memkernels.distributed import traffic_per_lookup

    cols = traffic_per_lookup(4096, 4096, 128, 8)
    rows = traffic_per_lookup(4096, 4096, 128, 8, layout="rows")
    # 7 * 4096 * 128 * 8 gather, 2 x 7 * 4096 * 512 * 2 outputs and their
    # gradients, 7 * 4096 * 128 * 4 weight gradients.
    assert cols["total"] == 7 * 4096 * (128 * 8 + 2 * 512 * 2 + 128 * 4)
    assert rows["total"] > 5 * cols["total"]


# ---- checkpoints ------------------------------------------------------------------------------


def _train_and_save(rank, world, path):
    import torch.distributed.checkpoint as dcp

    from memkernels import distributed as mkd

    layer = _layer(track_usage=True)
    mkd.shard_values(layer, _mesh(world))
    opt = SparseRowOptimizer([layer.values.weight], algorithm="adamw", lr=1e-2, weight_decay=0.1)
    layer.fuse_value_updates(opt)
    for step in range(2):
        x, target = _tokens(world, step)
        (layer(_mine(rank, world, x)) * _mine(rank, world, target)).sum().backward()
    dcp.save({"model": layer.state_dict(), "optim": opt.state_dict()}, checkpoint_id=os.path.join(path, "ckpt"))
    st = opt.state[layer.values.weight]
    full = {"values": layer.values.weight.full_tensor(), "exp_avg": st["exp_avg"].full_tensor(),
            "exp_avg_sq": st["exp_avg_sq"].full_tensor(), "keys": layer.keys.detach().clone()}
    if rank == 0:
        torch.save(full, os.path.join(path, "full.pt"))


def _load(rank, world, path):
    import torch.distributed.checkpoint as dcp

    from memkernels import distributed as mkd

    layer = _layer(seed=7, track_usage=True)  # other initial values: the load must replace them
    mkd.shard_values(layer, _mesh(world))
    opt = SparseRowOptimizer([layer.values.weight], algorithm="adamw", lr=1e-2, weight_decay=0.1)
    opt.init_state()
    sd = {"model": layer.state_dict(), "optim": opt.state_dict()}
    dcp.load(sd, checkpoint_id=os.path.join(path, "ckpt"))
    layer.load_state_dict(sd["model"])
    opt.load_state_dict(sd["optim"])
    full = torch.load(os.path.join(path, "full.pt"))
    w = layer.values.weight
    assert w.to_local().shape == (64, V_DIM // world)
    assert torch.equal(w.full_tensor(), full["values"])
    assert torch.equal(layer.keys.detach(), full["keys"])
    st = opt.state[w]
    assert st["step"] == 2
    assert isinstance(st["exp_avg"], torch.distributed.tensor.DTensor)
    assert torch.equal(st["exp_avg"].full_tensor(), full["exp_avg"])
    assert torch.equal(st["exp_avg_sq"].full_tensor(), full["exp_avg_sq"])
    # The loaded optimizer goes on training.
    layer.fuse_value_updates(opt)
    x, target = _tokens(world, 5)
    (layer(_mine(rank, world, x)) * _mine(rank, world, target)).sum().backward()
    assert opt.state[w]["step"] == 3


def test_checkpoint_round_trip_and_resharding(tmp_path):
    from dist_harness import run

    run(_train_and_save, 2, str(tmp_path))
    run(_load, 2, str(tmp_path))  # same P
    run(_load, 4, str(tmp_path))  # resharded: 2 -> 4 column shards


# ---- bad configurations ---------------------------------------------------------------------


def _bad_configs(rank, world):
    from torch.distributed.device_mesh import init_device_mesh

    from memkernels import distributed as mkd

    mesh = _mesh(world)
    with pytest.raises(ValueError, match="divisible by the memory-parallel mesh size"):
        mkd.shard_values(ProductKeyMemory(DIM, n_keys=8, heads=2, knn=4, k_dim=8, v_dim=15), mesh)
    with pytest.raises(ValueError, match="1-D"):
        mkd.shard_values(_layer(), init_device_mesh("cpu", (1, 1, world)))
    with pytest.raises(TypeError, match="DeviceMesh"):
        mkd.shard_values(_layer(), world)
    with pytest.raises(ValueError, match="backend='reference'"):
        mkd.shard_values(_layer(backend="reference"), mesh)
    with pytest.raises(ValueError, match="no memkernels.nn.ValuePool"):
        mkd.shard_values(torch.nn.Linear(2, 2), mesh)
    with pytest.raises(ValueError, match="value_grad"):
        mkd.shard_values(_layer(), mesh, value_grad="avg")
    layer = mkd.shard_values(_layer(), mesh)
    from torch.distributed.device_mesh import DeviceMesh

    other = DeviceMesh("cpu", list(reversed(range(world))))  # the same ranks, another column order
    with pytest.raises(ValueError, match="already sharded on another mesh"):
        mkd.shard_values(layer, other)
    assert mkd.shard_values(layer, mesh) is layer  # sharding again on its own mesh changes nothing
    sparse = mkd.shard_values(_layer(sparse=True), mesh)
    with pytest.raises(NotImplementedError, match="no sparse gradient"):
        sparse(torch.randn(2, DIM))
    rowwise_adam = mkd.shard_values(_layer(), mesh)
    rowwise_adam.fuse_value_updates(SparseRowOptimizer([rowwise_adam.values.weight], "adam_rowwise",
                                                       state_dtype=torch.bfloat16))
    with pytest.raises(NotImplementedError, match="row-wise Adam with bfloat16 moments on a sharded"):
        rowwise_adam(torch.randn(2, DIM)).sum().backward()


def test_bad_configurations_raise_clear_errors():
    from dist_harness import run

    run(_bad_configs, 2)


# ---- shared pools, meta initialisation, one rank ------------------------------------------------------


def _shared_and_meta(rank, world):
    from memkernels import distributed as mkd

    mesh = _mesh(world)
    torch.manual_seed(0)
    pool = ValuePool(64, V_DIM)
    a = ProductKeyMemory(DIM, n_keys=8, heads=2, knn=4, k_dim=8, values=pool)
    b = ProductKeyMemory(DIM, n_keys=8, heads=2, knn=4, k_dim=8, values=pool)
    model = torch.nn.Sequential(a, b)
    mkd.shard_values(model, mesh)
    assert a.values.weight is b.values.weight and a.values.sharding is b.values.sharding
    opt = SparseRowOptimizer(memkernels.nn.value_parameters(model), algorithm="sgd", lr=0.1)
    assert len(opt.param_groups[0]["params"]) == 1
    before = pool.weight.full_tensor()
    for m in (a, b):
        m.fuse_value_updates(opt)
    model(torch.randn(3, DIM)).sum().backward()
    assert opt.state[pool.weight]["step"] == 2  # one update per layer, as unsharded
    assert not torch.equal(pool.weight.full_tensor(), before)

    with torch.device("meta"):
        big = ValuePool(1 << 12, 8 * world)
    mkd.shard_values(big, mesh)
    local = big.weight.to_local()
    assert local.device.type == "cpu" and local.shape == (1 << 12, 8)
    assert abs(local.std().item() - (8 * world) ** -0.5) < 0.02
    shards = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(shards, local)
    assert not torch.equal(shards[0], shards[1])  # each shard its own numbers
    # A layer built on the sharded pool reads it.
    layer = ProductKeyMemory(DIM, n_keys=64, heads=2, knn=4, k_dim=8, values=big)
    assert layer.values.weight is big.weight and layer(torch.randn(2, DIM)).shape == (2, DIM)


def test_shared_pools_and_meta_initialisation():
    from dist_harness import run

    run(_shared_and_meta, 2)


# ---- one GPU: NCCL at world size 1, and P column shards emulated on one device ---------------


def _nccl_world_one(rank, world):
    from memkernels import distributed as mkd

    mesh = torch.distributed.device_mesh.init_device_mesh("cuda", (1,))
    ref, layer = _layer(track_usage=True).cuda(), _layer(track_usage=True).cuda()
    mkd.shard_values(layer, mesh, even_tokens=True)
    x, target = (t.cuda() for t in _tokens(2))
    # World size 1: the same tokens, the same GEMMs; the lookup runs through
    # NCCL's all-gather and all-to-all, and everything is bitwise.
    assert torch.equal(layer(x), ref(x))
    opt_ref = SparseRowOptimizer([ref.values.weight], "adamw", lr=1e-2, weight_decay=0.1)
    opt = SparseRowOptimizer([layer.values.weight], "adamw", lr=1e-2, weight_decay=0.1)
    ref.fuse_value_updates(opt_ref)
    layer.fuse_value_updates(opt)
    for _ in range(2):
        (ref(x) * target).sum().backward()
        (layer(x) * target).sum().backward()
    assert torch.equal(layer.values.weight.full_tensor(), ref.values.weight.detach())
    assert torch.equal(layer.usage_counts, ref.usage_counts)
    torch.testing.assert_close(layer.keys.grad, ref.keys.grad)
    # Decoding: the sharded lookup (even tokens) is captured in a CUDA graph
    # and replayed, so it never synchronises the host.
    layer.eval()
    static_x = x[:1].clone()
    with torch.no_grad():
        layer(static_x)  # warm up (and NCCL communicators) outside the capture
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_y = layer(static_x)
        static_x.copy_(x[1:2])
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(static_y, layer(x[1:2]))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available() or not dist.is_nccl_available(), reason="needs CUDA and NCCL")
def test_nccl_world_size_one_is_bitwise_and_capturable():
    from dist_harness import run

    run(_nccl_world_one, 1, backend="nccl")


def test_column_shards_emulated_on_one_device(device):
    from memkernels.bench import shards

    result = shards.run(shards.PRESETS["small"], torch.device(device), reps=2)
    assert result["forward_shard_equal_bitwise"] and result["fused_sgd_shard_equal_bitwise"]
    assert result["forward_shard_ms"] > 0 and result["backward_update_unsharded_ms"] > 0


# ---- a 2-D mesh: data-parallel replicas of the memory-parallel group ------------------------


def _two_d(rank, world):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard

    from memkernels import distributed as mkd

    mesh = init_device_mesh("cpu", (2, world // 2), mesh_dim_names=("dp", "mp"))
    # The value gradient (dense path): every rank's tokens, on every replica.
    ref, layer = _layer(), _layer()
    mkd.shard_values(layer, mesh, value_grad="sum")
    assert layer.values.weight.placements == (Replicate(), Shard(1))
    x, target = _tokens(world)
    (ref(x) * target).sum().backward()
    y = layer(_mine(rank, world, x))
    torch.testing.assert_close(y, _mine(rank, world, ref(x)), rtol=1e-5, atol=1e-6)
    (y * _mine(rank, world, target)).sum().backward()
    torch.testing.assert_close(layer.values.weight.grad.full_tensor(), ref.values.weight.grad, rtol=1e-5,
                               atol=1e-7)
    mkd.all_reduce_dense_grads(layer, mesh, op="sum")
    torch.testing.assert_close(layer.keys.grad, ref.keys.grad, rtol=1e-4, atol=1e-6)

    # Fused updates over steps: the single-process result, and replicas stay bitwise equal.
    for cfg in (dict(algorithm="adamw", lr=1e-2, weight_decay=0.1), dict(algorithm="adagrad_rowwise", lr=0.1)):
        ref, layer, opt_ref, opt = _fused_pair(mesh, cfg)
        mkd.reset_comm_stats()
        for step in range(3):
            x, target = _tokens(world, step)
            (ref(x) * target).sum().backward()
            (layer(_mine(rank, world, x)) * _mine(rank, world, target)).sum().backward()
        assert mkd.comm_stats()["replica_inputs"] > 0
        torch.testing.assert_close(layer.values.weight.full_tensor(), ref.values.weight.detach(), rtol=1e-5,
                                   atol=1e-6)
        local = layer.values.weight.to_local()
        replicas = [torch.empty_like(local) for _ in range(2)]
        dist.all_gather(replicas, local.contiguous(), group=mesh.get_group("dp"))
        assert torch.equal(replicas[0], replicas[1]), cfg


def test_two_d_mesh_replicas_match_one_process_and_each_other():
    from dist_harness import run

    run(_two_d, 4)
