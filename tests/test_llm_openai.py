"""The OpenAI-compatible backend against a fake vLLM-style server on loopback."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from omost_engine.errors import BackendError, Interrupted
from omost_engine.llm.base import ChatMessage, GenerationParams
from omost_engine.llm.openai_api import OpenAIBackend
from omost_engine.llm.system_prompt import SYSTEM_PROMPT
from tests.fakes.openai_server import FakeOpenAIServer
from tests.seed import seed_answers

MODEL = "omost-llama-3-8b"
ASK = [ChatMessage("user", "a cat on a sofa")]
PARAMS = GenerationParams(temperature=0.6, top_p=0.9, max_new_tokens=4096, seed=12345)


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(models=(MODEL,), reply=seed_answers()[0]) as fake:
        yield fake


def backend(server: FakeOpenAIServer, **kwargs: object) -> OpenAIBackend:
    options: dict[str, object] = {"retry_backoff": 0.01, "timeout": 5.0}
    options.update(kwargs)
    return OpenAIBackend(MODEL, server.base_url, **options)  # type: ignore[arg-type]


def answer(b: OpenAIBackend, params: GenerationParams = PARAMS) -> tuple[str, list[str], object]:
    generation = b.generate(ASK, params, threading.Event())
    pieces = list(generation)
    return generation.text, pieces, generation.stats


def test_streams_the_whole_answer_piece_by_piece(server: FakeOpenAIServer) -> None:
    text, pieces, stats = answer(backend(server))
    assert text == server.reply
    assert len(pieces) == len(server.pieces())
    assert stats.new_tokens == len(pieces)  # type: ignore[attr-defined]
    assert stats.prompt_tokens == 42  # from the usage chunk  # type: ignore[attr-defined]
    assert stats.tokens_per_second > 0  # type: ignore[attr-defined]


def test_request_carries_model_system_prompt_and_sampling_settings(server: FakeOpenAIServer) -> None:
    answer(backend(server))
    (request,) = server.requests
    assert request.path == "/v1/chat/completions"
    body = request.body
    assert body["model"] == MODEL and body["stream"] is True
    assert body["messages"][0] == {"role": "system", "content": SYSTEM_PROMPT}
    assert body["messages"][1] == {"role": "user", "content": ASK[0].content}
    assert (body["temperature"], body["top_p"], body["max_tokens"], body["seed"]) == (0.6, 0.9, 4096, 12345)


def test_temperature_zero_is_sent_as_greedy(server: FakeOpenAIServer) -> None:
    answer(backend(server), GenerationParams(temperature=0, max_new_tokens=10))
    body = server.requests[0].body
    assert body["temperature"] == 0 and body["top_p"] == 1.0 and "seed" not in body


def test_answer_cut_at_max_tokens_is_reported(server: FakeOpenAIServer) -> None:
    text, _, stats = answer(backend(server), GenerationParams(max_new_tokens=5))
    assert text == "".join(server.pieces()[:5])
    assert any("5-token limit" in n for n in stats.notes)  # type: ignore[attr-defined]


def test_api_key_comes_from_the_named_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMOST_TEST_LLM_KEY", "sk-secret")
    with FakeOpenAIServer(models=(MODEL,), api_key="sk-secret") as fake:
        text, _, _ = answer(backend(fake, api_key_env="OMOST_TEST_LLM_KEY"))
        assert text == fake.reply
        assert fake.requests[0].headers["Authorization"] == "Bearer sk-secret"


def test_unset_key_variable_is_named(monkeypatch: pytest.MonkeyPatch, server: FakeOpenAIServer) -> None:
    monkeypatch.delenv("OMOST_TEST_LLM_KEY", raising=False)
    with pytest.raises(BackendError, match="OMOST_TEST_LLM_KEY"):
        backend(server, api_key_env="OMOST_TEST_LLM_KEY")


def test_401_names_the_key_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMOST_TEST_LLM_KEY", "sk-wrong")
    with FakeOpenAIServer(models=(MODEL,), api_key="sk-right") as fake:
        with pytest.raises(BackendError) as info:
            answer(backend(fake, api_key_env="OMOST_TEST_LLM_KEY"))
        assert info.value.status == 401
        assert "refused the bot's API key" in str(info.value) and "OMOST_TEST_LLM_KEY" not in str(info.value)
        assert "OMOST_TEST_LLM_KEY" in info.value.detail and "sk-wrong" not in info.value.detail
        assert len(fake.requests) == 1  # never retried


def test_404_says_the_server_does_not_know_the_model(server: FakeOpenAIServer) -> None:
    b = OpenAIBackend("no-such-model", server.base_url, retry_backoff=0.01)
    with pytest.raises(BackendError) as info:
        answer(b)
    assert info.value.status == 404 and not info.value.retryable
    assert "does not know the model the bot is set up to use" in str(info.value)
    assert "'no-such-model'" in info.value.detail
    assert "does not exist" in info.value.detail  # the server's own words go to the log only
    assert "does not exist" not in str(info.value) and server.base_url not in str(info.value)


def test_429_with_a_short_retry_after_is_retried(server: FakeOpenAIServer) -> None:
    server.retry_after = "0.2"
    server.faults.extend(["429"])
    started = time.perf_counter()
    text, _, _ = answer(backend(server))
    assert text == server.reply
    assert time.perf_counter() - started >= 0.2
    assert len(server.requests) == 2


def test_429_with_a_long_retry_after_is_a_clear_error(server: FakeOpenAIServer) -> None:
    server.retry_after = "30"
    server.faults.extend(["429"])
    with pytest.raises(BackendError) as info:
        answer(backend(server))
    assert info.value.status == 429 and info.value.retryable
    assert "rate-limiting" in str(info.value) and "30 s" in str(info.value)
    assert len(server.requests) == 1


def test_500_is_retried_then_reported(server: FakeOpenAIServer) -> None:
    server.faults.extend(["500", "503", "500"])
    with pytest.raises(BackendError) as info:
        answer(backend(server, retries=2))
    assert info.value.status == 500
    assert "failed (HTTP 500)" in str(info.value) and "CUDA error" not in str(info.value)
    assert "CUDA error" in info.value.detail
    assert len(server.requests) == 3


def test_one_server_error_then_success(server: FakeOpenAIServer) -> None:
    server.faults.extend(["503"])
    assert answer(backend(server))[0] == server.reply


def test_connection_reset_before_any_text_is_retried(server: FakeOpenAIServer) -> None:
    server.faults.extend(["reset", "reset"])
    assert answer(backend(server, retries=2))[0] == server.reply
    assert len(server.requests) == 3


def test_refused_connection_is_a_clear_error_after_retries() -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    b = OpenAIBackend(MODEL, f"http://127.0.0.1:{port}/v1", retries=2, retry_backoff=0.01)
    with pytest.raises(BackendError, match="cannot be reached right now") as info:
        answer(b)
    assert "127.0.0.1" not in str(info.value) and f"http://127.0.0.1:{port}" in info.value.detail


@pytest.mark.parametrize("fault", ["drop", "drop_clean"])
def test_stream_dropped_midway_is_an_error_not_a_short_answer(server: FakeOpenAIServer, fault: str) -> None:
    server.faults.extend([fault])
    generation = backend(server).generate(ASK, PARAMS, threading.Event())
    with pytest.raises(BackendError, match=r"closed the stream before the answer was complete") as info:
        list(generation)
    assert "closed the stream after" in info.value.detail
    assert 0 < len(generation.text) < len(server.reply)
    assert len(server.requests) == 1  # text had arrived: not silently retried


def test_error_event_mid_stream_is_reported(server: FakeOpenAIServer) -> None:
    server.faults.extend(["error_event"])
    with pytest.raises(BackendError, match="failed in the middle of the answer") as info:
        answer(backend(server))
    assert "failed mid-answer: The engine died" in info.value.detail


def test_slow_server_hits_the_read_timeout(server: FakeOpenAIServer) -> None:
    server.faults.extend(["slow"])
    server.slow_seconds = 0.5
    with pytest.raises(BackendError, match=r"did not answer within 0\.2 s"):
        answer(backend(server, idle_timeout_s=0.2))


def test_cancel_mid_stream_stops_at_the_next_piece(server: FakeOpenAIServer) -> None:
    server.faults.extend(["slow"])
    server.slow_seconds = 0.02
    cancel = threading.Event()
    generation = backend(server).generate(ASK, PARAMS, cancel)
    seen = 0
    with pytest.raises(Interrupted):
        for _ in generation:
            seen += 1
            if seen == 3:
                cancel.set()
    assert seen == 3


def test_remote_backend_holds_no_gpu(server: FakeOpenAIServer) -> None:
    b = backend(server)
    assert b.remote is True
    b.unload()
    b.load()
    assert answer(b)[0] == server.reply
    b.close()


def test_factory_builds_each_kind_and_rejects_nonsense(server: FakeOpenAIServer, tmp_path: object) -> None:
    from omost_engine.llm import create_backend
    from omost_engine.llm.local import LocalBackend

    remote = create_backend("openai", MODEL, base_url=server.base_url)
    assert isinstance(remote, OpenAIBackend) and remote.remote
    assert answer(remote)[0] == server.reply  # type: ignore[arg-type]
    local = create_backend("local", "some/model", quantize="4bit", device="cpu")
    assert isinstance(local, LocalBackend) and not local.remote and not local.loaded
    assert local.quantize == "4bit"
    with pytest.raises(ValueError, match="needs base_url"):
        create_backend("openai", MODEL)
    with pytest.raises(ValueError, match="server quantises its own model"):
        create_backend("openai", MODEL, base_url=server.base_url, quantize="8bit")
    with pytest.raises(ValueError, match="unknown language-model backend 'gpt'"):
        create_backend("gpt", MODEL)  # type: ignore[arg-type]
