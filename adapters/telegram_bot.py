"""Telegram: the bot in private chats, groups and forum topics, through python-telegram-bot 22.

Owns everything Telegram-shaped between the Bot API and the port in adapters/base.py:
- which messages are for the bot: in private chats any text; in groups only commands (/omost
  prompt), @mentions and replies to the bot's own messages (all of which reach a bot with privacy
  mode on); forum topics are threads of their own (`thread` = the topic id, "" elsewhere);
- translating them: commands (/new /start /help /cancel /settings /undo /omost), the replied-to
  message (a topic's root message is not a reply), code blocks (Telegram strips the ``` a user
  types and sends a "pre" entity; they are put back), documents (.py canvases, the bot's PNGs)
  streamed with a size cap (the declared size is only a claim: the download stops at the
  limit), button presses (callback data `omost:<action>:<turn id>`, which names the turn, so
  buttons keep working after a restart; the codec is the port's), a question's choices (one
  inline-keyboard row each, data `omost:<action>:<turn id>:<value>`: a press is a ButtonPress
  carrying the value) and the settings keyboard (`set:<key>=<value>`, which becomes the /settings
  command with that option, answered by editing the keyboard's message in place);
- Telegram's limits: captions 1024 characters and texts 4096 (cut, with the full text sent as a
  file or a follow-up message), callback data 64 bytes, photos 10 MB (larger ones go as documents),
  how often one message may be edited (`edit_interval`: about once a second in private chats and
  once every few seconds in groups; the bot paces its edits to it), flood control and transient
  failures (below).
Per chat (and topic) updates are handled in order; different chats run concurrently, and nothing
waits for a render (the bot only starts a turn).

It must not know torch, the engine or the bot package: it only translates.

Errors, and what happens to each (python-telegram-bot's hierarchy):

    TelegramError
    ├── RetryAfter (429)     AIORateLimiter waits retry_after and retries; past its retries `_call`
    │                        waits and retries too, a bounded number of times
    ├── NetworkError         5xx answers, dropped connections: `_call` retries with backoff. The
    │   ├── TimedOut         fake and Telegram both fail such calls before they take effect, so a
    │   │                    retry does not duplicate; a read timeout after Telegram accepted a
    │   │                    message could, so timeouts are generous
    │   └── BadRequest       never retried. "message is not modified": the edit is a no-op;
    │                        "message to edit not found" / "can't be edited": a new message is sent
    └── Forbidden            (the user blocked the bot, the bot left the group) never retried
Whatever escapes while handling an update goes to the Application's one error handler, `_on_error`,
which logs it and tells the chat, briefly, that the message could not be handled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
from telegram import (
    BotCommand,
    CallbackQuery,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    InputFile,
    Message,
    MessageEntity,
    ReplyParameters,
    Update,
)
from telegram.error import BadRequest, Forbidden, NetworkError, RetryAfter, TelegramError
from telegram.ext import AIORateLimiter, Application, ContextTypes, TypeHandler

from adapters.base import (
    Attachment,
    Button,
    ButtonPress,
    Choice,
    Handler,
    Incoming,
    MessageRef,
    OutFile,
    Post,
    clip_text,
    clipped,
    decode_choice,
    encode_button,
)

log = logging.getLogger(__name__)

PLATFORM = "telegram"
TEXT_LIMIT = 4096
CAPTION_LIMIT = 1024
CALLBACK_DATA_LIMIT = 64  # bytes
PHOTO_LIMIT = 10 * 1024 * 1024
DOWNLOAD_LIMIT = 20 * 1024 * 1024  # the Bot API's getFile limit
DOWNLOAD_CHUNK = 64 * 1024
DOWNLOAD_TIMEOUT_S = 120.0  # one document download, start to end
SETTINGS_PREFIX = "set"
CHOICE_LABEL_LIMIT = 64  # a phone shows about one line of a button; the rest would be cut anyway

# Which buttons share a keyboard row (consecutive ones of a group do). Five buttons on one row
# leave each a few letters wide on a phone, so a result's buttons take two rows; Retry and Cancel,
# which end or restart a turn, stand alone.
BUTTON_ROWS: dict[str, str] = {
    "seed": "remake",
    "rewrite": "remake",
    "hires": "remake",
    "vary": "edit",
    "zoom": "edit",
    "retry": "retry",
    "cancel": "cancel",
}

COMMANDS: dict[str, str] = {
    "omost": "Draw a picture: /omost a lighthouse in a storm",
    "new": "Start a new conversation",
    "settings": "Show or change your size, steps, seed and hires",
    "cancel": "Cancel your running or queued picture",
    "undo": "Step back to the previous picture",
    "help": "How to use the bot",
    "start": "How to use the bot",
}
READABLE_DOCUMENTS = (".py", ".txt", ".png")

# The settings keyboard: rows of (label, "key=value"). Sizes are SDXL's usual aspect buckets.
SETTINGS_KEYBOARD: tuple[tuple[tuple[str, str], ...], ...] = (
    (("Portrait 896x1152", "size=896x1152"), ("Square 1024", "size=1024x1024")),
    (("Landscape 1152x896", "size=1152x896"), ("Wide 1216x832", "size=1216x832")),
    (("20 steps", "steps=20"), ("25 steps", "steps=25"), ("30 steps", "steps=30")),
    (("Random seed", "seed=random"), ("Hires off", "hires=off"), ("Hires 1.5x", "hires=1.5")),
    (("PNG file on", "png=on"), ("PNG file off", "png=off")),
)

T = TypeVar("T")


async def _download_capped(url: str, limit: int) -> bytes | None:
    """A file's bytes, read in chunks and abandoned as soon as they pass `limit` (None then).
    A local Bot API server hands out file paths instead of URLs."""
    if not url.startswith(("http://", "https://")):
        path = Path(url)
        if path.stat().st_size > limit:
            return None
        return await asyncio.to_thread(path.read_bytes)
    buffer = bytearray()
    async with (
        asyncio.timeout(DOWNLOAD_TIMEOUT_S),
        httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=10.0)) as client,
        client.stream("GET", url) as response,
    ):
        response.raise_for_status()
        async for chunk in response.aiter_bytes(DOWNLOAD_CHUNK):
            buffer += chunk
            if len(buffer) > limit:
                return None  # leaving the block closes the connection: the rest is never read
    return bytes(buffer)


class AdapterStopped(RuntimeError):
    """A post after stop(): the Bot API client is closed."""


def _progress_bar(step: int, total: int, width: int = 12) -> str:
    filled = round(width * step / max(1, total))
    return "▰" * filled + "▱" * (width - filled)


def _status_text(post: Post) -> str:
    text = post.text
    if post.progress is not None:
        step, total = post.progress
        text = f"{text}\n{_progress_bar(step, total)}"
    return text


class TelegramAdapter:
    """The Telegram side of the port; `start(handler)` polls."""

    platform = PLATFORM

    def __init__(
        self,
        token: str,
        *,
        base_url: str = "https://api.telegram.org",
        private_edit_interval: float = 1.0,
        group_edit_interval: float = 3.0,
        poll_timeout: float = 10.0,
        max_download_bytes: int = DOWNLOAD_LIMIT,
        retries: int = 5,
        retry_delay: float = 0.5,
        rate_limiter_retries: int = 3,
    ) -> None:
        self.private_edit_interval = private_edit_interval
        self.group_edit_interval = group_edit_interval
        self.poll_timeout = poll_timeout
        self.max_download_bytes = max_download_bytes
        self.retries = retries
        self.retry_delay = retry_delay
        root = base_url.rstrip("/")
        self.application: Application[Any, Any, Any, Any, Any, Any] = (
            Application.builder()
            .token(token)
            .base_url(f"{root}/bot")
            .base_file_url(f"{root}/file/bot")
            .rate_limiter(AIORateLimiter(max_retries=rate_limiter_retries))
            .connect_timeout(10)
            .read_timeout(30)
            .write_timeout(30)
            .media_write_timeout(60)
            .pool_timeout(10)
            .build()
        )
        self.application.add_handler(TypeHandler(Update, self._on_update))
        self.application.add_error_handler(self._on_error)
        self._handler: Handler | None = None
        self._ready_lock = asyncio.Lock()
        self._stopped = False
        self._bot_id = 0
        self._username = ""
        self._chat_queues: dict[str, deque[Callable[[], Awaitable[None]]]] = {}
        self._chat_queue_tasks: set[asyncio.Task[None]] = set()

    def edit_interval(self, chat: str) -> float:
        """Telegram tolerates about one edit a second of a message in a private chat and fewer in
        groups (whose ids are negative)."""
        return self.group_edit_interval if chat.startswith("-") else self.private_edit_interval

    # --- lifecycle ------------------------------------------------------------------------------

    async def _ready(self) -> None:
        """Initialise the Bot API client (getMe) once; posts may come before start() (a restart
        resumes turns first)."""
        if self._stopped:
            raise AdapterStopped("the Telegram adapter has stopped")
        if self._bot_id:
            return
        async with self._ready_lock:
            if not self._bot_id:
                await self._call(self.application.initialize)
                me = self.application.bot
                self._bot_id, self._username = me.id, me.username or ""

    async def start(self, handler: Handler) -> None:
        self._handler = handler
        await self._ready()
        await self.application.start()
        updater = self.application.updater
        if updater is None:
            raise RuntimeError("the Telegram application was built without an updater")
        await updater.start_polling(
            timeout=timedelta(seconds=self.poll_timeout),
            allowed_updates=[Update.MESSAGE, Update.CALLBACK_QUERY],
            bootstrap_retries=3,
        )
        try:
            await self._call(
                self.application.bot.set_my_commands,
                [BotCommand(name, about) for name, about in COMMANDS.items() if name != "start"],
            )
        except TelegramError:
            log.warning("could not set the bot's command list", exc_info=True)
        log.info("Telegram: polling as @%s", self._username)

    async def stop(self) -> None:
        if self._stopped:
            return
        updater = self.application.updater
        if updater is not None and updater.running:
            await updater.stop()
        # updates already taken are handled (briefly)
        if self._chat_queue_tasks:
            _, late = await asyncio.wait(list(self._chat_queue_tasks), timeout=5)
            for task in late:
                task.cancel()
        self._stopped = True
        if self.application.running:
            await self.application.stop()
        await self.application.shutdown()

    # --- incoming ---------------------------------------------------------------------------------

    async def _on_update(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """Each chat (and forum topic) gets its own queue: in order there, concurrent across chats."""
        if update.callback_query is not None:
            query = update.callback_query
            message = query.message
            chat = str(message.chat.id) if message is not None else f"user{query.from_user.id}"
            thread = _thread(message) if isinstance(message, Message) else ""
            self._enqueue(f"{chat}/{thread}", update, lambda: self._on_callback(query))
        elif update.message is not None:
            msg = update.message
            self._enqueue(f"{msg.chat.id}/{_thread(msg)}", update, lambda: self._on_message(msg))

    def _enqueue(self, key: str, update: Update, work: Callable[[], Awaitable[None]]) -> None:
        async def guarded() -> None:
            try:
                await work()
            except Exception as e:  # handed to the one error handler, never lost silently
                await self.application.process_error(update, e)

        queue = self._chat_queues.get(key)
        if queue is not None:
            queue.append(guarded)
            return
        queue = self._chat_queues[key] = deque([guarded])
        task = asyncio.create_task(self._drain(key, queue))
        self._chat_queue_tasks.add(task)
        task.add_done_callback(self._chat_queue_tasks.discard)

    async def _drain(self, key: str, queue: deque[Callable[[], Awaitable[None]]]) -> None:
        try:
            while queue:
                await queue[0]()
                queue.popleft()
        finally:
            self._chat_queues.pop(key, None)

    async def _on_error(self, update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        """The one error handler: log, and tell the chat briefly when a message could not be handled."""
        error = context.error
        log.error("Telegram: handling %s failed", _describe_update(update), exc_info=error)
        if not isinstance(update, Update) or update.effective_chat is None or self._stopped:
            return
        if isinstance(error, Forbidden):
            return  # blocked or removed: nobody to tell
        chat = update.effective_chat.id
        thread = _thread(update.effective_message) if update.effective_message is not None else ""
        with contextlib.suppress(Exception):
            await self.send(
                str(chat), thread, Post(text="Sorry, I could not handle that message. Please try again.")
            )

    async def _on_message(self, msg: Message) -> None:
        handler = self._handler
        sender = msg.from_user
        if handler is None or sender is None or sender.is_bot:
            return
        read = self._read_message(msg)
        log.debug(
            "Telegram: message %s from user %s in chat %s (%s)%s",
            msg.message_id,
            sender.id,
            msg.chat.id,
            msg.chat.type,
            "" if read is not None else ", not for the bot",
        )
        if read is None:
            return
        command, text, reply_to = read
        attachments = await self._attachments(msg)
        if attachments is None:
            return  # refused, and the user was told why
        if command is None and not text and not attachments:
            return  # a sticker, a voice note, a bare mention with nothing else: nothing to draw
        await handler.on_message(
            self,
            Incoming(
                platform=PLATFORM,
                chat=str(msg.chat.id),
                message_id=str(msg.message_id),
                user=str(sender.id),
                user_name=sender.full_name,
                text=text,
                thread=_thread(msg),
                reply_to=reply_to,
                attachments=attachments,
                command=command,
                private=msg.chat.type == "private",
            ),
        )

    def _read_message(self, msg: Message) -> tuple[str | None, str, str | None] | None:
        """(command, text, replied-to message id) of a message for the bot; None when it is not
        for the bot (in a group: no command of ours, no mention, no reply to the bot)."""
        private = msg.chat.type == "private"
        text = _restore_code_blocks(msg, msg.text if msg.text is not None else (msg.caption or ""))
        entities = list(msg.entities or msg.caption_entities or ())
        command: str | None = None
        addressed = private
        if entities and entities[0].type == MessageEntity.BOT_COMMAND and entities[0].offset == 0:
            token = (
                msg.parse_entity(entities[0])
                if msg.text is not None
                else msg.parse_caption_entity(entities[0])
            )
            name, _, target = token[1:].partition("@")
            if target and target.lower() != self._username.lower():
                return None  # a command for another bot
            command = name.lower()
            if not private and not target and command not in COMMANDS:
                return None  # a bare command in a group: probably another bot's
            addressed = True
            text = text[len(token) :].strip()
        mention = self._mentions_me(msg)
        if mention is not None:
            addressed = True
            text = text.replace(mention, " ").strip() if mention else text
            text = re.sub(r"[ \t]{2,}", " ", text)
        reply_to: str | None = None
        replied = msg.reply_to_message
        if replied is not None and not _is_topic_root(msg, replied):
            reply_to = str(replied.message_id)
            addressed = addressed or (replied.from_user is not None and replied.from_user.id == self._bot_id)
        return (command, text, reply_to) if addressed else None

    async def _attachments(self, msg: Message) -> tuple[Attachment, ...] | None:
        """The message's document as an attachment (none: ()); None when it was refused, after
        telling the user why."""
        chat, thread, here = str(msg.chat.id), _thread(msg), str(msg.message_id)
        if msg.photo and msg.document is None:
            text = (
                "Telegram compressed that picture, which drops the canvas stored in it. "
                "Send my PNG as a file (📎 → File) and I'll continue from it."
            )
            await self.send(chat, thread, Post(text=text, reply_to=here))
            return None
        if msg.document is None:
            return ()
        attachment, problem = await self._fetch_document(msg)
        if problem:
            await self.send(chat, thread, Post(text=problem, reply_to=here))
            return None
        return (attachment,) if attachment is not None else ()

    def _mentions_me(self, msg: Message) -> str | None:
        """The mention of this bot in the message (its text, "" for a text_mention), or None."""
        entities = msg.parse_entities() if msg.text is not None else msg.parse_caption_entities()
        for entity, value in entities.items():
            if entity.type == MessageEntity.MENTION and value[1:].lower() == self._username.lower():
                return value
            if (
                entity.type == MessageEntity.TEXT_MENTION
                and entity.user is not None
                and entity.user.id == self._bot_id
            ):
                return value
        return None

    async def _fetch_document(self, msg: Message) -> tuple[Attachment | None, str]:
        """The document as an Attachment (size-capped), or a problem to tell the user.

        The size Telegram declares is checked first; the download is then streamed and stopped
        at the limit, since a declared size is only a claim: a file larger than that is never
        read whole."""
        document = msg.document
        if document is None:
            return None, ""
        name = document.file_name or "file"
        mime = document.mime_type or "application/octet-stream"
        if not (name.lower().endswith(READABLE_DOCUMENTS) or mime == "image/png"):
            return None, "I can read canvas code (.py) and PNGs I made; send one of those."
        limit = min(self.max_download_bytes, DOWNLOAD_LIMIT)
        too_large = f"That file is too large (the limit is {limit // 2**20} MB)."
        if document.file_size is not None and document.file_size > limit:
            return None, too_large
        file = await self._call(self.application.bot.get_file, document.file_id)
        if file.file_size is not None and file.file_size > limit:
            return None, too_large
        try:
            data = await _download_capped(file.file_path or "", limit)
        except (httpx.HTTPError, OSError, TimeoutError) as e:
            # the error's text holds the file URL, and so the token: the log gets its kind only
            log.warning("Telegram: a document download failed (%s)", type(e).__name__)
            return None, "I could not download that file from Telegram; please send it again."
        if data is None:
            return None, too_large
        return Attachment(filename=name, data=data, mime=mime), ""

    async def _on_callback(self, query: CallbackQuery) -> None:
        handler = self._handler
        data = query.data or ""
        message = query.message
        if handler is None:
            return
        if message is None:
            await self._answer(query, "That message is too old; send your request again.")
            return
        if data.startswith(f"{SETTINGS_PREFIX}:"):
            await self._on_settings_press(handler, query, message, data[len(SETTINGS_PREFIX) + 1 :])
            return
        # Telegram never delivers more than 64 bytes; anything longer was not made by this bot
        parsed = decode_choice(data) if len(data.encode("utf-8")) <= CALLBACK_DATA_LIMIT else None
        if parsed is None:
            await self._answer(query, "That button is not one I know.")
            return
        action, turn_id, value = parsed
        user = query.from_user
        answer: str | None = None
        try:
            answer = await handler.on_button(
                self,
                ButtonPress(
                    platform=PLATFORM,
                    chat=str(message.chat.id),
                    user=str(user.id),
                    action=action,
                    turn_id=turn_id,
                    message_id=str(message.message_id),
                    thread=_thread(message) if isinstance(message, Message) else "",
                    user_name=user.full_name,
                    value=value,
                ),
            )
        finally:  # the answer is shown to the presser alone
            await self._answer(query, answer or "On it…")

    async def _on_settings_press(
        self, handler: Handler, query: CallbackQuery, message: Any, setting: str
    ) -> None:
        """A settings keyboard press (`key=value`): the /settings command with that option,
        answered by editing the keyboard's message in place."""
        await self._answer(query, "Saving…")
        key, _, value = setting.partition("=")
        user = query.from_user
        await handler.on_message(
            self,
            Incoming(
                platform=PLATFORM,
                chat=str(message.chat.id),
                message_id="",  # a press, not a message: nothing to reply to or link
                user=str(user.id),
                user_name=user.full_name,
                text="",
                thread=_thread(message) if isinstance(message, Message) else "",
                command="settings",
                options={key: value},
                private=message.chat.type == "private",
                answer_in_place=str(message.message_id),  # the keyboard shows the new settings
            ),
        )

    async def _answer(self, query: CallbackQuery, text: str) -> None:
        try:
            await self._call(query.answer, text)
        except BadRequest:  # answered too late (over 15 s): the press is still handled
            log.info("Telegram: callback query %s expired before it was answered", query.id)

    # --- the port: posting ------------------------------------------------------------------------

    async def send(self, chat: str, thread: str, post: Post) -> list[MessageRef]:
        await self._ready()
        reply_to = post.reply_to if post.reply_to and post.reply_to.isdigit() else None
        markup = self._settings_markup() if post.settings_keyboard else self._markup(post)
        if post.in_place.isdigit() and post.image is None:  # e.g. the pressed settings keyboard
            return [await self._edit_now(MessageRef(PLATFORM, chat, post.in_place, thread), post, markup)]
        refs: list[MessageRef] = []
        if post.image is not None:
            caption, was_cut = clip_text(post.text, CAPTION_LIMIT)
            refs.append(await self._send_image(chat, thread, post.image, caption, markup, reply_to))
            if was_cut:  # the whole text follows the picture
                refs += await self._send_text(chat, thread, post.text, None, None)
        elif post.text.strip():
            refs += await self._send_text(chat, thread, _status_text(post), markup, reply_to)
        for file in post.files:
            refs.append(await self._send_document(chat, thread, file, "", None, None))
        return refs

    async def _send_text(
        self,
        chat: str,
        thread: str,
        text: str,
        markup: InlineKeyboardMarkup | None,
        reply_to: str | None,
    ) -> list[MessageRef]:
        """A text message; over 4096 characters it is cut and the whole text follows as a file."""
        shown, was_cut = clip_text(text, TEXT_LIMIT - 40)
        if was_cut:
            shown += "\n(the full text is in the file below)"
        message = await self._call(
            self.application.bot.send_message,
            chat_id=int(chat),
            text=shown,
            reply_markup=markup,
            **self._where(thread, reply_to),
        )
        refs = [self._ref(message, thread)]
        if was_cut:
            full = OutFile("message.txt", text.encode("utf-8"), "text/plain")
            refs.append(await self._send_document(chat, thread, full, "", None, None))
        return refs

    async def _send_image(
        self,
        chat: str,
        thread: str,
        image: OutFile,
        caption: str,
        markup: InlineKeyboardMarkup | None,
        reply_to: str | None,
    ) -> MessageRef:
        if len(image.data) > PHOTO_LIMIT:  # too big for a photo: it goes as a file
            return await self._send_document(chat, thread, image, caption, markup, reply_to)
        message = await self._call(
            self.application.bot.send_photo,
            chat_id=int(chat),
            photo=InputFile(image.data, filename=image.filename),
            caption=caption or None,
            reply_markup=markup,
            **self._where(thread, reply_to),
        )
        return self._ref(message, thread)

    async def _send_document(
        self,
        chat: str,
        thread: str,
        file: OutFile,
        caption: str,
        markup: InlineKeyboardMarkup | None,
        reply_to: str | None,
    ) -> MessageRef:
        message = await self._call(
            self.application.bot.send_document,
            chat_id=int(chat),
            document=InputFile(file.data, filename=file.filename),
            caption=caption or None,
            reply_markup=markup,
            disable_content_type_detection=True,
            **self._where(thread, reply_to),
        )
        return self._ref(message, thread)

    @staticmethod
    def _where(thread: str, reply_to: str | None) -> dict[str, Any]:
        where: dict[str, Any] = {}
        if thread:
            where["message_thread_id"] = int(thread)
        if reply_to is not None:
            where["reply_parameters"] = ReplyParameters(int(reply_to), allow_sending_without_reply=True)
        return where

    @staticmethod
    def _ref(message: Message, thread: str) -> MessageRef:
        return MessageRef(PLATFORM, str(message.chat.id), str(message.message_id), thread)

    @staticmethod
    def _markup(post: Post) -> InlineKeyboardMarkup | None:
        """The inline keyboard: a question's choices one a row (a list to pick from), then the
        buttons in their rows (`BUTTON_ROWS`)."""
        rows = [[_choice_button(choice)] for choice in post.choices]
        rows += [
            [InlineKeyboardButton(b.label, callback_data=_callback_data(b)) for b in row]
            for row in button_rows(post.buttons)
        ]
        return InlineKeyboardMarkup(rows) if rows else None

    @staticmethod
    def _settings_markup() -> InlineKeyboardMarkup:
        return InlineKeyboardMarkup(
            [
                [
                    InlineKeyboardButton(label, callback_data=f"{SETTINGS_PREFIX}:{value}")
                    for label, value in row
                ]
                for row in SETTINGS_KEYBOARD
            ]
        )

    # --- the port: editing ------------------------------------------------------------------------

    async def edit(self, ref: MessageRef, post: Post) -> MessageRef:
        """Edit now (the bot paces its edits to `edit_interval`). Returns where the message lives
        now: a new message when the old one could not be edited."""
        await self._ready()
        return await self._edit_now(ref, post, self._markup(post))

    async def _edit_now(self, ref: MessageRef, post: Post, markup: InlineKeyboardMarkup | None) -> MessageRef:
        text, _ = clip_text(_status_text(post), TEXT_LIMIT)
        try:
            await self._call(
                self.application.bot.edit_message_text,
                chat_id=int(ref.chat),
                message_id=int(ref.message_id),
                text=text,
                reply_markup=markup,
            )
            return ref
        except BadRequest as e:
            reason = str(e).lower()
            if "not modified" in reason:
                return ref
            if any(
                s in reason
                for s in ("message to edit not found", "can't be edited", "no text in the message")
            ):
                log.info("Telegram: %s cannot be edited (%s); sending a new message", ref, e)
                message = await self._call(
                    self.application.bot.send_message,
                    chat_id=int(ref.chat),
                    text=text,
                    reply_markup=markup,
                    **self._where(ref.thread, None),
                )
                return self._ref(message, ref.thread)
            raise

    # --- calling the Bot API ----------------------------------------------------------------------

    async def _call(self, method: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """Call the Bot API, retrying flood control (after AIORateLimiter's own retries) and
        transient network failures with backoff; never a BadRequest or Forbidden."""
        delay = self.retry_delay
        for attempt in range(self.retries + 1):
            try:
                return await method(*args, **kwargs)
            except RetryAfter as e:
                if attempt == self.retries:
                    raise
                wait = e._retry_after.total_seconds() + 0.1  # as AIORateLimiter reads it
                log.warning("Telegram: flood control, waiting %.1f s", wait)
                await asyncio.sleep(wait)
            except BadRequest:
                raise
            except NetworkError as e:
                if attempt == self.retries or self._stopped:
                    raise
                log.warning("Telegram: %s; retrying in %.1f s", e, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
        raise AssertionError("unreachable")  # the loop returns or raises


def button_rows(buttons: Sequence[Button]) -> list[list[Button]]:
    """The buttons in keyboard rows, in their order: consecutive buttons of one `BUTTON_ROWS`
    group share a row."""
    rows: list[list[Button]] = []
    last = ""
    for button in buttons:
        group = BUTTON_ROWS.get(button.action, button.action)
        if rows and group == last:
            rows[-1].append(button)
        else:
            rows.append([button])
        last = group
    return rows


def _choice_button(choice: Choice) -> InlineKeyboardButton:
    label = clipped(" ".join(choice.label.split()), CHOICE_LABEL_LIMIT) or choice.value  # never blank
    return InlineKeyboardButton(label, callback_data=_callback_data(choice))


def _callback_data(button: Button | Choice) -> str:
    """The button's callback data; a value the codec cannot read back (or over 64 bytes) is the
    bot's mistake, refused here rather than shown as a button that does nothing."""
    data = encode_button(button)
    if len(data.encode("utf-8")) > CALLBACK_DATA_LIMIT:
        raise ValueError(f"callback data over {CALLBACK_DATA_LIMIT} bytes: {data!r}")
    if decode_choice(data) is None:
        raise ValueError(f"callback data the button codec cannot read back: {data!r}")
    return data


def _thread(message: Any) -> str:
    """A forum topic's id ("" outside topics: replies in ordinary groups carry a thread id too)."""
    if isinstance(message, Message) and message.is_topic_message and message.message_thread_id:
        return str(message.message_thread_id)
    return ""


def _is_topic_root(msg: Message, replied: Message) -> bool:
    """In a forum topic, a message that replies to nothing 'replies' to the topic's first message."""
    return bool(
        replied.forum_topic_created is not None
        or (msg.is_topic_message and replied.message_id == msg.message_thread_id)
    )


def _restore_code_blocks(msg: Message, text: str) -> str:
    """Telegram turns ```python ... ``` into a "pre" entity and drops the backticks; put them back."""
    entities = msg.parse_entities([MessageEntity.PRE]) if msg.text is not None else {}
    for entity, code in entities.items():
        language = entity.language or ""
        text = text.replace(code, f"```{language}\n{code}\n```", 1)
    return text


def _describe_update(update: object) -> str:
    if isinstance(update, Update):
        chat = update.effective_chat.id if update.effective_chat else "?"
        return f"update {update.update_id} in chat {chat}"
    return repr(update)
