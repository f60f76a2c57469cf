"""The job engine: a fair queue in front of the models, worker lanes, events back to asyncio.

Owns scheduling, not models: it takes an `LLMBackend` and a `Renderer` (whoever made them closes
them) and runs `ComposeJob`s and `RenderJob`s (jobs.py) on them. It knows nothing of chats: an
`owner` is an opaque string and a `tag` is carried, never read.

Queue. Every lane keeps one FIFO per owner and serves owners round-robin: the next job comes from
the owner served least recently (an owner never served goes first), so a user with ten queued
jobs delays another user's single job by at most one job. Cap: `max_total` jobs in flight (queued
or running) in all; `submit` refuses beyond it with `QueueFull`. The per-user cap is the bot's
(bot/policy.py reserves a slot when a request arrives), so it has one owner and one message.

Lanes. One worker thread per device runs one job at a time. A local LLM and the renderer share
the device lane; a remote LLM (`llm.remote`) gets a lane of its own, so composing for one user
overlaps rendering for another. Model calls only ever run on lane threads; their events cross to
the event loop through `loop.call_soon_threadsafe` (batched: one loop wake-up carries every event
posted since the last one), and all queue state lives on the loop, so it needs no locks.

Events and ETAs. `JobHandle.events()` yields every event in order, from the first, and ends with
exactly one of Finished, Failed or Cancelled; a subscriber that comes late still gets them all.
`Queued(position, eta_s)` is sent again whenever the position changes. The ETA is the remaining
time of the running job plus the estimates of the jobs ahead, from exponential moving averages
of the measured token rate, answer length, seconds per denoising step per megapixel and the
fixed cost of a render (`RatePriors` before anything was measured).

Streaming compose. The answer's pieces become `TextDelta`s and are fed to
`canvas_code.IncrementalParser` a line at a time (a call completes at a line end; feeding every
token re-scans the text for nothing), giving a `PartParsed` per finished part. An answer that
does not parse still Finishes, with `parse_error` set. Before that, when the backend cannot
enforce the Canvas grammar (`llm.enforces_grammar` false) and `repair` is on, the engine sends one
repair turn (llm/repair.py): a `Repairing(error)` event, then the repair's own TextDeltas and
PartParsed events as a fresh answer; the result has `repaired=True` and stats that count both
generations.

Timeouts and cancellation. A job's time limit (`job.timeout_s`, else `job_timeout_s`) counts from
its start. A queued job is cancelled at once; a running one gets its cancel event set, which the
backends honour between tokens and steps, and ends as Cancelled (or Failed with a timeout
message). A backend that ignores the event for `cancel_grace_s` gets its job ended for the user
anyway; the lane stays busy until the call returns.

Out of memory. `errors.OutOfMemory`, or any exception whose type is named `OutOfMemoryError`
(torch.cuda's), frees memory (gc, and torch.cuda.empty_cache when torch is already imported),
calls `renderer.lower_memory()` and, if that switched to a lower-memory mode, runs the job once
more (a second `Started(attempt=2)`); otherwise, or if the retry fails too, only that job fails
and the lane goes on serving.

Model swapping (`swap_models=True`, for a GPU too small to hold both models). Only on the shared
device lane: before a compose, if the renderer is resident, the lane calls `renderer.unload()`
then `llm.load()`; before a render, if the LLM is resident, `llm.unload()` then
`renderer.load()`. Both models count as resident at start, so the first job unloads the other
model; consecutive jobs of one kind swap nothing. With a remote LLM nothing is swapped.

Errors (besides those in errors.py):

    EngineError
    +-- QueueFull        a cap was hit; `scope` is "owner" or "total"
    +-- EngineClosed     submit after stop() began
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import logging
import queue
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from types import TracebackType

from omost_engine import errors
from omost_engine.canvas import Canvas, CanvasError
from omost_engine.canvas_code import IncrementalParser
from omost_engine.engine_api import EventReplay
from omost_engine.jobs import (
    Cancelled,
    ComposeJob,
    ComposeResult,
    Failed,
    FailureKind,
    Finished,
    Job,
    JobEvent,
    PartParsed,
    Queued,
    RenderJob,
    Repairing,
    Started,
    TerminalEvent,
    TextDelta,
)
from omost_engine.llm.base import ChatMessage, GenerationParams, LLMBackend
from omost_engine.llm.repair import backend_enforces_grammar, repair_messages, repair_params
from omost_engine.render.base import Renderer, RenderParams, RenderResult, Step

log = logging.getLogger(__name__)

SHUTDOWN_REASON = "the bot is shutting down"
FLUSH_INTERVAL_S = 0.002
"""While a lane streams events, the loop collects them this often (at most this late)."""


class QueueFull(errors.EngineError):
    """The whole engine's cap (`max_total`) was hit. The per-user cap is the bot's policy (it
    reserves a slot when a request arrives); the engine only counts jobs per owner."""

    def __init__(self, message: str, *, limit: int) -> None:
        self.limit = limit
        super().__init__(message)


class EngineClosed(errors.EngineError):
    def __init__(self) -> None:
        super().__init__("The bot is shutting down and takes no new requests; try again in a minute.")


# --- rates and estimates --------------------------------------------------------------------------


@dataclass(frozen=True)
class RatePriors:
    """Guesses used before anything was measured: a 4-bit 8B LLM and SDXL on a mid-range GPU.

    An Omost answer is about 2,500 Llama-3 tokens (the seed's are 8.9k and 10.5k characters).
    """

    tokens_per_s: float = 25.0
    answer_tokens: float = 2500.0
    step_s_per_megapixel: float = 0.3
    render_overhead_s: float = 3.0


class _Rates:
    """Exponential moving averages of what the models did; only touched on the event loop.

    The first measurement of each kind replaces its prior outright (a prior is a guess about
    some other machine); later ones move the average by `alpha`.
    """

    def __init__(self, priors: RatePriors, alpha: float = 0.3) -> None:
        self.alpha = alpha
        self.tokens_per_s = priors.tokens_per_s
        self.answer_tokens = priors.answer_tokens
        self.step_s_per_megapixel = priors.step_s_per_megapixel
        self.render_overhead_s = priors.render_overhead_s
        self._measured: set[str] = set()

    def _ema(self, name: str, new: float) -> None:
        old = getattr(self, name)
        setattr(self, name, new if name not in self._measured else old + self.alpha * (new - old))
        self._measured.add(name)

    def estimate(self, job: Job) -> float:
        if isinstance(job, ComposeJob):
            tokens = min(self.answer_tokens, float(job.params.max_new_tokens))
            return tokens / self.tokens_per_s
        return self._step_work(job.params) * self.step_s_per_megapixel + self.render_overhead_s

    @staticmethod
    def _step_work(params: RenderParams) -> float:
        """Denoising steps times megapixels; the hires pass runs denoise x steps at its own size."""
        work = params.steps * params.width * params.height / 1e6
        if params.hires_scale > 1.05:
            scaled = params.width * params.height * params.hires_scale**2 / 1e6
            work += params.hires_steps * params.hires_denoise * scaled
        return work

    def observe_compose(self, tokens: int, seconds: float) -> None:
        if tokens <= 0 or seconds <= 0:
            return
        self._ema("tokens_per_s", tokens / seconds)
        self._ema("answer_tokens", float(tokens))

    def observe_render(self, params: RenderParams, base_step_times: list[float], seconds: float) -> None:
        if seconds <= 0:
            return
        if len(base_step_times) >= 2:
            per_step = (base_step_times[-1] - base_step_times[0]) / (len(base_step_times) - 1)
            megapixels = params.width * params.height / 1e6
            self._ema("step_s_per_megapixel", per_step / megapixels)
        overhead = max(seconds - self._step_work(params) * self.step_s_per_megapixel, 0.0)
        self._ema("render_overhead_s", overhead)


# --- handles --------------------------------------------------------------------------------------


class JobHandle(EventReplay):
    """The caller's view of a submitted job. Use it on the event loop that submitted the job."""

    def __init__(self, engine: Engine, entry: _Entry) -> None:
        super().__init__(entry.job)
        self._engine = engine
        self._entry = entry

    @property
    def position(self) -> int:
        """1-based place in the queue while queued; 0 once running or done."""
        self._engine._refresh_now(self._entry.lane)
        return self._entry.position

    @property
    def eta_s(self) -> float | None:
        """Estimated seconds until the job starts (None once it started)."""
        self._engine._refresh_now(self._entry.lane)
        return self._entry.eta_s

    def cancel(self, reason: str = "cancelled") -> bool:
        """Cancel the job; False if it had already ended. `reason` is shown in `Cancelled`."""
        return self._engine._cancel(self._entry, reason)

    def _emit(self, event: JobEvent) -> None:
        self._record(event)

    def __repr__(self) -> str:
        return f"<JobHandle {self.job.kind} {self.job_id[:8]} owner={self.job.owner!r} {self._status.value}>"


# --- internal state -------------------------------------------------------------------------------


class _Entry:
    """Engine-side state of one job. Loop-owned, except `cancel` (a threading.Event)."""

    def __init__(self, job: Job, lane: _Lane, seq: int) -> None:
        self.job = job
        self.lane = lane
        self.seq = seq
        self.handle: JobHandle  # set right after construction
        self.cancel = threading.Event()
        self.cancel_reason: str | None = None
        self.timed_out: float | None = None  # the limit that was exceeded
        self.position = 0
        self.eta_s: float | None = None
        self.started_at: float | None = None
        self.timers: list[asyncio.TimerHandle] = []

    def stop_timers(self) -> None:
        for timer in self.timers:
            timer.cancel()
        self.timers.clear()


class _Lane:
    """One worker thread and the per-owner queues of the jobs it runs."""

    def __init__(self, name: str, *, shared: bool) -> None:
        self.name = name
        self.shared = shared  # runs both models (swapping applies)
        self.inbox: queue.SimpleQueue[_Entry | None] = queue.SimpleQueue()
        self.queues: dict[str, deque[_Entry]] = {}
        self.last_served: dict[str, int] = {}
        self.current: _Entry | None = None
        self.dirty = False
        self.thread: threading.Thread | None = None
        self.exited: asyncio.Future[None] | None = None
        self.resident = {"llm", "renderer"}  # worker thread only

    def queued(self) -> Iterator[_Entry]:
        for q in self.queues.values():
            yield from q


@dataclass
class _Outcome:
    """What a lane reports when a job's model call ends."""

    result: ComposeResult | RenderResult | None = None
    error: Exception | None = None
    cancelled: str | None = None  # the backend raised errors.Interrupted
    tokens: int = 0
    model_s: float = 0.0
    base_step_times: list[float] = field(default_factory=list)


@dataclass
class _Answer:
    """One generation's parsed answer and the model time it took (a compose job may need two)."""

    result: ComposeResult
    model_s: float

    def add(self, earlier: _Answer) -> None:
        """Count an earlier generation of the same job (the answer the repair replaced)."""
        stats, before = self.result.stats, earlier.result.stats
        stats.new_tokens += before.new_tokens
        stats.seconds += before.seconds
        stats.forward_passes += before.forward_passes
        stats.notes[:0] = before.notes
        self.model_s += earlier.model_s


@dataclass
class _EventItem:
    entry: _Entry
    event: JobEvent


@dataclass
class _TextItem:
    """Pieces of the answer not yet delivered; consecutive ones merge into one TextDelta."""

    entry: _Entry
    pieces: list[str]


@dataclass
class _DoneItem:
    lane: _Lane
    entry: _Entry
    outcome: _Outcome


@dataclass
class _ExitItem:
    lane: _Lane


_Item = _EventItem | _TextItem | _DoneItem | _ExitItem


class _State(Enum):
    NEW = "new"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


def is_out_of_memory(error: BaseException) -> bool:
    """errors.OutOfMemory, or torch's (torch.cuda.OutOfMemoryError) without importing torch."""
    return isinstance(error, errors.OutOfMemory) or type(error).__name__ == "OutOfMemoryError"


def free_memory() -> None:
    """Collect garbage and, when torch is already loaded, return cached CUDA blocks."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is None:
        return
    try:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # freeing is best effort; the retry will tell
        log.debug("torch.cuda.empty_cache failed", exc_info=True)


# --- the engine -----------------------------------------------------------------------------------


class Engine:
    """Runs compose and render jobs fairly on worker lanes. See the module docstring."""

    def __init__(
        self,
        llm: LLMBackend,
        renderer: Renderer,
        *,
        max_total: int = 100,
        job_timeout_s: float | None = 600.0,
        swap_models: bool = False,
        cancel_grace_s: float = 10.0,
        priors: RatePriors | None = None,
        repair: bool = True,
    ) -> None:
        if max_total < 1:
            raise ValueError("max_total must be at least 1")
        if job_timeout_s is not None and job_timeout_s <= 0:
            raise ValueError("job_timeout_s must be positive (or None for no limit)")
        self._llm = llm
        self._renderer = renderer
        self.max_total = max_total
        self.job_timeout_s = job_timeout_s
        self.swap_models = swap_models
        self.cancel_grace_s = cancel_grace_s
        self.repair = repair  # one repair turn for an answer that does not parse (llm/repair.py)
        self._rates = _Rates(priors or RatePriors())

        self._device_lane = _Lane("device", shared=not getattr(llm, "remote", False))
        self._llm_lane = self._device_lane if self._device_lane.shared else _Lane("remote-llm", shared=False)
        self._lanes = [self._device_lane]
        if self._llm_lane is not self._device_lane:
            self._lanes.append(self._llm_lane)

        self._state = _State.NEW
        self._loop: asyncio.AbstractEventLoop | None = None
        self._entries: dict[str, _Entry] = {}
        self._owner_counts: dict[str, int] = {}
        self._seq = itertools.count()
        self._served = itertools.count()
        self._outbox: list[_Item] = []
        self._outbox_lock = threading.Lock()
        self._flush_due = False  # a flush is scheduled on the loop
        self._urgent_wake = False  # a wake-up for a job's end is on its way
        self._flush_timer: asyncio.TimerHandle | None = None  # loop thread only

    # --- lifecycle

    async def start(self) -> None:
        if self._state is not _State.NEW:
            raise RuntimeError("an Engine can be started once")
        self._loop = asyncio.get_running_loop()
        self._state = _State.RUNNING
        for lane in self._lanes:
            lane.exited = self._loop.create_future()
            lane.thread = threading.Thread(
                target=self._lane_main, args=(lane,), name=f"omost-lane-{lane.name}", daemon=True
            )
            lane.thread.start()

    async def stop(self, grace_s: float | None = None) -> None:
        """Cancel queued jobs, ask running ones to stop, and wait (up to `grace_s`) for the lanes."""
        if self._state is not _State.RUNNING:
            self._state = _State.STOPPED
            return
        self._state = _State.STOPPING
        for lane in self._lanes:
            for entry in list(lane.queued()):
                self._finish(entry, Cancelled(SHUTDOWN_REASON))
            lane.queues.clear()
            if lane.current is not None:
                lane.current.cancel_reason = lane.current.cancel_reason or SHUTDOWN_REASON
                lane.current.cancel.set()
            lane.inbox.put(None)
        exits = [lane.exited for lane in self._lanes if lane.exited is not None]
        await asyncio.wait(exits, timeout=self.cancel_grace_s if grace_s is None else grace_s)
        self._flush()
        for entry in list(self._entries.values()):
            log.warning("job %s did not stop in time; ending it for its owner", entry.job.job_id)
            self._finish(entry, Cancelled(SHUTDOWN_REASON))
        self._state = _State.STOPPED

    async def __aenter__(self) -> Engine:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # --- the public API

    def submit(self, job: Job) -> JobHandle:
        """Queue a job; raises QueueFull when a cap is hit. Call on the engine's event loop."""
        if self._state is _State.NEW:
            raise RuntimeError("Engine.submit before Engine.start")
        if self._state is not _State.RUNNING:
            raise EngineClosed()
        if job.job_id in self._entries:
            raise ValueError(f"job {job.job_id} is already in the engine")
        mine = self._owner_counts.get(job.owner, 0)
        if len(self._entries) >= self.max_total:
            raise QueueFull(
                f"The bot is busy: {len(self._entries)} requests are waiting or in progress, the most "
                f"it takes at once ({self.max_total}). Please try again in a few minutes.",
                limit=self.max_total,
            )
        lane = self._llm_lane if isinstance(job, ComposeJob) else self._device_lane
        entry = _Entry(job, lane, next(self._seq))
        entry.handle = JobHandle(self, entry)
        self._entries[job.job_id] = entry
        self._owner_counts[job.owner] = mine + 1
        lane.queues.setdefault(job.owner, deque()).append(entry)
        self._dispatch(lane)
        self._mark_dirty(lane)
        return entry.handle

    def cancel_tagged(self, tag: str, reason: str = "cancelled") -> int:
        """Cancel every job in flight whose `tag` is `tag` (the bot tags jobs with their turn id);
        returns how many were cancelled."""
        tagged = [entry for entry in self._entries.values() if entry.job.tag == tag]
        return sum(self._cancel(entry, reason) for entry in tagged)

    def in_flight(self, owner: str | None = None) -> int:
        """Jobs queued or running, for one owner or in all."""
        return len(self._entries) if owner is None else self._owner_counts.get(owner, 0)

    @property
    def remote_llm(self) -> bool:
        return self._llm_lane is not self._device_lane

    # --- scheduling (event loop)

    def _pick(self, lane: _Lane) -> _Entry:
        """Round-robin: the head job of the owner served least recently (never served: first)."""
        owner = min(lane.queues, key=lambda o: (lane.last_served.get(o, -1), lane.queues[o][0].seq))
        owner_queue = lane.queues[owner]
        entry = owner_queue.popleft()
        if not owner_queue:
            del lane.queues[owner]
        lane.last_served[owner] = next(self._served)
        if len(lane.last_served) > 4096:
            self._forget_idle_owners(lane)
        return entry

    @staticmethod
    def _forget_idle_owners(lane: _Lane) -> None:
        # An owner with nothing queued whose last service is older than every waiting owner's
        # sorts first whether it is remembered or not (missing counts as never served).
        waiting = [lane.last_served.get(o, -1) for o in lane.queues]
        oldest_waiting = min(waiting, default=None)
        for owner, served in list(lane.last_served.items()):
            if owner not in lane.queues and (oldest_waiting is None or served < oldest_waiting):
                del lane.last_served[owner]

    def _order(self, lane: _Lane) -> list[_Entry]:
        """The order in which the lane will start its queued jobs (what _pick will do)."""
        owners = sorted(lane.queues, key=lambda o: (lane.last_served.get(o, -1), lane.queues[o][0].seq))
        rounds = [iter(lane.queues[o]) for o in owners]
        order: list[_Entry] = []
        while rounds:
            still: list[Iterator[_Entry]] = []
            for jobs in rounds:
                entry = next(jobs, None)
                if entry is not None:
                    order.append(entry)
                    still.append(jobs)
            rounds = still
        return order

    def _dispatch(self, lane: _Lane) -> None:
        if lane.current is not None or not lane.queues or self._state is not _State.RUNNING:
            return
        assert self._loop is not None
        entry = self._pick(lane)
        lane.current = entry
        entry.position = 0
        entry.eta_s = None
        entry.started_at = time.monotonic()
        limit = entry.job.timeout_s if entry.job.timeout_s is not None else self.job_timeout_s
        if limit is not None:
            entry.timers.append(self._loop.call_later(limit, self._on_timeout, entry, limit))
        entry.handle._emit(Started())
        lane.inbox.put(entry)
        self._mark_dirty(lane)

    def _mark_dirty(self, lane: _Lane) -> None:
        """Positions changed; send the Queued events once, after the current burst of changes."""
        if not lane.dirty and self._loop is not None:
            lane.dirty = True
            self._loop.call_soon(self._refresh_now, lane)

    def _refresh_now(self, lane: _Lane) -> None:
        if not lane.dirty:
            return
        lane.dirty = False
        wait = 0.0
        current = lane.current
        if current is not None and current.started_at is not None:
            elapsed = time.monotonic() - current.started_at
            wait = max(self._rates.estimate(current.job) - elapsed, 0.0)
        for position, entry in enumerate(self._order(lane), start=1):
            entry.eta_s = wait
            if entry.position != position:
                entry.position = position
                entry.handle._emit(Queued(position, round(wait, 2)))
            wait += self._rates.estimate(entry.job)

    def _cancel(self, entry: _Entry, reason: str) -> bool:
        if entry.handle.terminal is not None:
            return False
        lane = entry.lane
        if lane.current is not entry:  # still queued: gone at once
            owner_queue = lane.queues.get(entry.job.owner)
            if owner_queue is not None and entry in owner_queue:
                owner_queue.remove(entry)
                if not owner_queue:
                    del lane.queues[entry.job.owner]
            self._finish(entry, Cancelled(reason))
            self._mark_dirty(lane)
            return True
        if entry.cancel.is_set():
            return True  # already stopping
        entry.cancel_reason = reason
        entry.cancel.set()
        self._arm_grace(entry, Cancelled(reason))
        return True

    def _on_timeout(self, entry: _Entry, limit: float) -> None:
        if entry.handle.terminal is not None or entry.cancel.is_set():
            return
        entry.timed_out = limit
        entry.cancel.set()
        self._arm_grace(entry, self._timeout_failure(entry.job, limit))

    def _arm_grace(self, entry: _Entry, terminal: TerminalEvent) -> None:
        assert self._loop is not None

        def give_up() -> None:
            if entry.handle.terminal is None:
                log.warning(
                    "lane %s: the %s backend ignored cancel for %.0f s (job %s); ending the job",
                    entry.lane.name,
                    entry.job.kind,
                    self.cancel_grace_s,
                    entry.job.job_id,
                )
                self._finish(entry, terminal)

        entry.timers.append(self._loop.call_later(self.cancel_grace_s, give_up))

    def _finish(self, entry: _Entry, terminal: TerminalEvent) -> None:
        """Deliver the terminal event once and forget the job (its lane may still be busy)."""
        entry.stop_timers()
        if entry.handle.terminal is not None:
            return
        self._entries.pop(entry.job.job_id, None)
        owner = entry.job.owner
        left = self._owner_counts.get(owner, 1) - 1
        if left > 0:
            self._owner_counts[owner] = left
        else:
            self._owner_counts.pop(owner, None)
        entry.position = 0
        entry.eta_s = None
        entry.handle._emit(terminal)

    @staticmethod
    def _timeout_failure(job: Job, limit: float) -> Failed:
        what = "Writing the canvas" if isinstance(job, ComposeJob) else "Drawing the picture"
        hint = (
            "Try again, perhaps with a simpler request."
            if isinstance(job, ComposeJob)
            else "Try a smaller size or fewer steps."
        )
        return Failed(
            f"{what} took longer than the {limit:g}-second limit, so it was stopped. {hint}",
            FailureKind.TIMEOUT,
        )

    @staticmethod
    def _failure(job: Job, error: Exception) -> Failed:
        if is_out_of_memory(error):
            if isinstance(error, errors.OutOfMemory):
                return Failed(str(error), FailureKind.OUT_OF_MEMORY)
            what = "writing the canvas" if isinstance(job, ComposeJob) else "drawing the picture"
            return Failed(
                f"The GPU ran out of memory while {what}, even in its lower-memory mode. "
                "Try a smaller size, or ask the operator to enable model swapping.",
                FailureKind.OUT_OF_MEMORY,
            )
        if isinstance(error, errors.ModelNotAvailable):
            return Failed(str(error), FailureKind.MODEL_NOT_AVAILABLE)
        if isinstance(error, errors.BackendError):
            return Failed(str(error), FailureKind.BACKEND)
        if isinstance(error, errors.EngineError):
            return Failed(str(error), FailureKind.INTERNAL)
        what = "writing the canvas" if isinstance(job, ComposeJob) else "drawing the picture"
        return Failed(
            f"Something went wrong inside the bot while {what}; the operator can find the details "
            "in the log.",
            FailureKind.INTERNAL,
        )

    def _terminal_for(self, entry: _Entry, outcome: _Outcome) -> TerminalEvent:
        if entry.timed_out is not None:
            return self._timeout_failure(entry.job, entry.timed_out)
        if entry.cancel.is_set():
            return Cancelled(entry.cancel_reason or "cancelled")
        if outcome.result is not None:
            return Finished(outcome.result)
        if outcome.cancelled is not None:
            return Cancelled(outcome.cancelled)
        assert outcome.error is not None
        return self._failure(entry.job, outcome.error)

    # --- crossing from the lanes to the loop

    def _post(self, item: _Item) -> None:
        """Called on lane threads: queue an item; wake the loop unless a flush is already due.

        While items keep coming, the loop flushes every FLUSH_INTERVAL_S by itself (a timer, no
        cross-thread wake-up per token); a job's end always wakes it at once.
        """
        with self._outbox_lock:
            last = self._outbox[-1] if self._outbox else None
            if isinstance(item, _TextItem) and isinstance(last, _TextItem) and last.entry is item.entry:
                # The loop has not caught up: join the pieces rather than queue more events.
                last.pieces.extend(item.pieces)
                return
            self._outbox.append(item)
            urgent = not isinstance(item, _EventItem | _TextItem)
            if self._flush_due and not (urgent and not self._urgent_wake):
                return
            self._flush_due = True
            self._urgent_wake = self._urgent_wake or urgent
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(self._flush)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            log.debug("event loop closed; dropping engine events")

    def _flush(self) -> None:
        with self._outbox_lock:
            items, self._outbox = self._outbox, []
            self._urgent_wake = False
            # More may follow soon (a stream): look again shortly instead of being woken per item.
            if items and self._flush_timer is None and self._state is _State.RUNNING:
                assert self._loop is not None
                self._flush_timer = self._loop.call_later(FLUSH_INTERVAL_S, self._flush_on_timer)
            self._flush_due = self._flush_timer is not None
        for item in items:
            if isinstance(item, _EventItem):
                item.entry.handle._emit(item.event)
            elif isinstance(item, _TextItem):
                item.entry.handle._emit(TextDelta("".join(item.pieces)))
            elif isinstance(item, _DoneItem):
                self._on_done(item.lane, item.entry, item.outcome)
            elif item.lane.exited is not None and not item.lane.exited.done():
                item.lane.exited.set_result(None)

    def _flush_on_timer(self) -> None:
        self._flush_timer = None
        self._flush()

    def _on_done(self, lane: _Lane, entry: _Entry, outcome: _Outcome) -> None:
        lane.current = None
        if outcome.result is not None and not entry.cancel.is_set():
            if isinstance(entry.job, ComposeJob):
                self._rates.observe_compose(outcome.tokens, outcome.model_s)
            else:
                self._rates.observe_render(entry.job.params, outcome.base_step_times, outcome.model_s)
        if outcome.error is not None and entry.handle.terminal is None and not entry.cancel.is_set():
            if is_out_of_memory(outcome.error) or isinstance(outcome.error, errors.EngineError):
                # the detail (paths, server text) is for the log; the user's message leaves it out
                log.warning(
                    "job %s failed: %s", entry.job.job_id, getattr(outcome.error, "detail", outcome.error)
                )
            else:
                log.error("job %s failed", entry.job.job_id, exc_info=outcome.error)
        self._finish(entry, self._terminal_for(entry, outcome))
        self._dispatch(lane)
        self._mark_dirty(lane)

    # --- lane threads

    def _lane_main(self, lane: _Lane) -> None:
        try:
            while True:
                entry = lane.inbox.get()
                if entry is None:
                    return
                try:
                    outcome = self._execute(lane, entry)
                except BaseException as e:  # SystemExit, KeyboardInterrupt: end the job, then the lane
                    self._post(_DoneItem(lane, entry, _Outcome(error=RuntimeError(repr(e)))))
                    raise
                self._post(_DoneItem(lane, entry, outcome))
        finally:
            self._post(_ExitItem(lane))

    def _execute(self, lane: _Lane, entry: _Entry) -> _Outcome:
        """Run one job to an outcome; never raises. Retries once after out-of-memory."""
        attempt = 1
        while True:
            try:
                if entry.cancel.is_set():
                    raise errors.Interrupted()
                if self.swap_models and lane.shared:
                    self._swap_for(lane, entry.job)
                if isinstance(entry.job, ComposeJob):
                    return self._run_compose(entry, entry.job)
                return self._run_render(entry, entry.job)
            except errors.Interrupted as e:
                return _Outcome(cancelled=str(e))
            except Exception as e:
                if entry.cancel.is_set():
                    return _Outcome(cancelled=str(e))
                # Only the device lane holds local models; a lower-memory renderer frees room there.
                on_device = lane is self._device_lane
                if attempt == 1 and on_device and is_out_of_memory(e) and self._lower_memory():
                    log.warning(
                        "out of memory on lane %s (job %s); retrying in lower memory",
                        lane.name,
                        entry.job.job_id,
                    )
                    attempt = 2
                    self._post(_EventItem(entry, Started(attempt=2)))
                    continue
                return _Outcome(error=e)

    def _lower_memory(self) -> bool:
        free_memory()
        try:
            return bool(self._renderer.lower_memory())
        except Exception:
            log.exception("renderer.lower_memory failed")
            return False

    def _swap_for(self, lane: _Lane, job: Job) -> None:
        """Make room for the model this job needs (see the module docstring)."""
        if isinstance(job, ComposeJob):
            need, other = "llm", "renderer"
            unload, load = self._renderer.unload, self._llm.load
        else:
            need, other = "renderer", "llm"
            unload, load = self._llm.unload, self._renderer.load
        if other in lane.resident:
            unload()
            lane.resident.discard(other)
            load()
            lane.resident.add(need)
        elif need not in lane.resident:
            load()
            lane.resident.add(need)

    def _run_compose(self, entry: _Entry, job: ComposeJob) -> _Outcome:
        answer = self._compose_answer(entry, job.messages, job.params)
        repaired = False
        error = answer.result.parse_error
        if error is not None and self.repair and not backend_enforces_grammar(self._llm):
            # One repair turn (llm/repair.py); its text streams as a fresh answer after Repairing.
            first = answer
            self._post(_EventItem(entry, Repairing(str(error))))
            messages = repair_messages(job.messages, first.result.text, error)
            answer = self._compose_answer(entry, messages, repair_params(job.params))
            answer.add(first)
            repaired = True
        result = replace(answer.result, repaired=repaired)
        return _Outcome(result=result, tokens=result.stats.new_tokens, model_s=answer.model_s)

    def _compose_answer(
        self, entry: _Entry, messages: Sequence[ChatMessage], params: GenerationParams
    ) -> _Answer:
        """One generation streamed as TextDelta/PartParsed events, then parsed."""
        generation = self._llm.generate(messages, params, entry.cancel)
        parser = IncrementalParser()
        unparsed: list[str] = []
        pieces = 0
        model_s = 0.0
        stream = iter(generation)
        try:
            while True:
                began = time.perf_counter()
                piece = next(stream, None)
                model_s += time.perf_counter() - began
                if piece is None:
                    break
                if entry.cancel.is_set():
                    raise errors.Interrupted()
                if not piece:
                    continue
                pieces += 1
                self._post(_TextItem(entry, [piece]))
                unparsed.append(piece)
                if "\n" in piece:
                    self._feed(entry, parser, unparsed)
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()  # stop the backend's stream when we stop early
        self._feed(entry, parser, unparsed)
        if entry.cancel.is_set():
            raise errors.Interrupted()
        canvas: Canvas | None = None
        parse_error: CanvasError | None = None
        try:
            canvas = parser.finish()
        except CanvasError as e:
            parse_error = e
        stats = generation.stats
        if stats.new_tokens == 0:
            stats.new_tokens = pieces
        if stats.seconds == 0.0:
            stats.seconds = model_s
        result = ComposeResult(text=generation.text, canvas=canvas, parse_error=parse_error, stats=stats)
        return _Answer(result, model_s)

    def _feed(self, entry: _Entry, parser: IncrementalParser, unparsed: list[str]) -> None:
        if not unparsed:
            return
        for part in parser.feed("".join(unparsed)):
            self._post(_EventItem(entry, PartParsed(part)))
        unparsed.clear()

    def _run_render(self, entry: _Entry, job: RenderJob) -> _Outcome:
        base_step_times: list[float] = []
        callback_s = 0.0

        def on_step(step: Step) -> None:
            nonlocal callback_s
            began = time.perf_counter()
            if step.phase == "base":
                base_step_times.append(began)
            self._post(_EventItem(entry, step))
            callback_s += time.perf_counter() - began

        began = time.perf_counter()
        result = self._renderer.render(job.canvas, job.params, on_step=on_step, cancel=entry.cancel)
        model_s = time.perf_counter() - began - callback_s
        if entry.cancel.is_set():
            raise errors.Interrupted()
        return _Outcome(result=result, model_s=model_s, base_step_times=base_step_times)
