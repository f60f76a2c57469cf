"""`omost-bot run`: every adapter the config enables on one event loop; the terminal chat when
none is (the `enabled` flags decide, not whether a token is set). SIGINT/SIGTERM shut down
cleanly (adapters, then the engine, then the store).

Before anything starts: the configured weights are checked (bot/firststart.py: offered for
download in a terminal, else the download command printed once). Start-up failures an operator
fixes become one line (bot/operator_errors.py; bot/cli.py prints it, exit 2).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path

HELP = "run the bot on the platforms enabled in the config (the terminal chat when none is)"


DATA_DIR_HELP = (
    "where the database and the pictures (images/) and code go "
    "(default: [data] dir, data/ beside the config file, or here without one)"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", type=Path, help=DATA_DIR_HELP)


def run(args: argparse.Namespace) -> int:
    from bot.app import App, platform_adapters, wait_for_shutdown_signal
    from bot.commands.chat import load, run_chat
    from bot.firststart import check_weights_at_start
    from bot.operator_errors import operator_failures
    from bot.redact import install_log_redaction, secrets_from_config

    config = load(args)
    # before anything can log a request URL or a rejected token (issue 13)
    install_log_redaction(secrets_from_config(config))
    with operator_failures(config):
        adapters = platform_adapters(config)
    if not adapters:
        return run_chat(config)
    check_weights_at_start(config)  # offered in a terminal; a service (no tty) gets the command once

    async def main() -> int:
        async with App(config, adapters=adapters):
            logging.getLogger("omost-bot").info(
                "running on %s; Ctrl+C to stop", ", ".join(a.platform for a in adapters)
            )
            await wait_for_shutdown_signal()
        return 0

    with operator_failures(config):
        return asyncio.run(main())
