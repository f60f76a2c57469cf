"""No secret in any log line or traceback: the redacting filter with the real python-telegram-bot.

The Telegram token travels in every Bot API URL, which httpx logs at INFO; a rejected token is
quoted in python-telegram-bot's InvalidToken message. Both are checked against the fake Bot API
with httpx at DEBUG: a whole turn, and `omost-bot run` started with a token the server rejects.
"""

from __future__ import annotations

import asyncio
import io
import logging
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from bot.cli import main
from bot.config import Config
from bot.redact import QUIET_LOGGERS, RedactingFilter, Redactor, install_log_redaction, secrets_from_config
from tests.fakes.telegram_server import FakeTelegram
from tests.test_telegram import telegram_bot

REAL_SHAPED = "7012345678:AAH3kd9sL0pQ_rT5vWx-YZ1234567890abcd"  # what @BotFather hands out
OTHER = "7012345678:AAwrongwrongwrongwrongwrongwrong12345"
API_KEY = "sk-live-abcdefghijklmnop0123"
TOKEN_ENV = "OMOST_TEST_TELEGRAM_TOKEN"


@pytest.fixture
def log_output() -> Iterator[io.StringIO]:
    """Everything logged at DEBUG (httpx, httpcore, telegram too) to a root handler, after
    install_log_redaction as `omost-bot run` calls it; all logging state restored afterwards."""
    root = logging.getLogger()
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    saved = (root.level, {n: logging.getLogger(n).level for n in QUIET_LOGGERS}, sys.excepthook)
    saved_thread_hook = threading.excepthook
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    install_log_redaction([REAL_SHAPED, API_KEY])
    for name in QUIET_LOGGERS:  # louder than the default, so every request URL is logged
        logging.getLogger(name).setLevel(logging.DEBUG)
    yield out
    root.removeHandler(handler)
    for h in root.handlers:
        for f in [f for f in h.filters if isinstance(f, RedactingFilter)]:
            h.removeFilter(f)
    root.setLevel(saved[0])
    for name, level in saved[1].items():
        logging.getLogger(name).setLevel(level)
    sys.excepthook = saved[2]
    threading.excepthook = saved_thread_hook


# --- the redactor ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        (
            f"POST https://api.telegram.org/bot{REAL_SHAPED}/getMe",
            "POST https://api.telegram.org/bot[redacted]/getMe",
        ),
        (
            "GET http://x/bot123:short/getUpdates",
            "GET http://x/bot[redacted]/getUpdates",
        ),  # any token in a Bot API URL
        (f"token {REAL_SHAPED.replace(':', '%3A')} in a query", "token [redacted] in a query"),  # URL-encoded
        ("Authorization: Bearer abc.def-ghi", "Authorization: Bearer [redacted]"),
        ("key sk-proj-AAAAAAAAAAAAAAAAAAAA", "key [redacted]"),
        ("Authorization: Bot " + "M" * 24 + "." + "a" * 6 + "." + "b" * 38, "Authorization: Bot [redacted]"),
        ("redis://default:hunter2secret@10.0.0.3:6379/0", "redis://default:[redacted]@10.0.0.3:6379/0"),
        (
            "a cat on a sofa, 3:45 pm, see https://example.com/a/b",
            "a cat on a sofa, 3:45 pm, see https://example.com/a/b",
        ),
        ("Bot started as @omost_bot", "Bot started as @omost_bot"),
    ],
)
def test_the_redactor(text: str, shown: str) -> None:
    assert Redactor([REAL_SHAPED, "short"])(text) == shown


def test_configured_secrets_are_read_from_the_env_vars_the_config_names() -> None:
    config = Config.model_validate(
        {"llm": {"api_key_env": "OMOST_TEST_KEY"}, "telegram": {"token_env": TOKEN_ENV}}
    )
    env = {"OMOST_TEST_KEY": API_KEY, TOKEN_ENV: REAL_SHAPED, "DISCORD_BOT_TOKEN": ""}
    assert sorted(secrets_from_config(config, env)) == sorted([API_KEY, REAL_SHAPED])


def test_messages_args_and_tracebacks_are_redacted(log_output: io.StringIO) -> None:
    log = logging.getLogger("omost_engine.test")
    log.info("calling %s with %r", f"https://api.telegram.org/bot{REAL_SHAPED}/sendPhoto", {"key": API_KEY})
    try:
        raise RuntimeError(f"The token `{REAL_SHAPED}` was rejected by the server.")
    except RuntimeError:
        log.exception("start-up failed")
    text = log_output.getvalue()
    assert REAL_SHAPED not in text and API_KEY not in text
    assert "bot[redacted]/sendPhoto" in text and "RuntimeError: The token `[redacted]` was rejected" in text
    assert "Traceback (most recent call last)" in text


def test_library_loggers_are_quiet_by_default() -> None:
    saved = {n: logging.getLogger(n).level for n in QUIET_LOGGERS}
    hooks = (sys.excepthook, threading.excepthook)
    try:
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.NOTSET)
        logging.getLogger("discord").setLevel(logging.INFO)  # chosen by the operator: kept
        install_log_redaction([])
        assert logging.getLogger("httpx").getEffectiveLevel() == logging.WARNING
        assert logging.getLogger("telegram.ext").getEffectiveLevel() == logging.WARNING
        assert logging.getLogger("discord").level == logging.INFO
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)
        sys.excepthook, threading.excepthook = hooks
        for h in logging.getLogger().handlers:
            for f in [f for f in h.filters if isinstance(f, RedactingFilter)]:
                h.removeFilter(f)


# --- the real python-telegram-bot ------------------------------------------------------------------


@pytest.fixture
async def tg_real_token(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeTelegram]:
    monkeypatch.setenv(TOKEN_ENV, REAL_SHAPED)
    async with FakeTelegram(token=REAL_SHAPED) as server:
        yield server


async def test_a_whole_telegram_turn_logs_no_token(
    tmp_path: Path, tg_real_token: FakeTelegram, log_output: io.StringIO
) -> None:
    tg = tg_real_token
    async with telegram_bot(tmp_path, tg) as bot:
        tg.user_message(1001, "a cat on a sofa")
        await bot.results_in(1001, 1)
    text = log_output.getvalue()
    requests = [line for line in text.splitlines() if line.startswith("INFO httpx: HTTP Request")]
    assert len(requests) >= 5 and all("/bot[redacted]/" in line for line in requests)
    assert REAL_SHAPED not in text and REAL_SHAPED.split(":")[1] not in text


@contextmanager
def fake_telegram_on_its_own_loop(token: str) -> Iterator[FakeTelegram]:
    """The fake Bot API on a background thread's event loop, so `omost-bot run` can own this one."""
    ready = threading.Event()
    holder: dict[str, Any] = {}
    loop = asyncio.new_event_loop()

    async def serve() -> None:
        async with FakeTelegram(token=token) as tg:
            holder["tg"], holder["stop"] = tg, asyncio.Event()
            ready.set()
            await holder["stop"].wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    assert ready.wait(10), "the fake Telegram did not start"
    try:
        yield holder["tg"]
    finally:
        loop.call_soon_threadsafe(holder["stop"].set)
        thread.join(10)
        loop.close()


def test_a_rejected_token_is_not_in_the_log_or_traceback_of_omost_bot_run(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    log_output: io.StringIO,
) -> None:
    # `omost-bot run` as the CLI runs it (its own event loop); the server knows another token.
    with fake_telegram_on_its_own_loop(REAL_SHAPED) as tg:
        path = tmp_path / "config.toml"
        path.write_text(
            f'[data]\ndir = "{tmp_path / "data"}"\n'
            f'[telegram]\nenabled = true\ntoken_env = "{TOKEN_ENV}"\nbase_url = "{tg.base_url}"\n'
        )
        monkeypatch.setenv(TOKEN_ENV, OTHER)
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.NOTSET)  # run.py's own defaults apply
        # --debug prints the traceback of python-telegram-bot's InvalidToken, which quotes the token
        assert main(["run", "-v", "--debug", "-c", str(path)]) == 2
    printed = capsys.readouterr().err
    assert "InvalidToken: The token `[redacted]` was rejected by the server." in printed
    assert "Traceback (most recent call last)" in printed
    logged = log_output.getvalue()
    assert OTHER not in printed + logged and OTHER.split(":")[1] not in printed + logged
    assert logging.getLogger("httpx").level == logging.WARNING  # quiet by default after run.py
