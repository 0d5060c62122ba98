"""DDP on CPU with Gloo: torchrun runs, gradient equivalence, resume across world sizes."""

import os
import signal
import subprocess
import sys
import time
from re import escape as re_escape

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import REPO, TINY, free_port, run_cli

from tinyllm import distributed
from tinyllm.checkpoint import load_checkpoint
from tinyllm.config import Config
from tinyllm.metrics import read_metrics
from tinyllm.model import GPT, ModelArgs
from tinyllm.optim import make_optimizer
from tinyllm.precision import Precision
from tinyllm.train import forward_backward

ENV = os.environ | {"OMP_NUM_THREADS": "1", "TORCH_CPP_LOG_LEVEL": "ERROR"}
RUN_FILES = {".lock", "ckpt.pt", "ckpt_best.pt", "config.json", "metrics.jsonl", "tokenizer.json", "train.log"}
OPTIONAL_FILES = {"loss.png"}  # drawn at the end of a run where matplotlib is installed


def torchrun(args, cwd, nproc=2, **kw):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(REPO / "train_tinyllm.py"), "--ddp", "--device", "cpu", *map(str, args)]
    return subprocess.Popen(cmd, cwd=cwd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_two_process_run_writes_one_run_from_rank_0(corpus, tmp_path):
    out, cwd = tmp_path / "run", tmp_path / "cwd"
    cwd.mkdir()
    proc = torchrun(["--data_path", corpus, "--out_dir", out, *TINY, "--max_steps", "20", "--eval_interval", "10"], cwd)
    stdout, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert {p.name for p in out.iterdir()} - OPTIONAL_FILES == RUN_FILES
    assert list(cwd.iterdir()) == []  # nobody wrote stray files
    log = (out / "train.log").read_text()
    assert log.count("step 20: train loss") == 1 and "DDP 2 processes (gloo)" in log
    assert "2 processes = 16 sequences" in log
    ckpt = load_checkpoint(out / "ckpt.pt")
    assert ckpt["step"] == 20 and ckpt["tokens_seen"] == 20 * 2 * 8 * 32
    assert len(ckpt["data_state"]["ranks"]) == 2
    rows = read_metrics(out / "metrics.jsonl")
    assert len([r for r in rows if "val_loss" in r]) == 2 and rows[-1]["reason"] == "max_steps"

    # a DDP checkpoint resumes in a single process ...
    assert run_cli(["--out_dir", out, "--resume", "--max_steps", "25", "--no-progress"]) == 0
    assert load_checkpoint(out / "ckpt.pt")["step"] == 25
    # ... and a single-process checkpoint under DDP
    proc = torchrun(["--out_dir", out, "--resume", "--max_steps", "30", "--no-progress"], cwd)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert load_checkpoint(out / "ckpt.pt")["step"] == 30


def test_sigterm_stops_every_rank_with_one_checkpoint(corpus, tmp_path):
    out = tmp_path / "run"
    proc = torchrun(["--data_path", corpus, "--out_dir", out, *TINY, "--max_steps", "1000000", "--eval_interval", "0"],
                    tmp_path, start_new_session=True)
    deadline = time.monotonic() + 180
    while not ((out / "metrics.jsonl").exists() and read_metrics(out / "metrics.jsonl")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGTERM)  # as a terminal or a scheduler would: every process of the job
    _, err = proc.communicate(timeout=180)
    rows = read_metrics(out / "metrics.jsonl")
    assert rows[-1]["event"] == "end" and rows[-1]["reason"] == "interrupted", err
    assert len([r for r in rows if r.get("event") == "end"]) == 1
    assert load_checkpoint(out / "ckpt.pt")["step"] == rows[-1]["step"]
    assert {p.name for p in out.iterdir()} <= RUN_FILES | OPTIONAL_FILES


def _ddp_worker(rank, world, init_file, x, y, result_file):
    distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = GPT(ModelArgs(vocab_size=13, n_layer=2, n_head=2, n_embd=16, block_size=8))
    opt = make_optimizer(model, Config(), torch.device("cpu"))
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    b = x.size(0) // world
    mine = slice(rank * b, (rank + 1) * b)
    # two micro-batches per rank: also checks that no_sync + the final all-reduce give the full gradient
    half = b // 2
    xs, ys = x[mine], y[mine]
    forward_backward(ddp, [(xs[:half], ys[:half]), (xs[half:], ys[half:])], Config(),
                     Precision(torch.device("cpu"), torch.float32))
    opt.step()
    if rank == 0:
        torch.save(model.state_dict(), result_file)
    del ddp  # its reducer holds the group: freed first, so that the group and its threads go here
    dist.destroy_process_group()


def test_two_ranks_equal_one_process_with_the_double_batch(tmp_path):
    torch.manual_seed(1)
    x = torch.randint(0, 13, (8, 8))
    y = torch.randint(0, 13, (8, 8))
    result = tmp_path / "ddp.pt"
    mp.start_processes(_ddp_worker, args=(2, str(tmp_path / "init"), x, y, str(result)), nprocs=2, join=True,
                       start_method="spawn")
    torch.manual_seed(0)
    single = GPT(ModelArgs(vocab_size=13, n_layer=2, n_head=2, n_embd=16, block_size=8))
    opt = make_optimizer(single, Config(), torch.device("cpu"))
    forward_backward(single, [(x, y)], Config(), Precision(torch.device("cpu"), torch.float32))
    opt.step()
    ddp_state = torch.load(result, weights_only=True)
    for name, value in single.state_dict().items():
        assert torch.allclose(value, ddp_state[name], atol=1e-5, rtol=0), name


def test_ddp_without_torchrun_explains_how_to_launch(corpus, tmp_path, capsys, monkeypatch):
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    assert run_cli(["--data_path", corpus, "--out_dir", tmp_path / "run", *TINY, "--ddp"]) == 2
    err = capsys.readouterr().err
    assert "torchrun --standalone --nproc_per_node=N train_tinyllm.py --ddp" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU for NCCL")
def test_nccl_smoke(corpus, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
           str(REPO / "train_tinyllm.py"), "--ddp", "--ddp_backend", "nccl", "--data_path", str(corpus),
           "--out_dir", str(tmp_path / "run"), *TINY, "--max_steps", "10", "--eval_interval", "0"]
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "(nccl)" in (tmp_path / "run" / "train.log").read_text()


@pytest.mark.parametrize("device, backend, local_rank, expect", [
    ("cpu", "auto", 1, "gloo"),  # CPU ranks on a machine that also has a GPU leave it alone
    ("auto", "auto", 0, "nccl"),
    ("cuda", "gloo", 0, "gloo"),
    ("auto", "auto", 1, "more processes on this machine than it has GPUs (1)"),
    ("cpu", "nccl", 0, "--ddp_backend nccl needs CUDA GPUs (--device cpu"),
])
def test_backend_and_gpu_follow_the_device(monkeypatch, device, backend, local_rank, expect):
    from tinyllm.errors import UserError

    env = {"RANK": str(local_rank), "LOCAL_RANK": str(local_rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": "29500"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(distributed.sys, "platform", "linux")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # one GPU on this (pretend) machine
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    gpus, groups = [], []
    monkeypatch.setattr(torch.cuda, "set_device", gpus.append)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda backend: groups.append(backend))
    if expect in ("gloo", "nccl"):
        d = distributed.setup(True, backend, device)
        assert d.backend == expect and groups == [expect]
        assert gpus == ([] if device == "cpu" else [local_rank])
    else:
        with pytest.raises(UserError, match=re_escape(expect)):
            distributed.setup(True, backend, device)
        assert groups == [] and gpus == []


def test_torchruns_processes_without_ddp_are_told_to_add_it(monkeypatch):
    """Under torchrun without --ddp each process would train a run of its own into the same folder."""
    from tinyllm.errors import UserError

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UserError, match=r"one of 2 that torchrun started, but --ddp is not set: add --ddp"):
        distributed.setup(False, "auto", "cpu")
    monkeypatch.setenv("WORLD_SIZE", "1")  # a single process under torchrun trains alone anyway
    assert not distributed.setup(False, "auto", "cpu").enabled


def test_ddp_on_cuda_without_a_gpu_says_there_is_none(monkeypatch):
    from tinyllm.errors import UserError

    for k, v in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                 "MASTER_PORT": "29500"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(UserError, match="--device cuda: no CUDA GPU is available here"):
        distributed.setup(True, "gloo", "cuda")


TEARDOWN_PROBE = """
import sys
from pathlib import Path

from tinyllm import train
from tinyllm.cli import main
from tinyllm.errors import UserError

expected = 0
if sys.argv[1] == "fail-after-ddp":  # the Trainer fails after it wrapped the model in DDP
    expected = 2

    def broken_sampler(*args, **kwargs):
        raise UserError("no batches today")

    train.make_train_sampler = broken_sampler
try:
    main(sys.argv[2:])
except SystemExit as e:
    assert e.code == expected, e.code
print("THREADS", sorted(Path(t, "comm").read_text().strip() for t in Path("/proc/self/task").iterdir()))
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads thread names from /proc (Linux)")
@pytest.mark.parametrize("case", ["complete", "fail-after-ddp"])
def test_a_ddp_run_leaves_no_gloo_threads_behind(corpus, tmp_path, case):
    # Gloo threads that outlive the run are killed mid-way at interpreter exit: SIGABRT ("terminate called
    # without an active exception") on a rank that had finished cleanly, or had stopped with a clear error.
    env = ENV | {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                 "MASTER_PORT": str(free_port()), "PYTHONPATH": str(REPO)}
    args = ["--data_path", corpus, "--out_dir", tmp_path / "run", *TINY, "--max_steps", "3", "--eval_interval", "0",
            "--ddp", "--device", "cpu"]
    r = subprocess.run([sys.executable, "-c", TEARDOWN_PROBE, case, *map(str, args)], env=env, capture_output=True,
                       text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    if case == "fail-after-ddp":
        assert "no batches today" in r.stderr
    threads = next(line for line in r.stdout.splitlines() if line.startswith("THREADS"))
    assert "gloo" not in threads, threads
