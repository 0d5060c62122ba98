"""Native-bf16 detection: the CPU's flags, and the documented switches that hold torch below them (which is how
the benchmarks emulate an AVX2 CPU on a newer one). The capability is mocked; nothing here depends on this CPU."""

import os

import pytest
import torch

from tinyllm import optimizers
from tinyllm import precision as P

ZEN4 = {"avx2", "avx512f", "avx512_bf16"}
ZEN3 = {"avx2", "fma"}


@pytest.fixture
def cpu(monkeypatch):
    """cpu(flags, capability, **env): pretend to run on that CPU with those environment variables."""
    def set_cpu(flags: set[str], capability: str, **env: str) -> None:
        for name in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "TINYLLM_NATIVE_BF16"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setattr(P, "cpu_flags", lambda: set(flags))
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        optimizers._cpu_native_bf16.cache_clear()

    yield set_cpu
    optimizers._cpu_native_bf16.cache_clear()


def test_flags_and_capability_decide(cpu):
    cpu(ZEN4, "AVX512")
    assert P.cpu_has_native_bf16() and P.cpu_capability() == "AVX512"
    cpu(ZEN3, "AVX2")
    assert not P.cpu_has_native_bf16() and P.cpu_capability() == "AVX2"
    cpu({"avx512f", "amx_bf16"}, "AVX512")
    assert P.cpu_has_native_bf16()


@pytest.mark.parametrize("capability, env", [
    ("AVX2", {"ATEN_CPU_CAPABILITY": "avx2"}),
    ("DEFAULT", {"ATEN_CPU_CAPABILITY": "default"}),
    ("AVX512", {"ONEDNN_MAX_CPU_ISA": "AVX2"}),
    ("AVX512", {"ONEDNN_MAX_CPU_ISA": "avx512_core"}),
])
def test_emulated_avx2_is_not_native_bf16(cpu, capability, env):
    cpu(ZEN4, capability, **env)
    assert not P.cpu_has_native_bf16()
    assert "emulated" in P.cpu_capability() and capability in P.cpu_capability()
    assert "no native bf16" in P.cpu_description()
    assert optimizers.ns_dtype(torch.device("cpu")) == torch.float32  # Muon's iterations follow


@pytest.mark.parametrize("isa", ["AVX512_CORE_BF16", "avx512_core_amx", "ALL"])
def test_onednn_cap_at_bf16_or_above_keeps_native(cpu, isa):
    cpu(ZEN4, "AVX512", ONEDNN_MAX_CPU_ISA=isa)
    assert P.cpu_has_native_bf16() and P.cpu_capability() == "AVX512"


def test_explicit_override(cpu):
    cpu(ZEN4, "AVX512", TINYLLM_NATIVE_BF16="0")
    assert not P.cpu_has_native_bf16()
    cpu(ZEN3, "AVX2", TINYLLM_NATIVE_BF16="1")
    assert P.cpu_has_native_bf16()


def test_amp_falls_back_to_fp32_where_bf16_is_emulated(cpu):
    cpu(ZEN4, "AVX2", ATEN_CPU_CAPABILITY="avx2", ONEDNN_MAX_CPU_ISA="AVX2")
    warnings: list[str] = []
    prec = P.choose_precision(torch.device("cpu"), amp=True, warn=warnings.append)
    assert prec.dtype == torch.float32 and warnings
    cpu(ZEN4, "AVX512")
    assert P.choose_precision(torch.device("cpu"), amp=True).dtype == torch.bfloat16


def test_muon_ns_steps_reaches_the_optimizer():
    from tinyllm import config as C
    from tinyllm.model import GPT, ModelArgs
    from tinyllm.optim import make_optimizer

    cfg = C.from_dict({"n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 16, "optimizer": "muon",
                       "muon_ns_steps": 3})
    opt = make_optimizer(GPT(ModelArgs.from_config(cfg, 11)), cfg, torch.device("cpu"))
    assert {g["ns_steps"] for g in opt.param_groups} == {3}


def test_amp_on_cpu_follows_native_bf16(monkeypatch):
    cpu = torch.device("cpu")
    warnings = []
    monkeypatch.setattr(P, "cpu_has_native_bf16", lambda: False)
    prec = P.choose_precision(cpu, amp=True, warn=warnings.append)
    assert prec.dtype == torch.float32 and warnings and "no native bf16" in warnings[0]
    monkeypatch.setattr(P, "cpu_has_native_bf16", lambda: True)
    assert P.choose_precision(cpu, amp=True).dtype == torch.bfloat16
    assert P.choose_precision(cpu, amp=False).dtype == torch.float32


def _clear(monkeypatch, *names: str) -> None:
    """Unset names, and have monkeypatch restore them afterwards even where the code under test sets them
    (delenv alone records nothing for a variable that is not there)."""
    for name in names:
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)


def test_compile_cache_is_kept_apart_per_capability_switch(monkeypatch, tmp_path):
    _clear(monkeypatch, *P.CAPABILITY_SWITCHES, "TORCHINDUCTOR_CACHE_DIR")
    assert P.separate_compile_cache() == "" and "TORCHINDUCTOR_CACHE_DIR" not in os.environ  # no switch held

    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    avx2 = P.separate_compile_cache()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == avx2 and "ATEN_CPU_CAPABILITY-avx2" in avx2
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx512")
    assert P.separate_compile_cache() not in ("", avx2)  # another setting, another cache

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", os.path.dirname(avx2))  # torch's default, as torch sets it
    assert P.separate_compile_cache() == avx2.replace("ATEN_CPU_CAPABILITY-avx2", "ATEN_CPU_CAPABILITY-avx512")

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))  # the user's own choice stays
    assert P.separate_compile_cache() == "" and os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path)


def test_compiling_under_a_capability_switch_uses_its_own_cache(monkeypatch):
    from tinyllm.train import compile_model

    _clear(monkeypatch, *P.CAPABILITY_SWITCHES, "TORCHINDUCTOR_CACHE_DIR")
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    compile_model(torch.nn.Linear(2, 2), "eager")  # torch.compile is lazy: nothing compiles here
    assert "ATEN_CPU_CAPABILITY-avx2" in os.environ["TORCHINDUCTOR_CACHE_DIR"]
