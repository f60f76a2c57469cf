"""Secrets out of the log: a redacting filter on the root logger's handlers, quieter libraries.

Owns what may reach a log line, a traceback or the terminal. `install_log_redaction(secrets)`
(called once logging is configured):

1. puts a `RedactingFilter` on every handler of the root logger. A filter on a handler sees the
   records of every logger that propagates to it (httpx, telegram, discord, ours), which a
   filter on a logger would not. It rewrites each record before any formatter sees it: message
   and args merged and redacted, the traceback formatted and redacted into `exc_text` (with
   `exc_info` cleared, so no formatter renders the raw one again), the stack too;
2. redacts uncaught exceptions the same way (sys.excepthook, threading.excepthook): a token the
   platform rejected is in the exception's message, and that traceback is not a log record;
3. sets the chatty libraries (httpx, httpcore, telegram, discord) to WARNING unless a level was
   set for them: httpx logs every request URL at INFO, and a Telegram URL carries the token.

What is redacted (`Redactor`): the configured secrets' exact values and their URL-encoded forms,
and whatever has a token's shape even if nobody configured it: a Telegram bot token
(`<digits>:<30+ characters>`, and anything after /bot<digits>: in a URL path), `Bearer ...`,
`Bot <long token>`, OpenAI-style `sk-...` keys, Discord's three-part tokens, and the password in a
URL (`redis://user:password@host`). `secrets_from_config(config)` reads the secret values the
config names (tokens, the LLM API key) from the environment.

Knows logging and the config's secret keys; nothing of chats or the engine.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import traceback
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from urllib.parse import quote, quote_plus

from bot.config import SECRET_KEYS, Config

REDACTED = "[redacted]"
QUIET_LOGGERS = ("httpx", "httpcore", "telegram", "discord")
_SHORTEST_SECRET = 6  # shorter configured values would blank ordinary words in every line

# (pattern, replacement): token shapes, redacted whether or not the value was configured.
_SHAPES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"(/bot)\d+:[^/\s?#'\"]+"), r"\1" + REDACTED),  # Bot API URLs, any token after it
    (re.compile(r"\b\d{5,16}:[A-Za-z0-9_-]{30,}"), REDACTED),  # a Telegram token anywhere
    (re.compile(r"\b(Bearer)\s+[A-Za-z0-9._~+/=-]{6,}", re.IGNORECASE), r"\1 " + REDACTED),
    (re.compile(r"\b(Bot)\s+[A-Za-z0-9._-]{50,}"), r"\1 " + REDACTED),  # Discord's Authorization
    (re.compile(r"\bsk-[A-Za-z0-9_-]{16,}"), REDACTED),
    (re.compile(r"\b[A-Za-z0-9_-]{24,30}\.[A-Za-z0-9_-]{6}\.[A-Za-z0-9_-]{27,}"), REDACTED),
    (re.compile(r"(\b[a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@/\s]+@", re.IGNORECASE), r"\1" + REDACTED + "@"),
)


class Redactor:
    """Text -> the same text with the secrets and token-shaped strings replaced by [redacted]."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        forms: set[str] = set()
        for secret in secrets:
            value = (secret or "").strip()
            if len(value) >= _SHORTEST_SECRET:
                forms |= {value, quote(value, safe=""), quote_plus(value)}
        # Longest first, so a value that contains another is replaced whole.
        ordered = sorted(forms, key=len, reverse=True)
        self._secrets = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def __call__(self, text: str) -> str:
        if self._secrets is not None:
            text = self._secrets.sub(REDACTED, text)
        for pattern, replacement in _SHAPES:
            text = pattern.sub(replacement, text)
        return text


class RedactingFilter(logging.Filter):
    """Rewrites each record so that no handler can write a secret (see the module docstring)."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        redact = self.redactor
        try:
            message = record.getMessage()
        except Exception:  # bad format args: still log something, and still redacted
            message = f"{record.msg!r} % {record.args!r}"
        record.msg, record.args = redact(message), None
        if record.exc_info:
            text = record.exc_text or "".join(traceback.format_exception(*record.exc_info))
            record.exc_text, record.exc_info = redact(text.rstrip("\n")), None
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


class _RedactingExceptHook:
    """sys.excepthook: the traceback Python would print, redacted."""

    def __init__(self, redactor: Redactor) -> None:
        self.redactor = redactor

    def __call__(self, kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
        sys.stderr.write(self.redactor("".join(traceback.format_exception(kind, value, tb))))


class _RedactingThreadHook:
    """threading.excepthook: an exception that ended a thread, redacted."""

    def __init__(self, redactor: Redactor) -> None:
        self.redactor = redactor

    def __call__(self, args: threading.ExceptHookArgs) -> None:
        if args.exc_type is SystemExit:
            return
        name = args.thread.name if args.thread is not None else "?"
        text = "".join(traceback.format_exception(args.exc_type, args.exc_value, args.exc_traceback))
        sys.stderr.write(self.redactor(f"Exception in thread {name}:\n{text}"))


def install_log_redaction(secrets: Iterable[str]) -> None:
    """Redact `secrets` (and token shapes) from every log line, traceback and uncaught exception.

    Call after logging is configured (handlers added later are not covered). Calling it again
    replaces the secrets rather than stacking filters.
    """
    redactor = Redactor(secrets)
    # 1. Every root handler, in place or new.
    for handler in logging.getLogger().handlers:
        existing = [f for f in handler.filters if isinstance(f, RedactingFilter)]
        if existing:
            for f in existing:
                f.redactor = redactor
        else:
            handler.addFilter(RedactingFilter(redactor))
    # 2. Uncaught exceptions.
    hook: Callable[..., object] = sys.excepthook
    if isinstance(hook, _RedactingExceptHook):
        hook.redactor = redactor
    else:
        sys.excepthook = _RedactingExceptHook(redactor)
    thread_hook: Callable[..., object] = threading.excepthook
    if isinstance(thread_hook, _RedactingThreadHook):
        thread_hook.redactor = redactor
    else:
        threading.excepthook = _RedactingThreadHook(redactor)
    # 3. Quieter libraries, unless the operator chose their level.
    for name in QUIET_LOGGERS:
        library = logging.getLogger(name)
        if library.level == logging.NOTSET:
            library.setLevel(logging.WARNING)


def secrets_from_config(config: Config, environ: Mapping[str, str] | None = None) -> list[str]:
    """The values of the secrets the config names (tokens, API key) that are set in the environment."""
    env = os.environ if environ is None else environ
    values: list[str] = []
    for key in SECRET_KEYS:
        name = config.secret_env(key)
        if name and env.get(name, "").strip():
            values.append(env[name].strip())
    return values
