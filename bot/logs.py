"""What the `omost-bot` process prints besides its own output: log lines, library warnings, bars.

The one place where logging is configured (`configure_logging`, called once by bot/cli.py when it
runs as the program). By default the output is quiet:

- our own loggers (bot, adapters, omost_engine) at INFO, third-party loggers only from ERROR;
- a record's traceback shrinks to its last line ("ConnectError: All connection attempts failed");
- Python warnings (torchvision fallbacks, deprecations) go to the log, where they are dropped;
- transformers and diffusers are told to be quiet through their environment variables, and tqdm
  bars that libraries draw while loading weights are switched off (our own bars, such as the
  render command's, pass `disable=False` and stay).

`--verbose` keeps every logger at INFO, full tracebacks, the libraries' warnings and their bars;
`--debug` adds DEBUG records. The environment variables are only defaults: an operator who sets
TRANSFORMERS_VERBOSITY (etc.) keeps their value.

Knows the logging module and the libraries' switches; nothing of configs, chats or models.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TextIO

OUR_LOGGERS = ("bot", "adapters", "omost_engine", "omost-bot")

# Read by the libraries when they are first imported, which happens after configure_logging:
# every command imports them lazily (bot/cli.py).
QUIET_ENVIRONMENT = {
    "TRANSFORMERS_VERBOSITY": "error",  # torchvision fallbacks, "Token indices sequence length ..."
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "DIFFUSERS_VERBOSITY": "error",
    "DIFFUSERS_NO_ADVISORY_WARNINGS": "1",
    # tqdm's own default for `disable` (tqdm >= 4.66): the "Loading weights" and "Loading pipeline
    # components" bars. Downloads run as their own `omost-bot download` process, which keeps its bars.
    "TQDM_DISABLE": "1",
}


class _Handler(logging.StreamHandler[TextIO]):
    """Our one handler on the root logger; `quiet` remembers whether --verbose/--debug was off."""

    quiet = True


class _OursOrSerious(logging.Filter):
    """Passes our own records from the handler's level, other libraries' from `third_party_level`."""

    def __init__(self, third_party_level: int) -> None:
        super().__init__()
        self.third_party_level = third_party_level

    def filter(self, record: logging.LogRecord) -> bool:
        if is_ours(record.name):
            return True
        return record.levelno >= self.third_party_level


class _OneLineFormatter(logging.Formatter):
    """A record and, instead of its traceback, the exception's last line."""

    def formatException(self, ei: object) -> str:
        error = ei[1] if isinstance(ei, tuple) and len(ei) == 3 else None
        if isinstance(error, BaseException):
            return f"  ({one_line(error)}; run with --debug for the traceback)"
        return ""

    def formatStack(self, stack_info: str) -> str:
        return ""


def is_ours(logger_name: str) -> bool:
    return any(logger_name == n or logger_name.startswith(n + ".") for n in OUR_LOGGERS)


def one_line(error: BaseException) -> str:
    """`Type: message`, first line only: what an operator needs from an exception."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def configure_logging(
    *, verbose: bool = False, debug: bool = False, library_bars: bool = False, stream: TextIO | None = None
) -> None:
    """Install the process's one log handler (stderr) and quiet the libraries unless asked not to.
    `library_bars` keeps the libraries' progress bars (a download's bars are its output)."""
    quiet = not (verbose or debug)
    if quiet:
        for name, value in QUIET_ENVIRONMENT.items():
            if not (library_bars and name == "TQDM_DISABLE"):
                os.environ.setdefault(name, value)
    handler = _Handler(stream if stream is not None else sys.stderr)
    handler.quiet = quiet
    handler.setLevel(logging.DEBUG if debug else logging.INFO)
    handler.addFilter(_OursOrSerious(logging.ERROR if quiet else logging.DEBUG))
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    handler.setFormatter(_OneLineFormatter(fmt) if not debug else logging.Formatter(fmt))
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    # Python warnings become records of the "py.warnings" logger: dropped by the filter when quiet.
    logging.captureWarnings(True)


def quiet_for_terminal_chat() -> None:
    """For the terminal chat: the chat itself shows each turn's outcome, so our INFO and WARNING
    records would print every failure twice. Errors still show (one line each)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, _Handler) and handler.quiet:
            handler.setLevel(logging.ERROR)
