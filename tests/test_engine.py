"""The job engine with fake backends: streaming, fairness, caps, cancellation, timeouts, OOM,
model swapping, lane overlap and ETAs, as a caller (the bot) sees them through events."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
import types
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from omost_engine import errors
from omost_engine.canvas import Canvas
from omost_engine.canvas_code import GlobalParsed, parse, to_answer
from omost_engine.canvas_code import RegionParsed as CodeRegionParsed
from omost_engine.engine import Engine, EngineClosed, QueueFull, RatePriors, free_memory
from omost_engine.jobs import (
    Cancelled,
    ComposeJob,
    ComposeResult,
    Failed,
    FailureKind,
    Finished,
    JobEvent,
    JobStatus,
    PartParsed,
    Queued,
    RenderJob,
    Started,
    Step,
    TextDelta,
)
from omost_engine.llm.base import ChatMessage, LLMBackend
from omost_engine.render.base import Renderer, RenderParams, RenderResult, StepCallback
from tests.fakes.fake_backends import FakeLLM, FakeRenderer, seed_answers, seed_conversation

pytestmark = pytest.mark.timeout(30)

FIRST_REQUEST = seed_conversation()[0]
SMALL = RenderParams(width=128, height=128, steps=5)

MakeEngine = Callable[..., Awaitable[Engine]]


@pytest.fixture
async def make_engine() -> AsyncIterator[MakeEngine]:
    engines: list[Engine] = []

    async def make(llm: Any = None, renderer: Any = None, **options: Any) -> Engine:
        engine = Engine(llm or FakeLLM(), renderer or FakeRenderer(), **options)
        await engine.start()
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        await engine.stop(grace_s=2)


def compose(owner: str = "alice", **fields: Any) -> ComposeJob:
    return ComposeJob(owner=owner, messages=(FIRST_REQUEST,), **fields)


def seed_canvas() -> Canvas:
    return parse(seed_answers()[0])


def render(owner: str = "alice", params: RenderParams = SMALL, **fields: Any) -> RenderJob:
    return RenderJob(owner=owner, canvas=seed_canvas(), params=params, **fields)


def small_answer() -> str:
    """A canvas with one region: about 200 pieces instead of the seed's 2,000."""
    canvas = seed_canvas()
    return to_answer(Canvas(canvas.global_description, canvas.regions[:1]))


async def collect(handle: Any) -> list[JobEvent]:
    return [event async for event in handle.events()]


def kinds(events: list[JobEvent]) -> list[str]:
    return [type(e).__name__ for e in events]


# --- compose --------------------------------------------------------------------------------------


async def test_compose_streams_the_answer_then_regions_then_the_canvas(make_engine: MakeEngine) -> None:
    llm = FakeLLM([seed_answers()[0]])
    engine = await make_engine(llm)
    answer = seed_answers()[0]
    events = await collect(engine.submit(compose()))

    assert isinstance(events[0], Started)
    assert isinstance(events[-1], Finished)
    assert sum(isinstance(e, Finished | Failed | Cancelled) for e in events) == 1
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == answer

    parts = [e.part for e in events if isinstance(e, PartParsed)]
    expected = parse(answer)
    assert isinstance(parts[0], GlobalParsed)
    assert parts[0].global_description == expected.global_description
    assert [p.region for p in parts[1:] if isinstance(p, CodeRegionParsed)] == list(expected.regions)

    result = events[-1].result
    assert isinstance(result, ComposeResult)
    assert result.text == answer and result.canvas == expected and result.parse_error is None
    assert result.stats.new_tokens == llm.pieces_sent[0] > 1000


async def test_each_region_arrives_right_after_its_code_is_written(make_engine: MakeEngine) -> None:
    answer = seed_answers()[1]
    engine = await make_engine(FakeLLM([answer]))
    events = await collect(engine.submit(compose()))
    written = ""
    seen_at: list[int] = []
    for event in events:
        if isinstance(event, TextDelta):
            written += event.text
        elif isinstance(event, PartParsed):
            seen_at.append(len(written))
            # the call that just completed is in the text so far, and at most a line later
            line = event.part.line
            assert written.count("\n") + 1 >= line
            assert written.count("\n") <= _call_end_line(answer, line) + 1
    assert len(seen_at) == 1 + len(parse(answer).regions)
    assert seen_at == sorted(seen_at) and seen_at[-1] < len(answer)  # before the stream ended


def _call_end_line(answer: str, first_line: int) -> int:
    """The 1-based line holding the `)` that closes the call starting on `first_line`."""
    lines = answer.split("\n")
    for number in range(first_line, len(lines) + 1):
        if lines[number - 1].startswith(")"):
            return number
    raise AssertionError("no closing parenthesis")


async def test_regions_reach_the_caller_while_the_model_is_still_writing(make_engine: MakeEngine) -> None:
    llm = FakeLLM([small_answer()], token_delay_s=0.002)
    engine = await make_engine(llm)
    pieces_when_first_region_seen: int | None = None
    deltas = 0
    async for event in engine.submit(compose()).events():
        deltas += isinstance(event, TextDelta)
        if isinstance(event, PartParsed) and pieces_when_first_region_seen is None:
            pieces_when_first_region_seen = llm.pieces_sent[0]
    assert pieces_when_first_region_seen is not None
    # Pieces that arrive faster than the loop collects them (every 2 ms) come joined; at this pace
    # most arrive one by one.
    assert deltas > llm.pieces_sent[0] // 4
    assert pieces_when_first_region_seen < llm.pieces_sent[0]


@pytest.mark.parametrize(
    ("answer", "line", "says"),
    [
        (
            "```python\ncanvas = Canvas()\ncanvas.add_local_description(location='on the left')\n```",
            2,  # the line within the code block
            "is missing 'offset'",
        ),
        ("I would rather not draw that.", None, "no ```python code block"),
    ],
)
async def test_an_answer_that_does_not_parse_finishes_with_the_error(
    make_engine: MakeEngine, answer: str, line: int | None, says: str
) -> None:
    engine = await make_engine(FakeLLM([answer]))
    events = await collect(engine.submit(compose()))
    final = events[-1]
    assert isinstance(final, Finished) and isinstance(final.result, ComposeResult)
    assert final.result.canvas is None and final.result.text == answer
    error = final.result.parse_error
    assert error is not None and error.line == line and says in str(error)


# --- render ---------------------------------------------------------------------------------------


async def test_render_reports_every_step_then_the_image(make_engine: MakeEngine) -> None:
    engine = await make_engine(renderer=FakeRenderer(previews=True))
    params = RenderParams(width=128, height=192, steps=4, hires_scale=1.5, hires_steps=2, seed=7)
    events = await collect(engine.submit(render(params=params)))
    assert kinds(events) == ["Started"] + ["Step"] * 6 + ["Finished"]
    steps = [(e.index, e.total, e.phase) for e in events if isinstance(e, Step)]
    assert steps == [
        (1, 4, "base"),
        (2, 4, "base"),
        (3, 4, "base"),
        (4, 4, "base"),
        (1, 2, "hires"),
        (2, 2, "hires"),
    ]
    assert all(e.preview is not None for e in events if isinstance(e, Step))
    result = events[-1].result  # type: ignore[union-attr]
    assert isinstance(result, RenderResult) and result.image.size == (16, 24) and result.params == params


async def test_no_model_call_runs_on_the_event_loop_thread(make_engine: MakeEngine) -> None:
    threads: list[int] = []

    class WatchedRenderer(FakeRenderer):
        def render(self, canvas: Canvas, params: RenderParams, **kw: Any) -> RenderResult:
            threads.append(threading.get_ident())
            return super().render(canvas, params, **kw)

    engine = await make_engine(renderer=WatchedRenderer())
    await engine.submit(render()).wait()
    assert threads and threading.get_ident() not in threads


# --- fairness and caps ----------------------------------------------------------------------------


async def test_a_busy_user_delays_another_users_single_job_by_at_most_one_job(
    make_engine: MakeEngine,
) -> None:
    renderer = FakeRenderer(step_delay_s=0.005)
    engine = await make_engine(renderer=renderer)
    alice = [
        engine.submit(render("alice", RenderParams(width=64, height=64, steps=2, seed=i))) for i in range(10)
    ]
    bob = engine.submit(render("bob", RenderParams(width=64, height=64, steps=2, seed=100)))
    assert bob.position == 1  # next, although alice has nine jobs waiting
    await asyncio.gather(*(h.wait() for h in [*alice, bob]))
    started = [params.seed for _, params in renderer.calls]
    assert started.index(100) <= 1
    assert [s for s in started if s != 100] == list(range(10))  # alice's own jobs stay in order


async def test_owners_are_served_round_robin(make_engine: MakeEngine) -> None:
    renderer = FakeRenderer(step_delay_s=0.003)
    engine = await make_engine(renderer=renderer)
    handles = []
    for owner, count, base in (("a", 4, 0), ("b", 4, 10), ("c", 1, 20)):
        for i in range(count):
            handles.append(
                engine.submit(render(owner, RenderParams(width=64, height=64, steps=1, seed=base + i)))
            )
    await asyncio.gather(*(h.wait() for h in handles))
    assert [p.seed for _, p in renderer.calls] == [0, 10, 20, 1, 11, 2, 12, 3, 13]


async def test_the_total_cap_refuses_with_a_message_naming_it(make_engine: MakeEngine) -> None:
    engine = await make_engine(renderer=FakeRenderer(step_delay_s=0.02), max_total=3)
    first = engine.submit(render("alice"))
    engine.submit(render("alice"))
    engine.submit(render("bob"))
    with pytest.raises(QueueFull) as total:
        engine.submit(render("carol"))
    assert isinstance(total.value, errors.EngineError)
    assert "The bot is busy" in str(total.value) and "(3)" in str(total.value)
    assert engine.in_flight() == 3 and engine.in_flight("alice") == 2

    await first.wait()
    await engine.submit(render("alice")).wait()  # a finished job frees its place


# --- cancellation, timeouts ----------------------------------------------------------------------


async def test_cancelling_a_queued_job_removes_it_at_once(make_engine: MakeEngine) -> None:
    renderer = FakeRenderer(step_delay_s=0.02)
    engine = await make_engine(renderer=renderer)
    running = engine.submit(render(params=RenderParams(width=64, height=64, steps=3, seed=1)))
    doomed = engine.submit(render(params=RenderParams(width=64, height=64, steps=3, seed=2)))
    last = engine.submit(render(params=RenderParams(width=64, height=64, steps=3, seed=3)))
    assert (doomed.position, last.position) == (1, 2)

    assert doomed.cancel("changed my mind") is True
    assert doomed.terminal == Cancelled("changed my mind") and doomed.status is JobStatus.CANCELLED
    assert last.position == 1
    assert doomed.cancel() is False  # already over
    await asyncio.gather(running.wait(), last.wait())
    assert [p.seed for _, p in renderer.calls] == [1, 3]
    assert [e.position for e in await collect(last) if isinstance(e, Queued)] == [2, 1]
    assert kinds(await collect(doomed)) == ["Queued", "Cancelled"]


async def test_cancelling_a_running_compose_stops_the_model(make_engine: MakeEngine) -> None:
    llm = FakeLLM(token_delay_s=0.005)
    engine = await make_engine(llm)
    handle = engine.submit(compose(tag="turn-1"))
    engine.submit(compose("bob", tag="turn-2"))
    async for event in handle.events():
        if isinstance(event, TextDelta):
            assert engine.cancel_tagged("turn-1", "stopped by alice") == 1
            break
    assert await handle.wait() == Cancelled("stopped by alice")
    assert llm.pieces_sent[0] < len(seed_answers()[0]) // 20

    llm.token_delay_s = 0.0
    assert isinstance(await engine.submit(compose()).wait(), Finished)  # the lane keeps serving


async def test_cancelling_a_running_render_stops_between_steps(make_engine: MakeEngine) -> None:
    renderer = FakeRenderer(step_delay_s=0.01)
    engine = await make_engine(renderer=renderer)
    handle = engine.submit(render(params=RenderParams(width=64, height=64, steps=50)))
    async for event in handle.events():
        if isinstance(event, Step) and event.index == 2:
            handle.cancel()
    assert isinstance(handle.terminal, Cancelled)
    assert renderer.steps_run[0] < 10


async def test_a_job_over_its_time_limit_fails_with_a_timeout(make_engine: MakeEngine) -> None:
    llm = FakeLLM(token_delay_s=0.01)
    engine = await make_engine(llm)
    began = time.monotonic()
    final = await engine.submit(compose(timeout_s=0.2)).wait()
    assert isinstance(final, Failed) and final.kind is FailureKind.TIMEOUT
    assert "0.2-second limit" in final.message and "Writing the canvas" in final.message
    assert time.monotonic() - began < 2.0
    llm.token_delay_s = 0.0
    assert isinstance(await engine.submit(compose()).wait(), Finished)


async def test_the_time_limit_counts_from_the_start_not_the_queue(make_engine: MakeEngine) -> None:
    engine = await make_engine(renderer=FakeRenderer(step_delay_s=0.05), job_timeout_s=0.2)
    slow = engine.submit(render(params=RenderParams(width=64, height=64, steps=8)))  # 0.4 s > 0.2 s
    quick = engine.submit(render(params=RenderParams(width=64, height=64, steps=1)))  # waits 0.2 s+
    final = await slow.wait()
    assert isinstance(final, Failed) and final.kind is FailureKind.TIMEOUT and "Drawing" in final.message
    assert isinstance(await quick.wait(), Finished)


async def test_a_backend_that_ignores_cancel_still_ends_the_job_for_the_user(make_engine: MakeEngine) -> None:
    class StubbornRenderer(FakeRenderer):
        def render(
            self,
            canvas: Canvas,
            params: RenderParams,
            *,
            on_step: StepCallback | None = None,
            cancel: threading.Event | None = None,
        ) -> RenderResult:
            time.sleep(0.6)  # never looks at cancel
            return super().render(canvas, params)

    engine = await make_engine(renderer=StubbornRenderer(), cancel_grace_s=0.1)
    handle = engine.submit(render())
    await asyncio.sleep(0.05)
    began = time.monotonic()
    handle.cancel("stop")
    assert await handle.wait() == Cancelled("stop")
    assert time.monotonic() - began < 0.45
    assert isinstance(await engine.submit(render()).wait(), Finished)  # once the call returns


async def test_stop_cancels_queued_and_running_jobs(make_engine: MakeEngine) -> None:
    engine = await make_engine(renderer=FakeRenderer(step_delay_s=0.02))
    handles = [engine.submit(render(params=RenderParams(width=64, height=64, steps=50))) for _ in range(3)]
    await asyncio.sleep(0.05)
    await engine.stop()
    for handle in handles:
        final = handle.terminal
        assert isinstance(final, Cancelled) and "shutting down" in final.reason
    with pytest.raises(EngineClosed):
        engine.submit(render())


# --- errors and out of memory ---------------------------------------------------------------------


async def test_out_of_memory_once_is_retried_in_lower_memory(make_engine: MakeEngine) -> None:
    renderer = FakeRenderer(oom_times=1)
    engine = await make_engine(renderer=renderer)
    events = await collect(engine.submit(render()))
    assert [e for e in events if isinstance(e, Started)] == [Started(1), Started(2)]
    assert isinstance(events[-1], Finished)
    assert renderer.lower_memory_calls == 1 and renderer.low_memory and len(renderer.calls) == 2


async def test_out_of_memory_twice_fails_that_job_only(make_engine: MakeEngine) -> None:
    renderer = FakeRenderer(oom_times=2)
    engine = await make_engine(renderer=renderer)
    unlucky = engine.submit(render("alice"))
    next_one = engine.submit(render("bob"))
    final = await unlucky.wait()
    assert isinstance(final, Failed) and final.kind is FailureKind.OUT_OF_MEMORY
    assert "ran out of GPU memory" in final.message
    assert isinstance(await next_one.wait(), Finished)


async def test_out_of_memory_without_a_lower_mode_fails_without_retrying(make_engine: MakeEngine) -> None:
    renderer = FakeRenderer(oom_times=1, can_lower=False)
    engine = await make_engine(renderer=renderer)
    final = await engine.submit(render()).wait()
    assert isinstance(final, Failed) and final.kind is FailureKind.OUT_OF_MEMORY
    assert len(renderer.calls) == 1 and renderer.lower_memory_calls == 1


async def test_torch_style_out_of_memory_is_recognised_by_name(make_engine: MakeEngine) -> None:
    class OutOfMemoryError(RuntimeError):  # what torch.cuda raises, without importing torch
        pass

    class FlakyRenderer(FakeRenderer):
        failures = 1

        def render(self, canvas: Canvas, params: RenderParams, **kw: Any) -> RenderResult:
            if self.failures:
                self.failures -= 1
                raise OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return super().render(canvas, params, **kw)

    renderer = FlakyRenderer()
    engine = await make_engine(renderer=renderer)
    assert isinstance(await engine.submit(render()).wait(), Finished)
    assert renderer.low_memory

    renderer.failures = 2
    final = await engine.submit(render()).wait()  # no lower mode left: fails, in chat words
    assert isinstance(final, Failed) and final.kind is FailureKind.OUT_OF_MEMORY
    assert "ran out of memory" in final.message and "Tried to allocate" not in final.message


async def test_a_compose_retried_after_out_of_memory_streams_again_from_the_start(
    make_engine: MakeEngine,
) -> None:
    engine = await make_engine(FakeLLM([seed_answers()[0]], oom_times=1))
    events = await collect(engine.submit(compose()))
    restart = events.index(Started(2))
    text = "".join(e.text for e in events[restart:] if isinstance(e, TextDelta))
    assert text == seed_answers()[0] and isinstance(events[-1], Finished)


def test_free_memory_empties_the_cuda_cache_only_when_torch_is_loaded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    emptied: list[bool] = []
    fake_torch = types.SimpleNamespace(
        cuda=types.SimpleNamespace(is_available=lambda: True, empty_cache=lambda: emptied.append(True))
    )
    monkeypatch.setitem(sys.modules, "torch", fake_torch)
    free_memory()
    assert emptied == [True]
    monkeypatch.delitem(sys.modules, "torch")
    free_memory()
    assert "torch" not in sys.modules and emptied == [True]


@pytest.mark.parametrize(
    ("error", "kind", "shown"),
    [
        (
            errors.BackendError("The LLM server answered 502 Bad Gateway."),
            FailureKind.BACKEND,
            "502 Bad Gateway",
        ),
        (
            errors.ModelNotAvailable("m", "The model m is not downloaded."),
            FailureKind.MODEL_NOT_AVAILABLE,
            "not downloaded",
        ),
        (KeyError("internal detail"), FailureKind.INTERNAL, "went wrong inside the bot"),
    ],
)
async def test_errors_fail_the_job_with_a_message_for_the_chat(
    make_engine: MakeEngine, error: Exception, kind: FailureKind, shown: str
) -> None:
    llm = FakeLLM(error=error)
    engine = await make_engine(llm)
    final = await engine.submit(compose()).wait()
    assert isinstance(final, Failed) and final.kind is kind and shown in final.message
    assert "internal detail" not in final.message
    llm.error = None
    assert isinstance(await engine.submit(compose()).wait(), Finished)


# --- model swapping and lanes ---------------------------------------------------------------------


async def test_swap_models_unloads_the_idle_model_before_each_change_of_kind(make_engine: MakeEngine) -> None:
    log: list[str] = []
    engine = await make_engine(FakeLLM([small_answer()], log=log), FakeRenderer(log=log), swap_models=True)
    for job in (compose(), render(), render(), compose()):
        assert isinstance(await engine.submit(job).wait(), Finished)
    assert log == [
        "renderer.unload", "llm.load", "llm.generate",
        "llm.unload", "renderer.load", "renderer.render",
        "renderer.render",
        "renderer.unload", "llm.load", "llm.generate",
    ]  # fmt: skip


@pytest.mark.parametrize("remote", [False, True])
async def test_without_swapping_or_with_a_remote_llm_nothing_is_unloaded(
    make_engine: MakeEngine, remote: bool
) -> None:
    log: list[str] = []
    llm = FakeLLM([small_answer()], log=log, remote=remote)
    engine = await make_engine(llm, FakeRenderer(log=log), swap_models=remote)
    for job in (compose(), render(), compose()):
        await engine.submit(job).wait()
    assert log == ["llm.generate", "renderer.render", "llm.generate"]


def _overlap(a: tuple[float, float], b: tuple[float, float]) -> float:
    return min(a[1], b[1]) - max(a[0], b[0])


async def test_a_remote_llm_composes_while_the_device_renders(make_engine: MakeEngine) -> None:
    llm = FakeLLM([small_answer()], token_delay_s=0.001, remote=True)
    renderer = FakeRenderer(step_delay_s=0.04)
    engine = await make_engine(llm, renderer)
    assert engine.remote_llm
    await asyncio.gather(engine.submit(compose("alice")).wait(), engine.submit(render("bob")).wait())
    (llm_span,), (render_span,) = llm.spans, renderer.spans
    assert _overlap(llm_span, render_span) > 0.5 * min(
        llm_span[1] - llm_span[0], render_span[1] - render_span[0]
    )


async def test_a_local_llm_and_the_renderer_take_turns_on_one_lane(make_engine: MakeEngine) -> None:
    llm = FakeLLM([small_answer()], token_delay_s=0.001)
    renderer = FakeRenderer(step_delay_s=0.04)
    engine = await make_engine(llm, renderer)
    assert not engine.remote_llm
    await asyncio.gather(engine.submit(compose("alice")).wait(), engine.submit(render("bob")).wait())
    assert _overlap(llm.spans[0], renderer.spans[0]) <= 0


# --- ETAs, positions, subscribers -----------------------------------------------------------------


async def test_eta_uses_the_prior_before_anything_was_measured(make_engine: MakeEngine) -> None:
    priors = RatePriors(tokens_per_s=50.0, answer_tokens=2500.0)
    engine = await make_engine(FakeLLM(token_delay_s=0.002), priors=priors)
    engine.submit(compose("alice"))
    second = engine.submit(compose("bob"))
    third = engine.submit(compose("carol"))
    assert second.position == 1 and third.position == 2
    assert second.eta_s is not None and 45.0 < second.eta_s <= 50.0  # 2500 tokens at 50/s, minus a moment
    assert third.eta_s is not None and abs(third.eta_s - second.eta_s - 50.0) < 1e-6


async def test_eta_follows_measured_step_rates_and_is_resent_as_the_queue_moves(
    make_engine: MakeEngine,
) -> None:
    engine = await make_engine(renderer=FakeRenderer(step_delay_s=0.02))
    params = RenderParams(width=128, height=128, steps=5)  # about 0.1 s a job
    await engine.submit(render(params=params)).wait()  # measured once

    handles = [engine.submit(render(params=params)) for _ in range(4)]
    waiting = handles[-1]
    assert waiting.position == 3
    eta = waiting.eta_s
    assert eta is not None and 0.15 < eta < 0.6, eta
    assert handles[1].eta_s is not None and handles[1].eta_s < handles[2].eta_s < eta  # type: ignore[operator]

    events = await collect(waiting)
    queued = [e for e in events if isinstance(e, Queued)]
    assert [q.position for q in queued] == [3, 2, 1]
    assert all(q.eta_s is not None for q in queued)
    assert queued[0].eta_s > queued[1].eta_s > queued[2].eta_s  # type: ignore[operator]
    assert kinds(events)[len(queued)] == "Started" and isinstance(events[-1], Finished)


async def test_late_and_concurrent_subscribers_get_every_event(make_engine: MakeEngine) -> None:
    engine = await make_engine()
    handle = engine.submit(render())
    first, second = await asyncio.gather(collect(handle), collect(handle))
    assert first == second and isinstance(first[-1], Finished)
    assert await collect(handle) == first  # after the end, the whole stream again
    assert await handle.wait() is first[-1]
    assert handle.status is JobStatus.FINISHED and handle.position == 0


async def test_jobs_are_validated_and_ids_unique(make_engine: MakeEngine) -> None:
    engine = await make_engine(renderer=FakeRenderer(step_delay_s=0.02))
    with pytest.raises(ValueError):
        ComposeJob(owner="a", messages=())
    with pytest.raises(ValueError):
        render(timeout_s=0)
    job = render(tag="turn-7")
    handle = engine.submit(job)
    assert handle.job is job and job.tag == "turn-7" and len(job.job_id) == 32
    assert engine.cancel_tagged("turn-8") == 0
    with pytest.raises(ValueError):
        engine.submit(job)
    listed = ComposeJob(owner="a", messages=[ChatMessage("user", "hi")])  # type: ignore[arg-type]
    assert listed.messages == (ChatMessage("user", "hi"),)


def test_the_fakes_implement_the_backend_interfaces() -> None:
    # mypy checks these assignments against the protocols; at run time, the attributes the engine reads.
    llm: LLMBackend = FakeLLM(remote=True)
    renderer: Renderer = FakeRenderer()
    assert llm.remote is True and llm.name and renderer.name
    assert renderer.lower_memory() is True and renderer.lower_memory() is False  # one lower mode
