"""Devices and processes: torchrun's process group, DataParallel/DDP wrapping, values
shared across ranks."""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import nn

from core.errors import UserError


def rank_device(name: str | None, local_rank: int) -> torch.device:
    """The device of torchrun's process `local_rank` on this machine: its own GPU (cuda:LOCAL_RANK)
    where CUDA is available and `name` (--device) asks for none or for CUDA, else the CPU."""
    if torch.cuda.is_available() and (name is None or name.startswith("cuda")):
        return torch.device(f"cuda:{local_rank}")
    return torch.device("cpu")


def setup_distributed(device_arg: str | None) -> tuple[bool, int, int, torch.device]:
    """Initialise the process group under torchrun. Returns (distributed, rank, world_size, device)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1 or "RANK" not in os.environ:
        return False, 0, 1, torch.device(device_arg) if device_arg else None
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = rank_device(device_arg, local_rank)
    use_cuda = device.type == "cuda"
    if use_cuda:
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return True, rank, world_size, device


def choose_device(device: torch.device | None, gpus: Sequence[int] | None, log) -> torch.device:
    """--device if given, else the first of --gpus on CUDA machines, else the CPU."""
    if device is None:
        device = torch.device(f"cuda:{(gpus or [0])[0]}") if torch.cuda.is_available() else torch.device("cpu")
    if device.type != "cuda" and gpus is not None:
        log(f"warning: running on {device}: --gpus {' '.join(map(str, gpus))} is ignored")
    return device


def any_across_ranks(flag: bool, device: torch.device, distributed: bool) -> bool:
    if not distributed:
        return flag
    tensor = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item() > 0)


def average_across_ranks(metrics: dict[str, float], device: torch.device, distributed: bool) -> dict[str, float]:
    if not distributed:
        return metrics
    keys = sorted(metrics)
    tensor = torch.tensor([metrics[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    tensor /= dist.get_world_size()
    return dict(zip(keys, tensor.tolist()))


def wrap_model(
    model: nn.Module, *, device: torch.device, distributed: bool, gpus: Sequence[int] | None, unused_parameters: bool
) -> nn.Module:
    """DistributedDataParallel under torchrun, DataParallel for several `gpus`, else the model
    (core.parallel.unwrap gives it back).
    `unused_parameters`: some trainable parameters get no gradient (DDP must look for them)."""
    if distributed:
        return nn.parallel.DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=unused_parameters,
        )
    if device.type == "cuda" and gpus is not None and len(gpus) > 1:
        if device != torch.device(f"cuda:{gpus[0]}"):
            raise UserError(
                f"with --gpus {' '.join(map(str, gpus))} the model lives on "
                f"cuda:{gpus[0]}; drop --device {device} or make it cuda:{gpus[0]}"
            )
        return nn.DataParallel(model, device_ids=gpus)
    return model
