"""Row-sparse optimizers for memory value tables.

A step touches only the rows the batch read: the update kernels read the
distinct rows and their fp32 gradients and update those rows of the table in
place (:func:`memkernels.ops.sparse_row_update`). Untouched rows, and their
optimizer state, are left bit-for-bit unchanged; no table-sized gradient or
temporary is made per step.

Two ways to use it:

1. With ``sparse=True`` layers the table's gradient is a sparse COO tensor of
   the touched rows; :meth:`SparseRowOptimizer.step` applies it.
2. Fused: :meth:`SparseRowOptimizer.fuse` (or
   ``ProductKeyMemory.fuse_value_updates``) makes the embedding bag's backward
   apply the update itself (:func:`memkernels.ops.set_backward_update` with
   :func:`memkernels.ops.embedding_bag_backward_update`), so the gradient is
   never handed to autograd. The
   table's ``.grad`` stays ``None`` and ``step()`` has nothing to do for it.
   One update per backward: no gradient accumulation across backwards, and a
   value pool shared by several layers is updated once per layer.
"""

from __future__ import annotations

from typing import Iterable, Optional, Tuple

import torch
from torch import Tensor

from . import ops
from .ops import RowUpdate

__all__ = ["SparseRowOptimizer"]


def _is_dtensor(t: Tensor) -> bool:
    return isinstance(t, _dtensor_type())


def _dtensor_type():
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch built without distributed
        return ()
    return DTensor


def _state_like(p: Tensor, shape, dtype: torch.dtype) -> Tensor:
    if _is_dtensor(p):
        from .distributed import state_like

        return state_like(p, shape, dtype)
    return torch.zeros(shape, dtype=dtype, device=p.device)


_ALGORITHMS = {"sgd": "sgd", "adam": "adam", "adamw": "adam", "adagrad_rowwise": "adagrad_rowwise",
               "adam_rowwise": "adam_rowwise"}


class SparseRowOptimizer(torch.optim.Optimizer):
    """Row-sparse SGD, Adam/AdamW, row-wise Adagrad or row-wise Adam for value tables.

    Args:
        params: value tables (``[N, D]`` float32, bfloat16, float16 or float64
            parameters) or parameter groups.
        algorithm: ``"sgd"``; ``"adam"`` / ``"adamw"`` (``torch.optim.SparseAdam``
            semantics on the touched rows, with a global step count for bias
            correction, plus ``weight_decay`` decoupled as in AdamW and applied
            only to touched rows); ``"adagrad_rowwise"`` (one accumulator per
            row: ``G += mean(g**2)``, ``w -= lr * g / (sqrt(G) + eps)``);
            ``"adam_rowwise"`` (Adam/AdamW with one second moment per row,
            ``v += (1 - beta2) * (mean(g**2) - v)``, and ``exp_avg`` per
            element: about 40 % fewer state bytes per touched row of a bf16
            table than Adam).
        lr, betas, eps, weight_decay: as in PyTorch's optimizers.
        max_row_norm: if > 0, each touched row's gradient is scaled to an L2
            norm of at most this value before the update (row-wise clipping).
        stochastic_rounding: for bfloat16 tables, round each new value
            stochastically; the random bits depend only on
            ``(seed, step, row, column)``, so runs are reproducible.
        seed: the stochastic-rounding seed.
        state_dtype: ``torch.bfloat16`` keeps the ``[N, D]`` moments
            (``exp_avg``, ``exp_avg_sq``) in bf16, each new value rounded
            stochastically (bits from ``(seed, step, row, column)`` and the
            state's own salt): half the state memory and bytes of fp32
            moments; ``[N]`` states stay fp32. None (default): fp32 (fp64
            for fp64 tables). Not for fp64 tables.
        capturable: keep each table's step count on its device and let the
            update read it there (as ``torch.optim.Adam(capturable=True)``
            does), so that a training step with fused value updates can be
            captured in a CUDA graph and replayed: the count advances on the
            device at every replay. The other hyper-parameters are those at
            capture time; for a learning-rate schedule under a graph, give
            ``lr`` as a one-element float32 tensor on the table's device
            (torch's schedulers fill it in place), which the update reads
            when it runs.

    Optimizer state is fp32 (fp64 for fp64 tables): ``exp_avg`` and
    ``exp_avg_sq`` ``[N, D]`` for Adam, ``exp_avg`` ``[N, D]`` and
    ``exp_avg_sq`` ``[N]`` for row-wise Adam, ``sum`` ``[N]`` for row-wise
    Adagrad, allocated on the first step. ``state_dict``/``load_state_dict``, param
    groups and learning-rate schedulers work as for any ``torch.optim``
    optimizer.
    """

    def __init__(
        self,
        params: Iterable,
        algorithm: str = "adam",
        lr: float = 1e-3,
        betas: Tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        max_row_norm: float = 0.0,
        stochastic_rounding: bool = False,
        seed: int = 0,
        state_dtype: Optional[torch.dtype] = None,
        capturable: bool = False,
    ):
        if algorithm not in _ALGORITHMS:
            raise ValueError(f"SparseRowOptimizer: algorithm must be one of {sorted(_ALGORITHMS)}; got {algorithm!r}")
        if lr < 0 or eps < 0 or weight_decay < 0 or max_row_norm < 0:
            raise ValueError("SparseRowOptimizer: lr, eps, weight_decay and max_row_norm must be >= 0")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"SparseRowOptimizer: betas must be in [0, 1); got {betas}")
        if state_dtype not in (None, torch.float32, torch.bfloat16):
            raise ValueError(f"SparseRowOptimizer: state_dtype must be None, torch.float32 or torch.bfloat16; got "
                             f"{state_dtype}")
        defaults = dict(algorithm=algorithm, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        max_row_norm=max_row_norm, stochastic_rounding=stochastic_rounding, seed=seed,
                        state_dtype=state_dtype, capturable=bool(capturable))
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.dim() != 2:
                    raise ValueError(f"SparseRowOptimizer: parameters must be 2-D tables; got shape {tuple(p.shape)}")
                if group["state_dtype"] == torch.bfloat16 and p.dtype == torch.float64:
                    raise ValueError("SparseRowOptimizer: state_dtype=torch.bfloat16 is not for float64 tables")

    # ---- state -----------------------------------------------------------------------

    def _state(self, p: Tensor, group: dict) -> dict:
        state = self.state[p]
        if not state:
            acc = torch.float64 if p.dtype == torch.float64 else torch.float32
            # A 0-d CPU tensor (as torch.optim's Adam keeps it): checkpoints
            # (torch.distributed.checkpoint among them) load it in place.
            # Capturable: on the table's device, read there by the update.
            state["step"] = torch.zeros((), dtype=torch.int64, device=self._step_device(p, group))
            kind = _ALGORITHMS[group["algorithm"]]
            wide = group.get("state_dtype") or acc  # the [N, D] states' dtype
            if kind == "adam":
                state["exp_avg"] = _state_like(p, p.shape, wide)
                state["exp_avg_sq"] = _state_like(p, p.shape, wide)
            elif kind == "adam_rowwise":
                state["exp_avg"] = _state_like(p, p.shape, wide)
                state["exp_avg_sq"] = _state_like(p, (p.shape[0],), acc)
            elif kind == "adagrad_rowwise":
                state["sum"] = _state_like(p, (p.shape[0],), acc)
        return state

    @staticmethod
    def _step_device(p: Tensor, group: dict) -> torch.device:
        if not group.get("capturable", False):
            return torch.device("cpu")
        return p.to_local().device if _is_dtensor(p) else p.device

    def init_state(self) -> None:
        """Allocates every parameter's state now (zeros, step 0) instead of at
        its first update: what loading a ``torch.distributed.checkpoint`` into
        this optimizer needs."""
        for group in self.param_groups:
            for p in group["params"]:
                self._state(p, group)

    def load_state_dict(self, state_dict: dict) -> None:
        """As ``torch.optim.Optimizer.load_state_dict``, except that the state
        keeps its dtype (the base class casts state to the parameter's dtype,
        which would round a bfloat16 table's fp32 moments) and ``step`` stays
        a CPU tensor (on the table's device when capturable)."""
        saved = state_dict["state"]
        super().load_state_dict({**state_dict, "state": {}})
        ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        by_id = dict(zip(ids, params))
        for pid, st in saved.items():
            p = by_id[pid]
            state = {}
            for key, value in st.items():
                if key == "step":
                    state[key] = torch.as_tensor(value, dtype=torch.int64).reshape(()).to(
                        self._step_device(p, self._group_of(p)))
                elif torch.is_tensor(value):
                    state[key] = value.to(device=p.device)
                else:
                    state[key] = value
            self.state[p] = state

    def _next_update(self, p: Tensor, group: dict) -> Tuple[Optional[Tensor], Optional[Tensor], RowUpdate]:
        """Counts one more step of ``p``: its state tensors and the update."""
        state = self._state(p, group)
        state["step"] += 1
        beta1, beta2 = group["betas"]
        # Capturable: the update reads the count on the device (no host read).
        capturable = group.get("capturable", False)
        # A tensor learning rate (one float32, as torch.optim takes with
        # capturable=True) is read where the update runs: lr 1 scaled by it,
        # so a schedule that fills it in place reaches a captured graph.
        lr = group["lr"]
        lr_scale = None
        if torch.is_tensor(lr):
            if lr.dtype != torch.float32 or lr.numel() != 1:
                raise ValueError(f"SparseRowOptimizer: a tensor lr must be one float32; got {lr.dtype} of shape "
                                 f"{tuple(lr.shape)}")
            lr_scale = lr.reshape(())  # must live on the table's device (the op checks)
            lr = 1.0
        update = RowUpdate(_ALGORITHMS[group["algorithm"]], lr=float(lr), beta1=float(beta1),
                           beta2=float(beta2), eps=float(group["eps"]), weight_decay=float(group["weight_decay"]),
                           max_row_norm=float(group["max_row_norm"]), step=1 if capturable else int(state["step"]),
                           stochastic_rounding=bool(group["stochastic_rounding"]), seed=int(group["seed"]),
                           step_tensor=state["step"] if capturable else None, lr_scale=lr_scale)
        return state.get("exp_avg", state.get("sum")), state.get("exp_avg_sq"), update

    def _group_of(self, p: Tensor) -> dict:
        for group in self.param_groups:
            if any(q is p for q in group["params"]):
                return group
        raise ValueError("SparseRowOptimizer: this tensor is not one of the optimizer's parameters")

    # ---- the two paths ---------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure=None):
        """Applies the sparse gradients of the parameters that have one."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if _is_dtensor(p):
                    raise RuntimeError(
                        "SparseRowOptimizer: a sharded value table has no sparse gradient; fuse the optimizer "
                        "into the backward (SparseRowOptimizer.fuse / fuse_value_updates)"
                    )
                if not p.grad.is_sparse:
                    raise RuntimeError(
                        "SparseRowOptimizer: the gradient of a value table must be sparse "
                        "(use sparse=True in the layer, or the fused path); got a dense gradient"
                    )
                g = p.grad.coalesce()
                rows, vals = g.indices()[0], g.values()
                if rows.numel() == 0:
                    continue
                s1, s2, update = self._next_update(p, group)
                ops.sparse_row_update(p, rows, vals, update, s1, s2)
        return loss

    def fuse(self, *tables: Tensor) -> None:
        """Makes the embedding-bag backward of these tables apply this
        optimizer's update directly (see the module docstring)."""
        for t in tables:
            self._group_of(t)
            ops.set_backward_update(t, self.fused_backward)

    def unfuse(self, *tables: Tensor) -> None:
        for t in tables:
            if getattr(ops.backward_update(t), "__self__", None) is self:
                ops.set_backward_update(t, None)

    @torch.no_grad()
    def fused_backward(self, values: Tensor, grad_out: Tensor, indices: Tensor, weights: Tensor) -> Tensor:
        """The embedding-bag backward fused with this optimizer's update of
        ``values``; returns the weights' gradient (a
        :data:`memkernels.ops.BackwardUpdate` hook)."""
        s1, s2, update = self._next_update(values, self._group_of(values))
        if _is_dtensor(values):
            from .distributed import backward_update_shard

            return backward_update_shard(values, grad_out, indices, weights, update, s1, s2)
        return ops.embedding_bag_backward_update(grad_out, values, indices, weights, update, s1, s2)
