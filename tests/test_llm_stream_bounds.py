"""The OpenAI-compatible backend against hostile servers: a trickle with no newline, a stall after
one token, keep-alive comments forever, a runaway answer, a 401 echoing the key. Each is ended
within its bound (cancel, idle, total, size), the lane serves the next user, and no message a
user sees carries the key, the server's address or its body."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from omost_engine.canvas_code import MAX_INPUT_CHARS
from omost_engine.engine import Engine
from omost_engine.errors import BackendError, Interrupted
from omost_engine.jobs import ComposeJob, Failed, Finished, Started
from omost_engine.llm.base import ChatMessage, GenerationParams
from omost_engine.llm.openai_api import OpenAIBackend
from tests.fakes.fake_backends import FakeRenderer
from tests.fakes.openai_server import FakeOpenAIServer
from tests.seed import seed_answers

pytestmark = pytest.mark.timeout(60)

MODEL = "omost-llama-3-8b"
ASK = [ChatMessage("user", "a cat on a sofa")]
PARAMS = GenerationParams(max_new_tokens=4096)
KEY = "sk-test-0123456789abcdefghijklmnop"


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(models=(MODEL,), reply=seed_answers()[0], trickle_seconds=0.2) as fake:
        yield fake


def backend(server: FakeOpenAIServer, **options: float) -> OpenAIBackend:
    settings: dict[str, float] = {"idle_timeout_s": 30.0, "total_timeout_s": 60.0, "retry_backoff": 0.01}
    settings.update(options)
    return OpenAIBackend(MODEL, server.base_url, **settings)  # type: ignore[arg-type]


def read_until_cancelled(b: OpenAIBackend, cancel_after_s: float) -> tuple[float, int]:
    """Stream, set the cancel event after `cancel_after_s`; return (seconds from cancel to stop, pieces)."""
    cancel = threading.Event()
    cancelled_at: list[float] = []

    def cancel_later() -> None:
        time.sleep(cancel_after_s)
        cancelled_at.append(time.perf_counter())
        cancel.set()

    threading.Thread(target=cancel_later, daemon=True).start()
    pieces = 0
    with pytest.raises(Interrupted):
        for _ in b.generate(ASK, PARAMS, cancel):
            pieces += 1
    return time.perf_counter() - cancelled_at[0], pieces


@pytest.mark.parametrize("fault", ["trickle", "stall", "keepalive"])
def test_cancel_is_honoured_at_once_whatever_the_server_does(server: FakeOpenAIServer, fault: str) -> None:
    server.faults.append(fault)
    took, pieces = read_until_cancelled(backend(server), cancel_after_s=0.5)
    assert pieces == 1  # the one real token came through
    # A poll slice is 50 ms; the margin is for a loaded 2-core machine (the idle bound is 30 s).
    assert took < 0.5, f"cancel took {took:.2f} s"


@pytest.mark.parametrize("fault", ["trickle", "stall"])
def test_a_server_that_stops_completing_lines_hits_the_idle_bound(
    server: FakeOpenAIServer, fault: str
) -> None:
    server.faults.append(fault)
    began = time.perf_counter()
    generation = backend(server, idle_timeout_s=0.6).generate(ASK, PARAMS, threading.Event())
    with pytest.raises(BackendError) as info:
        list(generation)
    assert 0.55 < time.perf_counter() - began < 2.0  # the bound, plus slack for a loaded machine
    assert str(info.value) == (
        "The language model server stopped sending for more than 0.6 s in the middle of the answer, "
        "so it was stopped. Try again in a minute."
    )
    assert generation.text == server.pieces()[0]


def test_endless_keep_alives_hit_the_total_bound(server: FakeOpenAIServer) -> None:
    # Comment lines are progress (a busy server may send them), so only the total time ends this.
    server.faults.append("keepalive")
    began = time.perf_counter()
    with pytest.raises(BackendError, match="took longer than the 1-second limit"):
        list(
            backend(server, idle_timeout_s=0.5, total_timeout_s=1.0).generate(ASK, PARAMS, threading.Event())
        )
    assert 0.95 < time.perf_counter() - began < 2.5


def test_a_runaway_answer_stops_at_the_parsers_limit(server: FakeOpenAIServer) -> None:
    server.faults.append("runaway")
    server.piece_chars = 100
    began = time.perf_counter()
    generation = backend(server).generate(ASK, PARAMS, threading.Event())
    with pytest.raises(BackendError, match="ran past the longest canvas the bot reads") as info:
        for _ in generation:
            pass
    took = time.perf_counter() - began
    assert MAX_INPUT_CHARS - 100 <= len(generation.text) <= MAX_INPUT_CHARS
    assert took < 5.0  # stopped at the limit, not read for minutes
    # The server was hung up on: it stops sending (what it wrote before sat in socket buffers).
    time.sleep(0.2)
    sent = server.sent_chars
    time.sleep(0.3)
    assert server.sent_chars == sent < 20 * MAX_INPUT_CHARS
    assert "200,000 characters" in info.value.detail


def test_a_401_echoing_the_key_never_shows_it(
    server: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("OMOST_TEST_LLM_KEY", KEY)
    server.faults.append("401_echo")
    b = OpenAIBackend(MODEL, server.base_url, api_key_env="OMOST_TEST_LLM_KEY")
    with caplog.at_level(logging.DEBUG), pytest.raises(BackendError) as info:
        list(b.generate(ASK, PARAMS, threading.Event()))
    assert server.requests[0].headers["Authorization"] == f"Bearer {KEY}"  # the key was sent...
    message = str(info.value)
    assert message == (
        "The language model server refused the bot's API key, so nothing could be written. "
        "The operator needs to check the key."
    )
    assert KEY not in info.value.detail and "Invalid credentials" in info.value.detail
    assert "[redacted]" in info.value.detail
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "Invalid credentials" in logged and KEY not in logged  # ...and never written anywhere


@pytest.mark.parametrize(
    ("event", "what"),
    [
        ("[1, 2]", "not a JSON object"),
        ('{"choices": {"delta": "x"}}', "not a list"),
        ('{"choices": [{"delta": {"content": 42}}]}', "wrong shape"),
        ('{"choices": ["text"]}', "not an object"),
        ("{not json", "not JSON"),
    ],
)
def test_odd_json_is_blamed_on_the_server_not_the_bot(
    server: FakeOpenAIServer, event: str, what: str
) -> None:
    server.faults.append("odd_event")
    server.odd_event = event
    with pytest.raises(BackendError) as info:
        list(backend(server).generate(ASK, PARAMS, threading.Event()))
    assert str(info.value).startswith(
        "The language model server sent something that is not a chat completion"
    )
    assert what in info.value.detail


# --- the remote lane of a real engine ---------------------------------------------------------


@pytest.fixture
async def engine_on(server: FakeOpenAIServer) -> AsyncIterator[Engine]:
    engine = Engine(backend(server, idle_timeout_s=1.0), FakeRenderer(), cancel_grace_s=5.0)
    await engine.start()
    yield engine
    await engine.stop()


async def started_at(handle: object) -> float:
    async for event in handle.events():  # type: ignore[attr-defined]
        if isinstance(event, Started):
            return time.perf_counter()
    raise AssertionError("never started")


@pytest.mark.parametrize("how", ["idle bound", "owner cancels"])
async def test_another_users_request_starts_soon_while_a_server_trickles(
    server: FakeOpenAIServer, engine_on: Engine, how: str
) -> None:
    server.faults.append("trickle")  # the first request only; the second gets a healthy answer
    hostile = engine_on.submit(ComposeJob(owner="mallory", messages=tuple(ASK)))
    await started_at(hostile)
    await asyncio.sleep(0.3)  # the trickle is under way
    submitted = time.perf_counter()
    other = engine_on.submit(ComposeJob(owner="alice", messages=tuple(ASK)))
    if how == "owner cancels":
        hostile.cancel()
    began = await asyncio.wait_for(started_at(other), 5)
    bound = 0.5 if how == "owner cancels" else 1.5  # the idle bound is 1 s; the rest is slack
    assert began - submitted < bound, f"alice waited {began - submitted:.2f} s"
    outcome = await asyncio.wait_for(other.wait(), 10)
    assert isinstance(outcome, Finished) and outcome.result.text == server.reply
    first = await hostile.wait()
    if how == "idle bound":
        assert isinstance(first, Failed) and "stopped sending" in first.message
