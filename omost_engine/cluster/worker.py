"""A cluster worker: pulls jobs from Redis, runs them on this machine's models, streams events back.

Owns the worker's life: wait for Redis, heartbeat, claim jobs fairly (scripts.CLAIM), run each
one, publish its events in order (batched, fenced by the claim's attempt), renew its lease,
honour cancellation, hand its job back on shutdown, and reap leases of workers that died.

Running a job is the in-process engine's work, reused unchanged: the worker keeps a private
`engine.Engine` over its own backends and submits each claimed job to it, so streaming parse,
timeouts, cooperative cancel, out-of-memory retry and model swapping behave exactly as in the
embedded bot. The worker adds only the transport. One job at a time per worker, which is what
the cluster's fairness bound ("one job per worker") counts.

A worker whose models failed to load (`load_error`) still heartbeats, with status
"failed: <why>", so `omost-bot doctor` shows it, and claims nothing.

Leases. A claim holds the job for `lease_s`; the worker renews it every `cancel_poll_s` (reading
the job's cancel request in the same call). A worker that stops renewing (SIGKILL, a hung
machine, a network split) loses the job when the lease ends: the next reap by any live worker
puts it back at the head of its owner's queue, and it starts again (a second `Started`). The
takeover bound is therefore lease_s + heartbeat_s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError

from omost_engine.cluster.client import wait_for_event
from omost_engine.cluster.codec import CodecError, Fields, ImageTooLarge, decode_job, encode_event
from omost_engine.cluster.state import Claim, ClusterState
from omost_engine.engine import Engine, JobHandle
from omost_engine.jobs import (
    Cancelled,
    Failed,
    FailureKind,
    Finished,
    JobEvent,
    Queued,
    TerminalEvent,
    TextDelta,
)
from omost_engine.llm.base import LLMBackend
from omost_engine.render.base import Renderer

log = logging.getLogger(__name__)

RELEASED = "the worker is shutting down; another worker takes the job"
TAKEN_OVER = "the job's lease ran out and another worker took it"


@dataclass(frozen=True)
class WorkerSettings:
    prefix: str = "omost"
    kinds: tuple[str, ...] = ("compose", "render")
    device: str = ""
    models: str = ""
    lease_s: float = 15.0
    heartbeat_s: float = 2.0
    cancel_poll_s: float = 0.25
    flush_s: float = 0.02
    result_ttl_s: int = 3600
    max_result_bytes: int = 20 * 2**20
    job_timeout_s: float | None = 900.0
    swap_models: bool = False


def _state_of(terminal: TerminalEvent) -> str:
    return (
        "finished"
        if isinstance(terminal, Finished)
        else "failed"
        if isinstance(terminal, Failed)
        else "cancelled"
    )


class Worker:
    """One worker process's loop. `await run(stop)` until `stop` is set."""

    def __init__(
        self,
        url: str,
        llm: LLMBackend | None,
        renderer: Renderer | None,
        settings: WorkerSettings | None = None,
        *,
        load_error: str | None = None,
        worker_id: str | None = None,
    ) -> None:
        self.settings = s = settings or WorkerSettings()
        unknown = set(s.kinds) - {"compose", "render"}
        if unknown or not s.kinds:
            raise ValueError(
                f"a worker serves compose and/or render jobs, not {sorted(unknown) or 'nothing'}"
            )
        if load_error is None and (llm is None or renderer is None):
            raise ValueError("a worker needs both backends, or a load_error saying why it has none")
        self.state = ClusterState(url, prefix=s.prefix)
        self.llm = llm
        self.renderer = renderer
        self.load_error = load_error
        self.worker_id = (
            worker_id or f"{socket.gethostname()}-{os.getpid()}{'-' + s.device if s.device else ''}"
        )
        self.lease_ms = round(s.lease_s * 1000)
        self.jobs_done = 0
        self.seconds_per_job: float | None = None
        self.current: str | None = None
        self._stop = asyncio.Event()
        self._chores: set[asyncio.Task[None]] = set()

    # --- the loop

    async def run(self, stop: asyncio.Event) -> None:
        self._stop = stop
        try:
            await self._wait_for_redis()
            beat = asyncio.create_task(self._heartbeat_loop(), name="worker-heartbeat")
            try:
                if self.load_error is None:
                    await self._serve_jobs()
                else:
                    log.error("worker %s takes no jobs: %s", self.worker_id, self.load_error)
                    await stop.wait()
            finally:
                beat.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await beat
                with contextlib.suppress(RedisError):
                    await self.state.forget_worker(self.worker_id)
        finally:
            await self.state.close()

    async def _wait_for_redis(self) -> None:
        delay = 0.2
        while not self._stop.is_set():
            try:
                await self.state.ping()
                return
            except RedisError as e:
                log.warning("worker %s: Redis unreachable (%s); retrying", self.worker_id, e)
                await self._sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _sleep(self, seconds: float) -> None:
        await wait_for_event(self._stop, seconds)

    def _info(self) -> dict[str, str]:
        s = self.settings
        status = f"failed: {self.load_error}" if self.load_error else ("busy" if self.current else "ready")
        return {
            "status": status,
            "device": s.device,
            "kinds": ",".join(s.kinds),
            "models": s.models,
            "jobs_done": str(self.jobs_done),
            "seconds_per_job": "" if self.seconds_per_job is None else f"{self.seconds_per_job:.3f}",
            "job": self.current or "",
        }

    async def _heartbeat_loop(self) -> None:
        while True:
            try:
                await self.state.heartbeat(self.worker_id, self._info(), self.settings.heartbeat_s)
                taken = await self.state.reap(self.settings.result_ttl_s)
                if taken:
                    log.warning("took back %d job(s) whose worker stopped renewing its lease", taken)
            except RedisError as e:
                log.warning("worker %s: heartbeat failed: %s", self.worker_id, e)
            await asyncio.sleep(self.settings.heartbeat_s)

    async def _serve_jobs(self) -> None:
        s = self.settings
        assert self.llm is not None and self.renderer is not None
        engine = Engine(
            self.llm, self.renderer, max_total=4, job_timeout_s=s.job_timeout_s, swap_models=s.swap_models
        )
        kinds = list(s.kinds)
        async with engine:
            while not self._stop.is_set():
                try:
                    claim = await self.state.claim(self.worker_id, self.lease_ms, kinds)
                    if claim is None:
                        # Nothing queued: wait for a submit's doorbell (or look again after a while).
                        await self.state.redis.blpop([self.state.keys.wake(k) for k in kinds], timeout=1)
                        continue
                except RedisError as e:
                    log.warning("worker %s: claim failed: %s", self.worker_id, e)
                    await self._sleep(0.5)
                    continue
                kinds.append(kinds.pop(0))  # alternate kinds between claims: neither starves
                await self._serve(engine, claim)

    # --- one job

    async def _serve(self, engine: Engine, claim: Claim) -> None:
        self.current = claim.job_id
        began = time.monotonic()
        run = _ClaimRun(claim)
        try:
            try:
                job = decode_job(claim.spec)
            except CodecError as e:
                log.error("job %s: %s", claim.job_id, e)
                await self._finish(run, Failed(str(e), FailureKind.INTERNAL))
                return
            handle = engine.submit(job)
            renewer = asyncio.create_task(self._renew_loop(run, handle))
            try:
                terminal = await self._stream(run, handle)
            finally:
                renewer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await renewer
            await handle.wait()  # the local lane is free again before the next claim
            if run.lost:
                log.warning("job %s: %s", claim.job_id, TAKEN_OVER)
            elif run.releasing:
                await self._retry(lambda: self.state.release(claim, self.worker_id))
            elif await self._finish(run, terminal) and isinstance(terminal, Finished):
                self._measured(job.kind, time.monotonic() - began)
        finally:
            self.current = None

    def _measured(self, kind: str, seconds: float) -> None:
        self.jobs_done += 1
        old = self.seconds_per_job
        self.seconds_per_job = seconds if old is None else old + 0.3 * (seconds - old)
        # An estimate for ETAs: never worth delaying the next claim for.
        task = asyncio.create_task(self._record(kind, seconds))
        self._chores.add(task)
        task.add_done_callback(self._chores.discard)

    async def _record(self, kind: str, seconds: float) -> None:
        with contextlib.suppress(RedisError):
            await self.state.record_seconds(kind, seconds)

    async def _renew_loop(self, run: _ClaimRun, handle: JobHandle) -> None:
        """Keep the lease, pass on a cancel request, and give the job back when asked to stop."""
        while handle.terminal is None:
            if self._stop.is_set() and not run.releasing:
                run.releasing = True
                handle.cancel(RELEASED)
            try:
                held, reason = await self.state.renew(run.claim, self.worker_id, self.lease_ms)
            except RedisError as e:
                log.warning("job %s: lease renewal failed: %s", run.claim.job_id, e)
                held, reason = True, ""
            if not held:
                run.lost = True
                handle.cancel(TAKEN_OVER)
                return
            if reason:
                handle.cancel(reason)
            await asyncio.sleep(self.settings.cancel_poll_s)

    async def _stream(self, run: _ClaimRun, handle: JobHandle) -> TerminalEvent:
        """Publish the local job's events in order, batched: the first event after a quiet spell
        at once, then at most one batch per `flush_s`. Returns the terminal event, unpublished
        (with whatever is still in `run.buffer`: `_finish` sends both together)."""
        flush_s = self.settings.flush_s
        last_flush = 0.0
        events = handle.events().__aiter__()
        pending: asyncio.Future[JobEvent] = asyncio.ensure_future(events.__anext__())
        while True:
            wait = None if not run.buffer else max(0.0, last_flush + flush_s - time.monotonic())
            done, _ = await asyncio.wait({pending}, timeout=wait)
            if pending in done:
                event = pending.result()
                if isinstance(event, Finished | Failed | Cancelled):
                    return event
                pending = asyncio.ensure_future(events.__anext__())
                if isinstance(event, Queued):
                    continue  # the local queue's place means nothing to the cluster
                run.add(event)
            if run.buffer and time.monotonic() >= last_flush + flush_s and not (run.lost or run.releasing):
                held = await self._flush(run)
                last_flush = time.monotonic()  # after an error too: try again in flush_s, not at once
                if not held:
                    run.lost = True
                    handle.cancel(TAKEN_OVER)

    def _encode(self, event: JobEvent) -> Fields:
        return encode_event(event, max_image_bytes=self.settings.max_result_bytes)

    async def _flush(self, run: _ClaimRun, final: str = "") -> bool:
        """Publish the batch in flight (after an error: the same batch, same number), else the
        buffer as a new one. False if the job is no longer ours. A Redis error keeps the batch
        for the next try, so events are never dropped, reordered or (the script skips a batch
        number it has applied already) written twice."""
        if run.unsent is None:
            run.seq += 1
            run.unsent = (run.seq, [self._encode(e) for e in run.buffer], final)
            run.buffer.clear()
        seq, batch, final_state = run.unsent
        s = self.settings
        try:
            held = await self.state.publish(
                run.claim, self.worker_id, self.lease_ms, s.result_ttl_s, batch, final=final_state, seq=seq
            )
        except RedisError as e:
            log.warning("job %s: publishing events failed: %s", run.claim.job_id, e)
            return True
        run.unsent = None
        return held

    async def _finish(self, run: _ClaimRun, terminal: TerminalEvent) -> bool:
        """Publish what is left and the terminal event, ending the job once; retried until Redis
        answers. False if the job was no longer ours."""
        delay = 0.1
        while run.unsent is not None:  # a batch from before the end, not yet acknowledged
            if not await self._flush(run):
                return False
            if run.unsent is not None:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
        try:
            self._encode(terminal)
        except ImageTooLarge as e:
            terminal = Failed(str(e), FailureKind.INTERNAL)
        run.buffer.append(terminal)
        held = await self._flush(run, final=_state_of(terminal))
        while run.unsent is not None:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
            held = await self._flush(run)
        return held

    async def _retry(self, call: Any) -> Any:
        delay = 0.1
        while True:
            try:
                return await call()
            except RedisError as e:
                log.warning("worker %s: Redis call failed (%s); retrying", self.worker_id, e)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)


class _ClaimRun:
    """One claim being served: its fate (shared by the renewer and the publisher) and its outbox."""

    def __init__(self, claim: Claim) -> None:
        self.claim = claim
        self.lost = False  # another worker owns it now: publish nothing more
        self.releasing = False  # this worker is stopping: hand it back instead of ending it
        self.buffer: list[JobEvent] = []  # events not yet in a batch
        self.seq = 0  # batches numbered per claim, so a retried one is applied once
        self.unsent: tuple[int, list[Fields], str] | None = None  # (number, batch, final state)

    def add(self, event: JobEvent) -> None:
        last = self.buffer[-1] if self.buffer else None
        if isinstance(event, TextDelta) and isinstance(last, TextDelta):
            self.buffer[-1] = TextDelta(last.text + event.text)  # one entry for a burst of tokens
        else:
            self.buffer.append(event)
