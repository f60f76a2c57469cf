"""Fake model backends that honour the engine's interfaces exactly, for tests and benchmarks.

`FakeLLM` (llm/base.py's LLMBackend) replays canned answers as a stream of token-sized pieces;
`FakeRenderer` (render/base.py's Renderer) draws a small image from the canvas layout colours and
the seed, reporting every step. Both stop within one piece or step of their cancel event (raising
`errors.Interrupted`), can be told to run out of memory a number of times, and record what they
were asked to do, so tests assert on behaviour rather than on mocks.

Shared log: pass the same list as `log=` to both fakes to see their calls interleaved in order,
e.g. ["llm.generate", "renderer.unload", "llm.load", ...].

These fakes know nothing of the engine or the bot. They never touch torch.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from omost_engine import errors
from omost_engine.canvas import Canvas, process
from omost_engine.llm.base import ChatMessage, Generation, GenerationParams, GenerationStats
from omost_engine.render.base import RenderParams, RenderResult, Step, StepCallback

# Token-like pieces: a word or number with its leading space, one punctuation mark, or a run of
# whitespace. Every character falls in one of them, so the pieces join back to the answer.
_PIECE = re.compile(r" ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]|\s+")


def shared_dir() -> Path:
    """The shared folder beside the repository (`$OMOST_SHARED` overrides it)."""
    override = os.environ.get("OMOST_SHARED")
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[3] / "shared"


def seed_path() -> Path:
    """The seed transcript: `$OMOST_SHARED`/fixtures if set, else the copy shipped in tests/data,
    else shared/fixtures beside the repository."""
    name = "seed_conversation.json"
    if os.environ.get("OMOST_SHARED"):
        return shared_dir() / "fixtures" / name
    shipped = Path(__file__).resolve().parents[1] / "data" / name
    return shipped if shipped.is_file() else shared_dir() / "fixtures" / name


def seed_conversation() -> list[ChatMessage]:
    """The seed transcript (a real two-turn Omost conversation) as chat messages."""
    raw = json.loads(seed_path().read_text(encoding="utf-8"))
    return [ChatMessage(role=m["role"], content=m["content"]) for m in raw]


def seed_answers() -> list[str]:
    """The seed's assistant answers, in order (two canvases: a battle, then with meteorites)."""
    return [m.content for m in seed_conversation() if m.role == "assistant"]


def split_pieces(text: str) -> list[str]:
    pieces = _PIECE.findall(text)
    if "".join(pieces) != text:  # cannot happen with _PIECE; guards the fake's own promise
        raise RuntimeError("split_pieces lost characters")
    return pieces


class FakeLLM:
    """Replays `answers` in turn (call i gets answers[i % len]), streamed as token-sized pieces.

    Arguments (all optional):
      answers         the answers to replay; default: the seed's assistant answers
      token_delay_s   sleep between pieces (interrupted at once by cancel)
      remote          what the engine reads as `llm.remote` (True: a lane of its own)
      oom_times       the first N generate() streams raise errors.OutOfMemory before any piece
      error           raised by every stream before any piece (e.g. errors.BackendError(...))
      log             a list shared with FakeRenderer, see the module docstring

    Records: `calls` ((messages, params) per generate), `pieces_sent` per call, `spans`
    ((start, end) perf_counter times of each stream), and `loads`/`unloads`/`closed`.
    """

    def __init__(
        self,
        answers: Sequence[str] | None = None,
        *,
        token_delay_s: float = 0.0,
        remote: bool = False,
        oom_times: int = 0,
        error: Exception | None = None,
        log: list[str] | None = None,
    ) -> None:
        self.name = "fake-llm"
        self.remote = remote
        self.answers = list(answers) if answers is not None else seed_answers()
        if not self.answers:
            raise ValueError("FakeLLM needs at least one answer")
        self.token_delay_s = token_delay_s
        self.oom_times = oom_times
        self.error = error
        self.log = log if log is not None else []
        self.calls: list[tuple[tuple[ChatMessage, ...], GenerationParams]] = []
        self.pieces_sent: list[int] = []
        self.spans: list[tuple[float, float]] = []
        self.loads = 0
        self.unloads = 0
        self.closed = False
        self._lock = threading.Lock()

    def generate(
        self, messages: Sequence[ChatMessage], params: GenerationParams, cancel: threading.Event
    ) -> Generation:
        with self._lock:
            index = len(self.calls)
            self.calls.append((tuple(messages), params))
            self.pieces_sent.append(0)
        self.log.append("llm.generate")
        answer = self.answers[index % len(self.answers)]
        stats = GenerationStats(prompt_tokens=sum(len(m.content) for m in messages) // 4)
        return Generation(self._stream(index, answer, stats, cancel), stats)

    def _stream(
        self, index: int, answer: str, stats: GenerationStats, cancel: threading.Event
    ) -> Iterator[str]:
        started = time.perf_counter()
        try:
            if self.oom_times > 0:
                self.oom_times -= 1
                raise errors.OutOfMemory(self.name, "The fake LLM ran out of memory.")
            if self.error is not None:
                raise self.error
            for piece in split_pieces(answer):
                if cancel.is_set() or (self.token_delay_s > 0 and cancel.wait(self.token_delay_s)):
                    raise errors.Interrupted()
                self.pieces_sent[index] += 1
                stats.new_tokens += 1
                stats.seconds = time.perf_counter() - started
                yield piece
        finally:
            self.spans.append((started, time.perf_counter()))

    def load(self) -> None:
        self.loads += 1
        self.log.append("llm.load")

    def unload(self) -> None:
        self.unloads += 1
        self.log.append("llm.unload")

    def close(self) -> None:
        self.closed = True
        self.log.append("llm.close")


class FakeRenderer:
    """Draws the canvas's colour sketch (SPEC 4) with seeded noise, one `on_step` per step.

    The image is the requested size divided by `downscale` (default 8, SDXL's latent size), so a
    896 x 1152 request gives a 112 x 144 image; the same canvas and seed give the same pixels.

    Arguments (all optional):
      step_delay_s    sleep per step (interrupted at once by cancel)
      downscale       image size divisor, see above
      previews        pass a tiny preview image with every Step
      oom_times       the first N render() calls raise errors.OutOfMemory
      can_lower       whether lower_memory() has a lower mode to switch to (once)
      log             a list shared with FakeLLM, see the module docstring

    Steps: `params.steps` in phase "base", then `params.hires_steps` in phase "hires" when
    `params.hires_scale` > 1.05. Records: `calls` ((canvas, params) per render), `steps_run`
    per call, `spans`, `loads`, `unloads`, `lower_memory_calls`, `low_memory`, `closed`.
    """

    supports_edits = True  # takes RenderParams.edit (and draws the whole sketch: it is a fake)

    def __init__(
        self,
        *,
        step_delay_s: float = 0.0,
        downscale: int = 8,
        previews: bool = False,
        oom_times: int = 0,
        can_lower: bool = True,
        log: list[str] | None = None,
    ) -> None:
        self.name = "fake-renderer"
        self.step_delay_s = step_delay_s
        self.downscale = max(1, downscale)
        self.previews = previews
        self.oom_times = oom_times
        self.can_lower = can_lower
        self.log = log if log is not None else []
        self.calls: list[tuple[Canvas, RenderParams]] = []
        self.steps_run: list[int] = []
        self.spans: list[tuple[float, float]] = []
        self.loads = 0
        self.unloads = 0
        self.lower_memory_calls = 0
        self.low_memory = False
        self.closed = False

    def render(
        self,
        canvas: Canvas,
        params: RenderParams,
        *,
        on_step: StepCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> RenderResult:
        started = time.perf_counter()
        self.calls.append((canvas, params))
        self.steps_run.append(0)
        index = len(self.calls) - 1
        self.log.append("renderer.render")
        try:
            if self.oom_times > 0:
                self.oom_times -= 1
                raise errors.OutOfMemory(self.name, "The fake renderer ran out of GPU memory.")
            phases = [("base", params.steps)]
            if params.hires_scale > 1.05:
                phases.append(("hires", params.hires_steps))
            for phase, total in phases:
                for i in range(1, total + 1):
                    if cancel is not None and (
                        cancel.is_set() or (self.step_delay_s > 0 and cancel.wait(self.step_delay_s))
                    ):
                        raise errors.Interrupted()
                    if cancel is None and self.step_delay_s > 0:
                        time.sleep(self.step_delay_s)
                    self.steps_run[index] += 1
                    if on_step is not None:
                        preview = Image.new("RGB", (8, 8), (i * 255 // total,) * 3) if self.previews else None
                        on_step(Step(i, total, preview, phase))
            image = self.draw(canvas, params)
        finally:
            self.spans.append((started, time.perf_counter()))
        return RenderResult(
            image=image,
            params=params,
            model=self.name,
            seconds=time.perf_counter() - started,
            metadata={"seed": str(params.seed), "renderer": self.name},
        )

    def draw(self, canvas: Canvas, params: RenderParams) -> Image.Image:
        """The colour sketch stretched to the output size, with noise seeded by `params.seed`."""
        width = max(1, params.width // self.downscale)
        height = max(1, params.height // self.downscale)
        sketch = Image.fromarray(process(canvas).color_sketch.astype(np.uint8), "RGB")
        base = np.asarray(sketch.resize((width, height), Image.Resampling.NEAREST), dtype=np.int16)
        noise = np.random.default_rng(params.seed).integers(-12, 13, size=base.shape, dtype=np.int16)
        return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGB")

    def load(self) -> None:
        self.loads += 1
        self.log.append("renderer.load")

    def unload(self) -> None:
        self.unloads += 1
        self.log.append("renderer.unload")

    def lower_memory(self) -> bool:
        self.lower_memory_calls += 1
        self.log.append("renderer.lower_memory")
        if self.low_memory or not self.can_lower:
            return False
        self.low_memory = True
        return True

    def close(self) -> None:
        self.closed = True
        self.log.append("renderer.close")
