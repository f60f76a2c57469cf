"""Reading a canvas from FILE or stdin for the commands that take one (preview, render)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from omost_engine.canvas import Canvas


class BadInput(Exception):
    """FILE could not be read or holds no valid canvas; the message is printed, exit status 2."""


def read_input(name: str) -> str:
    """The text of FILE, or stdin for '-'."""
    try:
        return sys.stdin.read() if name == "-" else Path(name).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise BadInput(f"error: cannot read {name}: {e}") from None


def read_canvas(name: str) -> Canvas:
    """The canvas in FILE (a whole model answer or bare code); BadInput with the parser's line."""
    from omost_engine.canvas import CanvasError
    from omost_engine.canvas_code import parse

    text = read_input(name)
    try:
        return parse(text)
    except CanvasError as e:
        raise BadInput(f"error: {name}: {e}") from None
