"""Benchmarks for the job engine (issue 5); prints figures measured in this run.

1. Per-job overhead around the models: with the fake backends at zero delay, the time from
   `submit` to `Finished` minus the time spent inside the model calls themselves (measured by
   wrappers: inside the LLM's stream `next()` calls; inside `render()` minus the engine's
   `on_step` callbacks). p50/p99 for compose jobs (the seed's first answer: 8,938 characters,
   ~2,100 pieces streamed, parsed as it streams) and render jobs (25 steps), one job at a time.
   What the compose overhead is made of: the incremental parse (fed a line at a time, as the
   engine does, plus the final parse) is measured on its own and reported as a share.
2. Throughput with many owners: `--users` users (default 200), each sending `--turns` turns
   (default 5) concurrently; a turn is a compose job then a render job of its canvas. Checks that
   every job finished exactly once and that every model call happened exactly once, and prints
   jobs per second and the total time. Then a burst: every user queues all its renders at once
   (1,000 queued jobs), which exercises positions and ETAs being re-sent on every move.

Run: python bench/bench_engine.py   (CPU only, no GPU needed; about 30 s)
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from omost_engine.canvas import Canvas
from omost_engine.canvas_code import IncrementalParser, parse
from omost_engine.engine import Engine, JobHandle
from omost_engine.jobs import ComposeJob, ComposeResult, Finished, Queued, RenderJob
from omost_engine.llm.base import ChatMessage, Generation, GenerationParams
from omost_engine.render.base import RenderParams, RenderResult, Step, StepCallback
from tests.fakes.fake_backends import FakeLLM, FakeRenderer, seed_answers, split_pieces


class TimedLLM:
    """Wraps an LLM backend and adds up the time spent inside its stream."""

    def __init__(self, inner: FakeLLM) -> None:
        self.inner = inner
        self.name = inner.name
        self.remote = inner.remote
        self.model_s = 0.0

    def generate(
        self, messages: Sequence[ChatMessage], params: GenerationParams, cancel: threading.Event
    ) -> Generation:
        generation = self.inner.generate(messages, params, cancel)
        return Generation(self._timed(iter(generation)), generation.stats)

    def _timed(self, pieces: Iterator[str]) -> Iterator[str]:
        while True:
            began = time.perf_counter()
            piece = next(pieces, None)
            self.model_s += time.perf_counter() - began
            if piece is None:
                return
            yield piece

    def close(self) -> None: ...
    def load(self) -> None: ...
    def unload(self) -> None: ...


class TimedRenderer:
    """Wraps a renderer and adds up the time inside `render()`, less the engine's callbacks."""

    def __init__(self, inner: FakeRenderer) -> None:
        self.inner = inner
        self.name = inner.name
        self.model_s = 0.0

    def render(
        self,
        canvas: Canvas,
        params: RenderParams,
        *,
        on_step: StepCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> RenderResult:
        callback_s = 0.0

        def timed_step(step: Step) -> None:
            nonlocal callback_s
            began = time.perf_counter()
            if on_step is not None:
                on_step(step)
            callback_s += time.perf_counter() - began

        began = time.perf_counter()
        result = self.inner.render(canvas, params, on_step=timed_step, cancel=cancel)
        self.model_s += time.perf_counter() - began - callback_s
        return result

    def close(self) -> None: ...
    def load(self) -> None: ...
    def unload(self) -> None: ...

    def lower_memory(self) -> bool:
        return False


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


REQUEST = (ChatMessage("user", "generate an image of the fierce battle of warriors and dinosaurs"),)
RENDER = RenderParams()  # SPEC defaults: 896 x 1152, 25 steps (the fake draws 112 x 144)


async def overhead(runs: int) -> dict[str, list[float]]:
    llm, renderer = TimedLLM(FakeLLM([seed_answers()[0]])), TimedRenderer(FakeRenderer())
    canvas = parse(seed_answers()[0])
    out: dict[str, list[float]] = {"compose": [], "render": [], "compose_model": [], "render_model": []}
    async with Engine(llm, renderer, job_timeout_s=60) as engine:
        for i in range(runs + 10):
            for kind in ("compose", "render"):
                timed: TimedLLM | TimedRenderer = llm if kind == "compose" else renderer
                job: ComposeJob | RenderJob = (
                    ComposeJob(owner="u", messages=REQUEST)
                    if kind == "compose"
                    else RenderJob(owner="u", canvas=canvas, params=RENDER)
                )
                timed.model_s = 0.0
                began = time.perf_counter()
                final = await engine.submit(job).wait()
                wall = time.perf_counter() - began
                if not isinstance(final, Finished):
                    raise RuntimeError(f"{kind} job ended with {final}")
                if i >= 10:  # warm-up excluded
                    out[kind].append(wall - timed.model_s)
                    out[f"{kind}_model"].append(timed.model_s)
    return out


def parse_cost(runs: int) -> float:
    pieces = split_pieces(seed_answers()[0])
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        parser, pending = IncrementalParser(), []
        for piece in pieces:
            pending.append(piece)
            if "\n" in piece:
                parser.feed("".join(pending))
                pending.clear()
        parser.feed("".join(pending))
        parser.finish()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


async def throughput(users: int, turns: int) -> dict[str, Any]:
    llm, renderer = FakeLLM(), FakeRenderer()
    finished: dict[str, int] = {}
    engine = Engine(llm, renderer, max_total=users * turns, job_timeout_s=600)

    async def run(handle: JobHandle) -> Any:
        final = await handle.wait()
        if not isinstance(final, Finished):
            raise RuntimeError(f"job {handle.job_id} ended with {final}")
        finished[handle.job_id] = finished.get(handle.job_id, 0) + 1
        return final.result

    async def user(name: str) -> None:
        for turn in range(turns):
            text = f"turn {turn}"
            composed = await run(engine.submit(ComposeJob(owner=name, messages=(ChatMessage("user", text),))))
            assert isinstance(composed, ComposeResult) and composed.canvas is not None
            await run(engine.submit(RenderJob(owner=name, canvas=composed.canvas, params=RENDER)))

    async with engine:
        began = time.perf_counter()
        await asyncio.gather(*(user(f"user{u}") for u in range(users)))
        turns_s = time.perf_counter() - began

        # burst: every user queues all of its renders at once
        canvas = parse(seed_answers()[0])
        queued_events = 0
        began = time.perf_counter()
        handles = [
            engine.submit(RenderJob(owner=f"user{u}", canvas=canvas, params=RENDER))
            for _ in range(turns)
            for u in range(users)
        ]
        submit_s = time.perf_counter() - began
        await asyncio.gather(*(run(h) for h in handles))
        burst_s = time.perf_counter() - began
        for handle in handles:
            queued_events += sum(isinstance(e, Queued) for e in [e async for e in handle.events()])

    jobs = users * turns * 2 + len(handles)
    return {
        "turns_s": turns_s,
        "turn_jobs": users * turns * 2,
        "burst_s": burst_s,
        "burst_submit_s": submit_s,
        "burst_jobs": len(handles),
        "queued_events": queued_events,
        "all_once": len(finished) == jobs and set(finished.values()) == {1},
        "llm_calls": len(llm.calls),
        "render_calls": len(renderer.calls),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--turns", type=int, default=5)
    args = parser.parse_args()

    result = asyncio.run(overhead(args.runs))
    parse_s = parse_cost(50)
    print(f"per-job overhead around the models, {args.runs} jobs each, zero-delay fakes, one at a time")
    for kind in ("compose", "render"):
        values = result[kind]
        model = statistics.median(result[f"{kind}_model"])
        print(
            f"  {kind:8s} p50 {pct(values, 50) * 1e3:6.2f} ms   p99 {pct(values, 99) * 1e3:6.2f} ms"
            f"   (model time inside the fakes, median {model * 1e3:.2f} ms)"
        )
    turn = [c + r for c, r in zip(result["compose"], result["render"], strict=True)]
    print(f"  one turn (compose + render) p50 {pct(turn, 50) * 1e3:.2f} ms  p99 {pct(turn, 99) * 1e3:.2f} ms")
    print(f"  p99 turn overhead / DESIGN budget (20 ms): {pct(turn, 99) * 1e3 / 20:.2f}")
    print(
        f"  incremental parse of the answer alone: {parse_s * 1e3:.2f} ms = "
        f"{parse_s / statistics.median(result['compose']):.0%} of the compose overhead (p50)"
    )
    prior_s = 2500 / 25.0
    ratio = pct(result["compose"], 99) / prior_s
    print(f"  compose overhead p99 / a 2,500-token answer at 25 tokens/s: {ratio:.1e}")

    t = asyncio.run(throughput(args.users, args.turns))
    print(f"\nmany owners: {args.users} users x {args.turns} turns (compose then render), concurrently")
    print(
        f"  {t['turn_jobs']} jobs in {t['turns_s']:.2f} s = {t['turn_jobs'] / t['turns_s']:.0f} jobs/s"
        f" ({t['turn_jobs'] / 2 / t['turns_s']:.0f} turns/s)"
    )
    print(
        f"  burst: {t['burst_jobs']} renders queued at once "
        f"(submit took {t['burst_submit_s'] * 1e3:.1f} ms), "
        f"all done in {t['burst_s']:.2f} s = {t['burst_jobs'] / t['burst_s']:.0f} jobs/s; "
        f"{t['queued_events']} Queued events sent"
    )
    print(
        f"  every job finished exactly once: {t['all_once']}; model calls: "
        f"{t['llm_calls']} compose, {t['render_calls']} render"
    )


if __name__ == "__main__":
    main()
