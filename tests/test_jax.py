"""memkernels.jax: the XLA FFI handlers against the torch ops, on the CPU
(and on CUDA when JAX has a GPU): forward, gradients, jit, vmap."""

import dataclasses
from functools import partial

import numpy as np
import pytest
import torch

import memkernels

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")
try:
    from memkernels import jax as mkj
except ImportError as e:  # built without the handlers
    pytest.skip(f"memkernels.jax unavailable: {e}", allow_module_level=True)


def _jax_devices():
    out = ["cpu"]
    try:
        if jax.devices("gpu"):
            out.append(pytest.param("gpu", marks=pytest.mark.cuda))
    except RuntimeError:
        out.append(pytest.param("gpu", marks=[pytest.mark.cuda, pytest.mark.skip(reason="JAX has no GPU")]))
    return out


@pytest.fixture(params=_jax_devices())
def jdev(request):
    dev = jax.devices(request.param)[0]
    if request.param == "gpu" and "CUDA" not in mkj.platforms():
        pytest.skip("memkernels built without CUDA handlers")
    return dev


def _torch_device(jdev):
    return "cuda" if jdev.platform == "gpu" else "cpu"


def _bag_inputs(N=50, D=12, T=9, B=5, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    values = rng.standard_normal((N, D)).astype(dtype)
    indices = rng.integers(0, N, (T, B)).astype(np.int32)
    weights = rng.random((T, B)).astype(np.float32)
    gout = rng.standard_normal((T, D)).astype(dtype)
    return values, indices, weights, gout


def _put(jdev, *arrays):
    return [jax.device_put(a, jdev) for a in arrays]


def test_platforms_and_library():
    assert "cpu" in mkj.platforms()
    assert mkj.library_path().endswith("libmemkernels_jax.so")


@pytest.mark.parametrize("jit", [False, True])
def test_embedding_bag_forward_and_gradients_equal_the_torch_op(jdev, jit):
    values, indices, weights, gout = _bag_inputs()
    dev = _torch_device(jdev)
    tv = torch.tensor(values, device=dev, requires_grad=True)
    tw = torch.tensor(weights, device=dev, requires_grad=True)
    tout = memkernels.embedding_bag(tv, torch.tensor(indices, device=dev).long(), tw)
    tout.backward(torch.tensor(gout, device=dev))

    v, i, w, g = _put(jdev, values, indices, weights, gout)
    f = jax.jit(mkj.embedding_bag) if jit else mkj.embedding_bag
    out = f(v, i, w)
    # The same kernels on the same inputs: bitwise.
    np.testing.assert_array_equal(np.asarray(out), tout.detach().cpu().numpy())

    def loss(v, w):
        return jnp.vdot(mkj.embedding_bag(v, i, w), g)

    gv, gw = (jax.jit(jax.grad(loss, argnums=(0, 1))) if jit else jax.grad(loss, argnums=(0, 1)))(v, w)
    np.testing.assert_array_equal(np.asarray(gv), tv.grad.cpu().numpy())
    np.testing.assert_array_equal(np.asarray(gw), tw.grad.cpu().numpy())


def test_embedding_bag_bfloat16_values(jdev):
    values, indices, weights, _ = _bag_inputs()
    v = jnp.asarray(values, dtype=jnp.bfloat16)
    v, i, w = _put(jdev, v, indices, weights)
    out = mkj.embedding_bag(v, i, w)
    assert out.dtype == jnp.bfloat16
    dev = _torch_device(jdev)
    ref = memkernels.embedding_bag(torch.tensor(values, device=dev).bfloat16(), torch.tensor(indices, device=dev),
                                   torch.tensor(weights, device=dev))
    np.testing.assert_array_equal(np.asarray(out.astype(jnp.float32)), ref.float().cpu().numpy())


def test_embedding_bag_vmap_shared_table_and_batched_tables(jdev):
    values, indices, weights, gout = _bag_inputs()
    rng = np.random.default_rng(1)
    V = 3
    idx = rng.integers(0, values.shape[0], (V,) + indices.shape).astype(np.int32)
    wts = rng.random((V,) + weights.shape).astype(np.float32)
    v, i, w = _put(jdev, values, idx, wts)
    # A shared table: one call over all bags.
    out = jax.vmap(mkj.embedding_bag, in_axes=(None, 0, 0))(v, i, w)
    for b in range(V):
        np.testing.assert_array_equal(np.asarray(out[b]), np.asarray(mkj.embedding_bag(v, i[b], w[b])))
    # A table per batch element.
    tables = jnp.stack([v, v * 2, v - 1])
    out = jax.vmap(mkj.embedding_bag)(tables, i, w)
    for b in range(V):
        np.testing.assert_array_equal(np.asarray(out[b]), np.asarray(mkj.embedding_bag(tables[b], i[b], w[b])))
    # Gradients under vmap: the shared table's gradient sums the batch.
    g = jax.device_put(rng.standard_normal((V,) + gout.shape).astype(np.float32), jdev)

    def loss(v, i, w, g):
        return jnp.vdot(mkj.embedding_bag(v, i, w), g)

    per = jax.vmap(jax.grad(loss), in_axes=(None, 0, 0, 0))(v, i, w, g)
    total = sum(jax.grad(loss)(v, i[b], w[b], g[b]) for b in range(V))
    np.testing.assert_allclose(np.asarray(per.sum(0)), np.asarray(total), rtol=1e-5, atol=1e-6)


def test_embedding_bag_bad_arguments_raise():
    v = jnp.zeros((4, 3))
    with pytest.raises(ValueError, match="2-D"):
        mkj.embedding_bag(v[0], jnp.zeros((2, 2), jnp.int32), jnp.zeros((2, 2)))
    with pytest.raises(ValueError, match="one shape"):
        mkj.embedding_bag(v, jnp.zeros((2, 2), jnp.int32), jnp.zeros((2, 3)))
    with pytest.raises(TypeError, match="int32 or int64"):
        mkj.embedding_bag(v, jnp.zeros((2, 2), jnp.float32), jnp.zeros((2, 2)))


@pytest.mark.parametrize("jit", [False, True])
def test_pk_topk_matches_the_torch_op(jdev, jit):
    rng = np.random.default_rng(2)
    T, H, n, Dk, k = 7, 2, 16, 8, 4
    query = rng.standard_normal((T, H, Dk)).astype(np.float32)
    keys = rng.standard_normal((H, 2, n, Dk // 2)).astype(np.float32)
    dev = _torch_device(jdev)
    tq = torch.tensor(query, device=dev, requires_grad=True)
    tk = torch.tensor(keys, device=dev, requires_grad=True)
    ts, ti = memkernels.pk_topk(tq, tk, k)
    gs = rng.standard_normal((T, H, k)).astype(np.float32)
    ts.backward(torch.tensor(gs, device=dev))

    q, kk, g = _put(jdev, query, keys, gs)
    f = jax.jit(mkj.pk_topk, static_argnums=2) if jit else mkj.pk_topk
    scores, slots = f(q, kk, k)
    # Slots equal (no near-ties at this scale); scores within the GEMMs' rounding.
    np.testing.assert_array_equal(np.asarray(slots), ti.cpu().numpy())
    np.testing.assert_allclose(np.asarray(scores), ts.detach().cpu().numpy(), rtol=1e-5, atol=1e-5)
    assert np.all(np.diff(np.asarray(scores), axis=-1) <= 0)

    def loss(q, kk):
        return jnp.vdot(mkj.pk_topk(q, kk, k)[0], g)

    gq, gk = jax.grad(loss, argnums=(0, 1))(q, kk)
    # The core's backward on the same slots and score gradients: bitwise.
    np.testing.assert_array_equal(np.asarray(gq), tq.grad.cpu().numpy())
    np.testing.assert_array_equal(np.asarray(gk), tk.grad.cpu().numpy())


def test_pk_topk_vmap_and_bad_k(jdev):
    rng = np.random.default_rng(3)
    q = jax.device_put(rng.standard_normal((3, 5, 2, 8)).astype(np.float32), jdev)
    kk = jax.device_put(rng.standard_normal((2, 2, 16, 4)).astype(np.float32), jdev)
    s, i = jax.vmap(lambda q: mkj.pk_topk(q, kk, 4))(q)
    for b in range(3):
        sb, ib = mkj.pk_topk(q[b], kk, 4)
        np.testing.assert_array_equal(np.asarray(i[b]), np.asarray(ib))
        np.testing.assert_array_equal(np.asarray(s[b]), np.asarray(sb))
    with pytest.raises(ValueError, match="k must be"):
        mkj.pk_topk(q[0], kk, 17)


def test_a_small_memory_layer_trains_under_jit():
    """The docs/jax.md example: a product-key memory layer in plain JAX."""
    from memkernels.examples import jax_memory

    losses = jax_memory.train(steps=30, seed=0)
    assert losses[-1] < 0.5 * losses[0]


def test_jax_path_bench_runs(monkeypatch):
    from memkernels.bench import jax_path

    monkeypatch.setattr(jax_path, "BAG_CASES", jax_path.BAG_CASES[:1])
    monkeypatch.setattr(jax_path, "PK_CASES", jax_path.PK_CASES[:1])
    result = jax_path.run(reps=2)
    assert {(r["op"], r["part"]) for r in result["rows"]} == {
        ("embedding_bag", "forward"), ("embedding_bag", "forward+backward"), ("pk_topk", "forward")}
    assert all(r["torch_us"] > 0 and r["jax_us"] > 0 for r in result["rows"])


def test_dlpack_round_trip_is_zero_copy(jdev):
    """Outside jit, JAX arrays reach the torch ops through DLPack without a
    copy, and the results come back the same way."""
    values, indices, weights, _ = _bag_inputs()
    v, i, w = _put(jdev, values, indices, weights)
    tv = torch.from_dlpack(v)
    assert tv.data_ptr() == v.unsafe_buffer_pointer()  # the same memory
    out = memkernels.embedding_bag(tv, torch.from_dlpack(i), torch.from_dlpack(w))
    back = jnp.from_dlpack(out)
    assert back.unsafe_buffer_pointer() == out.data_ptr()
    np.testing.assert_array_equal(np.asarray(back), np.asarray(mkj.embedding_bag(v, i, w)))


def test_sparse_backward_capacity_form_equals_the_torch_op(jdev):
    values, indices, weights, gout = _bag_inputs()
    v, i, w, g = _put(jdev, values, indices, weights, gout)
    rows, grads, gw, count = jax.jit(mkj.embedding_bag_backward_sparse)(g, v, i, w)
    dev = _torch_device(jdev)
    cap = min(values.shape[0], indices.size)
    trows, tgrads, tgw = torch.ops.memkernels.embedding_bag_backward_sparse.default(
        torch.tensor(gout, device=dev), torch.tensor(values, device=dev), torch.tensor(indices, device=dev),
        torch.tensor(weights, device=dev), True, cap)
    assert rows.shape == (cap,) and int(count) == int((trows >= 0).sum())
    np.testing.assert_array_equal(np.asarray(rows), trows.cpu().numpy())
    np.testing.assert_array_equal(np.asarray(grads), tgrads.cpu().numpy())
    np.testing.assert_array_equal(np.asarray(gw), tgw.cpu().numpy())


@pytest.mark.parametrize("kind", ["sgd", "adam", "adagrad_rowwise", "adam_rowwise"])
def test_row_update_equals_the_torch_op_and_skips_padding(jdev, kind):
    rng = np.random.default_rng(5)
    N, D = 40, 6
    table = rng.standard_normal((N, D)).astype(np.float32)
    rows = np.array([3, 7, 21, -1, -1], dtype=np.int32)
    grads = rng.standard_normal((5, D)).astype(np.float32)
    update = memkernels.RowUpdate(kind, lr=0.05, weight_decay=0.01, step=2)
    s1 = np.zeros((N, D) if kind in ("adam", "adam_rowwise") else (N,), np.float32) if kind != "sgd" else None
    s2 = {"adam": np.zeros((N, D), np.float32), "adam_rowwise": np.zeros((N,), np.float32)}.get(kind)
    dev = _torch_device(jdev)
    tt = torch.tensor(table, device=dev)
    ts = [None if s is None else torch.tensor(s, device=dev) for s in (s1, s2)]
    memkernels.sparse_row_update(tt, torch.tensor(rows[:3], device=dev).long(), torch.tensor(grads[:3], device=dev),
                                 update, *ts)
    put = lambda a: None if a is None else jax.device_put(a, jdev)  # noqa: E731
    f = jax.jit(lambda t, r, g, a, b: mkj.sparse_row_update(t, r, g, update, a, b), donate_argnums=(0,))
    t, n1, n2 = f(put(table), put(rows), put(grads), put(s1), put(s2))
    np.testing.assert_array_equal(np.asarray(t), tt.cpu().numpy())
    for got, want in ((n1, ts[0]), (n2, ts[1])):
        if want is not None:
            np.testing.assert_array_equal(np.asarray(got), want.cpu().numpy())
    untouched = np.setdiff1d(np.arange(N), rows[:3])
    np.testing.assert_array_equal(np.asarray(t)[untouched], table[untouched])


def test_jitted_sparse_backward_and_update_equal_the_torch_fused_update(jdev):
    """A value table's training step in JAX (sparse backward, then the row
    update on the capacity form's rows) against the torch fused op."""
    values, indices, weights, gout = _bag_inputs()
    update = memkernels.RowUpdate("adam", lr=0.01, weight_decay=0.1, step=1)

    @jax.jit
    def step(table, m, v, i, w, g):
        rows, grads, gw, _ = mkj.embedding_bag_backward_sparse(g, table, i, w)
        table, m, v = mkj.sparse_row_update(table, rows, grads, update, m, v)
        return table, m, v, gw

    z = np.zeros_like(values)
    t, m, v, gw = step(*_put(jdev, values, z, z, indices, weights, gout))
    dev = _torch_device(jdev)
    tt, tm, tv = (torch.tensor(a, device=dev) for a in (values, z, z))
    tgw = memkernels.embedding_bag_backward_update(torch.tensor(gout, device=dev), tt,
                                                   torch.tensor(indices, device=dev), torch.tensor(weights, device=dev),
                                                   update, tm, tv)
    np.testing.assert_array_equal(np.asarray(t), tt.cpu().numpy())
    np.testing.assert_array_equal(np.asarray(m), tm.cpu().numpy())
    np.testing.assert_array_equal(np.asarray(gw), tgw.cpu().numpy())


def test_adam_steps_under_jit_compile_once(jdev):
    """The step count and a learning-rate scale are arrays the kernel reads:
    one compiled step serves every step, bitwise the torch op's updates."""
    values, indices, weights, gout = _bag_inputs()
    base = memkernels.RowUpdate("adam", lr=0.01, weight_decay=0.1)
    traces = []

    @jax.jit
    def step(table, m, v, i, w, g, t, scale):
        traces.append(1)
        rows, grads, gw, _ = mkj.embedding_bag_backward_sparse(g, table, i, w)
        return mkj.sparse_row_update(table, rows, grads, base, m, v, step=t, lr_scale=scale)

    z = np.zeros_like(values)
    t, m, v = _put(jdev, values, z, z)
    i, w, g = _put(jdev, indices, weights, gout)
    dev = _torch_device(jdev)
    tt, tm, tv = (torch.tensor(a, device=dev) for a in (values, z, z))
    for k, scale in ((1, 1.0), (2, 0.5), (3, 0.25)):
        t, m, v = step(t, m, v, i, w, g, jnp.int32(k), jnp.float32(scale))
        update = dataclasses.replace(base, step=k, lr=base.lr * scale)
        memkernels.embedding_bag_backward_update(torch.tensor(gout, device=dev), tt, torch.tensor(indices, device=dev),
                                                 torch.tensor(weights, device=dev), update, tm, tv)
        np.testing.assert_array_equal(np.asarray(t), tt.cpu().numpy())
    assert len(traces) == 1


@pytest.mark.parametrize("kind", ["adam", "adagrad_rowwise", "sgd", "adam_rowwise"])
def test_fused_backward_update_equals_the_torch_op(jdev, kind):
    """One call: the backward fused with the update, values and states in
    place, bitwise the torch op; under jit with a traced step, one trace."""
    values, indices, weights, gout = _bag_inputs()
    N, D = values.shape
    base = memkernels.RowUpdate(kind, lr=0.02, weight_decay=0.05)
    s1 = np.zeros((N, D) if kind in ("adam", "adam_rowwise") else (N,), np.float32) if kind != "sgd" else None
    s2 = {"adam": np.zeros((N, D), np.float32), "adam_rowwise": np.zeros((N,), np.float32)}.get(kind)
    traces = []

    @partial(jax.jit, donate_argnums=(0, 1, 2))
    def step(v, a, b, i, w, g, t):
        traces.append(1)
        return mkj.embedding_bag_backward_update(g, v, i, w, base, a, b, step=t)

    put = lambda a: None if a is None else jax.device_put(a, jdev)  # noqa: E731
    v, a, b = put(values), put(s1), put(s2)
    i, w, g = _put(jdev, indices, weights, gout)
    dev = _torch_device(jdev)
    tv = torch.tensor(values, device=dev)
    ta, tb = (None if s is None else torch.tensor(s, device=dev) for s in (s1, s2))
    for k in (1, 2):
        v, a, b, gw = step(v, a, b, i, w, g, jnp.int32(k))
        tgw = memkernels.embedding_bag_backward_update(torch.tensor(gout, device=dev), tv,
                                                       torch.tensor(indices, device=dev),
                                                       torch.tensor(weights, device=dev),
                                                       dataclasses.replace(base, step=k), ta, tb)
        np.testing.assert_array_equal(np.asarray(v), tv.cpu().numpy())
        np.testing.assert_array_equal(np.asarray(gw), tgw.cpu().numpy())
        if ta is not None:
            np.testing.assert_array_equal(np.asarray(a), ta.cpu().numpy())
    assert len(traces) == 1


def test_update_states_are_checked_before_the_kernel_runs(jdev):
    """The core cannot see the states' sizes: a missing or mis-shaped state
    is refused in Python, naming it, for every kind."""
    table = jax.device_put(np.zeros((10, 4), np.float32), jdev)
    rows = jax.device_put(np.array([1, 2], np.int32), jdev)
    grads = jax.device_put(np.ones((2, 4), np.float32), jdev)
    full, per_row = np.zeros((10, 4), np.float32), np.zeros((10,), np.float32)
    for kind, s1, s2, msg in (("adam", full, None, "state2"), ("adam", per_row, full, "state1"),
                              ("adam_rowwise", full, full, r"state2 must be float32 of shape \(10,\)"),
                              ("adagrad_rowwise", None, None, "state1"),
                              ("adam_rowwise", full.astype(np.float16), per_row, "state1")):
        with pytest.raises(ValueError, match=msg):
            mkj.sparse_row_update(table, rows, grads, memkernels.RowUpdate(kind, lr=0.1), s1, s2)


@pytest.mark.parametrize("kind", ["adam", "adam_rowwise"])
def test_bf16_moments_equal_the_torch_op(jdev, kind):
    """bfloat16 [N, D] moments (stochastically rounded): the JAX update and
    the fused backward-with-update store the torch op's bits, moments
    included."""
    rng = np.random.default_rng(9)
    N, D = 40, 6
    table = rng.standard_normal((N, D)).astype(np.float32)
    rows = np.array([3, 7, 21], dtype=np.int32)
    grads = rng.standard_normal((3, D)).astype(np.float32)
    update = memkernels.RowUpdate(kind, lr=0.05, weight_decay=0.01, step=2, seed=11)
    m = np.full((N, D), 0.3, np.float32)
    v = np.full((N, D), 0.2, np.float32) if kind == "adam" else np.full((N,), 0.2, np.float32)
    dev = _torch_device(jdev)
    tt, tm = torch.tensor(table, device=dev), torch.tensor(m, device=dev).bfloat16()
    tv = torch.tensor(v, device=dev).bfloat16() if kind == "adam" else torch.tensor(v, device=dev)
    memkernels.sparse_row_update(tt, torch.tensor(rows, device=dev).long(), torch.tensor(grads, device=dev), update,
                                 tm, tv)
    jm = jnp.asarray(m, jnp.bfloat16)
    jv = jnp.asarray(v, jnp.bfloat16) if kind == "adam" else jnp.asarray(v)
    t, n1, n2 = mkj.sparse_row_update(*_put(jdev, table, rows, grads), update, jax.device_put(jm, jdev),
                                      jax.device_put(jv, jdev))
    np.testing.assert_array_equal(np.asarray(t), tt.cpu().numpy())
    np.testing.assert_array_equal(np.asarray(n1.astype(jnp.float32)), tm.float().cpu().numpy())
    np.testing.assert_array_equal(np.asarray(n2.astype(jnp.float32)), tv.float().cpu().numpy())
    assert n1.dtype == jnp.bfloat16 and not np.array_equal(np.asarray(n1.astype(jnp.float32)), m)

    values, indices, weights, gout = _bag_inputs()
    Nv, Dv = values.shape
    bm = np.zeros((Nv, Dv), np.float32)
    bv = np.zeros((Nv, Dv) if kind == "adam" else (Nv,), np.float32)
    tvals = torch.tensor(values, device=dev)
    ta = torch.tensor(bm, device=dev).bfloat16()
    tb = torch.tensor(bv, device=dev).bfloat16() if kind == "adam" else torch.tensor(bv, device=dev)
    memkernels.embedding_bag_backward_update(torch.tensor(gout, device=dev), tvals, torch.tensor(indices, device=dev),
                                             torch.tensor(weights, device=dev), update, ta, tb)
    ja = jnp.asarray(bm, jnp.bfloat16)
    jb = jnp.asarray(bv, jnp.bfloat16) if kind == "adam" else jnp.asarray(bv)
    i, w, g = _put(jdev, indices, weights, gout)
    out_v, oa, ob, _ = mkj.embedding_bag_backward_update(g, jax.device_put(values, jdev), i, w, update,
                                                         jax.device_put(ja, jdev), jax.device_put(jb, jdev))
    np.testing.assert_array_equal(np.asarray(out_v), tvals.cpu().numpy())
    np.testing.assert_array_equal(np.asarray(oa.astype(jnp.float32)), ta.float().cpu().numpy())
    np.testing.assert_array_equal(np.asarray(ob.astype(jnp.float32)), tb.float().cpu().numpy())
