"""The OpenAI-compatible backend's dialects: the grammar goes in each server's own field, "auto"
finds the server through the endpoints it really serves, an enforcing server's answers parse,
and a server that refuses the field is reported once while the bot carries on unconstrained."""

from __future__ import annotations

import logging
import threading

import pytest

from omost_engine.canvas_code import parse
from omost_engine.grammar import to_gbnf, to_regex
from omost_engine.llm.base import ChatMessage, GenerationParams
from omost_engine.llm.openai_api import OpenAIBackend
from tests.fakes.openai_server import FakeOpenAIServer

pytestmark = pytest.mark.timeout(120)

ASK = [ChatMessage("user", "a cat on a sofa")]
FIELD = {
    "vllm": ("structured_outputs", {"grammar": to_gbnf()}),
    "sglang": ("ebnf", to_gbnf()),
    "llama.cpp": ("grammar", to_gbnf()),
    "tgi": ("response_format", {"type": "regex", "value": to_regex()}),
}
GRAMMAR_KEYS = {"structured_outputs", "ebnf", "grammar", "response_format"}


def ask(backend: OpenAIBackend, seed: int = 1) -> tuple[str, list[str]]:
    generation = backend.generate(ASK, GenerationParams(seed=seed), threading.Event())
    return "".join(generation), generation.stats.notes


@pytest.mark.parametrize("dialect", ["vllm", "sglang", "llama.cpp", "tgi"])
@pytest.mark.parametrize("configured", ["auto", "named"])
def test_enforcing_servers_get_the_grammar_in_their_field_and_answer_canvases(
    dialect: str, configured: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="omost_engine.llm.openai_api")
    with FakeOpenAIServer(dialect=dialect, reply="not a canvas") as server:
        backend = OpenAIBackend(
            "omost-llama-3-8b", server.base_url, server="auto" if configured == "auto" else dialect  # type: ignore[arg-type]
        )
        for seed in (1, 2):
            text, _ = ask(backend, seed)
            assert parse(text).corrections == ()
        assert backend.server == dialect and backend.enforces_grammar
        key, value = FIELD[dialect]
        body = server.requests[0].body
        assert body[key] == value and not (GRAMMAR_KEYS - {key}) & set(body)
        assert len(server.grammars) == 2  # the fake read and sampled under the grammar each time
        if configured == "auto":
            assert f"is {dialect}" in caplog.text and "answered" in caplog.text
        backend.close()


@pytest.mark.parametrize("dialect", ["ollama", "generic"])
def test_servers_that_cannot_enforce_get_no_grammar(dialect: str) -> None:
    with FakeOpenAIServer(dialect=dialect) as server:
        backend = OpenAIBackend("omost-llama-3-8b", server.base_url)
        ask(backend)
        assert backend.server == dialect and not backend.enforces_grammar
        assert not GRAMMAR_KEYS & set(server.requests[0].body)
        backend.close()


def test_constrain_off_sends_no_grammar_and_does_not_probe() -> None:
    with FakeOpenAIServer(dialect="vllm") as server:
        backend = OpenAIBackend("omost-llama-3-8b", server.base_url, constrain="off")
        ask(backend)
        assert backend.server is None and not backend.enforces_grammar
        assert not GRAMMAR_KEYS & set(server.requests[0].body)
        backend.close()


def test_a_server_that_refuses_the_grammar_is_reported_once_and_the_bot_carries_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with FakeOpenAIServer(dialect="llama.cpp", reject_grammar=True, reply="plain answer") as server:
        backend = OpenAIBackend("omost-llama-3-8b", server.base_url, retries=0)
        text, notes = ask(backend)
        assert text == "plain answer" and not backend.enforces_grammar
        assert len(notes) == 1 and "refused the Canvas grammar (HTTP 400" in notes[0]
        text, notes = ask(backend)
        assert text == "plain answer" and notes == []
        # one refused request, then two without the field; one warning in the log
        assert ["grammar" in r.body for r in server.requests] == [True, False, False]
        assert caplog.text.count("refused the Canvas grammar") == 1
        backend.close()


def test_an_unknown_dialect_name_is_refused() -> None:
    with pytest.raises(ValueError, match="server must be one of"):
        OpenAIBackend("m", "http://127.0.0.1:1/v1", server="vllm2")  # type: ignore[arg-type]


def test_an_unreachable_server_is_probed_again_next_time() -> None:
    with FakeOpenAIServer(dialect="vllm") as server:
        url = server.base_url
    backend = OpenAIBackend("omost-llama-3-8b", url, retries=0)  # nothing listens there any more
    assert backend.detect_server() == "generic" and backend.server is None
    assert not backend.enforces_grammar
    backend.close()
