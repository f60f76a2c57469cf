"""The composition root: the one place that knows every concrete class.

`App` opens the store, builds the backends the config names (or takes injected ones: tests,
benchmarks), starts the engine, wires the conversations to the adapters, resumes the turns a
crash left unfinished, and shuts everything down in reverse order.

Platform adapters are imported only when the config enables them (their libraries are optional
extras); with none enabled, the terminal chat runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Sequence
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any, Literal

from adapters.base import Adapter
from bot.config import Config
from bot.conversation import Conversations
from bot.policy import Policy
from bot.store import Store
from omost_engine.engine import Engine
from omost_engine.llm.base import LLMBackend
from omost_engine.render.base import Renderer

log = logging.getLogger(__name__)


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
        )
    # "auto" and "none": load what the repo ships (the Omost repos carry their quantisation config)
    quantize: Literal["4bit", "8bit"] | None = None
    if llm.quantize == "4bit":
        quantize = "4bit"
    elif llm.quantize == "8bit":
        quantize = "8bit"
    # The bot never downloads inside a chat turn (gigabytes, minutes): `omost-bot download` does,
    # and the renderer is local-only the same way.
    options: dict[str, Any] = {"offline": True}
    if llm.device != "auto":
        options["device"] = llm.device
    return create_backend("local", llm.model, quantize=quantize, **options)


def build_renderer(config: Config) -> Renderer:
    from omost_engine.render.pipeline import SDXLRegionalRenderer

    render = config.render
    memory = "resident" if render.memory == "auto" else render.memory
    device = None if render.device == "auto" else render.device
    return SDXLRegionalRenderer(render.model, device=device, memory=memory)


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
        adapters.append(TelegramAdapter.from_config(config))
    if config.discord.enabled:
        try:
            from adapters.discord_bot import DiscordAdapter
        except ImportError as e:
            raise SystemExit(
                f"[discord] is enabled in {config.source} but the Discord adapter is not available ({e}); "
                'install it with: pip install -e ".[discord]"'
            ) from None
        adapters.append(DiscordAdapter.from_config(config))
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
        self.store: Store
        self.engine: Engine
        self.conversations: Conversations

    async def __aenter__(self) -> App:
        try:
            await self._open()
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def _open(self) -> None:
        config = self.config
        config.data.dir.mkdir(parents=True, exist_ok=True)
        self.store = await self._stack.enter_async_context(
            Store.open(config.data.database, data_dir=config.data.dir)
        )
        llm = self._llm or build_llm(config)
        renderer = self._renderer or build_renderer(config)
        if self._llm is None:
            self._stack.callback(llm.close)
        if self._renderer is None:
            self._stack.callback(renderer.close)
        self.engine = Engine(
            llm,
            renderer,
            max_total=config.queue.max_total,
            job_timeout_s=config.queue.job_timeout_s,
            swap_models=swap_models_for(config),
        )
        await self._stack.enter_async_context(self.engine)
        self.conversations = Conversations(
            store=self.store, engine=self.engine, policy=Policy.from_config(config), config=config
        )
        self._stack.push_async_callback(self.conversations.close)
        for adapter in self.adapters:
            self.conversations.attach(adapter)
        resumed = await self.conversations.resume_unfinished_turns()
        if resumed:
            log.info("resumed %d unfinished turn(s)", resumed)
        for adapter in self.adapters:
            await adapter.start(self.conversations)
            self._stack.push_async_callback(adapter.stop)

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
