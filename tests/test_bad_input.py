"""Every bad input: exit status 2, a one-line message naming the flag or file, no traceback, and
nothing in an existing run folder overwritten."""

import pytest
from conftest import CLASSIC, TINY, exit_status, run_cli, run_subprocess


@pytest.fixture
def existing_run(corpus, tmp_path):
    out = tmp_path / "run"
    assert run_cli(["--data_path", corpus, "--out_dir", out, *TINY, *CLASSIC, "--max_steps", "3",
                    "--eval_interval", "0"]) == 0
    return out


def snapshot(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def check(args, needle, capsys):
    code = run_cli(args)
    err = capsys.readouterr().err
    assert code == 2, err
    assert needle in err, err
    assert "Traceback" not in err
    assert err.strip().count("\n") <= 1, err  # usage line + error line at most


def test_bad_inputs_leave_the_run_untouched(existing_run, tmp_path, capsys):
    before = snapshot(existing_run)
    out = ["--out_dir", existing_run, *TINY, "--overwrite"]  # even a run that may replace it leaves it as it was
    d = tmp_path
    (d / "empty.txt").write_bytes(b"")
    (d / "latin1.txt").write_bytes(b"abc\xff\xfe def" * 100)
    (d / "short.txt").write_text("tiny text")
    cases = [
        (["--data_path", d / "missing.txt"], "--data_path: file not found"),
        (["--data_path", d], "latin1.txt is not UTF-8 (invalid byte 0xff at byte offset 3)"),  # a folder: its files
        (["--data_path", d / "empty.txt"], "is empty"),
        (["--data_path", d / "latin1.txt"], "not UTF-8 (invalid byte 0xff at byte offset 3)"),
        (["--data_path", d / "short.txt"], "needs at least 33"),
        (["--n_embd", "30", "--n_head", "4"], "divisible by --n_head"),
        (["--batch_size", "0"], "--batch_size must be at least 1"),
        (["--max_steps", "0"], "give --max_time"),
        (["--max_steps", "0", "--max_time", "60", "--lr_decay_steps", "50"], "leave them at 0, or give --max_steps"),
        (["--device", "cuda:7"], "--device"),
        (["--device", "tpu"], "--device"),
        (["--n_embd", "1048576", "--n_head", "4"], "needs 65,536 GiB or more to train"),  # a typo
    ]
    for args, needle in cases:
        check([*out, *args], needle, capsys)
    assert snapshot(existing_run) == before


def test_bad_folders_and_patterns(existing_run, tmp_path, capsys):
    """--data_path as a folder or glob pattern: each way it can be unusable, with and without a token file;
    the existing run stays as it was and a new out_dir is never created."""
    before = snapshot(existing_run)
    d = tmp_path / "data"
    (d / "empty").mkdir(parents=True)
    (d / "pictures" / "sub").mkdir(parents=True)
    (d / "pictures" / "a.png").write_bytes(b"\x89PNG")
    (d / "pictures" / "sub" / "b.pdf").write_bytes(b"%PDF")
    (d / "mixed" / "deep").mkdir(parents=True)
    (d / "mixed" / "good.txt").write_text("plenty of good text here " * 20, encoding="utf-8")
    (d / "mixed" / "deep" / "bad.md").write_bytes("naïve ".encode() * 10 + b"caf\xe9")
    cases = [
        ([d / "empty"], "the folder " + str(d / "empty") + " holds no files; put .txt or .md files in it"),
        ([d / "pictures"], "holds no .txt or .md file (2 other files ignored)"),
        ([d / "mixed"], f"{d / 'mixed' / 'deep' / 'bad.md'} is not UTF-8 (invalid byte 0xe9 at byte offset 73)"),
        ([str(d / "nowhere" / "**" / "*.txt")], "matches no file; check it (and quote it"),
        ([str(d / "pictures" / "*")], "matches 1 file but no .txt or .md file"),
    ]
    for data, needle in cases:
        for out in (existing_run, tmp_path / "new_run"):
            for extra in ([], ["--memmap_dataset"]):
                code = run_cli(["--data_path", *data, "--out_dir", out, *TINY, *extra, "--overwrite"])
                err = capsys.readouterr().err
                assert code == 2, err
                last = err.strip().splitlines()[-1]  # a folder's summary line may come first
                assert last.startswith("error: --data_path") and needle in last, err
                assert "Traceback" not in err
    assert snapshot(existing_run) == before
    assert not (tmp_path / "new_run").exists()


def test_missing_checkpoint(existing_run, tmp_path, capsys):
    check(["--out_dir", tmp_path / "nothing", "--generate_only"], "no checkpoint at", capsys)
    check(["--out_dir", tmp_path / "nothing", "--resume"], "no checkpoint at", capsys)
    # A run that never evaluated has no best checkpoint: the message says which one there is.
    check(["--out_dir", existing_run, "--generate_only", "--ckpt", "best"], "use --ckpt last", capsys)


def test_corrupt_and_truncated_checkpoint(existing_run, capsys):
    ckpt = existing_run / "ckpt.pt"
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])
    check(["--out_dir", existing_run, "--generate_only"], "corrupt or truncated", capsys)
    check(["--out_dir", existing_run, "--resume"], "corrupt or truncated", capsys)
    assert ckpt.read_bytes() == data[: len(data) // 2]
    ckpt.write_bytes(b"not a checkpoint at all")
    check(["--out_dir", existing_run, "--generate_only"], "corrupt or truncated", capsys)


def test_checkpoints_that_load_but_do_not_fit_together(existing_run, tmp_path, capsys):
    """Edited or damaged in ways a zip check cannot see: every reader (resume, sampling, export, evaluation)
    says so in one line instead of a traceback from load_state_dict or a missing key."""
    import torch

    from tinyllm import evaluate, export
    from tinyllm.checkpoint import load_checkpoint, save_checkpoint

    good = load_checkpoint(existing_run / "ckpt.pt")
    text = tmp_path / "t.txt"
    text.write_text("some text to score\n" * 20)
    edits = {
        "a setting of a newer tinyllm": (lambda c: c["model_args"].update(future_opt=1), "does not know (future_opt)"),
        "a weight missing": (lambda c: c["model"].pop("norm_f.weight"), "missing norm_f.weight"),
        "a weight reshaped": (lambda c: c["model"].update({"tok_emb.weight": torch.zeros(3, 3)}),
                              "wrong shape tok_emb.weight"),
    }
    for what, (edit, needle) in edits.items():
        ckpt = {**good, "model_args": dict(good["model_args"]), "model": dict(good["model"])}
        edit(ckpt)
        save_checkpoint(ckpt, existing_run / "ckpt.pt")
        for args in (["--out_dir", existing_run, "--generate_only"], ["--out_dir", existing_run, "--resume"]):
            check(args, needle, capsys)
        for main, args in ((export.main, ["--out_dir", existing_run, "--output", tmp_path / "x.gguf",
                                          "--format", "gguf"]),
                           (evaluate.main, ["--model", existing_run, "--data_path", text])):
            assert exit_status(main, args) == 2, what
            err = capsys.readouterr().err
            assert needle in err and "Traceback" not in err, (what, err)
    # Sampling needs the weights only; resuming needs the training state too.
    save_checkpoint({k: v for k, v in good.items() if k != "optimizer"}, existing_run / "ckpt.pt")
    check(["--out_dir", existing_run, "--resume"], "no training state to resume (optimizer missing)", capsys)
    assert run_cli(["--out_dir", existing_run, "--generate_only", "--sample_chars", "5"]) == 0


def test_shape_conflicts(existing_run, capsys):
    for flag, value in (("--n_embd", "64"), ("--n_head", "4"), ("--block_size", "16"), ("--no-bias", None)):
        args = ["--out_dir", existing_run, "--generate_only", flag] + ([value] if value else [])
        check(args, f"{flag.replace('--no-', '--')} ", capsys)


def test_cuda_where_there_is_none(corpus, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    check(["--data_path", corpus, "--out_dir", tmp_path / "x", *TINY, "--device", "cuda"],
          "no CUDA GPU is available", capsys)
    assert not (tmp_path / "x").exists()


def test_unknown_flag_and_bad_choice_exit_2(capsys):
    check(["--no_such_flag", "1"], "unrecognized arguments", capsys)
    check(["--ckpt", "middle"], "invalid choice", capsys)


def test_real_process_exit_status_and_no_traceback(tmp_path):
    r = run_subprocess(["--data_path", tmp_path / "missing.txt", "--out_dir", tmp_path / "o"])
    assert r.returncode == 2
    assert r.stderr.startswith("error: --data_path") and "Traceback" not in r.stderr
    assert r.stdout == ""
    assert not (tmp_path / "o").exists()


def test_checkpoint_that_would_run_code_is_refused(existing_run, tmp_path, capsys):
    """A pickle payload that would create a marker file on load: refused, and the code never runs."""
    import os

    import torch

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    ckpt = torch.load(existing_run / "ckpt.pt", weights_only=True)
    ckpt["evil"] = Payload()
    torch.save(ckpt, existing_run / "ckpt.pt")
    check(["--out_dir", existing_run, "--generate_only"], "refusing to load", capsys)
    assert not marker.exists()
