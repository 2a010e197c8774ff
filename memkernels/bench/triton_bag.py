"""A Triton weighted embedding bag in the design of the paper's released
kernels, written here as the bench's baseline for ``embedding_bag`` (issue
11): the strongest thing a user of the paper's code runs today.

- forward: one program per bag, one warp; the whole row is one vector of
  ``next_power_of_2(D)`` lanes, each bag element's row loaded whole and
  accumulated in fp32;
- dense backward: a histogram of the rows (atomics), their start offsets,
  a reverse map from each row to the bag positions that read it (atomics,
  so its order, and the fp32 sum order, vary run to run), then one program
  per row of the table that writes its gradient row once (zeros for rows no
  bag read): no separate zero fill;
- the weights' gradient: one program per bag, a dot product per element.

Only for timing: not bitwise deterministic, no index check. Needs triton
and a GPU (or ``TRITON_INTERPRET=1`` on CPU tensors, which the tests use).
"""

from __future__ import annotations

import os
from typing import Optional, Tuple

import torch
from torch import Tensor

try:  # triton is optional: the bench skips this baseline without it
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the environment
    triton = None


def available(device: torch.device) -> Optional[str]:
    """None when the baseline can run on ``device``, else why not."""
    if triton is None:
        return "triton is not installed"
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        return "the Triton baseline runs on CUDA (or under TRITON_INTERPRET=1)"
    return None


if triton is not None:

    @triton.jit
    def _forward_kernel(values, indices, weights, out, B, D, stride_v, BLOCK_D: tl.constexpr):
        t = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK_D)
        mask = cols < D
        acc = tl.zeros([BLOCK_D], dtype=tl.float32)
        for j in range(B):
            row = tl.load(indices + t * B + j).to(tl.int64)
            w = tl.load(weights + t * B + j).to(tl.float32)
            v = tl.load(values + row * stride_v + cols, mask=mask, other=0.0).to(tl.float32)
            acc += w * v
        tl.store(out + t * D + cols, acc.to(out.dtype.element_ty), mask=mask)

    @triton.jit
    def _histogram_kernel(indices, counts, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        rows = tl.load(indices + offs, mask=mask, other=0).to(tl.int64)
        tl.atomic_add(counts + rows, tl.full([BLOCK], 1, tl.int32), mask=mask)

    @triton.jit
    def _reverse_map_kernel(indices, starts, cursor, positions, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        rows = tl.load(indices + offs, mask=mask, other=0).to(tl.int64)
        slot = tl.atomic_add(cursor + rows, tl.full([BLOCK], 1, tl.int32), mask=mask)
        start = tl.load(starts + rows, mask=mask, other=0)
        tl.store(positions + start + slot, offs.to(tl.int32), mask=mask)

    @triton.jit
    def _grad_rows_kernel(grad_out, weights, positions, starts, counts, grad_values, B, D,
                          BLOCK_D: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        start = tl.load(starts + row)
        count = tl.load(counts + row)
        cols = tl.arange(0, BLOCK_D)
        mask = cols < D
        acc = tl.zeros([BLOCK_D], dtype=tl.float32)
        for i in range(count):
            p = tl.load(positions + start + i).to(tl.int64)
            w = tl.load(weights + p).to(tl.float32)
            g = tl.load(grad_out + (p // B) * D + cols, mask=mask, other=0.0).to(tl.float32)
            acc += w * g
        tl.store(grad_values + row * D + cols, acc.to(grad_values.dtype.element_ty), mask=mask)

    @triton.jit
    def _grad_weights_kernel(values, indices, grad_out, grad_weights, B, D, stride_v, BLOCK_D: tl.constexpr):
        t = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK_D)
        mask = cols < D
        g = tl.load(grad_out + t * D + cols, mask=mask, other=0.0).to(tl.float32)
        for j in range(B):
            row = tl.load(indices + t * B + j).to(tl.int64)
            v = tl.load(values + row * stride_v + cols, mask=mask, other=0.0).to(tl.float32)
            tl.store(grad_weights + t * B + j, tl.sum(v * g, axis=0).to(grad_weights.dtype.element_ty))


def _block_d(D: int) -> int:
    return triton.next_power_of_2(D)


def forward(values: Tensor, indices: Tensor, weights: Tensor) -> Tensor:
    T, B = indices.shape
    N, D = values.shape
    out = values.new_empty((T, D))
    if T:
        _forward_kernel[(T,)](values, indices.contiguous(), weights.contiguous(), out, B, D, values.stride(0),
                              BLOCK_D=_block_d(D), num_warps=1)
    return out


def backward(grad_out: Tensor, values: Tensor, indices: Tensor, weights: Tensor) -> Tuple[Tensor, Tensor]:
    """(dense gradient of ``values``, gradient of ``weights``)."""
    T, B = indices.shape
    N, D = values.shape
    grad_out = grad_out.contiguous()
    flat = indices.contiguous().view(-1)
    n = flat.numel()
    counts = torch.zeros(N, dtype=torch.int32, device=values.device)
    block = 1024
    grid = (triton.cdiv(n, block),)
    if n:
        _histogram_kernel[grid](flat, counts, n, BLOCK=block)
    starts = (torch.cumsum(counts, 0, dtype=torch.int32) - counts).contiguous()
    cursor = torch.zeros_like(counts)
    positions = torch.empty(n, dtype=torch.int32, device=values.device)
    if n:
        _reverse_map_kernel[grid](flat, starts, cursor, positions, n, BLOCK=block)
    grad_values = torch.empty((N, D), dtype=values.dtype, device=values.device)
    _grad_rows_kernel[(N,)](grad_out, weights.contiguous(), positions, starts, counts, grad_values, B, D,
                            BLOCK_D=_block_d(D), num_warps=4)
    grad_weights = torch.empty_like(weights)
    if T:
        _grad_weights_kernel[(T,)](values, flat, grad_out, grad_weights, B, D, values.stride(0),
                                   BLOCK_D=_block_d(D), num_warps=1)
    return grad_values, grad_weights


class _Bag(torch.autograd.Function):
    @staticmethod
    def forward(ctx, values, indices, weights):
        ctx.save_for_backward(values, indices, weights)
        return forward(values, indices, weights)

    @staticmethod
    def backward(ctx, grad_out):
        values, indices, weights = ctx.saved_tensors
        grad_values, grad_weights = backward(grad_out, values, indices, weights)
        return grad_values, None, grad_weights


def embedding_bag(values: Tensor, indices: Tensor, weights: Tensor) -> Tensor:
    """``out[t] = sum_j weights[t, j] * values[indices[t, j]]``, differentiable
    in ``values`` (a dense gradient) and ``weights``."""
    if values.stride(1) != 1:
        raise ValueError("triton_bag: values need unit stride along D")
    return _Bag.apply(values, indices, weights)
