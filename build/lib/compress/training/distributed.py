"""Multi-process data-parallel helpers (launched by ``torchrun``); every function is a no-op in one process.

Batch convention: :func:`distributed_loader` gives each rank ``batch_size // world_size`` samples per step, so
the *global* batch (and therefore the learning-rate schedule and the loss curve) equals a single-process run
of the same recipe. DDP averages gradients over ranks, which equals the gradient of the mean loss over the
global batch.
"""
from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from ..errors import CompressError

__all__ = ["init_distributed", "is_distributed", "rank", "world_size", "is_main", "barrier", "broadcast_object",
           "all_reduce_sum", "all_gather_object", "broadcast_module", "wrap_ddp", "unwrap", "destroy",
           "distributed_loader"]


def init_distributed(backend: str | None = None) -> tuple[int, int, int]:
    """Join the process group described by torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``).

    Args:
        backend: ``"nccl"`` or ``"gloo"``; default NCCL when CUDA is available (selecting ``cuda:LOCAL_RANK``),
            gloo otherwise. Pass ``"gloo"`` to train on CPU on a machine that has GPUs.

    Returns:
        ``(rank, world_size, local_rank)``; ``(0, 1, 0)`` when not launched by torchrun.
    """
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return 0, 1, 0
    rank_, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))
    if not dist.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        if backend == "nccl":
            torch.cuda.set_device(local)
            dist.init_process_group("nccl", device_id=torch.device("cuda", local))
        else:
            dist.init_process_group(backend)
    return rank_, world, local


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """True on rank 0 (the process that writes files)."""
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Return rank ``src``'s ``obj`` on every rank (picklable objects)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj``, indexed by rank."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place and return it."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_module(model: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers (e.g. BatchNorm running stats) to every rank."""
    if not is_distributed():
        return
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            dist.broadcast(tensor.data, src=src)


def wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """Wrap in :class:`DistributedDataParallel` when distributed (parameters are broadcast from rank 0)."""
    if not is_distributed() or isinstance(model, DistributedDataParallel):
        return model
    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside a DDP wrapper (or ``model`` itself)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def destroy() -> None:
    """Leave the process group (call once at the end of a torchrun job).

    All ranks meet at a barrier first: a rank tearing gloo down while a peer still talks to it can abort.
    """
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def distributed_loader(loader: DataLoader, *, shuffle: bool | None = None, seed: int = 0) -> DataLoader:
    """Rebuild ``loader`` so each rank reads its own shard through a :class:`DistributedSampler`.

    Args:
        loader: a map-style DataLoader with an integer ``batch_size``.
        shuffle: shuffle per epoch (call ``sampler.set_epoch``); default: whether ``loader`` shuffles.
        seed: the sampler's seed; the order of epoch ``e`` depends only on ``(seed, e)``.

    Returns:
        ``loader`` itself when not distributed, else a DataLoader with per-rank batch
        ``loader.batch_size // world_size`` (the global batch is unchanged).

    Raises:
        CompressError: the batch size is not divisible by the world size.
    """
    if not is_distributed() or isinstance(loader.sampler, DistributedSampler):
        return loader
    world = world_size()
    if loader.batch_size is None or loader.batch_size % world:
        raise CompressError(f"data: batch size {loader.batch_size} must be divisible by the number of processes "
                            f"({world}) so that the global batch matches a single-process run")
    shuffle = isinstance(loader.sampler, RandomSampler) if shuffle is None else shuffle
    sampler = DistributedSampler(loader.dataset, num_replicas=world, rank=rank(), shuffle=shuffle, seed=seed,
                                 drop_last=loader.drop_last)
    return DataLoader(loader.dataset, batch_size=loader.batch_size // world, sampler=sampler,
                      num_workers=loader.num_workers, collate_fn=loader.collate_fn, pin_memory=loader.pin_memory,
                      drop_last=loader.drop_last, timeout=loader.timeout, worker_init_fn=loader.worker_init_fn,
                      persistent_workers=loader.persistent_workers if loader.num_workers else False,
                      prefetch_factor=loader.prefetch_factor if loader.num_workers else None,
                      generator=loader.generator)
