"""memkernels.pk_topk: exactness against brute force over all n_keys**2 sums,
agreement with the PyTorch composite (memkernels.reference.pk_topk), the
backward through the selected pairs, and bad input. CUDA variants run the
same bodies."""

import pytest
import torch

import memkernels
from memkernels import reference

DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def make(device, T, H, n, Dk, dtype=torch.float32, integer=False):
    if integer:  # small integers: every score exact in every dtype, and many ties
        q = torch.randint(-3, 4, (T, H, Dk)).to(dtype)
        k = torch.randint(-3, 4, (H, 2, n, Dk // 2)).to(dtype)
    else:
        q = torch.randn(T, H, Dk).to(dtype)
        k = torch.randn(H, 2, n, Dk // 2).to(dtype)
    return q.to(device), k.to(device)


def brute_force(query, keys, k):
    """Top-k over all n**2 sums; ties by the smaller slot id (a stable sort of
    the slot-ordered sums)."""
    half = query.shape[-1] // 2
    q, kk = query.double().cpu(), keys.double().cpu()
    s1 = torch.einsum("thd,hnd->thn", q[..., :half], kk[:, 0]).float()
    s2 = torch.einsum("thd,hnd->thn", q[..., half:], kk[:, 1]).float()
    sums = (s1.unsqueeze(-1) + s2.unsqueeze(-2)).flatten(-2)  # slot order
    scores, slots = torch.sort(sums, dim=-1, descending=True, stable=True)
    return scores[..., :k], slots[..., :k]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,Dk,k", [(37, 18, 1), (37, 18, 5), (37, 18, 37), (64, 16, 8), (20, 8, 20),
                                    (100, 8, 70)])
def test_exact_against_brute_force(device, dtype, n, Dk, k):
    query, keys = make(device, 9, 3, n, Dk, dtype, integer=True)
    scores, indices = memkernels.pk_topk(query, keys, k)
    ref_scores, ref_indices = brute_force(query, keys, k)
    assert scores.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert indices.dtype == torch.int64 and indices.shape == (9, 3, k)
    assert torch.equal(indices.cpu(), ref_indices)
    assert torch.equal(scores.cpu().float(), ref_scores)


@pytest.mark.parametrize("k", (1, 7, 32))
def test_random_scores_against_brute_force(device, k):
    query, keys = make(device, 20, 2, 100, 32)
    scores, indices = memkernels.pk_topk(query, keys, k)
    ref_scores, ref_indices = brute_force(query, keys, k)
    torch.testing.assert_close(scores.cpu(), ref_scores, atol=1e-5, rtol=1e-5)
    assert torch.equal(indices.cpu(), ref_indices)
    assert (scores[..., :-1] >= scores[..., 1:]).all()  # sorted descending
    assert ((indices >= 0) & (indices < 100 * 100)).all()


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16, torch.float16))
def test_matches_pytorch_composite(device, dtype):
    query, keys = make(device, 16, 4, 128, 64, dtype)
    scores, indices = memkernels.pk_topk(query, keys, 16)
    ref_scores, ref_indices = reference.pk_topk(query, keys, 16)
    torch.testing.assert_close(scores, ref_scores, atol=1e-4, rtol=1e-5)
    assert torch.equal(indices, ref_indices)


@pytest.mark.parametrize("T", (0, 1))
def test_tiny_batches(device, T):
    query, keys = make(device, T, 2, 10, 4)
    scores, indices = memkernels.pk_topk(query, keys, 3)
    assert scores.shape == (T, 2, 3) and indices.shape == (T, 2, 3)
    if T:
        ref_scores, ref_indices = brute_force(query, keys, 3)
        assert torch.equal(indices.cpu(), ref_indices)


def test_large_k_and_n_keys(device):
    query, keys = make(device, 2, 1, 1000, 16)
    scores, indices = memkernels.pk_topk(query, keys, 128)
    ref_scores, ref_indices = reference.pk_topk(query, keys, 128)
    torch.testing.assert_close(scores, ref_scores, atol=1e-5, rtol=1e-5)
    assert torch.equal(indices, ref_indices)


_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@pytest.mark.cuda
@_CUDA
@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float16))
@pytest.mark.parametrize("T,n,Dk,k", [(9, 37, 18, 1), (9, 37, 18, 5), (33, 37, 18, 37), (70, 64, 16, 8),
                                      (5, 200, 130, 128), (64, 1000, 64, 32)])
def test_fused_exact_against_brute_force(dtype, T, n, Dk, k):
    query, keys = make("cuda", T, 3, n, Dk, dtype, integer=True)
    scores, indices = memkernels.pk_topk(query, keys, k, impl="fused")
    ref_scores, ref_indices = brute_force(query, keys, k)
    assert torch.equal(indices.cpu(), ref_indices)
    assert torch.equal(scores.cpu(), ref_scores)


@pytest.mark.cuda
@_CUDA
@pytest.mark.parametrize("integer", (True, False))
@pytest.mark.parametrize("n", (500, 1000, 2000, 4000, 8000, 16384, 17000))
@pytest.mark.parametrize("k", (1, 17, 32, 65, 128, 130))
def test_staged_select_paths_agree_with_cpu(integer, n, k):
    """Each size class of k of the CUDA warp select, at several n_keys, and the
    general path (k > 128) against the CPU kernel, bit for bit. Small
    integer inputs make every half-score exact on both devices (and tie
    everywhere); with random inputs the fp32 GEMMs may round differently, so
    the scores compare to a tolerance and most slots match."""
    torch.manual_seed(n + k)
    query, keys = make("cpu", 3, 2, n, 8, integer=integer)
    cpu = memkernels.pk_topk(query, keys, k)
    cuda = memkernels.pk_topk(query.cuda(), keys.cuda(), k, impl="staged")
    if integer:
        assert torch.equal(cuda[0].cpu(), cpu[0]) and torch.equal(cuda[1].cpu(), cpu[1])
    else:
        torch.testing.assert_close(cuda[0].cpu(), cpu[0], atol=1e-4, rtol=1e-5)
        assert (cuda[1].cpu() == cpu[1]).float().mean() > 0.95


@pytest.mark.cuda
@_CUDA
def test_fused_matches_staged():
    query, keys = make("cuda", 300, 4, 1024, 128, torch.bfloat16)
    fused = memkernels.pk_topk(query, keys, 32, impl="fused")
    staged = memkernels.pk_topk(query, keys, 32, impl="staged")
    torch.testing.assert_close(fused[0], staged[0], atol=1e-4, rtol=1e-5)
    assert (fused[1] == staged[1]).float().mean() > 0.999  # summation order may flip near-ties


def test_fused_needs_cuda_and_16_bit_inputs(device):
    query, keys = make(device, 4, 2, 10, 8)
    with pytest.raises(RuntimeError, match=r"impl='fused' needs CUDA tensors, float16 or bfloat16 inputs and k <= 128"):
        memkernels.pk_topk(query, keys, 3, impl="fused")
    with pytest.raises(RuntimeError, match=r"impl must be 'auto', 'staged' or 'fused'; got 'magic'"):
        memkernels.pk_topk(query, keys, 3, impl="magic")


# ---- backward -----------------------------------------------------------------------


def _grads(fn, query, keys, k, grad):
    q = query.detach().clone().requires_grad_()
    kk = keys.detach().clone().requires_grad_()
    scores, indices = fn(q, kk, k)
    gq, gk = torch.autograd.grad(scores, (q, kk), grad)
    return scores, indices, gq, gk


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_backward_matches_composite(device, dtype, tol):
    query, keys = make(device, 12, 3, 50, 20, dtype)
    grad = torch.randn(12, 3, 6, device=device, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
    s, i, gq, gk = _grads(memkernels.pk_topk, query, keys, 6, grad)
    rs, ri, rgq, rgk = _grads(reference.pk_topk, query, keys, 6, grad)
    assert torch.equal(i, ri)
    assert gq.dtype == dtype and gk.dtype == dtype and gk.shape == keys.shape
    scale = max(1.0, rgk.abs().max().item())
    torch.testing.assert_close(gq.double(), rgq.double(), atol=tol * scale, rtol=tol)
    torch.testing.assert_close(gk.double(), rgk.double(), atol=tol * scale, rtol=tol)
    # Only the selected sub-keys receive gradient.
    selected = torch.zeros(3, 2, 50, dtype=torch.bool)
    ic = i.cpu()
    for h in range(3):
        selected[h, 0, (ic[:, h] // 50).flatten()] = True
        selected[h, 1, (ic[:, h] % 50).flatten()] = True
    assert (gk.cpu()[~selected] == 0).all()


def test_backward_is_bitwise_deterministic(device):
    query, keys = make(device, 64, 2, 16, 8)  # few keys: many repeats per sub-key
    grad = torch.randn(64, 2, 8, device=device)
    first = _grads(memkernels.pk_topk, query, keys, 8, grad)
    again = _grads(memkernels.pk_topk, query, keys, 8, grad)
    for a, b in zip(first, again):
        assert torch.equal(a, b)


def test_gradcheck_fp64(device):
    query, keys = make(device, 3, 2, 9, 6, torch.float64)
    q, kk = query.requires_grad_(), keys.requires_grad_()
    assert torch.autograd.gradcheck(lambda q, kk: memkernels.pk_topk(q, kk, 4)[0], (q, kk))


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16))
def test_opcheck(device, dtype):
    query, keys = make(device, 6, 2, 20, 8, dtype)
    torch.library.opcheck(torch.ops.memkernels.pk_topk.default, (query.requires_grad_(), keys.requires_grad_(), 5))
    _, indices = memkernels.pk_topk(query.detach(), keys.detach(), 5)
    grad = torch.randn(6, 2, 5, device=device)
    torch.library.opcheck(
        torch.ops.memkernels.pk_topk_backward.default, (grad, query.detach(), keys.detach(), indices)
    )


def test_torch_compile_fullgraph(device):
    query, keys = make(device, 8, 2, 30, 16)

    def step(q, kk):
        scores, indices = memkernels.pk_topk(q, kk, 4)
        return scores.softmax(-1).sum() + indices.float().mean() * 0

    compiled = torch.compile(step, fullgraph=True)
    q1, k1 = query.clone().requires_grad_(), keys.clone().requires_grad_()
    q2, k2 = query.clone().requires_grad_(), keys.clone().requires_grad_()
    compiled(q1, k1).backward()
    step(q2, k2).backward()
    torch.testing.assert_close(q1.grad, q2.grad)
    torch.testing.assert_close(k1.grad, k2.grad)


# ---- bad input --------------------------------------------------------------------------


def test_bad_input(device):
    query, keys = make(device, 4, 2, 10, 8)
    with pytest.raises(RuntimeError, match=r"k must be in \[1, n_keys=10\]; got 11"):
        memkernels.pk_topk(query, keys, 11)
    with pytest.raises(RuntimeError, match=r"k must be in \[1, n_keys=10\]; got 0"):
        memkernels.pk_topk(query, keys, 0)
    with pytest.raises(RuntimeError, match=r"Dk must be even and positive; got 7"):
        memkernels.pk_topk(query[..., :7], keys, 3)
    with pytest.raises(RuntimeError, match=r"keys must have shape \[H=2, 2, n_keys, Dk/2=4\]"):
        memkernels.pk_topk(query, keys[:1], 3)
    with pytest.raises(RuntimeError, match=r"keys must have shape \[H=2, 2, n_keys, Dk/2=4\]"):
        memkernels.pk_topk(query, keys[..., :3], 3)
    with pytest.raises(RuntimeError, match=r"query and keys must have the same dtype; got Float and BFloat16"):
        memkernels.pk_topk(query, keys.bfloat16(), 3)
    with pytest.raises(RuntimeError, match=r"query must be 3-D \[T, H, Dk\]"):
        memkernels.pk_topk(query[0], keys, 3)
    with pytest.raises(RuntimeError, match=r"query must be float32, float16, bfloat16 or float64; got Int"):
        memkernels.pk_topk(query.int(), keys.int(), 3)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_device_mismatch():
    query, keys = make("cuda", 4, 2, 10, 8)
    with pytest.raises(RuntimeError, match=r"query and keys must be on the same device; query is on cuda:0, keys on cpu"):
        memkernels.pk_topk(query, keys.cpu(), 3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_backward_is_the_embedding_bag_over_the_key_table(device, dtype):
    """mk_pk_topk_backward (the core) equals its definition bitwise: the
    embedding bag over the key table [H * 2 * n, Dk/2], forward for the
    query, backward for the keys."""
    T, H, n, Dk, k = 9, 3, 20, 12, 5
    q = torch.randn(T, H, Dk, device=device, dtype=dtype)
    keys = torch.randn(H, 2, n, Dk // 2, device=device, dtype=dtype)
    _, idx = memkernels.pk_topk(q, keys, k)
    g = torch.randn(T, H, k, device=device, dtype=dtype)
    gq, gk = torch.ops.memkernels.pk_topk_backward.default(g, q, keys, idx)
    base = (torch.arange(H, device=device) * 2 * n).view(1, H, 1)
    rows = torch.stack([idx // n + base, idx % n + base + n], 2).reshape(T * H * 2, k)
    w = g.unsqueeze(2).expand(T, H, 2, k).reshape(T * H * 2, k).contiguous()
    table = keys.reshape(H * 2 * n, Dk // 2)
    want_q = memkernels.embedding_bag(table, rows, w, check_indices=False).view(T, H, Dk)
    want_k, _ = torch.ops.memkernels.embedding_bag_backward.default(q.reshape(T * H * 2, Dk // 2), table, rows, w)
    assert torch.equal(gq, want_q)
    assert torch.equal(gk, want_k.view(keys.shape))
    # No tokens: zero gradients.
    gq0, gk0 = torch.ops.memkernels.pk_topk_backward.default(g[:0], q[:0], keys, idx[:0])
    assert gq0.shape == (0, H, Dk) and bool((gk0 == 0).all())
