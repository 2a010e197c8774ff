"""memkernels: fast kernels for memory layers (product-key memory).

Ops (each with CPU and CUDA kernels, autograd and torch.compile support):

- :func:`embedding_bag`: weighted fixed-size embedding bag with an atomic-free,
  deterministic backward (dense or row-sparse value gradient); on CUDA its
  bad indices are reported without synchronising (:func:`check_index_errors`).
- :func:`pk_topk`: product-key top-k scoring (half-scores, per-half top-k,
  k x k candidates, their top-k), differentiable through the selected pairs.
- :func:`sparse_row_update` and :func:`embedding_bag_backward_update`:
  row-sparse optimizer updates (a :class:`RowUpdate`), alone or fused into
  the embedding bag's backward.

Modules: :class:`memkernels.nn.ProductKeyMemory` (Memory+ layer) and
:class:`memkernels.nn.ValuePool` (a value table layers can share).
Optimizer: :class:`memkernels.optim.SparseRowOptimizer` (row-sparse SGD,
Adam/AdamW, row-wise Adagrad; optionally fused into the backward).

See ``docs/`` for the op contracts and ``memkernels.reference`` for the
pure-PyTorch oracle.
"""

import json as _json

import torch as _torch

from ._load import load_extension as _load_extension

_C = _load_extension()  # loads memkernels._C, which registers torch.ops.memkernels

from . import nn, ops, optim, reference  # noqa: E402
from .ops import (  # noqa: E402
    RowUpdate, check_index_errors, embedding_bag, embedding_bag_backward_update, pk_topk, sparse_row_update,
)

__version__ = "0.1.0"

__all__ = ["embedding_bag", "check_index_errors", "pk_topk", "sparse_row_update", "embedding_bag_backward_update",
           "RowUpdate", "nn", "ops", "optim", "build_info", "reference", "__version__"]


def build_info() -> dict:
    """What this installation was built with.

    Returns a dict with ``version``, ``backends`` (``["cpu"]`` or
    ``["cpu", "cuda"]``), ``cuda_archs`` (the TORCH_CUDA_ARCH_LIST compiled),
    ``openmp``, ``torch`` (the torch version compiled against) and ``cuda``
    (torch's CUDA version at build time, empty for CPU-only builds), plus
    ``torch_runtime``, the torch imported now.
    """
    info = _json.loads(_C.build_info())
    info["torch_runtime"] = _torch.__version__
    return info
