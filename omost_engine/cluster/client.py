"""The bot's side of the render cluster: `RedisEngine`, the `JobEngine` of engine_api.py on Redis.

Owns submitting jobs to the cluster, following their event streams back and cancelling them;
the jobs themselves run in `omost-bot worker` processes (worker.py). It knows no chats: like the
in-process engine, an owner is an opaque string and a tag is carried, never read.

Submit is idempotent by job id: a job id already in the cluster (submitted by this process
before a restart, or finished within `result_ttl_s`) is attached to, and its handle replays
the job's events from the first, so a restarted bot that submits the same ids gets one result
per job, never a second run. `stop()` leaves cluster jobs running for that reason.

Reachability. The engine pings Redis at start and every `poll_s`; while Redis is unreachable,
`submit` raises `EngineUnavailable` at once (no blocking connect on the event loop), and
handles already submitted keep their place: their streams are read again from the last event
seen when Redis is back (the queues and streams survive a restart through AOF). A job accepted
while Redis looked reachable but whose submission then failed is retried until it lands.

Queue position and ETA come from the cluster: every `poll_s` the engine asks Redis where its
queued jobs stand in the round-robin order (scripts.POSITIONS) and sends `Queued` when that
changes; the ETA divides the jobs ahead by the live workers of that kind and multiplies by the
seconds per job the workers measured (RatePriors before anything was measured).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from redis.exceptions import RedisError

from omost_engine.cluster.codec import CodecError, decode_event, encode_job
from omost_engine.cluster.state import ClusterState
from omost_engine.engine import Engine, EngineClosed, QueueFull, RatePriors
from omost_engine.engine_api import EngineUnavailable, EventReplay, JobEngine
from omost_engine.jobs import (
    Cancelled,
    Failed,
    FailureKind,
    Finished,
    Job,
    JobEvent,
    JobStatus,
    Queued,
    Started,
    TerminalEvent,
)
from omost_engine.render.base import RenderParams

log = logging.getLogger(__name__)

UNREACHABLE = (
    "The render cluster is unreachable right now, so nothing new can start; your request is kept "
    "and will be sent again when the cluster is back."
)


def prior_seconds(kind: str, priors: RatePriors | None = None) -> float:
    """Seconds per job before any worker measured one (the in-process engine's priors)."""
    p = priors or RatePriors()
    if kind == "compose":
        return p.answer_tokens / p.tokens_per_s
    params = RenderParams()
    return params.steps * params.width * params.height / 1e6 * p.step_s_per_megapixel + p.render_overhead_s


async def wait_for_event(event: asyncio.Event, timeout: float) -> None:
    """Wait until `event` is set or `timeout` passes. Unlike `asyncio.wait_for` on Python 3.11,
    a cancel that arrives as the timeout fires is never swallowed (asyncio.wait cannot eat one)."""
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait({waiter}, timeout=timeout)
    finally:
        waiter.cancel()


class RedisJobHandle(EventReplay):
    """The caller's view of one cluster job (engine_api.JobHandleView). Use it on the engine's loop."""

    def __init__(self, engine: RedisEngine, job: Job) -> None:
        super().__init__(job)
        self._engine = engine
        self._position = 0
        self._eta_s: float | None = None
        self.submitted = False  # the cluster has it
        self.last_id: bytes | str = "0-0"  # the last stream entry delivered

    @property
    def position(self) -> int:
        return self._position

    @property
    def eta_s(self) -> float | None:
        return self._eta_s

    def cancel(self, reason: str = "cancelled") -> bool:
        """Cancel the job wherever it is; False if it had already ended."""
        if self._terminal is not None:
            return False
        self._engine._cancel(self, reason)
        return True

    def _before_wait(self) -> None:
        if self._engine.closed:
            raise EngineClosed()

    def _emit(self, event: JobEvent) -> None:
        if self._terminal is not None:
            return
        if isinstance(event, Queued):
            if self._status is not JobStatus.QUEUED or event.position == self._position:
                return
            self._position, self._eta_s = event.position, event.eta_s
        elif isinstance(event, Started | Finished | Failed | Cancelled):
            self._position, self._eta_s = 0, None
        self._record(event)

    def __repr__(self) -> str:
        job = self.job
        return f"<RedisJobHandle {job.kind} {self.job_id[:8]} owner={job.owner!r} {self._status.value}>"


class RedisEngine:
    """Jobs run by cluster workers through Redis. See the module docstring."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "omost",
        max_total: int = 100,
        result_ttl_s: int = 3600,
        poll_s: float = 1.0,
        block_ms: int = 100,
        connect_timeout_s: float = 2.0,
    ) -> None:
        if max_total < 1:
            raise ValueError("max_total must be at least 1")
        self._url = url
        self._prefix = prefix
        self._connect_timeout_s = connect_timeout_s
        self.max_total = max_total
        self.result_ttl_s = result_ttl_s
        self.poll_s = poll_s
        self.block_ms = block_ms
        self._state: ClusterState | None = None
        self._handles: dict[str, RedisJobHandle] = {}
        self._unsent: list[RedisJobHandle] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._chores: set[asyncio.Task[Any]] = set()
        self._have_work = asyncio.Event()
        self._have_unsent = asyncio.Event()
        self.reachable = False
        self._reachable_event = asyncio.Event()
        self.closed = False

    # --- lifecycle

    async def start(self) -> None:
        if self._state is not None:
            raise RuntimeError("a RedisEngine can be started once")
        self._state = ClusterState(self._url, prefix=self._prefix, connect_timeout_s=self._connect_timeout_s)
        await self._check_reachable()
        if not self.reachable:
            log.warning("the render cluster's Redis is unreachable; jobs wait until it is back")
        for loop in (self._read_loop, self._poll_loop, self._send_loop):
            self._tasks.append(asyncio.create_task(loop(), name=f"redis-engine-{loop.__name__}"))

    async def stop(self, grace_s: float | None = None) -> None:
        """Stop following jobs; the cluster keeps running them (a restarted bot reattaches)."""
        if self.closed:
            return
        self.closed = True
        for task in [*self._tasks, *self._chores]:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._chores, return_exceptions=True)
        for handle in self._handles.values():
            handle._wake()  # its waiters see `closed` and raise EngineClosed
        if self._state is not None:
            await self._state.close()

    async def __aenter__(self) -> RedisEngine:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- the public API (engine_api.JobEngine)

    def submit(self, job: Job) -> RedisJobHandle:
        """Queue a job in the cluster, or attach to it if its id is already there."""
        if self._state is None:
            raise RuntimeError("RedisEngine.submit before RedisEngine.start")
        if self.closed:
            raise EngineClosed()
        existing = self._handles.get(job.job_id)
        if existing is not None:
            return existing
        if not self.reachable:
            raise EngineUnavailable(UNREACHABLE)
        if self.in_flight() >= self.max_total:
            raise QueueFull(
                f"The bot is busy: {self.in_flight()} requests are waiting or in progress, the most "
                f"it takes at once ({self.max_total}). Please try again in a few minutes.",
                limit=self.max_total,
            )
        handle = RedisJobHandle(self, job)
        self._handles[job.job_id] = handle
        self._unsent.append(handle)
        self._have_unsent.set()
        return handle

    def cancel_tagged(self, tag: str, reason: str = "cancelled") -> int:
        """Cancel every unfinished job tagged `tag`, here and in the cluster (also those a previous
        run of the bot submitted); returns how many this process was following."""
        mine = [h for h in self._handles.values() if h.job.tag == tag and h.terminal is None]
        for handle in mine:
            self._cancel(handle, reason)
        self._chore(self._with_retry(lambda s: s.cancel_tagged(tag, reason, self.result_ttl_s)))
        return len(mine)

    def in_flight(self, owner: str | None = None) -> int:
        """Unfinished jobs this process follows, for one owner or in all."""
        return sum(
            1
            for h in self._handles.values()
            if h.terminal is None and (owner is None or h.job.owner == owner)
        )

    async def wait_until_reachable(self) -> None:
        """Return once Redis answers again (at once if it does now): the bot's cue to submit the
        turns it kept queued while `submit` raised EngineUnavailable."""
        await self._reachable_event.wait()

    @property
    def remote_llm(self) -> bool:
        return True  # composing and rendering run on workers, so they overlap across the cluster

    # --- internals

    def _cancel(self, handle: RedisJobHandle, reason: str) -> None:
        if not handle.submitted and handle in self._unsent:
            self._unsent.remove(handle)
            self._end(handle, Cancelled(reason))
            return
        job_id = handle.job_id
        self._chore(self._with_retry(lambda s: s.cancel(job_id, reason, self.result_ttl_s)))

    def _end(self, handle: RedisJobHandle, event: TerminalEvent) -> None:
        handle._emit(event)
        self._handles.pop(handle.job_id, None)

    def _chore(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(coro)
        self._chores.add(task)
        task.add_done_callback(self._chores.discard)

    async def _with_retry(self, call: Any) -> None:
        """Run `call(state)` until Redis answers (a cancel must not be lost to a Redis restart)."""
        assert self._state is not None
        while not self.closed:
            try:
                await call(self._state)
                return
            except RedisError as e:
                self._set_reachable(False, e)
                await asyncio.sleep(self.poll_s)

    def _set_reachable(self, reachable: bool, error: BaseException | None = None) -> None:
        if reachable != self.reachable:
            if reachable:
                log.info("the render cluster's Redis is reachable again")
            else:
                log.warning("lost the render cluster's Redis: %s", error)
        self.reachable = reachable
        if reachable:
            self._reachable_event.set()
        else:
            self._reachable_event.clear()

    async def _check_reachable(self) -> None:
        assert self._state is not None
        try:
            await self._state.ping()
            self._set_reachable(True)
        except (RedisError, OSError) as e:
            self._set_reachable(False, e)

    async def _send_loop(self) -> None:
        """Submit accepted jobs to Redis in order; on a connection error keep them and retry."""
        assert self._state is not None
        while not self.closed:
            await self._have_unsent.wait()
            batch = list(self._unsent)
            try:
                for handle in batch:
                    if handle.terminal is not None or handle.submitted:
                        continue
                    job = handle.job
                    await self._state.submit(job.job_id, job.kind, job.owner, job.tag, encode_job(job))
                    handle.submitted = True
                    self._have_work.set()
                    if handle in self._unsent:
                        self._unsent.remove(handle)
                await self._refresh_positions(batch)
            except RedisError as e:
                self._set_reachable(False, e)
                await asyncio.sleep(self.poll_s)
                continue
            if not self._unsent:
                self._have_unsent.clear()

    async def _read_loop(self) -> None:
        """Follow every submitted, unfinished job's stream with one blocking XREAD."""
        assert self._state is not None
        while not self.closed:
            live = {
                self._state.keys.events(h.job_id): h.last_id
                for h in self._handles.values()
                if h.submitted and h.terminal is None
            }
            if not live:
                self._have_work.clear()
                await wait_for_event(self._have_work, self.poll_s)
                continue
            try:
                got = await self._state.redis.xread(live, count=1000, block=self.block_ms)  # type: ignore[arg-type]
            except RedisError as e:
                self._set_reachable(False, e)
                await asyncio.sleep(self.poll_s)
                continue
            self._deliver(list(got or []))

    def _deliver(self, got: list[Any]) -> None:
        assert self._state is not None
        cut = len(self._state.keys.events(""))
        for stream, entries in got:
            handle = self._handles.get(stream.decode()[cut:])
            if handle is None:
                continue
            for entry_id, fields in entries:
                handle.last_id = entry_id
                try:
                    event = decode_event(fields)
                except CodecError as e:
                    log.error("job %s: %s", handle.job_id, e)
                    event = Failed(
                        "The render cluster sent something this bot cannot read (are the bot and "
                        "its workers the same version?).",
                        FailureKind.INTERNAL,
                    )
                if isinstance(event, Finished | Failed | Cancelled):
                    self._end(handle, event)
                    break
                handle._emit(event)

    async def _poll_loop(self) -> None:
        while not self.closed:
            await asyncio.sleep(self.poll_s)
            await self._check_reachable()
            if not self.reachable:
                continue
            waiting = [h for h in self._handles.values() if h.submitted and h.status is JobStatus.QUEUED]
            try:
                await self._refresh_positions(waiting)
            except RedisError as e:
                self._set_reachable(False, e)

    async def _refresh_positions(self, handles: list[RedisJobHandle]) -> None:
        assert self._state is not None
        handles = [h for h in handles if h.submitted and h.status is JobStatus.QUEUED]
        if not handles:
            return
        places = await self._state.positions([h.job_id for h in handles])
        workers = await self._state.workers()
        rates = await self._state.seconds_per_job()
        for handle, place in zip(handles, places, strict=True):
            if place <= 0:
                continue
            kind = handle.job.kind
            serving = sum(1 for w in workers if kind in w.kinds and not w.status.startswith("failed"))
            per_job = rates.get(kind, prior_seconds(kind))
            # The job waits for the jobs ahead shared among the workers, plus about half of the
            # job each is running now.
            eta = None if serving == 0 else round(((place - 1) / serving + 0.5) * per_job, 2)
            handle._emit(Queued(place, eta))


def _satisfies_the_protocol(local: Engine, cluster: RedisEngine) -> tuple[JobEngine, JobEngine]:
    """Never called: mypy checks here that both engines are engine_api.JobEngines."""
    return local, cluster
