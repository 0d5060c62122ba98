"""torchrun / DDP: process-group setup and teardown, and the few collective helpers the loop needs.

Launch with torchrun, which sets RANK, LOCAL_RANK and WORLD_SIZE for each process:
    torchrun --standalone --nproc_per_node=2 train_tinyllm.py --ddp ...
Without --ddp everything here is a no-op for a single process.
"""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from tinyllm.device import resolve_device, trains_on_cuda
from tinyllm.errors import UserError

TORCHRUN_HINT = "torchrun --standalone --nproc_per_node=N train_tinyllm.py --ddp [flags]"


@dataclass
class Dist:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    enabled: bool = False
    backend: str = ""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def any_true(self, *flags: bool) -> list[bool]:
        """For each flag, whether it is set on any rank: one small all-reduce, so every rank takes the same
        decision (stop now, skip this step) at the same step."""
        if not self.enabled:
            return list(flags)
        t = torch.tensor([float(f) for f in flags], device=self.device_for_collectives)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return [bool(v) for v in t.tolist()]

    def mean(self, value: float) -> float:
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device_for_collectives)
        dist.all_reduce(t)
        return t.item() / self.world_size

    def gather_objects(self, obj: Any) -> list[Any]:
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    @property
    def device_for_collectives(self) -> torch.device:
        return torch.device("cuda", self.local_rank) if self.backend == "nccl" else torch.device("cpu")


def setup(enabled: bool, backend: str, device: str = "auto") -> Dist:
    """The process group for a torchrun launch (`device` is --device: the ranks train on GPUs only where it
    is cuda, or auto on a machine with CUDA)."""
    if not enabled:
        if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:  # torchrun's processes, each about to train alone
            raise UserError(f"this process is one of {os.environ['WORLD_SIZE']} that torchrun started, but --ddp "
                            f"is not set: add --ddp so that they train one run together ({TORCHRUN_HINT})")
        return Dist()
    missing = [v for v in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise UserError(f"--ddp needs the environment that torchrun sets ({', '.join(missing)} missing); launch "
                        f"with: {TORCHRUN_HINT}")
    on_gpu = trains_on_cuda(device)  # the rule resolve_device follows, asked before any device is built
    if backend == "auto":
        backend = "nccl" if on_gpu and sys.platform.startswith("linux") else "gloo"
    if backend == "nccl" and not on_gpu:
        raise UserError(f"--ddp_backend nccl needs CUDA GPUs (--device {device} trains without one); use "
                        "--ddp_backend gloo (or auto) on CPUs")
    d = Dist(int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"]), True, backend)
    if on_gpu:
        resolve_device(device)  # --device cuda without a GPU here: the message the flag gives without --ddp
        gpus = torch.cuda.device_count()
        if d.local_rank >= gpus:
            raise UserError(f"torchrun started more processes on this machine than it has GPUs ({gpus}): use "
                            f"--nproc_per_node={gpus} or fewer, or --device cpu")
        torch.cuda.set_device(d.local_rank)
    init_process_group(backend)
    return d


def init_process_group(backend: str, **kwargs: Any) -> None:
    """torch's init_process_group, made safe to tear down."""
    # This module's functions take `group=group.WORLD` as a default argument, bound at import. Imported after
    # init (DDP pulls it in through torch._dynamo) they would keep the default group alive for good, so
    # teardown() could never free it: Gloo's worker threads would outlive it and abort the process at exit.
    importlib.import_module("torch.distributed.nn.functional")
    dist.init_process_group(backend=backend, **kwargs)


def teardown(d: Dist) -> None:
    """Free the process group and join its backend's threads. Drop any DDP wrapper first: the group must be
    freed here, with the GIL released, while a Gloo worker may still be letting go of the last collective's
    tensors (which needs the GIL); freed later it is joined holding the GIL, or not before interpreter
    shutdown, which kills such a worker mid-way ("terminate called without an active exception")."""
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()
