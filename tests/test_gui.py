"""The GUI in-process: launched on 127.0.0.1 and driven with gradio_client as the browser drives it, plus an
end-to-end click-through in headless Chromium. A tiny real run is started, monitored, stopped and sampled."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import pytest
from conftest import free_port, make_text

gr = pytest.importorskip("gradio", reason="the GUI tests need the gui extra: pip install -e \".[gui]\"")
gradio_client = pytest.importorskip("gradio_client")

from tinyllm import config as C  # noqa: E402
from tinyllm.gui import form as F  # noqa: E402
from tinyllm.gui.app import build_app, launch  # noqa: E402
from tinyllm.gui.chart import PALETTE  # noqa: E402
from tinyllm.gui.generation import kv_cache_param  # noqa: E402

# gradio's own pandas calls warn under pandas 3; not ours to fix.
pytestmark = [pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),
              pytest.mark.filterwarnings("ignore:The copy keyword")]

TINY = {"n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 32, "batch_size": 8, "eval_iters": 2,
        "log_interval": 5, "eval_interval": 20, "sample_interval": 0, "lr": 1e-2, "lr_warmup_steps": 2,
        "progress": False, "device": "cpu", "max_steps": 1_000_000, "checkpoint_interval": 0}


def wait_for(cond, timeout: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def gui(tmp_path_factory):
    home = tmp_path_factory.mktemp("gui")
    (home / "corpus.txt").write_text(make_text(), encoding="utf-8")
    demo = build_app(out_root="out", cwd=home)
    ctx = demo.tinyllm_ctx
    _, url, _ = launch(demo, host="127.0.0.1", port=free_port(), prevent_thread_lock=True, quiet=True)
    client = gradio_client.Client(url, verbose=False)
    try:
        yield {"home": home, "url": url, "client": client, "demo": demo, "manager": ctx.manager}
    finally:
        ctx.manager.grace_stop_s = ctx.manager.grace_term_s = 5
        ctx.manager.shutdown(stop_runs=True)
        demo.close()


def form_values(home: Path, **overrides) -> list:
    """Every form value, in the order the app's endpoints take them."""
    values = {**F.cli_defaults(), **TINY, "data_path": str(home / "corpus.txt"), **overrides}
    return [values[s.name] for s in F.field_specs()]


def train_points(client, run: str) -> int:
    """How many train-loss points the monitor's chart draws for `run` (one dot each)."""
    _, loss_chart, *_ = client.predict(run, api_name="/monitor")
    return loss_chart.count(f'r="2.5" fill="{PALETTE[0]}"')


def test_app_binds_localhost_without_analytics(gui):
    assert gui["url"].startswith("http://127.0.0.1:")
    assert gui["demo"].analytics_enabled is False
    assert os.environ.get("GRADIO_ANALYTICS_ENABLED") == "False"


def test_train_monitor_stop_and_generate(gui):
    client, home, manager = gui["client"], gui["home"], gui["manager"]
    msg, update = client.predict(*form_values(home, out_dir="out/a"), api_name="/start_run")
    assert msg.startswith("started `out/a`") and update["value"] == "out/a"
    # A second run in its own folder runs beside the first; a run into a busy folder is refused.
    msg_b, _ = client.predict(*form_values(home, out_dir="out/b", seed=7), api_name="/start_run")
    assert msg_b.startswith("started `out/b`")
    refused, _ = client.predict(*form_values(home, out_dir="out/a"), api_name="/start_run")
    assert "in use by a running run" in refused
    assert manager.is_running("out/a") and manager.is_running("out/b")

    # Metrics arrive: the loss chart gains train points while the run is running.
    for run in ("out/a", "out/b"):
        wait_for(lambda r=run: train_points(client, r) >= 2, what=f"train rows in {run}")
    status, loss_chart, speed_chart, log, _ = client.predict("out/a", api_name="/monitor")
    assert "| running |" in status and "tokens/s" in status
    assert "<polyline" in loss_chart and "<polyline" in speed_chart and "tinyllm.cli --config" in log

    assert "stopping" in client.predict("out/a", api_name="/stop_run")
    assert "stopping" in client.predict("out/b", api_name="/stop_run")
    wait_for(lambda: "interrupted" in client.predict("out/a", api_name="/monitor")[0], what="out/a to stop")
    wait_for(lambda: not manager.is_running("out/b"), what="out/b to stop")
    status = client.predict("out/a", api_name="/monitor")[0]
    assert "stopped at the end of a step" in status and "ckpt.pt" in status
    for run in ("a", "b"):
        assert (home / "out" / run / "ckpt.pt").is_file()
        end = json.loads((home / "out" / run / "metrics.jsonl").read_text().splitlines()[-1])
        assert end["event"] == "end" and end["reason"] == "interrupted"
    assert json.loads((home / "out" / "a" / "config.json").read_text())["n_embd"] == 32

    # The Runs tab lists both with their status; comparing overlays their curves.
    table, chosen = client.predict("out", [], api_name="/list_runs")
    by_run = {row[0]: row for row in table["data"]}
    assert by_run["out/a"][1] == "interrupted" and by_run["out/b"][1] == "interrupted"
    assert {c[0] for c in chosen["choices"]} == {"out/a", "out/b"}
    overlay = client.predict(["out/a", "out/b"], "train", api_name="/compare_runs")
    assert overlay.count("<polyline") == 2 and ">out/a</text>" in overlay and ">out/b</text>" in overlay

    # Resume continues the stopped run in its folder (the same settings, loaded back from the run); a stop
    # asked for while it is still starting up still ends it cooperatively.
    loaded = client.predict(["out/a"], api_name="/load_run_settings")
    assert loaded[-1].startswith("settings of `out/a` loaded")
    step_before = json.loads((home / "out" / "a" / "metrics.jsonl").read_text().splitlines()[-1])["step"]
    msg, _ = client.predict(*loaded[:-1], api_name="/resume_run")
    assert msg.startswith("resumed `out/a`") and msg.endswith("--resume`")
    assert manager.stop("out/a").startswith("stopped at the end of a step")
    log = (home / "out" / "a" / "console.log").read_text()
    assert f"resuming from step {step_before}" in log
    end = json.loads((home / "out" / "a" / "metrics.jsonl").read_text().splitlines()[-1])
    assert end["event"] == "end" and end["reason"] == "interrupted" and end["step"] > step_before

    # Generation streams: several partial texts, each extending the last (one update per token here).
    gui["demo"].tinyllm_ctx.stream_interval_s = 0.0
    job = client.submit("out/a", "last", "The ", 40, 0.8, 0, 1.0, 1.0, 1337, False, False, api_name="/generate")
    outputs = list(job)
    texts = [o[0] for o in outputs]
    assert len(texts) > 10 and texts[-1].startswith("The ") and len(texts[-1]) >= len("The ") + 30
    assert all(texts[i + 1].startswith(texts[i]) for i in range(1, len(texts) - 2))
    assert outputs[-1][1].startswith("done")
    gui["demo"].tinyllm_ctx.stream_interval_s = 0.05
    # Same seed, same text: generation is reproducible from the GUI too.
    again = client.predict("out/a", "last", "The ", 40, 0.8, 0, 1.0, 1.0, 1337, False, False, api_name="/generate")
    assert again[0] == texts[-1]
    if kv_cache_param() is not None:  # greedy text is the same with and without the KV cache
        plain, cached = (client.predict("out/a", "last", "The ", 60, 0.0, 0, 1.0, 1.0, 1, kv, False,
                                        api_name="/generate")[0] for kv in (False, True))
        assert plain == cached and len(plain) == len("The ") + 60
    bad = client.predict("out/a", "last", "The ", 40, 0.8, -1, 1.0, 1.0, 1337, False, False, api_name="/generate")
    assert "--top_k must be at least 0" in bad[1]
    unknown = client.predict("out/a", "last", "Zebra ", 5, 0.8, 0, 1.0, 1.0, 1, False, False, api_name="/generate")
    assert "not in the vocabulary: 'Z'" in unknown[1]


def test_configure_preview_validation_and_presets(gui):
    client, home = gui["client"], gui["home"]
    command, check = client.predict(*form_values(home, out_dir="out/p"), api_name="/preview_command")
    assert command.startswith("python train_tinyllm.py") and "--n_embd 32" in command and "valid" in check
    command, check = client.predict(*form_values(home, n_head=3), api_name="/preview_command")
    assert "--n_embd (32) must be divisible by --n_head (3)" in check and "python" not in command
    # A whole-number setting typed with a fraction is an error, not silently rounded.
    command, check = client.predict(*form_values(home, n_layer=3.4), api_name="/preview_command")
    assert "--n_layer must be a whole number, got 3.4" in check and "python" not in command
    msg, _ = client.predict(*form_values(home, n_head=3, out_dir="out/bad"), api_name="/start_run")
    assert "divisible" in msg and not (home / "out" / "bad").exists()
    # Consistent settings that the run would refuse as it starts are shown as errors too, and not started.
    for bad, message in (({"device": "tpu"}, "--device 'tpu'"), ({"data_path": "nope.txt"}, "file not found")):
        _, check = client.predict(*form_values(home, **bad), api_name="/preview_command")
        assert message in check and "valid" not in check
        msg, _ = client.predict(*form_values(home, out_dir="out/bad", **bad), api_name="/start_run")
        assert message in msg and not (home / "out" / "bad").exists()

    preset = home / "mine.json"
    msg, _ = client.predict(str(preset), False, *form_values(home, out_dir="out/p"), api_name="/save_preset")
    assert msg.startswith("saved") and C.load_json(preset)["out_dir"] == "out/p"
    # An existing file (here: the one just saved) is only replaced when asked.
    msg, _ = client.predict(str(preset), False, *form_values(home, out_dir="out/q"), api_name="/save_preset")
    assert "already exists" in msg and "replace" in msg and C.load_json(preset)["out_dir"] == "out/p"
    msg, _ = client.predict(str(preset), True, *form_values(home, out_dir="out/p"), api_name="/save_preset")
    assert msg.startswith("saved") and C.load_json(preset)["out_dir"] == "out/p"
    loaded = client.predict(str(preset), api_name="/load_preset")
    assert loaded[-1].startswith("loaded")
    by = dict(zip((s.name for s in F.field_specs()), loaded[:-1], strict=True))
    assert by["out_dir"] == "out/p" and by["n_embd"] == 32 and by["progress"] is False
    shipped = client.predict("tiny_char_gpt.json", api_name="/load_preset")
    assert dict(zip((s.name for s in F.field_specs()), shipped[:-1], strict=True))["n_embd"] == \
        F.cli_defaults()["n_embd"]


def test_a_gui_with_another_output_root_proposes_run_folders_there(tmp_path):
    """Started with --out_root runs, the form's out_dir (at first, and from a loaded preset) lies under runs/,
    where the Runs tab, the init_from picker and the page's first run look."""
    demo = build_app(out_root="runs", cwd=tmp_path)
    by_name = demo.tinyllm_ctx.by_name
    assert by_name["out_dir"].value == str(Path("runs") / Path(F.cli_defaults()["out_dir"]).name)
    _, url, _ = launch(demo, host="127.0.0.1", port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        loaded = gradio_client.Client(url, verbose=False).predict("shakespeare_char_cpu.json",
                                                                    api_name="/load_preset")
    finally:
        demo.close()
    values = dict(zip((s.name for s in F.field_specs()), loaded[:-1], strict=True))
    assert values["out_dir"] == str(Path("runs") / "shakespeare_char_cpu"), values["out_dir"]


def test_data_tab_inspects_and_cleans(gui):
    client, home = gui["client"], gui["home"]
    stats, preview, clean_target = client.predict(str(home / "corpus.txt"), api_name="/inspect_data")
    text = (home / "corpus.txt").read_text(encoding="utf-8")
    assert f"{len(text):,}" in stats and f"| {len(set(text))} |" in stats
    assert preview == text[:2000]
    wiki = home / "w.tokens"
    wiki.write_text(" = T = \n a @-@ b \n", encoding="utf-8")
    msg = client.predict(str(wiki), str(home / "w.txt"), False, False, api_name="/clean_wikitext")
    assert msg.startswith("cleaned") and (home / "w.txt").read_text() == "a-b\n"
    (home / "w.txt").write_text("mine")  # an existing file is replaced only when asked
    msg = client.predict(str(wiki), str(home / "w.txt"), False, False, api_name="/clean_wikitext")
    assert "already exists" in msg and (home / "w.txt").read_text() == "mine"
    msg = client.predict(str(wiki), str(home / "w.txt"), False, True, api_name="/clean_wikitext")
    assert msg.startswith("cleaned") and (home / "w.txt").read_text() == "a-b\n"
    msg = client.predict(str(wiki), "  ", False, False, api_name="/clean_wikitext")
    assert "give the cleaned file a path" in msg
    stats, _, _ = client.predict(str(home / "missing.txt"), api_name="/inspect_data")
    assert "file not found" in stats
    # An upload is kept under data/uploads/ of the working folder, and can become the run's data_path.
    kept = client.predict(gradio_client.handle_file(str(wiki)), api_name="/upload")
    assert kept == "data/uploads/w.tokens" and (home / kept).read_text() == wiki.read_text()
    data_path, msg = client.predict(kept, api_name="/use_data")
    assert data_path == kept and "data_path" in msg
    (home / "latin1.txt").write_bytes("caf\u00e9\n".encode("latin-1"))
    for bad, message in (("missing.txt", "file not found"), ("latin1.txt", "is not UTF-8"), (" ", "pick, type")):
        assert message in client.predict(bad, api_name="/use_data")[1]


# ---------------------------------------------------------------------------------------------- browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="needs the Debian packages chromium and chromium-driver")
def test_browser_configure_train_generate(gui, tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (the dev extra)")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    home = gui["home"]
    preset = home / "browser.json"
    preset.write_text(json.dumps({**TINY, "data_path": str(home / "corpus.txt"), "out_dir": "out/browser",
                                  "sample_interval": 20, "sample_chars": 120}))
    shots = [tmp_path] + ([Path(os.environ["TINYLLM_SCREENSHOT_DIR"])] if os.environ.get("TINYLLM_SCREENSHOT_DIR")
                          else [])

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--window-size=1400,1100"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        def find(css: str):
            return driver.find_element(By.CSS_SELECTOR, css)

        def tab(name: str):
            driver.find_element(By.XPATH, f"//button[@role='tab' and normalize-space()='{name}']").click()

        def shot(name: str):
            for d in shots:
                d.mkdir(parents=True, exist_ok=True)
                driver.save_screenshot(str(d / name))

        driver.get(gui["url"])
        wait_for(lambda: driver.find_elements(By.XPATH, "//button[@role='tab']"), what="the app to render")
        tab("Configure")
        box = wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "#preset input"), what="preset box")[0]
        box.click()
        box.send_keys(str(preset), Keys.ENTER)
        find("#load-preset").click()
        wait_for(lambda: find("#cfg-out_dir textarea").get_attribute("value") == "out/browser",
                 what="the preset to fill the form")
        wait_for(lambda: "--n_embd 32" in find("#command").text, what="the command preview")
        shot("gui-configure.png")

        tab("Train")
        find("#start-run").click()
        wait_for(lambda: find("#train-msg").text.startswith("started"), what="the run to start")
        assert "out/browser" in find("#train-msg").text
        wait_for(lambda: "running" in find("#run-status").text, what="the running status")
        # The page's own timer brings the numbers in.
        wait_for(lambda: train_points(gui["client"], "out/browser") >= 6, what="30 steps")  # a curve worth a look
        wait_for(lambda: re.search(r"running\s+[1-9][\d,]* /", find("#run-status").text), what="progress shown")
        wait_for(lambda: find("#train-sample textarea").get_attribute("value"), what="a sample")
        # A page refresh loses nothing: the running run is found again from its folder and monitored.
        driver.refresh()
        wait_for(lambda: driver.find_elements(By.XPATH, "//button[@role='tab']"), what="the app to render again")
        tab("Train")
        wait_for(lambda: find("#run-status").text.startswith("out/browser") and "running" in find("#run-status").text,
                 what="the run to be monitored after a refresh")
        wait_for(lambda: find("#loss-plot").find_elements(By.CSS_SELECTOR, "svg polyline"), what="the curve again")
        wait_for(lambda: find("#loss-plot").find_elements(By.CSS_SELECTOR, "svg polyline"), what="the loss curve")
        find("#stop-run").click()
        wait_for(lambda: "interrupted" in find("#run-status").text, what="the run to stop")
        assert "stopped at the end of a step (checkpoint saved)" in find("#run-status").text
        shot("gui-train.png")

        tab("Generate")
        wait_for(lambda: find("#gen-run input").get_attribute("value") == "out/browser",
                 what="the run to be offered for generation")
        find("#gen-btn").click()
        out = wait_for(lambda: len(find("#gen-output textarea").get_attribute("value") or "") > 60
                       and find("#gen-output textarea").get_attribute("value"), what="generated text")
        assert out.startswith("The ")
        wait_for(lambda: "done" in find("#gen-status").text, what="generation to finish")
        shot("gui-generate.png")

        tab("Runs")  # lists the runs and overlays the newest ones' curves
        wait_for(lambda: "out/browser" in find("#runs-table").text, what="the runs table")
        wait_for(lambda: "out/browser" in find("#compare-plot").text
                 and find("#compare-plot").find_elements(By.CSS_SELECTOR, "svg circle"), what="the overlaid curves")
        shot("gui-runs.png")
    finally:
        driver.quit()
    assert (tmp_path / "gui-train.png").stat().st_size > 10_000


def test_compare_says_why_a_chart_is_empty(tmp_path):
    from tinyllm.gui.app import Ctx, compare_chart
    from tinyllm.gui.runs import RunManager

    run = tmp_path / "out" / "young"
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text('{"step": 1, "time_s": 0.1, "loss": 3.0}\n')  # no evaluation yet
    ctx = Ctx(manager=RunManager(cwd=tmp_path), out_root="out")
    assert "select runs to compare" in compare_chart(ctx, [], "val")
    assert "the selected runs have no val loss yet" in compare_chart(ctx, ["out/young"], "val")
    drawn = compare_chart(ctx, ["out/young"], "train")
    assert "have no" not in drawn and "select runs" not in drawn and ">out/young</text>" in drawn
