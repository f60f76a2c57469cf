"""`omost-bot run`: every adapter the config enables on one event loop; the terminal chat when
none is. SIGINT/SIGTERM shut down cleanly (adapters, then the engine, then the store)."""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path

HELP = "run the bot on the platforms enabled in the config (the terminal chat when none is)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", type=Path, help="config file (default ./config.toml if present)")
    parser.add_argument("--data-dir", type=Path, help="override [data] dir")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")


def run(args: argparse.Namespace) -> int:
    from bot.app import App, platform_adapters, wait_for_shutdown_signal
    from bot.commands.chat import chat, load
    from bot.redact import install_log_redaction, secrets_from_config

    config = load(args)
    logging.basicConfig(
        level=logging.DEBUG if getattr(args, "verbose", False) else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Before anything can log a request URL or a rejected token (issue 13).
    install_log_redaction(secrets_from_config(config))
    adapters = platform_adapters(config)
    if not adapters:
        return asyncio.run(chat(config))

    async def main() -> int:
        async with App(config, adapters=adapters):
            logging.getLogger("omost-bot").info(
                "running on %s; Ctrl+C to stop", ", ".join(a.platform for a in adapters)
            )
            await wait_for_shutdown_signal()
        return 0

    return asyncio.run(main())
