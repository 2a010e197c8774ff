"""memkernels bench suite: each op side by side with its PyTorch baselines, in
one process on one device, against ceilings measured at start-up.

    python -m memkernels.bench                      # quick preset on CPU, paper preset on a GPU
    python -m memkernels.bench --preset paper --out results/

For every case it reports the median time, the bytes the op must move (a
written count, see ``embedding_bag_bytes``), the achieved GB/s, the percent of
the measured copy bandwidth, peak memory, and the speedup over each baseline.
It prints a table last and writes ``bench.json`` into ``--out``.

The pieces, each importable on its own (the CLI and the pytest-benchmark
files under ``bench/`` use these names):

- ``harness``: ``time_fn``, ``measure_ceilings``, ``Row``, ``make_row``,
  ``add_speedups``, peak-memory windows;
- ``cases``: the case types, ``PRESETS``, ``SWEEPS`` and the byte/FLOP counts;
- one module per op: ``embedding_bag``, ``pk_topk``, ``layer``,
  ``train_step`` (inputs, implementations, ``bench_*``);
- ``cli``: ``main``, ``RUNNERS``, ``bench_case``, ``run_sweeps``;
  ``plots``: ``draw_plots``, ``draw_comparison`` (matplotlib, the ``plot``
  extra); ``compare``: ``compare``, ``ShapeMismatch``
  (``python -m memkernels.bench compare A.json B.json``).
"""

from .cases import (PRESETS, SWEEPS, EBCase, LayerCase, PKCase, UpdateCase, embedding_bag_bytes, layer_bytes,
                    layer_flops, pk_topk_counts)
from .cli import ERRORS, RUNNERS, bench_case, environment, format_table, main, run_sweeps
from .compare import ShapeMismatch, compare
from .embedding_bag import bench_embedding_bag, embedding_bag_impls, make_inputs, torch_computes_weights_grad
from .harness import BUDGET_S, PROGRESS, Progress, Row, add_speedups, make_row, measure_ceilings, time_fn
from .layer import bench_layer, product_key_memory_layer
from .pk_topk import bench_pk_topk
from .plots import draw_comparison, draw_plots
from .train_step import bench_update, make_train_step

__all__ = [
    "PRESETS", "SWEEPS", "EBCase", "LayerCase", "PKCase", "UpdateCase", "embedding_bag_bytes", "layer_bytes",
    "layer_flops", "pk_topk_counts", "ERRORS", "RUNNERS", "bench_case", "environment", "format_table", "main",
    "run_sweeps", "bench_embedding_bag", "embedding_bag_impls", "make_inputs", "torch_computes_weights_grad",
    "ShapeMismatch", "compare", "PROGRESS", "Progress", "draw_comparison",
    "BUDGET_S", "Row", "add_speedups", "make_row", "measure_ceilings", "time_fn", "bench_layer",
    "product_key_memory_layer", "bench_pk_topk", "draw_plots", "bench_update", "make_train_step",
]
