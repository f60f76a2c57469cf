"""What the store keeps, as values: conversations, turns and their lifecycle, message links, and
the store's errors. Plain data only; bot/store.py reads and writes them.

Errors:

    StoreError               base
    +-- TurnNotFound         no turn with that id
    +-- InvalidTransition    a status change the lifecycle does not allow (e.g. done -> running)
    +-- ImagePathError       an image path outside the data directory (or no data directory)
    +-- DatabaseUnusable     the database file cannot be opened (not a database, damaged, locked,
                             unreadable); its message names the file and what to do, on one line
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import Any

# --- errors -----------------------------------------------------------------------------------


class StoreError(Exception):
    """Something the store refuses or cannot find."""


class TurnNotFound(StoreError):
    def __init__(self, turn_id: int) -> None:
        self.turn_id = turn_id
        super().__init__(f"there is no turn #{turn_id}")


class InvalidTransition(StoreError):
    def __init__(self, turn_id: int, current: TurnStatus, wanted: TurnStatus) -> None:
        self.turn_id = turn_id
        self.current = current
        self.wanted = wanted
        super().__init__(f"turn #{turn_id} is {current.value}; it cannot become {wanted.value}")


class ImagePathError(StoreError):
    pass


class DatabaseUnusable(StoreError):
    """The database file cannot be used at all. The message is complete on its own (the file, what
    is wrong with it, what to do), so a command line can print it as its one line."""

    def __init__(self, path: str, problem: str, advice: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"the database {path} {problem}: {advice}")


# --- values -----------------------------------------------------------------------------------


class TurnKind(StrEnum):
    COMPOSE = "compose"  # the LLM writes a canvas, then it is rendered
    RENDER = "render"  # the parent's canvas rendered again (new seed, higher resolution)
    USER_CANVAS = "user_canvas"  # the user wrote the canvas code; the LLM is skipped


class TurnStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (TurnStatus.DONE, TurnStatus.FAILED, TurnStatus.CANCELLED)


ALLOWED_TRANSITIONS: dict[TurnStatus, frozenset[TurnStatus]] = {
    TurnStatus.QUEUED: frozenset({TurnStatus.RUNNING, TurnStatus.FAILED, TurnStatus.CANCELLED}),
    # running -> queued: a turn caught running by a crash is put back in the queue on restart.
    TurnStatus.RUNNING: frozenset(
        {TurnStatus.DONE, TurnStatus.FAILED, TurnStatus.CANCELLED, TurnStatus.QUEUED}
    ),
    # done is final: a turn's result is announced once. New seeds and rewrites are new turns.
    TurnStatus.DONE: frozenset(),
    # A Retry button may put a failed or cancelled turn back in the queue.
    TurnStatus.FAILED: frozenset({TurnStatus.QUEUED}),
    TurnStatus.CANCELLED: frozenset({TurnStatus.QUEUED}),
}


class LinkRole(StrEnum):
    """What a posted platform message is to its turn."""

    USER = "user"  # the person's own message that started the turn
    STATUS = "status"  # the bot's "queued / writing / step 12 of 25" message, edited in place
    PREVIEW = "preview"  # the layout preview
    IMAGE = "image"  # the result image
    CODE = "code"  # the canvas code file


class SettingsScope(StrEnum):
    USER = "user"
    CHAT = "chat"


@dataclass(frozen=True)
class Conversation:
    id: int
    platform: str
    chat: str
    thread: str
    created_at: float


@dataclass(frozen=True)
class Turn:
    id: int
    conversation_id: int
    parent_id: int | None
    kind: TurnKind
    owner: str
    user_text: str
    assistant_text: str | None
    canvas_code: str | None
    status: TurnStatus
    error: str | None
    seed: int | None
    params: Mapping[str, Any]
    image_path: str | None
    """Relative to the data directory (posix separators); see Store.image_file."""
    created_at: float
    updated_at: float
    announcing_at: float | None = None
    """When the result post was last attempted and may have gone out; NULL when no post is under way
    or the last one surely failed. With no image link, a set mark means: it may have been posted."""


@dataclass(frozen=True)
class MessageLink:
    platform: str
    chat: str
    message_id: str
    turn_id: int
    role: LinkRole


LinkSpec = tuple[str, str, "str | int", "LinkRole | str"]
"""A message to link to a turn: (platform, chat, message id, role)."""


class _Unset(Enum):
    UNSET = 0


UNSET = _Unset.UNSET
"""update_turn's "leave this column as it is" (None means: set it to NULL)."""
