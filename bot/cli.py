"""`omost-bot`: the command line. Each subcommand lives in bot/commands/<name>.py.

A command module exposes `HELP` (one line), `add_arguments(parser)` and `run(args) -> int`, and
may set `LIBRARY_PROGRESS = True` when the libraries' own progress bars are its output (download).
Modules are imported only when their command runs, so `omost-bot preview` never loads torch.

Options every command takes, before or after its name (`omost-bot -c x.toml`, `omost-bot render
-c x.toml ...`; after the name wins): `-c/--config`, `-v/--verbose`, `--debug`. With no command,
`run` starts. `--version` prints the installed version.

This is the failure boundary: an operator's failure (a bad config, an unset or rejected token, an
unreachable platform, a damaged database: bot/operator_errors.py) is one line on stderr and exit
status 2; any other failure is one line and exit 1. Tracebacks only with `--debug`. Output is
configured once here, when main() runs as the program (bot/logs.py: quiet unless --verbose).

Exit codes: 0 ok, 1 failure, 2 bad input (unparseable canvas, bad arguments, bad config, a
start-up failure the operator fixes), 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

# name -> module. Order is the order `omost-bot --help` lists them.
COMMANDS: dict[str, str] = {
    "run": "bot.commands.run",
    "chat": "bot.commands.chat",
    "preview": "bot.commands.preview",
    "render": "bot.commands.render",
    "download": "bot.commands.download",
    "doctor": "bot.commands.doctor",
    "worker": "bot.commands.worker",
    "grammar": "bot.commands.grammar",
}
DEFAULT_COMMAND = "run"
# (dest, global dest): the options given before the subcommand land in the global dests, so the
# subcommand's own defaults never overwrite them; _merge_global_options reconciles the two.
GLOBAL_OPTIONS = (("config", "global_config"), ("verbose", "global_verbose"), ("debug", "global_debug"))


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("omost-bot")
    except PackageNotFoundError:  # run from a checkout that was never pip-installed
        return "unknown (not installed)"


def _add_common_options(parser: argparse.ArgumentParser, prefix: str = "") -> None:
    parser.add_argument(
        "-c",
        "--config",
        dest=f"{prefix}config",
        type=Path,
        metavar="FILE",
        help="config file (default ./config.toml if present, else the built-in defaults)",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        dest=f"{prefix}verbose",
        action="store_true",
        help="show library warnings, progress bars and INFO logs",
    )
    parser.add_argument(
        "--debug", dest=f"{prefix}debug", action="store_true", help="DEBUG logs and full tracebacks"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="omost-bot",
        description="Compose images the Omost way: an LLM writes Canvas code, SDXL draws it. "
        f"With no command, `{DEFAULT_COMMAND}` starts.",
    )
    parser.add_argument("--version", action="version", version=f"omost-bot {version()}")
    _add_common_options(parser, prefix="global_")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = _load(module_name)
        # "resolve": a command module may declare -c itself; its declaration then wins.
        p = sub.add_parser(name, help=module.HELP, description=module.HELP, conflict_handler="resolve")
        p.set_defaults(_module=module_name)
        _add_common_options(p)
        module.add_arguments(p)
    return parser


def _load(module_name: str) -> ModuleType:
    return importlib.import_module(module_name)


def _merge_global_options(args: argparse.Namespace) -> argparse.Namespace:
    for dest, global_dest in GLOBAL_OPTIONS:
        given = getattr(args, dest, None)
        fallback = None if dest == "config" else False
        setattr(args, dest, given or getattr(args, global_dest, None) or fallback)
        if hasattr(args, global_dest):
            delattr(args, global_dest)
    return args


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse, run `run` when no command is named, and merge the options given before the name."""
    parser = build_parser()
    arguments = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(arguments)
    if args.command is None:
        args = parser.parse_args([*arguments, DEFAULT_COMMAND])
    return _merge_global_options(args)


def main(argv: Sequence[str] | None = None, *, configure_output: bool | None = None) -> int:
    """The program. `configure_output` (default: when argv is None, i.e. run as `omost-bot`)
    installs the process-wide logging; code that calls main() with arguments keeps its own."""
    args = parse_args(argv)
    module = _load(args._module)
    if configure_output if configure_output is not None else argv is None:
        from bot.logs import configure_logging

        # The one place output is configured (bot/redact.py's filter goes on this handler too).
        configure_logging(
            verbose=args.verbose, debug=args.debug, library_bars=getattr(module, "LIBRARY_PROGRESS", False)
        )
    try:
        return int(module.run(args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `omost-bot preview x --json | head`
        sys.stderr.close()
        return 0
    except SystemExit as e:
        if isinstance(e.code, str):  # a message (a missing optional extra): one line, exit 2
            return _one_line(e.code, e, args.debug, status=2)
        raise
    except Exception as e:
        return _report(e, args.debug)


def _report(error: Exception, debug: bool) -> int:
    """One line for a failure: exit 2 for what the operator fixes, 1 for the rest."""
    from bot.config import ConfigError
    from bot.logs import one_line
    from bot.operator_errors import OperatorError

    if isinstance(error, OperatorError | ConfigError):
        return _one_line(str(error), error, debug, status=2)
    hint = "" if debug else " (run again with --debug for the traceback)"
    return _one_line(f"{one_line(error)}{hint}", error, debug, status=1)


def _one_line(message: str, error: BaseException, debug: bool, *, status: int) -> int:
    if debug:
        traceback.print_exception(error, file=sys.stderr)
    print(f"error: {message}", file=sys.stderr)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
