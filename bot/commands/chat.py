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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", type=Path, help="config file (default ./config.toml if present)")
    parser.add_argument("--data-dir", type=Path, help="override [data] dir")


def load(args: argparse.Namespace) -> Config:
    """The config, with --data-dir applied; exits 2 with the config error's message."""
    from bot.config import ConfigError, load_config

    try:
        config = load_config(args.config)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    if getattr(args, "data_dir", None) is not None:
        config = config.model_copy(update={"data": config.data.model_copy(update={"dir": args.data_dir})})
    return config


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
    config = load(args)
    return asyncio.run(chat(config))
