"""The JAX path against the torch path on one device: the same kernels behind
XLA FFI custom calls (``memkernels.jax``, jitted) and behind the torch ops,
so the difference is each framework's per-call overhead (dispatch, FFI
decoding, the backward's workspace allocation) plus, for ``pk_topk``, whose
library computes the half-scores.

    python -m memkernels.bench.jax_path               # the CPU, or the GPU JAX sees first
    python -m memkernels.bench.jax_path --json out.json

Every time is the median wall-clock time of a call that ends when the result
is ready (``block_until_ready`` / ``torch.cuda.synchronize``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Callable, List, Optional

import numpy as np
import torch

import memkernels

# (name, N, D, T, B): a tiny case (overhead-bound) and a larger one.
BAG_CASES = [("tiny", 1024, 64, 16, 8), ("medium", 65536, 256, 2048, 32)]
PK_CASES = [("tiny", 16, 2, 64, 64, 8), ("medium", 1024, 4, 256, 128, 32)]  # name, T, H, n_keys, Dk, k


def _median_us(fn: Callable[[], object], sync: Callable[[], None], reps: int) -> float:
    for _ in range(3):
        fn()
    sync()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def run(reps: int = 50) -> dict:
    import jax
    import jax.numpy as jnp

    from memkernels import jax as mkj

    jdev = jax.devices()[0]
    on_gpu = jdev.platform == "gpu"
    tdev = "cuda" if on_gpu else "cpu"
    tsync = torch.cuda.synchronize if on_gpu else (lambda: None)
    rows = []
    rng = np.random.default_rng(0)
    for name, N, D, T, B in BAG_CASES:
        values = rng.standard_normal((N, D)).astype(np.float32)
        idx = rng.integers(0, N, (T, B)).astype(np.int32)
        w = rng.random((T, B)).astype(np.float32)
        g = rng.standard_normal((T, D)).astype(np.float32)
        jv, ji, jw, jg = (jax.device_put(a, jdev) for a in (values, idx, w, g))
        fwd = jax.jit(mkj.embedding_bag)
        grad = jax.jit(jax.grad(lambda v, w: jnp.vdot(mkj.embedding_bag(v, ji, w), jg), argnums=(0, 1)))
        tv = torch.tensor(values, device=tdev, requires_grad=True)
        tw = torch.tensor(w, device=tdev, requires_grad=True)
        ti, tg = torch.tensor(idx, device=tdev), torch.tensor(g, device=tdev)

        def torch_fwd_bwd():
            tv.grad = tw.grad = None
            memkernels.embedding_bag(tv, ti, tw, check_indices=False).backward(tg)

        last = [None]

        def jax_block():
            jax.block_until_ready(last[0])

        def jax_fwd():
            last[0] = fwd(jv, ji, jw)

        def jax_fwd_bwd():
            last[0] = grad(jv, jw)

        rows.append({"op": "embedding_bag", "case": name, "shape": f"N={N} D={D} T={T} B={B}", "part": "forward",
                     "torch_us": _median_us(lambda: memkernels.embedding_bag(tv.detach(), ti, tw.detach(),
                                                                             check_indices=False), tsync, reps),
                     "jax_us": _median_us(jax_fwd, jax_block, reps)})
        rows.append({"op": "embedding_bag", "case": name, "shape": f"N={N} D={D} T={T} B={B}",
                     "part": "forward+backward", "torch_us": _median_us(torch_fwd_bwd, tsync, reps),
                     "jax_us": _median_us(jax_fwd_bwd, jax_block, reps)})
    for name, T, H, n, Dk, k in PK_CASES:
        q = rng.standard_normal((T, H, Dk)).astype(np.float32)
        keys = rng.standard_normal((H, 2, n, Dk // 2)).astype(np.float32)
        jq, jk = jax.device_put(q, jdev), jax.device_put(keys, jdev)
        f = jax.jit(mkj.pk_topk, static_argnums=2)
        tq, tk = torch.tensor(q, device=tdev), torch.tensor(keys, device=tdev)
        last = [None]

        def jax_pk():
            last[0] = f(jq, jk, k)

        rows.append({"op": "pk_topk", "case": name, "shape": f"T={T} H={H} n_keys={n} Dk={Dk} k={k}",
                     "part": "forward", "torch_us": _median_us(lambda: memkernels.pk_topk(tq, tk, k), tsync, reps),
                     "jax_us": _median_us(jax_pk, lambda: jax.block_until_ready(last[0]), reps)})
    device = torch.cuda.get_device_name() if on_gpu else "cpu"
    return {"device": device, "jax": jax.__version__, "torch": torch.__version__, "rows": rows}


def print_table(result: dict) -> None:
    print(f"JAX path vs torch path on {result['device']} (jax {result['jax']}, torch {result['torch']}), "
          "median wall time per call")
    print(f"  {'op':<14}{'case':<8}{'part':<18}{'torch us':>10}{'jax us':>10}{'jax/torch':>11}  shape")
    for r in result["rows"]:
        print(f"  {r['op']:<14}{r['case']:<8}{r['part']:<18}{r['torch_us']:>10.1f}{r['jax_us']:>10.1f}"
              f"{r['jax_us'] / r['torch_us']:>11.2f}  {r['shape']}")


def main(argv: Optional[List[str]] = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m memkernels.bench.jax_path", description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=50)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    result = run(args.reps)
    print_table(result)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
