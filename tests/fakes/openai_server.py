"""A fake OpenAI-compatible server on 127.0.0.1 that streams chat completions the way vLLM does.

POST /v1/chat/completions with `"stream": true` answers `text/event-stream` over chunked
transfer encoding: a first chunk with the assistant role, one `data: {json}` event per piece
(choices[0].delta.content), a last chunk with finish_reason, a usage chunk when the request asked
for it (stream_options.include_usage), then `data: [DONE]`. Errors use vLLM/OpenAI's JSON shape:
{"object": "error", "message", "type", "code"} for 404 and {"error": {...}} otherwise.

Fault injection: `server.faults` is a queue of fault names, one consumed per request:

    "401"    wrong or missing API key           "404"   unknown model (also any model not served)
    "429"    rate limited, Retry-After header   "500"/"503"  server error
    "drop"   closes the connection mid-stream   "drop_clean"  ends the body early, no [DONE]
    "reset"  closes the connection before answering
    "slow"   waits `slow_seconds` before every event
    "error_event"  sends an error event in the middle of the stream (vLLM does this)

Hostile servers (a broken or malicious dependency; each keeps going until the client hangs up
or the server is stopped):

    "trickle"     one token, then one byte every `trickle_seconds`, never a newline
    "stall"       one token, then nothing (the connection stays open)
    "keepalive"   one token, then an SSE comment line every `trickle_seconds`, never an answer
    "runaway"     an answer that never ends, as fast as the client reads it
    "401_echo"    401 whose error body echoes the request's Authorization header (a proxy's habit)
    "odd_event"   one token, then `data: <odd_event>` verbatim (JSON of the wrong shape), then [DONE]

`server.sent_chars` counts the answer characters streamed by "runaway".

Requests are recorded (`server.requests`: headers and JSON bodies) so tests can check what a
client sent. `replies` (a queue) gives the next answers, one per request, before `reply`.

Dialects (`dialect`): the fake answers the probe endpoint that server really serves (vLLM
GET /version, SGLang GET /get_server_info, llama.cpp GET /props, TGI GET /info, Ollama
GET /api/version; "generic" none) and reads a grammar only from that server's own field (vLLM
`structured_outputs.grammar`, SGLang `ebnf`, llama.cpp `grammar`, TGI `response_format` with
type "regex"; Ollama and generic none; a grammar in another field is ignored, as vLLM ignores
unknown fields). A grammar it reads must compile (else 400, like the real servers), and then the
answer is sampled under *that* grammar with llguidance from random logits over a byte-level
tokenizer (`grammar_sampler`), instead of `reply`. `reject_grammar` answers 400 to any request
carrying the dialect's grammar field, as a server built without grammar support does.
This module knows nothing of the project's backends.
"""

from __future__ import annotations

import functools
import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up mid-stream (cancel, timeout) is expected here, not a failure.
        pass


@dataclass
class RecordedRequest:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class FakeOpenAIServer:
    """Start with `with FakeOpenAIServer() as server:`; `server.base_url` ends in /v1."""

    models: tuple[str, ...] = ("omost-llama-3-8b",)
    api_key: str | None = None
    reply: str = "```python\ncanvas = Canvas()\n```"
    piece_chars: int = 4  # the fake "tokenizer": the reply is streamed in pieces of this size
    retry_after: str = "1"
    slow_seconds: float = 0.3
    faults: deque[str] = field(default_factory=deque)
    trickle_seconds: float = 2.0
    sent_chars: int = 0
    odd_event: str = "[1, 2]"
    requests: list[RecordedRequest] = field(default_factory=list)
    replies: deque[str] = field(default_factory=deque)
    dialect: str = "generic"
    reject_grammar: bool = False
    grammars: list[str] = field(default_factory=list)  # each grammar read from its dialect's field

    def __post_init__(self) -> None:
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.closing = threading.Event()  # ends the hostile handlers' endless loops

    @property
    def base_url(self) -> str:
        assert self._httpd is not None, "server not started"
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def pieces(self) -> list[str]:
        return [self.reply[i : i + self.piece_chars] for i in range(0, len(self.reply), self.piece_chars)]

    def __enter__(self) -> FakeOpenAIServer:
        handler = type("Handler", (_Handler,), {"fake": self})
        self._httpd = _QuietServer(("127.0.0.1", 0), handler)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(0.05,), name="fake-openai", daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        assert self._httpd is not None and self._thread is not None
        self.closing.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    fake: FakeOpenAIServer

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    # --- helpers -----------------------------------------------------------------------------

    def _json(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, kind: str, headers: dict[str, str] | None = None) -> None:
        if status == 404:  # vLLM's shape
            self._json(
                status, {"object": "error", "message": message, "type": kind, "param": None, "code": status}
            )
        else:  # OpenAI's shape
            self._json(status, {"error": {"message": message, "type": kind, "code": status}}, headers)

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _event(self, payload: dict[str, Any] | str) -> None:
        text = payload if isinstance(payload, str) else json.dumps(payload)
        self._chunk(f"data: {text}\n\n".encode())

    # --- the endpoint ------------------------------------------------------------------------

    def do_POST(self) -> None:
        fake = self.fake
        length = int(self.headers.get("Content-Length", "0"))
        raw = self.rfile.read(length)
        body = json.loads(raw or b"{}")
        fake.requests.append(RecordedRequest(self.path, dict(self.headers.items()), body))
        fault = fake.faults.popleft() if fake.faults else ""

        if fault in _HOSTILE:
            _HOSTILE[fault](self, body)
            return
        if fault == "reset":
            self.close_connection = True
            self.connection.close()
            return
        if self.path != "/v1/chat/completions":
            self._error(404, f"Not Found: {self.path}", "NotFoundError")
            return
        if fault == "401" or (fake.api_key and self.headers.get("Authorization") != f"Bearer {fake.api_key}"):
            self._error(401, "Incorrect API key provided.", "invalid_request_error")
            return
        model = body.get("model")
        if fault == "404" or model not in fake.models:
            self._error(404, f"The model `{model}` does not exist.", "NotFoundError")
            return
        if fault == "429":
            self._error(429, "Rate limit reached.", "rate_limit_exceeded", {"Retry-After": fake.retry_after})
            return
        if fault in ("500", "503"):
            self._error(int(fault), "Internal server error: CUDA error", "InternalServerError")
            return
        grammar = _grammar_in(fake.dialect, body)
        if grammar is not None:
            if fake.reject_grammar:
                self._error(400, f"{fake.dialect} was built without grammar support", "BadRequestError")
                return
            try:
                text = sample_under_grammar(grammar, int(body.get("seed") or 0))
            except ValueError as e:
                self._error(400, f"invalid grammar: {e}", "BadRequestError")
                return
            fake.grammars.append(grammar[1])
            self._stream(body, fault, text)
            return
        self._stream(body, fault, fake.replies.popleft() if fake.replies else None)

    def do_GET(self) -> None:
        probe = _PROBES.get(self.fake.dialect)
        if probe is not None and self.path == probe[0]:
            self._json(200, probe[1])
        else:
            self._error(404, f"Not Found: {self.path}", "NotFoundError")

    def _stream(self, body: dict[str, Any], fault: str, reply: str | None) -> None:
        fake = self.fake
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        if fault == "drop_clean":  # close-delimited body (no chunked framing): ends "cleanly"
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
        else:
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
        base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": int(time.time())}
        base["model"] = body["model"]

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return {**base, "choices": [choice]}

        def send(payload: dict[str, Any] | str) -> None:
            if fault == "slow":
                time.sleep(fake.slow_seconds)
            if fault == "drop_clean":
                text = payload if isinstance(payload, str) else json.dumps(payload)
                self.wfile.write(f"data: {text}\n\n".encode())
                self.wfile.flush()
            else:
                self._event(payload)

        text = fake.reply if reply is None else reply
        pieces = [text[i : i + fake.piece_chars] for i in range(0, len(text), fake.piece_chars)]
        limit = int(body.get("max_tokens") or len(pieces))
        sent = pieces[:limit]
        send(chunk({"role": "assistant", "content": ""}))
        for i, piece in enumerate(sent):
            if fault in ("drop", "drop_clean") and i == len(sent) // 2:
                self.close_connection = True
                self.connection.shutdown(2)  # mid-stream: no terminating chunk, no [DONE]
                self.connection.close()
                return
            if fault == "error_event" and i == len(sent) // 2:
                send({"error": {"message": "The engine died", "type": "InternalServerError", "code": 500}})
                send("[DONE]")
                self._chunk(b"")
                return
            send(chunk({"content": piece}))
        send(chunk({}, "length" if limit < len(pieces) else "stop"))
        if (body.get("stream_options") or {}).get("include_usage"):
            send({**base, "choices": [], "usage": {"prompt_tokens": 42, "completion_tokens": len(sent)}})
        send("[DONE]")
        self._chunk(b"")


# --- hostile servers ----------------------------------------------------------------------------


def _first_token(handler: _Handler, body: dict[str, Any]) -> None:
    """Response head and one real token, as a healthy server starts."""
    handler.send_response(200)
    handler.send_header("Content-Type", "text/event-stream")
    handler.send_header("Transfer-Encoding", "chunked")
    handler.end_headers()
    delta = {"role": "assistant", "content": handler.fake.pieces()[0]}
    choice = {"index": 0, "delta": delta, "finish_reason": None}
    handler._event({"id": "chatcmpl-fake", "model": body.get("model"), "choices": [choice]})


def _until_closed(handler: _Handler, send: bytes, every: float) -> None:
    """Send `send` every `every` seconds until the client hangs up or the server stops."""
    try:
        while not handler.fake.closing.wait(every):
            handler._chunk(send)
    except OSError:
        pass  # the client gave up: what the test is waiting for
    handler.close_connection = True


def _trickle(handler: _Handler, body: dict[str, Any]) -> None:
    _first_token(handler, body)
    _until_closed(handler, b"d", handler.fake.trickle_seconds)  # "data: ..." one byte at a time


def _stall(handler: _Handler, body: dict[str, Any]) -> None:
    _first_token(handler, body)
    handler.fake.closing.wait()
    handler.close_connection = True


def _keepalive(handler: _Handler, body: dict[str, Any]) -> None:
    _first_token(handler, body)
    _until_closed(handler, b": keep-alive\n\n", handler.fake.trickle_seconds)


def _runaway(handler: _Handler, body: dict[str, Any]) -> None:
    _first_token(handler, body)
    fake = handler.fake
    piece = ("la " * fake.piece_chars)[: fake.piece_chars]
    choice = {"index": 0, "delta": {"content": piece}, "finish_reason": None}
    event = json.dumps({"id": "chatcmpl-fake", "model": body.get("model"), "choices": [choice]})
    frame = f"data: {event}\n\n".encode()
    try:
        while not fake.closing.is_set():
            handler._chunk(frame)
            fake.sent_chars += len(piece)
    except OSError:
        pass
    handler.close_connection = True


def _401_echo(handler: _Handler, body: dict[str, Any]) -> None:
    echoed = handler.headers.get("Authorization", "")
    handler._error(401, f"Invalid credentials in header 'Authorization: {echoed}'", "invalid_request_error")


def _odd_event(handler: _Handler, body: dict[str, Any]) -> None:
    _first_token(handler, body)
    handler._event(handler.fake.odd_event)
    handler._event("[DONE]")
    handler._chunk(b"")


_HOSTILE = {
    "odd_event": _odd_event,
    "trickle": _trickle,
    "stall": _stall,
    "keepalive": _keepalive,
    "runaway": _runaway,
    "401_echo": _401_echo,
}


# --- dialects --------------------------------------------------------------------------------

_PROBES: dict[str, tuple[str, dict[str, Any]]] = {
    "vllm": ("/version", {"version": "0.11.0"}),
    "sglang": ("/get_server_info", {"version": "0.5.4", "tp_size": 1, "model_path": "omost"}),
    "llama.cpp": ("/props", {"default_generation_settings": {"n_ctx": 8192}, "total_slots": 1}),
    "tgi": ("/info", {"model_id": "omost", "router": "text-generation-router", "max_total_tokens": 8192}),
    "ollama": ("/api/version", {"version": "0.12.3"}),
}


def _grammar_in(dialect: str, body: dict[str, Any]) -> tuple[str, str] | None:
    """(kind, text) of the grammar in `dialect`'s own field of the request, if any."""
    if dialect == "vllm":
        structured = body.get("structured_outputs") or {}
        grammar = structured.get("grammar") if isinstance(structured, dict) else None
        return ("gbnf", grammar) if isinstance(grammar, str) else None
    if dialect == "sglang" and isinstance(body.get("ebnf"), str):
        return "gbnf", body["ebnf"]
    if dialect == "llama.cpp" and isinstance(body.get("grammar"), str):
        return "gbnf", body["grammar"]
    if dialect == "tgi":
        fmt = body.get("response_format") or {}
        if isinstance(fmt, dict) and fmt.get("type") == "regex" and isinstance(fmt.get("value"), str):
            return "regex", fmt["value"]
    return None


@functools.cache
def _sampling_tokenizer() -> Any:
    from tests.tiny_llm import build_tokenizer

    return build_tokenizer()


def sample_under_grammar(grammar: tuple[str, str], seed: int, max_tokens: int = 250) -> str:
    """Text sampled from random logits under the grammar a request carried (the server's job).

    The mask comes from the grammar as sent (GBNF or regex, compiled by llguidance); near the
    budget the project's closing rule ends the canvas, as a server with a max_tokens would.
    """
    import dataclasses

    import llguidance
    import torch
    from llguidance.gbnf_to_lark import gbnf_to_lark

    from omost_engine.llm.constrain import CanvasLogitsProcessor, tokenizer_view

    kind, text = grammar
    tokenizer = _sampling_tokenizer()
    view = tokenizer_view(tokenizer, len(tokenizer))
    try:
        compiled = (
            llguidance.LLMatcher.grammar_from_lark(gbnf_to_lark(text))
            if kind == "gbnf"
            else llguidance.LLMatcher.grammar_from_regex(text)
        )
    except Exception as e:  # the converter raises on syntax it cannot read
        raise ValueError(str(e)) from e
    error = llguidance.LLMatcher.validate_grammar(compiled, view.ll_tokenizer)
    if error:
        raise ValueError(error)
    processor = CanvasLogitsProcessor(
        dataclasses.replace(view, grammar=compiled), 0, max_tokens, tokenizer.eos_token_id
    )
    generator = torch.Generator().manual_seed(seed)
    ids: list[int] = []
    while len(ids) < max_tokens:
        scores = torch.randn(1, len(tokenizer), generator=generator) * 3
        masked = processor(torch.tensor([ids], dtype=torch.long), scores)
        token = int(torch.multinomial(torch.softmax(masked[0], -1), 1, generator=generator))
        if token == tokenizer.eos_token_id:
            break
        ids.append(token)
    return str(tokenizer.decode(ids))
