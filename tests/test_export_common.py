"""The rules the exporters share (tinyllm.export_common): every model option is known to them, and a refusal
names every option in the way as the command line spells it."""

from __future__ import annotations

import pytest

from tinyllm.errors import UserError
from tinyllm.export_common import check_known_options, common_needs, flag, refuse_unmet
from tinyllm.model import ModelArgs


def test_every_architecture_option_is_known_to_the_exporter():
    from dataclasses import fields

    from tinyllm.export import HANDLED_FIELDS

    assert {f.name for f in fields(ModelArgs)} == HANDLED_FIELDS


def test_flags_are_spelled_as_on_the_command_line():
    assert flag("qk_norm", True) == "--qk_norm" and flag("bias", False) == "--no-bias"
    assert flag("logit_softcap", 30.0) == "--logit_softcap 30.0" and flag("mlp", "relu2") == "--mlp relu2"


def test_a_refusal_names_every_unmet_option_at_once():
    base = {"vocab_size": 10, "n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 16}
    plain = ModelArgs(**base)
    refuse_unmet(plain, common_needs(plain), "GGUF", "gpt2")  # nothing unmet: no error
    args = ModelArgs(**base, qk_norm=True, parallel_block=True, logit_softcap=5.0)
    with pytest.raises(UserError) as e:
        refuse_unmet(args, common_needs(args), "a Hugging Face folder", "GPT2LMHeadModel")
    assert str(e.value) == ("cannot export --parallel_block, --qk_norm and --logit_softcap 5.0 to a Hugging Face "
                            "folder: --pos_encoding learned exports as GPT2LMHeadModel, which needs "
                            "--no-parallel_block, --no-qk_norm and --logit_softcap 0.0")
    full_window = ModelArgs(**base, sliding_window=16)  # a window as long as the context is no window at all
    assert ("sliding_window", 0, 0) in common_needs(full_window)


def test_an_option_newer_than_the_exporters_is_refused_unless_at_its_default(monkeypatch):
    from tinyllm import export_common

    args = ModelArgs(vocab_size=10, n_layer=1, n_head=2, n_embd=16, block_size=16, qk_norm=True)
    check_known_options(args, "GGUF")  # every option known
    monkeypatch.setattr(export_common, "HANDLED_FIELDS", export_common.HANDLED_FIELDS - {"qk_norm", "mlp"})
    check_known_options(ModelArgs(vocab_size=10, n_layer=1, n_head=2, n_embd=16, block_size=16), "GGUF")
    with pytest.raises(UserError, match="cannot export --qk_norm to GGUF: this exporter does not know that option"):
        check_known_options(args, "GGUF")
