"""Typed Python entry points of the memkernels ops, their fake (meta) kernels
and their autograd formulas. The kernels are registered by the C++ extension
under ``torch.ops.memkernels``."""

from typing import Tuple

import torch
from torch import Tensor

_VALUE_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_INDEX_DTYPES = (torch.int32, torch.int64)


def embedding_bag(
    values: Tensor,
    indices: Tensor,
    weights: Tensor,
    *,
    sparse: bool = False,
    check_indices: bool = True,
) -> Tensor:
    """Weighted embedding bag over fixed-size bags.

    ``out[t, :] = sum_j weights[t, j] * values[indices[t, j], :]``

    Args:
        values: ``[N, D]`` float32, float16, bfloat16 or float64, unit stride
            along ``D`` (any row stride).
        indices: ``[T, B]`` int32 or int64, each in ``[0, N)``.
        weights: ``[T, B]`` float32 or the values' dtype.
        sparse: if True, the gradient to ``values`` is a coalesced sparse COO
            tensor holding only the touched rows (sorted, distinct), as with
            ``nn.EmbeddingBag(sparse=True)``; use with ``torch.optim.SparseAdam``.
        check_indices: if True (default) an index outside ``[0, N)`` raises
            ``IndexError`` naming its position and value. On CUDA this costs
            one device-to-host synchronisation per call; with False there is
            none, and a bad index is skipped (never read or written) instead
            of reported.

    Returns:
        ``[T, D]`` in the values' dtype, accumulated in float32 (float64 for
        float64 values).

    Raises:
        RuntimeError: wrong dtype, rank, shape, device or stride, naming the
            argument and what was found.
        IndexError: an index outside ``[0, N)`` (with ``check_indices``).

    The backward is atomic-free and bitwise deterministic run to run on each
    device (docs/embedding_bag.md).
    """
    return torch.ops.memkernels.embedding_bag.default(values, indices, weights, sparse, check_indices)


def _check_shapes(op: str, values: Tensor, indices: Tensor, weights: Tensor) -> None:
    torch._check(values.dim() == 2, lambda: f"{op}: values must be 2-D [num_rows, dim]; got shape {tuple(values.shape)}")
    torch._check(indices.dim() == 2, lambda: f"{op}: indices must be 2-D [num_bags, bag_size]; got shape {tuple(indices.shape)}")
    torch._check(
        weights.shape == indices.shape,
        lambda: f"{op}: weights must have the shape of indices {tuple(indices.shape)}; got {tuple(weights.shape)}",
    )
    torch._check(values.dtype in _VALUE_DTYPES, lambda: f"{op}: values must be float32, float16, bfloat16 or float64; got {values.dtype}")
    torch._check(indices.dtype in _INDEX_DTYPES, lambda: f"{op}: indices must be int32 or int64; got {indices.dtype}")


@torch.library.register_fake("memkernels::embedding_bag")
def _embedding_bag_fake(values, indices, weights, sparse=False, check_indices=True):
    _check_shapes("memkernels.embedding_bag", values, indices, weights)
    return values.new_empty((indices.shape[0], values.shape[1]))


@torch.library.register_fake("memkernels::embedding_bag_backward")
def _embedding_bag_backward_fake(grad_out, values, indices, weights):
    _check_shapes("memkernels.embedding_bag_backward", values, indices, weights)
    return values.new_empty(values.shape), weights.new_empty(weights.shape)


@torch.library.register_fake("memkernels::embedding_bag_backward_sparse")
def _embedding_bag_backward_sparse_fake(grad_out, values, indices, weights):
    _check_shapes("memkernels.embedding_bag_backward_sparse", values, indices, weights)
    num_unique = torch.library.get_ctx().new_dynamic_size()
    rows = indices.new_empty((num_unique,), dtype=torch.int64)
    row_grads = values.new_empty((num_unique, values.shape[1]))
    return rows, row_grads, weights.new_empty(weights.shape)


def _embedding_bag_setup_context(ctx, inputs, output):
    values, indices, weights, sparse, _check = inputs
    ctx.save_for_backward(values, indices, weights)
    ctx.sparse = sparse


def _embedding_bag_backward(ctx, grad_out: Tensor) -> Tuple:
    values, indices, weights = ctx.saved_tensors
    want_values, _, want_weights = ctx.needs_input_grad[:3]
    grad_values = grad_weights = None
    if ctx.sparse:
        rows, row_grads, grad_weights = torch.ops.memkernels.embedding_bag_backward_sparse.default(
            grad_out, values, indices, weights
        )
        if want_values:
            grad_values = torch.sparse_coo_tensor(
                rows.unsqueeze(0), row_grads, values.shape, is_coalesced=True, check_invariants=False
            )
    else:
        grad_values, grad_weights = torch.ops.memkernels.embedding_bag_backward.default(
            grad_out, values, indices, weights
        )
    return (
        grad_values if want_values else None,
        None,
        grad_weights if want_weights else None,
        None,
        None,
    )


torch.library.register_autograd(
    "memkernels::embedding_bag",
    _embedding_bag_backward,
    setup_context=_embedding_bag_setup_context,
)
