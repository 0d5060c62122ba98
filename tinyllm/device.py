"""Which device `--device` means: auto, cpu, cuda, cuda:N or mps, checked against what this machine has.

One rule for "auto", used twice: `resolve_device` builds the device a process trains or samples on, and
`tinyllm.distributed.setup` asks `trains_on_cuda` before any device exists, to choose the DDP backend and
each rank's GPU. Both therefore agree: auto is CUDA wherever CUDA is available.
"""

from __future__ import annotations

import torch

from tinyllm.errors import UserError


def mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def trains_on_cuda(name: str) -> bool:
    """Whether `--device name` puts the work on CUDA GPUs: cuda or cuda:N, or auto on a machine with CUDA."""
    return name.startswith("cuda") or (name == "auto" and torch.cuda.is_available())


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """The torch device for `--device name`; under DDP a plain cuda (or auto) becomes this rank's GPU."""
    if name == "auto":
        if trains_on_cuda(name):
            return torch.device("cuda", local_rank) if local_rank else torch.device("cuda")
        if mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device '{name}' is not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError("--device cuda: no CUDA GPU is available here; use --device cpu or auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
        if local_rank and dev.index is None:
            dev = torch.device("cuda", local_rank)
    elif dev.type == "mps" and not mps_available():
        raise UserError("--device mps: MPS is not available here; use --device cpu or auto")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"--device '{name}' is not supported; use auto, cpu, cuda, cuda:N or mps")
    return dev


def memory_bytes(device: torch.device) -> int | None:
    """The memory the device has in all (a GPU's own, else this machine's), or None where it cannot be read."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    try:
        import os

        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def check_model_fits(n_layer: int, n_embd: int, device: torch.device) -> None:
    """Refuse, before any data is read or tensor made, a model that cannot fit: a typo such as --n_embd 1048576
    would otherwise end in an allocator's traceback (or a machine swapping for minutes). The estimate is a lower
    bound (attention weights alone, 4 x n_embd^2 a layer; fp32 weights, gradients and two AdamW moments: 16
    bytes a parameter), so no model that fits is refused."""
    total = memory_bytes(device)
    need = 16 * 4 * n_layer * n_embd**2
    if total is not None and need > total:
        raise UserError(f"--n_layer {n_layer} x --n_embd {n_embd} makes a model of at least {need / 16:,.0f} "
                        f"parameters, which needs {need / 2**30:,.0f} GiB or more to train; this {device.type} has "
                        f"{total / 2**30:,.0f} GiB: make it smaller")
