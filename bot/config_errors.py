"""How a bad config.toml is reported: `ConfigError` (every problem, each naming the file, the key
and what was expected) and the translation of TOML and pydantic errors into those words.

bot/config.py raises them; nothing here knows the sections themselves.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel


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



# --- translating errors ---------------------------------------------------------------------------

_AT_LINE = re.compile(r"\s*\(at line (\d+), column (\d+)\)\s*$")


def syntax_problem(message: str, text: str) -> ConfigProblem:
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


def problem_from(err: Mapping[str, Any], root: type[BaseModel]) -> ConfigProblem:
    """One pydantic error as a problem; `root` is the config's model (for the keys an unknown one
    may have meant)."""
    loc: list[int | str] = list(err["loc"])
    kind: str = err["type"]
    ctx: Mapping[str, Any] = err.get("ctx") or {}
    value = err.get("input")
    secret_key = bool(loc) and str(loc[-1]).endswith("_env")

    if kind == "extra_forbidden":
        return ConfigProblem(_dotted(loc), _unknown_key_message(loc, root))
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


def _unknown_key_message(loc: Sequence[int | str], root: type[BaseModel]) -> str:
    model: type[BaseModel] = root
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
