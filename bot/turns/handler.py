"""Where a turn starts: the bot's `Handler` for every adapter.

`on_message` checks the policy, routes chat commands (/help /new /cancel /undo /settings and its
short forms) and turns a request into a stored turn that the runner starts. `on_button` does the
same for a pressed button (Cancel, Retry, Rewrite, New seed, Higher resolution): every press is
checked against the platform and chat the turn lives in and against the presser, and a re-run
runs as the presser, under the presser's cap and rate limit.

Every refusal is a `UserError`, turned into a reply in exactly one place each: `on_message`
replies in the chat, `on_button` answers the presser privately.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from dataclasses import dataclass

from adapters.base import Adapter, ButtonPress, Choice, Incoming, Post, clipped
from bot.policy import EMPTY_REQUEST_MESSAGE, Policy, is_blank
from bot.store import UPLOADS, Conversation, LinkRole, Store, Turn, TurnKind, TurnStatus
from bot.turns.errors import UserError
from bot.turns.live import owner_key
from bot.turns.requests import PictureOfOurs, Resolver, canvas_source, chat_key
from bot.turns.results import canvas_of
from bot.turns.runner import TurnRunner, storage_failed
from bot.turns.settings import SettingsBook, TurnSettings, parse_changes, settings_from_render_params
from omost_engine.canvas import Canvas, CanvasError
from omost_engine.canvas_code import parse
from omost_engine.render.base import MAX_FRAME_ZOOM

log = logging.getLogger(__name__)

HELP_TEXT = """\
Describe a picture and I'll compose it the Omost way: a language model writes a canvas (a scene \
description and regions), then it is drawn.
• Reply to any of my messages to change that picture ("make it night", "add a cat").
• Send canvas code (a ```python block or a .py file) to draw it directly,
  or one of my PNGs to continue from it.
• Commands: /new (start fresh), /cancel, /undo, /settings, /help.
Buttons: New seed, Rewrite (the model tries again), Higher resolution, Cancel (while it runs)."""

SETTINGS_HINT = ". Change with e.g. /settings size=1024x1024 steps=30 seed=random hires=1.5 png=on"
SETTING_COMMANDS = {"settings": "", "seed": "seed", "size": "size", "steps": "steps", "hires": "hires"}
HIRES_BUTTON_SCALE = 1.5
ZOOM_OUT_STEP = 1.5
MAX_ZOOM_STEP = 4.0
MAX_CHOICES = 25  # Discord's select menus hold 25 options
CHOICE_LABEL_LIMIT = 60
STORAGE_REFUSED = (
    "I could not save your request: the bot's storage is failing (the disk may be full). "
    "Try again later; the bot's admin can find the details in the log."
)
NOT_YOURS = "Only the person who asked for this picture (or an admin) can cancel it."
NOT_YOURS_TO_VARY = "Only the person who asked for this picture (or an admin) can redraw part of it."


@dataclass(frozen=True)
class ChatLatest:
    """A chat's latest turn and latest picture: what the terminal names when a command gives no
    turn number, and the conversation a new terminal session continues."""

    turn_id: int | None = None
    turn_status: str | None = None
    turn_at: float | None = None  # when the latest turn was made (epoch seconds)
    result_id: int | None = None  # the latest turn that was drawn


def _zoom_step(value: str) -> float:
    """How far Zoom out goes: the button's 1.5x, or a factor typed in the terminal (/zoom 2)."""
    if not value:
        return ZOOM_OUT_STEP
    try:
        step = float(value)
    except ValueError:
        step = 0.0
    if not 1.0 < step <= MAX_ZOOM_STEP:
        raise UserError(f"Zoom out takes a factor above 1 and at most {MAX_ZOOM_STEP:g}, e.g. 1.5.")
    return step


class ChatHandler:
    def __init__(
        self,
        *,
        store: Store,
        runner: TurnRunner,
        policy: Policy,
        book: SettingsBook,
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self.runner = runner
        self.policy = policy
        self.book = book
        self.resolver = Resolver(store, book)
        self._rng = rng or random.SystemRandom()

    def attach(self, adapter: Adapter) -> None:
        self.runner.adapters[adapter.platform] = adapter

    def new_seed(self) -> int:
        return self._rng.randrange(2**31)

    async def latest_in_chat(self, platform: str, chat: str, thread: str = "") -> ChatLatest:
        """The latest turn and latest drawn turn of the chat's current conversation."""
        conversation, latest = await self.store.conversation_head(platform, chat, thread)
        if conversation is None or latest is None:
            return ChatLatest()
        result: Turn | None = latest
        if latest.status != TurnStatus.DONE:
            result = await self.store.latest_turn(conversation.id, statuses=[TurnStatus.DONE])
        return ChatLatest(latest.id, latest.status.value, latest.created_at, result.id if result else None)

    # --- messages ------------------------------------------------------------------------------

    async def on_message(self, adapter: Adapter, message: Incoming) -> None:
        self.attach(adapter)
        try:
            reply = await self._route(adapter, message)
        except UserError as e:
            reply = e.reply
        except Exception as e:
            if not storage_failed(e):
                raise
            log.exception("could not store a request from %s/%s", message.platform, message.chat)
            reply = STORAGE_REFUSED
        if reply is None:
            return
        post = reply if isinstance(reply, Post) else Post(text=reply)
        post = Post(
            text=post.text,
            settings_keyboard=post.settings_keyboard,
            reply_to=message.message_id or None,
            in_place=message.answer_in_place,
        )
        try:
            await adapter.send(message.chat, message.thread, post)
        except Exception:
            log.exception("could not reply in %s/%s", message.platform, message.chat)

    async def _route(self, adapter: Adapter, message: Incoming) -> Post | str | None:
        access = self.policy.check_access(
            message.platform,
            message.user,
            message.chat,
            places=(message.thread, message.guild),
            roles=message.roles,
        )
        if not access.allowed:
            raise UserError(access.message)
        command = (message.command or "").lower()
        if command in ("help", "start"):
            return HELP_TEXT
        if command == "new":
            await self.store.new_conversation(message.platform, message.chat, message.thread)
            return "Started a new conversation. Describe a picture."
        if command == "cancel":
            return self._cancel_latest(owner_key(message.platform, message.user))
        if command == "undo":
            return await self.resolver.undo(message)
        if command in SETTING_COMMANDS:
            return await self._settings(message, SETTING_COMMANDS[command])
        if command not in ("", "omost"):
            raise UserError(f"I don't know /{command}. Try /help.")
        return await self._request(adapter, message)

    def _cancel_latest(self, owner: str) -> str:
        turn_id = self.runner.latest_of(owner)
        if turn_id is None:
            return "You have nothing queued or running."
        self.runner.cancel(turn_id)
        return f"Cancelling turn {turn_id}."

    async def _settings(self, message: Incoming, key: str) -> Post:
        """/settings key=value ...; /seed N|random; /size WxH; /steps N; /hires X; keyboard options."""
        words = message.text.strip()
        if key and words:
            words = f"{key}={words}"
        changes = parse_changes(words, message.options)
        if changes:
            await self.book.save("user", message.platform, message.user, changes)
        current = await self.book.effective(message.platform, message.user, chat_key(message))
        text = (
            ("Saved. " if changes else "Your settings: ")
            + current.summary()
            + ("" if changes else SETTINGS_HINT)
        )
        return Post(text=text, settings_keyboard=True)

    async def _request(self, adapter: Adapter, message: Incoming) -> str | None:
        owner = owner_key(message.platform, message.user)
        decision = self.policy.decide(
            message.platform,
            message.user,
            message.chat,
            message.text.strip(),
            queued=self.runner.in_flight(owner),
            places=(message.thread, message.guild),
            roles=message.roles,
        )
        if not decision.allowed:
            raise UserError(decision.message)
        with self.runner.reserve(owner):  # taken with no await since the cap check
            return await self._new_turn(adapter, message, owner)

    async def _new_turn(self, adapter: Adapter, message: Incoming, owner: str) -> str | None:
        text = message.text.strip()
        conversation, parent = await self.resolver.parent(message)
        source = await canvas_source(message)
        code = source.code
        if source.picture is not None:
            parent = await self._picture_turn(message, conversation, parent, owner, source.picture)
            if not text:
                return "Got it: reply to this message (or just write) to change that picture."
        canvas = self._checked_canvas(code) if code is not None else None
        if canvas is None and is_blank(text):  # nothing left once invisible characters are gone
            raise UserError(f"{EMPTY_REQUEST_MESSAGE[:-1]}, e.g. “a lighthouse in a storm”.")
        settings = await self.book.effective(
            message.platform, message.user, chat_key(message), message.options
        )
        if parent is not None:  # a zoomed-out picture keeps its framing when it is continued
            settings = settings.merged({"frame_zoom": float(parent.params.get("frame_zoom", 1.0))})
        seed = self._seed_for(settings, parent)
        links = (
            [(message.platform, message.chat, message.message_id, LinkRole.USER)]
            if message.message_id
            else []
        )
        turn = await self.store.create_turn(
            conversation_id=conversation.id,
            parent_id=parent.id if parent else None,
            kind=TurnKind.USER_CANVAS if canvas is not None else TurnKind.COMPOSE,
            owner=owner,
            user_text=text,
            canvas_code=code,
            seed=seed,
            params=settings.stored(),
            links=links,
        )
        live = self.runner.live_turn(
            adapter, turn, conversation, settings.merged({"seed": seed}), reply_to=message.message_id or None
        )
        self.runner.start(live, parent)
        return None

    def _seed_for(self, settings: TurnSettings, parent: Turn | None) -> int:
        """The seed a user set (/seed N, an option) wins; an edit keeps its parent's seed, so only
        what the user asked for changes (as Omost's app does); a new picture gets a random one."""
        if settings.seed is not None:
            return settings.seed
        if parent is not None and parent.seed is not None:
            return parent.seed
        return self.new_seed()

    def _checked_canvas(self, code: str) -> Canvas:
        try:
            canvas = parse(code)
        except CanvasError as e:
            raise UserError(f"That canvas code has a problem: {e}") from None
        blocked = self.policy.check_canvas(canvas)
        if not blocked.allowed:
            raise UserError(blocked.message)
        return canvas

    async def _picture_turn(
        self,
        message: Incoming,
        conversation: Conversation,
        parent: Turn | None,
        owner: str,
        picture: PictureOfOurs,
    ) -> Turn:
        """A done turn holding one of our pictures the user sent back, to continue from."""
        self._checked_canvas(picture.code)  # the same policy checks as the model's canvases
        settings = settings_from_render_params(picture.params).clamped()
        turn = await self.store.create_turn(
            conversation_id=conversation.id,
            parent_id=parent.id if parent else None,
            kind=TurnKind.USER_CANVAS,
            owner=owner,
            user_text="(continued from an uploaded picture)",
            canvas_code=picture.code,
            seed=picture.params.seed,
            params=settings.stored(),
            status=TurnStatus.RUNNING,
        )
        # kept under uploads/, which [data] keep_uploads_days prunes; written off the event loop
        try:
            path = self.store.new_image_path(turn.id, kept=UPLOADS)
            await asyncio.to_thread(path.write_bytes, picture.data)
            return await self.store.update_turn(
                turn.id,
                status=TurnStatus.DONE,
                image_path=path,
                assistant_text=f"```python\n{picture.code}```",
                links=[(message.platform, message.chat, message.message_id, LinkRole.IMAGE)],
            )
        except Exception:  # e.g. a full disk: never left "running", which a restart would draw
            with contextlib.suppress(Exception):
                await self.store.update_turn(turn.id, status=TurnStatus.FAILED, error=STORAGE_REFUSED)
            raise

    # --- buttons -------------------------------------------------------------------------------

    async def on_button(self, adapter: Adapter, press: ButtonPress) -> str | None:
        self.attach(adapter)
        try:
            return await self._press(adapter, press)
        except UserError as e:
            return e.reply
        except Exception as e:
            if not storage_failed(e):
                raise
            log.exception("could not store a button press in %s/%s", press.platform, press.chat)
            return STORAGE_REFUSED

    async def _press(self, adapter: Adapter, press: ButtonPress) -> str | None:
        found = await self.store.turn_in_conversation(press.turn_id)
        if found is None or (found[1].platform, found[1].chat) != (press.platform, press.chat):
            raise UserError("That picture is no longer available.")
        turn, conversation = found
        presser = owner_key(press.platform, press.user)
        if press.action == "cancel":
            return self._cancel_press(turn, presser, press)
        if press.action == "retry" and turn.status == TurnStatus.DONE:
            return await self._post_again(turn, press)
        decision = self.policy.decide(
            press.platform,
            press.user,
            press.chat,
            queued=self.runner.in_flight(presser),
            places=(press.thread, press.guild),
            roles=press.roles,
        )
        if not decision.allowed:
            raise UserError(decision.message)
        if press.action in ("vary", "zoom") and not self.runner.edits_supported:
            raise UserError("This bot's image model draws whole pictures only: try New seed instead.")
        if press.action == "vary":  # redrawing part of someone's picture is theirs to ask for
            if not self._owner_or_admin(turn, presser, press):
                return NOT_YOURS_TO_VARY
            if not press.value:
                await adapter.send(conversation.chat, conversation.thread, self._region_picker(turn))
                return None
        with self.runner.reserve(presser):
            if press.action in ("vary", "zoom"):
                new = await self._edit_turn(turn, presser, press)
            else:
                new = await self._rerun(turn, press.action, presser)
            settings = TurnSettings.from_turn(self.book.defaults, new.params, new.seed)
            live = self.runner.live_turn(adapter, new, conversation, settings)
            self.runner.start(live, await self._parent_of(new, turn))
        return None  # the chat shows the new turn's progress

    def _owner_or_admin(self, turn: Turn, presser: str, press: ButtonPress) -> bool:
        return presser == turn.owner or any(
            self.policy.is_admin(press.platform, who) for who in (press.user, *press.roles)
        )

    async def _post_again(self, turn: Turn, press: ButtonPress) -> str:
        """Retry on a turn drawn but never posted: post the stored picture (no GPU time, so no
        cap; the presser's access and rate limit still apply)."""
        for decision in (
            self.policy.check_access(
                press.platform, press.user, press.chat, places=(press.thread, press.guild), roles=press.roles
            ),
            self.policy.check_rate(press.platform, press.user, record=True),
        ):
            if not decision.allowed:
                raise UserError(decision.message)
        if turn.image_path is None or await self.store.messages_for_turn(turn.id, LinkRole.IMAGE):
            raise UserError("That picture was posted already.")
        if not self.runner.announce_again(turn):
            return "That picture is on its way."
        return "Posting it again…"

    def _cancel_press(self, turn: Turn, presser: str, press: ButtonPress) -> str:
        if not self._owner_or_admin(turn, presser, press):
            return NOT_YOURS
        if self.runner.cancel(turn.id):
            return "Cancelling…"
        return "That picture is not being made any more."

    async def _parent_of(self, new: Turn, pressed: Turn) -> Turn | None:
        if new.parent_id == pressed.id:
            return pressed
        return await self.store.find_turn(new.parent_id) if new.parent_id is not None else None

    def _region_picker(self, turn: Turn) -> Post:
        """The question Vary region asks first: which region of this picture to redraw."""
        canvas = canvas_of(turn)
        if canvas is None or not canvas.regions:
            raise UserError("That picture has no regions to vary.")
        choices = tuple(
            Choice("vary", turn.id, str(n), clipped(f"{n}. {region.description}", CHOICE_LABEL_LIMIT))
            for n, region in enumerate(canvas.regions[:MAX_CHOICES], 1)
        )
        return Post(text=f"Turn {turn.id}: which region should I redraw with a new seed?", choices=choices)

    async def _edit_turn(self, turn: Turn, presser: str, press: ButtonPress) -> Turn:
        """Vary region (a region picked) or Zoom out: a render of the same canvas over the picture."""
        if turn.canvas_code is None or turn.image_path is None:
            raise UserError("That turn has no picture to change yet.")
        settings = TurnSettings.from_turn(self.book.defaults, turn.params, turn.seed).continued()
        seed = turn.seed
        if press.action == "vary":
            canvas = canvas_of(turn)
            picked = int(press.value) if press.value.isdigit() else 0
            if canvas is None or not 1 <= picked <= len(canvas.regions):
                raise UserError("That region is not in this picture.")
            settings, seed = settings.merged({"vary_region": picked}), self.new_seed()
        else:
            step = _zoom_step(press.value)
            zoomed = settings.frame_zoom * step
            if zoomed > MAX_FRAME_ZOOM:
                raise UserError("That picture is zoomed out as far as it goes.")
            settings = settings.merged({"zoom_out": step, "frame_zoom": zoomed})
        return await self._render_turn(turn, presser, settings, seed)

    async def _render_turn(self, turn: Turn, presser: str, settings: TurnSettings, seed: int | None) -> Turn:
        """A turn drawing `turn`'s canvas again (a new seed, hires, a varied region, zoomed out)."""
        return await self.store.create_turn(
            conversation_id=turn.conversation_id,
            parent_id=turn.id,
            kind=TurnKind.RENDER,
            owner=presser,
            canvas_code=turn.canvas_code,
            seed=seed,
            params=settings.stored(),
        )

    async def _rerun(self, turn: Turn, action: str, presser: str) -> Turn:
        """The turn a re-run button starts: a new turn owned by the presser, or for a Retry of the
        presser's own failed or cancelled turn, that turn back in the queue."""
        if action == "retry":
            return await self._retry(turn, presser)
        if action == "rewrite":
            return await self._rewrite(turn, presser)
        if action in ("seed", "hires"):
            if turn.canvas_code is None:
                raise UserError("That turn has no canvas to draw yet.")
            # the picture's frame carries over; a varied region or a zoom was that turn's own edit
            settings = TurnSettings.from_turn(self.book.defaults, turn.params, turn.seed).continued()
            seed = turn.seed
            if action == "seed":
                seed = self.new_seed()
            else:
                settings = settings.merged({"hires_scale": max(HIRES_BUTTON_SCALE, settings.hires_scale)})
            return await self._render_turn(turn, presser, settings, seed)
        raise UserError("That button is not one I know.")

    async def _retry(self, turn: Turn, presser: str) -> Turn:
        if turn.status not in (TurnStatus.FAILED, TurnStatus.CANCELLED):
            raise UserError("That picture is already on its way.")  # pressed twice, or retried
        if presser == turn.owner:  # its next run gets jobs of its own (job ids count the runs)
            run = {**turn.params, "run": int(turn.params.get("run", 0)) + 1}
            return await self.store.update_turn(turn.id, status=TurnStatus.QUEUED, error=None, params=run)
        return await self.store.create_turn(  # someone else's turn: a copy of it, as theirs
            conversation_id=turn.conversation_id,
            parent_id=turn.parent_id,
            kind=turn.kind,
            owner=presser,
            user_text=turn.user_text,
            canvas_code=turn.canvas_code if turn.kind != TurnKind.COMPOSE else None,
            seed=turn.seed,
            params=turn.params,
        )

    async def _rewrite(self, turn: Turn, presser: str) -> Turn:
        source = turn
        while source.kind != TurnKind.COMPOSE and source.parent_id is not None:
            source = await self.store.get_turn(source.parent_id)
        if source.kind != TurnKind.COMPOSE:
            raise UserError("There is no request to rewrite here.")
        return await self.store.create_turn(
            conversation_id=source.conversation_id,
            parent_id=source.parent_id,
            kind=TurnKind.COMPOSE,
            owner=presser,
            user_text=source.user_text,
            seed=self.new_seed(),
            params=TurnSettings.from_turn(self.book.defaults, turn.params, None).continued().stored(),
        )
