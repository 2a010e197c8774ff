"""A small harness for multi-process tests: ``run(fn, world, *args)`` starts
``world`` spawned processes, each joining one gloo process group on the CPU
and calling ``fn(rank, world, *args)``; an exception in any of them fails the
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


def _entry(rank, fn, world, port, timeout, args):
    import torch
    import torch.distributed as dist

    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=timeout))
    try:
        fn(rank, world, *args)
        import gc

        gc.collect()
        dist.barrier()
    except BaseException as e:
        raise RuntimeError(f"rank {rank} of {world} failed:\n{traceback.format_exc()}") from e
    finally:
        dist.destroy_process_group()


def run(fn, world: int, *args, timeout: int = 90) -> None:
    mp.spawn(_entry, args=(fn, world, free_port(), timeout, args), nprocs=world, join=True)
