"""The training loop: data, model and optimizer in; checkpoints, metrics and logs out.

`Trainer.run` is the loop, one page: each step trains, counts, reads back whether steps were finite, then
(when due) logs, evaluates, samples, checkpoints and checks whether to stop. The details are one call away:
the step itself in `train_step`, evaluation and samples in tinyllm.evaluation, the log, the progress bar,
stop signals and the end summary in tinyllm.runlog.

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
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from tinyllm import checkpoint as ckpt_io
from tinyllm import distributed, tensorboard
from tinyllm.batches import curriculum_block_size, make_train_sampler, to_device
from tinyllm.config import CUDA_GRAPH_MODES, Config, save_json
from tinyllm.data import prepare
from tinyllm.device import check_model_fits, resolve_device
from tinyllm.ema import EMA
from tinyllm.errors import UserError
from tinyllm.evaluation import eval_row, evaluate, sample_text
from tinyllm.hf_import import Source, load_source
from tinyllm.init_from import apply_source, check_text
from tinyllm.losses import training_loss
from tinyllm.metrics import MetricsWriter
from tinyllm.model import GPT, ModelArgs
from tinyllm.optim import get_lr, lr_factor, make_optimizer, set_lr
from tinyllm.plot import plot_at_end
from tinyllm.precision import Precision, choose_precision, cpu_description, separate_compile_cache
from tinyllm.rundir import (
    REPLACED,
    RunLock,
    check_writable,
    discard_replaced,
    prepare_run_dir,
    refuse_to_mix,
    restore_replaced,
)
from tinyllm.runlog import (
    EXIT_CODES,
    STOP_FILE,
    LogWindow,
    Progress,
    RunEnd,
    RunLog,
    StopFlag,
    progress_bar,
    summarize,
)


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


def compile_model(model: torch.nn.Module, backend: str, mode: str = "default") -> torch.nn.Module:
    import torch._dynamo

    known = torch._dynamo.list_backends(exclude_tags=())
    if backend not in known:
        raise UserError(f"--compile_backend '{backend}' is not a registered backend; use one of {', '.join(known)}")
    if mode != "default" and backend != "inductor":
        raise UserError(f"--compile_mode {mode} is a mode of the inductor backend; use --compile_backend inductor "
                        "or --compile_mode default")
    separate_compile_cache()
    return torch.compile(model, backend=backend, **({} if mode == "default" else {"mode": mode}))


def check_cuda_graphs(cfg: Config, device: torch.device, ddp: bool) -> None:
    """Refuse what torch's CUDA graphs (--compile_mode reduce-overhead / max-autotune on a GPU) get wrong:
    a replay overwrites the gradients that the previous micro-batch left in .grad (pytorch issue 169545),
    and DDP's gradient hooks run outside the graphs. On a CPU those modes capture no graphs, so they pass."""
    if not (cfg.compile and cfg.compile_mode in CUDA_GRAPH_MODES and device.type == "cuda"):
        return
    fix = "use --compile_mode default or max-autotune-no-cudagraphs"
    if cfg.grad_accum_steps > 1:
        raise UserError(f"--compile_mode {cfg.compile_mode} captures CUDA graphs, which overwrite the gradients "
                        f"accumulated over --grad_accum_steps {cfg.grad_accum_steps}; {fix}, or --grad_accum_steps 1")
    if ddp:
        raise UserError(f"--compile_mode {cfg.compile_mode} captures CUDA graphs, which DDP's gradient "
                        f"all-reduce does not run inside; {fix} with --ddp")


def restore_optimizer(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load the saved moments but keep this run's hyperparameters (lr, weight decay, betas may change on
    resume; load_state_dict alone would bring back the old ones)."""
    fresh = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, hyper in zip(optimizer.param_groups, fresh, strict=True):
        group.update(hyper)


class Trainer:
    """Builds everything a run needs from the config (and a checkpoint to resume, or a model to start from),
    then `run()`s it.

    `init` (--init_from, a new run only) gives the model's weights and tokenizer; `cfg`'s shape settings must
    be the source's (tinyllm.init_from.merge_source / apply_source). The model takes the weights over and the
    source's state_dict is emptied, so that a large model is not held twice during training."""

    def __init__(self, cfg: Config, resume: dict[str, Any] | None, dist: distributed.Dist,
                 init: Source | None = None):
        self.cfg, self.dist = cfg, dist
        self.plot_pending = self.replacing = False
        # Where the run started from: recorded in every checkpoint (a resumed run keeps its record).
        self.origin = init.origin() if init is not None else (resume or {}).get("origin")
        self.notes = [f"init: starting from {init.description}", *init.notes] if init is not None else []
        if cfg.tensorboard and dist.is_main:
            tensorboard.require()  # a missing extra is an error before any data is read
        self.device = resolve_device(cfg.device, dist.local_rank)
        check_model_fits(cfg.n_layer, cfg.n_embd, self.device)
        self.out = Path(cfg.out_dir)
        self.lock: RunLock | None = None
        created = dist.is_main and not self.out.exists()
        try:
            if dist.is_main:
                # The folder is held, and checked, before anything is written into it (the memmapped tokens.bin
                # included): a run that is to be refused must not touch the run that is there.
                check_writable(self.out)
                lock = RunLock(self.out)
                lock.acquire()
                self.lock = lock
                if resume is None:
                    refuse_to_mix(self.out, cfg.overwrite)
            else:
                dist.barrier()  # rank 0 prepares the data first (and writes any cache files); the others after
            # In memory, or the memmapped out_dir/tokens.bin with --memmap_dataset; on resume the checkpoint's
            # tokenizer is reused, with --init_from the source's (which must encode the text: check_text).
            saved = resume["tokenizer"] if resume else init.tokenizer_json if init is not None else None
            if init is not None and (warning := check_text(cfg, init.tokenizer_json)):
                self.notes.append(warning)
            self.tokenizer, train_ids, val_ids, self.bytes_per_token = prepare(cfg, saved)
            # Characters dropped from the text by a vocabulary made from another text: say which, as for a source.
            other = "the run's checkpoint" if resume else f"--tokenizer_path {cfg.tokenizer_path}" \
                if cfg.tokenizer_path else None
            if init is None and other and cfg.drop_unknown_chars and self.tokenizer.kind == "char" and \
                    (warning := check_text(cfg, self.tokenizer.to_json(), other)):
                self.notes.append(warning)
            if dist.is_main:
                dist.barrier()
            self.eval_splits = {"train": train_ids, "val": val_ids}
            self._build(cfg, resume, dist, init)
        except BaseException:
            self.__dict__.pop("fwd_model", None)  # a DDP wrapper holds the process group: teardown frees it
            if self.replacing:
                restore_replaced(self.out)
            if self.lock:
                if created:  # this run made the folder and held it since: nothing in it is anyone else's
                    shutil.rmtree(self.out, ignore_errors=True)
                self.lock.release()
            raise

    def _build(self, cfg: Config, resume: dict[str, Any] | None, dist: distributed.Dist,
               init: Source | None) -> None:
        train_ids = self.eval_splits["train"]
        self.log = RunLog(None, quiet=not dist.is_main)
        self.precision = choose_precision(self.device, cfg.amp, warn=self.log, tf32=cfg.tf32)
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        # The model's vocabulary is the tokenizer's, except where an imported model's embedding is larger
        # (padded, as many Hugging Face models are): the source's or the checkpoint's own size then.
        vocab = (init.args.vocab_size if init is not None else resume["model_args"]["vocab_size"] if resume
                 else self.tokenizer.vocab_size)
        self.args = ModelArgs.from_config(cfg, vocab)
        self.model = GPT(self.args)
        if init is not None:
            self.model.load_state_dict(init.state_dict)
            init.state_dict = {}  # the model holds the weights now
        self.model.to(self.device)
        self.optimizer = make_optimizer(self.model, cfg, self.device)
        # One process with torch's fused AdamW and no loss scaling: non-finite steps can be skipped on the
        # device (see train_step), which removes the per-step host sync. DDP needs every rank's verdict.
        self.skips_on_device = (getattr(self.optimizer, "_step_supports_amp_scaling", False)
                                and self.precision.scaler is None and not dist.enabled)
        check_cuda_graphs(cfg, self.device, dist.enabled)
        self.fwd_model = self._wrap(compile_model(self.model, cfg.compile_backend, cfg.compile_mode)
                                    if cfg.compile else self.model)
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
            self.replacing = (self.out / REPLACED).is_dir()  # a run set aside until this one has a checkpoint
            save_json(cfg, self.out / "config.json")
            ckpt_io.atomic_write_text(self.out / "tokenizer.json", self.tokenizer.to_json())
            (self.out / STOP_FILE).unlink(missing_ok=True)
            self.log = RunLog(self.out / "train.log")
        tb = tensorboard.TensorBoardWriter(self.out, self.progress.step if resume else None) \
            if cfg.tensorboard and dist.is_main else None
        self.metrics = MetricsWriter(self.out / "metrics.jsonl", append=True, tensorboard=tb) if dist.is_main else None

    @property
    def stops_on_nonfinite(self) -> bool:
        """With --skip_nonfinite off a non-finite step ends the run unsaved, so with any optimizer there is
        nothing to skip: the step is taken and its verdict read back later (before anything is saved or
        evaluated), and the host need not wait for the device. (DDP ranks must agree at once; the fp16 loss
        scaler skips steps itself.)"""
        return not self.cfg.skip_nonfinite and self.precision.scaler is None and not self.dist.enabled

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
        if self.origin is not None:
            s["origin"] = self.origin
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
            if self.replacing and which == "last":
                self.replacing = not discard_replaced(self.out)
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
        """Forward, backward and (if everything is finite, or a non-finite step will end the run) the optimizer
        step. Returns (ce, z, grad norm, finite); `finite` is a bool, or a 0-dim bool tensor still on the device
        when the step was skipped (or not) on the device itself (`skips_on_device`) or will stop the run once
        read (`stops_on_nonfinite`): `bool(finite)` reads it back."""
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
        # A NaN/inf must never reach a checkpoint, evaluation or sample: the step is skipped, or (where it will
        # end the run) its verdict is read before any of those. (Under fp16 loss scaling, inf gradients are the
        # scaler's business: it skips those steps itself.)
        bad = ce if grad_norm is None or scaler is not None else ce + grad_norm
        if self.skips_on_device or self.stops_on_nonfinite:
            finite = torch.isfinite(bad)
            if self.skips_on_device:
                # The fused AdamW kernel skips the whole update, step count included, where found_inf is 1 (the
                # hook GradScaler uses), so the host never waits for the device here and stays a step ahead.
                self.optimizer.found_inf = (~finite).float()  # type: ignore[attr-defined]
            self.optimizer.step()
            if self.ema is not None:
                self.ema.update(finite if self.skips_on_device else None)
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
                 + (f" | compile: {cfg.compile_backend}" if cfg.compile else "")
                 + (f" ({cfg.compile_mode})" if cfg.compile and cfg.compile_mode != "default" else ""))
        train_ids, val_ids = self.eval_splits["train"], self.eval_splits["val"]
        self.log(f"data: {cfg.data_path} -> {len(train_ids):,} train / {len(val_ids):,} val tokens | effective "
                 f"batch {cfg.batch_size} x {cfg.grad_accum_steps} accum x {d.world_size} process"
                 f"{'es' if d.world_size > 1 else ''} = {effective} sequences of {cfg.block_size} tokens")
        for note in self.notes:
            self.log(note)
        if self.progress.step:
            self.log(f"resuming from step {self.progress.step} of {cfg.max_steps}" if cfg.max_steps else
                     f"resuming after {self.progress.time_s:.0f} s of {cfg.max_time:.0f} s")

    def write(self, row: dict[str, Any]) -> None:
        if self.metrics is not None:
            self.metrics.write({"step": self.progress.step, "time_s": round(self.progress.time_s, 3)} | row)

    def run(self) -> int:
        """The loop; returns the exit code. Each step trains, counts, reads back whether steps were finite
        (see LogWindow), then, when due, logs, evaluates, samples, checkpoints and checks whether to stop."""
        cfg, p = self.cfg, self.progress
        self.announce()
        self.t_session, self.time_before, self.paused_s = time.perf_counter(), p.time_s, 0.0
        window = LogWindow(self.device, p, cfg.skip_nonfinite, self.log, now=self.train_clock())
        end = RunEnd("max_steps")
        self.model.train()
        try:
            with StopFlag() as stop, progress_bar(cfg.progress and self.dist.is_main, cfg.max_steps, p.step,
                                                  self.log) as bar:
                compiling = cfg.compile  # this session's first step traces and compiles: see compile_step
                while self.more_steps():
                    t = self.block_size_now()
                    window.add(p.step + 1, *(self.compile_step(t) if compiling else self.train_step(t)))
                    lr_time = p.time_s  # what the step's lr was computed from
                    self.count_step(t)
                    if compiling:  # its time is off the clock, so its tokens are out of the throughput too
                        window.tokens_at_start, compiling = p.tokens_seen, False
                    last = self.is_last_step()
                    # Read back whether steps were finite: the previous step's verdict now (the device has
                    # finished it, or nearly, while this step is queued behind it), this step's own only
                    # before the loop logs, evaluates, samples or saves.
                    boundary = last or any(self.due(i) for i in (cfg.log_interval, cfg.eval_interval,
                                                                  cfg.sample_interval, cfg.checkpoint_interval))
                    if error := window.settle(keep=0 if boundary else 1):
                        end = RunEnd("error", 1, error)
                        break

                    if self.due(cfg.log_interval) or last:
                        self.log_train_row(window, t, lr_time, bar)
                    if bar is not None:
                        bar.update(1)
                    with self.off_the_clock():
                        if cfg.eval_interval > 0 and (self.due(cfg.eval_interval) or last):
                            self.eval_and_keep_best()
                        if self.dist.is_main and (self.due(cfg.sample_interval)
                                                  or (last and cfg.sample_interval > 0)):
                            self.sample()
                        if self.due(cfg.checkpoint_interval) and not last:
                            self.save("last")
                    if stopped := self.stop_requested(stop, last):
                        end = stopped
                        break
                end = self.save_at_end(end, window)
        except BaseException as e:
            self.write({"event": "end", "reason": "interrupted" if isinstance(e, KeyboardInterrupt) else "error",
                        "error": repr(e)[:500]})
            raise
        return self.finish(end)

    # -- the loop's details --------------------------------------------------------------------------------

    @property
    def budgeted(self) -> bool:
        """--max_steps 0: --max_time is the run's length across resumes, so its end gets the final eval and
        sample that a last step gets; otherwise --max_time only ends this session."""
        return self.cfg.max_steps == 0

    def more_steps(self) -> bool:
        p = self.progress
        return p.time_s < self.cfg.max_time if self.budgeted else p.step < self.cfg.max_steps

    @contextlib.contextmanager
    def off_the_clock(self) -> Iterator[None]:
        """Evaluations, samples and checkpoints are not training time: a --max_time budget (and the schedule
        laid over it) trains the same steps however often the run evaluates, and the speed-run convention
        agrees. Wall clock still ends a session's --max_time when --max_steps is set (see stop_requested)."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.paused_s += time.perf_counter() - t0

    def train_clock(self) -> float:
        """A clock that stands still off the clock: the training time (time_s) and the log's tokens/s follow it."""
        return time.perf_counter() - self.paused_s

    def compile_step(self, t: int) -> tuple:
        """The first step under --compile, where torch.compile traces the model and builds its kernels (~35 s
        on a 2-core CPU with a cold cache): off the clock, as evaluations are, so that a --max_time budget and
        the schedule laid over it buy training rather than compilation (the speed-run convention). The wall
        clock in the closing summary still has it. Later recompilations (a new curriculum length) stay on the
        clock."""
        t0 = time.perf_counter()
        with self.off_the_clock():
            out = self.train_step(t)
        spent = time.perf_counter() - t0
        self.log(f"compile: the first step took {spent:.1f} s (tracing and compiling), not counted as training time")
        return out

    def due(self, interval: int) -> bool:
        return interval > 0 and self.progress.step % interval == 0

    def count_step(self, t: int) -> None:
        p, cfg = self.progress, self.cfg
        p.step += 1
        p.tokens_seen += cfg.batch_size * t * cfg.grad_accum_steps * self.dist.world_size
        p.time_s = self.time_before + self.train_clock() - self.t_session
        if self.budgeted:
            # The schedule follows this clock, so every rank must read the same one: rank 0 alone samples, off
            # its clock, while the others wait on theirs.
            p.time_s = self.dist.mean(p.time_s)

    def is_last_step(self) -> bool:
        if self.budgeted:
            return self.progress.time_s >= self.cfg.max_time  # the clock is agreed on (see count_step)
        return self.progress.step == self.cfg.max_steps

    def log_train_row(self, window: LogWindow, t: int, lr_time: float, bar: Any) -> None:
        cfg, now = self.cfg, self.train_clock()
        row = window.train_row(get_lr(self.progress.step - 1, cfg, lr_time), now, cfg.z_loss,
                               t if cfg.curriculum else None)
        self.write(row)
        if bar is not None and "loss" in row:
            bar.set_postfix(loss=f"{row['loss']:.4f}", tok_s=f"{window.tokens_per_sec(now):,.0f}", refresh=False)
        window.restart(now)

    def eval_and_keep_best(self) -> None:
        p = self.progress
        losses = evaluate(self.eval_model, self.eval_splits, self.cfg, self.device, self.precision,
                          seed_offset=self.dist.rank)
        losses = {k: self.dist.mean(v) for k, v in losses.items()}
        self.write(eval_row(losses, self.bytes_per_token))
        improved = losses["val"] < p.best_val_loss
        self.log(f"step {p.step}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}"
                 + (" (best so far)" if improved else ""))
        if improved:
            p.best_val_loss = losses["val"]
            self.save("best")

    def sample(self) -> None:
        cfg, p = self.cfg, self.progress
        sample = sample_text(self.eval_model, self.tokenizer, cfg, self.log, seed=cfg.seed + p.step)
        self.write({"sample": sample})
        self.log(f"--- sample at step {p.step} ---\n{sample}\n---")

    def stop_requested(self, stop: StopFlag, last: bool) -> RunEnd | None:
        """A signal or the STOP file (interrupted), or the end of --max_time: agreed on by every rank."""
        cfg = self.cfg
        stop_file = self.dist.is_main and (self.out / STOP_FILE).exists()
        # (A time-budgeted run ends at its `last` step, evaluated, never half-way here.)
        out_of_time = (cfg.max_time > 0 and not self.budgeted
                       and time.perf_counter() - self.t_session >= cfg.max_time)
        signalled, stop_file, out_of_time = self.dist.any_true(stop.signum is not None, stop_file, out_of_time)
        if signalled or stop_file:
            end = RunEnd("interrupted", EXIT_CODES.get(stop.signum, 143 if signalled else 0))
            if stop_file:
                (self.out / STOP_FILE).unlink(missing_ok=True)
            return end
        if (self.budgeted and last) or out_of_time:
            return RunEnd("max_time")
        return None

    def save_at_end(self, end: RunEnd, window: LogWindow) -> RunEnd:
        """The final checkpoint, unless the run ended in an error."""
        if end.reason == "error":
            return end
        if error := window.settle(keep=0):  # a stop between boundaries: no unread verdict before the save
            return RunEnd("error", 1, error)
        if not self.save("last"):
            return RunEnd("error", 1, "the final checkpoint could not be saved")
        return end

    def finish(self, end: RunEnd) -> int:
        """The metrics' end row and, on rank 0, the closing summary; returns the exit code."""
        main = self.dist.is_main
        if end.error:
            self.log(f"error: {end.error}")
        self.write(end.row(self.progress))
        if main and end.reason != "error":
            summarize(self.cfg, self.progress, end.reason, self.log, time.perf_counter() - self.t_session)
        self.plot_pending = main  # drawn by close(), after the process group is gone (see train())
        return end.exit_code

    def close(self) -> None:
        if self.plot_pending:
            plot_at_end(self.out, self.log)
        if hasattr(self.sampler, "close"):  # DataLoader workers end with the run, not at garbage collection
            self.sampler.close()
        self.log.close()
        if self.metrics is not None:
            self.metrics.close()
        if self.replacing and restore_replaced(self.out):
            print(f"the run in {self.out} that --overwrite was to replace is restored as it was: this run ended "
                  "without a checkpoint", file=sys.stderr)
        if self.lock:
            self.lock.release()


def train(cfg: Config, resume: dict[str, Any] | None = None, init: Source | None = None) -> int:
    """Train as `cfg` says, continuing from the checkpoint dict `resume` if given, or starting from the
    weights of `init` (loaded from cfg.init_from here when not given, with its shape settings). Returns the
    exit code."""
    if init is None and resume is None and cfg.init_from:
        init = load_source(cfg.init_from, "--init_from")
        cfg = apply_source(cfg, init)
    dist = distributed.setup(cfg.ddp, cfg.ddp_backend, cfg.device)
    trainer = None
    try:
        trainer = Trainer(cfg, resume, dist, init)
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
