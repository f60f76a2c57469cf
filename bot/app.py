"""The composition root: the one place that knows every concrete class.

`App` makes the data folder private (umask 0o077 while it runs; what exists chmod-ed to 0700 and
0600), opens the store, prunes old uploads (at start and daily, [data] keep_uploads_days), builds
the backends the config names (or takes injected ones: tests, benchmarks), starts the engine,
builds the turn flow (bot/turns: the handler the adapters call and the runner that drives turns),
resumes the turns a crash left unfinished, and shuts everything down in reverse order. Adapters are
built here from plain values (a token, a URL), never from the whole Config.

Platform adapters are imported only when the config enables them (their libraries are optional
extras); with none enabled, the terminal chat runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sqlite3
from collections.abc import Sequence
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any, Literal

from adapters.base import Adapter
from bot.config import Config
from bot.policy import Policy
from bot.store import Store, make_private
from bot.turns.handler import ChatHandler
from bot.turns.runner import TurnRunner
from bot.turns.settings import SettingsBook, TurnSettings
from omost_engine.engine import Engine
from omost_engine.engine_api import JobEngine
from omost_engine.llm.base import LLMBackend
from omost_engine.render.base import Renderer

log = logging.getLogger(__name__)

PRIVATE_UMASK = 0o077  # files 0600, folders 0700
DAY_S = 24 * 3600.0


def build_llm(config: Config) -> LLMBackend:
    from omost_engine.llm.factory import create_backend

    llm = config.llm
    if llm.backend == "openai":
        return create_backend(
            "openai",
            llm.model,
            base_url=llm.base_url,
            api_key_env=llm.api_key_env,
            idle_timeout_s=llm.idle_timeout_s,
            total_timeout_s=llm.total_timeout_s,
            server=llm.server,
            constrain=llm.constrain,
        )
    # "auto" and "none": load what the repo ships (the Omost repos carry their quantisation config)
    quantize: Literal["4bit", "8bit"] | None = None
    if llm.quantize == "4bit":
        quantize = "4bit"
    elif llm.quantize == "8bit":
        quantize = "8bit"
    # The bot never downloads inside a chat turn (gigabytes, minutes): `omost-bot download` does,
    # and the renderer is local-only the same way.
    options: dict[str, Any] = {"offline": True, "constrain": llm.constrain}
    if llm.device != "auto":
        options["device"] = llm.device
    return create_backend("local", llm.model, quantize=quantize, **options)


def build_renderer(config: Config) -> Renderer:
    """The renderer of the configured family (SDXL or FLUX.2 [klein]); the rest of the bot sees only
    the Renderer interface."""
    from omost_engine.render.factory import make_renderer

    render = config.render
    return make_renderer(
        render.family,
        render.model,
        device=None if render.device == "auto" else render.device,
        memory="resident" if render.memory == "auto" else render.memory,
        quantize=None if render.quantize == "none" else render.quantize,
    )


def swap_models_for(config: Config) -> bool:
    """queue.swap_models: "always", "never", or "auto" = swap on a GPU under 20 GiB."""
    mode = config.queue.swap_models
    if mode != "auto":
        return mode == "always"
    if config.llm.backend == "openai":
        return False
    try:
        import torch

        if not torch.cuda.is_available():
            return False
        return bool(torch.cuda.get_device_properties(0).total_memory < 20 * 2**30)
    except Exception:  # no torch or no driver: nothing to swap
        return False


def platform_adapters(config: Config) -> list[Adapter]:
    """The chat-platform adapters the config enables (none: the caller runs the terminal chat)."""
    adapters: list[Adapter] = []
    if config.telegram.enabled:
        try:
            from adapters.telegram_bot import TelegramAdapter
        except ImportError as e:
            raise SystemExit(
                f"[telegram] is enabled in {config.source} but the Telegram adapter is not available ({e}); "
                'install it with: pip install -e ".[telegram]"'
            ) from None
        adapters.append(TelegramAdapter(config.telegram_token(), base_url=config.telegram.base_url))
    if config.discord.enabled:
        try:
            from adapters.discord_bot import DiscordAdapter
        except ImportError as e:
            raise SystemExit(
                f"[discord] is enabled in {config.source} but the Discord adapter is not available ({e}); "
                'install it with: pip install -e ".[discord]"'
            ) from None
        adapters.append(
            DiscordAdapter(
                config.discord_token(),
                guild_ids=list(config.discord.guild_ids),
                create_threads=config.discord.create_threads,
            )
        )
    return adapters


class App:
    """Everything the bot runs, opened with `async with App(config, adapters=[...])`."""

    def __init__(
        self,
        config: Config,
        *,
        adapters: Sequence[Adapter],
        llm: LLMBackend | None = None,
        renderer: Renderer | None = None,
    ) -> None:
        self.config = config
        self.adapters = list(adapters)
        self._llm = llm
        self._renderer = renderer
        self._stack = AsyncExitStack()
        self._edits_supported = True
        self.store: Store
        self.engine: JobEngine
        self.runner: TurnRunner
        self.handler: ChatHandler

    async def __aenter__(self) -> App:
        try:
            await self._open()
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def _open(self) -> None:
        config = self.config
        # 1. Private files: nothing the bot writes from here on is readable by other local users
        # (prompts, pictures), and what an older version left readable is tightened.
        previous_umask = os.umask(PRIVATE_UMASK)
        self._stack.callback(os.umask, previous_umask)
        config.data.dir.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(make_private, config.data.dir, config.data.database)
        self.store = await self._stack.enter_async_context(
            Store.open(config.data.database, data_dir=config.data.dir)
        )
        await self._prune_uploads()
        pruning = asyncio.create_task(self._prune_daily())
        self._stack.callback(pruning.cancel)
        self.engine = self._build_engine()
        await self.engine.start()
        self._stack.push_async_callback(self.engine.stop)
        policy = Policy.from_config(config)
        book = SettingsBook(self.store, TurnSettings.defaults(config.render))
        self.runner = TurnRunner(
            store=self.store,
            engine=self.engine,
            policy=policy,
            settings=book,
            llm=config.llm,
            model_name=config.render.model,
            instance=await self.store.instance_id(),
            edits_supported=self._edits_supported,
        )
        self._stack.push_async_callback(self.runner.close)
        self.handler = ChatHandler(store=self.store, runner=self.runner, policy=policy, book=book)
        for adapter in self.adapters:
            self.handler.attach(adapter)
        resumed = await self.runner.resume_unfinished_turns()
        if resumed:
            log.info("resumed %d unfinished turn(s)", resumed)
        for adapter in self.adapters:
            await adapter.start(self.handler)
            self._stack.push_async_callback(adapter.stop)

    def _build_engine(self) -> JobEngine:
        """The in-process engine on this machine's models, or (`[queue] backend = "redis"`) the
        render cluster's, whose workers load the models."""
        config = self.config
        if config.queue.backend == "redis":
            from bot.worker import cluster_engine

            # the workers' renderer: what the shared config names (FLUX.2 [klein] draws whole pictures)
            self._edits_supported = config.render.family != "flux2-klein"
            return cluster_engine(config)
        llm = self._llm or build_llm(config)
        renderer = self._renderer or build_renderer(config)
        self._edits_supported = bool(getattr(renderer, "supports_edits", False))
        if self._llm is None:
            self._stack.callback(llm.close)
        if self._renderer is None:
            self._stack.callback(renderer.close)
        return Engine(
            llm,
            renderer,
            max_total=config.queue.max_total,
            job_timeout_s=config.queue.job_timeout_s,
            swap_models=swap_models_for(config),
        )

    async def _prune_uploads(self) -> None:
        """Delete the pictures users sent that are older than [data] keep_uploads_days."""
        try:
            removed = await self.store.prune_uploads(self.config.data.keep_uploads_days * DAY_S)
        except (OSError, sqlite3.Error):  # a failed prune must not stop the bot; the next one retries
            log.exception("could not prune old uploads")
            return
        if removed:
            log.info("pruned %d upload(s) older than %g day(s)", removed, self.config.data.keep_uploads_days)

    async def _prune_daily(self) -> None:
        while True:
            await asyncio.sleep(DAY_S)
            await self._prune_uploads()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._stack.aclose()


async def wait_for_shutdown_signal() -> None:
    """Returns on SIGINT or SIGTERM (the caller then leaves `async with App`)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # not on Windows
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.remove_signal_handler(sig)
