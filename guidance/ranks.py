"""Process ranks under `accelerate launch` / torchrun (RANK, WORLD_SIZE), and a barrier that works on CPUs."""

from __future__ import annotations

import os


def process_index() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside a multi-process launch."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def barrier() -> None:
    """Wait for every rank (a gloo process group works on CPUs and GPUs alike)."""
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    dist.barrier()
