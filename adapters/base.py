"""The port between chat platforms and the bot: plain data in, plain data out.

An adapter turns a platform event into `Incoming` (or `ButtonPress`) and calls the `Handler` the
bot implements; the bot answers with `Post`s that the adapter sends or edits, getting back
`MessageRef`s it links to the turn. Adapters own their platform's limits (text length, captions,
file sizes, escaping, mentions) and declare how fast one message may be edited
(`edit_interval`); the bot paces its edits to that, in one place (bot/turns/status.py).

Besides the data, this module holds the few things every adapter needs the same way, so each is
written once: the button codec (`omost:<action>:<turn id>`), text clipping and a bounded memory.

This module must not import torch, the engine or any platform library.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Generic, Literal, Protocol, TypeVar

ButtonAction = Literal["seed", "rewrite", "hires", "vary", "zoom", "retry", "cancel"]
BUTTON_ACTIONS: tuple[ButtonAction, ...] = ("seed", "rewrite", "hires", "vary", "zoom", "retry", "cancel")
BUTTON_LABELS: Mapping[ButtonAction, str] = {
    "seed": "New seed",
    "rewrite": "Rewrite",
    "hires": "Higher resolution",
    "vary": "Vary region",
    "zoom": "Zoom out",
    "retry": "Retry",
    "cancel": "Cancel",
}


class PlatformStartError(RuntimeError):
    """An adapter could not start (the platform never became ready); str() names the platform and
    what happened, for the operator's one-line start-up error."""

    def __init__(self, platform: str, message: str) -> None:
        self.platform = platform
        super().__init__(message)


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
    structured command options (Discord slash-command options, a settings keyboard's value,
    console flags such as `turn`). `answer_in_place` is an adapter's own id of something the
    bot's reply should answer in place rather than as a new message (a Discord interaction, the
    Telegram settings keyboard that was pressed): the bot copies it to its reply's `in_place`.
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
    answer_in_place: str = ""


@dataclass(frozen=True)
class Button:
    action: ButtonAction
    turn_id: int

    @property
    def label(self) -> str:
        return BUTTON_LABELS[self.action]


@dataclass(frozen=True)
class Choice:
    """One option of a pick-one question the bot asks (e.g. which region to vary): pressing it is a
    ButtonPress of `action` on `turn_id` carrying `value`. Telegram shows the options as an inline
    keyboard, Discord as a select menu, the terminal as typed commands (`/vary N`)."""

    action: ButtonAction
    turn_id: int
    value: str
    label: str


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
    value: str = ""  # the picked Choice's value ("" for a plain button)


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
    `settings_keyboard` asks for the platform's settings controls under the text (Telegram's
    inline keyboard; platforms with their own settings command ignore it). `in_place` answers
    an `Incoming.answer_in_place` in place.
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
    settings_keyboard: bool = False
    in_place: str = ""
    choices: tuple[Choice, ...] = ()  # a pick-one question under the text (see Choice)


class Handler(Protocol):
    """What the bot implements for the adapters."""

    async def on_message(self, adapter: Adapter, message: Incoming) -> None: ...

    async def on_button(self, adapter: Adapter, press: ButtonPress) -> str | None:
        """Handle a press; returns a short answer for the presser alone (shown privately: a
        Telegram callback answer, a Discord ephemeral message), or None when there is none."""
        ...


class Adapter(Protocol):
    platform: str

    def edit_interval(self, chat: str) -> float:
        """Seconds between two edits of one message in `chat` that the platform tolerates."""
        ...

    async def start(self, handler: Handler) -> None:
        """Connect and begin delivering events to `handler`; returns once running."""
        ...

    async def stop(self) -> None: ...

    async def send(self, chat: str, thread: str, post: Post) -> list[MessageRef]:
        """Post; returns every platform message made (e.g. the photo and the code document)."""
        ...

    async def edit(self, ref: MessageRef, post: Post) -> MessageRef:
        """Edit a text message in place, now. When it cannot be edited any more, send a new one and
        return its ref (the bot re-links it)."""
        ...


# --- the button codec -----------------------------------------------------------------------------

BUTTON_PREFIX = "omost"
BUTTON_PATTERN = rf"{BUTTON_PREFIX}:(?P<action>[a-z]+):(?P<turn>\d+)(?::(?P<value>[0-9a-z.]{{1,16}}))?"
"""What a button's platform id looks like (Discord's DynamicItem template matches it): a Choice
adds its value as a fourth part."""


def encode_button(button: Button | Choice) -> str:
    """`omost:<action>:<turn id>[:<value>]`: names the turn, so a press works after any restart.
    Telegram's callback data allows 64 bytes: the longest action, a 64-bit turn id and a 16-character
    value take 44."""
    if isinstance(button, Choice):
        return f"{BUTTON_PREFIX}:{button.action}:{button.turn_id}:{button.value}"
    return f"{BUTTON_PREFIX}:{button.action}:{button.turn_id}"


def decode_button(data: str) -> tuple[ButtonAction, int] | None:
    """(action, turn id) from `omost:<action>:<turn id>`, or None for anything else (a Choice's
    data: see `decode_choice`)."""
    decoded = decode_choice(data)
    return (decoded[0], decoded[1]) if decoded is not None and not decoded[2] else None


def decode_choice(data: str) -> tuple[ButtonAction, int, str] | None:
    """(action, turn id, value) from a button's or a Choice's data ("" value for a button)."""
    m = re.fullmatch(BUTTON_PATTERN, data)
    if m is None:
        return None
    for action in BUTTON_ACTIONS:
        if action == m["action"]:
            return action, int(m["turn"]), m["value"] or ""
    return None


# --- text clipping --------------------------------------------------------------------------------


def clip_text(text: str, limit: int) -> tuple[str, bool]:
    """`text` within `limit` characters, cut at a line or word end with "…"; (text, was it cut)."""
    if len(text) <= limit:
        return text, False
    head = text[: limit - 1]
    for sep in ("\n", " "):
        at = head.rfind(sep)
        if at > limit * 0.6:
            head = head[:at]
            break
    return head.rstrip() + "…", True


def clipped(text: str, limit: int) -> str:
    """`clip_text` when only the text matters."""
    return clip_text(text, limit)[0]


# --- bounded memory -------------------------------------------------------------------------------

K = TypeVar("K")
V = TypeVar("V")


class BoundedMap(Generic[K, V]):
    """A dict that remembers at most `size` keys, forgetting the least recently set first: what an
    adapter remembers about messages and events it has seen, without growing for ever."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("a BoundedMap holds at least one key")
        self._items: OrderedDict[K, V] = OrderedDict()
        self.size = size

    def __setitem__(self, key: K, value: V) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.size:
            self._items.popitem(last=False)

    def __getitem__(self, key: K) -> V:
        return self._items[key]

    def get(self, key: K, default: V | None = None) -> V | None:
        return self._items.get(key, default)

    def pop(self, key: K, default: V | None = None) -> V | None:
        return self._items.pop(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[K]:
        return iter(self._items)

    def first_time(self, key: K, value: V) -> bool:
        """Remember `key`; True if it was not remembered before (to drop replayed events)."""
        if key in self._items:
            return False
        self[key] = value
        return True
