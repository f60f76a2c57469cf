"""A fake Discord on loopback: the REST API and the gateway websocket, enough for discord.py 2.x.

The real discord.py talks to it (see ../shared/TESTING.md): `serve()` points `discord.http.Route.BASE`
and `DiscordWebSocket.DEFAULT_GATEWAY` here and restores them on exit.

What it speaks:
- REST (JSON answered with Content-Type exactly `application/json`): the start-up calls, sending,
  editing and deleting channel messages (JSON or multipart with files), threads from a message or
  from a channel, fetching a channel, interaction callbacks, and the interaction webhooks (followups,
  @original), which answer 401 once a token is made invalid (`expire_token`), as Discord does after
  15 minutes. Message creation honours `nonce` + `enforce_nonce`: a retried send returns the message
  already made, as Discord does.
- Gateway: HELLO, heartbeat ACKs, IDENTIFY -> READY + GUILD_CREATE, RESUME -> the missed events and
  RESUMED, and RECONNECT on request. Events sent while the bot is away are kept and replayed on
  resume, so nothing is lost.

Permissions: the bot's permissions per channel are channel overwrites (`deny`, announced with
CHANNEL_UPDATE so discord.py's cache knows them too); threads inherit their parent's. Sending files
without Attach Files or embeds without Embed Links answers 403 Missing Permissions (50013), and so
does creating a thread without Create Public Threads.

Components are checked as Discord checks them (rows, buttons, select menus and their options:
400 Invalid Form Body, code 50035, otherwise). `press(...)` presses a button and `select(...)`
picks options in a select menu, each only if the message shows it.

Every REST call is recorded (`calls`). Faults are queued with `fail(...)`: a 429 with retry_after
(with the `Via` header Discord's edge adds, so discord.py treats it as a rate limit, not a ban), a 500
before the work is done, or a 500 after it (the message exists but the bot never heard so).

It must not know the bot: it serves whatever discord.py asks, as Discord would.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import mimetypes
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import discord
import discord.http
import yarl
from aiohttp import BodyPartReader, WSMsgType, web
from discord.gateway import DiscordWebSocket

BOT_ID = 900000000000000001
APP_ID = 900000000000000002
GUILD_ID = 900000000000000100
CHANNEL_ID = 900000000000000101  # a guild text channel
OTHER_CHANNEL_ID = 900000000000000102  # a text channel where the bot may not create threads
ADMINISTRATOR = 1 << 3  # would override every channel overwrite
EMBED_LINKS = 1 << 14
ATTACH_FILES = 1 << 15
EVERYONE_PERMISSIONS = ((1 << 53) - 1) & ~ADMINISTRATOR  # everything else
NO_THREADS = EVERYONE_PERMISSIONS & ~((1 << 35) | (1 << 36))  # minus create public/private threads


_ERRORS = {403: ("Missing Access", 50001), 404: ("Unknown Message", 10008)}  # status -> (message, code)


def _now() -> str:
    return datetime.now(UTC).isoformat()


@dataclass
class Call:
    method: str
    path: str
    json: Any = None
    files: list[tuple[str, bytes]] = field(default_factory=list)
    status: int = 200
    at: float = field(default_factory=time.monotonic)


@dataclass
class Fault:
    method: str
    path: re.Pattern[str]
    status: int
    retry_after: float = 0.0
    after_effect: bool = False  # 500 only: do the work, then answer 500


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    # discord.py parses JSON only when Content-Type is exactly application/json
    return web.Response(
        body=json.dumps(data).encode(),
        status=status,
        headers={"Content-Type": "application/json", **(headers or {})},
    )


class FakeDiscord:
    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.messages: dict[int, dict[str, Any]] = {}
        self.channels: dict[int, dict[str, Any]] = {}
        self.commands: dict[str, list[dict[str, Any]]] = {}  # "global" or guild id -> registered
        self.expired_tokens: set[str] = set()
        self.faults: list[Fault] = []
        self.bytes_served: dict[str, int] = {}  # attachment id -> bytes its last download sent
        self.identifies = 0
        self.resumes = 0
        self._ids = itertools.count(int(time.time() * 1000) << 22)  # snowflake-shaped, increasing
        self._nonces: dict[tuple[int, str], int] = {}
        self._events: list[tuple[int, str, Any]] = []  # (seq, type, data), for resume
        self._seq = 0
        self._ws: web.WebSocketResponse | None = None
        self._session = "fake-session"
        self._runner: web.AppRunner | None = None
        self.base = ""
        self.bot_user = {
            "id": str(BOT_ID),
            "username": "omost",
            "discriminator": "0",
            "avatar": None,
            "bot": True,
            "global_name": "Omost",
        }
        self._add_channel(CHANNEL_ID, "drawing", EVERYONE_PERMISSIONS)
        self._add_channel(OTHER_CHANNEL_ID, "no-threads", NO_THREADS)

    # --- set-up --------------------------------------------------------------------------------

    def _add_channel(self, channel_id: int, name: str, permissions: int) -> None:
        self.channels[channel_id] = {
            "id": str(channel_id),
            "type": 0,
            "guild_id": str(GUILD_ID),
            "name": name,
            "position": 0,
            "permission_overwrites": [],
            "nsfw": False,
            "parent_id": None,
            "rate_limit_per_user": 0,
            "topic": None,
            "last_message_id": None,
            "_permissions": EVERYONE_PERMISSIONS,
        }
        if permissions != EVERYONE_PERMISSIONS:
            self._overwrite(channel_id, EVERYONE_PERMISSIONS & ~permissions)

    def _overwrite(self, channel_id: int, denied: int) -> None:
        channel = self.channels[channel_id]
        channel["_permissions"] &= ~denied
        channel["permission_overwrites"] = [
            {
                "id": str(BOT_ID),
                "type": 1,
                "allow": "0",
                "deny": str(EVERYONE_PERMISSIONS & ~channel["_permissions"]),
            }
        ]

    async def deny(self, channel_id: int, permissions: int) -> None:
        """A server admin takes `permissions` (bits) from the bot in a channel and its threads:
        a member overwrite, announced with CHANNEL_UPDATE; REST then answers 403 where they matter."""
        self._overwrite(channel_id, permissions)
        await self._send_event("CHANNEL_UPDATE", self._public(self.channels[channel_id]))

    async def start(self) -> str:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/gateway", self._gateway)
        app.router.add_get("/attachments/{id}/{name}", self._attachment)
        app.router.add_route("*", "/api/v10/{tail:.*}", self._rest)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.base = f"http://127.0.0.1:{port}"
        return self.base

    async def stop(self) -> None:
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self._ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    def fail(
        self,
        method: str,
        path: str,
        status: int,
        *,
        retry_after: float = 0.0,
        after_effect: bool = False,
        times: int = 1,
    ) -> None:
        """The next `times` matching calls fail (path is a regex searched in the URL path)."""
        for _ in range(times):
            self.faults.append(Fault(method, re.compile(path), status, retry_after, after_effect))

    def expire_token(self, token: str) -> None:
        self.expired_tokens.add(token)

    def new_id(self) -> int:
        return next(self._ids)

    # --- gateway -------------------------------------------------------------------------------

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self._ws = ws
        await ws.send_str(json.dumps({"op": 10, "d": {"heartbeat_interval": 45000}, "s": None, "t": None}))
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                payload = json.loads(msg.data)
                op = payload.get("op")
                if op == 1:
                    await ws.send_str(json.dumps({"op": 11}))
                elif op == 2:
                    self.identifies += 1
                    self._events.clear()
                    self._seq = 0
                    await self._send_event("READY", self._ready())
                    await self._send_event("GUILD_CREATE", self._guild())
                elif op == 6:
                    self.resumes += 1
                    seq = payload["d"].get("seq") or 0
                    for s, t, d in list(self._events):
                        if s > seq:
                            await ws.send_str(json.dumps({"op": 0, "s": s, "t": t, "d": d}))
                    await self._send_event("RESUMED", {})
        finally:
            if self._ws is ws:
                self._ws = None
        return ws

    async def _send_event(self, t: str, d: Any) -> None:
        self._seq += 1
        self._events.append((self._seq, t, d))
        ws = self._ws
        if ws is not None and not ws.closed:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await ws.send_str(json.dumps({"op": 0, "s": self._seq, "t": t, "d": d}))

    async def reconnect(self) -> None:
        """Ask the bot to reconnect (op 7), as Discord does when it moves a session."""
        if self._ws is not None:
            await self._ws.send_str(json.dumps({"op": 7, "d": None}))

    async def drop(self) -> None:
        """Drop the connection without a word (the bot resumes and gets what it missed)."""
        if self._ws is not None:
            await self._ws.close(code=4000)

    def _ready(self) -> dict[str, Any]:
        return {
            "v": 10,
            "user": self.bot_user,
            "guilds": [{"id": str(GUILD_ID), "unavailable": True}],
            "session_id": self._session,
            "resume_gateway_url": f"{self.base.replace('http', 'ws')}/gateway",
            "application": {"id": str(APP_ID), "flags": 0},
            "shard": [0, 1],
        }

    def _guild(self) -> dict[str, Any]:
        channels = [self._public(c) for c in self.channels.values() if c["type"] == 0]
        # like Discord: only active threads; an archived one is unknown to a freshly started bot
        threads = [
            self._public(c)
            for c in self.channels.values()
            if c["type"] == 11 and not c["thread_metadata"]["archived"]
        ]
        return {
            "id": str(GUILD_ID),
            "name": "Test guild",
            "owner_id": "1",
            "member_count": 2,
            "large": False,
            "roles": [
                {
                    "id": str(GUILD_ID),
                    "name": "@everyone",
                    "permissions": str(EVERYONE_PERMISSIONS),
                    "position": 0,
                    "color": 0,
                    "hoist": False,
                    "managed": False,
                    "mentionable": False,
                }
            ],
            "channels": channels,
            "threads": threads,
            "members": [
                {
                    "user": self.bot_user,
                    "roles": [],
                    "joined_at": _now(),
                    "deaf": False,
                    "mute": False,
                    "flags": 0,
                }
            ],
            "emojis": [],
            "stickers": [],
            "features": [],
            "unavailable": False,
        }

    @staticmethod
    def _public(channel: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in channel.items() if not k.startswith("_")}

    # --- events a user causes ------------------------------------------------------------------

    def user(self, user_id: int = 1001, name: str = "alice") -> dict[str, Any]:
        return {
            "id": str(user_id),
            "username": name,
            "discriminator": "0",
            "avatar": None,
            "global_name": name,
        }

    def _member(self, user: dict[str, Any], roles: list[str]) -> dict[str, Any]:
        return {
            "user": user,
            "roles": roles,
            "joined_at": _now(),
            "deaf": False,
            "mute": False,
            "permissions": str(EVERYONE_PERMISSIONS),
            "flags": 0,
        }

    async def slash(
        self,
        name: str,
        options: dict[str, Any] | None = None,
        *,
        channel_id: int = CHANNEL_ID,
        dm: bool = False,
        user_id: int = 1001,
        roles: list[str] | None = None,
    ) -> dict[str, Any]:
        """A user runs /name; returns the interaction (its token, to expire it)."""
        opts = [
            {"name": k, "type": 4 if isinstance(v, int) else 3, "value": v}
            for k, v in (options or {}).items()
        ]
        data = {"id": str(self.new_id()), "name": name, "type": 1, "options": opts}
        return await self._interaction(2, data, channel_id, dm, user_id, roles or [])

    async def press(
        self, custom_id: str, message_id: int, *, user_id: int = 1001, dm: bool = False
    ) -> dict[str, Any]:
        """A user presses the button `custom_id` on message `message_id`."""
        message = self._wire(self.messages[message_id])
        on_it = [c.get("custom_id") for c in _components(message) if c.get("type") == 2]
        if custom_id not in on_it:  # a user can only press a button the message shows
            raise ValueError(f"message {message_id} has no button {custom_id!r} (it has {on_it})")
        data = {"custom_id": custom_id, "component_type": 2}
        return await self._interaction(3, data, int(message["channel_id"]), dm, user_id, [], message=message)

    async def select(
        self, custom_id: str, values: list[str], message_id: int, *, user_id: int = 1001, dm: bool = False
    ) -> dict[str, Any]:
        """A user picks `values` in the string select menu `custom_id` on message `message_id`: an
        INTERACTION_CREATE of type 3 whose data is {custom_id, component_type 3, values}."""
        message = self._wire(self.messages[message_id])
        menus = {c.get("custom_id"): c for c in _components(message) if c.get("type") == 3}
        menu = menus.get(custom_id)
        if menu is None:  # a user can only pick in a menu the message shows
            raise ValueError(f"message {message_id} has no select menu {custom_id!r} (it has {list(menus)})")
        offered = [option["value"] for option in menu.get("options", [])]
        least, most = int(menu.get("min_values", 1)), int(menu.get("max_values", 1))
        if not set(values) <= set(offered) or not least <= len(values) <= most:
            # Discord's client offers only the menu's options, between min_values and max_values
            raise ValueError(f"menu {custom_id!r} offers {offered} ({least}-{most} of them), not {values}")
        data = {"custom_id": custom_id, "component_type": 3, "values": list(values)}
        return await self._interaction(3, data, int(message["channel_id"]), dm, user_id, [], message=message)

    async def _interaction(
        self,
        kind: int,
        data: dict[str, Any],
        channel_id: int,
        dm: bool,
        user_id: int,
        roles: list[str],
        message: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        user = self.user(user_id)
        interaction: dict[str, Any] = {
            "id": str(self.new_id()),
            "application_id": str(APP_ID),
            "type": kind,
            "token": f"tok-{self.new_id()}",
            "version": 1,
            "attachment_size_limit": 10 * 1024 * 1024,
            "locale": "en-US",
            "entitlements": [],
            "authorizing_integration_owners": {},
            "data": data,
        }
        if message is not None:
            interaction["message"] = message
        if dm:
            channel = self.dm_channel(user_id)
            interaction |= {
                "channel_id": channel["id"],
                "channel": channel,
                "user": user,
                "context": 1,
                "app_permissions": str(EVERYONE_PERMISSIONS),
            }
        else:
            channel = self.channels[channel_id]
            interaction |= {
                "guild_id": str(GUILD_ID),
                "channel_id": str(channel_id),
                "channel": self._public(channel),
                "member": self._member(user, roles),
                "guild_locale": "en-US",
                "context": 0,
                "app_permissions": str(self._permissions(channel_id)),
            }
        await self._send_event("INTERACTION_CREATE", interaction)
        return interaction

    def _permissions(self, channel_id: int) -> int:
        channel = self.channels[channel_id]
        if channel["type"] == 11:
            return self._permissions(int(channel["parent_id"]))
        return int(channel.get("_permissions", EVERYONE_PERMISSIONS))

    def dm_channel(self, user_id: int) -> dict[str, Any]:
        channel_id = 800000000000000000 + user_id
        if channel_id not in self.channels:
            self.channels[channel_id] = {
                "id": str(channel_id),
                "type": 1,
                "last_message_id": None,
                "recipients": [self.user(user_id)],
            }
        return self._public(self.channels[channel_id])

    async def say(
        self,
        content: str,
        *,
        channel_id: int = CHANNEL_ID,
        user_id: int = 1001,
        reply_to: int | None = None,
        mention_bot: bool = False,
        files: list[tuple[str, bytes]] | None = None,
        declared_size: int | None = None,
    ) -> dict[str, Any]:
        """A user posts a message (MESSAGE_CREATE), with `files` (name, bytes) uploaded as its
        attachments (served from the fake CDN); returns it. `declared_size` makes every
        attachment claim that size while its file is what it is (`bytes_served` counts what a
        download really sent)."""
        channel = self.channels[channel_id]
        user = self.user(user_id)
        message = self._message(channel_id, user, content)
        message["mentions"] = [self.bot_user] if mention_bot else []
        message["attachments"] = self._attachments(files or [])
        if declared_size is not None:
            for attachment in message["attachments"]:
                attachment["size"] = declared_size
        if reply_to is not None:
            message["type"] = 19
            message["message_reference"] = {"message_id": str(reply_to), "channel_id": str(channel_id)}
            referenced = self.messages.get(reply_to)
            message["referenced_message"] = self._wire(referenced) if referenced else None
        if channel["type"] != 1:
            message["member"] = {k: v for k, v in self._member(user, []).items() if k != "user"}
        self.messages[int(message["id"])] = message
        await self._send_event("MESSAGE_CREATE", self._wire(message))
        if channel["type"] == 11 and channel["thread_metadata"]["archived"]:
            channel["thread_metadata"]["archived"] = False  # a message revives an archived thread
            await self._send_event("THREAD_UPDATE", self._public(channel))
        return message

    def _message(self, channel_id: int, author: dict[str, Any], content: str) -> dict[str, Any]:
        channel = self.channels[channel_id]
        message: dict[str, Any] = {
            "id": str(self.new_id()),
            "channel_id": str(channel_id),
            "author": author,
            "content": content,
            "timestamp": _now(),
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "attachments": [],
            "embeds": [],
            "pinned": False,
            "type": 0,
            "flags": 0,
            "components": [],
        }
        if channel.get("guild_id"):
            message["guild_id"] = channel["guild_id"]
        return message

    def bot_message_from_before(
        self, channel_id: int, content: str, components: list[dict[str, Any]]
    ) -> dict[str, Any]:
        """A message the bot posted before this test's bot existed (another version of it, say),
        with `components` as Discord stores them; returns it."""
        message = self._message(channel_id, self.bot_user, content)
        message["components"] = components
        self.messages[int(message["id"])] = message
        return message

    def archive(self, thread_id: int) -> None:
        """The thread goes quiet past its auto-archive duration (a bot started later won't know it)."""
        self.channels[thread_id]["thread_metadata"]["archived"] = True

    async def delete_message(self, message_id: int) -> None:
        """Someone (a moderator) deletes a message: it is gone, and MESSAGE_DELETE says so."""
        message = self.messages.pop(message_id)
        event = {"id": str(message_id), "channel_id": message["channel_id"]}
        if message.get("guild_id"):
            event["guild_id"] = message["guild_id"]
        await self._send_event("MESSAGE_DELETE", event)

    async def _attachment(self, request: web.Request) -> web.StreamResponse:
        wanted = request.match_info["id"]
        for message in self.messages.values():
            for attachment in message["attachments"]:
                if attachment["id"] == wanted:
                    return await self._stream(request, wanted, attachment["_data"])
        return web.Response(status=404)

    async def _stream(self, request: web.Request, key: str, data: bytes) -> web.StreamResponse:
        """The file in 64 KiB chunks (no Content-Length), counting what was really sent."""
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        await response.prepare(request)
        self.bytes_served[key] = 0
        try:
            for start in range(0, len(data), 65536):
                await response.write(data[start : start + 65536])
                self.bytes_served[key] += len(data[start : start + 65536])
            await response.write_eof()
        except ConnectionError:
            pass  # the client stopped reading: what was sent is counted
        return response

    # --- REST ----------------------------------------------------------------------------------

    async def _rest(self, request: web.Request) -> web.StreamResponse:
        path = "/" + request.match_info["tail"]
        body: Any = None
        files: list[tuple[str, bytes]] = []
        if request.content_type == "application/json" and request.can_read_body:
            body = await request.json()
        elif request.content_type.startswith("multipart/"):
            reader = await request.multipart()
            async for part in reader:
                if not isinstance(part, BodyPartReader):
                    continue
                if part.name == "payload_json":
                    body = json.loads(await part.text())
                elif part.name is not None:
                    files.append((part.filename or part.name, bytes(await part.read())))
        call = Call(request.method, path, body, files)
        self.calls.append(call)
        for fault in self.faults:
            if fault.method == request.method and fault.path.search(path):
                self.faults.remove(fault)
                if fault.status == 429:
                    call.status = 429
                    return json_response(
                        {
                            "message": "You are being rate limited.",
                            "retry_after": fault.retry_after,
                            "global": False,
                        },
                        429,
                        {"Via": "1.1 google", "Retry-After": str(fault.retry_after)},
                    )
                if not fault.after_effect:
                    call.status = fault.status
                    message, code = _ERRORS.get(fault.status, ("Internal Server Error", 0))
                    return json_response({"message": message, "code": code}, fault.status)
                await self._route(request.method, path, body, files, call)
                call.status = fault.status
                return json_response({"message": "Internal Server Error", "code": 0}, fault.status)
        return await self._route(request.method, path, body, files, call)

    async def _route(
        self, method: str, path: str, body: Any, files: list[tuple[str, bytes]], call: Call
    ) -> web.Response:
        def error(status: int, message: str, code: int) -> web.Response:
            call.status = status
            return json_response({"message": message, "code": code}, status)

        if method == "GET" and path == "/users/@me":
            return json_response(self.bot_user)
        if method == "GET" and path == "/oauth2/applications/@me":
            return json_response(
                {
                    "id": str(APP_ID),
                    "name": "omost",
                    "description": "",
                    "icon": None,
                    "bot_public": True,
                    "bot_require_code_grant": False,
                    "owner": self.user(1, "owner"),
                    "verify_key": "k",
                    "flags": 0,
                }
            )
        m = re.fullmatch(r"/applications/(\d+)(?:/guilds/(\d+))?/commands", path)
        if m and method == "PUT":
            registered = [
                dict(c, id=str(self.new_id()), application_id=str(APP_ID), version="1") for c in body
            ]
            self.commands[m.group(2) or "global"] = registered
            return json_response(registered)
        m = re.fullmatch(r"/interactions/(\d+)/([^/]+)/callback", path)
        if m and method == "POST":
            token = m.group(2)
            if token in self.expired_tokens:
                return error(401, "Invalid Webhook Token", 50027)
            return self._callback(m.group(1), body)
        m = re.fullmatch(r"/webhooks/(\d+)/([^/]+)(/.*)?", path)
        if m:
            if m.group(2) in self.expired_tokens:
                return error(401, "Invalid Webhook Token", 50027)
            interaction = self._interaction_of(token=m.group(2))
            if method == "POST" and m.group(3) is None and interaction is not None:
                return self._followup(interaction, body or {})  # an interaction followup
            return error(404, "Unknown Message", 10008)
        if method == "POST" and path == "/users/@me/channels":
            return json_response(self.dm_channel(int(body["recipient_id"])))
        m = re.fullmatch(r"/channels/(\d+)", path)
        if m and method == "GET":
            channel = self.channels.get(int(m.group(1)))
            return json_response(self._public(channel)) if channel else error(404, "Unknown Channel", 10003)
        m = re.fullmatch(r"/channels/(\d+)/messages", path)
        if m and method == "POST":
            return self._create_message(int(m.group(1)), body or {}, files, call)
        m = re.fullmatch(r"/channels/(\d+)/messages/(\d+)", path)
        if m and method in ("PATCH", "DELETE"):
            message = self.messages.get(int(m.group(2)))
            if message is None or message["channel_id"] != m.group(1):
                return error(404, "Unknown Message", 10008)
            if method == "DELETE":
                del self.messages[int(m.group(2))]
                call.status = 204
                return web.Response(status=204)
            allowed = self._permissions(int(m.group(1)))
            if (files and not allowed & ATTACH_FILES) or (
                (body or {}).get("embeds") and not allowed & EMBED_LINKS
            ):
                return error(403, "Missing Permissions", 50013)
            problem = _component_problem((body or {}).get("components") or [])
            if problem:
                return error(400, f"Invalid Form Body: {problem}", 50035)
            for key in ("content", "embeds", "components"):
                if key in (body or {}):
                    message[key] = body[key]
            if files or "attachments" in (body or {}):
                message["attachments"] = self._attachments(files)
            message["edited_timestamp"] = _now()
            return json_response(self._wire(message))
        m = re.fullmatch(r"/channels/(\d+)(?:/messages/(\d+))?/threads", path)
        if m and method == "POST":
            parent_id = int(m.group(1))
            if parent_id not in self.channels:
                return error(404, "Unknown Channel", 10003)
            if not self._permissions(parent_id) & (1 << 35):
                return error(403, "Missing Permissions", 50013)
            thread_id = (
                int(m.group(2)) if m.group(2) else self.new_id()
            )  # a thread from a message shares its id
            thread = {
                "id": str(thread_id),
                "type": 11,
                "guild_id": str(GUILD_ID),
                "parent_id": str(parent_id),
                "name": body.get("name", "thread"),
                "owner_id": str(BOT_ID),
                "last_message_id": None,
                "rate_limit_per_user": 0,
                "message_count": 0,
                "member_count": 1,
                "thread_metadata": {
                    "archived": False,
                    "auto_archive_duration": body.get("auto_archive_duration", 1440),
                    "archive_timestamp": _now(),
                    "locked": False,
                },
            }
            self.channels[thread_id] = thread
            await self._send_event("THREAD_CREATE", dict(thread, newly_created=True))
            return json_response(thread)
        return error(404, f"no fake for {method} {path}", 0)

    def _interaction_of(self, *, token: str = "", interaction_id: str = "") -> dict[str, Any] | None:
        for _, t, d in reversed(self._events):
            if t == "INTERACTION_CREATE" and (d["token"] == token or d["id"] == interaction_id):
                return dict(d)
        return None

    def _followup(self, interaction: dict[str, Any], data: dict[str, Any]) -> web.Response:
        author = dict(self.bot_user)
        message = self._message(int(interaction["channel_id"]), author, data.get("content", ""))
        message["webhook_id"] = str(APP_ID)
        message["flags"] = int(data.get("flags") or 0)  # 64: ephemeral, only the user sees it
        message["embeds"] = data.get("embeds", [])
        message["components"] = data.get("components", [])
        message["allowed_mentions"] = data.get("allowed_mentions")
        message["interaction_metadata"] = {
            "id": interaction["id"],
            "type": interaction["type"],
            "user": interaction.get("user") or interaction["member"]["user"],
        }
        self.messages[int(message["id"])] = message
        return json_response(self._wire(message))

    def _callback(self, interaction_id: str, body: dict[str, Any]) -> web.Response:
        kind = body.get("type")
        data = body.get("data") or {}
        result: dict[str, Any] = {
            "interaction": {"id": interaction_id, "type": 2, "response_message_loading": kind == 5}
        }
        if kind == 4:
            interaction = next(
                (
                    d
                    for _, t, d in reversed(self._events)
                    if t == "INTERACTION_CREATE" and d["id"] == interaction_id
                ),
                None,
            )
            channel_id = int(interaction["channel_id"]) if interaction else CHANNEL_ID
            message = self._message(channel_id, self.bot_user, data.get("content", ""))
            message["interaction_metadata"] = {
                "id": interaction_id,
                "type": 2,
                "user": self.user(),
                "authorizing_integration_owners": {},
            }
            message["embeds"] = data.get("embeds", [])
            message["components"] = data.get("components", [])
            message["allowed_mentions"] = data.get("allowed_mentions")
            message["flags"] = int(data.get("flags") or 0)  # 64: ephemeral, only the user sees it
            self.messages[int(message["id"])] = message
            result["interaction"]["response_message_id"] = message["id"]
            result["resource"] = {"type": 4, "message": self._wire(message)}
        return json_response(result)

    def _attachments(self, files: list[tuple[str, bytes]]) -> list[dict[str, Any]]:
        out = []
        for name, data in files:
            attachment_id = self.new_id()
            url = f"{self.base}/attachments/{attachment_id}/{name}"
            out.append(
                {
                    "id": str(attachment_id),
                    "filename": name,
                    "size": len(data),
                    "content_type": mimetypes.guess_type(name)[0] or "application/octet-stream",
                    "url": url,
                    "proxy_url": url,
                    "_data": data,
                }
            )
        return out

    def _create_message(
        self, channel_id: int, body: dict[str, Any], files: list[tuple[str, bytes]], call: Call
    ) -> web.Response:
        if channel_id not in self.channels:
            call.status = 404
            return json_response({"message": "Unknown Channel", "code": 10003}, 404)
        allowed = self._permissions(channel_id)
        if (files and not allowed & ATTACH_FILES) or (body.get("embeds") and not allowed & EMBED_LINKS):
            # what Discord answers a bot sending files or embeds it may not (code 50013)
            call.status = 403
            return json_response({"message": "Missing Permissions", "code": 50013}, 403)
        problem = _component_problem(body.get("components") or [])
        if problem:
            call.status = 400
            return json_response({"message": f"Invalid Form Body: {problem}", "code": 50035}, 400)
        nonce = body.get("nonce")
        if nonce and body.get("enforce_nonce") and (channel_id, str(nonce)) in self._nonces:
            return json_response(self._wire(self.messages[self._nonces[(channel_id, str(nonce))]]))
        message = self._message(channel_id, self.bot_user, body.get("content") or "")
        message["embeds"] = body.get("embeds", [])
        message["components"] = body.get("components", [])
        message["attachments"] = self._attachments(files)
        message["allowed_mentions"] = body.get("allowed_mentions")
        reference = body.get("message_reference")
        if reference:
            message["type"] = 19
            # Discord answers snowflakes as strings, whatever the request carried
            message["message_reference"] = {
                k: str(v) if k.endswith("_id") and v is not None else v for k, v in reference.items()
            }
        self.messages[int(message["id"])] = message
        if nonce:
            self._nonces[(channel_id, str(nonce))] = int(message["id"])
        return json_response(self._wire(message))

    @staticmethod
    def _wire(message: dict[str, Any]) -> dict[str, Any]:
        out = dict(message)
        out["attachments"] = [{k: v for k, v in a.items() if k != "_data"} for a in message["attachments"]]
        out.pop("allowed_mentions", None)
        return out

    # --- reading what the bot did --------------------------------------------------------------

    def sent(self, channel_id: int | None = None) -> list[dict[str, Any]]:
        """Messages the bot made, oldest first (optionally in one channel)."""
        return [
            m
            for m in self.messages.values()
            if m["author"]["id"] == str(BOT_ID) and (channel_id is None or m["channel_id"] == str(channel_id))
        ]

    def threads(self) -> list[dict[str, Any]]:
        return [c for c in self.channels.values() if c["type"] == 11]

    def file(self, message: dict[str, Any], suffix: str) -> bytes | None:
        for attachment in message["attachments"]:
            if attachment["filename"].endswith(suffix):
                return bytes(attachment["_data"])
        return None

    async def wait_for(self, predicate: Callable[[], Any], timeout: float = 20.0) -> Any:
        """Poll until predicate() is truthy (bounded)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            await asyncio.sleep(0.02)
        raise TimeoutError("the fake Discord never saw what the test waited for")


def _components(message: dict[str, Any]) -> list[dict[str, Any]]:
    """Every component of a message, row by row (buttons and select menus)."""
    return [c for row in message.get("components") or [] for c in row.get("components", [])]


def _component_problem(rows: list[dict[str, Any]]) -> str:
    """What Discord would refuse in a message's components ("" when nothing): at most 5 action
    rows, each up to 5 buttons or exactly one select menu; custom ids unique and up to 100
    characters; a string select 1-25 options with labels and values of 1-100 characters, values
    unique, a placeholder up to 150; a button label up to 80."""
    if len(rows) > 5:
        return "components: at most 5 action rows"
    seen: set[str] = set()
    for row in rows:
        items = row.get("components", [])
        if row.get("type") != 1 or not items:
            return "components: each row is an action row with something in it"
        menus = [c for c in items if c.get("type") in (3, 5, 6, 7, 8)]
        if (menus and len(items) > 1) or len(items) > 5:
            return "components: a row holds up to 5 buttons or one select menu"
        for item in items:
            custom_id = str(item.get("custom_id", ""))
            if custom_id and (custom_id in seen or len(custom_id) > 100):
                return f"custom_id {custom_id!r}: must be unique and at most 100 characters"
            seen.add(custom_id)
            problem = _select_problem(item) if item.get("type") == 3 else ""
            if item.get("type") == 2 and len(str(item.get("label") or "")) > 80:
                problem = "button label: at most 80 characters"
            if problem:
                return problem
    return ""


def _select_problem(menu: dict[str, Any]) -> str:
    options = menu.get("options") or []
    if not 1 <= len(options) <= 25:
        return f"select options: 1 to 25, not {len(options)}"
    values = [str(o.get("value", "")) for o in options]
    if len(set(values)) != len(values):
        return "select options: values must be unique"
    for option in options:
        for key in ("label", "value"):
            if not 1 <= len(str(option.get(key, ""))) <= 100:
                return f"select option {key}: 1 to 100 characters"
    if len(str(menu.get("placeholder") or "")) > 150:
        return "select placeholder: at most 150 characters"
    least, most = int(menu.get("min_values", 1)), int(menu.get("max_values", 1))
    if not 0 <= least <= most <= len(options):
        return "select min_values/max_values: out of range"
    return ""


@contextlib.asynccontextmanager
async def serve() -> AsyncIterator[FakeDiscord]:
    """A running fake with discord.py pointed at it; everything restored on exit."""
    fake = FakeDiscord()
    base = await fake.start()
    old_base, old_gateway = discord.http.Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY
    discord.http.Route.BASE = f"{base}/api/v10"
    DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(f"{base.replace('http', 'ws')}/gateway")
    try:
        yield fake
    finally:
        discord.http.Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY = old_base, old_gateway
        await fake.stop()
