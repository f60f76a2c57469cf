"""config.toml -> typed, validated settings.

Owns the shape of the operator's configuration file, its defaults, its validation and the wording
of its errors, and the reading of secrets. Secrets never live in the file: it names environment
variables (`token_env = "TELEGRAM_BOT_TOKEN"`) and `Config.read_secret` reads them when an adapter
starts, so a config file can be shared or committed without leaking anything.

Every key is validated strictly (TOML is typed, so `width = "896"` is a mistake worth reporting,
and an unknown key is most likely a typo). Every error names the file and the dotted key
(`render.width`) and says what was expected; a TOML syntax error names the line.

It must not know about chats, models, GPUs or the store: the composition root (bot/app.py) hands
each section to the code that needs it.

Errors:

    ConfigError          the file is unreadable, not TOML, or invalid; or a named secret is unset
"""

from __future__ import annotations

import difflib
import math
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from omost_engine.render.base import (
    CFG_RANGE,
    HIRES_DENOISE_RANGE,
    HIRES_SCALE_RANGE,
    HIRES_STEPS_RANGE,
    MAX_SIZE,
    MAX_STEPS,
    MIN_SIZE,
)

DEFAULT_CONFIG_FILE = Path("config.toml")
"""What `load_config(None)` reads when it exists in the current directory."""

DEFAULT_NEGATIVE_PROMPT = "lowres, bad anatomy, bad hands, cropped, worst quality"
"""SPEC 5.7."""

DATABASE_FILE = "omost-bot.sqlite3"
DEFAULT_RENDER_MODELS = {
    "sdxl": "SG161222/RealVisXL_V4.0",
    "flux2-klein": "black-forest-labs/FLUX.2-klein-4B",
}
"""What `[render] model` is when the config leaves it out, by `family` ("auto" reads as SDXL's)."""

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


# --- errors -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong with a config: where (a dotted key, or "line 3, column 9") and what."""

    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.key}: {self.message}" if self.key else self.message


class ConfigError(Exception):
    """The configuration cannot be used. str(e) is written for the operator, one problem a line."""

    def __init__(self, source: str, problems: Sequence[ConfigProblem]) -> None:
        self.source = source
        self.problems = tuple(problems)
        lines = [f"{source}: {p}" for p in self.problems]
        super().__init__("\n".join(lines))


# --- field types ------------------------------------------------------------------------------


def _platform_id(value: object) -> str:
    """A user or chat id: Telegram and Discord ids are integers; strings allow "telegram:123"."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise PydanticCustomError("config_id", 'expected an id (an integer, or a string like "telegram:123")')
    text = str(value).strip()
    if not text:
        raise PydanticCustomError("config_id", "expected an id, got an empty string")
    return text


PlatformId = Annotated[str, BeforeValidator(_platform_id)]


def _env_name(value: object) -> object:
    """An environment variable's NAME. Catches the common slip of pasting the secret itself."""
    if isinstance(value, str) and not _ENV_NAME.fullmatch(value):
        # Never echo the value: it may well be the token.
        raise PydanticCustomError(
            "config_env_name",
            "expected the NAME of an environment variable (letters, digits and _, like "
            "TELEGRAM_BOT_TOKEN), not the secret itself",
        )
    return value


EnvName = Annotated[str, BeforeValidator(_env_name)]


def _device(value: object) -> object:
    if isinstance(value, str) and not _DEVICE.fullmatch(value):
        raise PydanticCustomError("config_device", 'expected "auto", "cpu", "mps", "cuda" or "cuda:N"')
    return value


Device = Annotated[str, BeforeValidator(_device)]


def _http_url(value: object) -> object:
    if isinstance(value, str) and not re.match(r"https?://[^\s/]+", value):
        raise PydanticCustomError("config_url", "expected an http:// or https:// URL")
    return value


HttpUrl = Annotated[str, BeforeValidator(_http_url)]


def _multiple_of_64(value: int) -> int:
    if value % 64:
        lower, upper = value // 64 * 64, (value // 64 + 1) * 64
        hint = f"{lower} or {upper}" if lower >= 64 else f"{upper}"
        raise PydanticCustomError("config_multiple", "must be a multiple of 64 (try {hint})", {"hint": hint})
    return value


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise PydanticCustomError("config_finite", "must be a finite number")
    return value


class _Section(BaseModel):
    # strict: TOML values are typed, so a string where a number belongs is a mistake to report.
    # forbid: an unknown key is almost always a typo of a known one.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


# --- sections ---------------------------------------------------------------------------------


class DataConfig(_Section):
    dir: Annotated[Path, Field(strict=False)] = Path("data")
    """Where the database and the images live. Relative paths are relative to the config file."""

    @property
    def database(self) -> Path:
        """The SQLite file; the store keeps images beside it, under images/."""
        return self.dir / DATABASE_FILE


class LLMConfig(_Section):
    backend: Literal["local", "openai"] = "local"
    model: str = "lllyasviel/omost-llama-3-8b-4bits"
    base_url: HttpUrl | None = None
    api_key_env: EnvName | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] = 0.6
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] = 0.9
    max_new_tokens: Annotated[int, Field(ge=1, le=32768)] = 4096
    quantize: Literal["none", "4bit", "8bit", "auto"] = "auto"
    device: Device = "auto"
    idle_timeout_s: Annotated[float, Field(gt=0)] = 60.0
    """Remote server only: the longest wait for the answer to start, and then for each line of it."""
    total_timeout_s: Annotated[float, Field(gt=0)] = 600.0
    """Remote server only: the longest one answer may take, retries included."""
    # Issue 11: the server's dialect (where the grammar goes) and whether decoding is constrained.
    server: Literal["auto", "vllm", "sglang", "llama.cpp", "tgi", "ollama", "generic"] = "auto"
    constrain: Literal["auto", "off"] = "auto"

    _finite_numbers = field_validator("temperature", "top_p", "idle_timeout_s", "total_timeout_s")(_finite)

    @field_validator("model")
    @classmethod
    def _model_named(cls, value: str) -> str:
        if not value.strip():
            raise PydanticCustomError("config_empty", "must name a model (a hub id or a path)")
        return value

    @model_validator(mode="after")
    def _remote_needs_url(self) -> LLMConfig:
        if self.backend == "openai" and not self.base_url:
            raise PydanticCustomError(
                "config_key",
                'is required when backend = "openai" (e.g. "http://127.0.0.1:8000/v1")',
                {"key": "base_url"},
            )
        return self


class RenderConfig(_Section):
    family: Literal["auto", "sdxl", "flux2-klein"] = "auto"  # auto: the folder's model_index.json
    model: str = DEFAULT_RENDER_MODELS["sdxl"]  # unset: the family's default (DEFAULT_RENDER_MODELS)
    # the renderer's own limits (omost_engine.render.base), so the config, the chat's /settings
    # and the renderer agree on what is allowed
    width: Annotated[int, Field(ge=MIN_SIZE, le=MAX_SIZE)] = 896
    height: Annotated[int, Field(ge=MIN_SIZE, le=MAX_SIZE)] = 1152
    steps: Annotated[int, Field(ge=1, le=MAX_STEPS)] = 25
    cfg: Annotated[float, Field(ge=CFG_RANGE[0], le=CFG_RANGE[1])] = 5.0
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT
    hires_scale: Annotated[float, Field(ge=HIRES_SCALE_RANGE[0], le=HIRES_SCALE_RANGE[1])] = 1.0
    # Omost's high-resolution fix settings and ranges (its app's sliders): the last `hires_steps`
    # of a schedule of hires_steps / hires_denoise steps.
    hires_steps: Annotated[int, Field(ge=HIRES_STEPS_RANGE[0], le=HIRES_STEPS_RANGE[1])] = 20
    hires_denoise: Annotated[float, Field(ge=HIRES_DENOISE_RANGE[0], le=HIRES_DENOISE_RANGE[1])] = 0.4
    # SPEC 5.6: "omost" (its un-projected pooled embedding: Omost's picture) or "sdxl" (standard).
    pooled: Literal["omost", "sdxl"] = "omost"
    memory: Literal["auto", "resident", "offload"] = "auto"
    quantize: Literal["none", "4bit"] = "none"  # flux2-klein: NF4 transformer + text encoder
    device: Device = "auto"

    _sizes = field_validator("width", "height")(_multiple_of_64)
    _finite_floats = field_validator("cfg", "hires_scale", "hires_denoise")(_finite)

    @model_validator(mode="after")
    def _quantize_needs_flux(self) -> RenderConfig:
        if self.quantize != "none" and self.family == "sdxl":
            raise PydanticCustomError("config_key", 'needs family = "flux2-klein"', {"key": "quantize"})
        return self

    @model_validator(mode="before")
    @classmethod
    def _family_default_model(cls, data: Any) -> Any:
        if isinstance(data, dict) and "model" not in data and data.get("family") == "flux2-klein":
            return {**data, "model": DEFAULT_RENDER_MODELS["flux2-klein"]}
        return data

    @field_validator("model")
    @classmethod
    def _model_named(cls, value: str) -> str:
        if not value.strip():
            raise PydanticCustomError(
                "config_empty", "must name a model (a hub id, a folder or a .safetensors file)"
            )
        return value


class QueueConfig(_Section):
    max_per_user: Annotated[int, Field(ge=1)] = 3
    max_total: Annotated[int, Field(ge=1)] = 100
    job_timeout_s: Annotated[float, Field(gt=0)] = 900.0
    swap_models: Literal["auto", "always", "never"] = "auto"
    # The render cluster (docs/scaling.md): "redis" sends jobs to `omost-bot worker` processes.
    backend: Literal["local", "redis"] = "local"
    redis_url_env: EnvName | None = None
    redis_url: str | None = None
    prefix: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")] = "omost"
    lease_s: Annotated[float, Field(gt=0)] = 15.0
    heartbeat_s: Annotated[float, Field(gt=0)] = 2.0
    max_result_mib: Annotated[float, Field(gt=0, le=256)] = 20.0
    result_ttl_s: Annotated[int, Field(ge=60)] = 3600

    _finite_timeout = field_validator("job_timeout_s", "lease_s", "heartbeat_s")(_finite)

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"(redis|rediss|unix)://", value):
            raise PydanticCustomError("config_url", "expected a redis://, rediss:// or unix:// URL")
        if value is not None and re.match(r"\w+://[^/@]*:[^/@]*@", value):
            # Never echo it: a password belongs in the environment, not in a shareable file.
            raise PydanticCustomError("config_secret", "carries a password: put the URL in redis_url_env")
        return value

    @model_validator(mode="after")
    def _cluster_consistent(self) -> QueueConfig:
        if self.backend == "redis" and not (self.redis_url_env or self.redis_url):
            raise PydanticCustomError(
                "config_key",
                'is "redis", which needs queue.redis_url_env or queue.redis_url',
                {"key": "backend"},
            )
        if self.lease_s < 2 * self.heartbeat_s:
            raise PydanticCustomError(
                "config_key", "must be at least twice queue.heartbeat_s", {"key": "lease_s"}
            )
        return self

    @model_validator(mode="after")
    def _caps_consistent(self) -> QueueConfig:
        if self.max_per_user > self.max_total:
            raise PydanticCustomError(
                "config_key",
                "must not exceed queue.max_total ({total})",
                {"key": "max_per_user", "total": self.max_total},
            )
        return self


class AccessConfig(_Section):
    allowed_users: list[PlatformId] = []
    allowed_chats: list[PlatformId] = []
    denied_users: list[PlatformId] = []
    denied_chats: list[PlatformId] = []
    admins: list[PlatformId] = []
    blocked_words: list[str] = []
    rate_limit_per_minute: Annotated[int, Field(ge=0)] = 10

    @field_validator("blocked_words")
    @classmethod
    def _words_have_letters(cls, value: list[str]) -> list[str]:
        for i, word in enumerate(value):
            if not any(ch.isalnum() for ch in word):
                raise PydanticCustomError(
                    "config_key",
                    "a blocked word needs at least one letter or digit",
                    {"key": f"[{i}]"},
                )
        return value


class TelegramConfig(_Section):
    enabled: bool = False
    token_env: EnvName = "TELEGRAM_BOT_TOKEN"
    base_url: HttpUrl = "https://api.telegram.org"
    """The Bot API server root; the adapter appends /bot<token> and /file/bot<token>."""


class DiscordConfig(_Section):
    enabled: bool = False
    token_env: EnvName = "DISCORD_BOT_TOKEN"
    guild_ids: list[Annotated[int, Field(ge=0)]] = []
    """Guilds to register /omost in at once; empty registers it globally (can take an hour)."""
    create_threads: bool = True


SECRET_KEYS: dict[str, str] = {
    "llm.api_key_env": "the API key of the OpenAI-compatible server",
    "telegram.token_env": "the Telegram bot token from @BotFather",
    "discord.token_env": "the Discord bot token from the developer portal",
    "queue.redis_url_env": "the render cluster's Redis URL (redis://:PASSWORD@host:6379/0)",
}
"""The *_env keys and what the variable they name should hold."""


class Config(_Section):
    data: DataConfig = DataConfig()
    llm: LLMConfig = LLMConfig()
    render: RenderConfig = RenderConfig()
    queue: QueueConfig = QueueConfig()
    access: AccessConfig = AccessConfig()
    telegram: TelegramConfig = TelegramConfig()
    discord: DiscordConfig = DiscordConfig()

    _source: str = PrivateAttr(default="defaults")

    @property
    def source(self) -> str:
        """The file this config was read from, or "defaults"."""
        return self._source

    def secret_env(self, key: str) -> str | None:
        """The environment variable named by a secret key such as "telegram.token_env"."""
        if key not in SECRET_KEYS:
            raise KeyError(f"{key!r} is not a secret key; expected one of {', '.join(SECRET_KEYS)}")
        section, field = key.split(".")
        name: str | None = getattr(getattr(self, section), field)
        return name

    def is_secret_set(self, key: str, environ: Mapping[str, str] | None = None) -> bool:
        env = os.environ if environ is None else environ
        name = self.secret_env(key)
        return bool(name and env.get(name, "").strip())

    def read_secret(self, key: str, environ: Mapping[str, str] | None = None) -> str:
        """Read the secret whose variable `key` names; a ConfigError naming the variable if unset."""
        env = os.environ if environ is None else environ
        name = self.secret_env(key)
        if name is None:
            raise ConfigError(
                self._source,
                [ConfigProblem(key, f"is not set, so there is no {SECRET_KEYS[key]} to read")],
            )
        value = env.get(name, "").strip()
        if not value:
            state = "is empty" if name in env else "is not set"
            raise ConfigError(
                self._source,
                [
                    ConfigProblem(
                        key,
                        f"the environment variable {name} {state}; export it with {SECRET_KEYS[key]}",
                    )
                ],
            )
        return value

    def telegram_token(self, environ: Mapping[str, str] | None = None) -> str:
        return self.read_secret("telegram.token_env", environ)

    def discord_token(self, environ: Mapping[str, str] | None = None) -> str:
        return self.read_secret("discord.token_env", environ)

    def llm_api_key(self, environ: Mapping[str, str] | None = None) -> str | None:
        """The OpenAI-compatible server's key, or None when no api_key_env is configured."""
        if self.llm.api_key_env is None:
            return None
        return self.read_secret("llm.api_key_env", environ)


# --- loading ----------------------------------------------------------------------------------


def load_config(path: Path | str | None = None) -> Config:
    """Read and validate a config file.

    With no path, ./config.toml is read when it exists, else every default is used. Relative
    paths inside the file (data.dir) are taken relative to the file's folder.
    """
    if path is None:
        if not DEFAULT_CONFIG_FILE.is_file():
            config = Config()
            return config.model_copy(update={"data": DataConfig(dir=Path.cwd() / config.data.dir)})
        path = DEFAULT_CONFIG_FILE
    path = Path(path)
    source = str(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(source, [ConfigProblem("", "no such file")]) from None
    except OSError as e:
        raise ConfigError(source, [ConfigProblem("", f"cannot be read: {e.strerror}")]) from None
    return parse_config(raw, source=source, base_dir=path.resolve().parent)


def parse_config(raw: bytes | str, *, source: str = "<config>", base_dir: Path | None = None) -> Config:
    """Validate TOML text. `source` names it in errors; `base_dir` anchors relative paths."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError as e:
        raise ConfigError(
            source, [ConfigProblem("", f"is not UTF-8 text (bad byte at offset {e.start})")]
        ) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(source, [_syntax_problem(str(e), text)]) from None
    try:
        config = Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(source, [_problem(err) for err in e.errors()]) from None
    directory = config.data.dir.expanduser()
    if base_dir is not None and not directory.is_absolute():
        directory = base_dir / directory
    config = config.model_copy(update={"data": DataConfig(dir=directory)})
    config._source = source
    return config


_AT_LINE = re.compile(r"\s*\(at line (\d+), column (\d+)\)\s*$")


def _syntax_problem(message: str, text: str) -> ConfigProblem:
    m = _AT_LINE.search(message)
    if m is None:
        return ConfigProblem("", f"is not valid TOML: {message}")
    line, column = int(m.group(1)), int(m.group(2))
    reason = message[: m.start()]
    lines = text.splitlines()
    shown = f" in {lines[line - 1].strip()!r}" if 0 < line <= len(lines) and lines[line - 1].strip() else ""
    return ConfigProblem(f"line {line}, column {column}", f"invalid TOML: {reason}{shown}")


def _dotted(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.startswith("["):
            out += part
        else:
            out += f".{part}" if out else part
    return out


def _describe(value: Any) -> str:
    """How a TOML value reads to the operator: its kind, and itself when short."""
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, int):
        return f"{value} (an integer)"
    if isinstance(value, float):
        return f"{value} (a number)"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"{shown!r} (a string)"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__


_EXPECTED = {
    "int_type": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "bool_type": "true or false",
    "string_type": "a string in quotes",
    "list_type": "a list like [1, 2]",
    "model_type": "a table (a [section])",
    "model_attributes_type": "a table (a [section])",
    "path_type": "a path string",
    "dict_type": "a table",
}

_BOUNDS = {
    "greater_than": "greater than",
    "greater_than_equal": "at least",
    "less_than": "less than",
    "less_than_equal": "at most",
}


def _problem(err: Mapping[str, Any]) -> ConfigProblem:
    loc: list[int | str] = list(err["loc"])
    kind: str = err["type"]
    ctx: Mapping[str, Any] = err.get("ctx") or {}
    value = err.get("input")
    secret_key = bool(loc) and str(loc[-1]).endswith("_env")

    if kind == "extra_forbidden":
        return ConfigProblem(_dotted(loc), _unknown_key_message(loc))
    if kind in _EXPECTED:
        got = "" if secret_key else f", got {_describe(value)}"
        return ConfigProblem(_dotted(loc), f"expected {_EXPECTED[kind]}{got}")
    if kind == "literal_error":
        return ConfigProblem(_dotted(loc), f"expected {ctx['expected']}, got {_describe(value)}")
    if kind in _BOUNDS:
        bound = next(v for k, v in ctx.items() if k in {"gt", "ge", "lt", "le"})
        return ConfigProblem(_dotted(loc), f"must be {_BOUNDS[kind]} {bound}, got {value}")
    if kind == "config_key":
        loc.append(str(ctx["key"]))
        return ConfigProblem(_dotted(loc), str(err["msg"]))
    if kind.startswith("config_"):
        quiet = secret_key or kind in {"config_env_name", "config_secret"}  # never echo a secret
        got = "" if quiet else f", got {_describe(value)}"
        return ConfigProblem(_dotted(loc), f"{err['msg']}{got}")
    return ConfigProblem(_dotted(loc), str(err["msg"]))


def _unknown_key_message(loc: Sequence[int | str]) -> str:
    model: type[BaseModel] = Config
    for part in loc[:-1]:
        annotation = model.model_fields[str(part)].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            break
        model = annotation
    known = list(model.model_fields)
    close = difflib.get_close_matches(str(loc[-1]), known, n=1, cutoff=0.6)
    where = "section" if len(loc) == 1 else "key"
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"unknown {where}; {hint}expected one of: {', '.join(known)}"
