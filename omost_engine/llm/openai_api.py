"""The remote backend: any OpenAI-compatible server (vLLM, llama.cpp server, Ollama, TGI).

Owns the wire protocol of POST {base_url}/chat/completions with `"stream": true`: server-sent
events `data: {json}` whose choices[0].delta.content are the text pieces, ended by `data: [DONE]`.
Also owns timeouts, retries and the errors a chat user sees:

    connection refused / reset before any text   retried (`retries` times, with backoff)
    HTTP 401/403                                 BackendError: the API key (detail: the env var)
    HTTP 404                                     BackendError: the server does not know the model
    HTTP 429                                     retried after Retry-After when short, else BackendError
    HTTP 5xx                                     retried before any text, else BackendError
    stream ends without [DONE] or finish_reason  BackendError: dropped mid-answer (never truncated text)
    no complete line for idle_timeout_s          BackendError: the server stopped sending
    total_timeout_s since the first attempt      BackendError: the answer took too long
    answer past canvas_code.MAX_INPUT_CHARS      BackendError: stopped at once (the parser reads no more)
    an event that is not a chat-completion chunk BackendError: not a chat completion (odd JSON types)

Reading is bounded (bounded_stream.py): the HTTP I/O runs on a helper thread, so cancel and
both timeouts end a read within a fraction of a second even while a server trickles bytes with
no newline or stalls mid-answer; a lane is never held longer than those bounds. Text pieces are
handed on as they come (the engine and `Generation` join them once).

Errors: str(e) is the chat message, without the server's address, its body or the key; the
detail (address, status, the server's words, the env var to check), redacted of the key and
any bearer token, is `e.detail`, logged once here at WARNING when the request finally fails.

The API key is read from the environment variable named in the config, never from the config.
Runs on an engine lane thread (synchronous httpx); it knows nothing of chats, torch or GPUs.

Server dialects (`server`): where a server can enforce the Canvas grammar (omost_engine/grammar.py)
it is sent in that server's own request field, so every answer parses:

    vllm       structured_outputs: {"grammar": <GBNF>}
    sglang     ebnf: <GBNF>
    llama.cpp  grammar: <GBNF>
    tgi        response_format: {"type": "regex", "value": <regex>}
    ollama, generic   nothing: the engine repairs an answer that does not parse (llm/repair.py)

"auto" probes the server once, on the first generation, through endpoints those servers really
serve (Ollama GET /api/version, llama.cpp GET /props, TGI GET /info, SGLang GET /get_server_info,
vLLM GET /version) and logs what it found. A server that answers 400/422 to the grammar field is
reported once (log and the answer's notes) and the request is sent again without it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

import httpx

from omost_engine.canvas_code import MAX_INPUT_CHARS
from omost_engine.errors import BackendError, Interrupted
from omost_engine.llm.base import ChatMessage, Generation, GenerationParams, GenerationStats
from omost_engine.llm.bounded_stream import BoundedStream, StreamBounds, StreamTimeout, StreamTooLarge
from omost_engine.llm.context import with_system_prompt

log = logging.getLogger(__name__)

_RETRY_STATUSES = {429, 500, 502, 503, 504}
_ERROR_BODY_BYTES = 4096  # of an error response: enough for its message, never a whole page
_MAX_STREAM_BYTES = 64 * MAX_INPUT_CHARS  # events carry JSON around each piece: ~30-60x the text
_BEARER = re.compile(r"(Bearer\s+)[^\s\"',;]+", re.IGNORECASE)
_TOO_MUCH = (
    "The language model's answer ran past the longest canvas the bot reads without finishing, "
    "so it was stopped. Try again, perhaps with a simpler request."
)

Server = Literal["auto", "vllm", "sglang", "llama.cpp", "tgi", "ollama", "generic"]
SERVERS: tuple[str, ...] = ("auto", "vllm", "sglang", "llama.cpp", "tgi", "ollama", "generic")
ENFORCING_SERVERS = frozenset({"vllm", "sglang", "llama.cpp", "tgi"})
"""Dialects with a request field that enforces a grammar while the server decodes."""

_GRAMMAR_KEYS = ("structured_outputs", "ebnf", "grammar", "response_format")


def grammar_fields(server: str) -> dict[str, Any]:
    """The request-body fields that carry the Canvas grammar in `server`'s dialect ({} if none)."""
    from omost_engine.grammar import to_gbnf, to_regex

    if server == "vllm":
        return {"structured_outputs": {"grammar": to_gbnf()}}
    if server == "sglang":
        return {"ebnf": to_gbnf()}
    if server == "llama.cpp":
        return {"grammar": to_gbnf()}
    if server == "tgi":
        return {"response_format": {"type": "regex", "value": to_regex()}}
    return {}


def probe_server(base_url: str, timeout: float = 3.0) -> tuple[str, str]:
    """(dialect, evidence) for the server at `base_url` (ending in /v1), as "auto" would find it."""
    root = base_url.rstrip("/")
    root = root[: -len("/v1")] if root.endswith("/v1") else root
    with httpx.Client(timeout=timeout) as client:
        return _probe(client, root)


def _probe(client: httpx.Client, root: str) -> tuple[str, str]:
    """(dialect, evidence): which server answers at `root` (the base URL without /v1)."""
    checks: list[tuple[str, str, Any]] = [
        ("ollama", "/api/version", lambda d: "version" in d),
        ("llama.cpp", "/props", lambda d: "default_generation_settings" in d),
        ("tgi", "/info", lambda d: "model_id" in d and ("router" in d or "max_total_tokens" in d)),
        ("sglang", "/get_server_info", lambda d: bool(d)),
        ("vllm", "/version", lambda d: "version" in d),
    ]
    reached = False
    for dialect, path, looks_right in checks:
        try:
            response = client.get(root + path, timeout=3.0)
            reached = True
            data = response.json() if response.status_code == 200 else None
        except httpx.TransportError:
            continue  # refused or timed out: says nothing about the dialect
        except (httpx.HTTPError, json.JSONDecodeError, UnicodeDecodeError):
            continue
        if isinstance(data, dict) and looks_right(data):
            return dialect, f"GET {path} answered"
    if not reached:
        return "", "the server did not answer any probe"
    return "generic", "none of /api/version, /props, /info, /get_server_info, /version answered as expected"


class OpenAIBackend:
    """Streams chat completions from an OpenAI-compatible server; `base_url` ends in /v1."""

    remote = True

    def __init__(
        self,
        model: str,
        base_url: str,
        *,
        api_key_env: str | None = None,
        timeout: float = 120.0,
        connect_timeout: float = 10.0,
        idle_timeout_s: float = 60.0,
        total_timeout_s: float = 600.0,
        retries: int = 2,
        retry_backoff: float = 0.5,
        max_retry_wait: float = 10.0,
        include_usage: bool = True,
        server: Server = "auto",
        constrain: Literal["auto", "off"] = "auto",
    ) -> None:
        if server not in SERVERS:
            raise ValueError(f"server must be one of {', '.join(SERVERS)}, not {server!r}")
        if constrain not in ("auto", "off"):
            raise ValueError(f"constrain must be 'auto' or 'off', not {constrain!r}")
        self.server_setting = server
        self.server: str | None = None if server == "auto" else server  # the dialect in use
        self.constrain = constrain
        self._grammar_rejected = False
        self._probe_lock = threading.Lock()
        self.model = model
        self.name = f"openai:{model}"
        self.base_url = base_url.rstrip("/")
        self.api_key_env = api_key_env
        self.retries = retries
        self.retry_backoff = retry_backoff
        self.max_retry_wait = max_retry_wait
        self.include_usage = include_usage
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        if not (idle_timeout_s > 0 and total_timeout_s > 0):
            raise ValueError("idle_timeout_s and total_timeout_s must be positive")
        self.idle_timeout_s = idle_timeout_s
        self.total_timeout_s = total_timeout_s
        self._api_key: str | None = None
        if api_key_env:
            self._api_key = os.environ.get(api_key_env)
            if not self._api_key:
                raise BackendError(
                    f"The environment variable {api_key_env} named in the config for the language model "
                    "server's API key is not set."
                )
        self._client = httpx.Client(timeout=httpx.Timeout(timeout, connect=connect_timeout))

    # --- the server's dialect and the grammar --------------------------------------------

    @property
    def root_url(self) -> str:
        """The server's root: base_url without its trailing /v1 (where the probe endpoints live)."""
        return self.base_url[: -len("/v1")] if self.base_url.endswith("/v1") else self.base_url

    def detect_server(self) -> str:
        """The dialect in use, probing the server once when `server = "auto"`."""
        with self._probe_lock:
            if self.server is None:
                found, evidence = _probe(self._client, self.root_url)
                if not found:  # unreachable now: send this request plain and probe again next time
                    log.warning("cannot probe the model server at %s: %s", self.base_url, evidence)
                    return "generic"
                self.server = found
                how = (
                    f"the Canvas grammar goes in its {next(iter(grammar_fields(self.server)))} field"
                    if self.server in ENFORCING_SERVERS
                    else "it cannot enforce the Canvas grammar; answers that do not parse get one repair turn"
                )
                log.info(
                    "language model server at %s is %s (%s); %s", self.base_url, self.server, evidence, how
                )
            return self.server

    @property
    def enforces_grammar(self) -> bool:
        """True when the server is sent the Canvas grammar and has not refused it."""
        return (
            self.constrain == "auto"
            and self.server in ENFORCING_SERVERS
            and not self._grammar_rejected
        )

    def _grammar_refused(
        self, status: int, raw: bytes, body: dict[str, Any], stats: GenerationStats
    ) -> bool:
        """A 400/422 to a request carrying the grammar: report it once, drop the field, go on."""
        sent = [k for k in _GRAMMAR_KEYS if k in body]
        if status not in (400, 422) or not sent or not self.enforces_grammar:
            return False
        self._grammar_rejected = True
        for key in sent:
            del body[key]
        log.warning(
            "%s",
            self._redact(
                f"{self.base_url} ({self.server}) refused the Canvas grammar in {', '.join(sent)} "
                f"(HTTP {status}: {_message(_json_or_text(raw))}); sending answers unconstrained"
            ),
        )
        # The user's note names no URL or server text (issue 13's rule for what users see).
        stats.notes.append(
            f"The language model server ({self.server}) refused the Canvas grammar (HTTP {status}); "
            "answers are no longer constrained, and one that does not parse gets a repair turn."
        )
        return True

    # --- protocol ------------------------------------------------------------------------

    def load(self) -> None:
        """Nothing to load: the model lives on the server."""

    def unload(self) -> None:
        """Nothing to unload: no local GPU memory is held."""

    def close(self) -> None:
        self._client.close()

    def generate(
        self, messages: Sequence[ChatMessage], params: GenerationParams, cancel: threading.Event
    ) -> Generation:
        if cancel.is_set():
            raise Interrupted()
        stats = GenerationStats()
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": m.role, "content": m.content} for m in with_system_prompt(messages)],
            "stream": True,
            "max_tokens": params.max_new_tokens,
            "temperature": max(params.temperature, 0.0),  # 0 is greedy on every server we target
            "top_p": params.top_p if params.temperature > 0 else 1.0,
        }
        if params.seed is not None:
            body["seed"] = params.seed
        if self.include_usage:
            body["stream_options"] = {"include_usage": True}
        if self.constrain == "auto":
            self.detect_server()
            if self.enforces_grammar:
                body.update(grammar_fields(self.server or "generic"))
        return Generation(self._stream(body, stats, cancel), stats)

    # --- HTTP ----------------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "text/event-stream"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        return headers

    def _wait(self, seconds: float, cancel: threading.Event) -> None:
        if cancel.wait(seconds):
            raise Interrupted()

    def _bounds(self) -> StreamBounds:
        # One event is one line; JSON escapes can make a character six bytes (\uXXXX).
        return StreamBounds(
            idle_s=self.idle_timeout_s,
            total_s=self.total_timeout_s,
            max_line_bytes=6 * MAX_INPUT_CHARS + 64 * 1024,
            max_bytes=_MAX_STREAM_BYTES,
        )

    def _stream(self, body: dict[str, Any], stats: GenerationStats, cancel: threading.Event) -> Iterator[str]:
        try:
            yield from self._attempts(body, stats, cancel)
        except BackendError as e:
            log.warning("language model request failed: %s", self._redact(e.detail))
            raise

    def _attempts(
        self, body: dict[str, Any], stats: GenerationStats, cancel: threading.Event
    ) -> Iterator[str]:
        """POST with retries (before any text); every wait bounded by the stream bounds."""
        url = f"{self.base_url}/chat/completions"
        started = time.perf_counter()
        deadline = time.monotonic() + self.total_timeout_s  # shared by every attempt
        received = [0]  # characters of answer text seen so far (shared with _read_events)
        attempt = 0
        # The helper thread's own read timeout: just past the idle bound, so the caller's check
        # (with its clearer message) fires first and an abandoned helper still ends soon after.
        timeout = httpx.Timeout(self.timeout, connect=self.connect_timeout, read=self.idle_timeout_s + 1.0)
        while True:
            if cancel.is_set():
                raise Interrupted()
            request = self._client.build_request(
                "POST", url, json=body, headers=self._headers(), timeout=timeout
            )
            try:
                with BoundedStream(self._client, request, cancel, self._bounds(), deadline) as stream:
                    response = stream.head()
                    if response.status_code != 200:
                        raw = stream.body(_ERROR_BODY_BYTES)
                        if self._grammar_refused(response.status_code, raw, body, stats):
                            continue  # sent again at once without the grammar field
                        error, wait = self._http_error(response, raw)
                        if wait is not None and attempt < self.retries:
                            attempt += 1
                            self._wait(wait if wait > 0 else self.retry_backoff * 2 ** (attempt - 1), cancel)
                            continue
                        raise error
                    yield from self._read_events(stream.lines(), stats, cancel, received, started)
                    return
            except StreamTimeout as e:
                raise self._timed_out(e, received[0]) from e
            except StreamTooLarge as e:
                raise self._error(_TOO_MUCH, f"the stream was stopped: {e}") from e
            except httpx.TimeoutException as e:  # connect or read timeout inside the helper thread
                if isinstance(e, httpx.ConnectTimeout) and not received[0] and attempt < self.retries:
                    attempt += 1
                    self._wait(self.retry_backoff * 2 ** (attempt - 1), cancel)
                    continue
                raise self._timed_out(StreamTimeout("idle", self.idle_timeout_s), received[0]) from e
            except httpx.TransportError as e:  # refused, reset, closed mid-body
                if received[0]:
                    raise self._dropped(received[0], f"{type(e).__name__}: {e}") from e
                if attempt < self.retries:
                    attempt += 1
                    self._wait(self.retry_backoff * 2 ** (attempt - 1), cancel)
                    continue
                raise self._error(
                    "The language model server cannot be reached right now; try again in a minute.",
                    f"cannot reach {self.base_url} ({type(e).__name__}: {e})",
                    retryable=True,
                ) from e

    # --- errors: a short message for the chat, the detail (with addresses and bodies) for the log

    def _error(
        self, message: str, detail: str, status: int | None = None, *, retryable: bool = False
    ) -> BackendError:
        return BackendError(message, status, retryable, detail=self._redact(f"{self.name}: {detail}"))

    def _redact(self, text: str) -> str:
        """The API key and any bearer token out of text a server may have echoed."""
        if self._api_key:
            text = text.replace(self._api_key, "[redacted]")
        return _BEARER.sub(r"\1[redacted]", text)

    def _timed_out(self, e: StreamTimeout, chars: int) -> BackendError:
        if e.kind == "total":
            return self._error(
                f"The language model took longer than the {self.total_timeout_s:g}-second limit to "
                "write its answer, so it was stopped. Try again, perhaps with a simpler request.",
                f"{self.base_url}: total time {self.total_timeout_s:g} s ran out after {chars} characters",
                retryable=True,
            )
        if chars:
            return self._error(
                f"The language model server stopped sending for more than {self.idle_timeout_s:g} s "
                "in the middle of the answer, so it was stopped. Try again in a minute.",
                f"{self.base_url}: no complete line for {e.waited_s:.1f} s after {chars} characters",
                retryable=True,
            )
        return self._error(
            f"The language model server did not answer within {self.idle_timeout_s:g} s. "
            "Try again in a minute.",
            f"{self.base_url}: nothing for {e.waited_s:.1f} s before the answer began",
            retryable=True,
        )

    def _dropped(self, chars: int, why: str = "the body ended") -> BackendError:
        return self._error(
            "The language model server closed the stream before the answer was complete. "
            "Try again in a minute.",
            f"{self.base_url} closed the stream after {chars} characters ({why})",
            retryable=True,
        )

    def _unreadable(self, what: str, sample: str) -> BackendError:
        return self._error(
            "The language model server sent something that is not a chat completion, so the answer "
            "could not be read. The operator can find the details in the log.",
            f"{self.base_url} sent {what}: {sample[:200]!r}",
        )

    def _read_events(
        self,
        lines: Iterator[str],
        stats: GenerationStats,
        cancel: threading.Event,
        received: list[int],
        started: float,
    ) -> Iterator[str]:
        finished: str | None = None
        chunks = 0
        for line in lines:
            if cancel.is_set():
                raise Interrupted()
            if not line.startswith("data:"):
                continue  # blank separators, comments (":"), event:/id: fields
            data = line[5:].strip()
            if data == "[DONE]":
                break
            try:
                event = json.loads(data)
            except json.JSONDecodeError as e:
                raise self._unreadable("an event that is not JSON", data) from e
            if not isinstance(event, dict):
                raise self._unreadable("an event that is not a JSON object", data)
            if "error" in event:
                raise self._error(
                    "The language model server failed in the middle of the answer. Try again in a minute.",
                    f"{self.base_url} failed mid-answer: {_message(event)}",
                    retryable=True,
                )
            usage = event.get("usage")
            if isinstance(usage, dict) and usage:
                stats.prompt_tokens = _count(usage.get("prompt_tokens"))
                stats.new_tokens = _count(usage.get("completion_tokens")) or chunks
            for piece, finish in _pieces(event, data, self._unreadable):
                if piece:
                    if received[0] + len(piece) > MAX_INPUT_CHARS:
                        # The parser reads no more than this; every further byte is wasted time.
                        raise self._error(_TOO_MUCH, f"the answer passed {MAX_INPUT_CHARS:,} characters")
                    chunks += 1
                    received[0] += len(piece)
                    if not usage:
                        stats.new_tokens = chunks  # servers stream about one token per event
                    stats.seconds = time.perf_counter() - started
                    yield piece
                finished = finish or finished
        else:
            if finished is None:  # the body ended without [DONE] or a finish_reason
                raise self._dropped(received[0])
        stats.seconds = time.perf_counter() - started
        if finished == "length":
            stats.notes.append(f"The answer stopped at the {stats.new_tokens}-token limit.")

    def _http_error(self, response: httpx.Response, raw: bytes) -> tuple[BackendError, float | None]:
        """The error for a non-200 answer, and how long to wait before a retry (None: do not)."""
        status = response.status_code
        detail = f"{self.base_url} answered HTTP {status}: {_message(_json_or_text(raw))}"
        if status in (401, 403):
            fix = (
                f"check the key in the environment variable {self.api_key_env}"
                if self.api_key_env
                else "it needs an API key: name the environment variable that holds it (api_key_env)"
            )
            message = (
                "The language model server refused the bot's API key, so nothing could be written. "
                "The operator needs to check the key."
            )
            return self._error(message, f"{detail}; {fix}", status), None
        if status == 404:
            message = (
                "The language model server does not know the model the bot is set up to use. "
                "The operator needs to check the model name."
            )
            return self._error(
                message, f"{detail}; model {self.model!r}, base URL should end in /v1", status
            ), None
        if status == 429:
            after = _retry_after(response)
            when = f"try again in {after:g} s" if after is not None else "try again later"
            error = self._error(
                f"The language model server is rate-limiting requests: {when}.",
                detail,
                status,
                retryable=True,
            )
            wait = after if after is not None and after <= self.max_retry_wait else None
            if after is None:
                wait = 0.0  # no hint: back off exponentially
            return error, wait
        if status >= 500:
            error = self._error(
                f"The language model server failed (HTTP {status}). Try again in a minute.",
                detail,
                status,
                retryable=True,
            )
            return error, (0.0 if status in _RETRY_STATUSES else None)
        message = f"The language model server rejected the request (HTTP {status})."
        return self._error(message, detail, status), None


def _json_or_text(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return raw[:200].decode("utf-8", "replace")


def _count(value: Any) -> int:
    """A token count from a usage object; anything odd counts as 0."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _pieces(
    event: dict[str, Any], data: str, unreadable: Callable[[str, str], BackendError]
) -> Iterator[tuple[str, str | None]]:
    """(text piece, finish_reason) of each choice, checking the types a server could get wrong."""
    choices = event.get("choices") or []
    if not isinstance(choices, list):
        raise unreadable("choices that are not a list", data)
    for choice in choices:
        if not isinstance(choice, dict):
            raise unreadable("a choice that is not an object", data)
        delta = choice.get("delta") or {}
        piece = delta.get("content") if isinstance(delta, dict) else None
        finish = choice.get("finish_reason")
        if not isinstance(piece, str | None) or not isinstance(finish, str | None):
            raise unreadable("a choice of the wrong shape", data)
        yield piece or "", finish


def _message(payload: Any) -> str:
    """The human part of an error body: OpenAI {"error": {"message"}}, vLLM {"message"}, TGI {"error"}."""
    if isinstance(payload, dict):
        error = payload.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if isinstance(error, str):
            return error
        for key in ("message", "detail"):
            if payload.get(key):
                return str(payload[key])
        return json.dumps(payload)[:200]
    return str(payload).strip() or "no details"


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        return None  # an HTTP date: rare from model servers; treat as "no hint"
