"""The GUI's Export tab (check before the button, export through the shown command) and its --auth login."""

from __future__ import annotations

import shlex

import pytest
from conftest import CLASSIC, TINY, free_port, run_cli

gr = pytest.importorskip("gradio", reason="the GUI tests need the gui extra: pip install -e \".[gui]\"")
gradio_client = pytest.importorskip("gradio_client")

from tinyllm import gui as G  # noqa: E402
from tinyllm.gui import export as X  # noqa: E402
from tinyllm.gui.app import build_app, launch  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),
              pytest.mark.filterwarnings("ignore:The copy keyword")]


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A working folder with two tiny runs: one that exports, one that uses an option GGUF cannot hold."""
    from conftest import make_text

    home = tmp_path_factory.mktemp("gui_export")
    (home / "corpus.txt").write_text(make_text(2000), encoding="utf-8")
    for name, flags in (("ok", []), ("relu2", ["--mlp", "relu2"])):
        assert run_cli(["--data_path", home / "corpus.txt", "--out_dir", home / "out" / name, *TINY, *CLASSIC,
                        "--max_steps", "2", "--eval_interval", "0", "--device", "cpu", *flags]) == 0
    return home


def resolver(home):
    return lambda p: (home / p).resolve()


def test_plan_says_what_exports_and_what_is_refused(home):
    pytest.importorskip("gguf")
    plan = X.plan_export(resolver(home), "out/ok", "last", "gguf", "q8_0", "")
    assert plan.ok and "gpt2" in plan.message and "q8_0" in plan.message
    assert plan.output == "out/export/ok-q8_0.gguf"
    assert plan.command == ("python -m tinyllm.export --out_dir out/ok --format gguf --output "
                            "out/export/ok-q8_0.gguf --dtype q8_0")

    refused = X.plan_export(resolver(home), "out/relu2", "last", "gguf", "f16", "")
    assert not refused.ok and "**refused:**" in refused.message and "--mlp relu2" in refused.message

    no_best = X.plan_export(resolver(home), "out/ok", "best", "gguf", "f16", "")
    assert not no_best.ok and "ckpt_best.pt" in no_best.message  # no best checkpoint: eval never ran
    assert "--ckpt best" in no_best.command

    assert not X.plan_export(resolver(home), None, "last", "gguf", "f16", "").ok


def test_run_export_runs_the_shown_command(home):
    pytest.importorskip("gguf")
    plan = X.plan_export(resolver(home), "out/ok", "last", "gguf", "f32", "exports/ok.gguf")
    ok, msg = X.run_export(plan, home)
    assert ok and "wrote `exports/ok.gguf`" in msg and "exported" in msg
    assert (home / "exports" / "ok.gguf").stat().st_size > 1000
    # It exists now: the plan asks before replacing it, and --overwrite goes into the command.
    again = X.plan_export(resolver(home), "out/ok", "last", "gguf", "f32", "exports/ok.gguf")
    assert not again.ok and "already exists" in again.message
    over = X.plan_export(resolver(home), "out/ok", "last", "gguf", "f32", "exports/ok.gguf", overwrite=True)
    assert over.ok and shlex.split(over.command)[-1] == "--overwrite"


def test_export_runs_in_the_guis_own_environment(home, monkeypatch):
    """The export imports the tinyllm this GUI runs, from whatever folder the GUI was started in: the
    subprocess gets the same environment as training and evaluation (this checkout first on PYTHONPATH)."""
    pytest.importorskip("gguf")
    import subprocess

    from tinyllm.gui.runs import child_env

    seen = []
    real_run = subprocess.run

    def spy(*args, **kwargs):
        seen.append(kwargs.get("env"))
        return real_run(*args, **kwargs)

    monkeypatch.setattr(X.subprocess, "run", spy)
    plan = X.plan_export(resolver(home), "out/ok", "last", "gguf", "f16", "exports/env.gguf")
    assert X.run_export(plan, home)[0]
    assert seen == [child_env()]


def test_export_tab_through_the_api_with_auth(home):
    """The app behind Gradio's login: refused without the password, driven as the browser does with it."""
    pytest.importorskip("gguf")
    demo = build_app(out_root="out", cwd=home)
    _, url, _ = launch(demo, host="127.0.0.1", port=free_port(), prevent_thread_lock=True, quiet=True,
                       auth=("ada", "s3cret:pass"))
    try:
        with pytest.raises(Exception):  # noqa: B017 - gradio_client raises its own error types for a 401
            gradio_client.Client(url, verbose=False).predict("out/ok", "last", "gguf", "f16", "", False, False,
                                                             api_name="/export_check")
        with pytest.raises(Exception):  # noqa: B017
            gradio_client.Client(url, verbose=False, auth=("ada", "wrong"))
        client = gradio_client.Client(url, verbose=False, auth=("ada", "s3cret:pass"))

        # (The button's interactive flag and the State holding the last suggestion are not part of the API.)
        verdict, command, output, dtype = client.predict("out/relu2", "last", "gguf", "f16", "", False, False,
                                                         api_name="/export_check")
        assert "**refused:**" in verdict and "--mlp relu2" in verdict
        assert output == "out/export/relu2-f16.gguf"

        verdict, command, output, dtype = client.predict("out/ok", "last", "gguf", "q8_0", "", False, False,
                                                         api_name="/export_check")
        assert "gpt2" in verdict and "refused" not in verdict and dtype["visible"] is True
        assert command.endswith("--output out/export/ok-q8_0.gguf --dtype q8_0")

        result, verdict_after = client.predict("out/ok", "last", "gguf", "q8_0", output, False, False,
                                               api_name="/export")
        assert f"wrote `{output}`" in result and (home / output).is_file()
        assert "already exists" in verdict_after

        # Switching to Hugging Face hides the dtype and replaces the suggested file by a suggested folder.
        _, command, output, dtype = client.predict("out/ok", "last", "hf", "q8_0", output, False, False,
                                                   api_name="/export_check")
        assert output == "out/export/ok-hf" and dtype["visible"] is False and "--dtype" not in command
        # A path the user typed stays.
        _, command, output, _ = client.predict("out/ok", "last", "hf", "f16", "mine/hf", False, False,
                                               api_name="/export_check")
        assert output == "mine/hf" and "--output mine/hf" in command
    finally:
        demo.close()


def test_auth_flag_and_exposure_warning(monkeypatch, capsys):
    assert G.parse_auth("ada:pa:ss") == ("ada", "pa:ss")
    assert G.parse_auth(None) is None
    for bad in ("ada", ":pw", "ada:"):
        with pytest.raises(ValueError, match="USER:PASSWORD"):
            G.parse_auth(bad)
    assert G.is_loopback("127.0.0.1") and G.is_loopback("localhost") and G.is_loopback("::1")
    assert not G.is_loopback("0.0.0.0") and not G.is_loopback("192.168.1.5") and not G.is_loopback("myhost")

    launched = {}
    monkeypatch.setattr("tinyllm.gui.app.launch", lambda demo, **kw: launched.update(kw))
    monkeypatch.setattr("tinyllm.gui.app.build_app", lambda **kw: None)
    monkeypatch.delenv("TINYLLM_GUI_AUTH", raising=False)

    G.main(["--host", "0.0.0.0"])
    err = capsys.readouterr().err
    assert "warning:" in err and "--auth" in err and launched["auth"] is None

    G.main(["--host", "0.0.0.0", "--auth", "ada:pw"])
    assert capsys.readouterr().err == "" and launched["auth"] == ("ada", "pw")

    G.main([])  # loopback: no warning
    assert capsys.readouterr().err == ""
    G.main(["--share"])  # a public link without a password is warned about too
    assert "share link" in capsys.readouterr().err

    monkeypatch.setenv("TINYLLM_GUI_AUTH", "env:pw")
    G.main(["--host", "0.0.0.0"])
    assert capsys.readouterr().err == "" and launched["auth"] == ("env", "pw")

    with pytest.raises(SystemExit) as e:
        G.main(["--auth", "nopassword"])
    assert e.value.code == 2 and "USER:PASSWORD" in capsys.readouterr().err
