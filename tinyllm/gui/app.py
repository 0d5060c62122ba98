"""The Gradio app: layout and wiring. The work itself lives in the gradio-free modules beside this one.

Tabs: Data, Configure, Train, Runs, Generate, Export. Every event has an api_name, so the tests (and scripts) can
drive the app with gradio_client exactly as the browser does.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from tinyllm.errors import UserError
from tinyllm.export import GGUF_DTYPES
from tinyllm.gui import export as X
from tinyllm.gui import form as F
from tinyllm.gui import scores as S
from tinyllm.gui.chart import line_chart
from tinyllm.gui.datafile import clean_wikitext, default_clean_path, keep_upload, text_stats
from tinyllm.gui.generation import Generator, kv_cache_param
from tinyllm.gui.monitor import loss_series, speed_series, summary_markdown
from tinyllm.gui.runs import (
    CONSOLE_LOG,
    RunManager,
    config_summary,
    discover_runs,
    fmt_duration,
    run_config,
    run_info,
    started_from,
    tail_text,
)
from tinyllm.text_source import glance_source

CSS = """
.mono textarea, .mono input { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
"""
TICK_S = 1.0


def err(e: Exception) -> str:
    return f"**error:** {e}"


@dataclass
class Ctx:
    """What the event handlers share: the process manager, the model cache and the form's inputs."""

    manager: RunManager
    out_root: str
    generator: Generator = field(default_factory=Generator)
    inputs: list[Any] = field(default_factory=list)  # form components, in form.field_specs() order
    by_name: dict[str, Any] = field(default_factory=dict)
    demo: Any = None  # the Blocks being built, for page-load events
    stream_interval_s: float = 0.05

    def shown(self, p: str | Path) -> str:
        """A run folder as the user would type it: relative to the working folder when inside it."""
        p = self.manager.resolve(p)
        try:
            return str(p.relative_to(self.manager.cwd))
        except ValueError:
            return str(p)

    def run_choices(self, extra: list[str] = (), with_ckpt: bool = False) -> list[str]:
        runs = discover_runs(self.out_root, self.manager, extra=[e for e in extra if e])
        return [self.shown(r.out_dir) for r in runs if r.has_last or r.has_best or not with_ckpt]


# ---------------------------------------------------------------------------------------------- Data


def build_data_tab(ctx: Ctx):
    cwd = str(ctx.manager.cwd)
    with gr.Row():
        with gr.Column(scale=2):
            explorer = gr.FileExplorer(root_dir=cwd, file_count="single", glob="**/*",
                                       ignore_glob=_fnmatch_escape(cwd) + "*/.*", label="Files on this machine",
                                       height=300)
            path = gr.Textbox(label="Path of a text file", placeholder="data/tiny_corpus.txt",
                              value=F.cli_defaults().get("data_path", ""))
            upload = gr.File(label="...or upload one (kept in data/uploads/)", file_count="single",
                             type="filepath", height=120)
            inspect_btn = gr.Button("Inspect")
        with gr.Column(scale=3):
            stats = gr.Markdown()
            preview = gr.Textbox(label="Beginning of the file", lines=14, max_lines=14, interactive=False,
                                 elem_classes="mono")
            use_btn = gr.Button("Use this file for training", variant="primary")
            use_msg = gr.Markdown()
            with gr.Accordion("Clean WikiText into a new file", open=False):
                clean_out = gr.Textbox(label="Cleaned file")
                keep_headings = gr.Checkbox(label="keep headings as plain lines", value=False)
                clean_replace = gr.Checkbox(label="replace an existing file", value=False)
                clean_btn = gr.Button("Clean")
                clean_msg = gr.Markdown()

    def inspect(p: str):
        try:
            s = text_stats(ctx.manager.resolve(p) if p and p.strip() else "")
        except UserError as e:
            return err(e), "", ""
        return s.markdown(), s.preview, str(default_clean_path(p))

    def uploaded(tmp: str | None):
        if not tmp:
            return gr.skip()
        dest = keep_upload(tmp, ctx.manager.resolve("data/uploads"))
        return ctx.shown(dest)

    def picked(p: str | None):
        return ctx.shown(p) if p else gr.skip()

    def clean(src: str, dest: str, keep: bool, replace: bool):
        try:
            return clean_wikitext(ctx.manager.resolve(src), ctx.manager.resolve(dest) if dest.strip() else "",
                                  keep, replace)
        except UserError as e:
            return err(e)

    explorer.change(picked, explorer, path, api_name=False)
    upload.upload(uploaded, upload, path, api_name="upload")
    gr.on([path.submit, inspect_btn.click, path.change], inspect, path, [stats, preview, clean_out],
          api_name="inspect_data", trigger_mode="always_last")
    clean_btn.click(clean, [path, clean_out, keep_headings, clean_replace], clean_msg, api_name="clean_wikitext")
    # Show the default file's statistics as soon as the page opens.
    ctx.demo.load(inspect, path, [stats, preview, clean_out], api_name=False, show_progress="hidden")
    return path, use_btn, use_msg


def wire_use_data(ctx: Ctx, path, use_btn, use_msg) -> None:
    """"Use this file" fills the form's data_path (built after the Data tab, hence wired separately)."""
    if "data_path" not in ctx.by_name:
        use_btn.visible = False
        return
    def use(p: str):
        try:
            if not p.strip():
                raise UserError("pick, type or upload a file first")
            glance_source(ctx.manager.resolve(p))
        except UserError as e:
            return gr.skip(), err(e)
        return p, f"data_path set to `{p}` in the Configure tab"

    use_btn.click(use, path, [ctx.by_name["data_path"], use_msg], api_name="use_data")


def _fnmatch_escape(s: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in s)


# ---------------------------------------------------------------------------------------------- Configure


INIT_FIELD = "init_from"  # a path to start from: a picker of the runs, or any path typed in
NO_INIT = ("none: random initialisation", "")


def init_choices(ctx: Ctx, current: str | None = None) -> list[tuple[str, str]]:
    """The init_from picker: no model, then every run with a checkpoint under the output root (a typed path,
    such as a Hugging Face folder, is kept as a choice of its own)."""
    runs = ctx.run_choices(with_ckpt=True)
    typed = [current] if current and current not in runs else []
    return [NO_INIT, *[(r, r) for r in [*typed, *runs]]]


def make_input(spec: F.FieldSpec, value: Any, choices: list | None = None):
    common = {"label": spec.name, "info": spec.info, "value": value, "elem_id": f"cfg-{spec.name}"}
    if choices is not None:  # a text setting with suggestions: pick one or type any value
        return gr.Dropdown(choices=choices, allow_custom_value=True, **common)
    if spec.kind == "bool":
        return gr.Checkbox(**common)
    if spec.kind == "choice":
        return gr.Dropdown(choices=list(spec.choices or ()), **common)
    if spec.kind == "int":
        # No rounding in the browser (precision=0 would turn 3.4 into 3 unseen): the form's check says
        # "must be a whole number" instead.
        return gr.Number(precision=None, step=1, **common)
    if spec.kind == "float":
        return gr.Number(step=0.0001, **common)
    return gr.Textbox(lines=2 if "\n" in str(value) else 1, **common)


def build_config_tab(ctx: Ctx):
    defaults = F.cli_defaults()
    defaults["out_dir"] = F.under_root(defaults.get("out_dir", ""), ctx.out_root)
    with gr.Row():
        preset = gr.Dropdown(choices=F.list_presets(), value=None, allow_custom_value=True, scale=3,
                             label="Preset (from config/) or the path of any JSON file", elem_id="preset")
        load_btn = gr.Button("Load", scale=1, elem_id="load-preset")
        save_path = gr.Textbox(label="Save the current settings as", placeholder="config/my_run.json", scale=3)
        save_replace = gr.Checkbox(label="replace an existing file", value=False, scale=1)
        save_btn = gr.Button("Save", scale=1)
    preset_msg = gr.Markdown(elem_id="preset-msg")
    command = gr.Code(label="Equivalent command (only the settings that differ from the defaults)",
                      language="shell", lines=2, interactive=False, elem_id="command", wrap_lines=True)
    check = gr.Markdown()
    created: dict[str, Any] = {}
    for group, specs in F.grouped_specs().items():
        with gr.Accordion(group.capitalize(), open=group in ("data", "model", "training")), gr.Row():
            for spec in specs:
                with gr.Column(min_width=220):
                    value = defaults.get(spec.name, spec.default)
                    created[spec.name] = make_input(spec, value, init_choices(ctx, value)
                                                    if spec.name == INIT_FIELD else None)
    ctx.by_name = created
    if INIT_FIELD in created:  # the runs under the output root, as they are when the picker opens
        created[INIT_FIELD].focus(lambda cur: gr.update(choices=init_choices(ctx, cur)), created[INIT_FIELD],
                                  created[INIT_FIELD], api_name="init_from_choices", show_progress="hidden")
    ctx.inputs = [created[s.name] for s in F.field_specs()]

    def preview(*values):
        try:
            cfg = F.config_from_values(values)
        except UserError as e:  # no command for settings that do not validate (an older one would mislead)
            return "# (fix the setting named below)", err(e)
        try:
            ctx.manager.preflight(cfg)
        except UserError as e:  # the settings are consistent, but the run would fail as it starts
            return F.command_preview(cfg), err(e)
        return F.command_preview(cfg), "settings are valid"

    def load(name: str | None):
        try:
            path = F.resolve_preset(name or "", ctx.manager.cwd)
            cfg = F.load_preset(path)
        except UserError as e:
            return [gr.skip()] * len(ctx.inputs) + [err(e)]
        cfg.out_dir = F.under_root(cfg.out_dir, ctx.out_root)
        return [*F.values_from_config(cfg), f"loaded {path}"]

    def save(path: str, replace: bool, *values):
        try:
            cfg = F.config_from_values(values)
            if not path.strip():
                raise UserError("type a file name ending in .json")
            p = F.save_preset(cfg, ctx.manager.resolve(path), replace)
        except UserError as e:
            return err(e), gr.skip()
        return f"saved {p}", gr.update(choices=F.list_presets())

    gr.on([c.change for c in ctx.inputs], preview, ctx.inputs, [command, check], api_name="preview_command",
          trigger_mode="always_last", show_progress="hidden")
    load_btn.click(load, preset, [*ctx.inputs, preset_msg], api_name="load_preset")
    save_btn.click(save, [save_path, save_replace, *ctx.inputs], [preset_msg, preset], api_name="save_preset")
    return command, check, preview


# ---------------------------------------------------------------------------------------------- Train


def monitor_outputs(ctx: Ctx, run: str | None, last_sig: Any):
    """Status, plots, log and sample of one run; gr.skip() everywhere while nothing changed on disk."""
    if not run:
        if last_sig == "none":
            return [gr.skip()] * 5 + [last_sig]
        return ["Start a run, or pick one above.", line_chart({}, title="Loss"),
                line_chart({}, title="Tokens per second"), "", "", "none"]
    out = ctx.manager.resolve(run)
    files = [out / "metrics.jsonl", out / CONSOLE_LOG, out / "ckpt.pt"]
    sig = [str(out), ctx.manager.is_running(out), ctx.manager.is_stopping(out),
           *[(p.stat().st_size, p.stat().st_mtime) if p.exists() else None for p in files]]
    if sig == last_sig:
        return [gr.skip()] * 5 + [last_sig]
    info = run_info(out, ctx.manager)
    status = summary_markdown(info, ctx.shown(out))
    if ctx.manager.last_stop_result(out) and info.status != "running":
        status += f"\n\nlast stop: {ctx.manager.last_stop_result(out)}"
    ckpts = [n for n, ok in (("ckpt.pt", info.has_last), ("ckpt_best.pt", info.has_best)) if ok]
    if ckpts:
        status += f"\n\ncheckpoints: {', '.join(ckpts)}"
    loss = line_chart(loss_series(info.rows), title="Loss", y_label="loss")
    speed = line_chart(speed_series(info.rows), title="Tokens per second", y_label="tokens/s")
    sample = next((r["sample"] for r in reversed(info.rows) if r.get("sample")), "")
    return [status, loss, speed, tail_text(out / CONSOLE_LOG), sample, sig]


def build_train_tab(ctx: Ctx):
    gr.Markdown("Start and Resume use the settings of the Configure tab; the run's folder is its `out_dir`. "
                "Stop asks the run to save a checkpoint at the end of its current step.")
    with gr.Row():
        run = gr.Dropdown(choices=[], value=None, allow_custom_value=True, label="Run folder (monitored)",
                          scale=4)
        start_btn = gr.Button("Start new run", variant="primary", scale=1, elem_id="start-run")
        resume_btn = gr.Button("Resume", scale=1, elem_id="resume-run")
        stop_btn = gr.Button("Stop", variant="stop", scale=1, elem_id="stop-run")
    action_msg = gr.Markdown(elem_id="train-msg")
    status = gr.Markdown(elem_id="run-status")
    with gr.Row():
        loss_plot = gr.HTML(elem_id="loss-plot")
        speed_plot = gr.HTML(elem_id="speed-plot")
    with gr.Row():
        log = gr.Textbox(label="Log (console of the training process)", lines=14, max_lines=14,
                         elem_classes="mono", autoscroll=True)
        sample = gr.Textbox(label="Latest sample", lines=14, max_lines=14, elem_classes="mono", elem_id="train-sample")
    sig = gr.State(None)
    timer = gr.Timer(TICK_S)

    def launch(resume: bool, *values):
        try:
            cfg = F.config_from_values(values)
            out = ctx.manager.start(cfg, resume=resume)
        except UserError as e:
            return err(e), gr.skip()
        shown = ctx.shown(out)
        verb = "resumed" if resume else "started"
        return (f"{verb} `{shown}`: `{F.command_preview(cfg, resume)}`",
                gr.update(choices=ctx.run_choices([shown]), value=shown))

    def stop(r: str | None):
        if not r:
            return "pick a run to stop"
        return ctx.manager.stop_async(r)

    def refresh_choices(current: str | None):
        return gr.update(choices=ctx.run_choices([current] if current else []))

    start_btn.click(lambda *v: launch(False, *v), ctx.inputs, [action_msg, run], api_name="start_run")
    resume_btn.click(lambda *v: launch(True, *v), ctx.inputs, [action_msg, run], api_name="resume_run")
    stop_btn.click(stop, run, action_msg, api_name="stop_run")
    outputs = [status, loss_plot, speed_plot, log, sample, sig]
    run.focus(refresh_choices, run, run, api_name=False, show_progress="hidden")
    gr.on([run.change], lambda r: monitor_outputs(ctx, r, None), run, outputs, api_name="monitor",
          show_progress="hidden")
    timer.tick(lambda r, s: monitor_outputs(ctx, r, s), [run, sig], outputs, api_name=False,
               show_progress="hidden")
    return run


# ---------------------------------------------------------------------------------------------- Runs


def runs_table(ctx: Ctx, root: str) -> pd.DataFrame:
    rows = []
    for r in discover_runs(root, ctx.manager):
        rows.append({
            "run": ctx.shown(r.out_dir), "status": r.status,
            "step": f"{r.step}/{r.max_steps}" if r.max_steps else str(r.step),
            "best val loss": round(r.best_val_loss, 4) if r.best_val_loss is not None else None,
            "last train loss": round(r.last_loss, 4) if r.last_loss is not None else None,
            "training time": fmt_duration(r.time_s) if r.rows else "",
            "checkpoints": " ".join(n for n, ok in (("last", r.has_last), ("best", r.has_best)) if ok),
            "started from": started_from(r.config),
            "config": config_summary(r.config),
        })
    cols = ["run", "status", "step", "best val loss", "last train loss", "training time", "checkpoints",
            "started from", "config"]
    return pd.DataFrame(rows, columns=cols)


def compare_chart(ctx: Ctx, runs: list[str] | None, which: str) -> str:
    """The `which` ("train" or "val") loss curves of the selected runs, one line per run."""
    series = {name: loss_series(run_info(ctx.manager.resolve(name), ctx.manager).rows)[which]
              for name in runs or []}
    empty = f"the selected runs have no {which} loss yet" if runs else "select runs to compare"
    return line_chart(series, title=f"{which} loss of the selected runs", y_label="loss", width=960, height=380,
                      empty=empty)


def build_runs_tab(ctx: Ctx, root_default: str):
    with gr.Row():
        root = gr.Textbox(value=root_default, label="Output root (runs are its sub-folders)", scale=4)
        refresh = gr.Button("Refresh", scale=1)
    table = gr.Dataframe(label="Runs", interactive=False, wrap=True, elem_id="runs-table")
    with gr.Row():
        chosen = gr.Dropdown(choices=[], multiselect=True, label="Compare runs", scale=4)
        which = gr.Radio(["val", "train"], value="val", label="Curve", scale=1)
        load_btn = gr.Button("Load the first run's settings into Configure", scale=2)
    with gr.Row():
        with gr.Column(scale=3):
            plot = gr.HTML(elem_id="compare-plot")
        with gr.Column(scale=2):
            eval_path, eval_btn, scores, eval_msg = build_scores(ctx)
    msg = gr.Markdown()


    def refresh_all(r: str, sel: list[str] | None):
        ctx.out_root = r or "out"
        df = runs_table(ctx, ctx.out_root)
        names = list(df["run"])
        keep = [s for s in (sel or []) if s in names] or names[:3]  # something to look at from the start
        return df, gr.update(choices=names, value=keep)

    def load_settings(sel: list[str] | None):
        if not sel:
            return [gr.skip()] * len(ctx.inputs) + ["select a run first"]
        cfg = run_config(ctx.manager.resolve(sel[0]))
        try:
            values = F.values_from_config({k: v for k, v in cfg.items() if k in F.cli_defaults()})
        except (UserError, TypeError) as e:
            return [gr.skip()] * len(ctx.inputs) + [err(e)]
        return [*values, f"settings of `{sel[0]}` loaded into the Configure tab"]

    gr.on([refresh.click, root.submit], refresh_all, [root, chosen], [table, chosen], api_name="list_runs")
    gr.on([chosen.change, which.change], lambda s, w: compare_chart(ctx, s, w or "val"), [chosen, which], plot,
          api_name="compare_runs", show_progress="hidden")
    load_btn.click(load_settings, chosen, [*ctx.inputs, msg], api_name="load_run_settings")
    wire_scores(ctx, chosen, eval_path, eval_btn, scores, eval_msg)
    return root, chosen, table, refresh_all


def build_scores(ctx: Ctx):
    """The Runs tab's evaluation: the selected runs' loss and bits per byte on one text (tinyllm-eval)."""
    path = gr.Textbox(label="Evaluate the selected runs on a text file (or folder)", elem_id="eval-path",
                      value=F.cli_defaults().get("data_path", ""), placeholder="data/tiny_corpus.txt")
    btn = gr.Button("Evaluate", elem_id="eval-btn")
    table = gr.Dataframe(value=pd.DataFrame(columns=S.COLUMNS), label="Loss (nats/token) and bpb (bits per UTF-8 "
                         "byte: comparable across tokenizers), from each run's ckpt.pt", interactive=False,
                         wrap=True, elem_id="eval-table")
    msg = gr.Markdown(elem_id="eval-msg")
    return path, btn, table, msg


def wire_scores(ctx: Ctx, chosen, path, btn, table, msg) -> None:
    scorer = S.Scorer(ctx.manager.cwd)

    def evaluate(sel: list[str] | None, p: str):
        try:
            scores = scorer.scores(sel or [], p, ctx.manager.resolve, lambda out: started_from(run_config(out)))
        except UserError as e:
            return gr.skip(), err(e)
        df = pd.DataFrame([s.row() for s in scores], columns=S.COLUMNS)
        failed = sum(1 for s in scores if s.loss is None)
        return df, f"evaluated {len(scores) - failed} of {len(scores)} run(s) on `{p.strip()}` with " \
                   f"`{' '.join(['tinyllm-eval', '--model', 'RUN', '--data_path', p.strip()])}`"

    btn.click(evaluate, [chosen, path], [table, msg], api_name="evaluate_runs")


# ---------------------------------------------------------------------------------------------- Generate


def build_generate_tab(ctx: Ctx):
    d = F.cli_defaults()
    kv_name = kv_cache_param()
    with gr.Row():
        run = gr.Dropdown(choices=[], allow_custom_value=True, label="Run folder", scale=4, elem_id="gen-run")
        which = gr.Radio(["last", "best"], value="last", label="Checkpoint", scale=1)
    prompt = gr.Textbox(label="Prompt", value="The ", lines=2)
    with gr.Row():
        new_tokens = gr.Number(value=d.get("sample_chars", 200), precision=0, label="New tokens")
        temperature = gr.Slider(0.0, 2.0, value=d.get("temperature", 0.8), step=0.05, label="Temperature",
                                info="0 = greedy")
        top_k = gr.Number(value=d.get("top_k", 0), precision=0, label="Top-k", info="0 = off")
        top_p = gr.Slider(0.05, 1.0, value=d.get("top_p", 1.0), step=0.01, label="Top-p", info="1 = off")
        rep = gr.Slider(0.5, 2.0, value=d.get("repetition_penalty", 1.0), step=0.05, label="Repetition penalty",
                        info="1 = off")
        seed = gr.Number(value=d.get("seed", 1337), precision=0, label="Seed")
    with gr.Row():
        kv = gr.Checkbox(value=False, label="KV cache", interactive=kv_name is not None,
                         info="reuse attention keys and values" if kv_name else
                         "not available in this version of tinyllm")
        drop = gr.Checkbox(value=False, label="drop prompt characters the vocabulary lacks")
        gen_btn = gr.Button("Generate", variant="primary", elem_id="gen-btn")
        stop_btn = gr.Button("Stop", variant="stop", elem_id="gen-stop")
    status = gr.Markdown(elem_id="gen-status")
    output = gr.Textbox(label="Text", lines=16, max_lines=30, elem_classes="mono", autoscroll=True,
                        elem_id="gen-output")

    def run_generation(r, w, p, n, t, k, tp, rp, s, use_kv, drop_unknown):
        if not r:
            yield "", err("pick a run with a checkpoint")
            return
        out = ctx.manager.resolve(r)
        text, shown, last = "", None, 0.0
        try:
            for text in ctx.generator.stream(out, w, p, n, t, k, tp, rp, s, bool(use_kv), bool(drop_unknown)):
                # Send at most one update per stream_interval_s: a browser redrawing the box once per token
                # falls behind a fast model.
                if time.monotonic() - last >= ctx.stream_interval_s:
                    yield text, ("generating…" if shown is None else gr.skip())
                    shown, last = text, time.monotonic()
        except UserError as e:
            yield text, err(e)
            return
        yield text, f"done: {len(text) - len(p or '')} characters from `{r}` ({w})"

    event = gen_btn.click(run_generation, [run, which, prompt, new_tokens, temperature, top_k, top_p, rep, seed,
                                           kv, drop], [output, status], api_name="generate")
    stop_btn.click(lambda: "stopped", None, status, cancels=[event], api_name="stop_generation")
    run.focus(lambda cur: gr.update(choices=ctx.run_choices([cur] if cur else [], with_ckpt=True)), run, run,
              api_name=False, show_progress="hidden")
    return run


# ---------------------------------------------------------------------------------------------- Export


def build_export_tab(ctx: Ctx):
    gr.Markdown("Write the run as a **Hugging Face** folder (for `transformers`) or one **GGUF** file (for "
                "llama.cpp, Ollama, LM Studio). What the run exports as, or why it cannot, shows before you press "
                "the button; the export runs the command shown below it.")
    with gr.Row():
        run = gr.Dropdown(choices=[], allow_custom_value=True, label="Run folder", scale=4, elem_id="export-run")
        which = gr.Radio(["last", "best"], value="last", label="Checkpoint", scale=1)
    with gr.Row():
        fmt = gr.Radio([("GGUF file (llama.cpp, Ollama)", "gguf"), ("Hugging Face folder", "hf")], value="gguf",
                       label="Format", scale=2)
        dtype = gr.Dropdown(list(GGUF_DTYPES), value="f16", label="GGUF weights", scale=1,
                            info="f16: half the size of f32; q8_0: about a quarter")
        no_ema = gr.Checkbox(False, label="raw weights (skip the EMA)", scale=1)
        overwrite = gr.Checkbox(False, label="replace an existing output", scale=1)
    output = gr.Textbox(label="Output (a .gguf file, or a folder for Hugging Face)", elem_id="export-output")
    verdict = gr.Markdown(elem_id="export-check")
    command = gr.Code(label="Equivalent command", language="shell", lines=1, interactive=False, wrap_lines=True,
                      elem_id="export-command")
    export_btn = gr.Button("Export", variant="primary", interactive=False, elem_id="export-btn")
    result = gr.Markdown(elem_id="export-result")
    suggested = gr.State("")  # the output last filled in automatically: replaced when the choices change

    def check(r, w, f, d, out, raw, over, last_suggested):
        # The output follows the choices until the user types a path of their own.
        own = (out or "").strip()
        if not own or own == last_suggested:
            own = X.suggested_output(r or "", f, d, w)
        plan = X.plan_export(ctx.manager.resolve, r, w, f, d, own, bool(raw), bool(over))
        return (plan.message, plan.command, gr.update(interactive=plan.ok), plan.output,
                gr.update(visible=f == "gguf"), own)

    def do_export(r, w, f, d, out, raw, over):
        plan = X.plan_export(ctx.manager.resolve, r, w, f, d, out, bool(raw), bool(over))
        ok, msg = X.run_export(plan, ctx.manager.cwd)
        again = X.plan_export(ctx.manager.resolve, r, w, f, d, out, bool(raw), bool(over))  # now it exists
        return msg, again.message, gr.update(interactive=again.ok)

    inputs = [run, which, fmt, dtype, output, no_ema, overwrite]
    gr.on([run.change, which.change, fmt.change, dtype.change, no_ema.change, overwrite.change, output.submit,
           output.blur], check, [*inputs, suggested], [verdict, command, export_btn, output, dtype, suggested],
          api_name="export_check", show_progress="hidden", trigger_mode="always_last")
    export_btn.click(do_export, inputs, [result, verdict, export_btn], api_name="export")
    run.focus(lambda cur: gr.update(choices=ctx.run_choices([cur] if cur else [], with_ckpt=True)), run, run,
              api_name=False, show_progress="hidden")
    return run


# ---------------------------------------------------------------------------------------------- the app


def build_app(out_root: str = "out", cwd: str | Path | None = None, manager: RunManager | None = None) -> gr.Blocks:
    ctx = Ctx(manager=manager or RunManager(cwd), out_root=out_root)
    with gr.Blocks(title="tinyllm", analytics_enabled=False) as demo:
        ctx.demo = demo
        gr.Markdown("## tinyllm — train a tiny GPT on your own text")
        with gr.Tabs():
            with gr.Tab("Data", id="data"):
                data_parts = build_data_tab(ctx)
            with gr.Tab("Configure", id="configure"):
                command, check, preview = build_config_tab(ctx)
            with gr.Tab("Train", id="train"):
                train_run = build_train_tab(ctx)
            with gr.Tab("Runs", id="runs") as runs_tab:
                root, chosen, table, refresh_all = build_runs_tab(ctx, out_root)
            with gr.Tab("Generate", id="generate") as gen_tab:
                gen_run = build_generate_tab(ctx)
            with gr.Tab("Export", id="export") as export_tab:
                export_run = build_export_tab(ctx)
        wire_use_data(ctx, *data_parts)

        def on_load():
            # A fresh page (or a refresh) picks up from disk: the newest running run, else the newest run.
            runs = discover_runs(ctx.out_root, ctx.manager)
            names = [ctx.shown(r.out_dir) for r in runs]
            live = [ctx.shown(r.out_dir) for r in runs if r.status in ("running", "stopping")]
            pick = (live or names or [None])[0]
            with_ckpt = [ctx.shown(r.out_dir) for r in runs if r.has_last or r.has_best]
            return (gr.update(choices=names, value=pick),
                    gr.update(choices=with_ckpt, value=(with_ckpt or [None])[0]))

        demo.load(on_load, None, [train_run, gen_run], api_name=False)
        demo.load(preview, ctx.inputs, [command, check], api_name=False, show_progress="hidden")
        runs_tab.select(refresh_all, [root, chosen], [table, chosen], api_name=False)
        def gen_choices(cur: str | None, monitored: str | None):
            # Train, then generate: the run on the Train tab is the one offered, once it has a checkpoint.
            names = ctx.run_choices([c for c in (cur, monitored) if c], with_ckpt=True)
            pick = monitored if monitored in names else cur if cur in names else (names or [None])[0]
            return gr.update(choices=names, value=pick)

        gen_tab.select(gen_choices, [gen_run, train_run], gen_run, api_name=False)
        export_tab.select(gen_choices, [export_run, train_run], export_run, api_name=False)
    demo.tinyllm_ctx = ctx  # type: ignore[attr-defined] - lets tests and launch() reach the manager
    return demo


def launch(demo: gr.Blocks, host: str = "127.0.0.1", port: int | None = 7860, share: bool = False,
           prevent_thread_lock: bool = False, quiet: bool = False, auth: tuple[str, str] | None = None):
    """Serve locally (127.0.0.1 unless asked), no analytics, no server-side rendering, no MCP, no monitoring.
    With `auth` (user, password), Gradio's own login page guards every page and API call."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    return demo.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=prevent_thread_lock,
                       auth=auth,
                       quiet=quiet, css=CSS, ssr_mode=False, mcp_server=False, enable_monitoring=False,
                       footer_links=["api", "settings"])
