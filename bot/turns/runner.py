"""The turn runner: drives each turn through the engine, from queued to its result.

    start(live)  ->  compose (unless the canvas is known)  ->  layout preview  ->  render  ->  result

One task per turn. The runner owns the table of turns in flight (and so the per-user cap's
count: `in_flight`, `reserve`), cancels a turn by its id (the engine's job tag, or the task while
the turn waits for its parent), resumes turns a crash left queued or running (editing their
status messages in place) and announces results that were stored but never posted (in the
background, like a Retry press on a result the platform refused; one whose post may have gone
out before a crash is not posted again: its status says so and offers Retry). A store write
that fails ends the turn with the storage failure told to the user, and frees its slot.

It knows the store, the engine and the port; the chat commands are the handler's.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import sqlite3
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from adapters.base import Adapter, Button, MessageRef, Post
from bot.config import LLMConfig
from bot.policy import Policy
from bot.store import Conversation, LinkRole, Store, Turn, TurnKind, TurnStatus
from bot.turns import edits, results
from bot.turns.live import LiveTurn
from bot.turns.settings import SettingsBook, TurnSettings, render_params
from bot.turns.status import StatusMessage
from omost_engine.canvas import Canvas, CanvasError
from omost_engine.canvas_code import GlobalParsed, find_code
from omost_engine.engine_api import EngineUnavailable, JobEngine, JobHandleView
from omost_engine.errors import EngineError
from omost_engine.jobs import (
    Cancelled,
    ComposeJob,
    ComposeResult,
    Failed,
    FailureKind,
    Finished,
    PartParsed,
    Queued,
    RenderJob,
    RenderResult,
    Repairing,
    Started,
    Step,
    TextDelta,
)
from omost_engine.llm.base import ChatMessage, GenerationParams

log = logging.getLogger(__name__)

WRITING = "writing the canvas…"
REPAIRING = "the answer did not parse ({error}); asking the model once more…"
CANCELLED_BY_USER = "cancelled by the user"
SOMETHING_WENT_WRONG = "Something went wrong on my side; the bot's admin can find the details in the log."
STORAGE_FAILED = (
    "I could not save this turn: the bot's storage is failing (the disk may be full). "
    "The bot's admin can find the details in the log; try again later."
)
DELIVERY_DELAYS_S = (5.0, 15.0, 45.0, 120.0)
"""Waits before posting a stored result again when the platform failed the post (after the
adapter's own retries): about three minutes in all, then the status offers Retry."""
_FULL_DISK = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}


def storage_failed(error: BaseException) -> bool:
    """The store or the data folder could not be written (a full disk, a read-only file system)."""
    if isinstance(error, sqlite3.Error):
        return True
    return isinstance(error, OSError) and error.errno in _FULL_DISK


def _eta(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 60:
        return f", about {max(1, round(seconds))} s"
    return f", about {round(seconds / 60)} min"


@dataclass
class _InFlight:
    live: LiveTurn
    task: asyncio.Task[None] | None = None
    answered: asyncio.Event = field(default_factory=asyncio.Event)  # set once its canvas is known
    ended: asyncio.Event = field(default_factory=asyncio.Event)  # set once it is done or failed


class TurnRunner:
    def __init__(
        self,
        *,
        store: Store,
        engine: JobEngine,
        policy: Policy,
        settings: SettingsBook,
        llm: LLMConfig,
        model_name: str,
        instance: str = "bot",
        edits_supported: bool = True,
        delivery_delays_s: Sequence[float] = DELIVERY_DELAYS_S,
    ) -> None:
        self.store = store
        self.engine = engine
        self.policy = policy
        self.settings = settings
        self.llm = llm
        self.model_name = model_name
        self.instance = instance  # in every job id: bots sharing a render cluster never collide
        self.edits_supported = edits_supported  # the renderer can redraw part of a picture
        self.delivery_delays_s = tuple(delivery_delays_s)
        self.adapters: dict[str, Adapter] = {}
        self._flight: dict[int, _InFlight] = {}
        self._reserved: Counter[str] = Counter()
        self._announcing: dict[int, asyncio.Task[None]] = {}  # stored results being posted again
        self._side_tasks: set[asyncio.Task[None]] = set()
        self._closing = False

    # --- the table of turns in flight ------------------------------------------------------------

    def in_flight(self, owner: str) -> int:
        """Turns of `owner` queued or running, plus requests reserved but not yet started."""
        return self._reserved[owner] + sum(1 for f in self._flight.values() if f.live.turn.owner == owner)

    @contextmanager
    def reserve(self, owner: str) -> Iterator[None]:
        """Hold one of `owner`'s slots while a request becomes a turn. Take it right after the cap
        check, with no await between, so simultaneous requests cannot all pass the check."""
        self._reserved[owner] += 1
        try:
            yield
        finally:
            self._reserved[owner] -= 1
            if not self._reserved[owner]:
                del self._reserved[owner]

    def latest_of(self, owner: str) -> int | None:
        mine = [turn_id for turn_id, f in self._flight.items() if f.live.turn.owner == owner]
        return max(mine) if mine else None

    def posting(self, turn_id: int) -> bool:
        """Whether a stored result of this turn is being posted again right now."""
        return turn_id in self._announcing

    def cancel(self, turn_id: int, reason: str = CANCELLED_BY_USER) -> bool:
        """Cancel a turn in flight: its engine job (by tag), or its task while it has none."""
        flight = self._flight.get(turn_id)
        if flight is None:
            posting = self._announcing.get(turn_id)
            if posting is not None:  # a stored result being posted again: stop trying
                posting.cancel()
            return posting is not None
        if not self.engine.cancel_tagged(str(turn_id), reason) and flight.task is not None:
            flight.task.cancel()
        return True

    async def drain(self) -> None:
        """Wait until every turn in flight has finished (the terminal chat's end of input)."""
        while self._flight or self._side_tasks:
            tasks = [f.task for f in self._flight.values() if f.task is not None]
            await asyncio.gather(*tasks, *self._side_tasks, return_exceptions=True)

    async def close(self) -> None:
        """Shut down: the turns in flight stop here but stay queued or running in the store, so
        the next start resumes them (a render cluster's jobs go on meanwhile)."""
        self._closing = True
        tasks = [f.task for f in self._flight.values() if f.task is not None] + list(self._side_tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- starting --------------------------------------------------------------------------------

    def live_turn(
        self,
        adapter: Adapter,
        turn: Turn,
        conversation: Conversation,
        settings: TurnSettings,
        *,
        status: MessageRef | None = None,
        reply_to: str | None = None,
    ) -> LiveTurn:
        message = StatusMessage(
            adapter,
            self.store,
            turn.id,
            conversation.chat,
            conversation.thread,
            ref=status,
            reply_to=reply_to,
        )
        live = LiveTurn(turn, conversation, adapter, self.store, message, settings)
        live.can_edit = self.edits_supported
        return live

    def start(self, live: LiveTurn, parent: Turn | None = None) -> None:
        """Run the turn; `parent` is the turn it continues, when the caller has it at hand (a
        composing turn loads it with its history, after the parent has answered)."""
        live.parent, live.parent_canvas = parent, results.canvas_of(parent)
        flight = self._flight[live.id] = _InFlight(live)
        flight.task = asyncio.create_task(self._drive(flight))

    async def resume_unfinished_turns(self) -> int:
        """Turns a crash left queued or running are run again, editing their status messages in
        place; results stored but never announced are announced. Returns how many."""
        resumed = 0
        for turn in await self.store.unfinished_turns():
            live = await self._restore(turn)
            if live is None:
                continue
            if turn.status == TurnStatus.RUNNING:
                await live.save(status=TurnStatus.QUEUED)
            parent = await self.store.find_turn(turn.parent_id) if turn.parent_id is not None else None
            self.start(live, parent)
            resumed += 1
        for turn in await self.store.unannounced_turns():
            if turn.announcing_at is not None:  # it may be posted: say so, never post it twice
                live = await self._restore(turn)
                if live is not None:
                    await results.show_maybe_posted(live)
            elif not self.announce_again(turn):
                continue
            resumed += 1
        return resumed

    def announce_again(self, turn: Turn) -> bool:
        """Post a stored result that was never posted (a restart, a Retry press), in the background
        with the usual retries. False when it is already being posted (or its turn is in flight)."""
        if turn.id in self._flight or turn.id in self._announcing:
            return False
        # registered before any await: two presses cannot both start one
        task = self._announcing[turn.id] = asyncio.create_task(self._announce_again(turn))
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)
        return True

    async def _announce_again(self, turn: Turn) -> None:
        live: LiveTurn | None = None
        try:
            live = await self._restore(turn)
            canvas = results.canvas_of(turn)
            if live is None or canvas is None:
                log.warning("turn %s: its stored result cannot be posted again here", turn.id)
                return
            parent = await self.store.find_turn(turn.parent_id) if turn.parent_id is not None else None
            live.parent_canvas = results.canvas_of(parent)
            await results.deliver(live, canvas, delays_s=self.delivery_delays_s)
        except asyncio.CancelledError:
            if live is not None:
                await live.status.finish(
                    Post(text=f"Turn {turn.id}: posting cancelled.", buttons=(Button("retry", turn.id),))
                )
            raise
        except Exception as e:
            if live is None:
                log.exception("turn %s: could not post its stored result", turn.id)
            else:
                await self._failed(live, e)
        finally:
            self._announcing.pop(turn.id, None)

    async def _restore(self, turn: Turn) -> LiveTurn | None:
        """A live turn for a stored one (after a restart), with its status message to edit."""
        found = await self.store.turn_in_conversation(turn.id)
        adapter = self.adapters.get(found[1].platform) if found else None
        if found is None or adapter is None:
            return None
        conversation = found[1]
        links = await self.store.messages_for_turn(turn.id, LinkRole.STATUS)
        ref = (
            MessageRef(conversation.platform, links[-1].chat, links[-1].message_id, conversation.thread)
            if links
            else None
        )
        settings = TurnSettings.from_turn(self.settings.defaults, turn.params, turn.seed)
        return self.live_turn(adapter, turn, conversation, settings, status=ref)

    # --- driving ---------------------------------------------------------------------------------

    async def _drive(self, flight: _InFlight) -> None:
        live = flight.live
        try:
            await live.show("queued…", now=True)
            canvas = results.canvas_of(live.turn)
            preview = live.turn.kind == TurnKind.USER_CANVAS  # a resumed turn showed it already
            if canvas is None:
                canvas = await self._compose(flight)
                if canvas is None:
                    return
                preview = True
            flight.answered.set()
            # the layout preview is drawn and posted while the render is submitted and starts: it
            # is in the chat at once, but it is off the turn's own path (the result waits for it)
            shown = asyncio.create_task(self._preview(live, canvas)) if preview else None
            try:
                await self._render(live, canvas, shown)
            finally:
                if shown is not None and not shown.done():
                    shown.cancel()
        except asyncio.CancelledError:
            if not self._closing:  # cancelled for its own sake (e.g. while waiting for its parent)
                await self._end_quietly(live, TurnStatus.CANCELLED, "Cancelled.")
            raise
        except Exception as e:  # the turn fails; the bot goes on (the detail is for the log only)
            await self._failed(live, e)
        finally:
            flight.answered.set()  # a child waiting on a turn that ended without an answer goes on
            flight.ended.set()
            self._flight.pop(live.id, None)

    async def _failed(self, live: LiveTurn, error: Exception) -> None:
        log.error("turn %s failed", live.id, exc_info=error)
        if storage_failed(error):
            await self._end_quietly(live, TurnStatus.FAILED, STORAGE_FAILED)
        else:
            await self._end_quietly(live, TurnStatus.FAILED, SOMETHING_WENT_WRONG)

    @staticmethod
    async def _end_quietly(live: LiveTurn, state: TurnStatus, text: str) -> None:
        """End the turn; when its end cannot be written, still tell the user (with the storage
        failure: nothing is left saying "queued…") and leave the row for the next start."""
        try:
            await live.end(state, text, retry=True)
        except Exception as e:
            log.exception("turn %s: could not record its end", live.id)
            final = STORAGE_FAILED if storage_failed(e) else text
            await live.status.finish(Post(text=f"Turn {live.id}: {final}"))

    def job_id(self, live: LiveTurn, kind: str) -> str:
        """Deterministic per turn, kind and run: a restarted bot submitting a turn again attaches
        to its job still in a render cluster instead of running it twice."""
        return f"{self.instance}:{live.id}:{kind}:{int(live.turn.params.get('run', 0))}"

    async def _submit(self, live: LiveTurn, job: ComposeJob | RenderJob) -> JobHandleView:
        """Submit, waiting (with the turn left queued) while the render cluster is unreachable."""
        while True:
            try:
                return self.engine.submit(job)
            except EngineUnavailable as e:
                await live.show(str(e), now=True)
                wait = getattr(self.engine, "wait_until_reachable", None)
                if wait is None:
                    raise
                await wait()

    async def _job_ended(self, live: LiveTurn, event: Failed | Cancelled) -> None:
        if isinstance(event, Failed):
            await live.end(TurnStatus.FAILED, event.message, retry=True)
            if event.kind == FailureKind.MODEL_NOT_AVAILABLE and live.turn.canvas_code is not None:
                # no renderer weights yet: the canvas is still worth having (the preview is posted)
                await results.post_files(
                    live, "the canvas, to draw once the weights are there.", (results.code_file(live.turn),)
                )
        else:
            await live.end(TurnStatus.CANCELLED, f"Cancelled ({event.reason}).", retry=True)

    # --- compose ---------------------------------------------------------------------------------

    async def _history(self, flight: _InFlight) -> list[ChatMessage]:
        """The chat so far (after the parent has answered, if it is still composing)."""
        live = flight.live
        messages: list[ChatMessage] = []
        parent_id = live.turn.parent_id
        if parent_id is not None:
            parent = self._flight.get(parent_id)
            if parent is not None:
                await parent.answered.wait()
            chain = await self.store.history(parent_id)
            live.parent, live.parent_canvas = chain[-1], results.canvas_of(chain[-1])
            for earlier in chain:
                if earlier.kind == TurnKind.RENDER or earlier.canvas_code is None:
                    continue  # a re-render adds nothing for the model; a failed turn has no answer
                user = earlier.user_text or "Draw this canvas."
                answer = earlier.assistant_text or f"```python\n{earlier.canvas_code}```"
                messages += [ChatMessage("user", user), ChatMessage("assistant", answer)]
        messages.append(ChatMessage("user", live.turn.user_text))
        return messages

    async def _compose(self, flight: _InFlight) -> Canvas | None:
        live = flight.live
        job = ComposeJob(
            owner=live.turn.owner,
            messages=tuple(await self._history(flight)),
            params=GenerationParams(
                temperature=self.llm.temperature,
                top_p=self.llm.top_p,
                max_new_tokens=self.llm.max_new_tokens,
                seed=live.turn.seed,
            ),
            tag=str(live.id),
            job_id=self.job_id(live, "compose"),
        )
        try:
            handle = await self._submit(live, job)
        except EngineError as e:
            await live.end(TurnStatus.FAILED, str(e), retry=True)
            return None
        parts: list[str] = []
        pieces: list[str] = []
        async for event in handle.events():
            if isinstance(event, Queued):
                await live.show(f"queued #{event.position}{_eta(event.eta_s)}")
            elif isinstance(event, Started | Repairing):
                # attempt 2 (out of memory, or another worker took the job over) and a repair
                # (the first answer did not parse) both start the answer over
                parts, pieces = [], []
                text = WRITING if isinstance(event, Started) else REPAIRING.format(error=event.error)
                await live.show(text, now=True)
            elif isinstance(event, TextDelta | PartParsed):
                if isinstance(event, TextDelta):
                    pieces.append(event.text)
                    if "\n" not in event.text:
                        continue  # the status shows whole lines: nothing new to show yet
                else:
                    parts.append(_part_label(event))
                await live.show(_regions_text(parts), code="".join(pieces))
            elif isinstance(event, Finished) and isinstance(event.result, ComposeResult):
                return await self._composed(live, event.result)
            elif isinstance(event, Failed | Cancelled):
                await self._job_ended(live, event)
        return None

    async def _composed(self, live: LiveTurn, result: ComposeResult) -> Canvas | None:
        canvas = result.canvas
        if canvas is None:
            error = result.parse_error or CanvasError("the answer holds no canvas")
            await live.save(status=TurnStatus.RUNNING, assistant_text=result.text)
            await live.end(TurnStatus.FAILED, f"The model's answer did not parse: {error}", retry=True)
            answer = await results.keep_failed_answer(live, result.text)
            await results.post_files(live, "the model's answer, as it wrote it.", (answer,))
            return None
        blocked = self.policy.check_canvas(canvas)
        if not blocked.allowed:
            await live.save(status=TurnStatus.RUNNING, assistant_text=result.text)
            await live.end(TurnStatus.FAILED, blocked.message, retry=False)
            return None
        code = find_code(result.text).code
        repaired = {"params": {**live.turn.params, "repaired": True}} if result.repaired else {}
        await live.save(status=TurnStatus.RUNNING, assistant_text=result.text, canvas_code=code, **repaired)
        notes = " ".join(result.stats.notes)
        if notes:
            await live.show(notes, now=True)
        return canvas

    # --- render ----------------------------------------------------------------------------------

    @staticmethod
    async def _preview(live: LiveTurn, canvas: Canvas) -> None:
        try:
            await results.post_layout_preview(live, canvas)
        except Exception:  # a preview that cannot be posted must not cost the picture
            log.exception("turn %s: the layout preview could not be posted", live.id)

    async def _parent_picture(self, live: LiveTurn) -> None:
        """An edit sent while its parent is still being drawn is drawn over the parent's picture:
        wait for it (the parent's render is ahead in the queue anyway), then take its row."""
        parent = live.parent
        if parent is None or parent.image_path is not None:
            return
        flight = self._flight.get(parent.id)
        if flight is not None:
            await flight.ended.wait()
        live.parent = await self.store.find_turn(parent.id)

    async def _render(
        self, live: LiveTurn, canvas: Canvas, preview: asyncio.Task[None] | None = None
    ) -> None:
        seed = live.turn.seed if live.turn.seed is not None else 0
        if live.parent_canvas is not None and live.settings.edit == "auto" and live.can_edit:
            await self._parent_picture(live)
        params = await edits.render_params_for(live, canvas, render_params(live.settings, seed))
        job = RenderJob(
            owner=live.turn.owner,
            canvas=canvas,
            params=params,
            tag=str(live.id),
            job_id=self.job_id(live, "render"),
        )
        try:
            handle = await self._submit(live, job)
        except EngineError as e:
            await live.end(TurnStatus.FAILED, str(e), retry=True)
            return
        async for event in handle.events():
            if isinstance(event, Queued):
                await live.show(f"waiting to draw, #{event.position}{_eta(event.eta_s)}")
            elif isinstance(event, Started):
                if live.turn.status == TurnStatus.QUEUED:
                    await live.save(status=TurnStatus.RUNNING)
            elif isinstance(event, Step):
                phase = "refining" if event.phase == "hires" else "drawing"
                await live.show(
                    f"{phase}, step {event.index}/{event.total}", progress=(event.index, event.total)
                )
            elif isinstance(event, Finished | Failed | Cancelled) and preview is not None:
                await preview  # the layout is in the chat (its link collected) before what follows
            if isinstance(event, Finished) and isinstance(event.result, RenderResult):
                data = await results.store_result(live, event.result, self.model_name)
                await results.deliver(live, canvas, data, delays_s=self.delivery_delays_s)
            elif isinstance(event, Failed | Cancelled):
                await self._job_ended(live, event)


def _part_label(event: PartParsed) -> str:
    part = event.part
    if isinstance(part, GlobalParsed):
        return part.global_description.description
    return f"{part.region.description} ({part.region.location})"


def _regions_text(parts: list[str]) -> str:
    return "\n".join([WRITING, *(f"• {part}" for part in parts[-12:])])
