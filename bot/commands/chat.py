"""`omost-bot chat`: the terminal chat (also what `omost-bot run` starts when no platform is on).

Reads stdin line by line (so it can be scripted: `printf 'a cat\n' | omost-bot chat`); at the end
of the input it waits for the turns in flight, then exits. Images and code go under the data dir.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:  # only for annotations: the command must start without loading the engine
    from bot.config import Config
    from omost_engine.llm.base import LLMBackend
    from omost_engine.render.base import Renderer

HELP = "chat with the bot in this terminal (reads stdin; scriptable)"
DATA_DIR_HELP = (
    "where the database and the chat's pictures (images/) and code go "
    "(default: [data] dir, data/ beside the config file, or here without one)"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", type=Path, help="config file (default ./config.toml if present)")
    parser.add_argument("--data-dir", type=Path, help=DATA_DIR_HELP)


def load(args: argparse.Namespace) -> Config:
    """The config, with --data-dir applied (bot/commands/config_arg.py)."""
    from bot.commands.config_arg import load_config_for

    return load_config_for(args)


async def chat(
    config: Config,
    *,
    llm: LLMBackend | None = None,
    renderer: Renderer | None = None,
    stdin: TextIO | None = None,
) -> int:
    from adapters.console import ConsoleAdapter
    from bot.app import App

    console = ConsoleAdapter(config.data.dir, stdin=stdin)
    if sys.stdin.isatty() and stdin is None:
        console.console.print(
            "omost-bot: describe a picture (/help for commands, /quit to leave)", style="bold"
        )
    # Ctrl+C cancels the running turn and a second one quits; SIGTERM quits (adapters/console.py)
    with console.signal_handlers():
        async with App(config, adapters=[console], llm=llm, renderer=renderer) as app:
            await console.session(app.runner.drain)
    return 0


def run(args: argparse.Namespace) -> int:
    return run_chat(load(args))


def run_chat(config: Config) -> int:
    """The terminal chat as a program: weights checked first (offered for download in a
    terminal), start-up failures as one line (bot/operator_errors.py), our logs left to the chat."""
    from bot.firststart import check_weights_at_start
    from bot.logs import quiet_for_terminal_chat
    from bot.operator_errors import operator_failures

    quiet_for_terminal_chat()
    check_weights_at_start(config)
    with operator_failures(config):
        return asyncio.run(chat(config))
