"""The engine's errors, written for the person in the chat.

    EngineError                  base: anything the engine reports to a user
    +-- Interrupted              a backend saw its cancel event and stopped (a user, a timeout, shutdown)
    +-- ModelNotAvailable        weights are not on disk (offline) or the id/path is wrong
    +-- OutOfMemory              the device ran out of memory; names the model and the need
    +-- BackendError             a remote LLM server failed (HTTP status, connection, stream)

CanvasError (canvas.py) covers invalid canvas code and is deliberately separate: it is about
what a model or user wrote, not about the machinery.
"""

from __future__ import annotations


class EngineError(Exception):
    """Base of every error the engine reports; str(e) is fit to show a chat user."""


class Interrupted(EngineError):
    """A backend stopped because its cancel event was set (the engine reports it as `jobs.Cancelled`)."""

    def __init__(self, message: str = "cancelled") -> None:
        super().__init__(message)


class ModelNotAvailable(EngineError):
    def __init__(self, model: str, message: str) -> None:
        self.model = model
        super().__init__(message)


class OutOfMemory(EngineError):
    def __init__(self, model: str, message: str, needed_bytes: int | None = None) -> None:
        self.model = model
        self.needed_bytes = needed_bytes
        super().__init__(message)


class BackendError(EngineError):
    def __init__(self, message: str, status: int | None = None, retryable: bool = False) -> None:
        self.status = status
        self.retryable = retryable
        super().__init__(message)
