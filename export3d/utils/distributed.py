"""Process-group set-up for ``torchrun --nproc_per_node=N -m export3d.train`` (NCCL on CUDA, gloo on CPU).

A plain ``python -m export3d.train`` is a world of one and needs no process group.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(device: str | None, select: bool = True) -> torch.device:
    """``None``/``"auto"``: CUDA when available, else CPU. Unknown or unavailable devices fail clearly.

    With ``select`` a CUDA device with an index (``cuda:N``) also becomes torch's current device, so that
    everything that launches on the current device (Triton kernels, cuDNN / cuBLAS handles, xformers)
    runs on GPU N and not on GPU 0 with GPU N's tensors.
    """
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"--device: {device!r} is not a device (expected cpu, cuda or cuda:N)") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device: {device!r} requested but CUDA is not available on this machine")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"--device: {device!r} is not supported (expected cpu, cuda or cuda:N)")
    if dev.type == "cuda" and dev.index is not None:
        if dev.index >= torch.cuda.device_count():
            raise ValueError(f"--device: {device!r} requested but this machine has {torch.cuda.device_count()} GPU(s)")
        if select:
            torch.cuda.set_device(dev)
    return dev


def init_distributed(device: str | None) -> DistInfo:
    """Join the process group when launched by torchrun (``WORLD_SIZE > 1``), else return a world of one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(0, 1, 0, resolve_device(device))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    base = resolve_device(device, select=False)  # under torchrun each process takes the GPU of its local rank
    if base.type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
        backend = "nccl"
    else:
        dev, backend = base, "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return DistInfo(rank, world, local_rank, dev)


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    if info.distributed and dist.is_initialized():
        dist.destroy_process_group()
