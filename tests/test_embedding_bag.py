"""memkernels.embedding_bag: forward, dense and sparse backward, against the
fp64 oracle (memkernels.reference) and torch.nn.functional.embedding_bag, on
every device available. The CUDA variants run the same bodies."""

import warnings

import pytest
import torch
import torch.nn.functional as F

import memkernels
from memkernels import reference
from tolerances import assert_close_to_oracle

LOWP = (torch.float16, torch.bfloat16)
DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def make(device, N, D, T, B, dtype=torch.float32, index_dtype=torch.int64, weight_dtype=None, hot=False):
    values = torch.randn(N, D, device=device).to(dtype)
    if hot:
        indices = torch.full((T, B), N // 2, device=device, dtype=index_dtype)
    else:
        indices = torch.randint(0, N, (T, B), device=device, dtype=index_dtype)
    weights = torch.randn(T, B, device=device).to(weight_dtype or (dtype if dtype == torch.float64 else torch.float32))
    return values, indices, weights


def oracle(values, indices, weights, grad_out=None):
    """fp64 forward (and gradients for grad_out) through PyTorch autograd."""
    v = values.detach().double().requires_grad_()
    w = weights.detach().double().requires_grad_()
    out = reference.embedding_bag(v, indices, w)
    if grad_out is None:
        return out
    gv, gw = torch.autograd.grad(out, (v, w), grad_out.double())
    return out, gv, gw


def torch_op(values, indices, weights, grad_out=None):
    """PyTorch's own op in the values' dtype (weights cast to it, as it requires).

    PyTorch's CUDA kernel has no bfloat16 backward for per-sample weights, so
    bfloat16 CUDA inputs are run through PyTorch's CPU kernel (same dtype,
    the rounding the comparison is about) and the results moved back."""
    if values.is_cuda and values.dtype == torch.bfloat16:
        res = torch_op(values.cpu(), indices.cpu(), weights.cpu(), None if grad_out is None else grad_out.cpu())
        return res.to(values.device) if grad_out is None else tuple(r.to(values.device) for r in res)
    v = values.detach().clone().requires_grad_()
    w = weights.detach().to(values.dtype).requires_grad_()
    out = F.embedding_bag(indices.long(), v, mode="sum", per_sample_weights=w)
    if grad_out is None:
        return out
    gv, gw = torch.autograd.grad(out, (v, w), grad_out)
    return out, gv, gw


def run_ours(values, indices, weights, grad_out, sparse=False):
    v = values.detach().clone().requires_grad_()
    w = weights.detach().clone().requires_grad_()
    out = memkernels.embedding_bag(v, indices, w, sparse=sparse)
    gv, gw = torch.autograd.grad(out, (v, w), grad_out)
    return out, gv, gw


# ---- forward and gradients against the oracle and PyTorch -------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("index_dtype", (torch.int32, torch.int64))
# D covers the CPU register tilings: one 64 tile; 128 + 64 tiles and an
# 8-column scratch tail (200); 256 tiles, 64 tiles and scratch (1000, 4097).
@pytest.mark.parametrize("D", (1, 3, 64, 200, 1000, 4097))
def test_forward_and_backward(device, dtype, index_dtype, D):
    N, T, B = 50, 9, 6
    values, indices, weights = make(device, N, D, T, B, dtype, index_dtype)
    grad_out = torch.randn(T, D, device=device).to(dtype)
    out, gv, gw = run_ours(values, indices, weights, grad_out)
    assert out.dtype == dtype and gv.dtype == dtype and gw.dtype == weights.dtype
    assert out.device == values.device and gv.shape == values.shape and gw.shape == weights.shape
    ref_out, ref_gv, ref_gw = oracle(values, indices, weights, grad_out)
    t_out, t_gv, t_gw = torch_op(values, indices, weights, grad_out) if dtype in LOWP else (None, None, None)
    assert_close_to_oracle(out, ref_out, dtype, t_out)
    assert_close_to_oracle(gv, ref_gv, dtype, t_gv)
    # grad_weights is accumulated in fp32: compare at the fp32 rule for 16-bit values
    # after scaling by the inputs' rounding (the oracle sees the same rounded inputs).
    gw_dtype = torch.float32 if dtype in LOWP else dtype
    assert_close_to_oracle(gw, ref_gw, gw_dtype)


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16))
def test_matches_torch_embedding_bag(device, dtype):
    values, indices, weights = make(device, 200, 48, 33, 5, dtype, weight_dtype=dtype)
    grad_out = torch.randn(33, 48, device=device).to(dtype)
    out, gv, gw = run_ours(values, indices, weights, grad_out)
    t_out, t_gv, t_gw = torch_op(values, indices, weights, grad_out)
    tol = dict(atol=2e-5, rtol=2e-5) if dtype == torch.float32 else dict(atol=5e-2, rtol=2e-2)
    torch.testing.assert_close(out, t_out, **tol)
    torch.testing.assert_close(gv, t_gv, **tol)
    torch.testing.assert_close(gw, t_gw, **tol)
    assert gw.dtype == dtype


def test_weights_in_values_dtype(device):
    values, indices, weights = make(device, 30, 16, 4, 3, torch.float16, weight_dtype=torch.float16)
    out = memkernels.embedding_bag(values, indices, weights)
    ref = oracle(values, indices, weights)
    assert_close_to_oracle(out, ref, torch.float16, torch_op(values, indices, weights))


# ---- sparse gradient ---------------------------------------------------------


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16))
def test_sparse_gradient(device, dtype):
    values, indices, weights = make(device, 1000, 24, 40, 8, dtype)
    indices[0, :4] = 7  # duplicates within a bag
    indices[1, 0] = 7  # and across bags
    grad_out = torch.randn(40, 24, device=device).to(dtype)
    _, gv_dense, gw_dense = run_ours(values, indices, weights, grad_out)
    _, gv, gw = run_ours(values, indices, weights, grad_out, sparse=True)
    assert gv.is_sparse and gv.is_coalesced() and gv.shape == values.shape and gv.dtype == dtype
    rows = gv.indices()[0]
    assert torch.equal(rows, torch.unique(indices.long()))  # distinct and sorted
    assert gv.values().shape == (rows.numel(), 24)
    assert torch.equal(gv.to_dense(), gv_dense)
    assert torch.equal(gw, gw_dense)


def test_sparse_gradient_warns_nothing(device):
    """The sparse gradient says explicitly that its invariants are not
    checked (they hold by construction), so torch does not warn about
    implicitly disabled checks."""
    values, indices, weights = make(device, 100, 8, 6, 3, torch.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, gv, _ = run_ours(values, indices, weights, torch.randn(6, 8, device=device), sparse=True)
        gv.coalesce().to_dense()
    assert gv.is_sparse
    assert not [w for w in caught if "invariant" in str(w.message).lower()], [str(w.message) for w in caught]


def test_sparse_adam_step(device):
    N, D = 500, 8
    table = torch.nn.Parameter(torch.randn(N, D, device=device))
    opt = torch.optim.SparseAdam([table], lr=0.1)
    before = table.detach().clone()
    indices = torch.randint(0, 20, (16, 4), device=device)  # touches only rows < 20
    weights = torch.rand(16, 4, device=device)
    memkernels.embedding_bag(table, indices, weights, sparse=True).square().sum().backward()
    opt.step()
    touched = torch.zeros(N, dtype=torch.bool, device=device)
    touched[indices.flatten()] = True
    assert not torch.equal(table.detach()[touched], before[touched])
    assert torch.equal(table.detach()[~touched], before[~touched])


# ---- edge cases --------------------------------------------------------------


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16))
@pytest.mark.parametrize("B", (1, 4, 40))
def test_one_hot_row(device, dtype, B):
    # Every pair hits one row: the segment is split into chunks whose partial
    # sums are combined (T * B > chunk size).
    T, D = 300, 33
    values, indices, weights = make(device, 10, D, T, B, dtype, hot=True)
    grad_out = torch.randn(T, D, device=device).to(dtype)
    out, gv, gw = run_ours(values, indices, weights, grad_out)
    ref_out, ref_gv, ref_gw = oracle(values, indices, weights, grad_out)
    t = torch_op(values, indices, weights, grad_out) if dtype in LOWP else (None, None, None)
    assert_close_to_oracle(out, ref_out, dtype, t[0])
    assert_close_to_oracle(gv, ref_gv, dtype, t[1])
    assert_close_to_oracle(gw, ref_gw, torch.float32)
    untouched = torch.ones(10, dtype=torch.bool)
    untouched[5] = False
    assert (gv.cpu()[untouched] == 0).all()


def test_duplicates_within_and_across_bags(device):
    values, _, weights = make(device, 20, 10, 6, 5)
    indices = torch.tensor(
        [[1, 1, 1, 2, 3], [1, 2, 2, 2, 19], [0, 0, 0, 0, 0], [19, 19, 1, 0, 2], [3, 3, 3, 3, 3], [7, 8, 9, 7, 8]],
        device=device,
    )
    grad_out = torch.randn(6, 10, device=device)
    out, gv, gw = run_ours(values, indices, weights, grad_out)
    ref_out, ref_gv, ref_gw = oracle(values, indices, weights, grad_out)
    for ours, ref in ((out, ref_out), (gv, ref_gv), (gw, ref_gw)):
        assert_close_to_oracle(ours, ref, torch.float32)


@pytest.mark.parametrize("T", (0, 1))
def test_tiny_batches(device, T):
    values, indices, weights = make(device, 7, 5, T, 3)
    grad_out = torch.randn(T, 5, device=device)
    out, gv, gw = run_ours(values, indices, weights, grad_out)
    assert out.shape == (T, 5) and gv.shape == (7, 5) and gw.shape == (T, 3)
    ref_out, ref_gv, ref_gw = oracle(values, indices, weights, grad_out)
    assert_close_to_oracle(out, ref_out, torch.float32)
    assert_close_to_oracle(gv, ref_gv, torch.float32)
    _, gv_sparse, _ = run_ours(values, indices, weights, grad_out, sparse=True)
    assert torch.equal(gv_sparse.to_dense(), gv)


def test_strided_and_noncontiguous_inputs(device):
    big = torch.randn(40, 30, device=device)
    values = big[:, 3:20]  # row stride 30, unit column stride
    indices = torch.randint(0, 40, (8, 6), device=device)[:, ::2]  # non-contiguous
    weights = torch.randn(8, 6, device=device)[:, 1::2]
    grad_out = torch.randn(17, 8, device=device).t()
    out, gv, gw = run_ours(values, indices, weights, grad_out)
    ref_out, ref_gv, ref_gw = oracle(values, indices, weights, grad_out)
    for ours, ref in ((out, ref_out), (gv, ref_gv), (gw, ref_gw)):
        assert_close_to_oracle(ours, ref, torch.float32)


def test_only_one_input_needs_grad(device):
    values, indices, weights = make(device, 30, 6, 5, 4)
    v = values.clone().requires_grad_()
    memkernels.embedding_bag(v, indices, weights).sum().backward()
    assert v.grad is not None and weights.grad is None
    w = weights.clone().requires_grad_()
    memkernels.embedding_bag(values, indices, w).sum().backward()
    assert w.grad is not None
    ref = oracle(values, indices, weights, torch.ones(5, 6, device=device))
    assert_close_to_oracle(w.grad, ref[2], torch.float32)


# ---- determinism ---------------------------------------------------------------


@pytest.mark.parametrize("sparse", (False, True))
def test_backward_is_bitwise_deterministic(device, sparse):
    values, indices, weights = make(device, 64, 300, 500, 16, torch.float32)
    indices[:, :8] = 3  # one hot row among many short segments
    grad_out = torch.randn(500, 300, device=device)
    def grads():
        out, gv, gw = run_ours(values, indices, weights, grad_out, sparse=sparse)
        parts = [out, gw] + ([gv.indices(), gv.values()] if sparse else [gv])
        return parts

    first = grads()
    for _ in range(2):
        for a, b in zip(first, grads()):
            assert torch.equal(a, b)


def test_cpu_result_does_not_depend_on_thread_count():
    values, indices, weights = make("cpu", 64, 130, 400, 16)
    indices[:, :8] = 3
    grad_out = torch.randn(400, 130)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run_ours(values, indices, weights, grad_out)
        torch.set_num_threads(max(2, threads))
        many = run_ours(values, indices, weights, grad_out)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(one, many):
        assert torch.equal(a, b)


# ---- autograd machinery ----------------------------------------------------------


def test_gradcheck_fp64(device):
    values, indices, weights = make(device, 12, 5, 4, 3, torch.float64)
    indices[0, 0] = indices[1, 2]  # a shared row
    v = values.requires_grad_()
    w = weights.requires_grad_()
    assert torch.autograd.gradcheck(lambda v, w: memkernels.embedding_bag(v, indices, w), (v, w))
    # The sparse path's gradient equals the dense one (test_sparse_gradient).



@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16))
def test_opcheck(device, dtype):
    values, indices, weights = make(device, 20, 12, 6, 4, dtype)
    grad_out = torch.randn(6, 12, device=device).to(dtype)
    torch.library.opcheck(
        torch.ops.memkernels.embedding_bag.default, (values.requires_grad_(), indices, weights.requires_grad_())
    )
    torch.library.opcheck(torch.ops.memkernels.embedding_bag.default, (values, indices, weights, True, "off"))
    torch.library.opcheck(
        torch.ops.memkernels.embedding_bag_backward.default, (grad_out, values.detach(), indices, weights.detach())
    )
    torch.library.opcheck(
        torch.ops.memkernels.embedding_bag_backward_sparse.default,
        (grad_out, values.detach(), indices, weights.detach()),
        test_utils=("test_schema", "test_autograd_registration", "test_faketensor"),
    )


@pytest.mark.parametrize("sparse", (False, True))
def test_torch_compile_fullgraph(device, sparse):
    values, indices, weights = make(device, 50, 16, 8, 4)

    def step(v, i, w):
        return (memkernels.embedding_bag(v, i, w, sparse=sparse) * 2.0).sum()

    compiled = torch.compile(step, fullgraph=True)
    v1, w1 = values.clone().requires_grad_(), weights.clone().requires_grad_()
    v2, w2 = values.clone().requires_grad_(), weights.clone().requires_grad_()
    loss_c = compiled(v1, indices, w1)
    loss_c.backward()
    loss_e = step(v2, indices, w2)
    loss_e.backward()
    torch.testing.assert_close(loss_c, loss_e)
    assert v1.grad.is_sparse == sparse
    torch.testing.assert_close(v1.grad.to_dense(), v2.grad.to_dense())
    torch.testing.assert_close(w1.grad, w2.grad)


# ---- bad input --------------------------------------------------------------------


def _raises(match, exc=RuntimeError):
    return pytest.raises(exc, match=match)


def test_bad_dtypes(device):
    values, indices, weights = make(device, 10, 4, 3, 2)
    with _raises(r"values must be float32, float16, bfloat16 or float64; got Int"):
        memkernels.embedding_bag(values.int(), indices, weights)
    with _raises(r"indices must be int32 or int64; got Float"):
        memkernels.embedding_bag(values, indices.float(), weights)
    with _raises(r"weights must be float32 or the values' dtype \(Float\); got Int"):
        memkernels.embedding_bag(values, indices, weights.int())
    with _raises(r"weights must be float32 or the values' dtype \(BFloat16\); got Half"):
        memkernels.embedding_bag(values.bfloat16(), indices, weights.half())


def test_bad_shapes(device):
    values, indices, weights = make(device, 10, 4, 3, 2)
    with _raises(r"values must be 2-D \[num_rows, dim\]; got shape \[10, 4, 1\]"):
        memkernels.embedding_bag(values[..., None], indices, weights)
    with _raises(r"indices must be 2-D \[num_bags, bag_size\]; got shape \[6\]"):
        memkernels.embedding_bag(values, indices.flatten(), weights)
    with _raises(r"weights must have the shape of indices \[3, 2\]; got \[3, 1\]"):
        memkernels.embedding_bag(values, indices, weights[:, :1])
    with _raises(r"bags must hold at least one index"):
        memkernels.embedding_bag(values, indices[:, :0], weights[:, :0])
    with _raises(r"values must have unit stride along its last dimension"):
        memkernels.embedding_bag(values.t().contiguous().t()[:, :3], indices, weights)


def _skipped(values, indices, weights, bad_at):
    """The oracle's bag with the terms at the bad positions left out."""
    w = weights.clone()
    for t, j in bad_at:
        w[t, j] = 0
    return oracle(values, indices.clamp(0, values.shape[0] - 1), w)


@pytest.mark.parametrize("mode", ("deferred", "sync", True))
@pytest.mark.parametrize("bad", (-1, 10, 2**40))
def test_index_out_of_range(device, bad, mode):
    """Sync modes raise at the call (as the CPU always does); the deferred
    default on CUDA computes the bag without the bad term, does not wait,
    and raises once asked (check_index_errors) or at the next call."""
    values, indices, weights = make(device, 10, 4, 3, 2)
    indices[2, 1] = bad
    message = rf"indices\[2, 1\] = {bad} is outside \[0, 10\)"
    if device == "cpu" or mode != "deferred":
        with pytest.raises(IndexError, match=message):
            memkernels.embedding_bag(values, indices, weights, check_indices=mode)
        memkernels.check_index_errors()  # nothing left behind
        return
    out = memkernels.embedding_bag(values, indices, weights)
    assert_close_to_oracle(out, _skipped(values, indices, weights, [(2, 1)]), torch.float32)
    with pytest.raises(IndexError, match=message + r" \(values has 10 rows\); reported by the device"):
        memkernels.check_index_errors()
    memkernels.check_index_errors()  # reading the report cleared it
    good = indices.clamp(0, 9)
    memkernels.embedding_bag(values, indices, weights)  # reported at the next call on the device
    torch.cuda.synchronize()
    with pytest.raises(IndexError, match=message):
        memkernels.embedding_bag(values, good, weights)
    memkernels.embedding_bag(values, good, weights, check_indices="sync")


def test_index_out_of_range_int32(device):
    values, indices, weights = make(device, 10, 4, 3, 2, index_dtype=torch.int32)
    indices[1, 0] = 99
    indices[2, 1] = -5  # the first bad position is the one named
    with pytest.raises(IndexError, match=r"indices\[1, 0\] = 99 is outside \[0, 10\)"):
        memkernels.embedding_bag(values, indices, weights)
        memkernels.check_index_errors()


@pytest.mark.parametrize("mode", ("off", False))
def test_unchecked_bad_index_is_skipped(device, mode):
    values, indices, weights = make(device, 10, 4, 3, 2)
    indices[1, 1] = 1000
    out = memkernels.embedding_bag(values, indices, weights, check_indices=mode)
    assert_close_to_oracle(out, _skipped(values, indices, weights, [(1, 1)]), torch.float32)
    memkernels.check_index_errors()  # never reported


def test_unknown_check_mode(device):
    values, indices, weights = make(device, 10, 4, 3, 2)
    with pytest.raises(ValueError, match=r"check_indices must be one of \('deferred', 'sync', 'off'\)"):
        memkernels.embedding_bag(values, indices, weights, check_indices="always")
    with _raises(r'check_indices must be "deferred", "sync" or "off"; got "always"'):
        torch.ops.memkernels.embedding_bag(values, indices, weights, False, "always")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("D", (3, 40))
def test_cuda_dense_backward_writes_every_row(D):
    """The CUDA dense backward zeroes the untouched rows itself (no memset
    of the whole gradient first): a freed NaN buffer that the allocator hands
    back would show any row left unwritten. With unchecked bad indices too,
    where the sort leaves the distinct rows out of order."""
    N, T, B = 5000, 64, 8
    values, indices, weights = make("cuda", N, D, T, B)
    gout = torch.randn(T, D, device="cuda")
    for bad in (False, True):
        idx = indices.clone()
        if bad:
            idx[3, 2], idx[7, 0], idx[9, 5] = N + 11, -4, 2**33
        junk = torch.full((N, D), float("nan"), device="cuda")
        del junk
        gv, _ = torch.ops.memkernels.embedding_bag_backward(gout, values, idx, weights)
        valid = (idx >= 0) & (idx < N)
        touched = torch.zeros(N, dtype=torch.bool, device="cuda")
        touched[idx[valid]] = True
        assert bool((gv[~touched] == 0).all()), bad
        if not bad:
            _, ref_gv, _ = oracle(values, idx, weights, gout)
            assert_close_to_oracle(gv, ref_gv, torch.float32)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("weights_grad", (False, True))
def test_cuda_graph_capture_forward_and_backward(weights_grad):
    """The default call never synchronises the host: forward and dense
    backward (and the capacity form of the row-sparse one) are captured in a
    CUDA graph and replayed on new indices with the eager results, bit for
    bit; a bad index met during a replay is reported afterwards."""
    N, D, T, B = 300, 64, 16, 8
    values, indices, weights = make("cuda", N, D, T, B)
    v = values.clone().requires_grad_()
    w = weights.clone().requires_grad_(weights_grad)
    static_idx, static_gout = indices.clone(), torch.randn(T, D, device="cuda")
    sparse_op = torch.ops.memkernels.embedding_bag_backward_sparse.default

    def step():
        out = memkernels.embedding_bag(v, static_idx, w)
        grads = torch.autograd.grad(out, (v, w) if weights_grad else (v,), static_gout)
        rows, row_grads, _ = sparse_op(static_gout, v.detach(), static_idx, w.detach(), False, T * B)
        return (out,) + grads + (rows, row_grads)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()  # warm-up, outside the capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    for trial in range(3):
        static_idx.copy_(torch.randint(0, N, (T, B), device="cuda"))
        static_gout.copy_(torch.randn(T, D, device="cuda"))
        graph.replay()
        eager = step()
        for a, b in zip(captured, eager):
            assert torch.equal(a, b), trial
    memkernels.check_index_errors()
    static_idx[3, 5] = N + 7
    graph.replay()
    with pytest.raises(IndexError, match=rf"indices\[3, 5\] = {N + 7} is outside \[0, {N}\)"):
        memkernels.check_index_errors()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_device_mismatch():
    values, indices, weights = make("cuda", 10, 4, 3, 2)
    with _raises(r"values and indices must be on the same device; values is on cuda:0, indices on cpu"):
        memkernels.embedding_bag(values, indices.cpu(), weights)
    with _raises(r"values and weights must be on the same device; values is on cuda:0, weights on cpu"):
        memkernels.embedding_bag(values, indices, weights.cpu())


def test_backward_op_checks_grad_out(device):
    values, indices, weights = make(device, 10, 4, 3, 2)
    with _raises(r"grad_out must have shape \[3, 4\]; got \[3, 5\]"):
        torch.ops.memkernels.embedding_bag_backward(torch.randn(3, 5, device=device), values, indices, weights)


def test_cpu_gradient_buffers_are_reused():
    # Large CPU gradient outputs come from a cache of freed buffers: the next
    # backward reuses the freed buffer's (already mapped) memory.
    values, indices, weights = make("cpu", 8192, 256, 64, 4)  # 8 MiB dense gradient
    grad_out = torch.randn(64, 256)
    first, _ = torch.ops.memkernels.embedding_bag_backward(grad_out, values, indices, weights)
    ptr = first.data_ptr()
    del first
    other = torch.randint(0, 8192, (64, 4))  # other rows: stale ones must read as zero
    again, _ = torch.ops.memkernels.embedding_bag_backward(grad_out, values, other, weights)
    assert again.data_ptr() == ptr
    _, ref_gv, _ = oracle(values, other, weights, grad_out)
    assert_close_to_oracle(again, ref_gv, torch.float32)


@pytest.mark.parametrize("acc_grads", [False, True])
@pytest.mark.parametrize("extra,hot", [(0, False), (7, False), (0, True)])
def test_sparse_backward_capacity_form(device, acc_grads, extra, hot):
    """capacity > 0: static shapes, no count read back; the exact rows first,
    then -1 rows with zero gradients."""
    values, indices, weights = make(device, 300, 20, 12, 9, hot=hot)
    gout = torch.randn(12, 20, device=device)
    op = torch.ops.memkernels.embedding_bag_backward_sparse.default
    rows, grads, gw = op(gout, values, indices, weights, acc_grads)
    U = rows.numel()
    capacity = min(300, indices.numel()) + extra
    crows, cgrads, cgw = op(gout, values, indices, weights, acc_grads, capacity)
    assert crows.shape == (capacity,) and cgrads.shape == (capacity, 20)
    assert torch.equal(crows[:U], rows) and bool((crows[U:] == -1).all())
    assert torch.equal(cgrads[:U], grads) and bool((cgrads[U:] == 0).all())
    assert torch.equal(cgw, gw)
    # No pairs at all: all padding.
    empty = torch.empty(0, 9, dtype=indices.dtype, device=device)
    erows, egrads, _ = op(gout[:0], values, empty, weights[:0], acc_grads, 4)
    assert bool((erows == -1).all()) and bool((egrads == 0).all()) and erows.shape == (4,)
    with pytest.raises(RuntimeError, match="capacity must be >= 0"):
        op(gout, values, indices, weights, acc_grads, -1)


def test_sparse_backward_capacity_form_has_static_shapes_under_fake_tensors():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        values, indices, weights = torch.randn(50, 8), torch.zeros(6, 3, dtype=torch.long), torch.rand(6, 3)
        rows, grads, _ = torch.ops.memkernels.embedding_bag_backward_sparse.default(
            torch.randn(6, 8), values, indices, weights, True, 18)
    assert rows.shape == (18,) and grads.shape == (18, 8) and grads.dtype == torch.float32
