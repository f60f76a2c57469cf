"""The engine's errors, written for the person in the chat.

    EngineError                  base: anything the engine reports to a user
    +-- Interrupted              a backend saw its cancel event and stopped (a user, a timeout, shutdown)
    +-- ModelNotAvailable        weights are not on disk (offline) or the id/path is wrong
    +-- OutOfMemory              the device ran out of memory; names the model and the need
    +-- BackendError             a remote LLM server failed (HTTP status, connection, stream)

CanvasError (canvas.py) covers invalid canvas code and is deliberately separate: it is about
what a model or user wrote, not about the machinery.

Two texts per error. str(e) is for the chat: it never holds a URL, a local path or a key (a
message that has one gets it shortened: a path to its last part, an address to "[address]", a
bearer token or key-shaped word to "[redacted]"). `e.detail` is for the operator's log: the full
message as the raiser wrote it, or the longer detail it passed (addresses, server bodies).
"""

from __future__ import annotations

import re

_URL = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s'\"`)<>]+", re.IGNORECASE)
# A path: starts at "/", "~/", "./" or "../" (not inside a word: "401/403", "and/or" stay), or a
# Windows drive; runs to a quote, space or bracket.
_PATH = re.compile(r"(?<![\w/.~-])(?:~|\.{1,2})?/[^\s'\"`,;()<>]+|\b[A-Za-z]:\\[^\s'\"`,;()<>]+")
_KEYS = re.compile(r"(?:\bBearer\s+|\bsk-)[A-Za-z0-9._~+/=-]+", re.IGNORECASE)


def user_text(message: str) -> str:
    """`message` without what a chat user must not see: addresses, local paths, keys."""
    message = _KEYS.sub("[redacted]", message)
    message = _URL.sub("[address]", message)

    def last_part(m: re.Match[str]) -> str:
        parts = [p for p in re.split(r"[/\\]", m.group()) if p not in ("", ".", "..", "~")]
        return f"\u2026/{parts[-1]}" if parts else "\u2026"

    return _PATH.sub(last_part, message)


class EngineError(Exception):
    """Base of every error the engine reports; str(e) is fit to show a chat user.

    `detail` is the fuller text for the log (defaults to the message as given).
    """

    def __init__(self, message: str = "", *, detail: str | None = None) -> None:
        self.detail = detail if detail is not None else message
        super().__init__(user_text(message))


class Interrupted(EngineError):
    """A backend stopped because its cancel event was set (the engine reports it as `jobs.Cancelled`)."""

    def __init__(self, message: str = "cancelled") -> None:
        super().__init__(message)


class ModelNotAvailable(EngineError):
    """`model` (and `detail`) keep the id or path as given; str(e) shows at most its last part."""

    def __init__(self, model: str, message: str, *, detail: str | None = None) -> None:
        self.model = model
        super().__init__(message, detail=detail)


class OutOfMemory(EngineError):
    def __init__(
        self, model: str, message: str, needed_bytes: int | None = None, *, detail: str | None = None
    ) -> None:
        self.model = model
        self.needed_bytes = needed_bytes
        super().__init__(message, detail=detail)


class BackendError(EngineError):
    def __init__(
        self, message: str, status: int | None = None, retryable: bool = False, *, detail: str | None = None
    ) -> None:
        self.status = status
        self.retryable = retryable
        super().__init__(message, detail=detail)
