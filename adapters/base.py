"""The port between chat platforms and the bot: plain data in, plain data out.

An adapter turns a platform event into `Incoming` (or `ButtonPress`) and calls the `Handler` the
bot implements; the bot answers with `Post`s that the adapter sends or edits, getting back
`MessageRef`s it links to the turn. Adapters own their platform's limits (text length, captions,
file sizes, edit pacing, escaping, mentions); the bot never sees a platform object.

This module must not import torch, the engine or any platform library.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

ButtonAction = Literal["seed", "rewrite", "hires", "retry", "cancel"]
BUTTON_ACTIONS: tuple[ButtonAction, ...] = ("seed", "rewrite", "hires", "retry", "cancel")
BUTTON_LABELS: Mapping[ButtonAction, str] = {
    "seed": "New seed",
    "rewrite": "Rewrite",
    "hires": "Higher resolution",
    "retry": "Retry",
    "cancel": "Cancel",
}


@dataclass(frozen=True)
class Attachment:
    """A file the user sent. `data` is fetched by the adapter (size-capped) before the bot sees it."""

    filename: str
    data: bytes
    mime: str = "application/octet-stream"


@dataclass(frozen=True)
class MessageRef:
    """Where a posted message lives, enough to edit it or link replies to it."""

    platform: str
    chat: str
    message_id: str
    thread: str = ""


@dataclass(frozen=True)
class Incoming:
    """A message for the bot: a prompt, an edit, canvas code, an image to continue from, or a command.

    `command` is the platform-neutral command name without its slash ("new", "cancel", "help",
    "settings", "undo", "seed", "size", "omost"); `text` then holds its arguments. `options` are
    structured command options (Discord slash-command options, console flags).
    """

    platform: str
    chat: str
    message_id: str
    user: str
    text: str
    thread: str = ""
    user_name: str = ""
    reply_to: str | None = None  # message id the user replied to, in the same chat
    attachments: tuple[Attachment, ...] = ()
    command: str | None = None
    options: Mapping[str, str] = field(default_factory=dict)
    private: bool = True  # a one-to-one chat (DM, private chat, the terminal)
    roles: tuple[str, ...] = ()  # platform roles or groups the user has, for access lists
    guild: str = ""  # the server the chat belongs to (a Discord guild id), for access lists


@dataclass(frozen=True)
class Button:
    action: ButtonAction
    turn_id: int

    @property
    def label(self) -> str:
        return BUTTON_LABELS[self.action]


@dataclass(frozen=True)
class ButtonPress:
    platform: str
    chat: str
    user: str
    action: str  # as the platform delivered it; the bot validates it
    turn_id: int
    message_id: str = ""
    thread: str = ""
    user_name: str = ""
    roles: tuple[str, ...] = ()
    guild: str = ""


@dataclass(frozen=True)
class OutFile:
    filename: str
    data: bytes
    mime: str
    path: str | None = None  # where the bot keeps it on disk, when it does (the terminal prints it)


Role = Literal["status", "preview", "image", "code", "text"]


@dataclass(frozen=True)
class Post:
    """What the bot wants shown. The adapter decides how (caption vs text, photo vs document).

    `image` is shown inline with `text` as its caption where the platform allows; `files` travel
    as documents; `buttons` go on the image (or on the text when there is no image).
    """

    text: str = ""
    image: OutFile | None = None
    files: tuple[OutFile, ...] = ()
    buttons: tuple[Button, ...] = ()
    role: Role = "text"
    reply_to: str | None = None  # reply to this message id (the user's request)
    turn_id: int | None = None  # the turn this post belongs to (the terminal labels posts with it)
    code: str = ""  # status posts while the model writes: the answer so far (the terminal streams it)
    progress: tuple[int, int] | None = None  # status posts while drawing: (step, steps)


class Handler(Protocol):
    """What the bot implements for the adapters."""

    async def on_message(self, adapter: Adapter, message: Incoming) -> None: ...

    async def on_button(self, adapter: Adapter, press: ButtonPress) -> None: ...


class Adapter(Protocol):
    platform: str
    min_edit_interval: float  # seconds between edits of one message the platform tolerates

    async def start(self, handler: Handler) -> None:
        """Connect and begin delivering events to `handler`; returns once running."""
        ...

    async def stop(self) -> None: ...

    async def send(self, chat: str, thread: str, post: Post) -> list[MessageRef]:
        """Post; returns every platform message made (e.g. the photo and the code document)."""
        ...

    async def edit(self, ref: MessageRef, post: Post) -> MessageRef:
        """Edit a text message in place. When it cannot be edited any more, send a new one and
        return its ref (the bot re-links it)."""
        ...

    async def delete(self, ref: MessageRef) -> None: ...
