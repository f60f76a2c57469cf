"""From a chat message to what a turn needs: where it continues from, and what it draws.

- `Resolver.parent`: the conversation and parent turn of a message: the turn named by `>N`, else
  the turn linked to the replied-to message, else the thread's head (its latest turn, unless
  /undo moved the head back), else a new conversation.
- `Resolver.undo`: move a thread's head back one turn.
- `canvas_source`: canvas code the user sent (a ```python block, bare code, a .py file) or a
  picture of ours to continue from (its canvas and settings are in its PNG text).

Problems raise `UserError` with the reply; nothing returns an error string.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from adapters.base import Incoming
from bot.store import Conversation, Store, Turn
from bot.turns.errors import UserError
from bot.turns.settings import SettingsBook
from omost_engine.canvas import CanvasError
from omost_engine.canvas_code import find_code
from omost_engine.render.base import RenderParams
from omost_engine.render.metadata import PictureRefused, read_png_metadata_async

MAX_ATTACHMENT_BYTES = 20 * 1024 * 1024
PICTURE_READ_TIMEOUT_S = 5.0


def chat_key(message: Incoming) -> str:
    """Whose chat settings apply: the chat, or the thread within it."""
    return f"{message.chat}/{message.thread}" if message.thread else message.chat


class Resolver:
    def __init__(self, store: Store, book: SettingsBook) -> None:
        self.store = store
        self.book = book

    async def parent(self, message: Incoming) -> tuple[Conversation, Turn | None]:
        explicit = message.options.get("turn")
        if explicit is not None:
            return await self._named_turn(message, explicit)
        if message.reply_to:
            found = await self.store.message_turn(message.platform, message.chat, message.reply_to)
            if found is not None:
                return found[1], found[0]
        conversation, latest = await self.store.conversation_head(
            message.platform, message.chat, message.thread
        )
        if conversation is None:
            conversation = await self.store.get_or_create_conversation(
                message.platform, message.chat, message.thread
            )
        return conversation, await self._head(conversation, latest, message)

    async def _named_turn(self, message: Incoming, named: str) -> tuple[Conversation, Turn]:
        if not named.isdigit():
            raise UserError(f"“{named}” is not a turn number.")
        found = await self.store.turn_in_conversation(int(named))
        if found is None or (found[1].platform, found[1].chat) != (message.platform, message.chat):
            raise UserError(f"There is no turn {named} in this chat.")
        return found[1], found[0]

    async def _head(self, conversation: Conversation, latest: Turn | None, message: Incoming) -> Turn | None:
        """The thread's latest turn, unless /undo moved the head back (and nothing came since)."""
        head = (await self.book.layer("chat", message.platform, chat_key(message))).get("head")
        if (
            latest is not None
            and isinstance(head, dict)
            and head.get("conversation") == conversation.id
            and head.get("after") == latest.id
        ):
            turn_id = head.get("turn")
            return await self.store.find_turn(turn_id) if isinstance(turn_id, int) else None
        return latest

    async def undo(self, message: Incoming) -> str:
        conversation, latest = await self.store.conversation_head(
            message.platform, message.chat, message.thread
        )
        head = await self._head(conversation, latest, message) if conversation is not None else None
        if conversation is None or latest is None or head is None:
            return "Nothing to undo."
        parent_id = head.parent_id
        await self.book.save(
            "chat",
            message.platform,
            chat_key(message),
            {"head": {"conversation": conversation.id, "turn": parent_id, "after": latest.id}},
        )
        if parent_id is None:
            return f"Undid turn {head.id}: your next message starts a new picture."
        return f"Undid turn {head.id}: your next message continues from turn {parent_id}."


# --- what the user sent to draw -----------------------------------------------------------------


@dataclass(frozen=True)
class PictureOfOurs:
    """One of the bot's PNGs, sent back to continue from: its canvas, settings and bytes."""

    code: str
    params: RenderParams
    data: bytes


@dataclass(frozen=True)
class CanvasSource:
    """Canvas code the user wrote (drawn without the model), or a picture of ours."""

    code: str | None = None
    picture: PictureOfOurs | None = None


async def canvas_source(message: Incoming) -> CanvasSource:
    """What the message gives to draw besides its words (an empty source when nothing). A picture
    is read off the event loop, from its text chunks only, with a time bound."""
    for attachment in message.attachments:
        if len(attachment.data) > MAX_ATTACHMENT_BYTES:
            raise UserError(f"That file is too large (the limit is {MAX_ATTACHMENT_BYTES // 2**20} MB).")
        name = attachment.filename.lower()
        if name.endswith((".py", ".txt")):
            try:
                return CanvasSource(code=attachment.data.decode("utf-8"))
            except UnicodeDecodeError:
                raise UserError("That file is not UTF-8 text.") from None
        if name.endswith(".png") or attachment.mime == "image/png":
            try:
                restored = await read_png_metadata_async(attachment.data, timeout_s=PICTURE_READ_TIMEOUT_S)
            except PictureRefused as e:
                raise UserError(str(e)) from None
            except (CanvasError, OSError, ValueError) as e:
                raise UserError(f"I couldn't read the canvas in that picture: {e}") from None
            if restored is None:
                raise UserError("That picture has no canvas in it: only images I made can be continued.")
            return CanvasSource(picture=PictureOfOurs(restored.code, restored.params, attachment.data))
    return CanvasSource(code=code_in_text(message.text))


def code_in_text(text: str) -> str | None:
    """The canvas code the user wrote in a message, if any (a ```python block or bare code)."""
    if "```" not in text and not re.search(r"^\s*canvas\s*=\s*Canvas\(\)", text, re.M):
        return None
    try:
        return find_code(text).code
    except CanvasError:
        return text if "Canvas()" in text else None
