"""--device: auto, cpu, cuda, cuda:N or mps, resolved against what the machine has (tinyllm.device)."""

import pytest
import torch

from tinyllm import device as D
from tinyllm.device import resolve_device, trains_on_cuda
from tinyllm.errors import UserError


@pytest.fixture
def machine(monkeypatch):
    """Pretend this machine has `gpus` CUDA devices and MPS or not."""

    def make(gpus: int = 0, mps: bool = False) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
        monkeypatch.setattr(D, "mps_available", lambda: mps)

    return make


@pytest.mark.parametrize("gpus, mps, expect", [(0, False, "cpu"), (0, True, "mps"), (2, True, "cuda")])
def test_auto_prefers_cuda_then_mps_then_cpu(machine, gpus, mps, expect):
    machine(gpus, mps)
    assert resolve_device("auto") == torch.device(expect)
    assert trains_on_cuda("auto") == (expect == "cuda")  # the rule distributed.setup asks before any device


def test_a_ddp_rank_gets_its_own_gpu(machine):
    machine(2)
    assert resolve_device("auto", local_rank=1) == torch.device("cuda", 1)
    assert resolve_device("cuda", local_rank=1) == torch.device("cuda", 1)
    assert resolve_device("cuda:0", local_rank=1) == torch.device("cuda", 0)  # an explicit index stays
    assert resolve_device("cpu", local_rank=1) == torch.device("cpu")


@pytest.mark.parametrize("name, gpus, mps, needle", [
    ("cuda", 0, False, "no CUDA GPU is available"),
    ("cuda:7", 1, False, "only 1 CUDA device(s) here"),
    ("mps", 0, False, "MPS is not available"),
    ("tpu", 0, False, "--device 'tpu'"),
    ("meta", 0, False, "--device 'meta' is not supported"),
])
def test_a_device_this_machine_lacks_is_a_flag_error(machine, name, gpus, mps, needle):
    machine(gpus, mps)
    with pytest.raises(UserError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        resolve_device(name)


def test_trains_on_cuda_follows_the_flag(machine):
    machine(0)
    assert trains_on_cuda("cuda") and trains_on_cuda("cuda:1")
    assert not trains_on_cuda("cpu") and not trains_on_cuda("auto") and not trains_on_cuda("mps")
