"""A fake Telegram Bot API server on 127.0.0.1, for driving the real python-telegram-bot in tests.

It speaks the wire protocol that ../shared/TESTING.md describes: every call is
POST /bot<token>/<method> with form-encoded or multipart parameters, answered with
{"ok": true, "result": ...} or {"ok": false, "error_code": ..., "description": ...}; files come
back from GET /file/bot<token>/<file_path>. It keeps what a user would see: every chat's messages
(text, photos, documents, inline keyboards, edits, deletions) in order.

Driving it, as users would:
    user_message(...)     a user writes in a chat (private, group, forum topic), optionally replying
                          to a message, mentioning the bot, or attaching a document; returns its id
    press(...)            a user presses an inline button (a callback query)
Fault injection (the next call of a method gets it, before the call takes effect, so a retry is the
only way the call can succeed; nothing is half-done):
    fail(method, "429", retry_after=1) / fail(method, "500") / fail(method, "drop")
    fail(..., with_keyboard=True)   only calls carrying an inline keyboard (a result photo, not a
                                    layout preview) get it
    user_message(..., document=..., declared_size=N)   a document whose size Telegram reports as
                                    N bytes while its file is larger; `bytes_served` counts what
                                    each download really sent before the client hung up
    forget(chat, message_id)   the message disappears (a user deleted it): edits answer "not found"

getUpdates honours `offset` (earlier updates are confirmed and forgotten) and long-polls for at most
its `timeout` (capped at 2 s), so the server never holds a request for long and stops by itself.
It knows nothing of the bot: only the Bot API.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

TOKEN = "123456:TEST-token"
BOT_ID = 777000
BOT_USERNAME = "omost_test_bot"
MAX_LONG_POLL_S = 2.0

Json = dict[str, Any]


@dataclass
class ChatMessage:
    """One message in a chat, as the chat shows it now."""

    chat_id: int
    message_id: int
    sender: int  # user id; BOT_ID for the bot
    kind: str  # "text", "photo" or "document"
    text: str = ""  # the text, or the caption of a photo or document
    data: bytes = b""  # the photo or the document
    filename: str = ""
    thread: int | None = None
    reply_to: int | None = None
    keyboard: list[list[Json]] = field(default_factory=list)
    edits: int = 0
    edit_times: list[float] = field(default_factory=list)  # time.monotonic() of each edit
    shown: list[str] = field(default_factory=list)  # every text it showed, oldest first
    deleted: bool = False

    @property
    def buttons(self) -> list[str]:
        """callback_data of every inline button, row by row."""
        return [b.get("callback_data", "") for row in self.keyboard for b in row]

    @property
    def labels(self) -> list[str]:
        return [b.get("text", "") for row in self.keyboard for b in row]

    @property
    def rows(self) -> list[list[str]]:
        """The inline keyboard's labels as the chat lays them out, row by row."""
        return [[b.get("text", "") for b in row] for row in self.keyboard]


@dataclass
class Fault:
    kind: str  # "429", "500" or "drop"
    retry_after: int = 1
    with_keyboard: bool = False  # only for calls that carry an inline keyboard


class FakeTelegram:
    """The fake Bot API. `async with FakeTelegram() as tg:` then point the bot at `tg.base_url`."""

    def __init__(self, token: str = TOKEN) -> None:
        self.token = token
        self.base_url = ""
        self.chats: dict[int, Json] = {}
        self.messages: dict[int, list[ChatMessage]] = defaultdict(list)  # chat id -> in order
        self.calls: list[tuple[str, Json]] = []  # every method call that took effect
        self.faults_fired: list[tuple[str, str]] = []
        self.callback_answers: dict[str, Json] = {}
        self.commands: list[Json] = []
        self._faults: dict[str, deque[Fault]] = defaultdict(deque)
        self._updates: list[Json] = []
        self._update_ids = itertools.count(1)
        self._message_ids: dict[int, itertools.count[int]] = {}
        self._files: dict[str, tuple[str, bytes]] = {}  # file_id -> (file_path, data)
        self._declared: dict[str, int] = {}  # file_id -> the size Telegram claims, when it lies
        self.bytes_served: dict[str, int] = {}  # file_path -> bytes written by its last download
        self._file_ids = itertools.count(1)
        self._callback_ids = itertools.count(1)
        self._new_update = asyncio.Event()
        self._runner: web.AppRunner | None = None

    # --- lifecycle ----------------------------------------------------------------------------

    async def __aenter__(self) -> FakeTelegram:
        app = web.Application(client_max_size=64 * 2**20)
        app.router.add_post("/bot{token}/{method}", self._api)
        app.router.add_get("/bot{token}/{method}", self._api)
        app.router.add_get("/file/bot{token}/{path:.+}", self._download)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.base_url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._new_update.set()
        if self._runner is not None:
            await self._runner.cleanup()

    # --- users ---------------------------------------------------------------------------------

    def chat(self, chat_id: int, kind: str = "private", *, forum: bool = False, title: str = "") -> Json:
        chat = self.chats.get(chat_id)
        if chat is None:
            chat = {"id": chat_id, "type": kind}
            if kind != "private":
                chat["title"] = title or f"group {chat_id}"
            if forum:
                chat["is_forum"] = True
            self.chats[chat_id] = chat
        return chat

    def user_message(
        self,
        chat_id: int,
        text: str = "",
        *,
        user: int | None = None,
        user_name: str = "Alice",
        chat_type: str = "private",
        reply_to: int | None = None,
        thread: int | None = None,
        document: tuple[str, bytes, str] | None = None,
        photo: bytes | None = None,
        pre: bool = False,
        declared_size: int | None = None,
    ) -> int:
        """A user writes; returns the message id. Commands and @mentions get their entities as
        Telegram sends them; `pre=True` marks the whole text as a code block (Telegram strips the
        ``` a user types and sends a "pre" entity instead). `thread` is a forum topic id."""
        chat = self.chat(chat_id, chat_type, forum=thread is not None)
        sender = user if user is not None else chat_id
        message_id = self._next_id(chat_id)
        message: Json = {
            "message_id": message_id,
            "date": int(time.time()),
            "chat": chat,
            "from": {"id": sender, "is_bot": False, "first_name": user_name, "username": user_name.lower()},
        }
        entities = _entities(text, pre)
        if document is not None or photo is not None:
            if text:
                message["caption"] = text
                if entities:
                    message["caption_entities"] = entities
        else:
            message["text"] = text
            if entities:
                message["entities"] = entities
        if document is not None:
            filename, data, mime = document
            file_id = self._store_file(f"documents/{filename}", data)
            if declared_size is not None:
                self._declared[file_id] = declared_size
            message["document"] = {
                "file_id": file_id,
                "file_unique_id": f"u{file_id}",
                "file_name": filename,
                "mime_type": mime,
                "file_size": self._declared.get(file_id, len(data)),
            }
        if photo is not None:
            file_id = self._store_file("photos/photo.jpg", photo)
            message["photo"] = [
                {"file_id": file_id, "file_unique_id": f"u{file_id}", "width": 90, "height": 90}
            ]
        if thread is not None:
            message["message_thread_id"] = thread
            message["is_topic_message"] = True
            # in a topic, a message that replies to nothing replies to the topic's first message
            message["reply_to_message"] = self._message_json(chat_id, reply_to or thread, topic_root=thread)
        elif reply_to is not None:
            message["reply_to_message"] = self._message_json(chat_id, reply_to)
        self.messages[chat_id].append(
            ChatMessage(chat_id, message_id, sender, "text", text, thread=thread, reply_to=reply_to)
        )
        self._push({"message": message})
        return message_id

    def press(self, chat_id: int, message_id: int, data: str, *, user: int | None = None) -> str:
        """A user presses an inline button with `data` on `message_id`; returns the query id."""
        query_id = f"q{next(self._callback_ids)}"
        sender = user if user is not None else chat_id
        self._push(
            {
                "callback_query": {
                    "id": query_id,
                    "from": {"id": sender, "is_bot": False, "first_name": "Alice"},
                    "chat_instance": f"ci{chat_id}",
                    "data": data,
                    "message": self._message_json(chat_id, message_id),
                }
            }
        )
        return query_id

    def fail(
        self, method: str, kind: str, *, retry_after: int = 1, times: int = 1, with_keyboard: bool = False
    ) -> None:
        for _ in range(times):
            self._faults[method].append(Fault(kind, retry_after, with_keyboard))

    def forget(self, chat_id: int, message_id: int) -> None:
        self.find(chat_id, message_id).deleted = True

    # --- what the chats show ---------------------------------------------------------------------

    def bot_messages(self, chat_id: int, thread: int | None = None) -> list[ChatMessage]:
        return [
            m
            for m in self.messages[chat_id]
            if m.sender == BOT_ID and not m.deleted and (thread is None or m.thread == thread)
        ]

    def find(self, chat_id: int, message_id: int) -> ChatMessage:
        for m in self.messages[chat_id]:
            if m.message_id == message_id:
                return m
        raise KeyError(f"no message {message_id} in chat {chat_id}")

    async def wait_for(self, condition: Callable[[], bool], timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError("the fake Telegram never reached the expected state")
            await asyncio.sleep(0.02)

    @property
    def pending_updates(self) -> int:
        return len(self._updates)

    # --- the Bot API ------------------------------------------------------------------------------

    async def _api(self, request: web.Request) -> web.StreamResponse:
        if request.match_info["token"] != self.token:
            return _error(401, "Unauthorized")
        method = request.match_info["method"]
        params = await _params(request)
        fault = self._faults[method][0] if self._faults[method] else None
        if fault is not None and fault.with_keyboard and not params.get("reply_markup"):
            fault = None
        if fault is not None:
            self._faults[method].popleft()
            self.faults_fired.append((method, fault.kind))
            if fault.kind == "drop":
                # the connection dies before any answer: the client sees a protocol error
                assert request.transport is not None
                request.transport.abort()
                raise ConnectionResetError("dropped by the fake")
            if fault.kind == "429":
                return _error(
                    429,
                    f"Too Many Requests: retry after {fault.retry_after}",
                    {"retry_after": fault.retry_after},
                )
            return _error(500, "Internal Server Error")
        handler = getattr(self, f"_m_{method}", None)
        if handler is None:
            return _error(404, "Not Found: method not found")
        try:
            result = handler(params) if method != "getUpdates" else await self._m_getUpdates(params)
        except _ApiError as e:
            return _error(400, e.description)
        if method != "getUpdates":
            self.calls.append((method, {k: v for k, v in params.items() if not isinstance(v, bytes)}))
        return web.json_response({"ok": True, "result": result})

    async def _download(self, request: web.Request) -> web.StreamResponse:
        if request.match_info["token"] != self.token:
            return web.Response(status=401)
        path = request.match_info["path"]
        for file_path, data in self._files.values():
            if file_path == path:
                return await self._stream(request, path, data)
        return web.Response(status=404)

    async def _stream(self, request: web.Request, path: str, data: bytes) -> web.StreamResponse:
        """The file in 64 KiB chunks (no Content-Length), counting what was really sent."""
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        await response.prepare(request)
        self.bytes_served[path] = 0
        try:
            for start in range(0, len(data), 65536):
                await response.write(data[start : start + 65536])
                self.bytes_served[path] += len(data[start : start + 65536])
            await response.write_eof()
        except (ConnectionResetError, ConnectionError):
            pass  # the client stopped reading: what was sent is counted
        return response

    def _m_getMe(self, params: Json) -> Json:
        return {
            "id": BOT_ID,
            "is_bot": True,
            "first_name": "Omost",
            "username": BOT_USERNAME,
            "can_join_groups": True,
            "can_read_all_group_messages": False,  # privacy mode on, as by default
            "supports_inline_queries": False,
        }

    def _m_deleteWebhook(self, params: Json) -> bool:
        return True

    def _m_setMyCommands(self, params: Json) -> bool:
        self.commands = json.loads(params.get("commands", "[]"))
        return True

    def _m_close(self, params: Json) -> bool:
        return True

    async def _m_getUpdates(self, params: Json) -> list[Json]:
        offset = int(params.get("offset") or 0)
        self._updates = [u for u in self._updates if u["update_id"] >= offset]  # confirmed ones go
        timeout = min(float(params.get("timeout") or 0), MAX_LONG_POLL_S)
        if not self._updates and timeout > 0:
            self._new_update.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._new_update.wait(), timeout)
        limit = int(params.get("limit") or 100)
        return self._updates[:limit]

    def _m_sendMessage(self, params: Json) -> Json:
        text = str(params.get("text", ""))
        if not text.strip():
            raise _ApiError("Bad Request: message text is empty")
        if len(text) > 4096:
            raise _ApiError("Bad Request: message is too long")
        return self._post(params, "text", text)

    def _m_sendPhoto(self, params: Json) -> Json:
        data = params.get("photo")
        if not isinstance(data, bytes) or not data:
            raise _ApiError("Bad Request: there is no photo in the request")
        return self._post(params, "photo", self._caption(params), data, "photo.png")

    def _m_sendDocument(self, params: Json) -> Json:
        data = params.get("document")
        if not isinstance(data, bytes):
            raise _ApiError("Bad Request: there is no document in the request")
        return self._post(
            params, "document", self._caption(params), data, str(params.get("document_filename", "file"))
        )

    def _m_editMessageText(self, params: Json) -> Json:
        chat_id, message_id = int(params["chat_id"]), int(params["message_id"])
        try:
            message = self.find(chat_id, message_id)
        except KeyError:
            message = None
        if message is None or message.deleted:
            raise _ApiError("Bad Request: message to edit not found")
        if message.sender != BOT_ID:
            raise _ApiError("Bad Request: message can't be edited")
        if message.kind != "text":
            raise _ApiError("Bad Request: there is no text in the message to edit")
        text = str(params.get("text", ""))
        if len(text) > 4096:
            raise _ApiError("Bad Request: MESSAGE_TOO_LONG")
        keyboard = _keyboard(params)
        if text == message.text and keyboard == message.keyboard:
            raise _ApiError(
                "Bad Request: message is not modified: specified new message content and reply "
                "markup are exactly the same as a current content and reply markup of the message"
            )
        message.text, message.keyboard = text, keyboard
        message.shown.append(text)
        message.edits += 1
        message.edit_times.append(time.monotonic())
        return self._message_json(chat_id, message_id)

    def _m_deleteMessage(self, params: Json) -> bool:
        try:
            message = self.find(int(params["chat_id"]), int(params["message_id"]))
        except KeyError:
            raise _ApiError("Bad Request: message to delete not found") from None
        message.deleted = True
        return True

    def _m_answerCallbackQuery(self, params: Json) -> bool:
        query_id = str(params["callback_query_id"])
        if query_id in self.callback_answers:
            raise _ApiError(
                "Bad Request: query is too old and response timeout expired or query ID is invalid"
            )
        self.callback_answers[query_id] = params
        return True

    def _m_getFile(self, params: Json) -> Json:
        file_id = str(params["file_id"])
        if file_id not in self._files:
            raise _ApiError("Bad Request: invalid file_id")
        path, data = self._files[file_id]
        return {
            "file_id": file_id,
            "file_unique_id": f"u{file_id}",
            "file_size": self._declared.get(file_id, len(data)),
            "file_path": path,
        }

    # --- helpers -----------------------------------------------------------------------------------

    def _caption(self, params: Json) -> str:
        caption = str(params.get("caption", ""))
        if len(caption) > 1024:
            raise _ApiError("Bad Request: message caption is too long")
        return caption

    def _post(self, params: Json, kind: str, text: str, data: bytes = b"", filename: str = "") -> Json:
        chat_id = int(params["chat_id"])
        if chat_id not in self.chats:
            raise _ApiError("Bad Request: chat not found")
        thread = int(params["message_thread_id"]) if params.get("message_thread_id") else None
        reply_to = None
        if params.get("reply_parameters"):
            reply = json.loads(params["reply_parameters"])
            reply_to = int(reply["message_id"])
            if not any(m.message_id == reply_to for m in self.messages[chat_id]) and not reply.get(
                "allow_sending_without_reply"
            ):
                raise _ApiError("Bad Request: message to be replied not found")
        message = ChatMessage(
            chat_id,
            self._next_id(chat_id),
            BOT_ID,
            kind,
            text,
            data,
            filename,
            thread,
            reply_to,
            _keyboard(params),
        )
        message.shown.append(text)
        self.messages[chat_id].append(message)
        return self._message_json(chat_id, message.message_id)

    def _message_json(self, chat_id: int, message_id: int, *, topic_root: int | None = None) -> Json:
        chat = self.chat(chat_id)
        found = next((m for m in self.messages[chat_id] if m.message_id == message_id), None)
        if found is None or (topic_root is not None and message_id == topic_root):
            # a message from before the fake's time, or a forum topic's creation message
            out: Json = {"message_id": message_id, "date": 0, "chat": chat}
            if topic_root is not None and message_id == topic_root:
                out["forum_topic_created"] = {"name": f"topic {topic_root}", "icon_color": 7322096}
                out["message_thread_id"] = topic_root
            return out
        sender = (
            {"id": BOT_ID, "is_bot": True, "first_name": "Omost", "username": BOT_USERNAME}
            if found.sender == BOT_ID
            else {"id": found.sender, "is_bot": False, "first_name": "Alice"}
        )
        out = {"message_id": message_id, "date": int(time.time()), "chat": chat, "from": sender}
        if found.kind == "text":
            out["text"] = found.text
        else:
            if found.text:
                out["caption"] = found.text
            if found.kind == "photo":
                file_id = self._store_file(f"photos/{message_id}.png", found.data)
                out["photo"] = [
                    {"file_id": file_id, "file_unique_id": f"u{file_id}", "width": 64, "height": 64}
                ]
            else:
                file_id = self._store_file(f"documents/{found.filename}", found.data)
                out["document"] = {
                    "file_id": file_id,
                    "file_unique_id": f"u{file_id}",
                    "file_name": found.filename,
                    "file_size": len(found.data),
                }
        if found.thread is not None:
            out["message_thread_id"] = found.thread
            out["is_topic_message"] = True
        if found.keyboard:
            out["reply_markup"] = {"inline_keyboard": found.keyboard}
        return out

    def _next_id(self, chat_id: int) -> int:
        counter = self._message_ids.setdefault(chat_id, itertools.count(1))
        return next(counter)

    def _store_file(self, path: str, data: bytes) -> str:
        file_id = f"f{next(self._file_ids)}"
        self._files[file_id] = (path, data)
        return file_id

    def _push(self, update: Json) -> None:
        update["update_id"] = next(self._update_ids)
        self._updates.append(update)
        self._new_update.set()


class _ApiError(Exception):
    def __init__(self, description: str) -> None:
        super().__init__(description)
        self.description = description


def _error(code: int, description: str, parameters: Json | None = None) -> web.Response:
    body: Json = {"ok": False, "error_code": code, "description": description}
    if parameters:
        body["parameters"] = parameters
    return web.json_response(body, status=code)


async def _params(request: web.Request) -> Json:
    """Form fields as strings and uploads as bytes (an upload's filename as <name>_filename)."""
    out: Json = {}
    if request.content_type == "application/json":
        raw = await request.json()
        return {k: v if isinstance(v, str) else json.dumps(v) for k, v in raw.items()}
    form = await request.post()
    for key, value in form.items():
        if isinstance(value, web.FileField):
            out[key] = value.file.read()
            out[f"{key}_filename"] = value.filename
        else:
            out[key] = str(value)
    # PTB sends an upload as attach://<name> when it is part of a media group; single uploads
    # arrive under their own field name, which is all this fake needs
    return out


def _keyboard(params: Json) -> list[list[Json]]:
    raw = params.get("reply_markup")
    if not raw:
        return []
    markup = json.loads(raw)
    rows: list[list[Json]] = markup.get("inline_keyboard", [])
    for row in rows:
        for button in row:
            if not {"callback_data", "url"} & button.keys():
                raise _ApiError("Bad Request: text buttons are unallowed in the inline keyboard")
            data = button.get("callback_data", "")
            if len(data.encode("utf-8")) > 64:
                raise _ApiError("Bad Request: BUTTON_DATA_INVALID")
    return rows


def _entities(text: str, pre: bool) -> list[Json]:
    """The entities Telegram attaches: a leading /command, @mentions, or one code block."""
    if pre:
        return [{"type": "pre", "offset": 0, "length": _utf16_len(text), "language": "python"}]
    entities: list[Json] = []
    if text.startswith("/"):
        command = text.split(maxsplit=1)[0]
        entities.append({"type": "bot_command", "offset": 0, "length": _utf16_len(command)})
    position = 0
    for word in text.split(" "):
        if word.startswith("@") and len(word) > 1:
            entities.append(
                {"type": "mention", "offset": _utf16_len(text[:position]), "length": _utf16_len(word)}
            )
        position += len(word) + 1
    return entities


def _utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2
