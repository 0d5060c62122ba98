"""The training loop: data, model and optimizer in; checkpoints, metrics and logs out.

The hot loop does no host sync per step: the loss is accumulated on the device and read back (`.item()`)
only at log intervals. Everything that draws random numbers outside the forward pass (the batch sampler,
evaluation, text samples) has a generator of its own, so the global RNG is used by dropout alone and a
resumed run continues bit for bit.
"""

from __future__ import annotations

import math
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tinyllm import checkpoint as ckpt_io
from tinyllm.config import Config, save_json
from tinyllm.data import BatchSampler, check_split_lengths, encode_to_tensor, read_text, split_ids
from tinyllm.errors import UserError
from tinyllm.generate import SamplingParams, generate_text
from tinyllm.metrics import MetricsWriter
from tinyllm.model import GPT, ModelArgs
from tinyllm.optim import get_lr, make_optimizer, set_lr
from tinyllm.tokenizer import CharTokenizer, tokenizer_from_json

STOP_FILE = "STOP"  # the GUI creates out_dir/STOP to ask a run to save and stop
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
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
    elif dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError("--device mps: MPS is not available here; use --device cpu or auto")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"--device '{name}' is not supported; use auto, cpu, cuda, cuda:N or mps")
    return dev


class RunLog:
    """Messages go to stderr (above the progress bar) and to out_dir/train.log."""

    def __init__(self, path: Path):
        self._f = open(path, "a", encoding="utf-8")  # noqa: SIM115 - open for the whole run
        self.bar = None

    def __call__(self, msg: str) -> None:
        if self.bar is not None:
            self.bar.write(msg, file=sys.stderr)
        else:
            print(msg, file=sys.stderr, flush=True)
        self._f.write(msg + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


class StopFlag:
    """Turns SIGINT/SIGTERM into a request to save and stop at the next step boundary. A second
    Ctrl+C while saving falls back to Python's default and interrupts immediately."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> StopFlag:
        for s in EXIT_CODES:
            self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


@dataclass
class Progress:
    """The counters that make a run resumable, saved in every checkpoint."""

    step: int = 0
    tokens_seen: int = 0
    best_val_loss: float = math.inf
    time_s: float = 0.0


def prepare_data(cfg: Config, saved_tokenizer: str | None):
    """Read and tokenize the data file; on resume the checkpoint's tokenizer is reused as it is."""
    text = read_text(cfg.data_path)
    tokenizer = tokenizer_from_json(saved_tokenizer) if saved_tokenizer else CharTokenizer.from_text(text)
    try:
        ids = tokenizer.encode(text)
    except UserError as e:
        raise UserError(f"--data_path {cfg.data_path}: {e} (the checkpoint's vocabulary was built from "
                        "another file; resume with the original data)") from None
    ids = encode_to_tensor(ids, tokenizer.vocab_size)
    train_ids, val_ids = split_ids(ids, cfg.val_fraction)
    check_split_lengths(train_ids, val_ids, cfg.block_size, need_val=cfg.eval_interval > 0,
                        source=cfg.data_path)
    val_bytes = len(tokenizer.decode(val_ids.tolist()).encode("utf-8")) if len(val_ids) else 0
    bytes_per_token = val_bytes / len(val_ids) if len(val_ids) else 0.0
    return tokenizer, train_ids, val_ids, bytes_per_token


@torch.no_grad()
def evaluate(model: GPT, splits: dict[str, torch.Tensor], cfg: Config, device: torch.device) -> dict[str, float]:
    """Mean loss over the same eval_iters batches every time (fixed seeds), so evals compare."""
    model.eval()
    out = {}
    for i, (name, data) in enumerate(splits.items()):
        sampler = BatchSampler(data, cfg.block_size, cfg.batch_size, seed=cfg.seed + 10_000 + i)
        total = torch.zeros((), device=device)
        for _ in range(cfg.eval_iters):
            x, y = sampler.next()
            total += model(x.to(device), y.to(device))[1]
        out[name] = (total / cfg.eval_iters).item()
    model.train()
    return out


def train(cfg: Config, resume: dict[str, Any] | None = None) -> int:
    """Train as `cfg` says, continuing from the checkpoint dict `resume` if given. Returns the exit code."""
    device = resolve_device(cfg.device)
    tokenizer, train_ids, val_ids, bytes_per_token = prepare_data(cfg, resume["tokenizer"] if resume else None)

    out = Path(cfg.out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--out_dir {out}: cannot create it ({e.strerror}); choose a writable folder") from None
    save_json(cfg, out / "config.json")
    ckpt_io.atomic_write_text(out / "tokenizer.json", tokenizer.to_json())
    (out / STOP_FILE).unlink(missing_ok=True)

    torch.manual_seed(cfg.seed)
    args = ModelArgs.from_config(cfg, tokenizer.vocab_size)
    model = GPT(args).to(device)
    optimizer = make_optimizer(model, cfg, device)
    sampler = BatchSampler(train_ids, cfg.block_size, cfg.batch_size, seed=cfg.seed)
    progress = Progress()
    if resume:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        sampler.load_state_dict(resume["data_state"])
        ckpt_io.restore_rng(resume["rng"])
        progress = Progress(resume["step"], resume["tokens_seen"], resume["best_val_loss"], resume["time_s"])

    log = RunLog(out / "train.log")
    metrics = MetricsWriter(out / "metrics.jsonl", append=resume is not None)
    eval_splits = {"train": train_ids, "val": val_ids}
    log(f"tinyllm: {model.num_params():,} parameters | vocab {tokenizer.vocab_size} | device {device} | fp32")
    log(f"data: {cfg.data_path} -> {len(train_ids):,} train / {len(val_ids):,} val tokens | "
        f"batch {cfg.batch_size} x {cfg.block_size} tokens")
    if resume:
        log(f"resuming from step {progress.step} of {cfg.max_steps}")

    def state() -> dict[str, Any]:
        return {
            "format_version": ckpt_io.FORMAT_VERSION, "config": cfg.to_dict(), "model_args": args.to_dict(),
            "model": ckpt_io.strip_prefixes(model.state_dict()), "tokenizer": tokenizer.to_json(),
            "optimizer": optimizer.state_dict(), "step": progress.step, "tokens_seen": progress.tokens_seen,
            "best_val_loss": progress.best_val_loss, "time_s": progress.time_s, "rng": ckpt_io.capture_rng(),
            "data_state": sampler.state_dict(),
        }

    def due(interval: int) -> bool:
        return interval > 0 and progress.step % interval == 0

    tokens_per_step = cfg.batch_size * cfg.block_size
    loss_sum, loss_count = torch.zeros((), device=device), 0
    t_session = time.perf_counter()
    time_before = progress.time_s
    t_last_log, tokens_last_log = t_session, progress.tokens_seen
    end_reason, exit_code = "max_steps", 0
    bar = None
    if cfg.progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.max_steps, initial=progress.step, file=sys.stderr, unit="step",
                   dynamic_ncols=True, smoothing=0.1)
        log.bar = bar

    model.train()
    try:
        with StopFlag() as stop:
            while progress.step < cfg.max_steps:
                set_lr(optimizer, get_lr(progress.step, cfg))
                x, y = sampler.next()
                _, loss = model(x.to(device, non_blocking=True), y.to(device, non_blocking=True))
                loss.backward()
                if cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                progress.step += 1
                progress.tokens_seen += tokens_per_step
                loss_sum += loss.detach()
                loss_count += 1
                progress.time_s = time_before + time.perf_counter() - t_session
                last = progress.step == cfg.max_steps

                if due(cfg.log_interval) or last:
                    now = time.perf_counter()
                    tok_s = (progress.tokens_seen - tokens_last_log) / max(now - t_last_log, 1e-9)
                    mean_loss = (loss_sum / loss_count).item()
                    metrics.write({"step": progress.step, "time_s": round(progress.time_s, 3), "loss": mean_loss,
                                   "lr": get_lr(progress.step - 1, cfg), "tokens_per_sec": round(tok_s, 1)})
                    if bar is not None:
                        bar.set_postfix(loss=f"{mean_loss:.4f}", tok_s=f"{tok_s:,.0f}", refresh=False)
                    loss_sum.zero_()
                    loss_count, t_last_log, tokens_last_log = 0, now, progress.tokens_seen
                if bar is not None:
                    bar.update(1)

                if cfg.eval_interval > 0 and (due(cfg.eval_interval) or last):
                    losses = evaluate(model, eval_splits, cfg, device)
                    row = {"step": progress.step, "time_s": round(progress.time_s, 3),
                           "val_loss": losses["val"], "train_eval_loss": losses["train"]}
                    if bytes_per_token:
                        row["val_bpb"] = losses["val"] / math.log(2) / bytes_per_token
                    metrics.write(row)
                    improved = losses["val"] < progress.best_val_loss
                    log(f"step {progress.step}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}"
                        + (" (best so far)" if improved else ""))
                    if improved:
                        progress.best_val_loss = losses["val"]
                        ckpt_io.save_checkpoint(state(), out / ckpt_io.CKPT_NAMES["best"])

                if due(cfg.sample_interval) or (last and cfg.sample_interval > 0):
                    sample = sample_text(model, tokenizer, cfg, log, seed=cfg.seed + progress.step)
                    metrics.write({"step": progress.step, "time_s": round(progress.time_s, 3), "sample": sample})
                    log(f"--- sample at step {progress.step} ---\n{sample}\n---")

                if due(cfg.checkpoint_interval) and not last:
                    ckpt_io.save_checkpoint(state(), out / ckpt_io.CKPT_NAMES["last"])

                if stop.signum is not None:
                    end_reason, exit_code = "interrupted", EXIT_CODES[stop.signum]
                    break
                if (out / STOP_FILE).exists():
                    (out / STOP_FILE).unlink(missing_ok=True)
                    end_reason = "interrupted"
                    break
                if cfg.max_time > 0 and time.perf_counter() - t_session >= cfg.max_time:
                    end_reason = "max_time"
                    break
            ckpt_io.save_checkpoint(state(), out / ckpt_io.CKPT_NAMES["last"])
    except BaseException as e:
        metrics.write({"step": progress.step, "time_s": round(progress.time_s, 3), "event": "end",
                       "reason": "interrupted" if isinstance(e, KeyboardInterrupt) else "error",
                       "error": repr(e)[:500]})
        raise
    finally:
        if bar is not None:
            bar.close()
            log.bar = None

    metrics.write({"step": progress.step, "time_s": round(progress.time_s, 3), "event": "end",
                   "reason": end_reason})
    summarize(cfg, progress, end_reason, log)
    log.close()
    metrics.close()
    return exit_code


def sample_text(model: GPT, tokenizer, cfg: Config, log: RunLog, seed: int) -> str:
    """A text sample for the log; a bad prompt warns instead of stopping the run."""
    params = SamplingParams.from_config(cfg)
    try:
        return generate_text(model, tokenizer, cfg.prompt, cfg.sample_chars, params, seed=seed)
    except UserError as e:
        log(f"warning: --prompt: {e}; sampling with those characters dropped")
        return generate_text(model, tokenizer, cfg.prompt, cfg.sample_chars, params, seed=seed,
                             drop_unknown=True)


def summarize(cfg: Config, p: Progress, reason: str, log: RunLog) -> None:
    out = Path(cfg.out_dir)
    best = f"{p.best_val_loss:.4f}" if math.isfinite(p.best_val_loss) else "n/a (eval disabled)"
    lines = [
        f"done ({reason}) at step {p.step}/{cfg.max_steps}: best val loss {best}, "
        f"{p.time_s:.1f} s of training, {p.tokens_seen:,} tokens seen",
        f"checkpoints: {out / 'ckpt.pt'}" + (f" and {out / 'ckpt_best.pt'}" if math.isfinite(p.best_val_loss)
                                             else ""),
        f"sample: python train_tinyllm.py --out_dir {out} --generate_only --prompt \"The \" --sample_chars 300",
    ]
    if reason == "interrupted" or reason == "max_time":
        lines.append(f"continue: python train_tinyllm.py --out_dir {out} --resume")
    for line in lines:
        log(line)
