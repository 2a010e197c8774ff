"""memkernels from JAX: the core's kernels as XLA FFI custom calls.

    import jax, jax.numpy as jnp
    from memkernels import jax as mkj

    out = mkj.embedding_bag(values, indices, weights)        # [T, D]
    scores, slots = mkj.pk_topk(query, keys, k=32)           # [T, H, k] each

Both follow the torch ops' contracts (``memkernels.embedding_bag``,
``memkernels.pk_topk``), work under ``jax.jit``, differentiate with
``jax.grad`` (``jax.custom_vjp``) and batch with ``jax.vmap`` (a table
shared by the batch is read by one call over all bags). The handlers run on
the CPU and, in a CUDA build, on CUDA devices, on the stream XLA gives them,
with workspace from XLA's allocator and no host synchronisation.

The handler library (``libmemkernels_jax.so``) is built with the package when
jax is installed at build time (``MEMKERNELS_JAX``: docs/jax.md); importing
this module without it, or without jax, raises ``ImportError``.
"""

from __future__ import annotations

import ctypes
import os
from functools import partial
from typing import Tuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["embedding_bag", "pk_topk", "embedding_bag_backward_sparse", "embedding_bag_backward_update",
           "sparse_row_update", "library_path", "platforms"]

_HERE = os.path.dirname(os.path.abspath(__file__))
_LIB_NAME = "libmemkernels_jax.so"


def library_path() -> str:
    """Path of the XLA FFI handler library."""
    return os.path.join(_HERE, _LIB_NAME)


def _load():
    path = library_path()
    if not os.path.exists(path):
        raise ImportError(
            f"memkernels.jax: {path} is missing: this memkernels was built without jax. Install jax, then "
            "reinstall memkernels (pip install --no-build-isolation --force-reinstall --no-deps memkernels), "
            "or set MEMKERNELS_JAX=1 to make the build fail loudly if the handlers cannot be built")
    lib = ctypes.CDLL(path)
    lib.mk_jax_platforms.restype = ctypes.c_int
    return lib


_LIB = _load()
_PLATFORMS = {"cpu": 1, "CUDA": 2}
_TARGETS = ("embedding_bag_fwd", "embedding_bag_bwd", "embedding_bag_bwd_sparse", "embedding_bag_bwd_update",
            "row_update", "pk_select", "pk_topk_bwd")


def platforms() -> Tuple[str, ...]:
    """The XLA platforms this build has handlers for: ``("cpu",)`` or ``("cpu", "CUDA")``."""
    bits = _LIB.mk_jax_platforms()
    return tuple(p for p, bit in _PLATFORMS.items() if bits & bit)


for _platform in platforms():
    _suffix = "cpu" if _platform == "cpu" else "cuda"
    for _name in _TARGETS:
        jax.ffi.register_ffi_target(f"memkernels_{_name}", jax.ffi.pycapsule(getattr(_LIB, f"mk_jax_{_name}_{_suffix}")),
                                    platform=_platform)

# Batch dimensions reach the handlers as leading dimensions (size 1 when an
# operand is not batched), which they understand (csrc/jax/ffi_handlers.cc).
_VMAP = "expand_dims"


def _acc(dtype) -> jnp.dtype:
    return jnp.float64 if jnp.dtype(dtype) == jnp.float64 else jnp.float32


def _float0(x):
    return np.zeros(np.shape(x), dtype=jax.dtypes.float0)


# ---- embedding bag -----------------------------------------------------------------------


def _check_bag(values, indices, weights):
    if values.ndim != 2:
        raise ValueError(f"memkernels.jax.embedding_bag: values must be 2-D [N, D]; got shape {values.shape}")
    if indices.ndim != 2 or weights.shape != indices.shape:
        raise ValueError("memkernels.jax.embedding_bag: indices and weights must be 2-D [T, B] of one shape; got "
                         f"{indices.shape} and {weights.shape}")
    if jnp.dtype(values.dtype) not in (jnp.float32, jnp.float16, jnp.bfloat16, jnp.float64):
        raise TypeError(f"memkernels.jax.embedding_bag: values must be float32, float16, bfloat16 or float64; "
                        f"got {values.dtype}")
    if jnp.dtype(indices.dtype) not in (jnp.int32, jnp.int64):
        raise TypeError(f"memkernels.jax.embedding_bag: indices must be int32 or int64; got {indices.dtype}")


def _bag_forward(values, indices, weights_acc):
    out = jax.ShapeDtypeStruct((indices.shape[0], values.shape[1]), values.dtype)
    return jax.ffi.ffi_call("memkernels_embedding_bag_fwd", out, vmap_method=_VMAP)(values, indices, weights_acc)


@jax.custom_vjp
def embedding_bag(values, indices, weights):
    """``out[t] = sum_j weights[t, j] * values[indices[t, j]]``.

    Args:
        values: ``[N, D]`` float32, float16, bfloat16 or float64.
        indices: ``[T, B]`` int32 or int64 in ``[0, N)``; an index outside is
            skipped (contributes nothing; nothing is checked, nothing syncs).
        weights: ``[T, B]`` float32 or the values' dtype.

    Returns ``[T, D]`` in the values' dtype, accumulated in float32 (float64
    for float64 values). Its gradient: the atomic-free, deterministic
    backward (a dense ``[N, D]`` values gradient, and the weights').
    """
    _check_bag(values, indices, weights)
    return _bag_forward(values, indices, weights.astype(_acc(values.dtype)))


def _bag_fwd(values, indices, weights):
    _check_bag(values, indices, weights)
    w = weights.astype(_acc(values.dtype))
    return _bag_forward(values, indices, w), (values, indices, w, jnp.zeros((), weights.dtype))


def _bag_bwd(res, grad_out):
    values, indices, w, weights_proto = res
    shapes = (jax.ShapeDtypeStruct(values.shape, values.dtype), jax.ShapeDtypeStruct(w.shape, w.dtype))
    grad_values, grad_w = jax.ffi.ffi_call("memkernels_embedding_bag_bwd", shapes, vmap_method=_VMAP)(
        grad_out.astype(values.dtype), values, indices, w)
    return grad_values, _float0(indices), grad_w.astype(weights_proto.dtype)


embedding_bag.defvjp(_bag_fwd, _bag_bwd)


# ---- the sparse backward and the row update ------------------------------------------------


def _int64_type(shape):
    """An int64 result: int64 with x64, else int32 pairs (the low word holds the value)."""
    if jax.config.jax_enable_x64:
        return jax.ShapeDtypeStruct(shape, jnp.int64)
    return jax.ShapeDtypeStruct(tuple(shape[:-1]) + (2 * shape[-1],), jnp.int32)


def _from_int64(x):
    return x if jax.config.jax_enable_x64 else x[..., 0::2]


def _to_int64(x):
    """Row ids for the core (int64): as they are with x64, else int32 pairs."""
    if jax.config.jax_enable_x64:
        return x.astype(jnp.int64)
    x = x.astype(jnp.int32)
    return jnp.stack([x, jnp.where(x < 0, -1, 0).astype(jnp.int32)], axis=-1).reshape(x.shape[:-1] + (-1,))


def embedding_bag_backward_sparse(grad_out, values, indices, weights, capacity=None):
    """The embedding bag's backward with a row-sparse value gradient of
    static shape (the capacity form: nothing waits for the number of rows).

    Returns ``(rows [capacity], row_grads [capacity, D], grad_weights [T, B],
    count)``: the ``count`` distinct rows the bags touched, ascending, then
    ``-1`` rows with zero gradients; row gradients in the accumulation dtype
    (float32; float64 for float64 values). ``capacity`` defaults to
    ``min(N, T * B)``, which always suffices for valid indices. Rows and count
    are int64 with ``jax_enable_x64``, else int32. Under ``vmap`` it runs once
    per batch element.
    """
    _check_bag(values, indices, weights)
    N, D = values.shape
    cap = int(capacity) if capacity is not None else max(1, min(N, indices.size))
    acc = _acc(values.dtype)
    shapes = (_int64_type((cap,)), jax.ShapeDtypeStruct((cap, D), acc), jax.ShapeDtypeStruct(indices.shape, acc),
              _int64_type((1,)))
    rows, grads, gw, count = jax.ffi.ffi_call("memkernels_embedding_bag_bwd_sparse", shapes,
                                              vmap_method="sequential")(
        grad_out.astype(values.dtype), values, indices, weights.astype(acc), capacity=np.int64(cap))
    return _from_int64(rows), grads, gw.astype(weights.dtype), _from_int64(count)[0]


_KINDS = {"sgd": 0, "adam": 1, "adagrad_rowwise": 2, "adam_rowwise": 3}


def _state_shapes(kind, N, D):
    """The states each update kind needs: (state1's shape, state2's shape), None when unused."""
    return {"sgd": (None, None), "adam": ((N, D), (N, D)), "adagrad_rowwise": ((N,), None),
            "adam_rowwise": ((N, D), (N,))}[kind]


def _update_operands(op, update, acc, state1, state2, step, lr_scale, table_shape):
    """The update's operands (states, empty when absent; the run-time step
    and learning-rate scale, empty when absent) and its static attributes.
    The states are checked here: the core cannot see their sizes."""
    if update.kind not in _KINDS:
        raise ValueError(f"memkernels.jax.{op}: unknown update kind {update.kind!r}")
    # [N, D] states may be bfloat16 (kept so, rounded stochastically) when the
    # accumulation dtype is float32; both alike.
    wide = None
    for name, st, shape in zip(("state1", "state2"), (state1, state2), _state_shapes(update.kind, *table_shape)):
        if shape is None:
            continue
        if st is None:
            raise ValueError(f"memkernels.jax.{op}: {update.kind} needs {name} of shape {shape}")
        allowed = {jnp.dtype(acc)}
        if len(shape) == 2:
            allowed = {wide} if wide is not None else ({jnp.dtype(acc), jnp.dtype(jnp.bfloat16)}
                                                       if jnp.dtype(acc) == jnp.float32 else allowed)
        if tuple(st.shape) != shape or jnp.dtype(st.dtype) not in allowed:
            names = " or ".join(sorted(d.name for d in allowed))
            raise ValueError(f"memkernels.jax.{op}: {name} must be {names} of shape {shape} for "
                             f"{update.kind}; got {st.dtype} of shape {tuple(st.shape)}")
        if len(shape) == 2:
            wide = jnp.dtype(st.dtype)
    none = jnp.zeros((0,), acc)
    s1 = none if state1 is None else state1
    s2 = none if state2 is None else state2
    step_arg = jnp.zeros((0,), jnp.int32) if step is None else _to_int64(jnp.reshape(step, (1,)))
    scale_arg = jnp.zeros((0,), jnp.float32) if lr_scale is None else jnp.reshape(lr_scale, (1,)).astype(jnp.float32)
    attrs = dict(kind=np.int64(_KINDS[update.kind]), lr=np.float64(update.lr), beta1=np.float64(update.beta1),
                 beta2=np.float64(update.beta2), eps=np.float64(update.eps),
                 weight_decay=np.float64(update.weight_decay), max_row_norm=np.float64(update.max_row_norm),
                 step=np.int64(update.step), stochastic_rounding=np.int64(bool(update.stochastic_rounding)),
                 seed=np.uint64(update.seed), column_offset=np.int64(update.column_offset))
    return s1, s2, step_arg, scale_arg, attrs


def sparse_row_update(table, rows, grads, update, state1=None, state2=None, *, step=None, lr_scale=None):
    """Applies a :class:`memkernels.RowUpdate` to the given rows of ``table``
    (the core's row-sparse SGD, Adam/AdamW, row-wise Adagrad or row-wise Adam), returning
    ``(table, state1, state2)`` updated. The outputs alias the inputs: under
    ``jax.jit`` with the table and states donated (``donate_argnums``) the
    update happens in place; otherwise XLA copies them first.

    ``rows`` may hold ``-1`` (skipped: the capacity form's padding);
    ``grads`` are ``[U, D]`` in the accumulation dtype. ``update`` is static
    (its hyper-parameters are compiled in); what changes from step to step
    comes as arrays, read by the kernel: ``step`` (a scalar integer array,
    replacing ``update.step``: Adam's bias correction and the stochastic
    rounding bits) and ``lr_scale`` (a scalar float32 array multiplying
    ``update.lr``, a schedule). So a jitted training step compiles once.
    """
    acc = _acc(table.dtype)
    s1, s2, step_arg, scale_arg, attrs = _update_operands("sparse_row_update", update, acc, state1, state2, step,
                                                          lr_scale, table.shape)
    shapes = (jax.ShapeDtypeStruct(table.shape, table.dtype), jax.ShapeDtypeStruct(s1.shape, s1.dtype),
              jax.ShapeDtypeStruct(s2.shape, s2.dtype))
    t, n1, n2 = jax.ffi.ffi_call("memkernels_row_update", shapes, input_output_aliases={0: 0, 3: 1, 4: 2},
                                 vmap_method="sequential")(
        table, _to_int64(rows.reshape(-1, 1)).reshape(-1), grads.astype(acc), s1, s2, step_arg, scale_arg, **attrs)
    return t, (None if state1 is None else n1), (None if state2 is None else n2)


def embedding_bag_backward_update(grad_out, values, indices, weights, update, state1=None, state2=None, *,
                                  step=None, lr_scale=None):
    """The embedding bag's backward fused with ``update`` (one call): the
    touched rows of ``values`` and their optimizer state are updated from
    their fp32 gradients, which never leave the kernels. Returns
    ``(values, state1, state2, grad_weights)``; the first three alias their
    inputs (in place under ``jit`` when donated). ``update``, ``step`` and
    ``lr_scale`` as in :func:`sparse_row_update`. Bitwise the torch op
    ``memkernels.embedding_bag_backward_update``.
    """
    _check_bag(values, indices, weights)
    acc = _acc(values.dtype)
    s1, s2, step_arg, scale_arg, attrs = _update_operands("embedding_bag_backward_update", update, acc, state1,
                                                          state2, step, lr_scale, values.shape)
    shapes = (jax.ShapeDtypeStruct(values.shape, values.dtype), jax.ShapeDtypeStruct(s1.shape, s1.dtype),
              jax.ShapeDtypeStruct(s2.shape, s2.dtype), jax.ShapeDtypeStruct(indices.shape, acc))
    v, n1, n2, gw = jax.ffi.ffi_call("memkernels_embedding_bag_bwd_update", shapes,
                                     input_output_aliases={1: 0, 4: 1, 5: 2}, vmap_method="sequential")(
        grad_out.astype(values.dtype), values, indices, weights.astype(acc), s1, s2, step_arg, scale_arg, **attrs)
    return v, (None if state1 is None else n1), (None if state2 is None else n2), gw.astype(weights.dtype)


# ---- product-key top-k ---------------------------------------------------------------------


def _half_scores(query, keys):
    half = query.shape[-1] // 2
    f32 = jnp.float32
    s1 = jnp.einsum("thd,hnd->thn", query[..., :half], keys[:, 0], preferred_element_type=f32)
    s2 = jnp.einsum("thd,hnd->thn", query[..., half:], keys[:, 1], preferred_element_type=f32)
    return s1.astype(f32), s2.astype(f32)


def _select(s1, s2, k: int):
    T, H, n = s1.shape
    wide = jax.config.jax_enable_x64
    ids_type = jax.ShapeDtypeStruct((T, H, k), jnp.int64) if wide else jax.ShapeDtypeStruct((T, H, 2 * k), jnp.int32)
    scores, ids = jax.ffi.ffi_call("memkernels_pk_select", (jax.ShapeDtypeStruct((T, H, k), jnp.float32), ids_type),
                                   vmap_method=_VMAP)(s1, s2, k=np.int64(k))
    if not wide:
        ids = ids[..., 0::2]  # int64 slot ids below 2**31: their low words
    return scores, ids


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def pk_topk(query, keys, k: int):
    """Product-key top-k: for each token and head, the top ``k`` of the
    ``n_keys**2`` sums of the two half-scores (``query[..., :Dk/2] @ keys[h, 0].T``
    and ``query[..., Dk/2:] @ keys[h, 1].T``), exact.

    Args:
        query: ``[T, H, Dk]``; keys: ``[H, 2, n_keys, Dk/2]`` of its dtype.
        k: ``1 <= k <= n_keys`` (a Python int).

    Returns ``(scores [T, H, k] float32, descending; slots [T, H, k])``:
    slot ids ``i1 * n_keys + i2``, int64 with ``jax_enable_x64``, else int32
    (then ``n_keys**2`` must stay below ``2**31``, ``n_keys <= 46340``). Ties
    break by the smaller index, as the torch op's. Differentiable in
    ``query`` and ``keys`` through the selected pairs.
    """
    return _pk_forward(query, keys, k)


def _pk_forward(query, keys, k):
    if query.ndim != 3 or keys.ndim != 4 or keys.shape[1] != 2 or query.shape[-1] != 2 * keys.shape[-1]:
        raise ValueError(f"memkernels.jax.pk_topk: query must be [T, H, Dk] and keys [H, 2, n_keys, Dk/2]; got "
                         f"{query.shape} and {keys.shape}")
    n = keys.shape[2]
    if not 1 <= k <= n:
        raise ValueError(f"memkernels.jax.pk_topk: k must be in [1, n_keys={n}]; got {k}")
    if not jax.config.jax_enable_x64 and n * n >= 2**31:
        raise ValueError(f"memkernels.jax.pk_topk: n_keys={n} gives slot ids past int32; enable jax_enable_x64")
    s1, s2 = _half_scores(query, keys)
    return _select(s1, s2, k)


def _pk_fwd(query, keys, k):
    scores, ids = _pk_forward(query, keys, k)
    return (scores, ids), (query, keys, ids)


def _pk_bwd(k, res, cotangents):
    # The core's backward (the embedding bag over the key table: atomic-free,
    # deterministic, the torch op's): the slots have no cotangent.
    query, keys, ids = res
    g = cotangents[0].astype(_acc(query.dtype))
    shapes = (jax.ShapeDtypeStruct(query.shape, query.dtype), jax.ShapeDtypeStruct(keys.shape, keys.dtype))
    return tuple(jax.ffi.ffi_call("memkernels_pk_topk_bwd", shapes, vmap_method="sequential")(
        g, query, keys, _to_int64(ids)))


pk_topk.defvjp(_pk_fwd, _pk_bwd)
