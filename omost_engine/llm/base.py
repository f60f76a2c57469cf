"""The LLM backend interface: chat messages + parameters + a cancel event -> a text stream.

Backends are synchronous and run on an engine lane's worker thread (never on the event loop).
They must stop within one token of `cancel` being set, raising `errors.Interrupted`.
This module must not import torch or transformers.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class ChatMessage:
    role: Role
    content: str


@dataclass(frozen=True)
class GenerationParams:
    """SPEC 7 defaults. temperature 0 means greedy decoding."""

    temperature: float = 0.6
    top_p: float = 0.9
    max_new_tokens: int = 4096
    seed: int | None = None


@dataclass
class GenerationStats:
    """Filled in by the backend as it goes; complete once the stream is exhausted."""

    prompt_tokens: int = 0
    new_tokens: int = 0
    seconds: float = 0.0
    dropped_messages: int = 0  # history messages left out to fit the context (oldest first)
    forward_passes: int = 0  # target-model forward passes; below new_tokens when prompt lookup hits
    notes: list[str] = field(default_factory=list)  # for the user, e.g. "dropped 2 oldest turns"

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0


class Generation:
    """A text stream (iterate for pieces) plus its stats. The final text is the concatenation."""

    def __init__(self, pieces: Iterator[str], stats: GenerationStats) -> None:
        self._pieces = pieces
        self.stats = stats
        # Pieces are kept and joined when asked: `text += piece` copies the whole answer on
        # every piece (quadratic in its length: an 11 MB runaway answer took minutes).
        self._parts: list[str] = []
        self._joined = 0  # how many parts `_text` already holds
        self._text = ""

    @property
    def text(self) -> str:
        """Everything streamed so far (joined when read: read it at the end, not per piece)."""
        if self._joined < len(self._parts):
            self._text = "".join(self._parts)
            self._parts[:] = [self._text]
            self._joined = 1
        return self._text

    def __iter__(self) -> Iterator[str]:
        try:
            for piece in self._pieces:
                self._parts.append(piece)
                yield piece
        finally:
            # A consumer that stops early closes this iterator; pass that on so the backend
            # stops its model or stream instead of running on unread.
            close = getattr(self._pieces, "close", None)
            if close is not None:
                close()


class LLMBackend(Protocol):
    """A language model that writes Canvas answers."""

    name: str
    remote: bool  # True when the model runs elsewhere (its own engine lane; no local GPU)

    def generate(
        self, messages: Sequence[ChatMessage], params: GenerationParams, cancel: threading.Event
    ) -> Generation: ...

    def close(self) -> None:
        """Free what the backend holds (GPU memory, HTTP sessions)."""
        ...

    def unload(self) -> None:
        """Move weights off the GPU (to CPU or drop them) so the renderer can use the memory.

        The engine calls this on a GPU too small for both models; a remote backend does nothing.
        """
        ...

    def load(self) -> None:
        """Bring the weights back after `unload()` (no-op when already resident)."""
        ...
