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

from collections.abc import AsyncIterator
from typing import Protocol, runtime_checkable

from omost_engine.errors import EngineError
from omost_engine.jobs import Job, JobEvent, JobStatus, TerminalEvent


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


@runtime_checkable
class JobEngine(Protocol):
    async def start(self) -> None: ...

    async def stop(self, grace_s: float | None = None) -> None: ...

    def submit(self, job: Job) -> JobHandleView:
        """Queue a job (errors.EngineError subclasses: QueueFull, EngineClosed, EngineUnavailable)."""
        ...

    def cancel_tagged(self, tag: str, reason: str = "cancelled") -> int: ...

    def in_flight(self, owner: str | None = None) -> int: ...
