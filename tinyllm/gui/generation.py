"""Streaming generation for the GUI, through tinyllm.generate (torch is imported only when first used)."""

from __future__ import annotations

import inspect
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tinyllm import config as C
from tinyllm.errors import UserError
from tinyllm.gui.runs import CKPT_FILES

# Names a KV-cache switch may have on tinyllm.generate.generate; the checkbox is offered only when one exists.
_KV_PARAMS = ("kv_cache", "use_kv_cache", "use_cache")


def kv_cache_param() -> str | None:
    from tinyllm.generate import generate

    params = inspect.signature(generate).parameters
    return next((n for n in _KV_PARAMS if n in params), None)


def sampling_config(temperature: float, top_k: int, top_p: float, repetition_penalty: float, seed: int,
                    max_new_tokens: int) -> C.Config:
    """Validate the sampling settings with the same rules (and messages) as the CLI's flags."""
    values = {"temperature": temperature, "top_k": top_k, "top_p": top_p,
              "repetition_penalty": repetition_penalty, "seed": seed, "sample_chars": max_new_tokens}
    clean = {}
    for k, v in values.items():
        if v is None:
            raise UserError(f"--{k} needs a value")
        if isinstance(C.FIELDS[k].default, int) and isinstance(v, float):
            if not v.is_integer():
                raise UserError(f"--{k} must be a whole number, got {v:g}")
            v = int(v)
        clean[k] = v
    try:
        return C.validate(C.from_dict(clean))
    except UserError as e:  # the tab calls it "New tokens"
        raise UserError(str(e).replace("--sample_chars", "New tokens (--sample_chars)")) from None


class Generator:
    """Loads a run's checkpoint once (again only when the file changes) and streams text from it."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, float], Any] = {}
        self._lock = threading.Lock()

    def load(self, out_dir: str | Path, which: str = "last"):
        from tinyllm.generate import load_model

        if which not in CKPT_FILES:
            raise UserError(f"--ckpt must be one of {', '.join(CKPT_FILES)}, got '{which}'")
        path = Path(out_dir) / CKPT_FILES[which]
        if not path.is_file():
            raise UserError(f"{path} does not exist; train (or stop) the run first, or pick the other checkpoint")
        key = (str(path.resolve()), path.stat().st_mtime)
        with self._lock:
            if key not in self._cache:
                self._cache.clear()  # one model at a time: a GUI need not hold every run in memory
                self._cache[key] = load_model(str(out_dir), which, device=self.device())
            return self._cache[key]

    @staticmethod
    def device() -> str:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def stream(self, out_dir: str | Path, which: str, prompt: str, max_new_tokens: int, temperature: float,
               top_k: int, top_p: float, repetition_penalty: float, seed: int, kv_cache: bool = False,
               drop_unknown: bool = False) -> Iterator[str]:
        """Yield the prompt plus the text generated so far, once per new token."""
        import torch

        from tinyllm.generate import SamplingParams, generate, prompt_ids

        cfg = sampling_config(temperature, top_k, top_p, repetition_penalty, seed, max_new_tokens)
        kwargs = {}
        if kv_cache:
            name = kv_cache_param()
            if name is None:
                raise UserError("this version of tinyllm has no KV cache for generation; untick KV cache")
            kwargs[name] = True
        model, tokenizer, _ = self.load(out_dir, which)
        device = next(model.parameters()).device
        ids = prompt_ids(tokenizer, prompt or "", drop_unknown)
        idx = torch.tensor([ids], dtype=torch.long, device=device)
        gen = torch.Generator(device=device).manual_seed(cfg.seed)
        text, decode = prompt or "", tokenizer.stream_decoder()  # (holds a BPE character until it is whole)
        yield text
        for tok in generate(model, idx, cfg.sample_chars, SamplingParams.from_config(cfg), gen, **kwargs):
            text += decode(int(tok))
            yield text
