"""Jobs the engine runs, the events they emit, and their results.

Owns the vocabulary shared by the engine and its callers: `ComposeJob` (a chat history -> canvas
code, streamed) and `RenderJob` (a canvas -> an image, with step progress), their `JobStatus`,
the typed events a job emits in order, and the results carried by `Finished`.

Every job's event stream is

    Queued* Started (TextDelta | PartParsed)* [Repairing (TextDelta | PartParsed)*] Finished
                                                                           (compose)
    Queued* Started Step* Finished                                         (render)

ending with exactly one terminal event: `Finished`, `Failed` or `Cancelled`. `Queued` is sent
again whenever the job's place in its queue changes. A second `Started` (attempt 2) means the
engine retried the job after an out-of-memory error: text and steps start again from nothing.
`Repairing` means the answer so far did not parse and the engine asked the model once more
(llm/repair.py): the text deltas and parts after it belong to a fresh answer, so a consumer drops
the text and parts it holds when it sees `Repairing`, exactly as after a second `Started`.

This module holds plain data only: no threads, no models, no chats. It must not import torch.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from enum import StrEnum
from typing import ClassVar

from omost_engine.canvas import Canvas, CanvasError
from omost_engine.canvas_code import CanvasEvent
from omost_engine.llm.base import ChatMessage, GenerationParams, GenerationStats
from omost_engine.render.base import RenderParams, RenderResult, Step

__all__ = [
    "Cancelled",
    "ComposeJob",
    "ComposeResult",
    "Failed",
    "FailureKind",
    "Finished",
    "Job",
    "JobEvent",
    "JobStatus",
    "PartParsed",
    "Queued",
    "RenderJob",
    "RenderResult",
    "Repairing",
    "Started",
    "Step",
    "TerminalEvent",
    "TextDelta",
]


class JobStatus(StrEnum):
    """Where a job is in its life. The last three are final."""

    QUEUED = "queued"
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    CANCELLED = "cancelled"


class FailureKind(StrEnum):
    """Why a job failed, for callers that react differently (e.g. offer Retry on a timeout)."""

    TIMEOUT = "timeout"
    OUT_OF_MEMORY = "out_of_memory"
    MODEL_NOT_AVAILABLE = "model_not_available"
    BACKEND = "backend"  # a remote LLM server failed
    INTERNAL = "internal"  # a bug or an unexpected error; details are in the log


def new_job_id() -> str:
    return uuid.uuid4().hex


# --- jobs -----------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ComposeJob:
    """Ask the LLM for canvas code. `messages` is the whole history, ending with the user's message.

    `owner` is whoever the fair queue and the caps count (a user id); `tag` is free for the caller
    (the bot puts its turn id there). `timeout_s` None means the engine's default.
    """

    kind: ClassVar[str] = "compose"

    owner: str
    messages: tuple[ChatMessage, ...]
    params: GenerationParams = field(default_factory=GenerationParams)
    tag: str = ""
    timeout_s: float | None = None
    job_id: str = field(default_factory=new_job_id)

    def __post_init__(self) -> None:
        # Accept any sequence (a list is the natural thing to pass) but keep the job immutable.
        if not isinstance(self.messages, tuple):
            object.__setattr__(self, "messages", tuple(self.messages))
        if not self.messages:
            raise ValueError("a compose job needs at least one message")
        if self.timeout_s is not None and self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {self.timeout_s}")


@dataclass(frozen=True, kw_only=True)
class RenderJob:
    """Draw a canvas. Fields as in `ComposeJob`."""

    kind: ClassVar[str] = "render"

    owner: str
    canvas: Canvas
    params: RenderParams = field(default_factory=RenderParams)
    tag: str = ""
    timeout_s: float | None = None
    job_id: str = field(default_factory=new_job_id)

    def __post_init__(self) -> None:
        if self.timeout_s is not None and self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {self.timeout_s}")


Job = ComposeJob | RenderJob


# --- results --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ComposeResult:
    """The model's whole answer. An answer that does not parse still finishes: `canvas` is None and
    `parse_error` says which line and what was expected (the bot shows it with a Retry button)."""

    text: str
    canvas: Canvas | None
    parse_error: CanvasError | None
    stats: GenerationStats
    repaired: bool = False
    """True when the first answer did not parse and this is the repair turn's answer."""


# --- events ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Queued:
    """Waiting. `position` is 1-based (1: next to start on its lane); `eta_s` estimates the seconds
    until the job starts, from measured token and step rates (None when nothing can be said)."""

    position: int
    eta_s: float | None


@dataclass(frozen=True)
class Started:
    """A worker took the job. `attempt` 2 is the retry after an out-of-memory error."""

    attempt: int = 1


@dataclass(frozen=True)
class TextDelta:
    """The next piece of the model's answer, as it streams."""

    text: str


@dataclass(frozen=True)
class PartParsed:
    """A part of the canvas became complete while streaming: the global description
    (`canvas_code.GlobalParsed`) or a local region (`canvas_code.RegionParsed`)."""

    part: CanvasEvent


@dataclass(frozen=True)
class Repairing:
    """The answer did not parse and the backend cannot enforce the grammar: the engine asks the
    model once more. `error` is the parser's line-numbered message about the first answer. The
    TextDelta and PartParsed events after this one start a fresh answer."""

    error: str


# `Step(index, total, preview, phase)` is the renderer's own progress record (render/base.py),
# passed through unchanged.


@dataclass(frozen=True)
class Finished:
    result: ComposeResult | RenderResult


@dataclass(frozen=True)
class Failed:
    """The job could not be done. `message` is written for the person in the chat."""

    message: str
    kind: FailureKind


@dataclass(frozen=True)
class Cancelled:
    """Stopped on request (the user, the caller or shutdown); `reason` says which, for the chat."""

    reason: str


JobEvent = Queued | Started | TextDelta | PartParsed | Repairing | Step | Finished | Failed | Cancelled
TerminalEvent = Finished | Failed | Cancelled
TERMINAL_EVENTS: tuple[type, ...] = (Finished, Failed, Cancelled)
