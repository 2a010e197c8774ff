"""End-to-end demo: memory layers store facts cheaply.

    python -m memkernels.demo            # about 18 s on a 2-core AMD EPYC VM

Trains two small models on an embedded synthetic factual-recall task: many
random (subject, relation) -> object facts. Inputs and outputs are fixed
random embeddings (not trained), so whatever the model learns it must store
in its one block:

- dense: a feed-forward block (dim -> hidden -> dim, GELU);
- memory: a ``ProductKeyMemory`` (Memory+) block with about the same FLOPs
  per token but a large, sparsely read value table.

It prints progress while training, then both models' recall accuracy over
all facts, their trainable parameter counts and forward FLOPs per token. The
run is seeded and reproducible.

    python -m memkernels.demo --world-size 2   # the memory model, sharded

trains the memory model in ``--world-size`` processes (gloo, on the CPU) with
its value table sharded by columns (:func:`memkernels.distributed.shard_values`):
each rank takes its share of every batch, the value table is updated per
shard by the fused row-sparse Adam, and the other parameters' gradients are
averaged over the ranks.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .nn import ProductKeyMemory, dense_parameters, param_groups, value_parameters


@dataclass
class Task:
    subjects: int = 4096
    relations: int = 4
    objects: int = 512
    dim: int = 64


class FactModel(nn.Module):
    """x = E_s[s] + E_r[r] (frozen) -> x + block(norm(x)) -> logits against frozen E_o."""

    def __init__(self, task: Task, block: nn.Module, seed: int):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        d = task.dim
        self.register_buffer("subj", torch.randn(task.subjects, d, generator=g) / math.sqrt(d))
        self.register_buffer("rel", torch.randn(task.relations, d, generator=g) / math.sqrt(d))
        self.register_buffer("obj", torch.randn(task.objects, d, generator=g) / math.sqrt(d))
        self.norm_in = nn.LayerNorm(d)
        self.block = block
        self.norm_out = nn.LayerNorm(d)
        self.scale = nn.Parameter(torch.tensor(4.0))

    def forward(self, s: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        x = self.subj[s] + self.rel[r]
        h = x + self.block(self.norm_in(x))
        return self.scale * self.norm_out(h) @ self.obj.T


class DenseFFN(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.up = nn.Linear(dim, hidden)
        self.down = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.down(F.gelu(self.up(x)))


def ffn_flops(dim: int, hidden: int) -> int:
    return 2 * 2 * dim * hidden


def trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def make_facts(task: Task, seed: int):
    g = torch.Generator().manual_seed(seed)
    s = torch.arange(task.subjects).repeat_interleave(task.relations)
    r = torch.arange(task.relations).repeat(task.subjects)
    o = torch.randint(0, task.objects, (s.numel(),), generator=g)
    return s, r, o


@torch.no_grad()
def accuracy(model: nn.Module, s, r, o, batch: int = 4096, mesh=None) -> float:
    """Recall over all facts; with a mesh, each rank scores its share."""
    model.eval()
    rank, world = (mesh.get_local_rank(), mesh.size()) if mesh is not None else (0, 1)
    hits = torch.zeros((), dtype=torch.int64)
    for i in range(0, s.numel(), batch):
        part = torch.arange(i, min(i + batch, s.numel())).tensor_split(world)[rank]
        hits += (model(s[part], r[part]).argmax(-1) == o[part]).sum()
    if mesh is not None:
        torch.distributed.all_reduce(hits, group=mesh.get_group())
    model.train()
    return hits.item() / s.numel()


def train(name: str, model: nn.Module, facts, epochs: int, batch: int, lr: float, value_lr: float, seed: int,
          log_every: int, mesh=None) -> dict:
    """Adam over every batch. With a mesh (a sharded model): each rank takes
    its share of every batch, the value tables get the fused row-sparse Adam
    per shard, and the other parameters' gradients are averaged."""
    s, r, o = facts
    if mesh is None:
        rank, world = 0, 1
        opts = [torch.optim.Adam(param_groups(model, lr=lr, weight_decay=0.0, value_lr=value_lr))]
    else:
        from .distributed import all_reduce_dense_grads
        from .optim import SparseRowOptimizer

        rank, world = mesh.get_local_rank(), mesh.size()
        values = SparseRowOptimizer(list(value_parameters(model)), "adam", lr=value_lr)
        for m in model.modules():
            if isinstance(m, ProductKeyMemory):
                m.fuse_value_updates(values)
        opts = [torch.optim.Adam(dense_parameters(model), lr=lr), values]
    steps_per_epoch = math.ceil(s.numel() / batch)
    total = epochs * steps_per_epoch
    scheds = [torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5 * (1 + math.cos(math.pi * step / total)))
              for opt in opts]
    g = torch.Generator().manual_seed(seed)
    t0 = time.time()
    for epoch in range(epochs):
        perm = torch.randperm(s.numel(), generator=g)
        for i in range(0, s.numel(), batch):
            idx = perm[i:i + batch].tensor_split(world)[rank]
            loss = F.cross_entropy(model(s[idx], r[idx]), o[idx])
            for opt in opts:
                opt.zero_grad(set_to_none=True)
            loss.backward()
            if mesh is not None:
                all_reduce_dense_grads(model, mesh)
            for opt, sched in zip(opts, scheds):
                opt.step()
                sched.step()
        if (epoch + 1) % log_every == 0 or epoch + 1 == epochs:
            acc = accuracy(model, s, r, o, mesh=mesh)
            if rank == 0:
                print(f"  [{name:>6}] epoch {epoch + 1:3d}/{epochs}  loss {loss.item():6.3f}  "
                      f"recall {acc * 100:5.1f}%  ({time.time() - t0:5.1f}s)", flush=True)
    return {"recall": accuracy(model, s, r, o, mesh=mesh), "seconds": time.time() - t0}


def _memory_block(d: int) -> ProductKeyMemory:
    return ProductKeyMemory(d, n_keys=64, heads=2, knn=8, k_dim=32, v_dim=d)


def _sharded_worker(rank: int, world: int, port: int, args, out_path: str) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from .distributed import shard_values

    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=120))
    try:
        mesh = init_device_mesh("cpu", (world,))
        task = Task(subjects=args.facts, relations=args.relations, objects=args.objects)
        facts = make_facts(task, args.seed)
        torch.manual_seed(args.seed)
        memory = _memory_block(task.dim)
        torch.manual_seed(args.seed)
        model = FactModel(task, memory, args.seed)
        shard_values(model, mesh)
        result = train("memory", model, facts, args.epochs, args.batch, 3e-3, 3e-2, args.seed,
                       log_every=max(1, args.epochs // 8), mesh=mesh)
        result["params"] = trainable(model)
        result["flops"] = memory.flops_per_token()
        if rank == 0:
            with open(out_path, "w") as f:
                json.dump(result, f)
        import gc

        gc.collect()  # free the sharded model before its process group goes
        dist.barrier()
    finally:
        dist.destroy_process_group()


def main_sharded(args) -> dict:
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    print(f"memkernels demo, sharded: {args.facts * args.relations} random facts, the memory model's value table "
          f"sharded by columns over {args.world_size} processes (gloo, CPU), seed {args.seed}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        out_path = os.path.join(tmp, "result.json")
        mp.spawn(_sharded_worker, args=(args.world_size, port, args, out_path), nprocs=args.world_size, join=True)
        with open(out_path) as f:
            result = json.load(f)
    result["world_size"] = args.world_size
    print()
    print(f"memory model, {args.world_size} column shards: recall {result['recall'] * 100:.1f}%, "
          f"{result['params']:,} trainable parameters, {result['flops']:,} FLOPs/token, "
          f"{result['seconds']:.1f} s")
    return {"memory": result}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m memkernels.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--facts", type=int, default=4096, help="subjects (each has --relations facts)")
    p.add_argument("--relations", type=int, default=4)
    p.add_argument("--objects", type=int, default=512)
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    p.add_argument("--world-size", type=int, default=1,
                   help="train only the memory model, its value table sharded over this many processes")
    args = p.parse_args(argv)
    if args.world_size < 1:
        p.error("--world-size must be at least 1")
    if args.world_size > 1:
        return main_sharded(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    task = Task(subjects=args.facts, relations=args.relations, objects=args.objects)
    facts = make_facts(task, args.seed)
    d = task.dim
    memory = _memory_block(d)
    mem_flops = memory.flops_per_token()
    hidden = max(1, round(mem_flops / (2 * 2 * d)))  # the dense block at the same FLOPs
    torch.manual_seed(args.seed)
    dense_model = FactModel(task, DenseFFN(d, hidden), args.seed)
    torch.manual_seed(args.seed)
    memory_model = FactModel(task, memory, args.seed)

    n = facts[0].numel()
    print(f"memkernels demo: {n} random facts ({task.subjects} subjects x {task.relations} relations -> "
          f"{task.objects} objects), dim {d}, seed {args.seed}")
    print(f"  dense  block: FFN {d}->{hidden}->{d}, {ffn_flops(d, hidden)} FLOPs/token")
    print(f"  memory block: ProductKeyMemory {memory.n_keys ** 2} slots, heads {memory.heads}, knn {memory.knn}, "
          f"k_dim {memory.k_dim}, {mem_flops} FLOPs/token")
    results = {}
    for name, model, lr, value_lr in (("dense", dense_model, 3e-3, 3e-3), ("memory", memory_model, 3e-3, 3e-2)):
        print(f"training {name} ...", flush=True)
        results[name] = train(name, model, facts, args.epochs, args.batch, lr, value_lr, args.seed,
                              log_every=max(1, args.epochs // 8))
        results[name]["params"] = trainable(model)
    results["dense"]["flops"] = ffn_flops(d, hidden)
    results["memory"]["flops"] = mem_flops

    print()
    print(f"{'model':<8}{'recall':>9}{'trainable params':>18}{'FLOPs/token':>13}{'train s':>9}")
    for name in ("dense", "memory"):
        r = results[name]
        print(f"{name:<8}{r['recall'] * 100:>8.1f}%{r['params']:>18,}{r['flops']:>13,}{r['seconds']:>9.1f}")
    gain = results["memory"]["recall"] - results["dense"]["recall"]
    print(f"the memory layer recalls {gain * 100:+.1f} points more facts at "
          f"{results['memory']['flops'] / results['dense']['flops']:.2f}x the dense block's FLOPs")
    return results


if __name__ == "__main__":
    main()
