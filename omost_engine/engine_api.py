"""The job-engine interface the bot programs against, whichever engine runs the jobs.

Owns two Protocols and one error. `JobEngine` is what `engine.Engine` (in-process lanes, the
embedded default) and `cluster.RedisEngine` (GPU workers reached through Redis) both provide;
`JobHandleView` is the caller's view of one submitted job that each returns from `submit`.
The bot imports these types, never the concrete engines (only the composition root does).

    errors.EngineError
    +-- EngineUnavailable    the engine cannot take or follow jobs right now (e.g. Redis is
                             down); the caller keeps the request and submits it again later
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Protocol, runtime_checkable

from omost_engine.errors import EngineError
from omost_engine.jobs import (
    TERMINAL_EVENTS,
    Cancelled,
    Failed,
    Finished,
    Job,
    JobEvent,
    JobStatus,
    Started,
    TerminalEvent,
)


class EngineUnavailable(EngineError):
    """Raised by `submit` while the engine cannot be reached; str(e) is fit for the chat."""


@runtime_checkable
class JobHandleView(Protocol):
    job: Job

    @property
    def job_id(self) -> str: ...

    @property
    def status(self) -> JobStatus: ...

    @property
    def position(self) -> int:
        """1-based place in the queue while queued; 0 once running or done."""
        ...

    @property
    def eta_s(self) -> float | None: ...

    @property
    def terminal(self) -> TerminalEvent | None: ...

    def cancel(self, reason: str = "cancelled") -> bool: ...

    def events(self) -> AsyncIterator[JobEvent]:
        """Every event from the first, in order, ending with the terminal one."""
        ...

    async def wait(self) -> TerminalEvent: ...


class EventReplay:
    """The event log both engines' handles keep: every event of a job in order, replayed from the
    first to each `events()` caller, the status it implies, and the terminal event. A handle
    records events with `_record` on its engine's loop; `_before_wait` lets one refuse to wait
    (e.g. the engine has closed)."""

    def __init__(self, job: Job) -> None:
        self.job: Job = job
        self._events: list[JobEvent] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._status = JobStatus.QUEUED
        self._terminal: TerminalEvent | None = None

    @property
    def job_id(self) -> str:
        return self.job.job_id

    @property
    def status(self) -> JobStatus:
        return self._status

    @property
    def terminal(self) -> TerminalEvent | None:
        return self._terminal

    async def events(self) -> AsyncIterator[JobEvent]:
        """Every event from the first, in order, ending with the terminal one."""
        index = 0
        while True:
            while index < len(self._events):
                event = self._events[index]
                index += 1
                yield event
                if isinstance(event, TERMINAL_EVENTS):
                    return
            await self._next_event()

    async def wait(self) -> TerminalEvent:
        """The terminal event, once there is one."""
        while self._terminal is None:
            await self._next_event()
        return self._terminal

    def _before_wait(self) -> None:
        """Raise instead of waiting for an event that cannot come."""

    async def _next_event(self) -> None:
        self._before_wait()
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def _record(self, event: JobEvent) -> None:
        """Append `event` (after the terminal one, nothing), update the status, wake the waiters."""
        if self._terminal is not None:
            return
        self._events.append(event)
        if isinstance(event, Started):
            self._status = JobStatus.RUNNING
        elif isinstance(event, Finished | Failed | Cancelled):
            self._terminal = event
            self._status = (
                JobStatus.FINISHED
                if isinstance(event, Finished)
                else JobStatus.FAILED
                if isinstance(event, Failed)
                else JobStatus.CANCELLED
            )
        self._wake()

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)


@runtime_checkable
class JobEngine(Protocol):
    async def start(self) -> None: ...

    async def stop(self, grace_s: float | None = None) -> None: ...

    def submit(self, job: Job) -> JobHandleView:
        """Queue a job (errors.EngineError subclasses: QueueFull, EngineClosed, EngineUnavailable)."""
        ...

    def cancel_tagged(self, tag: str, reason: str = "cancelled") -> int: ...

    def in_flight(self, owner: str | None = None) -> int: ...
