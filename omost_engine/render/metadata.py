"""PNG text chunks that let a rendered image be dropped back into a chat to continue from it.

`png_metadata()` gives the chunks (canvas code, seed, steps, CFG, size, model, negative prompt,
hires settings, pooled embedding, frame zoom); an edit render adds `omost:edit` (what was redrawn:
kind, boxes, margin, feather), `omost:edit_window` and `omost:edit_redrawn`. `encode_png()` writes
an image with them; `read_png_metadata()` restores the settings.

The reader treats the chunks as untrusted input: the canvas code only ever goes through
`omost_engine.canvas_code.parse` (data, never executed), numbers are parsed and range-checked one
by one, and a value that fails is left at its default and named in `ignored`. A PNG without our
canvas chunk gives None.

Knows PIL, RenderParams and the canvas parser; nothing of torch, pipelines or chats.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin

from omost_engine.canvas import Canvas
from omost_engine.canvas_code import parse
from omost_engine.render.base import POOLED_EMBEDDINGS, RenderParams

PREFIX = "omost:"
CANVAS_KEY = PREFIX + "canvas"
MODEL_KEY = PREFIX + "model"
FORMAT_KEY = PREFIX + "format"
FORMAT_VERSION = "1"

# RenderParams field -> (type, lowest, highest): what a restored value must satisfy.
_NUMBERS: dict[str, tuple[type, float, float]] = {
    "width": (int, 64, 8192),
    "height": (int, 64, 8192),
    "steps": (int, 1, 1000),
    "cfg": (float, 0.0, 100.0),
    "seed": (int, 0, 2**63 - 1),
    "hires_scale": (float, 1.0, 4.0),
    "hires_steps": (int, 1, 1000),
    "hires_denoise": (float, 0.0, 1.0),
    "frame_zoom": (float, 1.0, 8.0),
}
MAX_TEXT = 4000  # the negative prompt and model name; the canvas has the parser's own limit


@dataclass(frozen=True)
class RestoredRender:
    canvas: Canvas
    code: str
    params: RenderParams
    model: str | None
    ignored: tuple[str, ...] = ()
    """Chunks present but unusable (wrong type or out of range); their defaults were used."""


def png_metadata(code: str, params: RenderParams, model: str) -> dict[str, str]:
    """The text chunks for one render, keys prefixed with `omost:`."""
    chunks = {CANVAS_KEY: code, MODEL_KEY: model, FORMAT_KEY: FORMAT_VERSION}
    for f in fields(RenderParams):
        if f.name != "edit":  # an edit's parent image is not a setting; the renderer adds omost:edit
            chunks[PREFIX + f.name] = str(getattr(params, f.name))
    return chunks


def encode_png(image: Image.Image, metadata: dict[str, str]) -> bytes:
    info = PngImagePlugin.PngInfo()
    for key, value in metadata.items():
        # iTXt: UTF-8 (tEXt is Latin-1 only) and compressed; canvas code runs to ~10 kB.
        info.add_itxt(key, value, zip=len(value) > 256)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def save_png(image: Image.Image, path: Path, metadata: dict[str, str]) -> None:
    """Write atomically: a failed write leaves no half-written file at `path`."""
    data = encode_png(image, metadata)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_bytes(data)
    tmp.replace(path)


def _number(raw: str, kind: type, low: float, high: float) -> Any:
    value: float | int
    if kind is int:
        value = int(raw.strip())
    else:
        value = float(raw.strip())
        if not math.isfinite(value):
            raise ValueError(raw)
    if not low <= value <= high:
        raise ValueError(raw)
    return value


def read_png_metadata(source: bytes | Path | Image.Image) -> RestoredRender | None:
    """Restore a render's canvas and settings from our PNG chunks; None when they are absent.

    Raises `omost_engine.canvas.CanvasError` when the canvas chunk is there but is not a valid
    canvas (an edited or forged file): that is worth telling the user, not ignoring.
    """
    if isinstance(source, Image.Image):
        image = source
    else:
        image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    if image.format != "PNG":
        return None
    text: dict[str, Any] = dict(getattr(image, "text", {}) or {})
    code = text.get(CANVAS_KEY)
    if not isinstance(code, str):
        return None
    canvas = parse(code)
    params = RenderParams()
    ignored: list[str] = []
    for name, (kind, low, high) in _NUMBERS.items():
        raw = text.get(PREFIX + name)
        if raw is None:
            continue
        try:
            params = replace(params, **{name: _number(str(raw), kind, low, high)})
        except ValueError:
            ignored.append(name)
    negative = text.get(PREFIX + "negative_prompt")
    if negative is not None:
        if isinstance(negative, str) and len(negative) <= MAX_TEXT:
            params = replace(params, negative_prompt=negative)
        else:
            ignored.append("negative_prompt")
    pooled = text.get(PREFIX + "pooled")
    if pooled is not None:
        if pooled in POOLED_EMBEDDINGS:
            params = replace(params, pooled=pooled)
        else:
            ignored.append("pooled")
    model = text.get(MODEL_KEY)
    if model is not None and not (isinstance(model, str) and len(model) <= MAX_TEXT):
        ignored.append("model")
        model = None
    return RestoredRender(canvas=canvas, code=code, params=params, model=model, ignored=tuple(ignored))
