"""torch.distributed helpers. The same command runs alone or under ``torchrun``.

``torchrun --nproc_per_node=N`` sets RANK / WORLD_SIZE / LOCAL_RANK; :func:`init` then starts a
process group (NCCL on CUDA, gloo on the CPU). Without those variables everything here is a
no-op for a single process, so no code path needs to ask "am I distributed?".
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist


def init(device_name: str = "auto") -> tuple[int, int, torch.device]:
    """Start the process group if launched by torchrun. Returns (rank, world_size, device)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = (
        torch.cuda.is_available() if device_name == "auto" else device_name.startswith("cuda")
    )
    if use_cuda:
        if world > 1:
            device = torch.device(f"cuda:{local}")
        else:
            device = torch.device("cuda" if device_name == "auto" else device_name)
            if device.index is None:  # "cuda": the current device, named (set_device needs it)
                device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return rank, world, device


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_dist() else 0


def world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_dist():
        dist.barrier()


def all_reduce_mean(values: dict[str, float]) -> dict[str, float]:
    """Average a dict of floats over all ranks (same keys on every rank)."""
    if not is_dist() or not values:
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    t /= world_size()
    return {k: float(v) for k, v in zip(keys, t.cpu().tolist())}


def all_reduce_grads(params: list[torch.nn.Parameter]) -> None:
    """Average the gradients of parameters that DDP does not manage (e.g. loss centres)."""
    if not is_dist():
        return
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= world_size()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Send a picklable object from ``src`` to every rank (e.g. pseudo-labels made on rank 0)."""
    if not is_dist():
        return obj
    box = [obj if rank() == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_cat(t: torch.Tensor) -> torch.Tensor:
    """Concatenate ``t`` (same shape on every rank) over ranks, in rank order (every rank
    gets the same result). One process: ``t`` itself."""
    if not is_dist():
        return t
    parts = [torch.empty_like(t) for _ in range(world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def cleanup() -> None:
    if is_dist():
        dist.destroy_process_group()
