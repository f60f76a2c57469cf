"""The remote backend: any OpenAI-compatible server (vLLM, llama.cpp server, Ollama, TGI).

Owns the wire protocol of POST {base_url}/chat/completions with `"stream": true`: server-sent
events `data: {json}` whose choices[0].delta.content are the text pieces, ended by `data: [DONE]`.
Also owns timeouts, retries and the errors a chat user sees:

    connection refused / reset before any text   retried (`retries` times, with backoff)
    HTTP 401/403                                 BackendError: the API key (names the env var)
    HTTP 404                                     BackendError: the server does not know the model
    HTTP 429                                     retried after Retry-After when short, else BackendError
    HTTP 5xx                                     retried before any text, else BackendError
    stream ends without [DONE] or finish_reason  BackendError: dropped mid-answer (never truncated text)

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
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import httpx

from omost_engine.errors import BackendError, Interrupted
from omost_engine.llm.base import ChatMessage, Generation, GenerationParams, GenerationStats
from omost_engine.llm.context import with_system_prompt

log = logging.getLogger(__name__)

_RETRY_STATUSES = {429, 500, 502, 503, 504}

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
        self, response: httpx.Response, body: dict[str, Any], stats: GenerationStats
    ) -> bool:
        """A 400/422 to a request carrying the grammar: report it once, drop the field, go on."""
        sent = [k for k in _GRAMMAR_KEYS if k in body]
        if response.status_code not in (400, 422) or not sent or not self.enforces_grammar:
            return False
        self._grammar_rejected = True
        for key in sent:
            del body[key]
        detail = _message(_json_or_text(response))
        note = (
            f"The language model server at {self.base_url} ({self.server}) refused the Canvas grammar "
            f"(HTTP {response.status_code}: {detail}); answers are no longer constrained, and one that "
            "does not parse gets a repair turn."
        )
        log.warning("%s", note)
        stats.notes.append(note)
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

    def _stream(self, body: dict[str, Any], stats: GenerationStats, cancel: threading.Event) -> Iterator[str]:
        url = f"{self.base_url}/chat/completions"
        started = time.perf_counter()
        received = [0]  # characters of answer text seen so far (shared with _read_events)
        attempt = 0
        while True:
            if cancel.is_set():
                raise Interrupted()
            try:
                with self._client.stream("POST", url, json=body, headers=self._headers()) as response:
                    if response.status_code != 200:
                        response.read()
                        if self._grammar_refused(response, body, stats):
                            continue  # sent again at once without the grammar field
                        error, wait = self._http_error(response)
                        if wait is not None and attempt < self.retries:
                            attempt += 1
                            self._wait(wait if wait > 0 else self.retry_backoff * 2 ** (attempt - 1), cancel)
                            continue
                        raise error
                    yield from self._read_events(response, stats, cancel, received, started)
                    return
            except httpx.TimeoutException as e:
                if received[0]:
                    raise BackendError(
                        f"The language model server at {self.base_url} stopped sending for more than "
                        f"{self.timeout:g} s after {received[0]} characters of the answer.",
                        retryable=True,
                    ) from e
                if isinstance(e, httpx.ConnectTimeout) and attempt < self.retries:
                    attempt += 1
                    self._wait(self.retry_backoff * 2 ** (attempt - 1), cancel)
                    continue
                raise BackendError(
                    f"The language model server at {self.base_url} did not answer within {self.timeout:g} s.",
                    retryable=True,
                ) from e
            except httpx.TransportError as e:  # refused, reset, closed mid-body
                if received[0]:
                    raise self._dropped(received[0]) from e
                if attempt < self.retries:
                    attempt += 1
                    self._wait(self.retry_backoff * 2 ** (attempt - 1), cancel)
                    continue
                raise BackendError(
                    f"Cannot reach the language model server at {self.base_url} ({type(e).__name__}: {e}).",
                    retryable=True,
                ) from e

    def _dropped(self, chars: int) -> BackendError:
        return BackendError(
            f"The language model server at {self.base_url} closed the stream after {chars} characters, "
            "before the answer was complete.",
            retryable=True,
        )

    def _read_events(
        self,
        response: httpx.Response,
        stats: GenerationStats,
        cancel: threading.Event,
        received: list[int],
        started: float,
    ) -> Iterator[str]:
        finished: str | None = None
        chunks = 0
        for line in response.iter_lines():
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
                raise BackendError(
                    f"The language model server at {self.base_url} sent an event that is not JSON: "
                    f"{data[:120]!r}"
                ) from e
            if "error" in event:
                raise BackendError(
                    f"The language model server at {self.base_url} failed mid-answer: {_message(event)}",
                    retryable=True,
                )
            usage = event.get("usage")
            if usage:
                stats.prompt_tokens = int(usage.get("prompt_tokens") or 0)
                stats.new_tokens = int(usage.get("completion_tokens") or chunks)
            for choice in event.get("choices") or []:
                piece = (choice.get("delta") or {}).get("content")
                if piece:
                    chunks += 1
                    received[0] += len(piece)
                    if not usage:
                        stats.new_tokens = chunks  # servers stream about one token per event
                    stats.seconds = time.perf_counter() - started
                    yield piece
                finished = choice.get("finish_reason") or finished
        else:
            if finished is None:  # the body ended without [DONE] or a finish_reason
                raise self._dropped(received[0])
        stats.seconds = time.perf_counter() - started
        if finished == "length":
            stats.notes.append(f"The answer stopped at the {stats.new_tokens}-token limit.")

    def _http_error(self, response: httpx.Response) -> tuple[BackendError, float | None]:
        """The error for a non-200 answer, and how long to wait before a retry (None: do not)."""
        status = response.status_code
        detail = _message(_json_or_text(response))
        where = f"The language model server at {self.base_url}"
        if status in (401, 403):
            fix = (
                f"Check the key in the environment variable {self.api_key_env}."
                if self.api_key_env
                else "It needs an API key: name the environment variable that holds it (api_key_env) "
                "in the config."
            )
            return BackendError(f"{where} refused the API key (HTTP {status}: {detail}). {fix}", status), None
        if status == 404:
            return (
                BackendError(
                    f"{where} does not know the model {self.model!r} (HTTP 404: {detail}). Check the model "
                    "name in the config, and that the base URL ends in /v1.",
                    status,
                ),
                None,
            )
        if status == 429:
            after = _retry_after(response)
            when = f" try again in {after:g} s" if after is not None else " try again later"
            error = BackendError(
                f"{where} is rate-limiting requests (HTTP 429:{when}).", status, retryable=True
            )
            wait = after if after is not None and after <= self.max_retry_wait else None
            if after is None:
                wait = 0.0  # no hint: back off exponentially
            return error, wait
        if status >= 500:
            error = BackendError(f"{where} failed (HTTP {status}: {detail}).", status, retryable=True)
            return error, (0.0 if status in _RETRY_STATUSES else None)
        return BackendError(f"{where} rejected the request (HTTP {status}: {detail}).", status), None


def _json_or_text(response: httpx.Response) -> Any:
    try:
        return response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return response.text[:200]


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
