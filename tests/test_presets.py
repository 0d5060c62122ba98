"""Every shipped preset trains: its whole recipe (model shape, optimizer, schedule, precision) runs a few steps on
the CPU, on a small corpus and a small batch, so a preset can never ship broken (test_config validates them)."""

import importlib.util
from pathlib import Path

import pytest
from conftest import REPO, run_cli

from tinyllm import config as C
from tinyllm.errors import UserError
from tinyllm.metrics import read_metrics

PRESETS = sorted((REPO / "config").glob("*.json"))
HF_ARCHITECTURES = ("GPT2LMHeadModel", "LlamaForCausalLM", "Qwen3ForCausalLM")
GGUF_ARCHITECTURES = ("architecture gpt2", "architecture llama", "architecture apertus")
# RoPE with q/k norm exports as Qwen 3 and as llama.cpp's apertus, whose MLPs have no biases (docs/export.md)
NOT_EXPORTABLE = {"modern_char.json": "--bias"}


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.name)
def test_every_preset_runs_a_few_steps(preset: Path, corpus: Path, tmp_path: Path):
    values = C.load_json(preset)
    extra = []
    if values.get("tokenizer") == "bpe":
        if importlib.util.find_spec("tokenizers") is None:
            pytest.skip("the bpe extra is not installed")
        extra = ["--bpe_vocab_size", "300"]  # the small corpus cannot fill a large vocabulary
    if values.get("init_from"):  # a fine-tuning preset: first the run it starts from (tiny, on the same text)
        source = tmp_path / "source"
        assert run_cli(["--data_path", corpus, "--out_dir", source, "--n_layer", "1", "--n_head", "2", "--n_embd",
                        "32", "--block_size", "32", "--batch_size", "2", "--max_steps", "1", "--eval_interval",
                        "0", "--sample_interval", "0", "--device", "cpu", "--no-progress"]) == 0
        extra += ["--init_from", source]
    out = tmp_path / "run"
    args = ["--config", preset, "--data_path", corpus, "--out_dir", out, "--max_steps", "3", "--max_time", "0",
            "--batch_size", "2", "--eval_interval", "3", "--eval_iters", "1", "--sample_interval", "0",
            "--checkpoint_interval", "0", "--device", "cpu", "--no-progress", *extra]
    assert run_cli(args) == 0
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows if "val_loss" in r] == [3]
    assert rows[-1]["event"] == "end" and rows[-1]["reason"] == "max_steps"
    assert "--compile (" not in (out / "train.log").read_text()  # a compiled preset compiles (no eager fallback)
    # and what it trains exports, to Hugging Face and to llama.cpp
    from tinyllm.export import check_run

    for fmt, package, kinds in (("hf", "transformers", HF_ARCHITECTURES), ("gguf", "gguf", GGUF_ARCHITECTURES)):
        if importlib.util.find_spec(package) is None:
            continue
        if preset.name in NOT_EXPORTABLE:
            with pytest.raises(UserError, match=NOT_EXPORTABLE[preset.name]):
                check_run(out, "last", fmt)
        else:
            assert any(kind in check_run(out, "last", fmt) for kind in kinds)
