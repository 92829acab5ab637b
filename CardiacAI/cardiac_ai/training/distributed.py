"""Data-parallel training across processes started by ``torchrun``.

``torchrun --nproc_per_node N train.py`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT`` in each process; :class:`~cardiac_ai.training.engine.Trainer` reads them through
:func:`setup_distributed` and needs no other change. The process group uses ``nccl`` on CUDA and ``gloo`` on the
CPU. Only rank 0 writes checkpoints and logs; every rank ends with the same weights.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

from ..errors import InputError

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = [
    "DistributedContext",
    "distributed_environment",
    "setup_distributed",
    "device_for_rank",
    "wrap_model",
    "barrier",
    "broadcast_object",
    "all_reduce_mean",
    "cleanup_distributed",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands in a (possibly single-process) run.

    Attributes
    ----------
    rank, world_size, local_rank : int
        Global rank, number of processes, rank on this machine (the CUDA device index).
    backend : str or None
        ``"gloo"`` or ``"nccl"``; None for a single process.
    owns_group : bool
        True when :func:`setup_distributed` created the process group (and :func:`cleanup_distributed` destroys it).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    owns_group: bool = False

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files."""
        return self.rank == 0


def distributed_environment(environ: Mapping[str, str] | None = None) -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from torchrun's variables; ``(0, 1, 0)`` when they are absent.

    Raises
    ------
    InputError
        If the variables are not integers or are inconsistent (rank outside ``0 .. world_size - 1``).
    """
    environ = os.environ if environ is None else environ
    try:
        world_size = int(environ.get("WORLD_SIZE", "1"))
        rank = int(environ.get("RANK", "0"))
        local_rank = int(environ.get("LOCAL_RANK", str(rank)))
    except ValueError as error:
        raise InputError(f"RANK, WORLD_SIZE and LOCAL_RANK must be integers: {error}. Launch with torchrun.") from error
    if world_size < 1 or not 0 <= rank < world_size or local_rank < 0:
        raise InputError(
            f"Inconsistent distributed environment: RANK={rank}, WORLD_SIZE={world_size}, LOCAL_RANK={local_rank}. "
            "Launch with torchrun, which sets them."
        )
    return rank, world_size, local_rank


def setup_distributed(device: "torch.device", *, environ: Mapping[str, str] | None = None) -> DistributedContext:
    """Join (or create) the process group when running under torchrun; a single-process context otherwise.

    An already initialised default group (e.g. from ``torch.multiprocessing.spawn``) is used as is. Otherwise, when
    ``WORLD_SIZE > 1``, the group is created from the environment (``init_method="env://"``) with ``nccl`` for
    CUDA devices and ``gloo`` for the CPU.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        rank, world_size = dist.get_rank(), dist.get_world_size()
        _, _, local_rank = distributed_environment({**(environ or os.environ), "RANK": str(rank),
                                                     "WORLD_SIZE": str(world_size)})
        return DistributedContext(rank, world_size, local_rank, dist.get_backend(), owns_group=False)
    rank, world_size, local_rank = distributed_environment(environ)
    if world_size == 1:
        return DistributedContext()
    if not dist.is_available():
        raise InputError("WORLD_SIZE > 1 but this torch build has no torch.distributed support.")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        import torch

        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world_size)
    log.info("Joined process group: rank %d of %d (%s).", rank, world_size, backend)
    return DistributedContext(rank, world_size, local_rank, backend, owns_group=True)


def device_for_rank(device: "torch.device", context: DistributedContext) -> "torch.device":
    """On CUDA under DDP each process uses ``cuda:LOCAL_RANK``; otherwise ``device`` unchanged."""
    import torch

    if context.is_distributed and device.type == "cuda":
        return torch.device("cuda", context.local_rank)
    return device


def wrap_model(network: "nn.Module", context: DistributedContext, device: "torch.device") -> "nn.Module":
    """``DistributedDataParallel(network)`` when distributed, else ``network``; the network must be on ``device``."""
    if not context.is_distributed:
        return network
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(network, device_ids=device_ids)


def barrier(context: DistributedContext) -> None:
    """Wait for every rank (no-op for a single process)."""
    if context.is_distributed:
        import torch.distributed as dist

        dist.barrier()


def broadcast_object(value: Any, context: DistributedContext) -> Any:
    """Rank 0's ``value`` on every rank (picklable objects; no-op for a single process)."""
    if not context.is_distributed:
        return value
    import torch.distributed as dist

    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def all_reduce_mean(value: float, context: DistributedContext) -> float:
    """Mean of ``value`` over ranks (``value`` itself for a single process)."""
    if not context.is_distributed:
        return float(value)
    import torch
    import torch.distributed as dist

    device = torch.device("cuda", context.local_rank) if context.backend == "nccl" else torch.device("cpu")
    tensor = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return float(tensor.item()) / context.world_size


def cleanup_distributed(context: DistributedContext) -> None:
    """Destroy the process group if :func:`setup_distributed` created it."""
    if context.owns_group:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
