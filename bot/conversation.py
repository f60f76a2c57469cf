"""The turn flow: a chat message in, a composed and rendered picture out (DESIGN.md, "A turn").

`Conversations` implements the adapters' `Handler`. For each request it checks the policy,
finds the parent turn (the replied-to message's turn, else the thread's head, else a new
conversation), stores the turn as queued, posts a status message, and drives the turn through
the engine: compose (unless the user wrote the canvas) -> layout preview -> render -> result.
Everything is stored before it is announced; on start, `resume_unfinished_turns` picks up turns a
crash left queued or running (editing their status messages in place) and announces results that
were stored but never posted.

It knows the store, the engine, the policy and the adapter port; never a platform library.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import logging
import random
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from adapters.base import (
    Adapter,
    Button,
    ButtonPress,
    Incoming,
    MessageRef,
    OutFile,
    Post,
)
from bot.config import Config
from bot.policy import Policy
from bot.store import Conversation, LinkRole, Store, Turn, TurnKind, TurnStatus
from omost_engine.canvas import Canvas, CanvasError, diff_canvases, process
from omost_engine.canvas_code import GlobalParsed, find_code, parse
from omost_engine.engine import Engine, JobHandle
from omost_engine.errors import EngineError
from omost_engine.jobs import (
    Cancelled,
    ComposeJob,
    ComposeResult,
    Failed,
    Finished,
    PartParsed,
    Queued,
    RenderJob,
    Started,
    TextDelta,
)
from omost_engine.llm.base import ChatMessage, GenerationParams
from omost_engine.preview import render_layout_preview
from omost_engine.render.base import RenderParams, RenderResult, Step
from omost_engine.render.metadata import encode_png, png_metadata, read_png_metadata

log = logging.getLogger(__name__)

HELP_TEXT = """\
Describe a picture and I'll compose it the Omost way: a language model writes a canvas (a scene \
description and regions), then it is drawn.
• Reply to any of my messages to change that picture ("make it night", "add a cat").
• Send canvas code (a ```python block or a .py file) to draw it directly,
  or one of my PNGs to continue from it.
• Commands: /new (start fresh), /cancel, /settings, /help.
Buttons: New seed, Rewrite (the model tries again), Higher resolution."""

SETTING_KEYS = ("width", "height", "steps", "seed", "hires", "png")
MAX_ATTACHMENT_BYTES = 20 * 1024 * 1024
HIRES_BUTTON_SCALE = 1.5


@dataclass
class _StatusMessage:
    """One status message per turn, edited no faster than the platform allows; the last state
    always lands (a pending edit is flushed after the interval)."""

    adapter: Adapter
    store: Store
    turn_id: int
    chat: str
    thread: str
    ref: MessageRef | None = None
    reply_to: str | None = None
    _last_edit: float = 0.0
    _pending: Post | None = None
    _flush: asyncio.TimerHandle | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def show(self, post: Post, *, now: bool = False) -> None:
        post = replace(post, role="status", turn_id=self.turn_id, reply_to=self.reply_to)
        wait = self.adapter.min_edit_interval - (time.monotonic() - self._last_edit)
        if self.ref is not None and wait > 0 and not now:
            self._pending = post
            if self._flush is None:
                loop = asyncio.get_running_loop()
                self._flush = loop.call_later(wait, lambda: asyncio.ensure_future(self._flush_pending()))
            return
        await self._write(post)

    async def _flush_pending(self) -> None:
        self._flush = None
        if self._pending is not None:
            await self._write(self._pending)

    async def finish(self, post: Post) -> None:
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        await self.show(post, now=True)

    async def _write(self, post: Post) -> None:
        async with self._lock:
            self._pending = None
            try:
                if self.ref is None:
                    refs = await self.adapter.send(self.chat, self.thread, post)
                    self.ref = refs[0]
                    await self.store.link_message(
                        self.ref.platform, self.ref.chat, self.ref.message_id, self.turn_id, LinkRole.STATUS
                    )
                else:
                    new_ref = await self.adapter.edit(self.ref, post)
                    if new_ref != self.ref:  # the platform would not edit it: a new message was sent
                        self.ref = new_ref
                        await self.store.link_message(
                            new_ref.platform, new_ref.chat, new_ref.message_id, self.turn_id, LinkRole.STATUS
                        )
            except Exception:  # a status update must never kill the turn
                log.exception("turn %s: status update failed", self.turn_id)
            self._last_edit = time.monotonic()


def _fmt_eta(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 60:
        return f", about {max(1, round(seconds))} s"
    return f", about {round(seconds / 60)} min"


def _code_block(text: str) -> str | None:
    """The canvas code the user sent in a message, if any (a ```python block or bare code)."""
    if "```" not in text and not re.search(r"^\s*canvas\s*=\s*Canvas\(\)", text, re.M):
        return None
    try:
        return find_code(text).code
    except CanvasError:
        return text if "Canvas()" in text else None


def describe_change(before: Canvas | None, after: Canvas) -> str:
    """A one-line summary of what changed against the parent canvas."""
    if before is None:
        n = len(after.regions)
        return f"New picture: {n} region{'s' if n != 1 else ''}."
    diff = diff_canvases(before, after)
    if diff.unchanged:
        return "Same canvas as before."
    parts = []
    if diff.added:
        parts.append("added " + ", ".join(_short(r.description) for r in diff.added))
    if diff.removed:
        parts.append("removed " + ", ".join(_short(r.description) for r in diff.removed))
    if diff.changed:
        parts.append("changed " + ", ".join(_short(after.description) for _, after in diff.changed))
    if diff.global_changed:
        parts.append("updated the overall scene")
    text = "; ".join(parts)
    return text[:1].upper() + text[1:] + "."


def _short(description: str, limit: int = 60) -> str:
    text = description.rstrip(".")
    text = text[:1].lower() + text[1:]
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _regions_status(canvas_parts: list[str], header: str) -> str:
    lines = [header]
    lines += [f"• {part}" for part in canvas_parts[-12:]]
    return "\n".join(lines)


@functools.lru_cache(maxsize=256)
def _canvas(code: str) -> Canvas:
    """Canvas code stored on a turn, parsed once (a Canvas is immutable, so sharing it is safe)."""
    return parse(code)


def _layout_png(canvas: Canvas, width: int, height: int) -> bytes:
    image = render_layout_preview(process(canvas), width, height, long_side=512)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


class Conversations:
    """The bot's Handler: the turn flow for every adapter."""

    def __init__(
        self,
        *,
        store: Store,
        engine: Engine,
        policy: Policy,
        config: Config,
        model_name: str = "",
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self.engine = engine
        self.policy = policy
        self.config = config
        self.model_name = model_name or config.render.model
        self._rng = rng or random.SystemRandom()
        self._adapters: dict[str, Adapter] = {}
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._jobs: dict[int, JobHandle] = {}  # turn id -> its running engine job
        self._owners: dict[int, str] = {}  # turn id -> owner, for /cancel and the queue cap
        self._answered: dict[int, asyncio.Event] = {}  # turn id -> set once its canvas is written

    # --- wiring ------------------------------------------------------------------------------

    def attach(self, adapter: Adapter) -> None:
        self._adapters[adapter.platform] = adapter

    async def drain(self) -> None:
        """Wait until every turn in flight has finished (the terminal chat's end of input)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks.values()), return_exceptions=True)

    async def close(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()
        await asyncio.gather(*list(self._tasks.values()), return_exceptions=True)

    def turns_in_flight(self, owner: str) -> int:
        return sum(1 for o in self._owners.values() if o == owner)

    # --- incoming ----------------------------------------------------------------------------

    async def on_message(self, adapter: Adapter, message: Incoming) -> None:
        self.attach(adapter)
        access = self.policy.check_access(
            message.platform,
            message.user,
            message.chat,
            places=(message.thread, message.guild),
            roles=message.roles,
        )
        if not access.allowed:
            await self._reply(adapter, message, access.message)
            return
        command = (message.command or "").lower()
        if command in ("help", "start"):
            await self._reply(adapter, message, HELP_TEXT)
            return
        if command == "new":
            await self.store.new_conversation(message.platform, message.chat, message.thread)
            await self._reply(adapter, message, "Started a new conversation. Describe a picture.")
            return
        if command == "cancel":
            await self._reply(adapter, message, await self._cancel_latest(message))
            return
        if command == "undo":
            await self._reply(adapter, message, await self._undo(message))
            return
        if command in ("settings", "seed", "size", "steps", "hires"):
            await self._reply(adapter, message, await self._settings(message, command))
            return
        if command not in ("", "omost"):
            await self._reply(adapter, message, f"I don't know /{command}. Try /help.")
            return
        await self._request(adapter, message)

    async def on_button(self, adapter: Adapter, press: ButtonPress) -> None:
        self.attach(adapter)
        owner = f"{press.platform}:{press.user}"
        turn = await self.store.find_turn(press.turn_id)
        conversation = await self.store.get_conversation(turn.conversation_id) if turn else None
        if turn is None or conversation is None or conversation.chat != press.chat:
            await adapter.send(press.chat, press.thread, Post(text="That picture is no longer available."))
            return
        decision = self.policy.decide(
            press.platform,
            press.user,
            press.chat,
            queued=self.turns_in_flight(owner),
            places=(press.thread, press.guild),
            roles=press.roles,
        )
        if not decision.allowed:
            await adapter.send(press.chat, press.thread, Post(text=decision.message))
            return
        action = press.action
        if action == "cancel":
            handle = self._jobs.get(turn.id)
            if handle is not None:
                handle.cancel("cancelled by the user")
            return
        if action == "retry":
            if turn.status not in (TurnStatus.FAILED, TurnStatus.CANCELLED):
                return  # pressed twice, or already retried: nothing to do
            turn = await self.store.update_turn(turn.id, status=TurnStatus.QUEUED, error=None)
            self._start(adapter, turn, conversation.thread, reply_to=None)
            return
        if action == "rewrite":
            if turn.kind != TurnKind.COMPOSE:
                source = turn
                while source.kind != TurnKind.COMPOSE and source.parent_id is not None:
                    source = await self.store.get_turn(source.parent_id)
                if source.kind != TurnKind.COMPOSE:
                    await adapter.send(
                        press.chat, press.thread, Post(text="There is no request to rewrite here.")
                    )
                    return
                turn = source
            new = await self.store.create_turn(
                conversation_id=turn.conversation_id,
                parent_id=turn.parent_id,
                kind=TurnKind.COMPOSE,
                owner=owner,
                user_text=turn.user_text,
                seed=self._rng.randrange(2**31),
                params=turn.params,
            )
        elif action in ("seed", "hires"):
            if turn.canvas_code is None:
                await adapter.send(
                    press.chat, press.thread, Post(text="That turn has no canvas to draw yet.")
                )
                return
            params = dict(turn.params)
            seed = turn.seed
            if action == "seed":
                seed = self._rng.randrange(2**31)
            else:
                params["hires_scale"] = max(HIRES_BUTTON_SCALE, float(params.get("hires_scale", 1.0)))
            new = await self.store.create_turn(
                conversation_id=turn.conversation_id,
                parent_id=turn.id,
                kind=TurnKind.RENDER,
                owner=owner,
                canvas_code=turn.canvas_code,
                seed=seed,
                params=params,
            )
        else:
            await adapter.send(press.chat, press.thread, Post(text="That button is not one I know."))
            return
        self._start(adapter, new, conversation.thread, reply_to=None)

    async def _request(self, adapter: Adapter, message: Incoming) -> None:
        owner = f"{message.platform}:{message.user}"
        text = message.text.strip()
        decision = self.policy.decide(
            message.platform,
            message.user,
            message.chat,
            text,
            queued=self.turns_in_flight(owner),
            places=(message.thread, message.guild),
            roles=message.roles,
        )
        if not decision.allowed:
            await self._reply(adapter, message, decision.message)
            return

        conversation, parent, problem = await self._resolve_parent(message)
        if problem:
            await self._reply(adapter, message, problem)
            return

        code, image_turn = await self._attachments(message, conversation.id, parent, owner)
        if isinstance(code, str) and code.startswith("error:"):
            await self._reply(adapter, message, code[len("error:") :].strip())
            return
        if image_turn is not None:
            parent = image_turn
            if not text:
                await self._reply(
                    adapter, message, "Got it: reply to this message (or just write) to change that picture."
                )
                return
        if code is None:
            code = _code_block(text)
        if code is not None:
            try:
                canvas = parse(code)
            except CanvasError as e:
                await self._reply(adapter, message, f"That canvas code has a problem: {e}")
                return
            blocked = self.policy.check_canvas(canvas)
            if not blocked.allowed:
                await self._reply(adapter, message, blocked.message)
                return
        elif not text:
            await self._reply(adapter, message, "Tell me what to draw, e.g. “a lighthouse in a storm”.")
            return

        settings = await self._effective_settings(
            message.platform, message.user, message.chat, message.options
        )
        seed = settings.pop("seed")
        turn = await self.store.create_turn(
            conversation_id=conversation.id,
            parent_id=parent.id if parent else None,
            kind=TurnKind.USER_CANVAS if code is not None else TurnKind.COMPOSE,
            owner=owner,
            user_text=text,
            canvas_code=code,
            seed=seed,
            params=settings,
        )
        await self.store.link_message(
            message.platform, message.chat, message.message_id, turn.id, LinkRole.USER
        )
        self._start(adapter, turn, message.thread, reply_to=message.message_id)

    async def _resolve_parent(self, message: Incoming) -> tuple[Any, Turn | None, str]:
        """(conversation, parent turn or None, a problem to tell the user or "")."""
        explicit = message.options.get("turn")
        if explicit is not None:
            if not str(explicit).isdigit():
                return None, None, f"“{explicit}” is not a turn number."
            turn = await self.store.find_turn(int(explicit))
            conversation = await self.store.get_conversation(turn.conversation_id) if turn else None
            if (
                turn is None
                or conversation is None
                or (conversation.platform, conversation.chat)
                != (
                    message.platform,
                    message.chat,
                )
            ):
                return None, None, f"There is no turn {explicit} in this chat."
            return conversation, turn, ""
        if message.reply_to:
            turn = await self.store.turn_for_message(message.platform, message.chat, message.reply_to)
            if turn is not None:
                conversation = await self.store.get_conversation(turn.conversation_id)
                return conversation, turn, ""
        conversation = await self.store.get_or_create_conversation(
            message.platform, message.chat, message.thread
        )
        return conversation, await self._head(conversation.id, message), ""

    async def _head(self, conversation_id: int, message: Incoming) -> Turn | None:
        """The thread's latest turn, unless /undo moved the head back."""
        latest = await self.store.latest_turn(conversation_id)
        chat = await self.store.get_settings("chat", message.platform, self._chat_key(message))
        head = chat.get("head")
        if (
            latest is not None
            and isinstance(head, dict)
            and head.get("conversation") == conversation_id
            and head.get("after") == latest.id
        ):
            turn_id = head.get("turn")
            return await self.store.find_turn(turn_id) if isinstance(turn_id, int) else None
        return latest

    @staticmethod
    def _chat_key(message: Incoming) -> str:
        return f"{message.chat}/{message.thread}" if message.thread else message.chat

    async def _undo(self, message: Incoming) -> str:
        conversation = await self.store.get_or_create_conversation(
            message.platform, message.chat, message.thread
        )
        latest = await self.store.latest_turn(conversation.id)
        head = await self._head(conversation.id, message)
        if latest is None or head is None:
            return "Nothing to undo."
        parent_id = head.parent_id
        await self.store.set_settings(
            "chat",
            message.platform,
            self._chat_key(message),
            {"head": {"conversation": conversation.id, "turn": parent_id, "after": latest.id}},
        )
        if parent_id is None:
            return f"Undid turn {head.id}: your next message starts a new picture."
        return f"Undid turn {head.id}: your next message continues from turn {parent_id}."

    async def _cancel_latest(self, message: Incoming) -> str:
        owner = f"{message.platform}:{message.user}"
        mine = [turn_id for turn_id, o in self._owners.items() if o == owner]
        if not mine:
            return "You have nothing queued or running."
        turn_id = max(mine)
        handle = self._jobs.get(turn_id)
        if handle is not None:
            handle.cancel("cancelled by the user")
        else:
            task = self._tasks.get(turn_id)
            if task is not None:
                task.cancel()
        return f"Cancelling turn {turn_id}."

    async def _settings(self, message: Incoming, command: str) -> str:
        """/settings key=value ...; /seed N|random; /size WxH; /steps N; /hires X."""
        text = message.text.strip()
        changes: dict[str, Any] = {}
        if command == "seed":
            text = f"seed={text}" if text else ""
        elif command == "size":
            text = f"size={text}" if text else ""
        elif command in ("steps", "hires"):
            text = f"{command}={text}" if text else ""
        for item in text.replace(",", " ").split():
            key, _, value = item.partition("=")
            key = key.strip().lower()
            try:
                changes.update(self._setting(key, value.strip()))
            except ValueError as e:
                return str(e)
        if changes:
            await self.store.set_settings("user", message.platform, message.user, changes)
        current = await self._effective_settings(
            message.platform, message.user, message.chat, {}, draw_seed=False
        )
        seed = current["seed"] if current["seed"] is not None else "random"
        hires = current["hires_scale"]
        summary = (
            f"size {current['width']}x{current['height']}, {current['steps']} steps, seed {seed}, "
            f"hires {'off' if hires <= 1.05 else f'{hires:g}x'}, "
            f"lossless PNG {'on' if current['png'] else 'off'}"
        )
        return (
            ("Saved. " if changes else "Your settings: ")
            + summary
            + (
                ""
                if changes
                else ". Change with e.g. /settings size=1024x1024 steps=30 seed=random hires=1.5 png=on"
            )
        )

    @staticmethod
    def _setting(key: str, value: str) -> dict[str, Any]:
        def number(kind: type, low: float, high: float) -> Any:
            try:
                n = kind(value)
            except ValueError:
                raise ValueError(f"{key} must be a number, got “{value}”.") from None
            if not low <= n <= high:
                raise ValueError(f"{key} must be between {low:g} and {high:g}.")
            return n

        if key == "size":
            m = re.fullmatch(r"(\d+)\s*[x×*]\s*(\d+)", value)
            if not m:
                raise ValueError(f"size must look like 1024x1024, got “{value}”.")
            w, h = int(m.group(1)), int(m.group(2))
            if w % 64 or h % 64 or not (64 <= w <= 2048 and 64 <= h <= 2048):
                raise ValueError("width and height must be multiples of 64 between 64 and 2048.")
            return {"width": w, "height": h}
        if key == "steps":
            return {"steps": number(int, 1, 100)}
        if key == "seed":
            if value.lower() in ("random", "off", "none", ""):
                return {"seed": None}
            return {"seed": number(int, 0, 2**31 - 1)}
        if key == "hires":
            if value.lower() in ("off", "no", "none"):
                return {"hires_scale": 1.0}
            return {"hires_scale": number(float, 1.0, 2.0)}
        if key == "png":
            return {"png": value.lower() in ("on", "yes", "true", "1")}
        raise ValueError(f"I don't know the setting “{key}”. Settings: size, steps, seed, hires, png.")

    async def _effective_settings(
        self,
        platform: str,
        user: str,
        chat: str,
        options: Mapping[str, str],
        *,
        draw_seed: bool = True,
    ) -> dict[str, Any]:
        """Config defaults < chat settings < user settings < this message's options."""
        render = self.config.render
        merged: dict[str, Any] = {
            "width": render.width,
            "height": render.height,
            "steps": render.steps,
            "cfg": render.cfg,
            "hires_scale": render.hires_scale,
            "negative_prompt": render.negative_prompt,
            "seed": None,
            "png": False,
        }
        for scope, subject in (("chat", chat), ("user", user)):
            saved = await self.store.get_settings(scope, platform, subject)
            merged.update({k: v for k, v in saved.items() if k in merged})
        for key, value in options.items():
            if key in ("size", "steps", "seed", "hires"):
                merged.update(self._setting(key, value))
        if draw_seed and merged["seed"] is None:
            merged["seed"] = self._rng.randrange(2**31)
        return merged

    async def _attachments(
        self, message: Incoming, conversation_id: int, parent: Turn | None, owner: str
    ) -> tuple[str | None, Turn | None]:
        """Canvas code from a .py file, or a turn made from one of our PNGs (to continue from)."""
        for attachment in message.attachments:
            if len(attachment.data) > MAX_ATTACHMENT_BYTES:
                return "error: That file is too large.", None
            name = attachment.filename.lower()
            if name.endswith((".py", ".txt")):
                try:
                    return attachment.data.decode("utf-8"), None
                except UnicodeDecodeError:
                    return "error: That file is not UTF-8 text.", None
            if name.endswith(".png") or attachment.mime == "image/png":
                try:
                    restored = read_png_metadata(attachment.data)
                except (CanvasError, OSError, ValueError) as e:
                    return f"error: I couldn't read the canvas in that picture: {e}", None
                if restored is None:
                    return (
                        "error: That picture has no canvas in it: only images I made can be continued.",
                        None,
                    )
                turn = await self.store.create_turn(
                    conversation_id=conversation_id,
                    parent_id=parent.id if parent else None,
                    kind=TurnKind.USER_CANVAS,
                    owner=owner,
                    user_text="(continued from an uploaded picture)",
                    canvas_code=restored.code,
                    seed=restored.params.seed,
                    params={
                        "width": restored.params.width,
                        "height": restored.params.height,
                        "steps": restored.params.steps,
                        "cfg": restored.params.cfg,
                        "hires_scale": restored.params.hires_scale,
                        "negative_prompt": restored.params.negative_prompt,
                    },
                    status=TurnStatus.RUNNING,
                )
                path = self.store.new_image_path(turn.id)
                path.write_bytes(attachment.data)
                turn = await self.store.update_turn(
                    turn.id,
                    status=TurnStatus.DONE,
                    image_path=path,
                    assistant_text=f"```python\n{restored.code}```",
                )
                await self.store.link_message(
                    message.platform, message.chat, message.message_id, turn.id, LinkRole.IMAGE
                )
                return None, turn
        return None, None

    async def _reply(self, adapter: Adapter, message: Incoming, text: str) -> None:
        try:
            await adapter.send(message.chat, message.thread, Post(text=text, reply_to=message.message_id))
        except Exception:
            log.exception("could not reply in %s/%s", message.platform, message.chat)

    # --- driving a turn -------------------------------------------------------------------------

    def _start(self, adapter: Adapter, turn: Turn, thread: str, reply_to: str | None) -> None:
        self._owners[turn.id] = turn.owner
        task = asyncio.create_task(self._drive(adapter, turn, thread, reply_to, existing=None))
        self._tasks[turn.id] = task
        task.add_done_callback(functools.partial(self._forget, turn.id))

    def _forget(self, turn_id: int, _task: object = None) -> None:
        composed = self._answered.pop(turn_id, None)
        if composed is not None:
            composed.set()  # a child waiting on a turn that ended without an answer goes on
        self._tasks.pop(turn_id, None)
        self._jobs.pop(turn_id, None)
        self._owners.pop(turn_id, None)

    async def resume_unfinished_turns(self) -> int:
        """Turns a crash left queued or running are run again, editing their status messages in
        place; results stored but never announced are announced. Returns how many were resumed."""
        resumed = 0
        for turn in await self.store.unfinished_turns():
            conversation = await self.store.get_conversation(turn.conversation_id)
            adapter = self._adapters.get(conversation.platform) if conversation else None
            if conversation is None or adapter is None:
                continue
            existing = await self._status_ref(turn.id, conversation)
            if turn.status == TurnStatus.RUNNING:
                turn = await self.store.update_turn(turn.id, status=TurnStatus.QUEUED)
            self._owners[turn.id] = turn.owner
            task = asyncio.create_task(
                self._drive(adapter, turn, conversation.thread, None, existing=existing)
            )
            self._tasks[turn.id] = task
            task.add_done_callback(functools.partial(self._forget, turn.id))
            resumed += 1
        for turn in await self.store.unannounced_turns():
            conversation = await self.store.get_conversation(turn.conversation_id)
            adapter = self._adapters.get(conversation.platform) if conversation else None
            if conversation is None or adapter is None or turn.canvas_code is None:
                continue
            existing = await self._status_ref(turn.id, conversation)
            status = _StatusMessage(
                adapter, self.store, turn.id, conversation.chat, conversation.thread, existing
            )
            try:
                await self.announce(adapter, turn, status, _canvas(turn.canvas_code))
                resumed += 1
            except Exception:
                log.exception("turn %s: could not announce its stored result", turn.id)
        return resumed

    async def _status_ref(self, turn_id: int, conversation: Conversation) -> MessageRef | None:
        """The turn's status message from before a restart, to edit it in place."""
        links = await self.store.messages_for_turn(turn_id, LinkRole.STATUS)
        if not links:
            return None
        return MessageRef(conversation.platform, links[-1].chat, links[-1].message_id, conversation.thread)

    async def _drive(
        self, adapter: Adapter, turn: Turn, thread: str, reply_to: str | None, existing: MessageRef | None
    ) -> None:
        conversation = await self.store.get_conversation(turn.conversation_id)
        assert conversation is not None
        status = _StatusMessage(adapter, self.store, turn.id, conversation.chat, thread, existing, reply_to)
        composed = self._answered.setdefault(turn.id, asyncio.Event())
        try:
            await status.show(Post(text=f"Turn {turn.id}: queued…"), now=True)
            if turn.canvas_code is None:
                turn = await self._compose(turn, status)
                composed.set()
                if turn.canvas_code is None:
                    return
                await self._post_preview(adapter, turn, status)
            elif turn.kind == TurnKind.USER_CANVAS:
                await self._post_preview(adapter, turn, status)
            await self._render(adapter, turn, status)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await self._end(turn, status, TurnStatus.CANCELLED, "Cancelled.", retry=True)
            raise
        except Exception as e:  # the turn fails; the bot goes on
            log.exception("turn %s failed", turn.id)
            with contextlib.suppress(Exception):
                await self._end(turn, status, TurnStatus.FAILED, f"Something went wrong: {e}", retry=True)

    async def _end(
        self, turn: Turn, status: _StatusMessage, state: TurnStatus, text: str, *, retry: bool
    ) -> None:
        current = await self.store.get_turn(turn.id)
        if not current.status.finished:
            await self.store.update_turn(
                turn.id, status=state, error=text if state == TurnStatus.FAILED else None
            )
        buttons = (Button("retry", turn.id),) if retry else ()
        await status.finish(Post(text=f"Turn {turn.id}: {text}", buttons=buttons))

    async def _job_ended(self, turn: Turn, status: _StatusMessage, event: Failed | Cancelled) -> None:
        if isinstance(event, Failed):
            await self._end(turn, status, TurnStatus.FAILED, event.message, retry=True)
        else:
            await self._end(turn, status, TurnStatus.CANCELLED, f"Cancelled ({event.reason}).", retry=True)

    async def _wait_for_parent(self, turn: Turn) -> Turn | None:
        """A follow-up sent while the parent is still composing waits for its answer."""
        if turn.parent_id is None:
            return None
        composed = self._answered.get(turn.parent_id)
        if composed is not None:  # the parent is in flight: its answer (or its end) sets this
            await composed.wait()
        return await self.store.get_turn(turn.parent_id)

    async def _history(self, turn: Turn) -> list[ChatMessage]:
        messages: list[ChatMessage] = []
        if turn.parent_id is not None:
            for earlier in await self.store.history(turn.parent_id):
                if earlier.kind == TurnKind.RENDER or earlier.canvas_code is None:
                    continue  # a re-render adds nothing for the model; a failed turn has no answer
                user = earlier.user_text or "Draw this canvas."
                answer = earlier.assistant_text or f"```python\n{earlier.canvas_code}```"
                messages += [ChatMessage("user", user), ChatMessage("assistant", answer)]
        messages.append(ChatMessage("user", turn.user_text))
        return messages

    async def _compose(self, turn: Turn, status: _StatusMessage) -> Turn:
        await self._wait_for_parent(turn)
        llm = self.config.llm
        job = ComposeJob(
            owner=turn.owner,
            messages=tuple(await self._history(turn)),
            params=GenerationParams(
                temperature=llm.temperature,
                top_p=llm.top_p,
                max_new_tokens=llm.max_new_tokens,
                seed=turn.seed,
            ),
            tag=str(turn.id),
        )
        handle = await self._submit(turn, status, job)
        if handle is None:
            return turn
        parts: list[str] = []
        code = ""
        async for event in handle.events():
            if isinstance(event, Queued):
                await status.show(
                    Post(text=f"Turn {turn.id}: queued #{event.position}{_fmt_eta(event.eta_s)}")
                )
            elif isinstance(event, Started):
                turn = await self._mark_running(turn)
                parts, code = [], ""  # attempt 2 (after running out of memory) starts over
                await status.show(Post(text=f"Turn {turn.id}: writing the canvas…"), now=True)
            elif isinstance(event, TextDelta):
                code += event.text
                await status.show(
                    Post(text=_regions_status(parts, f"Turn {turn.id}: writing the canvas…"), code=code)
                )
            elif isinstance(event, PartParsed):
                part = event.part
                label = (
                    part.global_description.description
                    if isinstance(part, GlobalParsed)
                    else f"{part.region.description} ({part.region.location})"
                )
                parts.append(label)
                await status.show(
                    Post(text=_regions_status(parts, f"Turn {turn.id}: writing the canvas…"), code=code)
                )
            elif isinstance(event, Finished) and isinstance(event.result, ComposeResult):
                return await self._composed(turn, status, event.result)
            elif isinstance(event, Failed | Cancelled):
                await self._job_ended(turn, status, event)
        return await self.store.get_turn(turn.id)

    async def _composed(self, turn: Turn, status: _StatusMessage, result: ComposeResult) -> Turn:
        notes = " ".join(result.stats.notes)
        if result.canvas is None:
            error = result.parse_error or CanvasError("the answer holds no canvas")
            turn = await self.store.update_turn(turn.id, assistant_text=result.text)
            await self._end(
                turn, status, TurnStatus.FAILED, f"The model's answer did not parse: {error}", retry=True
            )
            return await self.store.get_turn(turn.id)
        blocked = self.policy.check_canvas(result.canvas)
        if not blocked.allowed:
            turn = await self.store.update_turn(turn.id, assistant_text=result.text)
            await self._end(turn, status, TurnStatus.FAILED, blocked.message, retry=False)
            return await self.store.get_turn(turn.id)
        code = find_code(result.text).code
        turn = await self.store.update_turn(turn.id, assistant_text=result.text, canvas_code=code)
        if notes:
            await status.show(Post(text=f"Turn {turn.id}: {notes}"), now=True)
        return turn

    async def _submit(
        self, turn: Turn, status: _StatusMessage, job: ComposeJob | RenderJob
    ) -> JobHandle | None:
        try:
            handle = self.engine.submit(job)
        except EngineError as e:
            await self._end(turn, status, TurnStatus.FAILED, str(e), retry=True)
            return None
        self._jobs[turn.id] = handle
        return handle

    async def _mark_running(self, turn: Turn) -> Turn:
        if turn.status == TurnStatus.QUEUED:
            return await self.store.update_turn(turn.id, status=TurnStatus.RUNNING)
        return turn

    async def _post_preview(self, adapter: Adapter, turn: Turn, status: _StatusMessage) -> None:
        canvas = _canvas(turn.canvas_code or "")
        params = turn.params
        # drawn off the event loop: it is the bot's costliest step of its own (a few ms)
        png = await asyncio.to_thread(_layout_png, canvas, int(params["width"]), int(params["height"]))
        regions = len(canvas.regions)
        post = Post(
            text=f"Turn {turn.id}: layout: {regions} region{'s' if regions != 1 else ''}. Drawing next…",
            image=OutFile(f"turn-{turn.id}-layout.png", png, "image/png"),
            role="preview",
            turn_id=turn.id,
        )
        refs = await adapter.send(status.chat, status.thread, post)
        for ref in refs:
            await self.store.link_message(ref.platform, ref.chat, ref.message_id, turn.id, LinkRole.PREVIEW)

    def _render_params(self, turn: Turn) -> RenderParams:
        p = turn.params
        return RenderParams(
            width=int(p.get("width", self.config.render.width)),
            height=int(p.get("height", self.config.render.height)),
            steps=int(p.get("steps", self.config.render.steps)),
            cfg=float(p.get("cfg", self.config.render.cfg)),
            seed=int(turn.seed if turn.seed is not None else 12345),
            negative_prompt=str(p.get("negative_prompt", self.config.render.negative_prompt)),
            hires_scale=float(p.get("hires_scale", self.config.render.hires_scale)),
        )

    async def _render(self, adapter: Adapter, turn: Turn, status: _StatusMessage) -> None:
        canvas = _canvas(turn.canvas_code or "")
        params = self._render_params(turn)
        handle = await self._submit(
            turn, status, RenderJob(owner=turn.owner, canvas=canvas, params=params, tag=str(turn.id))
        )
        if handle is None:
            return
        async for event in handle.events():
            if isinstance(event, Queued):
                await status.show(
                    Post(text=f"Turn {turn.id}: waiting to draw, #{event.position}{_fmt_eta(event.eta_s)}")
                )
            elif isinstance(event, Started):
                turn = await self._mark_running(turn)
            elif isinstance(event, Step):
                phase = "refining" if event.phase == "hires" else "drawing"
                await status.show(
                    Post(
                        text=f"Turn {turn.id}: {phase}, step {event.index}/{event.total}",
                        progress=(event.index, event.total),
                    )
                )
            elif isinstance(event, Finished) and isinstance(event.result, RenderResult):
                await self._rendered(adapter, turn, status, canvas, event.result)
            elif isinstance(event, Failed | Cancelled):
                await self._job_ended(turn, status, event)

    async def _rendered(
        self, adapter: Adapter, turn: Turn, status: _StatusMessage, canvas: Canvas, result: RenderResult
    ) -> None:
        code = turn.canvas_code or ""
        # the renderer's chunks, with the turn's own canvas code and settings taking precedence
        metadata = {**result.metadata, **png_metadata(code, result.params, result.model or self.model_name)}
        data = encode_png(result.image, metadata)
        path = self.store.new_image_path(turn.id)
        path.write_bytes(data)
        turn = await self.store.update_turn(turn.id, status=TurnStatus.DONE, image_path=path)  # stored first
        await self.announce(adapter, turn, status, canvas)

    async def announce(
        self, adapter: Adapter, turn: Turn, status: _StatusMessage | None, canvas: Canvas
    ) -> None:
        """Post a done turn's result and link every message to the turn."""
        conversation = await self.store.get_conversation(turn.conversation_id)
        assert conversation is not None and turn.image_path is not None
        path = self.store.image_file(turn.image_path)
        data = path.read_bytes()
        parent_canvas = await self._parent_canvas(turn)
        change = describe_change(parent_canvas, canvas)
        if (
            turn.kind == TurnKind.RENDER
            and parent_canvas is not None
            and diff_canvases(parent_canvas, canvas).unchanged
        ):
            change = "Same canvas, drawn again."
        p = self._render_params(turn)
        hires = f", hires {p.hires_scale:g}x" if p.hires_scale > 1.05 else ""
        summary = (
            f"{change}\n{canvas.global_description.description} · seed {p.seed} · {p.width}x{p.height}{hires}"
        )
        files = [
            OutFile(f"turn-{turn.id}-canvas.py", (turn.canvas_code or "").encode("utf-8"), "text/x-python")
        ]
        if turn.params.get("png"):
            files.append(OutFile(f"turn-{turn.id}.png", data, "image/png", path=str(path)))
        post = Post(
            text=summary,
            image=OutFile(f"turn-{turn.id}.png", data, "image/png", path=str(path)),
            files=tuple(files),
            buttons=(Button("seed", turn.id), Button("rewrite", turn.id), Button("hires", turn.id)),
            role="image",
            turn_id=turn.id,
        )
        refs = await adapter.send(conversation.chat, conversation.thread, post)
        for i, ref in enumerate(refs):
            role = LinkRole.IMAGE if i == 0 else LinkRole.CODE
            await self.store.link_message(ref.platform, ref.chat, ref.message_id, turn.id, role)
        if status is not None:
            await status.finish(Post(text=f"Turn {turn.id}: done."))

    async def _parent_canvas(self, turn: Turn) -> Canvas | None:
        if turn.parent_id is None:
            return None
        parent = await self.store.get_turn(turn.parent_id)
        if parent.canvas_code is None:
            return None
        try:
            return _canvas(parent.canvas_code)
        except CanvasError:
            return None

