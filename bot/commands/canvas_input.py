"""Reading a canvas for the commands that take one (preview, render), and checking where they
write before they do any work.

FILE is a model answer, bare canvas code, '-' for stdin, or one of the bot's own PNGs: its canvas
comes from the PNG's text chunks (omost_engine/render/metadata.py's reader; pixels never matter).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from omost_engine.canvas import Canvas

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class BadInput(Exception):
    """FILE could not be read or holds no valid canvas, or the output cannot be written; the
    message is printed, exit status 2."""


def read_input(name: str) -> str:
    """The text of FILE, or stdin for '-'."""
    try:
        return sys.stdin.read() if name == "-" else Path(name).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise BadInput(f"error: cannot read {name}: {e}") from None


def _is_png(name: str) -> bool:
    if name == "-":
        return False
    try:
        with Path(name).open("rb") as f:
            return f.read(len(PNG_SIGNATURE)) == PNG_SIGNATURE
    except OSError:
        return False  # read_input reports it


def read_png_canvas(name: str) -> Canvas:
    """The canvas an omost-bot PNG carries; BadInput when it carries none or a broken one."""
    from omost_engine.render.metadata import read_png_metadata

    try:
        restored = read_png_metadata(Path(name))
    except Exception as e:  # the reader's refusals (bad canvas, oversized or damaged file)
        raise BadInput(f"error: {name}: cannot read a canvas from this PNG: {e}") from None
    if restored is None:
        raise BadInput(
            f"error: {name} is a PNG without an omost-bot canvas in it (only pictures the bot or "
            "`omost-bot render` made carry one)"
        )
    return restored.canvas


def read_canvas(name: str) -> Canvas:
    """The canvas in FILE (a whole model answer, bare code or our PNG); BadInput with the
    parser's line."""
    from omost_engine.canvas import CanvasError
    from omost_engine.canvas_code import parse

    if _is_png(name):
        return read_png_canvas(name)
    text = read_input(name)
    try:
        return parse(text)
    except CanvasError as e:
        raise BadInput(f"error: {name}: {e}") from None


def check_output(path: Path, option: str = "-o") -> None:
    """Raise BadInput unless a PNG can be written at `path`: checked before any work is done."""
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise BadInput(f"error: {option} {path} is a folder; give a file name such as {path / 'out.png'}")
    if not folder.is_dir():
        raise BadInput(f"error: {option} {path}: the folder {folder} does not exist (create it first)")
    if not os.access(folder, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise BadInput(f"error: {option} {path}: cannot write there (permission denied)")
