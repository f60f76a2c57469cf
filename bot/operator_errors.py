"""Start-up failures an operator fixes, turned into one line that names what to fix.

The bot's start (bot/app.py, the adapters, the store) raises whatever its libraries raise: a
python-telegram-bot InvalidToken, a discord.py LoginFailure, sqlite3's "file is not a database".
The CLI wraps each start in `operator_failures(config)`, which recognises those by type and
raises `OperatorError` with a message written for the operator (the file and key to change, the
variable to export, the portal page to visit); bot/cli.py prints it once and exits 2. Anything
not recognised passes through untouched, so a real bug keeps its traceback (under --debug).

    OperatorError        one line for the operator; exit status 2

Messages never contain a secret: a token that a library put in its text is not copied, and the
configured secret values are masked in whatever detail is kept.

Knows the config and the libraries' exception types (each imported only when installed); nothing
of chats, models or the engine.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

from adapters.base import PlatformStartError
from bot.config import Config, ConfigError


class OperatorError(Exception):
    """A failure the operator fixes; str(e) is one line saying what to fix."""


@contextlib.contextmanager
def operator_failures(config: Config) -> Iterator[None]:
    """Re-raise the recognised start-up failures inside the block as OperatorError."""
    try:
        yield
    except OperatorError:
        raise
    except Exception as error:
        message = explain(error, config)
        if message is None:
            raise
        raise OperatorError(message) from error


def explain(error: BaseException, config: Config) -> str | None:
    """The operator's one line for `error`, or None when it is not a known start-up failure."""
    if isinstance(error, BaseExceptionGroup):  # a TaskGroup's: explain the first known failure
        for inner in error.exceptions:
            message = explain(inner, config)
            if message is not None:
                return message
        return None
    for explainer in _EXPLAINERS:
        message = explainer(error, config)
        if message is not None:
            return _mask_secrets(message, config)
    return None


def _detail(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _mask_secrets(text: str, config: Config) -> str:
    for key in ("telegram.token_env", "discord.token_env", "llm.api_key_env"):
        with contextlib.suppress(ConfigError, KeyError):
            if config.is_secret_set(key):
                secret = config.read_secret(key)
                text = text.replace(secret, "***")
    return text


def _config_error(error: BaseException, config: Config) -> str | None:
    # A secret read at start (the token variable unset) is a ConfigError too: already one line
    # per problem naming the file, the key and the variable.
    return str(error) if isinstance(error, ConfigError) else None


def _telegram(error: BaseException, config: Config) -> str | None:
    try:
        from telegram import error as tg
    except ImportError:
        return None
    if not isinstance(error, tg.TelegramError):
        return None
    env = config.telegram.token_env
    where = f"telegram.base_url in {config.source}"
    if isinstance(error, tg.InvalidToken):  # its own text repeats the token: never copied
        return (
            f"Telegram rejected the bot token in ${env}: copy it again from @BotFather "
            "(/mybots -> your bot -> API Token) and export it"
        )
    if isinstance(error, tg.Conflict):
        return (
            "another process is already receiving this Telegram bot's updates (Conflict): stop it, "
            "or give this bot its own token from @BotFather"
        )
    if isinstance(error, tg.EndPointNotFound):
        return f"the Telegram Bot API at {config.telegram.base_url} answered 'not found': check {where}"
    if isinstance(error, tg.NetworkError):  # includes TimedOut
        return (
            f"cannot reach the Telegram Bot API at {config.telegram.base_url} ({_detail(error)}): "
            f"check this machine's network or proxy, or {where}"
        )
    return f"Telegram refused to start the bot ({type(error).__name__}: {_detail(error)})"


def _discord(error: BaseException, config: Config) -> str | None:
    if not config.discord.enabled:
        return None
    try:
        import aiohttp
        import discord
    except ImportError:
        return None
    env = config.discord.token_env
    if isinstance(error, discord.LoginFailure):
        return (
            f"Discord rejected the bot token in ${env}: reset it on the developer portal "
            "(Applications -> your app -> Bot -> Reset Token) and export the new one"
        )
    if isinstance(error, discord.PrivilegedIntentsRequired):
        return (
            "Discord refused the Message Content intent: enable it on the developer portal "
            "(your app -> Bot -> Privileged Gateway Intents), see docs/discord.md"
        )
    if isinstance(error, discord.HTTPException):
        return (
            f"Discord refused a start-up call ({error.status}: {_detail(error)}): check the bot was "
            "invited with the bot and applications.commands scopes (docs/discord.md)"
        )
    if isinstance(error, aiohttp.ClientError | discord.GatewayNotFound | discord.ConnectionClosed):
        return f"cannot reach Discord ({_detail(error)}): check this machine's network or proxy"
    if isinstance(error, PlatformStartError) and error.platform == "discord":
        return f"{_detail(error)}: check this machine's network, or Discord's status page"
    return None


def _database(error: BaseException, config: Config) -> str | None:
    from bot.store import StoreError

    database = config.data.database
    fix = f"or point data.dir in {config.source} at another folder"
    if isinstance(error, sqlite3.OperationalError):
        text = str(error)
        if "locked" in text:
            return f"the database {database} is locked: another omost-bot is probably running on data.dir"
        if "unable to open" in text:
            return f"cannot open the database {database} ({text}): make its folder writable, {fix}"
    if isinstance(error, sqlite3.DatabaseError):  # "file is not a database", "malformed"
        return (
            f"the database {database} cannot be read ({_detail(error)}): move the file away to start "
            f"with an empty one (or restore a backup), {fix}"
        )
    if isinstance(error, StoreError):
        return f"the database {database} cannot be used: {_detail(error)}"
    return None


def _data_dir(error: BaseException, config: Config) -> str | None:
    if not isinstance(error, OSError) or not error.filename:
        return None
    data_dir = config.data.dir.resolve()
    path = Path(str(error.filename)).resolve()
    if path != data_dir and data_dir not in path.parents and path not in data_dir.parents:
        return None
    reason = error.strerror or _detail(error)
    return (
        f"cannot use the data folder {config.data.dir} ({reason}: {error.filename}): "
        f"make it writable, or set data.dir in {config.source}"
    )


_EXPLAINERS: tuple[Callable[[BaseException, Config], str | None], ...] = (
    _config_error,
    _telegram,
    _discord,
    _database,
    _data_dir,
)
