"""Memory value tables sharded by columns over ``torch.distributed``.

:func:`shard_values` turns every :class:`memkernels.nn.ValuePool` of a model
into a ``DTensor`` sharded by columns (``Shard(1)``) over the memory-parallel
group of a ``DeviceMesh`` (a 1-D mesh, or the second dimension of a 2-D one
whose first holds replicas of the group): each of its ``P`` ranks keeps all
``N`` rows and ``D / P`` columns. Each rank feeds its own tokens; a lookup

1. all-gathers every rank's indices and weights (one collective, int32
   indices where ``N < 2**31``),
2. runs the embedding bag on the local columns for every token of the group,
3. returns each token's column slices to its owner (one all-to-all), which
   puts the full rows back together.

The backward is the reverse: an all-to-all hands each rank the output
gradient of every token for its columns; the rank then updates its own
columns (the fused row-sparse optimizer, :class:`memkernels.optim.SparseRowOptimizer`)
or produces its column shard of the gradient; the weights' gradient, a
partial sum per rank, goes back to the token's owner with one more
all-to-all and is summed there in rank order. No value gradient is ever
communicated. Rules that need a whole row (row-wise Adagrad, per-row
clipping) all-reduce one number per touched row. The traffic model and its
numbers are in ``docs/distributed.md``; :func:`traffic_per_lookup` states it.

Every rank of the group must run the same lookups (forward and backward) in
the same order: they are collective.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Dict, List, Optional

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
from torch import Tensor, nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor

from . import ops
from .nn import _VALUES_MARK, ProductKeyMemory, ValuePool

__all__ = ["shard_values", "ColumnSharding", "traffic_per_lookup", "comm_stats", "reset_comm_stats",
           "is_sharded", "local_shard", "all_reduce_dense_grads", "data_parallel", "sharded_parameter_names"]

_VALUE_GRAD = ("mean", "sum")
# all_gather_single replaced all_gather_tensor (torch 2.14); both gather along a dim.
_all_gather = getattr(funcol, "all_gather_single", None) or funcol.all_gather_tensor

# Bytes this process has sent through the sharded lookups' collectives, by
# kind (host-side bookkeeping from shapes only: nothing synchronises).
_COMM: Dict[str, int] = {"gather": 0, "outputs": 0, "grad_outputs": 0, "grad_weights": 0, "row_stats": 0,
                         "token_counts": 0, "replica_inputs": 0}


def comm_stats() -> Dict[str, int]:
    """Bytes this process sent through the sharded lookups' collectives since
    :func:`reset_comm_stats`, by kind: ``gather`` (indices and weights),
    ``outputs`` (column slices back to their owners), ``grad_outputs``,
    ``grad_weights``, ``row_stats`` (row-wise rules), ``token_counts``,
    ``replica_inputs`` (2-D meshes: the backward's inputs gathered over the
    replicas). A byte a rank keeps for itself is not counted."""
    return dict(_COMM)


def reset_comm_stats() -> None:
    for k in _COMM:
        _COMM[k] = 0


def is_sharded(t: Tensor) -> bool:
    return isinstance(t, DTensor)


def local_shard(t: Optional[Tensor]) -> Optional[Tensor]:
    """The local tensor of a DTensor; anything else as it is."""
    return t.to_local() if isinstance(t, DTensor) else t


# ---- the traffic model ------------------------------------------------------------------


def traffic_per_lookup(tokens: int, dim: int, lookups: int, world: int, value_bytes: int = 2,
                       weight_bytes: int = 4, index_bytes: int = 4, layout: str = "columns") -> Dict[str, int]:
    """Bytes each rank sends for one memory lookup (forward and backward) when
    every rank of a ``world``-rank group feeds ``tokens`` tokens of
    ``lookups`` (heads x knn) slots each into a ``[N, dim]`` table.

    ``layout="columns"`` is what this module does; ``layout="rows"`` is the
    alternative (each rank holds ``N / world`` whole rows): every token's
    lookups hit every row shard, so each rank sums partial rows for every
    token of the group and reduce-scatters them (in fp32, ``4`` bytes, to keep
    the accumulation exact), and the backward all-gathers the output
    gradient. Returns a dict of bytes by kind and ``"total"``.
    """
    P, T, D, K = world, tokens, dim, lookups
    others = P - 1
    if layout == "columns":
        out = {
            "gather": others * T * K * (index_bytes + weight_bytes),
            "outputs": others * T * (D // P) * value_bytes,
            "grad_outputs": others * T * (D // P) * value_bytes,
            "grad_weights": others * T * K * 4,
        }
    elif layout == "rows":
        out = {
            "gather": others * T * K * (index_bytes + weight_bytes),
            "outputs": others * T * D * 4,
            "grad_outputs": others * T * D * value_bytes,
            # each lookup's weight gradient is made by the rank holding its
            # row and sent to the token's owner
            "grad_weights": others * T * K * 4 // P,
        }
    else:
        raise ValueError(f"traffic_per_lookup: layout must be 'columns' or 'rows'; got {layout!r}")
    out["total"] = sum(out.values())
    return out


# ---- the sharding of one pool -------------------------------------------------------------


@dataclass
class ColumnSharding:
    """How a value pool is sharded: by columns over the memory-parallel
    dimension of ``mesh`` (its only dimension, or the second of a 2-D mesh
    whose first dimension holds data-parallel replicas of the group).

    ``value_grad="mean"`` (default) makes the value table's update the
    gradient of the mean of all ranks' losses, which is what data-parallel
    training of the other parameters (DDP averaging) computes; ``"sum"``, of
    their sum. ``even_tokens=True`` promises that every rank feeds the same
    number of tokens, so no token counts are exchanged (on a CUDA mesh an
    uneven exchange reads the counts back to the host once per lookup).
    """

    mesh: DeviceMesh
    value_grad: str = "mean"
    even_tokens: bool = False

    def __post_init__(self):
        mp = self.mesh.ndim - 1
        self.group = self.mesh.get_group(mp)
        self.world = self.mesh.size(mp)
        self.rank = self.mesh.get_local_rank(mp)
        if self.mesh.ndim == 2:
            self.dp_group = self.mesh.get_group(0)
            self.replicas = self.mesh.size(0)
            self.replica = self.mesh.get_local_rank(0)
        else:
            self.dp_group, self.replicas, self.replica = None, 1, 0
        self.placements = ([Replicate()] if self.mesh.ndim == 2 else []) + [Shard(1)]

    # -- collectives (group: the memory-parallel group unless given) --

    def token_counts(self, tokens: int, device: torch.device, group=None) -> List[int]:
        group = self.group if group is None else group
        size = dist.get_world_size(group)
        if self.even_tokens or size == 1:
            return [tokens] * size
        # gloo: a host-side exchange; NCCL: a device exchange read back (one sync).
        mine = torch.tensor([tokens], dtype=torch.int64, device=device)
        counts = _all_gather(mine, 0, group)
        _COMM["token_counts"] += 8 * (size - 1)
        return [int(c) for c in funcol.wait_tensor(counts).tolist()]

    def gather_tokens(self, x: Tensor, counts: List[int], group=None) -> Tensor:
        """Every rank's rows of ``x`` ([T_r, ...]), concatenated in rank order."""
        group = self.group if group is None else group
        most = max(counts)
        if x.shape[0] < most:
            x = torch.cat([x, x.new_zeros((most - x.shape[0],) + tuple(x.shape[1:]))])
        y = funcol.wait_tensor(_all_gather(x.contiguous(), 0, group))
        if all(c == most for c in counts):
            return y
        return torch.cat([y[r * most:r * most + c] for r, c in enumerate(counts)])

    def exchange(self, x: Tensor, send: List[int], recv: List[int]) -> Tensor:
        y = funcol.all_to_all_single(x.contiguous(), recv, send, self.group)
        return funcol.wait_tensor(y)

    def all_reduce_sum(self, x: Tensor) -> Tensor:
        return funcol.wait_tensor(funcol.all_reduce(x, "sum", self.group))

    # -- the lookup --

    def bag(self, weight: Tensor, indices: Tensor, weights: Tensor, *, sparse: bool = False,
            usage: Optional[Tensor] = None) -> Tensor:
        if sparse:
            raise NotImplementedError(
                "memkernels.distributed: a sharded value pool has no sparse gradient (DTensor does not hold "
                "sparse local tensors); use the fused row-sparse optimizer (SparseRowOptimizer.fuse / "
                "fuse_value_updates), which needs no value gradient, or sparse=False for a dense shard gradient")
        return _sharded_lookup(self, weight, indices, weights, usage)


@torch.compiler.disable
def _sharded_lookup(sh: ColumnSharding, weight: Tensor, indices: Tensor, weights: Tensor,
                    usage: Optional[Tensor]) -> Tensor:
    """Runs outside any torch.compile graph (one graph break per lookup): the
    collectives' sizes come from the host, and the backward must find the
    real parameter's fused update; the layer's other work is compiled."""
    if not isinstance(weight, DTensor) or weight.device_mesh != sh.mesh:
        raise RuntimeError("memkernels.distributed: the pool's weight is not the DTensor shard_values made")
    return _ShardedBag.apply(weight.to_local(), indices, weights, sh, _Lookup(weight, usage))


class _Lookup:
    """What a lookup needs besides tensors autograd should see: the DTensor
    parameter (for its fused update) and the usage counter."""

    __slots__ = ("param", "usage")

    def __init__(self, param: Tensor, usage: Optional[Tensor]):
        self.param, self.usage = param, usage


def _pack(indices: Tensor, weights: Tensor, index_dtype: torch.dtype) -> Tensor:
    """indices and weights side by side as bytes, [T, K * (index + weight bytes)]."""
    T, K = indices.shape
    a = indices.to(index_dtype).contiguous().view(torch.uint8).view(T, K * _size(index_dtype))
    b = weights.contiguous().view(torch.uint8).view(T, K * weights.element_size())
    return torch.cat([a, b], dim=1)


def _size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _unpack(packed: Tensor, K: int, index_dtype: torch.dtype, weight_dtype: torch.dtype):
    T = packed.shape[0]
    ib = _size(index_dtype) * K
    idx = packed[:, :ib].contiguous().view(index_dtype).view(T, K)
    w = packed[:, ib:].contiguous().view(weight_dtype).view(T, K)
    return idx, w


class _ShardedBag(torch.autograd.Function):
    """The column-sharded embedding bag of one rank's tokens (module docstring)."""

    @staticmethod
    def forward(ctx, local, indices, weights, sh: ColumnSharding, lookup: "_Lookup"):
        param, usage = lookup.param, lookup.usage
        T, K = indices.shape
        P, Dp = sh.world, local.shape[1]
        counts = sh.token_counts(T, indices.device)
        index_dtype = torch.int32 if param.shape[0] < 2**31 else torch.int64
        packed = sh.gather_tokens(_pack(indices, weights, index_dtype), counts)
        _COMM["gather"] += (P - 1) * max(counts) * packed.shape[1]
        all_idx, all_w = _unpack(packed, K, index_dtype, weights.dtype)
        if usage is not None:
            flat = all_idx.reshape(-1).long()
            usage.index_add_(0, flat, torch.ones_like(flat, dtype=usage.dtype))
        part = torch.ops.memkernels.embedding_bag.default(local, all_idx, all_w, False, "off")  # [sum(counts), Dp]
        recv = sh.exchange(part, send=counts, recv=[T] * P)  # [P * T, Dp]: rank r's columns of my tokens
        _COMM["outputs"] += (sum(counts) - T) * Dp * part.element_size()
        out = recv.view(P, T, Dp).transpose(0, 1).reshape(T, P * Dp)
        ctx.sh, ctx.counts, ctx.param = sh, counts, param
        ctx.update = ops.backward_update(param)
        ctx.save_for_backward(local, all_idx, all_w)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        local, all_idx, all_w = ctx.saved_tensors
        sh, counts = ctx.sh, ctx.counts
        P, Dp, T = sh.world, local.shape[1], grad_out.shape[0]
        g = grad_out.reshape(T, P, Dp).transpose(0, 1).reshape(P * T, Dp).to(local.dtype)
        grad_cols = sh.exchange(g, send=[T] * P, recv=counts)  # [sum(counts), Dp]: every token, my columns
        _COMM["grad_outputs"] += (P - 1) * T * Dp * g.element_size()
        want_values, _, want_weights = ctx.needs_input_grad[:3]
        idx, w, mine = all_idx, all_w, slice(0, all_idx.shape[0])
        if sh.replicas > 1 and want_values:
            # Replicas of the group apply the same update: each gathers the
            # backward's inputs of every replica (token gradients, indices,
            # weights: far fewer bytes than touched rows' gradients) and runs
            # the backward over all of them, in replica order.
            totals = sh.token_counts(idx.shape[0], idx.device, sh.dp_group)
            grad_cols = sh.gather_tokens(grad_cols, totals, sh.dp_group)
            packed = sh.gather_tokens(_pack(idx, w, idx.dtype), totals, sh.dp_group)
            _COMM["replica_inputs"] += (sh.replicas - 1) * max(totals) * (
                grad_cols.shape[1] * grad_cols.element_size() + packed.shape[1])
            idx, w = _unpack(packed, idx.shape[1], idx.dtype, w.dtype)
            start = sum(totals[:sh.replica])
            mine = slice(start, start + totals[sh.replica])
        if sh.value_grad == "mean" and P * sh.replicas > 1:
            # The weights scale the value gradient only: their own gradient
            # (grad_out . values) does not involve them.
            w = w * (1.0 / (P * sh.replicas))
        grad_local = None
        if ctx.update is not None and want_values:
            partial = ctx.update(ctx.param, grad_cols, idx, w)
        else:
            grad_local, partial = torch.ops.memkernels.embedding_bag_backward.default(grad_cols, local, idx, w)
            if not want_values:
                grad_local = None
        partial = partial[mine]
        grad_weights = None
        if want_weights:
            K = all_idx.shape[1]
            back = sh.exchange(partial.contiguous(), send=counts, recv=[T] * P)  # [P * T, K]
            _COMM["grad_weights"] += (sum(counts) - T) * K * partial.element_size()
            grad_weights = back.view(P, T, K).sum(0).to(all_w.dtype)
        return grad_local, None, grad_weights, None, None


# ---- the optimizer's update of a shard ----------------------------------------------------


def backward_update_shard(param: Tensor, grad_cols: Tensor, indices: Tensor, weights: Tensor,
                          update: "ops.RowUpdate", state1: Optional[Tensor], state2: Optional[Tensor]) -> Tensor:
    """The fused backward-and-update of a column shard (what
    ``SparseRowOptimizer.fused_backward`` calls for a sharded table): rules
    that work per element (SGD, Adam/AdamW) run the fused kernel on the local
    columns; rules that need the whole row (``max_row_norm > 0``, row-wise
    Adagrad, row-wise Adam) compute the local rows' fp32 gradients,
    all-reduce their sums of squares (one number per touched row; every rank
    touches the same rows in the same order), update the replicated ``[N]``
    state with the same numbers on every rank, then apply the per-element
    part to the local columns. Returns the weights' partial gradient."""
    sh: ColumnSharding = _sharding_of(param)
    local, s1, s2 = param.to_local(), local_shard(state1), local_shard(state2)
    if update.kind == "adam_rowwise" and s1.dtype == torch.bfloat16:
        raise NotImplementedError(
            "memkernels.distributed: row-wise Adam with bfloat16 moments on a sharded value pool is not supported "
            "yet; use state_dtype=None (fp32 moments), or adam / adamw")
    # Stochastic rounding hashes global columns: the shard rounds as the whole table.
    update = dataclasses.replace(update, column_offset=update.column_offset + sh.rank * local.shape[1])
    rowwise = update.kind in ("adagrad_rowwise", "adam_rowwise") or update.max_row_norm > 0
    if not rowwise:
        return ops.embedding_bag_backward_update(grad_cols, local, indices, weights, update, s1, s2)
    rows, g, partial = torch.ops.memkernels.embedding_bag_backward_sparse.default(grad_cols, local, indices,
                                                                                   weights, True)
    sumsq = sh.all_reduce_sum((g * g).sum(dim=1))
    _COMM["row_stats"] += (sh.world - 1) * sumsq.numel() * sumsq.element_size()
    if update.max_row_norm > 0:
        norm = sumsq.sqrt()
        limit = torch.as_tensor(update.max_row_norm, dtype=g.dtype, device=g.device)
        scale = torch.where(norm > limit, limit / norm, torch.ones_like(norm))
        g = g * scale.unsqueeze(1)
        sumsq = sumsq * scale * scale
    if update.kind == "adagrad_rowwise":
        # The [N] accumulator is replicated: every rank adds the same numbers.
        s1.index_add_(0, rows, sumsq / param.shape[1])
        g = g / (s1.index_select(0, rows).sqrt() + update.eps).unsqueeze(1)
        ops.sparse_row_update(local, rows, g, dataclasses.replace(update, kind="sgd", max_row_norm=0.0))
    elif update.kind == "adam_rowwise":
        # v_row += (1 - beta2) (mean(g^2) - v_row) on the replicated [N] state,
        # m += (1 - beta1) (g - m) on the local columns, then
        # w = (1 - lr wd) w - lr sqrt(1 - beta2^t) / (1 - beta1^t) m / (sqrt(v_row) + eps):
        # the SGD rule fed g' = sqrt(1 - beta2^t) / (1 - beta1^t) m / (sqrt(v_row) + eps).
        v_old = s2.index_select(0, rows)
        v_new = v_old + (1.0 - update.beta2) * (sumsq / param.shape[1] - v_old)
        s2.index_copy_(0, rows, v_new)
        m = s1.index_select(0, rows)
        m = m + (1.0 - update.beta1) * (g - m)
        s1.index_copy_(0, rows, m)
        if update.step_tensor is not None:  # read on the device: no host synchronisation
            t = update.step_tensor.to(torch.float64)
            ratio = (1.0 - torch.pow(update.beta2, t)).sqrt() / (1.0 - torch.pow(update.beta1, t))
            ratio = ratio.to(g.dtype)
        else:
            ratio = math.sqrt(1.0 - update.beta2 ** update.step) / (1.0 - update.beta1 ** update.step)
        g = m * (ratio / (v_new.sqrt() + update.eps)).unsqueeze(1)
        ops.sparse_row_update(local, rows, g, dataclasses.replace(update, kind="sgd", max_row_norm=0.0))
    else:
        ops.sparse_row_update(local, rows, g, dataclasses.replace(update, max_row_norm=0.0), s1, s2)
    return partial


def state_like(param: Tensor, shape, dtype: torch.dtype) -> Tensor:
    """Zeroed optimizer state for ``param``: ``[N, D]`` states are sharded as
    the table is, ``[N]`` states (a number per row) replicated on its mesh."""
    if not isinstance(param, DTensor):
        return torch.zeros(shape, dtype=dtype, device=param.device)
    if tuple(shape) == tuple(param.shape):
        return torch.zeros_like(param, dtype=dtype)
    local = torch.zeros(shape, dtype=dtype, device=param.to_local().device)
    return DTensor.from_local(local, param.device_mesh, [Replicate()] * param.device_mesh.ndim, run_check=False)


def _sharding_of(param: Tensor) -> ColumnSharding:
    sh = getattr(param, "_memkernels_sharding", None)
    if sh is None:
        raise RuntimeError("memkernels.distributed: this DTensor is not a value table sharded by shard_values")
    return sh


# ---- sharding a model ----------------------------------------------------------------------


def shard_values(module: nn.Module, mesh: DeviceMesh, *, value_grad: str = "mean",
                 even_tokens: bool = False) -> nn.Module:
    """Shards, in place, every :class:`~memkernels.nn.ValuePool` of ``module``
    by columns over ``mesh`` and returns ``module``.

    ``mesh`` is 1-D (the memory-parallel group of ``P`` ranks) or 2-D
    (``R`` data-parallel replicas x ``P``). Each pool's ``weight`` becomes a
    ``DTensor`` parameter with placement ``Shard(1)`` (``Replicate(), Shard(1)``
    on a 2-D mesh): memory-parallel rank ``r`` keeps columns
    ``[r * D / P, (r + 1) * D / P)`` of every row. On a 2-D mesh every replica
    applies the same updates: the backward gathers the replicas' token
    gradients, indices and weights (not row gradients) over the first
    dimension and runs over all of them. A pool on the ``meta`` device is allocated shard by shard and
    initialised on each rank (normal, std ``D ** -0.5``, from a generator
    seeded by ``torch.initial_seed()`` and the shard's rank); any other pool is
    sharded from rank 0's copy. Layers sharing a pool share its shard.

    Call it on every rank of the mesh, before making optimizers. Afterwards
    the model is used as before, each rank feeding its own tokens (any number,
    zero included): :class:`memkernels.optim.SparseRowOptimizer` and
    ``fuse_value_updates`` work unchanged, and update only the local columns.
    The other parameters are replicated: average their gradients over the
    mesh (DDP, or :func:`all_reduce_dense_grads`).

    Args:
        value_grad: ``"mean"`` or ``"sum"`` (see :class:`ColumnSharding`).
        even_tokens: every rank always feeds the same number of tokens (no
            count exchange; required for a lookup free of host synchronisation
            on CUDA).

    Raises:
        ValueError: a mesh that is neither 1-D nor 2-D, a ``D`` not divisible
            by the memory-parallel size, a pool used by a ``backend="reference"`` layer, a pool
            already sharded on another mesh, a table on another device type.
    """
    if not isinstance(mesh, DeviceMesh):
        raise TypeError(f"shard_values: mesh must be a torch.distributed DeviceMesh; got {type(mesh).__name__}")
    if mesh.ndim not in (1, 2):
        raise ValueError(f"shard_values: the mesh must be 1-D (memory-parallel) or 2-D (replicas x "
                         f"memory-parallel); got a {mesh.ndim}-D mesh")
    if value_grad not in _VALUE_GRAD:
        raise ValueError(f"shard_values: value_grad must be 'mean' or 'sum'; got {value_grad!r}")
    P = mesh.size(mesh.ndim - 1)
    pools: Dict[int, ValuePool] = {}
    for m in module.modules():
        if isinstance(m, ValuePool):
            pools.setdefault(id(m), m)
    if not pools:
        raise ValueError("shard_values: the module has no memkernels.nn.ValuePool to shard")
    for m in module.modules():
        if isinstance(m, ProductKeyMemory) and m.backend != "kernels" and id(m.values) in pools:
            raise ValueError("shard_values: a layer with backend='reference' reads this pool; sharded pools "
                             "need backend='kernels'")
    for pool in pools.values():
        w = pool.weight
        if isinstance(w, DTensor):
            if pool.sharding is None or pool.sharding.mesh != mesh:
                raise ValueError("shard_values: a value pool is already sharded on another mesh")
            continue
        N, D = w.shape
        if D % P:
            raise ValueError(f"shard_values: the value width D={D} must be divisible by the memory-parallel "
                             f"mesh size {P}")
        if w.device.type != "meta" and w.device.type != mesh.device_type:
            raise ValueError(f"shard_values: the value table is on {w.device.type} but the mesh is on "
                             f"{mesh.device_type}")
        sharding = ColumnSharding(mesh, value_grad=value_grad, even_tokens=even_tokens)
        if w.device.type == "meta":
            device = _mesh_device(mesh)
            local = torch.empty(N, D // P, dtype=w.dtype, device=device)
            # Each column shard draws its own numbers (the same on replicas of it).
            seed = (torch.initial_seed() + 0x9E3779B1 * (sharding.rank + 1)) % (1 << 63)
            local.normal_(0.0, D ** -0.5, generator=torch.Generator(device=device).manual_seed(seed))
            dt = DTensor.from_local(local, mesh, sharding.placements, run_check=False)
        else:
            dt = distribute_tensor(w.detach(), mesh, sharding.placements)
            if not dt.to_local().is_contiguous():
                dt = DTensor.from_local(dt.to_local().contiguous(), mesh, sharding.placements, run_check=False)
        param = nn.Parameter(dt, requires_grad=w.requires_grad)
        setattr(param, _VALUES_MARK, True)
        param._memkernels_sharding = sharding
        pool.weight = param
        pool._sharding = sharding
    return module


def _mesh_device(mesh: DeviceMesh) -> torch.device:
    if mesh.device_type == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(mesh.device_type)


def all_reduce_dense_grads(module: nn.Module, mesh: DeviceMesh, op: str = "avg") -> None:
    """Averages (``op="avg"``) or sums the gradients of every parameter of
    ``module`` that is not a sharded value table over every rank of ``mesh``
    (what DDP would do for them), in place: one all-reduce per parameter and
    mesh dimension."""
    if op not in ("avg", "sum"):
        raise ValueError(f"all_reduce_dense_grads: op must be 'avg' or 'sum'; got {op!r}")
    groups = [mesh.get_group(d) for d in range(mesh.ndim)]
    for p in module.parameters():
        if p.grad is None or isinstance(p, DTensor):
            continue
        for group in groups:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM, group=group)
        if op == "avg":
            p.grad.div_(mesh.size())


def sharded_parameter_names(module: nn.Module) -> List[str]:
    """Names of ``module``'s sharded value tables (what DDP must leave alone)."""
    return [name for name, p in module.named_parameters() if isinstance(p, DTensor)]


def data_parallel(module: nn.Module, mesh: DeviceMesh, **ddp_kwargs) -> nn.Module:
    """``DistributedDataParallel`` for the other parameters of a sharded
    model: it averages their gradients over every rank of ``mesh`` and leaves
    the sharded value tables to their own updates. ``ddp_kwargs`` go to DDP
    (``device_ids`` and the like). A 2-D mesh must span the whole job (DDP
    then runs on the default group)."""
    from torch.nn.parallel import DistributedDataParallel

    if mesh.ndim == 1:
        group = mesh.get_group()
    elif mesh.size() == dist.get_world_size():
        group = None
    else:
        raise ValueError("data_parallel: a 2-D mesh must span every rank of the job; wrap the model in DDP "
                         "over a process group of the mesh's ranks yourself")
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, sharded_parameter_names(module))
    return DistributedDataParallel(module, process_group=group, **ddp_kwargs)
