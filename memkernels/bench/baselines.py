"""The speed baselines a user would pick instead of memkernels, written here
(the paper's released code is the design, not the source).

- :func:`pk_topk_paper_style`: product-key top-k as the paper's released
  layer computes it, in the inputs' dtype (bf16 half-scores, no upcast):
  one einsum for both halves' scores, a top-k per half, the k x k candidate
  sums and slot ids, a top-k of those, a gather. Its ``torch.compile`` is
  :func:`compiled`'s business. ``memkernels.reference.pk_topk`` is the
  oracle (fp32 scores, the project's tie rule), not a speed baseline.

Selection ties are broken by ``torch.topk``, not by the project's rule, so
the slot ids may differ from memkernels' where scores tie; the scores are
those of the same candidates up to the half-scores' rounding.
"""

from __future__ import annotations

from typing import Callable, Dict, Tuple

import torch
from torch import Tensor


def pk_topk_paper_style(query: Tensor, keys: Tensor, k: int) -> Tuple[Tensor, Tensor]:
    """``query [T, H, Dk]``, ``keys [H, 2, n, Dk/2]`` -> (scores ``[T, H, k]``,
    slot ids ``[T, H, k]`` int64, ``i * n + j``), all arithmetic in the
    inputs' dtype."""
    T, H, Dk = query.shape
    n = keys.shape[2]
    halves = query.view(T, H, 2, Dk // 2)
    scores = torch.einsum("thcd,hcnd->thcn", halves, keys)  # [T, H, 2, n], the inputs' dtype
    s1, i1 = scores[:, :, 0].topk(k, dim=-1)
    s2, i2 = scores[:, :, 1].topk(k, dim=-1)
    cand = (s1.unsqueeze(-1) + s2.unsqueeze(-2)).reshape(T, H, k * k)
    ids = (i1.unsqueeze(-1) * n + i2.unsqueeze(-2)).reshape(T, H, k * k)
    best_scores, best = cand.topk(k, dim=-1)
    return best_scores, ids.gather(-1, best)


_COMPILED: Dict[Callable, Callable] = {}


def compiled(fn: Callable) -> Callable:
    """``torch.compile(fn)`` (default mode, static shapes), made once per
    function; the first call of each shape compiles (time it after warm-up)."""
    if fn not in _COMPILED:
        _COMPILED[fn] = torch.compile(fn, dynamic=False)
    return _COMPILED[fn]
