"""Memory-layer modules on the fused ops.

``ProductKeyMemory`` is the memory layer of "Memory Layers at Scale" (Berges
et al., 2024): a query scores two sets of product sub-keys per head, the top
``knn`` slots of a ``n_keys**2``-row value table are read with softmax
weights, and (Memory+) the result is gated by ``silu(W_s x)`` and projected
by ``W_o``. ``ValuePool`` is a value table several layers can share.
"""

from __future__ import annotations

import math
from typing import Dict, Iterator, List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import ops, reference

__all__ = ["ValuePool", "ProductKeyMemory", "value_parameters", "dense_parameters", "param_groups"]

_VALUES_MARK = "_memkernels_values"


class ValuePool(nn.Module):
    """A value table ``weight[n_slots, v_dim]`` (initialised normal with std
    ``v_dim ** -0.5``). Pass one pool to several ``ProductKeyMemory`` layers to
    share it; each keeps its own queries and keys, and the gradients of all of
    them accumulate in ``weight.grad``.

    ``weight`` is marked as a memory value table, so :func:`param_groups` and
    :func:`value_parameters` find it.
    """

    def __init__(self, n_slots: int, v_dim: int, *, device=None, dtype=None):
        super().__init__()
        if n_slots < 1 or v_dim < 1:
            raise ValueError(f"ValuePool needs n_slots >= 1 and v_dim >= 1; got {n_slots} and {v_dim}")
        self.weight = nn.Parameter(torch.empty(n_slots, v_dim, device=device, dtype=dtype))
        setattr(self.weight, _VALUES_MARK, True)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight, std=self.weight.shape[1] ** -0.5)

    @property
    def n_slots(self) -> int:
        return self.weight.shape[0]

    @property
    def sharding(self):
        """How the table is sharded (set by
        :func:`memkernels.distributed.shard_values`), or None."""
        return getattr(self, "_sharding", None)

    def bag(self, indices: Tensor, weights: Tensor, *, sparse: bool = False,
            usage: Optional[Tensor] = None) -> Tensor:
        """``out[t] = sum_j weights[t, j] * weight[indices[t, j]]`` with the
        memkernels embedding bag (indices must lie in ``[0, n_slots)``: they
        are not checked, so nothing synchronises). ``usage``, if given, is an
        ``[n_slots]`` int64 hit counter to add these lookups to; on a sharded
        table it counts every rank's lookups, so it is the same on all ranks."""
        if self.sharding is not None:
            return self.sharding.bag(self.weight, indices, weights, sparse=sparse, usage=usage)
        if usage is not None:
            flat = indices.reshape(-1).detach()
            usage.index_add_(0, flat, torch.ones_like(flat, dtype=usage.dtype))
        return ops.embedding_bag(self.weight, indices, weights, sparse=sparse, check_indices=False)

    @property
    def v_dim(self) -> int:
        return self.weight.shape[1]


class ProductKeyMemory(nn.Module):
    """Product-key memory layer mapping ``x[..., dim]`` to ``[..., dim]``.

    Args:
        dim: input and output width.
        n_keys: sub-keys per half; the table has ``n_keys**2`` slots.
        heads: query heads; each selects ``knn`` slots.
        knn: slots per head (``<= n_keys``).
        k_dim: query/key width per head (even).
        v_dim: value width (default ``dim``); any size.
        memory_plus: output ``W_o(out * silu(W_s x))`` (default). If False,
            plain PKM: ``W_o(out)``, or ``out`` itself when ``v_dim == dim``
            and ``output_proj`` is False.
        output_proj: for plain PKM, whether to project ``out`` to ``dim``
            (default: only when ``v_dim != dim``).
        gate: multiply the output by ``sigmoid(W_g x)`` (one gate per token).
        qk_norm: RMS-normalise each head's query over ``k_dim`` (default on).
        input_dropout, query_dropout, value_dropout: dropout probabilities.
        values: a ``ValuePool`` to share; by default the layer makes its own.
        sparse: the value table's gradient is a sparse COO tensor of touched
            rows (use ``torch.optim.SparseAdam`` for it).
        backend: ``"kernels"`` (memkernels ops) or ``"reference"`` (pure
            PyTorch, same parameters, same results).
        track_usage: keep per-slot hit counts on the device (no host
            synchronisation); see :meth:`usage_stats`.

    Raises:
        ValueError: bad configuration (odd ``k_dim``, ``knn > n_keys``, a
            shared pool of the wrong size, an unknown backend, ...).
        RuntimeError: an input whose last dimension is not ``dim``.
    """

    def __init__(
        self,
        dim: int,
        n_keys: int = 1024,
        heads: int = 4,
        knn: int = 32,
        k_dim: int = 512,
        v_dim: Optional[int] = None,
        *,
        memory_plus: bool = True,
        output_proj: Optional[bool] = None,
        gate: bool = False,
        qk_norm: bool = True,
        input_dropout: float = 0.0,
        query_dropout: float = 0.0,
        value_dropout: float = 0.0,
        values: Optional[ValuePool] = None,
        sparse: bool = False,
        backend: str = "kernels",
        track_usage: bool = False,
        device=None,
        dtype=None,
    ):
        super().__init__()
        v_dim = values.v_dim if (values is not None and v_dim is None) else (v_dim or dim)
        if dim < 1:
            raise ValueError(f"ProductKeyMemory: dim must be positive; got {dim}")
        if k_dim < 2 or k_dim % 2:
            raise ValueError(f"ProductKeyMemory: k_dim must be even and at least 2; got {k_dim}")
        if not 1 <= n_keys <= 65535:
            raise ValueError(f"ProductKeyMemory: n_keys must be in [1, 65535]; got {n_keys}")
        if not 1 <= knn <= n_keys:
            raise ValueError(f"ProductKeyMemory: knn must be in [1, n_keys={n_keys}]; got {knn}")
        if heads < 1:
            raise ValueError(f"ProductKeyMemory: heads must be positive; got {heads}")
        if backend not in ("kernels", "reference"):
            raise ValueError(f"ProductKeyMemory: backend must be 'kernels' or 'reference'; got {backend!r}")
        for name, p in (("input_dropout", input_dropout), ("query_dropout", query_dropout),
                        ("value_dropout", value_dropout)):
            if not 0.0 <= p < 1.0:
                raise ValueError(f"ProductKeyMemory: {name} must be in [0, 1); got {p}")
        if values is not None and (values.n_slots != n_keys**2 or values.v_dim != v_dim):
            raise ValueError(
                f"ProductKeyMemory: the shared value pool is [{values.n_slots}, {values.v_dim}]; "
                f"this layer needs [{n_keys ** 2}, {v_dim}] (n_keys**2, v_dim)"
            )
        fk = dict(device=device, dtype=dtype)
        self.dim, self.n_keys, self.heads, self.knn, self.k_dim, self.v_dim = dim, n_keys, heads, knn, k_dim, v_dim
        self.memory_plus, self.sparse, self.backend = memory_plus, sparse, backend

        self.query_proj = nn.Linear(dim, heads * k_dim, bias=True, **fk)
        self.query_norm = nn.RMSNorm(k_dim, **fk) if qk_norm else None
        self.keys = nn.Parameter(torch.empty(heads, 2, n_keys, k_dim // 2, **fk))
        self.values = values if values is not None else ValuePool(n_keys**2, v_dim, **fk)
        if memory_plus:
            self.swilu_proj = nn.Linear(dim, v_dim, bias=False, **fk)
            self.out_proj = nn.Linear(v_dim, dim, bias=False, **fk)
        else:
            self.swilu_proj = None
            project = (v_dim != dim) if output_proj is None else output_proj
            if not project and v_dim != dim:
                raise ValueError(f"ProductKeyMemory: without output_proj, v_dim must equal dim; got {v_dim} and {dim}")
            self.out_proj = nn.Linear(v_dim, dim, bias=False, **fk) if project else None
        self.gate_proj = nn.Linear(dim, 1, bias=True, **fk) if gate else None
        self.input_dropout = nn.Dropout(input_dropout)
        self.query_dropout = nn.Dropout(query_dropout)
        self.value_dropout = nn.Dropout(value_dropout)
        if track_usage:
            self.register_buffer("usage_counts", torch.zeros(n_keys**2, dtype=torch.int64, device=device))
        else:
            self.usage_counts = None
        self.reset_parameters(reset_values=values is None)

    def reset_parameters(self, reset_values: bool = True) -> None:
        bound = 1.0 / math.sqrt(self.k_dim)
        nn.init.uniform_(self.keys, -bound, bound)
        if reset_values:
            self.values.reset_parameters()
        self.query_proj.reset_parameters()
        for m in (self.swilu_proj, self.out_proj, self.gate_proj):
            if m is not None:
                m.reset_parameters()

    # ---- forward ----------------------------------------------------------------

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.dim:
            raise RuntimeError(
                f"ProductKeyMemory: input's last dimension must be dim={self.dim}; got shape {tuple(x.shape)}"
            )
        lead = x.shape[:-1]
        x = self.input_dropout(x.reshape(-1, self.dim))
        T = x.shape[0]
        q = self.query_proj(x).view(T, self.heads, self.k_dim)
        if self.query_norm is not None:
            norm = self.query_norm
            q = F.rms_norm(q, norm.normalized_shape, norm.weight.to(q.dtype), norm.eps)
        q = self.query_dropout(q)
        keys = self.keys.to(q.dtype)
        if self.backend == "kernels":
            scores, indices = ops.pk_topk(q, keys, self.knn)
        else:
            scores, indices = reference.pk_topk(q, keys, self.knn)
        weights = torch.softmax(scores.float(), dim=-1).view(T, self.heads * self.knn)
        indices = indices.view(T, self.heads * self.knn)
        usage = self.usage_counts if self.training else None
        if self.backend == "kernels":
            # Indices come from pk_topk and lie in [0, n_keys**2): no check, no sync.
            out = self.values.bag(indices, weights, sparse=self.sparse, usage=usage)
        else:
            if usage is not None:
                usage.index_add_(0, indices.reshape(-1).detach(), torch.ones_like(indices.reshape(-1)))
            out = reference.embedding_bag(self.values.weight, indices, weights)
        out = self.value_dropout(out)
        if self.memory_plus:
            s = F.silu(self.swilu_proj(x))
            out = self.out_proj(out.to(s.dtype) * s)
        elif self.out_proj is not None:
            out = self.out_proj(out)
        if self.gate_proj is not None:
            out = out * torch.sigmoid(self.gate_proj(x)).to(out.dtype)
        return out.reshape(*lead, self.dim)

    def flops_per_token(self) -> int:
        """Forward FLOPs per token (2 per multiply-add): the query projection,
        the sub-key scores, the k x k candidate sums, the weighted value bag
        and, for Memory+, its two projections and product."""
        q = 2 * self.dim * self.heads * self.k_dim
        scores = 2 * self.heads * 2 * self.n_keys * (self.k_dim // 2)
        cand = self.heads * self.knn * self.knn
        bag = 2 * self.heads * self.knn * self.v_dim
        plus = 2 * self.dim * self.v_dim + 2 * self.v_dim * self.dim + self.v_dim if self.memory_plus else 0
        return q + scores + cand + bag + plus

    def fuse_value_updates(self, optimizer) -> None:
        """Turns on the fused path: this layer's backward applies
        ``optimizer`` (a ``memkernels.optim.SparseRowOptimizer`` holding the
        value table) to the touched rows directly, and the table gets no
        ``.grad``. Under ``torch.compile`` the value lookup runs outside the
        graph (one graph break); see ``memkernels.optim``."""
        from .optim import SparseRowOptimizer

        if not isinstance(optimizer, SparseRowOptimizer):
            raise TypeError(f"ProductKeyMemory: fused value updates need a SparseRowOptimizer; got {type(optimizer).__name__}")
        if self.backend != "kernels":
            raise ValueError("ProductKeyMemory: fused value updates need backend='kernels'")
        optimizer.fuse(self.values.weight)

    # ---- usage statistics ------------------------------------------------------------

    def reset_usage(self) -> None:
        if self.usage_counts is not None:
            self.usage_counts.zero_()

    def usage_stats(self) -> Dict[str, Tensor]:
        """Statistics of the slot hit counts (0-d tensors on the counts' device;
        nothing is synchronised until you read them):

        - ``coverage``: fraction of slots hit at least once;
        - ``kl_uniform``: KL divergence of the hit distribution to uniform (nats);
        - ``top1pct_share``: share of all hits taken by the most-hit 1 % of slots;
        - ``hits``: total hits counted.
        """
        if self.usage_counts is None:
            raise RuntimeError("ProductKeyMemory: usage statistics need track_usage=True")
        return usage_statistics(self.usage_counts)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, n_keys={self.n_keys} ({self.n_keys ** 2} slots), heads={self.heads}, "
                f"knn={self.knn}, k_dim={self.k_dim}, v_dim={self.v_dim}, memory_plus={self.memory_plus}, "
                f"sparse={self.sparse}, backend={self.backend!r}")


def usage_statistics(counts: Tensor) -> Dict[str, Tensor]:
    """Coverage, KL to uniform and top-1 % share of a slot hit-count vector."""
    n = counts.numel()
    c = counts.to(torch.float64)
    total = c.sum()
    p = c / total.clamp(min=1)
    nz = p > 0
    kl = torch.where(nz, p * torch.log(p * n), torch.zeros_like(p)).sum()
    top = max(1, math.ceil(n / 100))
    share = torch.topk(c, top).values.sum() / total.clamp(min=1)
    return {"coverage": (counts > 0).to(torch.float64).mean(), "kl_uniform": kl, "top1pct_share": share,
            "hits": total}


# ---- optimizer helpers -------------------------------------------------------------------


def _is_values(p: Tensor) -> bool:
    return bool(getattr(p, _VALUES_MARK, False))


def value_parameters(module: nn.Module) -> Iterator[nn.Parameter]:
    """The memory value tables in ``module`` (each once, shared pools too)."""
    return (p for p in module.parameters() if _is_values(p))


def dense_parameters(module: nn.Module) -> Iterator[nn.Parameter]:
    """Every parameter of ``module`` that is not a memory value table."""
    return (p for p in module.parameters() if not _is_values(p))


def param_groups(module: nn.Module, lr: float, weight_decay: float = 0.0, value_lr: float = 1e-3) -> List[dict]:
    """Optimizer parameter groups: the dense parameters at ``lr`` with
    ``weight_decay``, the value tables at ``value_lr`` (the paper's fixed
    1e-3) without weight decay, in a group marked ``"memory_values": True``.

    With ``sparse=True`` layers, give the value group to an optimizer that
    takes sparse gradients (``torch.optim.SparseAdam``) and the rest to a
    dense one::

        dense, vals = param_groups(model, lr=3e-4, weight_decay=0.1)
        opt = torch.optim.AdamW([dense], lr=3e-4)
        opt_values = torch.optim.SparseAdam(vals["params"], lr=vals["lr"])
    """
    dense = {"params": list(dense_parameters(module)), "lr": lr, "weight_decay": weight_decay}
    values = {"params": list(value_parameters(module)), "lr": value_lr, "weight_decay": 0.0, "memory_values": True}
    return [g for g in (dense, values) if g["params"]]
