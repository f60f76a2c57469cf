"""Typed async calls on the cluster's Redis state (scripts.py), shared by bot and workers.

Owns the Redis connection and turns every script into a method with Python types. It knows no
job semantics beyond ids, owners, tags and JSON specs; the bot side (client.py) and the worker
side (worker.py) give them meaning. Connection failures surface as redis-py's
`ConnectionError`/`TimeoutError` (both `redis.exceptions.RedisError`); callers decide.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

from omost_engine.cluster import scripts
from omost_engine.cluster.codec import Fields
from omost_engine.cluster.scripts import Keys

DEAD_WORKER_TTL_FACTOR = 3
"""A worker's hash expires after this many missed heartbeats."""


@dataclass(frozen=True)
class Claim:
    job_id: str
    spec: bytes
    attempt: str


@dataclass(frozen=True)
class WorkerInfo:
    worker_id: str
    status: str  # "ready", "busy", "failed: <why>"
    device: str
    kinds: tuple[str, ...]
    models: str
    jobs_done: int
    seconds_per_job: float | None
    heartbeat_age_s: float


class ClusterState:
    """One Redis client and the cluster scripts bound to it."""

    def __init__(self, url: str, *, prefix: str = "omost", connect_timeout_s: float = 2.0) -> None:
        self.keys = Keys(prefix)
        self.prefix = prefix
        # No socket timeout: XREAD and BLPOP block on purpose; connecting is what may hang.
        self.redis: aioredis.Redis = aioredis.Redis.from_url(
            url, socket_connect_timeout=connect_timeout_s, health_check_interval=10
        )
        self._scripts: dict[str, AsyncScript] = {
            name: self.redis.register_script(getattr(scripts, name))
            for name in (
                "SUBMIT",
                "CLAIM",
                "RENEW",
                "PUBLISH",
                "RELEASE",
                "REAP",
                "CANCEL",
                "CANCEL_TAGGED",
                "POSITIONS",
                "COUNTS",
            )
        }

    async def close(self) -> None:
        await self.redis.aclose()

    async def _run(self, name: str, *args: Any) -> Any:
        return await self._scripts[name](keys=[], args=[self.prefix, *args])

    async def ping(self) -> bool:
        return bool(await self.redis.ping())

    # --- bot side

    async def submit(self, job_id: str, kind: str, owner: str, tag: str, spec: str) -> bool:
        """True: queued now; False: the id was already in the cluster (attach to it)."""
        return bool(await self._run("SUBMIT", job_id, kind, owner, tag, spec))

    async def cancel(self, job_id: str, reason: str, ttl_s: int) -> int:
        return int(await self._run("CANCEL", job_id, reason, ttl_s))

    async def cancel_tagged(self, tag: str, reason: str, ttl_s: int) -> int:
        return int(await self._run("CANCEL_TAGGED", tag, reason, ttl_s))

    async def positions(self, job_ids: list[str]) -> list[int]:
        if not job_ids:
            return []
        return [int(p) for p in await self._run("POSITIONS", *job_ids)]

    async def counts(self) -> dict[str, int]:
        compose, render, running = await self._run("COUNTS")
        return {"queued_compose": int(compose), "queued_render": int(render), "running": int(running)}

    async def seconds_per_job(self) -> dict[str, float]:
        raw = await self.redis.hgetall(self.keys.stats)
        return {_text(k): float(v) for k, v in raw.items()}

    # --- worker side

    async def claim(self, worker_id: str, lease_ms: int, kinds: list[str]) -> Claim | None:
        got = await self._run("CLAIM", worker_id, lease_ms, *kinds)
        if not got:
            return None
        job_id, spec, attempt = got
        return Claim(_text(job_id), spec, _text(attempt))

    async def renew(self, claim: Claim, worker_id: str, lease_ms: int) -> tuple[bool, str]:
        held, reason = await self._run("RENEW", claim.job_id, worker_id, claim.attempt, lease_ms)
        return bool(held), _text(reason)

    async def publish(
        self,
        claim: Claim,
        worker_id: str,
        lease_ms: int,
        ttl_s: int,
        events: list[Fields],
        *,
        final: str = "",
        seq: int,
    ) -> bool:
        """Append batch number `seq` of events to the job's stream (once: a batch number already
        applied is skipped); `final` (a state) ends the job with the last event.
        False: the job is no longer this worker's (taken over or ended)."""
        args: list[Any] = [claim.job_id, worker_id, claim.attempt, lease_ms, ttl_s, final, seq]
        for fields in events:
            args.append(len(fields))
            for name, value in fields.items():
                args.extend((name, value))
        return bool(await self._run("PUBLISH", *args))

    async def release(self, claim: Claim, worker_id: str) -> bool:
        return bool(await self._run("RELEASE", claim.job_id, worker_id, claim.attempt))

    async def reap(self, ttl_s: int) -> int:
        return int(await self._run("REAP", ttl_s))

    async def record_seconds(self, kind: str, seconds: float, alpha: float = 0.3) -> None:
        """Move the cluster's per-kind seconds-per-job average (a race only blurs an estimate)."""
        old = await self.redis.hget(self.keys.stats, kind)
        new = seconds if old is None else float(old) + alpha * (seconds - float(old))
        await self.redis.hset(self.keys.stats, kind, f"{new:.4f}")

    async def heartbeat(self, worker_id: str, info: dict[str, str], interval_s: float) -> None:
        pipe = self.redis.pipeline(transaction=True)
        mapping: dict[str | bytes, str] = {"heartbeat": f"{time.time():.3f}"}
        mapping.update(info)
        pipe.hset(self.keys.worker(worker_id), mapping=mapping)  # type: ignore[arg-type]
        pipe.expire(self.keys.worker(worker_id), max(1, round(interval_s * DEAD_WORKER_TTL_FACTOR)))
        pipe.sadd(self.keys.workers, worker_id)
        await pipe.execute()

    async def forget_worker(self, worker_id: str) -> None:
        await self.redis.delete(self.keys.worker(worker_id))
        await self.redis.srem(self.keys.workers, worker_id)

    async def workers(self) -> list[WorkerInfo]:
        """Workers whose heartbeat has not expired (dead ones are dropped from the set)."""
        found: list[WorkerInfo] = []
        for raw_id in await self.redis.smembers(self.keys.workers):
            worker_id = _text(raw_id)
            raw = await self.redis.hgetall(self.keys.worker(worker_id))
            h = {_text(k): _text(v) for k, v in raw.items()}
            if not h:
                await self.redis.srem(self.keys.workers, worker_id)
                continue
            rate = h.get("seconds_per_job", "")
            found.append(
                WorkerInfo(
                    worker_id=worker_id,
                    status=h.get("status", "?"),
                    device=h.get("device", ""),
                    kinds=tuple(k for k in h.get("kinds", "").split(",") if k),
                    models=h.get("models", ""),
                    jobs_done=int(h.get("jobs_done", "0")),
                    seconds_per_job=float(rate) if rate else None,
                    heartbeat_age_s=max(0.0, time.time() - float(h.get("heartbeat", "0"))),
                )
            )
        return sorted(found, key=lambda w: w.worker_id)


def _text(value: object) -> str:
    """redis-py answers bytes (no decode_responses: images travel as raw bytes)."""
    return value.decode() if isinstance(value, bytes) else str(value)
