"""Typed Python entry points of the memkernels ops, their fake (meta) kernels
and their autograd formulas. The kernels are registered by the C++ extension
under ``torch.ops.memkernels``.

Ops: :func:`embedding_bag`, :func:`pk_topk`, and the row-sparse optimizer
updates :func:`sparse_row_update` and :func:`embedding_bag_backward_update`
(described by a :class:`RowUpdate`). :func:`set_backward_update` makes the
embedding bag's backward hand a table's gradient to an update instead of
autograd (what ``memkernels.optim.SparseRowOptimizer.fuse`` uses).
"""

from dataclasses import dataclass, field
from typing import Callable, List, Optional, Tuple, Union

import torch
from torch import Tensor
from torch.utils.weak import WeakIdKeyDictionary

from . import _C

# The value dtypes the kernels take, from the extension's one table.
_VALUE_DTYPES = tuple(getattr(torch, name) for name in _C.value_dtypes())
_VALUE_DTYPE_NAMES = ", ".join(_C.value_dtypes()[:-1]) + " or " + _C.value_dtypes()[-1]
_INDEX_DTYPES = (torch.int32, torch.int64)


def embedding_bag(
    values: Tensor,
    indices: Tensor,
    weights: Tensor,
    *,
    sparse: bool = False,
    check_indices: Union[str, bool] = "deferred",
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
        check_indices: how an index outside ``[0, N)`` is reported. On
            every device and in every mode it is skipped: never read or
            written, its term left out. It then raises ``IndexError`` naming
            its position and value:

            - ``"deferred"`` (default): on CUDA without synchronising the
              host (CUDA-graph safe). The device publishes the call's first
              bad index to host memory; the next ``embedding_bag`` call on
              that device raises it, or :func:`check_index_errors` does.
            - ``"sync"`` (or True): at this call; on CUDA it waits for the
              device (one host synchronisation per call; for debugging).
            - ``"off"`` (or False): never reported.

            On the CPU both checked modes raise at the call.

    Returns:
        ``[T, D]`` in the values' dtype, accumulated in float32 (float64 for
        float64 values).

    Raises:
        RuntimeError: wrong dtype, rank, shape, device or stride, naming the
            argument and what was found.
        IndexError: an index outside ``[0, N)`` (see ``check_indices``),
            or one an earlier deferred call on this CUDA device reported.

    The backward is atomic-free and bitwise deterministic run to run on each
    device (docs/embedding_bag.md).

    Under ``torch.compile``, a table with a backward update
    (:func:`set_backward_update`, e.g. fused optimizer updates) is looked up
    outside the compiled graph (one graph break), so that its backward
    applies the update; any other lookup is traced into the graph.
    """
    check = _index_check(check_indices)
    if getattr(values, _UPDATE_MARK, False) and torch.compiler.is_compiling():
        return _embedding_bag_outside_graph(values, indices, weights, sparse, check)
    return torch.ops.memkernels.embedding_bag.default(values, indices, weights, sparse, check)


_INDEX_CHECKS = ("deferred", "sync", "off")


def _index_check(mode: Union[str, bool]) -> str:
    if mode is True or mode is False:
        return "sync" if mode else "off"
    if mode not in _INDEX_CHECKS:
        raise ValueError(f"memkernels.embedding_bag: check_indices must be one of {_INDEX_CHECKS} "
                         f"or a bool; got {mode!r}")
    return mode


def check_index_errors(device=None, synchronize: bool = True) -> None:
    """Raises the ``IndexError`` of a bad index that a ``check_indices="deferred"``
    :func:`embedding_bag` call on CUDA ``device`` (default: the current one)
    met and that no call has raised yet; returns None when there is none.

    With ``synchronize`` (default) it first waits for the device, so every
    call queued before covers its indices; without, it never blocks and sees
    the calls the device has already run. Reading a report clears it. A no-op
    without CUDA (the CPU raises at the call)."""
    if not torch.cuda.is_available():
        return
    dev = torch.device("cuda" if device is None else device)
    if dev.type != "cuda":
        return
    index = torch.cuda.current_device() if dev.index is None else dev.index
    if synchronize:
        torch.cuda.synchronize(index)
    message = _C.take_index_error(index)
    if message is not None:
        raise IndexError(message)


@torch.compiler.disable
def _embedding_bag_outside_graph(values, indices, weights, sparse, check_indices):
    # Traced, the op's backward would see a fake copy of the table, find no
    # hook, and return a dense gradient instead of applying the update.
    return torch.ops.memkernels.embedding_bag.default(values, indices, weights, sparse, check_indices)


def _check_shapes(op: str, values: Tensor, indices: Tensor, weights: Tensor) -> None:
    torch._check(values.dim() == 2, lambda: f"{op}: values must be 2-D [num_rows, dim]; got shape {tuple(values.shape)}")
    torch._check(indices.dim() == 2, lambda: f"{op}: indices must be 2-D [num_bags, bag_size]; got shape {tuple(indices.shape)}")
    torch._check(
        weights.shape == indices.shape,
        lambda: f"{op}: weights must have the shape of indices {tuple(indices.shape)}; got {tuple(weights.shape)}",
    )
    torch._check(values.dtype in _VALUE_DTYPES, lambda: f"{op}: values must be {_VALUE_DTYPE_NAMES}; got {values.dtype}")
    torch._check(indices.dtype in _INDEX_DTYPES, lambda: f"{op}: indices must be int32 or int64; got {indices.dtype}")


@torch.library.register_fake("memkernels::embedding_bag")
def _embedding_bag_fake(values, indices, weights, sparse=False, check_indices="deferred"):
    _check_shapes("memkernels.embedding_bag", values, indices, weights)
    return values.new_empty((indices.shape[0], values.shape[1]))


@torch.library.register_fake("memkernels::embedding_bag_backward")
def _embedding_bag_backward_fake(grad_out, values, indices, weights):
    _check_shapes("memkernels.embedding_bag_backward", values, indices, weights)
    return values.new_empty(values.shape), weights.new_empty(weights.shape)


@torch.library.register_fake("memkernels::embedding_bag_backward_sparse")
def _embedding_bag_backward_sparse_fake(grad_out, values, indices, weights, acc_grads=False, capacity=0):
    _check_shapes("memkernels.embedding_bag_backward_sparse", values, indices, weights)
    # The capacity form has a static shape; the exact form, a data-dependent one.
    num_unique = capacity if capacity > 0 else torch.library.get_ctx().new_dynamic_size()
    rows = indices.new_empty((num_unique,), dtype=torch.int64)
    grads_dtype = (torch.float64 if values.dtype == torch.float64 else torch.float32) if acc_grads else values.dtype
    row_grads = values.new_empty((num_unique, values.shape[1]), dtype=grads_dtype)
    return rows, row_grads, weights.new_empty(weights.shape)


# ---- the backward hook of a value table ------------------------------------------------

BackwardUpdate = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]
"""``hook(values, grad_out, indices, weights) -> grad_weights``: applies the
table's gradient itself (for instance with :func:`embedding_bag_backward_update`)
and returns the weights' gradient in the accumulation dtype."""

_BACKWARD_UPDATES: "WeakIdKeyDictionary" = WeakIdKeyDictionary()
_UPDATE_MARK = "_memkernels_has_backward_update"  # on the table: readable while torch.compile traces


def set_backward_update(table: Tensor, hook: Optional[BackwardUpdate]) -> None:
    """Makes every later :func:`embedding_bag` backward of ``table`` call
    ``hook`` instead of producing a gradient for it (``table.grad`` stays
    untouched); ``None`` restores the ordinary backward. The hook is kept
    while ``table`` lives. Under ``torch.compile`` the table's lookups run
    outside the compiled graph (see :func:`embedding_bag`)."""
    if hook is None:
        _BACKWARD_UPDATES.pop(table, None)
        if hasattr(table, _UPDATE_MARK):
            delattr(table, _UPDATE_MARK)
    else:
        _BACKWARD_UPDATES[table] = hook
        setattr(table, _UPDATE_MARK, True)


def backward_update(table: Tensor) -> Optional[BackwardUpdate]:
    """The hook :func:`set_backward_update` gave ``table``, or None."""
    return _BACKWARD_UPDATES.get(table)


def _embedding_bag_setup_context(ctx, inputs, output):
    values, indices, weights, sparse, _check = inputs
    ctx.save_for_backward(values, indices, weights)
    ctx.sparse = sparse
    ctx.update = backward_update(values)


def _embedding_bag_backward(ctx, grad_out: Tensor) -> Tuple:
    values, indices, weights = ctx.saved_tensors
    want_values, _, want_weights = ctx.needs_input_grad[:3]
    grad_values = grad_weights = None
    if ctx.update is not None and want_values:
        grad_weights = ctx.update(values, grad_out, indices, weights)
        return None, None, grad_weights.to(weights.dtype) if want_weights else None, None, None
    if ctx.sparse:
        rows, row_grads, grad_weights = torch.ops.memkernels.embedding_bag_backward_sparse.default(
            grad_out, values, indices, weights
        )
        if want_values:
            # The invariants are not checked, on purpose: the backward's plan
            # writes distinct rows in [0, N), ascending (coalesced by
            # construction, tested), and a check would read the rows back (a
            # host synchronisation on CUDA) on every backward.
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


# ---- row-sparse optimizer updates -----------------------------------------------------------


@dataclass(frozen=True)
class RowUpdate:
    """One row-sparse optimizer update of a table (the rules are in
    ``csrc/core/memkernels.h`` and, as PyTorch, in
    :func:`memkernels.reference.sparse_row_step`).

    kind: ``"sgd"``, ``"adam"`` (``torch.optim.SparseAdam`` semantics on the
    touched rows; with ``weight_decay``, AdamW's decoupled decay on those rows)
    or ``"adagrad_rowwise"`` (one accumulator per row) or ``"adam_rowwise"``
    (Adam with one second moment per row: ``v += (1 - beta2) * (mean(g**2) -
    v)``, state2 ``[N]``). ``step`` counts updates
    including this one (Adam's bias correction). ``max_row_norm > 0`` clips
    each row's gradient to that L2 norm first. ``stochastic_rounding`` rounds
    new bfloat16 values stochastically with bits hashed from
    ``(seed, step, row, column_offset + column)``: a table that is a column
    shard of a wider one gives its first column's place there, and rounds as
    the whole table would.

    ``step_tensor`` (one int64 on the table's device) and ``lr_scale`` (one
    float32 there), when given, are read when the update runs: the step count
    replaces ``step``, and ``lr`` (and with it the weight decay) is multiplied
    by ``lr_scale``. A call captured in a CUDA graph then serves every replay,
    as the step count advances on the device.
    """

    kind: str
    lr: float
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    max_row_norm: float = 0.0
    step: int = 1
    stochastic_rounding: bool = False
    seed: int = 0
    column_offset: int = 0
    step_tensor: Optional[Tensor] = field(default=None, compare=False)
    lr_scale: Optional[Tensor] = field(default=None, compare=False)

    def hyper(self) -> List[float]:
        """The schema's ``hyper`` list: lr, beta1, beta2, eps, weight_decay, max_row_norm."""
        return [float(self.lr), float(self.beta1), float(self.beta2), float(self.eps), float(self.weight_decay),
                float(self.max_row_norm)]


def sparse_row_update(table: Tensor, rows: Tensor, grads: Tensor, update: RowUpdate,
                      state1: Optional[Tensor] = None, state2: Optional[Tensor] = None) -> None:
    """Applies ``update`` in place to the given rows of ``table``.

    Args:
        table: ``[N, D]`` float32, float16, bfloat16 or float64, unit stride
            along ``D``; updated in place.
        rows: ``[U]`` int32 or int64, distinct, in ``[0, N)``.
        grads: ``[U, D]`` the rows' gradients (converted to the accumulation
            dtype: float32, float64 for float64 tables).
        update: the rule and its hyper-parameters.
        state1, state2: the optimizer state, accumulation dtype, contiguous:
            Adam's ``exp_avg`` and ``exp_avg_sq`` ``[N, D]``; row-wise
            Adagrad's ``[N]`` accumulator as ``state1``; none for SGD.
            Updated in place on the touched rows only.

    Untouched rows of the table and the state keep their bits.
    """
    torch.ops.memkernels.sparse_row_update.default(table, rows, grads, state1, state2, update.kind, update.hyper(),
                                                   update.step, update.stochastic_rounding, update.seed,
                                                   update.column_offset, update.step_tensor, update.lr_scale)


def embedding_bag_backward_update(grad_out: Tensor, values: Tensor, indices: Tensor, weights: Tensor,
                                  update: RowUpdate, state1: Optional[Tensor] = None,
                                  state2: Optional[Tensor] = None) -> Tensor:
    """The backward of :func:`embedding_bag` fused with ``update``: the rows
    of ``values`` the bags touched are updated in place from their fp32
    gradients, and no gradient of ``values`` exists. Returns the weights'
    gradient ``[T, B]`` in the accumulation dtype. Arguments as in
    :func:`embedding_bag` and :func:`sparse_row_update`."""
    return torch.ops.memkernels.embedding_bag_backward_update.default(
        grad_out, values, indices, weights, state1, state2, update.kind, update.hyper(), update.step,
        update.stochastic_rounding, update.seed, update.column_offset, update.step_tensor, update.lr_scale)


@torch.library.register_fake("memkernels::sparse_row_update")
def _sparse_row_update_fake(table, rows, grads, state1, state2, kind, hyper, step, stochastic_rounding, seed,
                            column_offset=0, step_tensor=None, lr_scale=None):
    return None


@torch.library.register_fake("memkernels::embedding_bag_backward_update")
def _embedding_bag_backward_update_fake(grad_out, values, indices, weights, state1, state2, kind, hyper, step,
                                        stochastic_rounding, seed, column_offset=0, step_tensor=None, lr_scale=None):
    acc = torch.float64 if values.dtype == torch.float64 else torch.float32
    return weights.new_empty(weights.shape, dtype=acc)


# ---- product-key top-k -------------------------------------------------------------


def pk_topk(query: Tensor, keys: Tensor, k: int, *, impl: str = "auto") -> Tuple[Tensor, Tensor]:
    """Product-key top-k scoring.

    For each token ``t`` and head ``h``: half-scores
    ``s1 = query[t, h, :Dk/2] @ keys[h, 0].T`` and ``s2 = query[t, h, Dk/2:] @ keys[h, 1].T``
    (each ``[n_keys]``), the top-k of each half, the ``k x k`` candidate sums
    and their top-k. Equals the exact top-k over all ``n_keys**2`` sums.

    Args:
        query: ``[T, H, Dk]`` float32, float16, bfloat16 or float64; ``Dk`` even.
        keys: ``[H, 2, n_keys, Dk/2]``, the query's dtype and device;
            ``n_keys <= 65535``.
        k: ``1 <= k <= n_keys`` (at most 1024 on CUDA).
        impl: ``"auto"`` (picks ``"staged"``), ``"staged"`` (library GEMM
            for the half-scores, then the selection kernel) or ``"fused"``
            (one CUDA kernel, tensor-core half-scores never written to memory;
            float16/bfloat16 inputs, ``k <= 128``; exact, but slower than
            ``"staged"``: 3.8 ms against 0.47 ms forward at T=4096, H=4,
            n_keys=1024, k=32 on an H200, so ``"auto"`` does not pick it).

    Returns:
        ``(scores, indices)``: ``scores[T, H, k]`` float32 (float64 for float64
        inputs), sorted descending; ``indices[T, H, k]`` int64 slot ids
        ``i1 * n_keys + i2`` in ``[0, n_keys**2)``. Ties break by the smaller
        index (sub-key index in each half, slot id among the candidates), the
        same on every device.

    Differentiable in ``query`` and ``keys``: gradients flow through the
    selected pairs only (docs/pk_topk.md).

    Raises:
        RuntimeError: odd ``Dk``, ``k`` outside ``[1, n_keys]``, or a shape,
            dtype or device mismatch between ``query`` and ``keys``.
    """
    return torch.ops.memkernels.pk_topk.default(query, keys, k, impl)


def _check_pk(op: str, query: Tensor, keys: Tensor) -> None:
    torch._check(query.dim() == 3, lambda: f"{op}: query must be 3-D [T, H, Dk]; got shape {tuple(query.shape)}")
    torch._check(keys.dim() == 4, lambda: f"{op}: keys must be 4-D [H, 2, n_keys, Dk/2]; got shape {tuple(keys.shape)}")
    torch._check(query.dtype == keys.dtype, lambda: f"{op}: query and keys must have the same dtype; got {query.dtype} and {keys.dtype}")


@torch.library.register_fake("memkernels::pk_topk")
def _pk_topk_fake(query, keys, k, impl="auto"):
    _check_pk("memkernels.pk_topk", query, keys)
    torch._check(1 <= k, lambda: f"memkernels.pk_topk: k must be at least 1; got {k}")
    dtype = torch.float64 if query.dtype == torch.float64 else torch.float32
    shape = (query.shape[0], query.shape[1], k)
    return query.new_empty(shape, dtype=dtype), query.new_empty(shape, dtype=torch.int64)


@torch.library.register_fake("memkernels::pk_topk_backward")
def _pk_topk_backward_fake(grad_scores, query, keys, indices):
    _check_pk("memkernels.pk_topk_backward", query, keys)
    return query.new_empty(query.shape), keys.new_empty(keys.shape)


def _pk_topk_setup_context(ctx, inputs, output):
    query, keys, _k, _impl = inputs
    _scores, indices = output
    ctx.mark_non_differentiable(indices)
    ctx.set_materialize_grads(False)  # no zero-filled gradient for the indices (or unused scores)
    ctx.save_for_backward(query, keys, indices)


def _pk_topk_backward(ctx, grad_scores: Optional[Tensor], _grad_indices) -> Tuple:
    if grad_scores is None:
        return None, None, None, None
    query, keys, indices = ctx.saved_tensors
    grad_query, grad_keys = torch.ops.memkernels.pk_topk_backward.default(grad_scores, query, keys, indices)
    want_query, want_keys = ctx.needs_input_grad[:2]
    return (grad_query if want_query else None, grad_keys if want_keys else None, None, None)


torch.library.register_autograd(
    "memkernels::pk_topk", _pk_topk_backward, setup_context=_pk_topk_setup_context
)
