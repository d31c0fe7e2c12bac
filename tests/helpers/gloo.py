"""Run a function on a few CPU processes joined in a gloo process group, as the multi-process tests need.

``run_on_ranks(worker, 2, *args)`` calls ``worker(rank, world_size, *args)`` in 2 spawned processes (one torch
thread each) that share a default process group on a free local port; an exception in any rank fails the call.
``worker`` must be importable (a module-level function), as ``torch.multiprocessing.spawn`` pickles it by name.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_on_ranks(worker: Callable[..., Any], world_size: int, *args: Any) -> None:
    """``worker(rank, world_size, *args)`` on ``world_size`` gloo processes; returns when every rank has."""
    mp.spawn(_join_and_run, args=(worker, world_size, free_port(), args), nprocs=world_size, join=True)


def _join_and_run(rank: int, worker: Callable[..., Any], world_size: int, port: int, args: tuple[Any, ...]) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        worker(rank, world_size, *args)
        dist.barrier()  # no rank tears the group down while another still talks in it
    finally:
        dist.destroy_process_group()
    # A clean exit skips interpreter teardown, where a gloo/FSDP2 helper thread still joinable now and then made a
    # finished rank abort ("terminate called without an active exception", SIGABRT) and failed a passing run.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
