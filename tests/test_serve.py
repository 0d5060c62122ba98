"""tinyllm-serve, driven by the official `openai` client: the text equals --generate_only's, streaming, concurrent
requests, every refusal as an OpenAI-style error (400/401/404, never a 500), the key check, the CLI's errors."""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import REPO, run_cli, tiny_trained_run

pytest.importorskip("fastapi", reason="tinyllm-serve needs the serve extra")
uvicorn = pytest.importorskip("uvicorn", reason="tinyllm-serve needs the serve extra")
openai = pytest.importorskip("openai", reason="the serve tests use the openai client (dev extra)")

from tinyllm import serve  # noqa: E402

CAP = 64
KEY = "sk-test-key"


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return tiny_trained_run(tmp_path_factory.mktemp("serve"))


@contextlib.contextmanager
def serving(app):
    """The app on a free loopback port in a uvicorn thread; yields its base URL, and stops it afterwards."""
    sock = serve.bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        for _ in range(500):
            if server.started or not thread.is_alive():
                break
            threading.Event().wait(0.01)
        assert server.started, "the server did not start"
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
        assert not thread.is_alive(), "the server did not stop"


@pytest.fixture(scope="module")
def engine(run):
    ns = serve.build_parser().parse_args(["--out_dir", str(run), "--device", "cpu", "--max_tokens_cap", str(CAP)])
    engine = serve.load_engine(ns)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def base_url(engine):
    with serving(serve.create_app(engine)) as url:
        yield url


@pytest.fixture(scope="module")
def client(base_url):
    return openai.OpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0, timeout=60)


def generate_only(run, capsys, *args) -> str:
    capsys.readouterr()
    assert run_cli(["--out_dir", run, "--generate_only", "--device", "cpu", *map(str, args)]) == 0
    return capsys.readouterr().out


def post(url: str, data: bytes, headers: dict | None = None) -> tuple[int, dict | str]:
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            status, body = r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        status, body = e.code, e.read().decode()
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body


def test_models_lists_the_run(client, run):
    (model,) = client.models.list().data
    assert model.id == run.name and model.owned_by == "tinyllm"
    assert client.models.retrieve(run.name).id == run.name


def test_greedy_completion_equals_generate_only(client, run, capsys):
    printed = generate_only(run, capsys, "--prompt", "The ", "--temperature", "0", "--sample_chars", "40")
    r = client.completions.create(model=run.name, prompt="The ", max_tokens=40, temperature=0)
    (choice,) = r.choices
    assert printed == "The " + choice.text + "\n" and len(choice.text) == 40  # char model: a token per char
    assert choice.finish_reason == "length" and r.object == "text_completion" and r.model == run.name
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (4, 40, 44)
    # echo=true gives exactly the text --generate_only prints for the sample
    echoed = client.completions.create(model=run.name, prompt="The ", max_tokens=40, temperature=0, echo=True)
    assert echoed.choices[0].text + "\n" == printed


def test_seeded_samples_equal_generate_only(client, run, capsys):
    settings = {"temperature": 0.9, "top_p": 0.9, "top_k": 8, "repetition_penalty": 1.2}
    printed = generate_only(run, capsys, "--prompt", "A ", "--sample_chars", "30", "--seed", "7",
                            "--num_samples", "3", *[x for k, v in settings.items() for x in (f"--{k}", v)])
    r = client.completions.create(model=run.name, prompt="A ", max_tokens=30, n=3, seed=7,
                                  temperature=settings["temperature"], top_p=settings["top_p"],
                                  extra_body={"top_k": settings["top_k"],
                                              "repetition_penalty": settings["repetition_penalty"]})
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert "\n\n".join("A " + c.text + "\n" for c in r.choices) == printed
    assert len({c.text for c in r.choices}) > 1  # the samples draw from one generator, as the CLI's do


def test_stop_strings(client, run, capsys):
    text = client.completions.create(model=run.name, prompt="The ", max_tokens=40, temperature=0).choices[0].text
    stop = text[20:23]
    printed = generate_only(run, capsys, "--prompt", "The ", "--temperature", "0", "--sample_chars", "40",
                            "--stop", stop)
    r = client.completions.create(model=run.name, prompt="The ", max_tokens=40, temperature=0, stop=[stop, "zzzz"])
    assert printed == "The " + r.choices[0].text + "\n" and r.choices[0].text == text[:text.find(stop)]
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens == text.find(stop) + len(stop)  # not one token more was sampled
    # An empty list (the OpenAI API accepts it) means no stop strings at all.
    none = client.completions.create(model=run.name, prompt="The ", max_tokens=40, temperature=0, stop=[])
    assert none.choices[0].text == text and none.choices[0].finish_reason == "length"


def test_stream_pieces_join_to_the_same_text(client, run, base_url):
    prompts = ["The ", "A cat"]
    whole = client.completions.create(model=run.name, prompt=prompts, max_tokens=40, n=2, seed=3)
    stream = client.completions.create(model=run.name, prompt=prompts, max_tokens=40, n=2, seed=3, stream=True,
                                       stream_options={"include_usage": True})
    texts: dict[int, str] = {}
    finish, usage, chunks = {}, None, 0
    for chunk in stream:
        chunks += 1
        if chunk.usage:
            usage = chunk.usage
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, "") + c.text
            if c.finish_reason:
                finish[c.index] = c.finish_reason
    assert chunks > 8  # streamed in pieces, not in one block
    assert texts == {c.index: c.text for c in whole.choices} and len(texts) == 4
    assert finish == {c.index: c.finish_reason for c in whole.choices}
    assert usage.completion_tokens == whole.usage.completion_tokens and usage.prompt_tokens == 4 + 5

    # on the wire: server-sent events ending with [DONE]
    status, body = post(base_url + "/v1/completions",
                        json.dumps({"prompt": "The ", "max_tokens": 5, "temperature": 0, "stream": True}).encode())
    events = [line for line in body.split("\n\n") if line]
    assert status == 200 and all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"


def test_eight_concurrent_requests(client, run):
    jobs = [{"prompt": p, "max_tokens": 30, "temperature": 0} for p in ("The ", "A ", "Rain ", "Small ")] + \
           [{"prompt": "The ", "max_tokens": 30, "seed": s, "n": 2} for s in range(4)]
    alone = [client.completions.create(model=run.name, **job).choices for job in jobs]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda job: client.completions.create(model=run.name, **job).choices, jobs))
    assert [[c.text for c in cs] for cs in together] == [[c.text for c in cs] for cs in alone]


BAD = [  # (request fields, the param the error names, a piece of its message)
    ({"max_tokens": "ten"}, "max_tokens", "integer"),
    ({"max_tokens": 2.5}, "max_tokens", "integer"),
    ({"max_tokens": -1}, "max_tokens", "at least 1"),
    ({"max_tokens": CAP + 1}, "max_tokens", "--max_tokens_cap"),
    ({"temperature": -0.1}, "temperature", "at least 0"),
    ({"temperature": "hot"}, "temperature", "number"),
    ({"top_p": 0}, "top_p", "greater than 0"),
    ({"top_p": 1.5}, "top_p", "at most 1"),
    ({"top_k": -2}, "top_k", "at least 0"),
    ({"temperature": 1e-300}, "temperature", "at least 1e-06"),  # would divide the logits into infinities
    ({"repetition_penalty": 0}, "repetition_penalty", "greater than 0"),
    ({"repetition_penalty": 1e-300}, "repetition_penalty", "between"),
    ({"n": 0}, "n", "between 1"),
    ({"n": True}, "n", "integer"),
    ({"prompt": 5}, "prompt", "string"),
    ({"prompt": ["ok", 3]}, "prompt", "string"),
    ({"prompt": []}, "prompt", "non-empty list"),
    ({"prompt": "The \u20ac sign"}, "prompt", "vocabulary"),
    ({"stop": 7}, "stop", "string"),
    ({"seed": "x"}, "seed", "integer"),
    ({"stream": "yes"}, "stream", "true or false"),
    ({"logprobs": 3}, "logprobs", "not supported"),
    ({"stream_options": {"include_usage": True}}, "stream_options", "stream"),
]


@pytest.mark.parametrize("fields, param, message", BAD, ids=[f"{p}={json.dumps(f[p])}" for f, p, _ in BAD])
def test_bad_requests_get_400(client, run, fields, param, message):
    args = {"model": run.name, "prompt": "The ", "max_tokens": 5} | fields
    known = {"model", "prompt", "max_tokens", "temperature", "top_p", "n", "stop", "seed", "stream", "logprobs",
             "stream_options"}
    extra = {k: args.pop(k) for k in list(args) if k not in known}
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(**args, extra_body=extra)
    assert e.value.status_code == 400 and e.value.param == param
    assert message in e.value.body["message"] and e.value.body["type"] == "invalid_request_error"


def test_bad_bodies_get_400_and_the_server_goes_on(client, run, base_url):
    url = base_url + "/v1/completions"
    for data in (b"{not json", b"[1, 2]", b'{"prompt": "a", "temperature": NaN}', "\u00ff".encode("latin-1"),
                 b'{"prompt": "a", "frobnicate": 1}'):
        status, body = post(url, data)
        assert status == 400 and set(body["error"]) == {"message", "type", "param", "code"}, (data, body)
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="gpt-4", prompt="The ", max_tokens=5)
    assert e.value.code == "model_not_found" and run.name in e.value.body["message"]
    status, body = post(base_url + "/v2/nothing", b"{}")
    assert status == 404 and "error" in body
    assert client.completions.create(model=run.name, prompt="The ", max_tokens=3).choices[0].text


def test_chat_is_refused_clearly(client, run):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=run.name, messages=[{"role": "user", "content": "hi"}])
    assert "no chat template" in e.value.body["message"] and "/v1/completions" in e.value.body["message"]


def test_api_key(engine, run):
    with serving(serve.create_app(engine, api_key=KEY)) as url:
        for key in ("wrong", KEY + "x"):
            bad = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=30)
            with pytest.raises(openai.AuthenticationError) as e:
                bad.completions.create(model=run.name, prompt="The ", max_tokens=3)
            assert e.value.status_code == 401 and e.value.code == "invalid_api_key"
            with pytest.raises(openai.AuthenticationError):
                bad.models.list()
        status, _ = post(url + "/v1/completions", b'{"prompt": "a"}')  # no Authorization header at all
        assert status == 401
        good = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=30)
        assert len(good.completions.create(model=run.name, prompt="The ", max_tokens=3).choices[0].text) == 3


def test_binding_beyond_loopback_without_a_key_warns():
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        assert serve.exposure_warning(host, None) is None
    assert "--api_key" in serve.exposure_warning("0.0.0.0", None)
    assert "--api_key" in serve.exposure_warning("192.168.1.5", None)
    assert serve.exposure_warning("0.0.0.0", KEY) is None


def cli(capsys, *args) -> tuple[int, str]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        serve.main([str(a) for a in args])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return e.value.code, err


def test_cli_errors_name_the_flag(capsys, run, tmp_path):
    code, err = cli(capsys)
    assert code == 2 and "--out_dir" in err
    code, err = cli(capsys, "--out_dir", tmp_path / "missing")
    assert code == 2 and "--out_dir" in err and "no such folder" in err
    code, err = cli(capsys, "--out_dir", tmp_path)  # a folder without a checkpoint
    assert code == 2 and "no checkpoint" in err
    for port in ("abc", "0", "70000"):
        code, err = cli(capsys, "--out_dir", run, "--port", port)
        assert code == 2 and "--port" in err
    code, err = cli(capsys, "--out_dir", run, "--max_tokens_cap", "0")
    assert code == 2 and "--max_tokens_cap" in err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        code, err = cli(capsys, "--out_dir", run, "--port", busy.getsockname()[1])
    assert code == 2 and "--port" in err


def test_bench_serve_smoke(run, tmp_path):
    """benchmarks/bench_serve.py at a tiny size: it starts `python -m tinyllm.serve` in its own process, so this
    is also the test that the module runs as a command."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import bench_serve

    out = tmp_path / "serve.json"
    res = bench_serve.main(["--out_dir", str(run), "--clients", "1", "2", "--requests", "2", "--max_tokens", "8",
                            "--parallel", "2", "--rounds", "1", "--json", str(out)])
    assert [(r["clients"], r["requests"], r["tokens"]) for r in res["rows"]] == [(1, 2, 16), (2, 4, 32)]
    assert all(r["requests_per_sec"] > 0 and r["tokens_per_sec"] > 0 for r in res["rows"])
    assert json.loads(out.read_text())["machine"]["cpu"] == res["machine"]["cpu"]
