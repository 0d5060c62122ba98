"""The training loop: data, model and optimizer in; checkpoints, metrics and logs out.

The hot loop reads nothing back from the device per step except one scalar: whether the loss (and the
gradient norm) is finite, so that a NaN never reaches the weights or a checkpoint. Losses for the log are
accumulated on the device and read at log intervals. Everything that draws random numbers outside the
forward pass (the batch sampler, evaluation, text samples) has a generator of its own, so the global RNG
is used by dropout alone and a resumed run continues bit for bit.

Under DDP (tinyllm.distributed) only rank 0 writes files; decisions that must agree across ranks (stop now,
skip a non-finite step) are all-reduced once per step.
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tinyllm import checkpoint as ckpt_io
from tinyllm import distributed, tensorboard
from tinyllm.config import Config, save_json
from tinyllm.data import BatchSampler, curriculum_block_size, make_train_sampler, prepare, to_device
from tinyllm.ema import EMA
from tinyllm.errors import UserError
from tinyllm.generate import SamplingParams, generate_text, parse_stop
from tinyllm.losses import training_loss
from tinyllm.metrics import MetricsWriter
from tinyllm.model import GPT, ModelArgs
from tinyllm.optim import get_lr, lr_factor, make_optimizer, set_lr
from tinyllm.plot import plot_at_end
from tinyllm.precision import Precision, choose_precision, cpu_description
from tinyllm.rundir import RunLock, prepare_run_dir

STOP_FILE = "STOP"  # the GUI creates out_dir/STOP to ask a run to save and stop
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank) if local_rank else torch.device("cuda")
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
        if local_rank and dev.index is None:
            dev = torch.device("cuda", local_rank)
    elif dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError("--device mps: MPS is not available here; use --device cpu or auto")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"--device '{name}' is not supported; use auto, cpu, cuda, cuda:N or mps")
    return dev


class RunLog:
    """Messages go to stderr (above the progress bar) and, on rank 0, to out_dir/train.log. Other DDP
    ranks stay quiet except for warnings and errors, so each line appears once."""

    def __init__(self, path: Path | None, quiet: bool = False):
        self._f = open(path, "a", encoding="utf-8") if path else None  # noqa: SIM115 - open for the whole run
        self.bar = None
        self.quiet = quiet

    def __call__(self, msg: str) -> None:
        if self.quiet and not msg.startswith(("warning", "error")):
            return
        if self.bar is not None:
            self.bar.write(msg, file=sys.stderr)
        else:
            print(msg, file=sys.stderr, flush=True)
        if self._f:
            self._f.write(msg + "\n")
            self._f.flush()

    def close(self) -> None:
        if self._f:
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
    skipped_steps: int = 0


def prepare_data(cfg: Config, saved_tokenizer: str | None):
    """(tokenizer, train tokens, val tokens, UTF-8 bytes per val token): in memory, or the memmapped
    out_dir/tokens.bin with --memmap_dataset (tinyllm.data). On resume the checkpoint's tokenizer is reused."""
    return prepare(cfg, saved_tokenizer)


def forward_backward(model: torch.nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]], cfg: Config,
                     precision: Precision) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Accumulate the gradient of the mean objective over micro-batches; returns the mean (ce, z-loss),
    detached. Each micro-batch's loss is divided by their number, so the summed gradient equals the
    gradient of one big batch. Under DDP the gradients are all-reduced on the last micro-batch only."""
    n = len(batches)
    ce_sum = z_sum = None
    for i, (x, y) in enumerate(batches):
        sync = i == n - 1 or not hasattr(model, "no_sync")
        with contextlib.nullcontext() if sync else model.no_sync():
            with precision.autocast():
                logits, _ = model(x)
            ce, z = training_loss(logits, y, cfg.label_smoothing, cfg.z_loss)
            objective = (ce if z is None else ce + z) / n
            (precision.scaler.scale(objective) if precision.scaler else objective).backward()
        ce_sum = ce.detach() if ce_sum is None else ce_sum + ce.detach()
        if z is not None:
            z_sum = z.detach() if z_sum is None else z_sum + z.detach()
    return ce_sum / n, (None if z_sum is None else z_sum / n)


def compile_model(model: torch.nn.Module, backend: str) -> torch.nn.Module:
    import torch._dynamo

    known = torch._dynamo.list_backends(exclude_tags=())
    if backend not in known:
        raise UserError(f"--compile_backend '{backend}' is not a registered backend; use one of {', '.join(known)}")
    return torch.compile(model, backend=backend)


@torch.no_grad()
def evaluate(model: torch.nn.Module, splits: dict[str, torch.Tensor], cfg: Config, device: torch.device,
             precision: Precision, seed_offset: int = 0) -> dict[str, float]:
    """Mean loss over the same eval_iters batches every time (fixed seeds), so evals compare."""
    was_training = model.training
    model.eval()
    out = {}
    for i, (name, data) in enumerate(splits.items()):
        sampler = BatchSampler(data, cfg.block_size, cfg.batch_size, seed=cfg.seed + 10_000 + 100 * seed_offset + i)
        total = torch.zeros((), device=device)
        for _ in range(cfg.eval_iters):
            x, y = sampler.next()
            with precision.autocast():
                total += model(x.to(device), y.to(device))[1].float()
        out[name] = (total / cfg.eval_iters).item()
    model.train(was_training)
    return out


def restore_optimizer(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load the saved moments but keep this run's hyperparameters (lr, weight decay, betas may change on
    resume; load_state_dict alone would bring back the old ones)."""
    fresh = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, hyper in zip(optimizer.param_groups, fresh, strict=True):
        group.update(hyper)


def check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as e:
        raise UserError(f"--out_dir {out}: cannot write there ({e.strerror}); choose a writable folder") from None


class Trainer:
    """Builds everything a run needs from the config (and a checkpoint to resume), then `run()`s it."""

    def __init__(self, cfg: Config, resume: dict[str, Any] | None, dist: distributed.Dist):
        self.cfg, self.dist = cfg, dist
        self.plot_pending = False
        if cfg.tensorboard and dist.is_main:
            tensorboard.require()  # a missing extra is an error before any data is read
        self.device = resolve_device(cfg.device, dist.local_rank)
        self.out = Path(cfg.out_dir)
        # Rank 0 prepares the data first (and writes any cache files); the others read after it.
        if not dist.is_main:
            dist.barrier()
        self.tokenizer, train_ids, val_ids, self.bytes_per_token = prepare_data(
            cfg, resume["tokenizer"] if resume else None)
        if dist.is_main:
            dist.barrier()
            check_writable(self.out)
        self.eval_splits = {"train": train_ids, "val": val_ids}

        self.lock = RunLock(self.out) if dist.is_main else None
        if self.lock:
            self.lock.acquire()
        try:
            self._build(cfg, resume, dist)
        except BaseException:
            self.__dict__.pop("fwd_model", None)  # a DDP wrapper holds the process group: teardown frees it
            if self.lock:
                self.lock.release()
            raise

    def _build(self, cfg: Config, resume: dict[str, Any] | None, dist: distributed.Dist) -> None:
        train_ids = self.eval_splits["train"]
        self.log = RunLog(None, quiet=not dist.is_main)
        self.precision = choose_precision(self.device, cfg.amp, warn=self.log)
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        self.args = ModelArgs.from_config(cfg, self.tokenizer.vocab_size)
        self.model = GPT(self.args).to(self.device)
        self.optimizer = make_optimizer(self.model, cfg, self.device)
        # One process with torch's fused AdamW and no loss scaling: non-finite steps can be skipped on the
        # device (see train_step), which removes the per-step host sync. DDP needs every rank's verdict.
        self.skips_on_device = (getattr(self.optimizer, "_step_supports_amp_scaling", False)
                                and self.precision.scaler is None and not dist.enabled)
        self.fwd_model = self._wrap(compile_model(self.model, cfg.compile_backend) if cfg.compile else self.model)
        # Different data on every rank: the sampler's seed is offset by the rank.
        self.sampler = make_train_sampler(train_ids, cfg, cfg.seed + dist.rank, self.device)
        self.ema = EMA(self.model, cfg.ema_decay) if cfg.ema else None
        self.progress = Progress()
        if resume:
            self._restore(resume)
        self.eval_model = self.ema.model if self.ema is not None else self.model

        # Everything is validated and built: only now may the run folder change.
        if dist.is_main:
            prepare_run_dir(self.out, resume_step=self.progress.step if resume else None, overwrite=cfg.overwrite)
            save_json(cfg, self.out / "config.json")
            ckpt_io.atomic_write_text(self.out / "tokenizer.json", self.tokenizer.to_json())
            (self.out / STOP_FILE).unlink(missing_ok=True)
            self.log = RunLog(self.out / "train.log")
        tb = tensorboard.TensorBoardWriter(self.out, self.progress.step if resume else None) \
            if cfg.tensorboard and dist.is_main else None
        self.metrics = MetricsWriter(self.out / "metrics.jsonl", append=True, tensorboard=tb) if dist.is_main else None

    def _wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        if not self.dist.enabled:
            return model
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [self.device.index] if self.device.type == "cuda" else None
        # Blocks skipped by layerdrop get no gradient in that step (the same blocks on every rank).
        return DDP(model, device_ids=ids, find_unused_parameters=self.cfg.layerdrop > 0)

    def _restore(self, ckpt: dict[str, Any]) -> None:
        self.model.load_state_dict(ckpt["model"])
        restore_optimizer(self.optimizer, ckpt["optimizer"])
        ranks = ckpt["data_state"].get("ranks", [ckpt["data_state"]])
        # A run resumed on a different number of processes keeps the samplers it has states for; new ranks
        # start from their seed.
        if self.dist.rank < len(ranks):
            self.sampler.load_state_dict(ranks[self.dist.rank])
        if self.ema is not None:
            self.ema.load_state_dict(ckpt["ema"] if "ema" in ckpt else self.model.state_dict())
        if self.precision.scaler is not None and "scaler" in ckpt:
            self.precision.scaler.load_state_dict(ckpt["scaler"])
        ckpt_io.restore_rng(ckpt["rng"])
        self.progress = Progress(ckpt["step"], ckpt["tokens_seen"], ckpt["best_val_loss"], ckpt["time_s"],
                                 ckpt.get("skipped_steps", 0))

    # -- checkpoints ---------------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        p = self.progress
        s = {
            "format_version": ckpt_io.FORMAT_VERSION, "config": self.cfg.to_dict(), "model_args": self.args.to_dict(),
            "model": ckpt_io.strip_prefixes(self.model.state_dict()), "tokenizer": self.tokenizer.to_json(),
            "optimizer": self.optimizer.state_dict(), "step": p.step, "tokens_seen": p.tokens_seen,
            "best_val_loss": p.best_val_loss, "time_s": p.time_s, "skipped_steps": p.skipped_steps,
            "rng": ckpt_io.capture_rng(), "data_state": {"ranks": self.dist.gather_objects(self.sampler.state_dict())},
        }
        if self.ema is not None:
            s["ema"] = ckpt_io.strip_prefixes(self.ema.state_dict())
        if self.precision.scaler is not None:
            s["scaler"] = self.precision.scaler.state_dict()
        return s

    def save(self, which: str) -> bool:
        """Write a checkpoint (rank 0; all ranks must call it, for the sampler states). A failed write is
        reported and leaves the previous file as it was."""
        state = self.state()
        if not self.dist.is_main:
            return True
        path = self.out / ckpt_io.CKPT_NAMES[which]
        try:
            ckpt_io.save_checkpoint(state, path)
            return True
        except OSError as e:
            self.log(f"error: could not save {path} ({e.strerror or e}); the previous {path.name} is intact")
            return False

    # -- one step ------------------------------------------------------------------------------------------

    def block_size_now(self) -> int:
        cfg = self.cfg
        if not cfg.curriculum:
            return cfg.block_size
        return curriculum_block_size(self.progress.step, cfg.curriculum_start_block_size, cfg.block_size,
                                     cfg.curriculum_steps)

    def train_step(self, t: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, bool | torch.Tensor]:
        """Forward, backward and (if everything is finite) the optimizer step. Returns (ce, z, grad norm,
        finite); `finite` is a bool, or a 0-dim bool tensor still on the device when the step was skipped
        (or not) on the device itself (`skips_on_device`): `bool(finite)` reads it back."""
        cfg = self.cfg
        set_lr(self.optimizer, lr_factor(self.progress.step, cfg, self.progress.time_s))
        self.model.set_layerdrop_step(cfg.seed, self.progress.step)  # blocks skipped: a function of (seed, step)
        batches = []
        for _ in range(cfg.grad_accum_steps):
            batches.append(to_device(self.sampler.next(t), self.device))
        try:
            ce, z = forward_backward(self.fwd_model, batches, cfg, self.precision)
        except Exception as e:  # a compiler failure must not kill the run: fall back to eager
            if self.fwd_model is self.model or not cfg.compile:
                raise
            first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
            self.log(f"warning: --compile ({cfg.compile_backend}) failed: {type(e).__name__}: {first}; "
                     "continuing in eager mode")
            self.fwd_model = self._wrap(self.model)
            self.optimizer.zero_grad(set_to_none=True)
            ce, z = forward_backward(self.fwd_model, batches, cfg, self.precision)
        scaler = self.precision.scaler
        if scaler is not None:
            scaler.unscale_(self.optimizer)
        grad_norm = None
        if cfg.grad_clip > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        # A NaN/inf must never reach the weights. (Under fp16 loss scaling, inf gradients are the scaler's
        # business: it skips those steps itself.)
        bad = ce if grad_norm is None or scaler is not None else ce + grad_norm
        if self.skips_on_device:
            finite = torch.isfinite(bad)
            # The fused AdamW kernel skips the whole update, step count included, where found_inf is 1 (the
            # hook GradScaler uses), so the host never waits for the device here and stays a step ahead.
            self.optimizer.found_inf = (~finite).float()  # type: ignore[attr-defined]
            self.optimizer.step()
            if self.ema is not None:
                self.ema.update(finite)
            self.optimizer.zero_grad(set_to_none=True)
            return ce, z, grad_norm, finite
        # Elsewhere, the one per-step read-back.
        (nonfinite,) = self.dist.any_true(not bool(torch.isfinite(bad)))
        if not nonfinite:
            stepped = True
            if scaler is not None:
                scale = scaler.get_scale()
                scaler.step(self.optimizer)
                scaler.update()
                # The scaler lowers its scale exactly when it skipped the step (inf/NaN in the scaled
                # gradients, routine while the scale settles): then the EMA must not move either.
                stepped = scaler.get_scale() >= scale
            else:
                self.optimizer.step()
            if self.ema is not None and stepped:
                self.ema.update()
        self.optimizer.zero_grad(set_to_none=True)
        return ce, z, grad_norm, not nonfinite

    # -- the loop ------------------------------------------------------------------------------------------

    def announce(self) -> None:
        cfg, d = self.cfg, self.dist
        effective = cfg.batch_size * cfg.grad_accum_steps * d.world_size
        self.log(f"tinyllm: {self.model.num_params():,} parameters | vocab {self.tokenizer.vocab_size} | "
                 f"device {self.device}" + (f" | {cpu_description()}" if self.device.type == "cpu" else "")
                 + (f" | DDP {d.world_size} processes ({d.backend})" if d.enabled else ""))
        self.log(f"precision: {self.precision.describe()} | optimizer: {cfg.optimizer} | schedule: {cfg.lr_schedule}"
                 + (f" | compile: {cfg.compile_backend}" if cfg.compile else ""))
        train_ids, val_ids = self.eval_splits["train"], self.eval_splits["val"]
        self.log(f"data: {cfg.data_path} -> {len(train_ids):,} train / {len(val_ids):,} val tokens | effective "
                 f"batch {cfg.batch_size} x {cfg.grad_accum_steps} accum x {d.world_size} process"
                 f"{'es' if d.world_size > 1 else ''} = {effective} sequences of {cfg.block_size} tokens")
        if self.progress.step:
            self.log(f"resuming from step {self.progress.step} of {cfg.max_steps}" if cfg.max_steps else
                     f"resuming after {self.progress.time_s:.0f} s of {cfg.max_time:.0f} s")

    def write(self, row: dict[str, Any]) -> None:
        if self.metrics is not None:
            self.metrics.write({"step": self.progress.step, "time_s": round(self.progress.time_s, 3)} | row)

    def run(self) -> int:
        cfg, p, main = self.cfg, self.progress, self.dist.is_main
        self.announce()
        sums = {"loss": torch.zeros((), device=self.device), "z_loss": torch.zeros((), device=self.device)}
        count, skipped_since_log, grad_norm = 0, 0, None
        t_session = time.perf_counter()
        time_before = p.time_s
        t_last_log, tokens_last_log = t_session, p.tokens_seen
        end_reason, exit_code, error = "max_steps", 0, None
        bar = None
        if cfg.progress and main:
            from tqdm import tqdm

            bar = tqdm(total=cfg.max_steps or None, initial=p.step, file=sys.stderr, unit="step", dynamic_ncols=True,
                       smoothing=0.1)
            self.log.bar = bar

        # --max_steps 0: --max_time is the run's length across resumes, so its end gets the final eval and
        # sample that a last step gets; otherwise --max_time only ends this session.
        budgeted = cfg.max_steps == 0

        def due(interval: int) -> bool:
            return interval > 0 and p.step % interval == 0

        # (step, ce, z, grad norm, finite) of steps whose finiteness has not been read back yet
        unsettled: list[tuple[int, torch.Tensor, torch.Tensor | None, torch.Tensor | None, Any]] = []

        def settle(keep: int) -> str | None:
            """Account for all but the last `keep` unsettled steps; an error message if one was non-finite
            and --skip_nonfinite is off (the run then stops without saving)."""
            nonlocal count, skipped_since_log, grad_norm
            while len(unsettled) > keep:
                step, ce, z, norm, finite = unsettled.pop(0)
                if not finite:
                    if not cfg.skip_nonfinite:
                        unsettled.clear()
                        return (f"non-finite loss or gradient at step {step}; stopping without saving (the last "
                                f"good checkpoint is kept as it was). Lower --lr, use --grad_clip, or pass "
                                f"--skip_nonfinite to skip such steps")
                    p.skipped_steps += 1
                    skipped_since_log += 1
                    self.log(f"warning: skipped step {step}: non-finite loss or gradient "
                             f"({p.skipped_steps} skipped so far)")
                else:
                    sums["loss"] += ce
                    if z is not None:
                        sums["z_loss"] += z
                    count += 1
                    grad_norm = norm if norm is not None else grad_norm
            return None

        self.model.train()
        try:
            with StopFlag() as stop:
                while p.time_s < cfg.max_time if budgeted else p.step < cfg.max_steps:
                    t = self.block_size_now()
                    unsettled.append((p.step + 1, *self.train_step(t)))
                    lr_time = p.time_s  # what the step's lr was computed from
                    p.step += 1
                    p.tokens_seen += cfg.batch_size * t * cfg.grad_accum_steps * self.dist.world_size
                    p.time_s = time_before + time.perf_counter() - t_session
                    last = p.step == cfg.max_steps
                    if budgeted:
                        (last,) = self.dist.any_true(p.time_s >= cfg.max_time)
                    # Read back whether steps were finite: the previous step's verdict now (the device has
                    # finished it, or nearly, while this step is queued behind it), this step's own only
                    # before the loop logs, evaluates, samples or saves.
                    boundary = last or any(due(i) for i in (cfg.log_interval, cfg.eval_interval,
                                                             cfg.sample_interval, cfg.checkpoint_interval))
                    error = settle(keep=0 if boundary else 1)
                    if error:
                        end_reason, exit_code = "error", 1
                        break

                    if due(cfg.log_interval) or last:
                        now = time.perf_counter()
                        tok_s = (p.tokens_seen - tokens_last_log) / max(now - t_last_log, 1e-9)
                        row: dict[str, Any] = {"lr": get_lr(p.step - 1, cfg, lr_time),
                                               "tokens_per_sec": round(tok_s, 1)}
                        if count:
                            row["loss"] = (sums["loss"] / count).item()
                            if cfg.z_loss:
                                row["z_loss"] = (sums["z_loss"] / count).item()
                        if grad_norm is not None:
                            row["grad_norm"] = grad_norm.item()
                        if cfg.curriculum:
                            row["block_size"] = t
                        if p.skipped_steps:
                            row["skipped_steps"] = p.skipped_steps
                            row["skipped_since_last_row"] = skipped_since_log
                        self.write(row)
                        if bar is not None and "loss" in row:
                            bar.set_postfix(loss=f"{row['loss']:.4f}", tok_s=f"{tok_s:,.0f}", refresh=False)
                        for v in sums.values():
                            v.zero_()
                        count, skipped_since_log, t_last_log, tokens_last_log = 0, 0, now, p.tokens_seen
                    if bar is not None:
                        bar.update(1)

                    if cfg.eval_interval > 0 and (due(cfg.eval_interval) or last):
                        self.eval_and_keep_best()
                    if main and (due(cfg.sample_interval) or (last and cfg.sample_interval > 0)):
                        sample = sample_text(self.eval_model, self.tokenizer, cfg, self.log, seed=cfg.seed + p.step)
                        self.write({"sample": sample})
                        self.log(f"--- sample at step {p.step} ---\n{sample}\n---")
                    if due(cfg.checkpoint_interval) and not last:
                        self.save("last")

                    stop_file = main and (self.out / STOP_FILE).exists()
                    # (A time-budgeted run ends at its `last` step above, evaluated, never half-way here.)
                    out_of_time = (cfg.max_time > 0 and not budgeted
                                   and time.perf_counter() - t_session >= cfg.max_time)
                    signalled, stop_file, out_of_time = self.dist.any_true(stop.signum is not None, stop_file,
                                                                            out_of_time)
                    if signalled or stop_file:
                        end_reason = "interrupted"
                        exit_code = EXIT_CODES.get(stop.signum, 143 if signalled else 0)
                        if stop_file:
                            (self.out / STOP_FILE).unlink(missing_ok=True)
                        break
                    if budgeted and last:
                        end_reason = "max_time"
                        break
                    if out_of_time:
                        end_reason = "max_time"
                        break
                if end_reason != "error":
                    error = settle(keep=0)  # a stop between boundaries: no unread verdict before the save
                    if error:
                        end_reason, exit_code = "error", 1
                if end_reason != "error" and not self.save("last"):
                    end_reason, exit_code, error = "error", 1, "the final checkpoint could not be saved"
        except BaseException as e:
            self.write({"event": "end", "reason": "interrupted" if isinstance(e, KeyboardInterrupt) else "error",
                        "error": repr(e)[:500]})
            raise
        finally:
            if bar is not None:
                bar.close()
                self.log.bar = None

        end = {"event": "end", "reason": end_reason}
        if error:
            end["error"] = error
            self.log(f"error: {error}")
        if p.skipped_steps:
            end["skipped_steps"] = p.skipped_steps
        self.write(end)
        if main and end_reason != "error":
            summarize(cfg, p, end_reason, self.log)
        self.plot_pending = main  # drawn by close(), after the process group is gone (see train())
        return exit_code

    def eval_and_keep_best(self) -> None:
        p = self.progress
        losses = evaluate(self.eval_model, self.eval_splits, self.cfg, self.device, self.precision,
                          seed_offset=self.dist.rank)
        losses = {k: self.dist.mean(v) for k, v in losses.items()}
        row = {"val_loss": losses["val"], "train_eval_loss": losses["train"]}
        if self.bytes_per_token:
            row["val_bpb"] = losses["val"] / math.log(2) / self.bytes_per_token
        self.write(row)
        improved = losses["val"] < p.best_val_loss
        self.log(f"step {p.step}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}"
                 + (" (best so far)" if improved else ""))
        if improved:
            p.best_val_loss = losses["val"]
            self.save("best")

    def close(self) -> None:
        if self.plot_pending:
            plot_at_end(self.out, self.log)
        if hasattr(self.sampler, "close"):  # DataLoader workers end with the run, not at garbage collection
            self.sampler.close()
        self.log.close()
        if self.metrics is not None:
            self.metrics.close()
        if self.lock:
            self.lock.release()


def train(cfg: Config, resume: dict[str, Any] | None = None) -> int:
    """Train as `cfg` says, continuing from the checkpoint dict `resume` if given. Returns the exit code."""
    dist = distributed.setup(cfg.ddp, cfg.ddp_backend, cfg.device)
    trainer = None
    try:
        trainer = Trainer(cfg, resume, dist)
        return trainer.run()
    finally:
        # The process group goes first: rank 0's own work in close() (the loss plot) must not hold the other
        # ranks between their last collective and their teardown. DDP's reducer holds the group too; let go of
        # it so that teardown frees the group (see there).
        if trainer is not None:
            trainer.fwd_model = trainer.model
        distributed.teardown(dist)
        if trainer is not None:
            trainer.close()


def sample_text(model: GPT, tokenizer, cfg: Config, log: RunLog, seed: int) -> str:
    """A text sample for the log; a bad prompt warns instead of stopping the run."""
    params, stops = SamplingParams.from_config(cfg), parse_stop(cfg.stop)
    try:
        return generate_text(model, tokenizer, cfg.prompt, cfg.sample_chars, params, seed=seed, stops=stops)
    except UserError as e:
        log(f"warning: --prompt: {e}; sampling with those characters dropped")
        return generate_text(model, tokenizer, cfg.prompt, cfg.sample_chars, params, seed=seed,
                             drop_unknown=True, stops=stops)


def summarize(cfg: Config, p: Progress, reason: str, log: RunLog) -> None:
    out = Path(cfg.out_dir)
    best = f"{p.best_val_loss:.4f}" if math.isfinite(p.best_val_loss) else "n/a (eval disabled)"
    lines = [
        f"done ({reason}) at step {p.step}" + (f"/{cfg.max_steps}" if cfg.max_steps else "")
        + f": best val loss {best}, "
        f"{p.time_s:.1f} s of training, {p.tokens_seen:,} tokens seen"
        + (f", {p.skipped_steps} non-finite steps skipped" if p.skipped_steps else ""),
        f"checkpoints: {out / 'ckpt.pt'}" + (f" and {out / 'ckpt_best.pt'}" if math.isfinite(p.best_val_loss)
                                             else ""),
        f"sample: python train_tinyllm.py --out_dir {out} --generate_only --prompt \"The \" --sample_chars 300",
    ]
    if reason == "interrupted" or (reason == "max_time" and cfg.max_steps):  # a time-budgeted run is complete
        lines.append(f"continue: python train_tinyllm.py --out_dir {out} --resume")
    for line in lines:
        log(line)

