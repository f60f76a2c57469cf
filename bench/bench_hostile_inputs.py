"""Benchmarks for hostile inputs (issue 13); prints figures measured in this run.

1. PNG metadata: our chunk-stream reader against Pillow reading the same text chunks (which it
   gets by decoding the image: `Image.open(...).text` loads the pixels), on a 4096x4096 black PNG
   with our chunks after the image data (a size the renderer makes). Then each hostile file of
   the tests (11000x11000, 13000x13000 RGBA, an APNG of 120 frames at 3000x3000, a 50000x50000
   header) through `read_png_metadata_async`, with the worst event-loop lateness a 5 ms ticker saw.
2. Answer accumulation: `Generation` (pieces joined once) against the old `text += piece` on an
   attribute, for a 200,000-character answer in 4-character pieces (the parser's limit).
3. The remote LLM stream against the fake server's hostile modes: time from cancel to the
   backend stopping while the server trickles a byte every 2 s with no newline, and the time to
   stop a runaway answer at the parser's limit.

Run: python bench/bench_hostile_inputs.py   (CPU; about 20 s)
"""

from __future__ import annotations

import asyncio
import io
import logging
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from omost_engine.canvas_code import parse, to_code
from omost_engine.errors import BackendError, Interrupted
from omost_engine.llm.base import ChatMessage, Generation, GenerationParams, GenerationStats
from omost_engine.llm.openai_api import OpenAIBackend
from omost_engine.render.base import RenderParams
from omost_engine.render.metadata import (
    PictureRefused,
    png_metadata,
    read_png_metadata,
    read_png_metadata_async,
)
from tests.fakes import hostile_png
from tests.fakes.openai_server import FakeOpenAIServer
from tests.seed import seed_answers

ASK = [ChatMessage("user", "a cat")]


def best_of(runs: int, work: Callable[[], object]) -> float:
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        work()
        times.append(time.perf_counter() - began)
    return min(times)


def png_reader() -> None:
    chunks = png_metadata(to_code(parse(seed_answers()[0])), RenderParams(), "bench")
    png = hostile_png.black_png(4096, 4096)
    tail = b"".join(hostile_png.itxt(k, v.encode()) for k, v in chunks.items())
    png = png[:-12] + tail + png[-12:]

    def pillow() -> object:
        with Image.open(io.BytesIO(png)) as image:
            return image.text  # type: ignore[attr-defined]

    assert pillow()["omost:canvas"] == chunks["omost:canvas"]
    restored = read_png_metadata(png)
    assert restored is not None and restored.code == chunks["omost:canvas"]
    ours, theirs = best_of(5, lambda: read_png_metadata(png)), best_of(3, pillow)
    print(
        f"1. PNG 4096x4096, chunks after the pixels: ours {ours * 1e3:.1f} ms, Pillow {theirs * 1e3:.0f} ms"
    )
    print(f"   ratio Pillow / ours: {theirs / ours:.0f}x")
    hostile = {
        "11000x11000 black": hostile_png.black_png(11000, 11000),
        "13000x13000 RGBA": hostile_png.black_png(13000, 13000, colour_type=6),
        "APNG 120 x 3000x3000": hostile_png.animated_png(3000, 3000, 120),
        "50000x50000 header": hostile_png.header_only_png(50000, 50000),
    }
    for name, data in hostile.items():
        took, lag, message = asyncio.run(_refusal(data))
        size = f"{len(data) / 1024:8.0f} KiB"
        print(f"   {name:22} {size}  {took * 1e3:5.1f} ms  loop lag {lag * 1e3:4.1f} ms  {message}")


async def _refusal(data: bytes) -> tuple[float, float, str]:
    worst, done = 0.0, False

    async def ticker() -> None:
        nonlocal worst
        while not done:
            began = time.perf_counter()
            await asyncio.sleep(0.005)
            worst = max(worst, time.perf_counter() - began - 0.005)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0.02)
    began = time.perf_counter()
    try:
        await read_png_metadata_async(data)
        message = "(read)"
    except PictureRefused as e:
        message = str(e)
    took = time.perf_counter() - began
    done = True
    await task
    return took, worst, message


class _OldGeneration:
    """The accumulation this issue replaced, kept here only to measure it."""

    def __init__(self, pieces: Iterator[str]) -> None:
        self._pieces = pieces
        self.text = ""

    def __iter__(self) -> Iterator[str]:
        for piece in self._pieces:
            self.text += piece
            yield piece


def accumulation() -> None:
    pieces = ["abcd"] * 50_000  # 200,000 characters

    def new_once() -> object:
        g = Generation(iter(pieces), GenerationStats())
        for _ in g:
            pass
        return g.text

    def old() -> object:
        g = _OldGeneration(iter(pieces))
        for _ in g:
            pass
        return g.text

    t_old, t_new = best_of(3, old), best_of(3, new_once)
    print(f"2. 200,000 characters in 50,000 pieces: old += {t_old * 1e3:.0f} ms, joined {t_new * 1e3:.1f} ms")
    print(f"   ratio old / new: {t_old / t_new:.0f}x")


def _cancel_latency(backend: OpenAIBackend, after_s: float) -> float:
    """Seconds from setting the cancel event to the backend raising Interrupted."""
    cancel = threading.Event()
    fired: list[float] = []

    def cancel_later() -> None:
        time.sleep(after_s)
        fired.append(time.perf_counter())
        cancel.set()

    threading.Thread(target=cancel_later, daemon=True).start()
    try:
        for _ in backend.generate(ASK, GenerationParams(), cancel):
            pass
    except Interrupted:
        pass
    return time.perf_counter() - fired[0]


def stream() -> None:
    with FakeOpenAIServer(models=("m",), reply=seed_answers()[0], trickle_seconds=2.0) as server:
        latencies = []
        for _ in range(5):
            server.faults.append("trickle")
            latencies.append(_cancel_latency(OpenAIBackend("m", server.base_url), 0.3))
        median = statistics.median(latencies) * 1e3
        print(
            f"3. cancel while the server trickles a byte every 2 s: stopped {median:.0f} ms after the "
            f"cancel (median of 5, worst {max(latencies) * 1e3:.0f} ms)"
        )
        server.faults.append("runaway")
        server.piece_chars = 4
        began = time.perf_counter()
        generation = OpenAIBackend("m", server.base_url).generate(ASK, GenerationParams(), threading.Event())
        try:
            for _ in generation:
                pass
        except BackendError:
            pass
        print(
            f"   runaway answer: stopped after {len(generation.text):,} characters in "
            f"{time.perf_counter() - began:.2f} s"
        )


if __name__ == "__main__":
    logging.basicConfig(level=logging.ERROR)  # the backend's WARNING per refused request is expected
    png_reader()
    accumulation()
    stream()
