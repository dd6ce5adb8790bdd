"""Data parallelism over the processes of a ``torch.distributed`` job (``torchrun``, ``accelerate launch``).

A command started under ``torchrun --nproc-per-node N`` (one or several nodes) finds ``WORLD_SIZE`` and
``RANK`` in its environment; :func:`ranks` joins the process group on first use (``nccl`` when each rank has a
GPU, else ``gloo``) and returns this process's :class:`Ranks`. Work is split by whole units (a store's
(language, shard) pairs, a statistic's languages) so that each unit is computed exactly as a single process
computes it: the result of N processes equals the single-process result bit for bit. Outside such a job
:func:`ranks` is one process of one, and nothing here calls ``torch.distributed``.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence, TypeVar

import torch
import torch.distributed as dist

from probes.errors import XlalignError

T = TypeVar("T")
_ALONE: list[bool] = []  # inside alone(): this process works as a single one


class RankError(XlalignError):
    """A distributed job that cannot go on: what the main rank raised, raised again on every other rank (so
    none waits for it forever), or a job started with WORLD_SIZE > 1 that cannot be split."""


@dataclass(frozen=True)
class Ranks:
    """This process's place in the job: ``rank`` among ``world`` processes (rank 0 is the main one)."""

    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def mine(self, units: Sequence[T]) -> list[T]:
        """This rank's share of ``units`` (every ``world``-th, from ``rank``): the shares cover each unit once."""
        return list(units[self.rank :: self.world])

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def on_main(self, fn: Callable[[], Any]) -> None:
        """Run ``fn`` on the main rank only; the others wait for it, and raise if it raised."""
        error = None
        if self.is_main:
            try:
                fn()
            except Exception as caught:  # re-raised below, after the other ranks learn of it
                error = caught
        if self.world > 1:
            message = [None if error is None else f"{type(error).__name__}: {error}"]
            dist.broadcast_object_list(message, src=0)
            if message[0] is not None and error is None:
                raise RankError(f"rank 0 failed: {message[0]}")
        if error is not None:
            raise error

    def gather(self, value: T) -> list[T]:
        """Every rank's ``value``, in rank order, on every rank (any picklable object)."""
        if self.world == 1:
            return [value]
        values: list = [None] * self.world
        dist.all_gather_object(values, value)
        return values


def ranks() -> Ranks:
    """This process's :class:`Ranks`: the process group it is in, joined from torchrun's environment if needed
    (one process of one inside :func:`alone`)."""
    if _ALONE:
        return Ranks()
    if dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size())
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Ranks()
    if not dist.is_available():
        raise RankError(f"WORLD_SIZE={world} but this torch build has no torch.distributed")
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank())  # nccl's object collectives run on the current device
    dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return Ranks(dist.get_rank(), dist.get_world_size())


def leave() -> None:
    """Leave the process group at the end of a job (nothing outside one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def local_rank() -> int:
    """This process's index on its node (``LOCAL_RANK``; 0 outside a distributed job): its GPU's index."""
    return int(os.environ.get("LOCAL_RANK", "0"))


@contextmanager
def alone() -> Iterator[None]:
    """Inside the block this process works as a single one (the main rank finishing a job the others left)."""
    _ALONE.append(True)
    try:
        yield
    finally:
        _ALONE.pop()
