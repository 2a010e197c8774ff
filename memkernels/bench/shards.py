"""One device, P column shards: checks and times the per-shard kernels of a
column-sharded value table (memkernels.distributed) at any scale, without a
process group.

Each of the P ranks of a memory-parallel group runs the embedding bag over
every token of the group (P x T) on its D / P columns, then the backward
fused with the row-sparse update on those columns. Here the P shards are
strided column views of one ``[N, D]`` table, run one after the other:

- every shard's forward equals its columns of the unsharded forward, bitwise;
- every shard's fused SGD update equals its columns of the unsharded update,
  bitwise (the per-element rules see the same fp32 column gradients);
- times: one shard's forward and fused AdamW backward against what a rank
  does without sharding (the bag of its own T tokens over all D columns,
  the same bytes of value rows), and each as GB/s of value-row traffic.

    python -m memkernels.bench.shards                 # paper scale on a GPU
    python -m memkernels.bench.shards --preset small  # seconds, on the CPU
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional

import torch

import memkernels
from memkernels.ops import RowUpdate

from .harness import time_fn


@dataclass
class ShardCase:
    N: int  # table rows
    D: int  # table width
    T: int  # tokens per rank
    K: int  # lookups per token (heads x knn)
    P: int  # shards
    dtype: str


PRESETS: Dict[str, ShardCase] = {
    # The paper's shape: 1M slots of 4096, 4 heads x 32, 4096 tokens per GPU, 8 GPUs.
    "paper": ShardCase(N=1 << 20, D=4096, T=4096, K=128, P=8, dtype="bfloat16"),
    "small": ShardCase(N=4096, D=256, T=64, K=16, P=4, dtype="float32"),
}


def _inputs(c: ShardCase, device, seed: int = 0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    tokens = c.P * c.T
    idx = torch.randint(0, c.N, (tokens, c.K), generator=g).to(device)
    w = torch.softmax(torch.randn(tokens, c.K, generator=g), dim=-1).to(device)
    gout = torch.randn(tokens, c.D, generator=g).to(device=device, dtype=getattr(torch, c.dtype))
    return idx, w, gout


def _median_ms(times: List[float]) -> float:
    return statistics.median(times) * 1e3


def run(c: ShardCase, device: torch.device, reps: int = 10) -> dict:
    dtype = getattr(torch, c.dtype)
    if c.D % c.P:
        raise ValueError(f"shards: D={c.D} is not divisible by P={c.P}")
    Dp = c.D // c.P
    g = torch.Generator(device="cpu").manual_seed(1)
    table = (torch.randn(c.N, c.D, generator=g) * c.D ** -0.5).to(device=device, dtype=dtype)
    idx, w, gout = _inputs(c, device)
    cols = [slice(r * Dp, (r + 1) * Dp) for r in range(c.P)]

    # Correctness: forward and fused SGD update, shard by shard, bitwise.
    full_out = memkernels.embedding_bag(table, idx, w, check_indices=False)
    forward_equal = all(torch.equal(memkernels.embedding_bag(table[:, s], idx, w, check_indices=False),
                                    full_out[:, s]) for s in cols)
    del full_out
    sgd = RowUpdate("sgd", lr=0.1)
    updated = table.clone()
    memkernels.embedding_bag_backward_update(gout, updated, idx, w, sgd)
    sharded = table.clone()
    for s in cols:
        memkernels.embedding_bag_backward_update(gout[:, s].contiguous(), sharded[:, s], idx, w, sgd)
    update_equal = torch.equal(updated, sharded)
    del updated, sharded

    # Times: one shard (a strided column view) against an unsharded rank.
    view = table[:, cols[0]]
    gout_shard = gout[:, cols[0]].contiguous()
    mine_idx, mine_w, mine_gout = idx[:c.T], w[:c.T], gout[:c.T].contiguous()
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    adamw = RowUpdate("adam", lr=1e-3, weight_decay=0.01)

    def time_update(grad, values, indices, weights, width):
        # AdamW state for the table (or shard) updated, freed after timing.
        states = [torch.zeros(c.N, width, device=device, dtype=acc) for _ in range(2)]
        return time_fn(lambda i: memkernels.embedding_bag_backward_update(grad, values, indices, weights, adamw,
                                                                          *states), device, reps=reps)

    times = {
        "forward_shard": time_fn(lambda i: memkernels.embedding_bag(view, idx, w, check_indices=False), device,
                                 reps=reps),
        "forward_unsharded": time_fn(lambda i: memkernels.embedding_bag(table, mine_idx, mine_w,
                                                                        check_indices=False), device, reps=reps),
        "backward_update_shard": time_update(gout_shard, view, idx, w, Dp),
        "backward_update_unsharded": time_update(mine_gout, table, mine_idx, mine_w, c.D),
    }
    row_bytes = c.P * c.T * c.K * Dp * table.element_size()  # value-row bytes one shard's forward reads
    out = {"case": asdict(c), "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
           "forward_shard_equal_bitwise": forward_equal, "fused_sgd_shard_equal_bitwise": update_equal,
           "value_row_bytes": row_bytes}
    for name, t in times.items():
        out[name + "_ms"] = _median_ms(t)
    out["forward_gbps_shard"] = row_bytes / (out["forward_shard_ms"] / 1e3) / 1e9
    out["forward_gbps_unsharded"] = row_bytes / (out["forward_unsharded_ms"] / 1e3) / 1e9
    return out


def print_table(r: dict) -> None:
    c = r["case"]
    print(f"column shards on one {r['device']}: N={c['N']}, D={c['D']}, T={c['T']} tokens/rank, K={c['K']}, "
          f"P={c['P']} ({c['D'] // c['P']} columns each), {c['dtype']}")
    print(f"  forward bitwise per shard: {r['forward_shard_equal_bitwise']}; fused SGD bitwise per shard: "
          f"{r['fused_sgd_shard_equal_bitwise']}")
    print(f"  {'part':<26}{'one shard ms':>14}{'unsharded ms':>14}{'ratio':>8}")
    for part in ("forward", "backward_update"):
        a, b = r[f"{part}_shard_ms"], r[f"{part}_unsharded_ms"]
        print(f"  {part:<26}{a:>14.3f}{b:>14.3f}{a / b:>8.2f}")
    print(f"  forward value-row traffic: {r['forward_gbps_shard']:.0f} GB/s per shard, "
          f"{r['forward_gbps_unsharded']:.0f} GB/s unsharded")


def main(argv: Optional[List[str]] = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m memkernels.bench.shards", description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="default: paper on a GPU, small on the CPU")
    p.add_argument("--device", default=None)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--json", default=None, help="write the result here")
    args = p.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    case = PRESETS[args.preset or ("paper" if device.type == "cuda" else "small")]
    result = run(case, device, reps=args.reps)
    print_table(result)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    if not (result["forward_shard_equal_bitwise"] and result["fused_sgd_shard_equal_bitwise"]):
        raise SystemExit("shards: a shard's result differs from its columns of the unsharded result")
    return result


if __name__ == "__main__":
    main()
