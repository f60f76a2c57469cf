"""`omost-bot`: the command line. Each subcommand lives in bot/commands/<name>.py.

A command module exposes `HELP` (one line), `add_arguments(parser)` and `run(args) -> int`.
Modules are imported only when their command runs, so `omost-bot preview` never loads torch.
Exit codes: 0 ok, 1 failure, 2 bad input (unparseable canvas, bad arguments, bad config).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from types import ModuleType

# name -> module. Order is the order `omost-bot --help` lists them.
COMMANDS: dict[str, str] = {
    "run": "bot.commands.run",
    "chat": "bot.commands.chat",
    "preview": "bot.commands.preview",
    "render": "bot.commands.render",
    "download": "bot.commands.download",
    "doctor": "bot.commands.doctor",
    "grammar": "bot.commands.grammar",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="omost-bot",
        description="Compose images the Omost way: an LLM writes Canvas code, SDXL draws it.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = _load(module_name)
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        p.set_defaults(_module=module_name)
        module.add_arguments(p)
    return parser


def _load(module_name: str) -> ModuleType:
    return importlib.import_module(module_name)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        default = "run" if "run" in COMMANDS else None
        if default is None:
            parser.print_help()
            return 0
        args = parser.parse_args([default, *(argv or [])])
    try:
        return int(_load(args._module).run(args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `omost-bot preview x --json | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
