"""Data parallelism: the process group, and the few collectives the loop needs.

Workers are started by torchrun's launcher (`kubetune.trainer.launch`), which sets
RANK, LOCAL_RANK and WORLD_SIZE; a single-process run has none of them and uses
`Dist.single()`, whose collectives are no-ops. The model is wrapped in
`DistributedDataParallel` by the loop; this module keeps torch.distributed out of
everything else.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

# How long a collective may wait for the slowest rank: long enough for rank 0 to
# upload a checkpoint or export while the others wait at a barrier.
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=60)

T = TypeVar("T")


def launched_by_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @classmethod
    def single(cls) -> Dist:
        return cls()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum a tensor over ranks, in place (and return it)."""
        if self.active:
            import torch.distributed as td

            td.all_reduce(tensor, op=td.ReduceOp.SUM)
        return tensor

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every rank when it is True on any: for decisions all ranks must share."""
        if not self.active:
            return flag
        import torch

        value = torch.tensor([1.0 if flag else 0.0], device=device)
        return bool(self.sum(value).item() > 0)

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as td

            td.barrier()

    def broadcast_object(self, value: T) -> T:
        """Rank 0's value, on every rank (for small Python objects such as a resume decision)."""
        if not self.active:
            return value
        import torch.distributed as td

        holder = [value]
        td.broadcast_object_list(holder, src=0)
        return holder[0]


def init_distributed(backend: str, device_type: str) -> Dist:
    """Join the process group torchrun set up in the environment; single() when not launched."""
    if not launched_by_torchrun():
        return Dist.single()
    import torch
    import torch.distributed as td

    rank, local_rank, world = (int(os.environ[k]) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"))
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    if not td.is_initialized():
        td.init_process_group(backend=backend, timeout=COLLECTIVE_TIMEOUT)
    log.debug("rank %d of %d joined the process group (%s)", rank, world, backend)
    return Dist(rank=rank, local_rank=local_rank, world_size=world)


def shutdown_distributed() -> None:
    import torch.distributed as td

    if td.is_available() and td.is_initialized():
        td.destroy_process_group()
