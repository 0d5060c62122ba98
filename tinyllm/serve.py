"""`tinyllm-serve` / `python -m tinyllm.serve --out_dir RUN`: an OpenAI-compatible HTTP server for one run.

    tinyllm-serve --out_dir out/tiny_char_gpt [--ckpt best] [--host 127.0.0.1] [--port 8000] [--api_key KEY]

Endpoints: `GET /v1/models`, `GET /v1/models/{id}`, `POST /v1/completions` (prompt as a string or a list of
strings; max_tokens, temperature, top_p, stop, seed, n, echo, stream with `stream_options.include_usage`,
plus the extensions top_k and repetition_penalty). `POST /v1/chat/completions` answers with an error: a base
model has no chat template. The model id is the run folder's name.

A request's text is made by the code that `--generate_only` runs (tinyllm.generate: prompt_ids, then
stream_text with SamplingParams.from_config), from the same settings: what a request leaves out is the
server's setting, i.e. the flag given to tinyllm-serve, else the run's own config, exactly as
`--generate_only` resolves it. max_tokens is `sample_chars`, n is `num_samples`. With a `seed`, the request
gets one random generator seeded with it, used by its samples in order (prompt after prompt, n samples
each), as `--generate_only --seed S --num_samples N` uses its one generator: the same seed and settings give
the same text. Without a seed the request is seeded at random.

Concurrency: the model is loaded once; every completion runs in one of `--parallel` worker threads with its
own random generator and KV cache (torch releases the GIL inside its kernels), and requests beyond that
wait in a queue. Bad requests get an OpenAI-style error object (`{"error": {"message", "type", "param",
"code"}}`) with status 400 (404 for an unknown model, 401 for a missing or wrong API key), never a 500.
"""


import argparse
import asyncio
import dataclasses
import ipaddress
import json
import math
import secrets
import socket
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from tinyllm import config as C
from tinyllm.checkpoint import CKPT_NAMES
from tinyllm.device import resolve_device
from tinyllm.errors import OneLineParser, UserError
from tinyllm.generate import SamplingParams, model_from_checkpoint, parse_stop, prompt_ids, stream_text
from tinyllm.runconfig import resolve_config

SERVE_EXTRA_HINT = 'pip install -e ".[serve]"'
# The run settings tinyllm-serve takes as flags: where the run is, and the generation settings, which become
# the defaults of every request (the run's own config where no flag is given).
FLAGS = ("out_dir", "ema", "device", *(n for n, f in C.FIELDS.items() if f.metadata["group"] == "generation"))
MAX_N = 128  # choices in one request (prompts x n), as OpenAI's limit on n
MAX_STOPS = 16
# The sampler's limits, as the CLI's validation has them (tinyllm.config).
MIN_SCALE, MAX_PENALTY = C.MIN_SAMPLING_SCALE, C.MAX_REPETITION_PENALTY
LOOPBACK_NAMES = ("localhost",)

# Request fields that OpenAI defines and tinyllm does not implement: accepted only at their "off" value.
_UNSUPPORTED_OFF = {"logprobs": (None,), "suffix": (None, ""), "presence_penalty": (None, 0),
                    "frequency_penalty": (None, 0), "logit_bias": (None, {})}
_KNOWN = {"model", "prompt", "max_tokens", "temperature", "top_p", "top_k", "repetition_penalty", "n", "stop",
          "seed", "stream", "stream_options", "echo", "user", "best_of", *_UNSUPPORTED_OFF}


class RequestError(Exception):
    """A request the server refuses: becomes an OpenAI-style error object with this status."""

    def __init__(self, message: str, param: str | None = None, status: int = 400,
                 code: str | None = "invalid_value", kind: str = "invalid_request_error"):
        super().__init__(message)
        self.message, self.param, self.status, self.code, self.kind = message, param, status, code, kind

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.kind, self.param, self.code)


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


# --- checking a request's fields ---------------------------------------------------------------------------

def _shown(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _type_error(name: str, what: str, value: Any) -> RequestError:
    return RequestError(f"'{name}' must be {what}, got {_shown(value)}", name, code="invalid_type")


def _int(body: dict, name: str) -> int | None:
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise _type_error(name, "an integer", v)
    return v


def _number(body: dict, name: str) -> float | None:
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise _type_error(name, "a finite number", v)
    return float(v)


def _bool(body: dict, name: str) -> bool | None:
    v = body.get(name)
    if v is not None and not isinstance(v, bool):
        raise _type_error(name, "true or false", v)
    return v


def _strings(body: dict, name: str, limit: int, allow_empty: bool = False) -> list[str] | None:
    """A string or a list of at most `limit` strings (non-empty unless `allow_empty`), as a list; None when
    absent."""
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, str):
        return [v]
    if not isinstance(v, list) or (not v and not allow_empty) or not all(isinstance(s, str) for s in v):
        raise _type_error(name, "a string or a list of strings" if allow_empty else
                          "a string or a non-empty list of strings", v)
    if len(v) > limit:
        raise RequestError(f"'{name}' may hold at most {limit} strings, got {len(v)}", name)
    return list(v)


@dataclasses.dataclass
class Plan:
    """A checked completion request: what to generate, and how."""

    prompts: list[str]
    ids: list[list[int]]
    cfg: C.Config  # the server's config with this request's settings in place
    stops: list[str]
    seed: int
    echo: bool
    stream: bool
    include_usage: bool

    @property
    def n(self) -> int:
        return self.cfg.num_samples

    @property
    def max_tokens(self) -> int:
        return self.cfg.sample_chars


@dataclasses.dataclass
class Piece:
    """A piece of one choice's text; `finish` ("stop" / "length") and `tokens` are set on its last piece."""

    index: int
    text: str
    finish: str | None = None
    tokens: int = 0


class Engine:
    """The loaded model and everything a request needs; `complete` runs in a worker thread."""

    def __init__(self, cfg: C.Config, ckpt: dict[str, Any], max_tokens_cap: int = 1024, parallel: int = 4):
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.model, self.tokenizer = model_from_checkpoint(ckpt, self.device, use_ema=cfg.ema)
        self.model_id = Path(cfg.out_dir).resolve().name or "tinyllm"
        self.max_tokens_cap = max_tokens_cap
        self.created = int(time.time())
        self.step = ckpt.get("step")
        self.uses_ema = cfg.ema and "ema" in ckpt
        self.executor = ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="tinyllm-serve")
        self.closing = threading.Event()

    def close(self) -> None:
        """Stop every generation at its next token and drop the queued ones (the server is shutting down)."""
        self.closing.set()
        self.executor.shutdown(wait=False, cancel_futures=True)

    # The request -> a Plan, or a RequestError naming the field.
    def plan(self, body: Any) -> Plan:
        if not isinstance(body, dict):
            raise RequestError("the request body must be a JSON object", code="invalid_body")
        unknown = [k for k in body if k not in _KNOWN]
        if unknown:
            raise RequestError(f"Unrecognized request argument supplied: {unknown[0]}", unknown[0],
                               code="unknown_parameter")
        self.check_model(body.get("model"))
        for name, off in _UNSUPPORTED_OFF.items():
            if body.get(name) not in off:
                raise RequestError(f"'{name}' is not supported by tinyllm-serve; leave it out", name,
                                   code="unsupported_parameter")
        if body.get("user") is not None and not isinstance(body["user"], str):
            raise _type_error("user", "a string", body["user"])

        changes: dict[str, Any] = {}
        max_tokens = _int(body, "max_tokens")
        if max_tokens is not None:
            if max_tokens < 1:
                raise RequestError(f"'max_tokens' must be at least 1, got {max_tokens}", "max_tokens")
            changes["sample_chars"] = max_tokens
        elif self.cfg.sample_chars > self.max_tokens_cap:
            changes["sample_chars"] = self.max_tokens_cap  # the run's default, within the server's cap
        if changes.get("sample_chars", 0) > self.max_tokens_cap:
            raise RequestError(f"'max_tokens' must be at most {self.max_tokens_cap}, this server's limit "
                               f"(--max_tokens_cap), got {max_tokens}", "max_tokens")
        temperature = _number(body, "temperature")
        if temperature is not None:
            if temperature < 0:
                raise RequestError(f"'temperature' must be at least 0 (0 = greedy), got {temperature:g}",
                                   "temperature")
            if 0 < temperature < MIN_SCALE:
                raise RequestError(f"'temperature' must be 0 (greedy) or at least {MIN_SCALE:g}, got "
                                   f"{temperature:g}", "temperature")
            changes["temperature"] = temperature
        top_p = _number(body, "top_p")
        if top_p is not None:
            if not 0 < top_p <= 1:
                raise RequestError(f"'top_p' must be greater than 0 and at most 1, got {top_p:g}", "top_p")
            changes["top_p"] = top_p
        top_k = _int(body, "top_k")
        if top_k is not None:
            if top_k < 0:
                raise RequestError(f"'top_k' must be at least 0 (0 = off), got {top_k}", "top_k")
            changes["top_k"] = top_k
        penalty = _number(body, "repetition_penalty")
        if penalty is not None:
            if penalty <= 0:
                raise RequestError(f"'repetition_penalty' must be greater than 0 (1 = off), got {penalty:g}",
                                   "repetition_penalty")
            if not MIN_SCALE <= penalty <= MAX_PENALTY:
                raise RequestError(f"'repetition_penalty' must be between {MIN_SCALE:g} and {MAX_PENALTY:g} "
                                   f"(1 = off), got {penalty:g}", "repetition_penalty")
            changes["repetition_penalty"] = penalty
        n = _int(body, "n")
        if n is not None:
            if not 1 <= n <= MAX_N:
                raise RequestError(f"'n' must be between 1 and {MAX_N}, got {n}", "n")
            changes["num_samples"] = n
        best_of = _int(body, "best_of")
        if best_of is not None and best_of != changes.get("num_samples", self.cfg.num_samples):
            raise RequestError("'best_of' is not supported by tinyllm-serve; leave it out (or equal to n)",
                               "best_of", code="unsupported_parameter")
        seed = _int(body, "seed")
        if seed is not None and not -(2**63) <= seed < 2**64:
            raise RequestError(f"'seed' must fit in 64 bits, got {seed}", "seed")
        stream = bool(_bool(body, "stream"))
        echo = bool(_bool(body, "echo"))
        include_usage = False
        options = body.get("stream_options")
        if options is not None:
            if not stream:
                raise RequestError("'stream_options' is only allowed when 'stream' is true", "stream_options")
            if not isinstance(options, dict) or set(options) - {"include_usage"}:
                raise _type_error("stream_options", 'an object {"include_usage": true|false}', options)
            include_usage = bool(_bool(options, "include_usage"))

        stops = _strings(body, "stop", MAX_STOPS, allow_empty=True)  # [] (as OpenAI's API allows): no stops
        stops = parse_stop(self.cfg.stop) if stops is None else [s for s in stops if s]
        prompts = _strings(body, "prompt", MAX_N)
        if prompts is None:
            prompts = [self.cfg.prompt]
        if len(prompts) * changes.get("num_samples", self.cfg.num_samples) > MAX_N:
            raise RequestError(f"a request may ask for at most {MAX_N} completions (prompts x n)", "n")
        ids = [self.encode(p) for p in prompts]
        try:  # the config's own checks, on the values the request set (each was checked above)
            cfg = C.validate(dataclasses.replace(self.cfg, **changes))
        except UserError as e:
            raise RequestError(str(e)) from None
        if seed is None:
            seed = secrets.randbits(63)
        return Plan(prompts, ids, cfg, stops, seed, echo, stream, include_usage)

    def check_model(self, name: Any) -> None:
        if name is None:
            return
        if not isinstance(name, str):
            raise _type_error("model", "a string", name)
        if name != self.model_id:
            raise RequestError(f"The model '{name}' does not exist; this server serves '{self.model_id}' "
                               "(see GET /v1/models)", "model", status=404, code="model_not_found")

    def encode(self, prompt: str) -> list[int]:
        tok = self.tokenizer
        missing = tok.unknown(prompt) if prompt else []
        if missing and not self.cfg.drop_unknown_chars:
            shown = ", ".join(repr(c) for c in missing[:20])
            raise RequestError(f"the prompt holds characters that are not in this model's vocabulary: {shown}; "
                               "remove them (or start the server with --drop_unknown_chars to drop them)",
                               "prompt", code="unknown_characters")
        try:
            return prompt_ids(tok, prompt, self.cfg.drop_unknown_chars)
        except UserError as e:
            raise RequestError(str(e), "prompt") from None

    # Generation: the code --generate_only runs, one generator for the request's samples in order.
    def complete(self, plan: Plan, cancel: threading.Event | None = None) -> Iterator[Piece]:
        params = SamplingParams.from_config(plan.cfg)
        generator = torch.Generator(device=self.device).manual_seed(plan.seed)
        for p, (prompt, ids) in enumerate(zip(plan.prompts, plan.ids, strict=True)):
            for j in range(plan.n):
                index = p * plan.n + j
                if plan.echo:
                    yield Piece(index, prompt)
                pieces = stream_text(self.model, self.tokenizer, ids, plan.max_tokens, params, generator,
                                     plan.stops)
                count = 0
                while True:
                    if self.closing.is_set() or (cancel is not None and cancel.is_set()):
                        pieces.close()
                        return
                    try:
                        text = next(pieces)
                    except StopIteration as end:
                        finish = end.value
                        break
                    count += 1
                    if text:
                        yield Piece(index, text)
                yield Piece(index, "", finish, count)


# --- the HTTP app ------------------------------------------------------------------------------------------

def _completion(engine: Engine, rid: str, created: int, choices: list[dict], usage: dict | None) -> dict:
    out = {"id": rid, "object": "text_completion", "created": created, "model": engine.model_id,
           "choices": choices}
    if usage is not None:
        out["usage"] = usage
    return out


def _usage(plan: Plan, completion_tokens: int) -> dict[str, int]:
    prompt_tokens = sum(len(ids) for ids in plan.ids)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def create_app(engine: Engine, api_key: str | None = None):
    """The FastAPI app serving `engine`; with `api_key`, every /v1 request needs `Authorization: Bearer KEY`."""
    try:
        from fastapi import Depends, FastAPI, Request
        from fastapi.exceptions import RequestValidationError
        from fastapi.responses import JSONResponse, StreamingResponse
        from starlette.exceptions import HTTPException
    except ImportError:
        raise UserError(f"tinyllm-serve needs FastAPI and uvicorn: {SERVE_EXTRA_HINT}") from None

    def check_key(request: Request) -> None:
        if api_key is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip().encode(), api_key.encode()):
            raise RequestError("Incorrect or missing API key: send the header 'Authorization: Bearer KEY' with "
                               "the key given to tinyllm-serve --api_key", status=401, code="invalid_api_key")

    app = FastAPI(title="tinyllm-serve", docs_url=None, redoc_url=None, openapi_url=None,
                  dependencies=[Depends(check_key)])

    @app.exception_handler(RequestError)
    async def _refused(request: Request, e: RequestError):
        headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else None
        return JSONResponse(e.body(), status_code=e.status, headers=headers)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, e: HTTPException):
        message = f"{request.method} {request.url.path}: {e.detail}"
        if e.status_code == 404:
            message += "; this server answers GET /v1/models and POST /v1/completions"
        return JSONResponse(error_body(message, code=None), status_code=e.status_code)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError):
        return JSONResponse(error_body(f"invalid request: {e.errors()[:1]}"), status_code=400)

    @app.exception_handler(Exception)
    async def _internal(request: Request, e: Exception):
        return JSONResponse(error_body(f"internal error: {type(e).__name__}: {e}", "server_error"), 500)

    def model_card() -> dict[str, Any]:
        return {"id": engine.model_id, "object": "model", "created": engine.created, "owned_by": "tinyllm"}

    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{name}")
    async def get_model(name: str):
        engine.check_model(name)
        return model_card()

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        raise RequestError(f"'{engine.model_id}' is a base model with no chat template, so /v1/chat/completions "
                           "cannot serve it; send a prompt to /v1/completions instead",
                           code="unsupported_endpoint")

    @app.post("/v1/completions")
    async def completions(request: Request):
        raw = await request.body()
        try:
            body = json.loads(raw, parse_constant=_reject_constant)
        except (ValueError, RecursionError) as e:
            raise RequestError(f"the request body is not valid JSON ({e})", code="invalid_json") from None
        plan = engine.plan(body)
        rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        if plan.stream:
            return StreamingResponse(_sse(engine, plan, rid, created), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        loop = asyncio.get_running_loop()
        pieces = await loop.run_in_executor(engine.executor, lambda: list(engine.complete(plan)))
        texts: dict[int, list[str]] = {}
        choices, tokens = [], 0
        for piece in pieces:
            texts.setdefault(piece.index, []).append(piece.text)
            if piece.finish is not None:
                tokens += piece.tokens
                choices.append({"text": "".join(texts[piece.index]), "index": piece.index, "logprobs": None,
                                "finish_reason": piece.finish})
        return _completion(engine, rid, created, choices, _usage(plan, tokens))

    return app


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


async def _sse(engine: Engine, plan: Plan, rid: str, created: int) -> AsyncIterator[str]:
    """Server-sent events: one chunk per piece of text, a last chunk per choice with its finish_reason, the
    usage (if asked for), then `data: [DONE]`. The generation runs in a worker thread; when the client goes
    away, the thread is told to stop."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    cancel = threading.Event()
    done = object()

    def work() -> None:
        try:
            for piece in engine.complete(plan, cancel):
                loop.call_soon_threadsafe(queue.put_nowait, piece)
        except Exception as e:  # reported to the client as an error event; the server goes on
            loop.call_soon_threadsafe(queue.put_nowait, e)
        finally:
            loop.call_soon_threadsafe(queue.put_nowait, done)

    def event(obj: dict) -> str:
        return f"data: {json.dumps(obj)}\n\n"

    future = loop.run_in_executor(engine.executor, work)
    tokens = 0
    try:
        while (item := await queue.get()) is not done:
            if isinstance(item, Exception):
                yield event(error_body(f"internal error: {type(item).__name__}: {item}", "server_error"))
                continue
            tokens += item.tokens
            choice = {"text": item.text, "index": item.index, "logprobs": None, "finish_reason": item.finish}
            yield event(_completion(engine, rid, created, [choice], None))
        if plan.include_usage:
            yield event(_completion(engine, rid, created, [], _usage(plan, tokens)))
        yield "data: [DONE]\n\n"
    finally:
        cancel.set()  # the worker stops at its next token (at once if it has not started)
        del future


# --- the command -------------------------------------------------------------------------------------------

def is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def exposure_warning(host: str, api_key: str | None) -> str | None:
    """The warning for binding beyond this machine without a key (None when there is nothing to warn of)."""
    if api_key or is_loopback(host):
        return None
    return (f"warning: --host {host} makes the server reachable from other machines, and without --api_key "
            "anyone who can reach it can use it; add --api_key KEY (or bind --host 127.0.0.1)")


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port, or a UserError naming the flag that is wrong."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise UserError(f"--host {host}: not an address of this machine ({e.strerror}); use e.g. 127.0.0.1 "
                        "or 0.0.0.0") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as e:
        sock.close()
        raise UserError(f"--port {port}: cannot listen on {host}:{port} ({e.strerror}); choose another --port "
                        "(or stop what is using it)") from None
    return sock


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="tinyllm-serve", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                      description="Serve a trained tinyllm run over an OpenAI-compatible HTTP API "
                                  "(/v1/completions). The generation settings below are the defaults of every "
                                  "request; not given, they are the run's own.")
    s = p.add_argument_group("server")
    s.add_argument("--host", default="127.0.0.1",
                   help="Address to listen on; anything but loopback without --api_key prints a warning.")
    s.add_argument("--port", type=int, default=8000, help="TCP port to listen on (1-65535).")
    s.add_argument("--api_key", default=None,
                   help="Require 'Authorization: Bearer KEY' on every request (401 otherwise).")
    s.add_argument("--max_tokens_cap", type=int, default=1024,
                   help="The largest max_tokens a request may ask for (larger ones get a 400 error).")
    s.add_argument("--parallel", type=int, default=4,
                   help="Completions generated at the same time, each in its own thread; more wait in a queue.")
    s.add_argument("--log_level", default="info", choices=("critical", "error", "warning", "info", "debug"),
                   help="uvicorn's log level (info logs every request).")
    C.add_arguments(p, only=FLAGS, helps={"ema": C.EMA_READ_HELP})
    return p


def check_args(ns: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    if not getattr(ns, "out_dir", None):
        parser.error("--out_dir is required: the run folder to serve (e.g. --out_dir out/tiny_char_gpt)")
    if not Path(ns.out_dir).is_dir():
        parser.error(f"--out_dir {ns.out_dir}: no such folder; point it at a run folder (one holding ckpt.pt)")
    if not 1 <= ns.port <= 65535:
        parser.error(f"--port must be between 1 and 65535, got {ns.port}")
    if ns.max_tokens_cap < 1:
        parser.error(f"--max_tokens_cap must be at least 1, got {ns.max_tokens_cap}")
    if ns.parallel < 1:
        parser.error(f"--parallel must be at least 1, got {ns.parallel}")
    if ns.api_key is not None and not ns.api_key.strip():
        parser.error("--api_key must not be empty")


def load_engine(ns: argparse.Namespace) -> Engine:
    """The run's config (resolved as --generate_only does) and its model, from the parsed flags."""
    run = argparse.Namespace(**{k: v for k, v in vars(ns).items() if k in C.FIELDS},
                             config=None, resume=False, generate_only=True)
    cfg, ckpt = resolve_config(run)
    return Engine(cfg, ckpt, ns.max_tokens_cap, ns.parallel)


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    ns = parser.parse_args(argv)
    check_args(ns, parser)
    sock = engine = None
    try:
        try:
            import uvicorn
        except ImportError:
            raise UserError(f"tinyllm-serve needs FastAPI and uvicorn: {SERVE_EXTRA_HINT}") from None
        engine = load_engine(ns)
        sock = bind(ns.host, ns.port)
        app = create_app(engine, ns.api_key)
        if warning := exposure_warning(ns.host, ns.api_key):
            print(warning, file=sys.stderr)
        ema = ", EMA weights" if engine.uses_ema else ""
        host = f"[{ns.host}]" if ":" in ns.host else ns.host
        print(f"serving {engine.cfg.out_dir}/{CKPT_NAMES[engine.cfg.ckpt]} (step {engine.step}, "
              f"{engine.model.num_params():,} parameters{ema}) on {engine.device} as model '{engine.model_id}' "
              f"at http://{host}:{sock.getsockname()[1]}/v1", file=sys.stderr, flush=True)
        server = uvicorn.Server(uvicorn.Config(app, log_level=ns.log_level, timeout_graceful_shutdown=5))
        server.run(sockets=[sock])
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
    finally:
        if engine is not None:
            engine.close()
        if sock is not None:
            sock.close()


if __name__ == "__main__":
    main()
