"""The repair turn: where nothing enforces the grammar, an answer that does not parse is sent back
once with the parser's error, and the user sees the error only if the repair fails too."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import pytest

from omost_engine.canvas_code import parse
from omost_engine.engine import Engine
from omost_engine.jobs import ComposeJob, ComposeResult, Finished, JobEvent, PartParsed, Repairing, TextDelta
from omost_engine.llm.base import ChatMessage, GenerationParams
from omost_engine.llm.openai_api import OpenAIBackend
from omost_engine.llm.repair import REPAIR_TEMPERATURE, repair_request
from omost_engine.llm.system_prompt import SYSTEM_PROMPT
from tests.fakes.fake_backends import FakeLLM, FakeRenderer, seed_answers
from tests.fakes.openai_server import FakeOpenAIServer

pytestmark = pytest.mark.timeout(60)

REQUEST = ChatMessage("user", "generate an image of the fierce battle of warriors and dinosaurs")
BROKEN = seed_answers()[0].replace("distance_to_viewer=5.0", "distance_to_viewer=-5.0", 1)


class EnforcingFakeLLM(FakeLLM):
    enforces_grammar = True


@pytest.fixture
async def engines() -> AsyncIterator[list[Engine]]:
    made: list[Engine] = []
    yield made
    for engine in made:
        await engine.stop(grace_s=2)


async def run(engines: list[Engine], llm: Any, **job: Any) -> list[JobEvent]:
    engine = Engine(llm, FakeRenderer())
    await engine.start()
    engines.append(engine)
    handle = engine.submit(ComposeJob(owner="alice", messages=(REQUEST,), **job))
    return [event async for event in handle.events()]


def answer_after_repair(events: list[JobEvent]) -> str:
    """What a consumer shows: the text after the last Repairing (a fresh answer starts there)."""
    start = max((i for i, e in enumerate(events) if isinstance(e, Repairing)), default=-1) + 1
    return "".join(e.text for e in events[start:] if isinstance(e, TextDelta))


async def test_a_bad_answer_is_repaired_once_with_the_line_numbered_error(engines: list[Engine]) -> None:
    llm = FakeLLM([BROKEN, seed_answers()[0]])
    events = await run(engines, llm, params=GenerationParams(temperature=0.6, seed=7))
    repairing = [e for e in events if isinstance(e, Repairing)]
    line = parse_error().line
    assert len(repairing) == 1 and repairing[0].error.startswith(f"line {line}: distance_to_viewer")
    final = events[-1]
    assert isinstance(final, Finished) and isinstance(final.result, ComposeResult)
    assert final.result.repaired and final.result.canvas == parse(seed_answers()[0])
    assert final.result.text == seed_answers()[0] == answer_after_repair(events)
    # the parts after Repairing belong to the new answer: a global and five regions again
    after = events[events.index(repairing[0]) :]
    assert sum(isinstance(e, PartParsed) for e in after) == 6
    # the repair request: the history, the bad answer, the error; lower temperature, same seed
    (first, _), (messages, params) = llm.calls
    assert messages[: len(first)] == first
    assert messages[-2] == ChatMessage("assistant", BROKEN)
    assert messages[-1].role == "user" and repairing[0].error in messages[-1].content
    assert f"Line {line} reads: canvas.add_local_description(" in messages[-1].content  # quoted
    assert params.temperature == REPAIR_TEMPERATURE and params.seed == 7
    assert final.result.stats.new_tokens == llm.pieces_sent[0] + llm.pieces_sent[1]


async def test_a_failed_repair_shows_the_error_once(engines: list[Engine]) -> None:
    llm = FakeLLM(["I would rather not draw that.", "Still no."])
    events = await run(engines, llm)
    final = events[-1]
    assert isinstance(final, Finished) and isinstance(final.result, ComposeResult)
    assert len(llm.calls) == 2 and final.result.repaired
    assert final.result.canvas is None and final.result.text == "Still no."
    assert final.result.parse_error is not None


async def test_no_repair_where_the_backend_enforces_the_grammar_or_it_parsed(engines: list[Engine]) -> None:
    enforced = EnforcingFakeLLM([BROKEN])
    events = await run(engines, enforced)
    assert len(enforced.calls) == 1 and not any(isinstance(e, Repairing) for e in events)
    fine = FakeLLM([seed_answers()[0]])
    events = await run(engines, fine)
    final = events[-1]
    assert len(fine.calls) == 1 and isinstance(final, Finished)
    assert isinstance(final.result, ComposeResult) and not final.result.repaired


def test_the_repair_leaves_the_system_prompt_alone() -> None:
    text = repair_request(BROKEN, parse_error())
    assert SYSTEM_PROMPT not in text and "whole canvas" in text


def parse_error() -> Any:
    from omost_engine.canvas import CanvasError

    try:
        parse(BROKEN)
    except CanvasError as e:
        return e
    raise AssertionError("BROKEN parsed")


async def test_a_generic_server_that_answers_garbage_then_a_canvas(engines: list[Engine]) -> None:
    replies = deque(["no canvas", seed_answers()[1]])
    with FakeOpenAIServer(dialect="generic", replies=replies) as server:
        backend = OpenAIBackend("omost-llama-3-8b", server.base_url, retries=0)
        events = await run(engines, backend)
        final = events[-1]
        assert isinstance(final, Finished) and isinstance(final.result, ComposeResult)
        assert final.result.repaired and final.result.canvas == parse(seed_answers()[1])
        assert len(server.requests) == 2 and not server.grammars
        repair = server.requests[1].body
        assert repair["messages"][0] == {"role": "system", "content": SYSTEM_PROMPT}
        assert repair["messages"][-2] == {"role": "assistant", "content": "no canvas"}
        assert repair["temperature"] == REPAIR_TEMPERATURE
        await asyncio.sleep(0)
        backend.close()
