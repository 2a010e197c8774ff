"""A small harness for multi-process tests: ``run(fn, world, *args)`` starts
``world`` spawned processes, each joining one process group (gloo by
default; ``backend="nccl"`` puts rank r on CUDA device r) and calling
``fn(rank, world, *args)``; an exception in any of them fails the
caller with that process's traceback. Collectives time out after
``timeout`` seconds, so a hang becomes an error."""

from __future__ import annotations

import datetime
import os
import socket
import traceback

import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank, fn, world, port, timeout, backend, args):
    import torch
    import torch.distributed as dist

    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    if backend == "nccl":
        torch.cuda.set_device(rank)
    dist.init_process_group(backend, rank=rank, world_size=world, timeout=datetime.timedelta(seconds=timeout))
    try:
        fn(rank, world, *args)
        import gc

        # Objects in reference cycles (a sharded model) still holding the
        # process group at interpreter exit made gloo abort the process now
        # and then ("terminate called without an active exception").
        gc.collect()
        dist.barrier()
    except BaseException as e:
        raise RuntimeError(f"rank {rank} of {world} failed:\n{traceback.format_exc()}") from e
    finally:
        dist.destroy_process_group()


def run(fn, world: int, *args, timeout: int = 90, backend: str = "gloo") -> None:
    mp.spawn(_entry, args=(fn, world, free_port(), timeout, backend, args), nprocs=world, join=True)
