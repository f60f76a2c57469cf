"""The render cluster's two ends as the config describes them: the bot's engine and a worker.

Owns reading `[queue]`'s cluster keys: `cluster_url` (redis_url_env or redis_url),
`cluster_engine` (the `RedisEngine` bot/app.py uses when `backend = "redis"`) and `run_worker`
(what `omost-bot worker` runs: this machine's models, built the way bot/app.py builds them, with
the same memory modes and model swapping, loaded at start and served to the cluster until
SIGINT/SIGTERM). A worker never opens the bot's database.

omost_engine.cluster (and so the `redis` package) is imported only when one of these is called.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from bot.config import Config, ConfigError, ConfigProblem

if TYPE_CHECKING:
    from omost_engine.cluster import RedisEngine, Worker
    from omost_engine.llm.base import LLMBackend
    from omost_engine.render.base import Renderer

log = logging.getLogger(__name__)

JOB_KINDS = ("compose", "render")


def cluster_url(config: Config) -> str:
    """The Redis URL: the variable `queue.redis_url_env` names, else `queue.redis_url`."""
    queue = config.queue
    if queue.redis_url_env:
        return config.read_secret("queue.redis_url_env")
    if queue.redis_url:
        return queue.redis_url
    raise ConfigError(config.source, [ConfigProblem("queue.redis_url_env", "names no Redis for the cluster")])


def cluster_engine(config: Config) -> RedisEngine:
    """The bot's engine for `backend = "redis"` (start it with `async with`, like `Engine`)."""
    from omost_engine.cluster import RedisEngine

    queue = config.queue
    return RedisEngine(
        cluster_url(config), prefix=queue.prefix, max_total=queue.max_total, result_ttl_s=queue.result_ttl_s
    )


def for_device(config: Config, device: str | None) -> Config:
    """The config with both models on `device` (`--device cuda:1`), else unchanged."""
    if not device:
        return config
    return config.model_copy(
        update={
            "llm": config.llm.model_copy(update={"device": device}),
            "render": config.render.model_copy(update={"device": device}),
        }
    )


def load_models(llm: LLMBackend, renderer: Renderer, kinds: Sequence[str], swap: bool) -> None:
    """Load what the worker will serve now, so a failure shows before any job is claimed. With
    model swapping only one model is loaded; the engine swaps in the other when a job needs it."""
    if "render" in kinds:
        renderer.load()
    if "compose" in kinds and not llm.remote and not (swap and "render" in kinds):
        llm.load()


def build_worker(
    config: Config, *, device: str | None, kinds: Sequence[str], worker_id: str | None
) -> Worker:
    from bot.app import build_llm, build_renderer, swap_models_for
    from omost_engine.cluster import Worker, WorkerSettings

    config = for_device(config, device)
    queue = config.queue
    swap = swap_models_for(config)
    settings = WorkerSettings(
        prefix=queue.prefix,
        kinds=tuple(kinds),
        device=device or config.render.device,
        models=f"{config.llm.model} + {config.render.model}",
        lease_s=queue.lease_s,
        heartbeat_s=queue.heartbeat_s,
        result_ttl_s=queue.result_ttl_s,
        max_result_bytes=round(queue.max_result_mib * 2**20),
        job_timeout_s=queue.job_timeout_s,
        swap_models=swap,
    )
    url = cluster_url(config)
    try:
        llm = build_llm(config)
        renderer = build_renderer(config)
        load_models(llm, renderer, kinds, swap)
    except Exception as e:  # any failure: report it to the cluster and take no jobs
        log.exception("the models failed to load")
        return Worker(url, None, None, settings, load_error=str(e) or type(e).__name__, worker_id=worker_id)
    return Worker(url, llm, renderer, settings, worker_id=worker_id)


async def serve(worker: Worker) -> None:
    """Run `worker` until SIGINT or SIGTERM, then close its models."""
    from bot.app import wait_for_shutdown_signal

    stop = asyncio.Event()

    async def on_signal() -> None:
        await wait_for_shutdown_signal()
        stop.set()

    watcher = asyncio.create_task(on_signal())
    try:
        await worker.run(stop)
    finally:
        watcher.cancel()
        for backend in (worker.llm, worker.renderer):
            if backend is not None:
                backend.close()


def run_worker(
    config: Config,
    *,
    device: str | None = None,
    kinds: Sequence[str] = JOB_KINDS,
    worker_id: str | None = None,
) -> int:
    """`omost-bot worker`: 0 after a clean shutdown, 1 if the models failed to load."""
    worker = build_worker(config, device=device, kinds=kinds, worker_id=worker_id)
    asyncio.run(serve(worker))
    return 1 if worker.load_error else 0
