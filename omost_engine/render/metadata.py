"""PNG text chunks that let a rendered image be dropped back into a chat to continue from it.

`png_metadata()` gives the chunks (canvas code, seed, steps, CFG, size, model, negative prompt,
hires settings, pooled embedding, frame zoom); an edit render adds `omost:edit` (what was redrawn:
kind, boxes, margin, feather), `omost:edit_window` and `omost:edit_redrawn`. `encode_png()` writes
an image with them; `read_png_metadata()` restores them (`read_png_metadata_async()` does so off
the event loop, within a time bound).

The reader treats the file as hostile input. It walks the PNG chunk stream itself and reads only
the header (IHDR), the animation header (acTL) and text chunks (tEXt, zTXt, iTXt) whose keyword
starts with `omost:`; image data (IDAT, fdAT) is skipped unread, so no pixel or frame is ever
decoded, whatever size the header declares. Limits (`PngLimits`) on the file size, the declared
dimensions, the frame count, the number of chunks and the size of our text (stored and
decompressed) make every refusal cheap. The canvas code only ever goes through
`omost_engine.canvas_code.parse` (data, never executed); numbers are parsed and range-checked one
by one, and a value that fails is left at its default and named in `ignored`. A file that is not
a PNG, or a PNG without our canvas chunk, gives None.

Errors (both raised by the reader; their text is a reply for the chat):

    PictureRefused (EngineError, ValueError)   too large, animated, damaged, too much text
    CanvasError (canvas.py)                    the canvas chunk is there but is not a valid canvas

Knows PIL (for writing), RenderParams and the canvas parser; nothing of torch, pipelines or chats.
"""

from __future__ import annotations

import asyncio
import io
import math
import struct
import zlib
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin

from omost_engine.canvas import Canvas
from omost_engine.canvas_code import MAX_INPUT_CHARS, parse
from omost_engine.errors import EngineError
from omost_engine.render.base import HIRES_SCALE_RANGE, MAX_SIZE, POOLED_EMBEDDINGS, RenderParams

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


# --- reading: the chunk stream, never the pixels ----------------------------------------------

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_MiB = 1 << 20
_LARGEST_RENDER = int(MAX_SIZE * HIRES_SCALE_RANGE[1])  # the widest picture the renderer makes
_TEXT_CHUNKS = {b"tEXt", b"zTXt", b"iTXt"}
_MAX_CHUNK_LENGTH = 2**31 - 1  # PNG: a chunk length is a 31-bit number


class PictureRefused(EngineError, ValueError):
    """A picture the reader will not read (too large, animated, damaged); str() is the reply.

    A ValueError too, so callers that already catch ValueError for bad files keep working.
    """


@dataclass(frozen=True)
class PngLimits:
    """What the reader accepts. Each limit keeps a refusal cheap; none needs pixels to check."""

    max_bytes: int = 64 * _MiB
    """The whole file."""
    max_side: int = 2 * _LARGEST_RENDER
    """Either declared dimension; the renderer's largest picture is half of this (slack for
    pictures a chat app re-saved larger)."""
    max_frames: int = 1
    """acTL's frame count: our renders are still pictures, so an animation cannot be one."""
    max_chunks: int = 100_000
    """Chunks walked before giving up (a stream of millions of empty chunks)."""
    max_text_chunk_bytes: int = 4 * MAX_INPUT_CHARS
    """One of our text chunks as stored: the canvas code at its parser limit, UTF-8 worst case."""
    max_text_bytes: int = 8 * MAX_INPUT_CHARS
    """All our text values together, decompressed (a zTXt/iTXt chunk may be a zip bomb)."""


def _refuse(message: str) -> PictureRefused:
    return PictureRefused(message)


def _damaged(why: str) -> PictureRefused:
    return PictureRefused(f"That picture is damaged ({why}), so I can't read it.")


class _TextBudget:
    """How many decompressed bytes of our text are still allowed (shared by all chunks)."""

    def __init__(self, limits: PngLimits) -> None:
        self.limits = limits
        self.left = limits.max_text_bytes

    def inflate(self, data: bytes | memoryview) -> bytes:
        # decompressobj with max_length stops at the budget: a bomb costs at most the budget.
        inflater = zlib.decompressobj()
        try:
            out = inflater.decompress(data, self.left + 1)
        except zlib.error as e:
            raise _damaged("its text does not decompress") from e
        if len(out) > self.left:
            raise _refuse("The text stored in that picture is too large to read.")
        if not inflater.eof:
            raise _damaged("its text is cut short")
        return self.take(out)

    def take(self, out: bytes) -> bytes:
        if len(out) > self.left:
            raise _refuse("The text stored in that picture is too large to read.")
        self.left -= len(out)
        return out


def _text_chunk(kind: bytes, body: memoryview, budget: _TextBudget) -> tuple[str, str]:
    """(keyword, text) of a tEXt, zTXt or iTXt chunk (PNG spec 11.3.4)."""
    raw = bytes(body)
    keyword, sep, rest = raw.partition(b"\0")
    if not sep:
        raise _damaged("a text chunk has no keyword")
    key = keyword.decode("latin-1")
    if kind == b"tEXt":
        return key, budget.take(rest).decode("latin-1")
    if kind == b"zTXt":
        if rest[:1] != b"\0":
            raise _damaged("a text chunk uses an unknown compression")
        return key, budget.inflate(rest[1:]).decode("latin-1")
    # iTXt: compression flag, method, language tag NUL, translated keyword NUL, UTF-8 text
    if len(rest) < 2:
        raise _damaged("a text chunk is cut short")
    compressed, method = rest[0], rest[1]
    parts = rest[2:].split(b"\0", 2)
    if len(parts) != 3:
        raise _damaged("a text chunk is cut short")
    text = parts[2]
    if compressed:
        if method != 0:
            raise _damaged("a text chunk uses an unknown compression")
        data = budget.inflate(text)
    else:
        data = budget.take(text)
    try:
        return key, data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _damaged("its text is not UTF-8") from e


def _checked(kind: bytes, body: memoryview, stored_crc: int) -> None:
    if zlib.crc32(body, zlib.crc32(kind)) != stored_crc:
        raise _damaged(f"the checksum of its {kind.decode('latin-1')} chunk does not match")


def _check_header(body: memoryview, limits: PngLimits) -> None:
    if len(body) != 13:
        raise _damaged("its header has the wrong length")
    width, height = struct.unpack_from(">II", body)
    if width == 0 or height == 0:
        raise _damaged(f"it declares a size of {width}x{height}")
    if width > limits.max_side or height > limits.max_side:
        raise _refuse(f"That picture is too large to read: {width}x{height}.")


def read_png_text(data: bytes, limits: PngLimits | None = None) -> dict[str, str] | None:
    """Our `omost:` text chunks from a PNG's chunk stream; None when `data` is not a PNG.

    Never decodes image data: IDAT and fdAT chunks are stepped over by their length. Raises
    PictureRefused for a file past `limits` or a damaged one.
    """
    limits = limits or PngLimits()
    if len(data) > limits.max_bytes:
        raise _refuse(
            f"That picture is too large to read: {len(data) / _MiB:.1f} MiB "
            f"(at most {limits.max_bytes / _MiB:.0f} MiB)."
        )
    if not data.startswith(PNG_SIGNATURE):
        return None
    view = memoryview(data)
    budget = _TextBudget(limits)
    texts: dict[str, str] = {}
    pos, count = len(PNG_SIGNATURE), 0
    while True:
        # 1. The chunk's frame: length, type, body, CRC; all within the file.
        if pos + 12 > len(data):
            raise _damaged("it ends before its last chunk")
        length, kind = struct.unpack_from(">I4s", data, pos)
        end = pos + 12 + length
        if length > _MAX_CHUNK_LENGTH or end > len(data):
            raise _damaged("a chunk runs past the end of the file")
        count += 1
        if count > limits.max_chunks:
            raise _refuse(f"That picture has too many parts to read (over {limits.max_chunks:,} chunks).")
        body = view[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack_from(">I", data, end - 4)
        # 2. The few chunks we read; everything else (pixels, frames, colour data) is skipped.
        if count == 1 and kind != b"IHDR":
            raise _damaged("it does not start with a header")
        if kind == b"IHDR":
            _checked(kind, body, crc)
            _check_header(body, limits)
        elif kind == b"acTL":
            _checked(kind, body, crc)
            frames = struct.unpack_from(">I", body)[0] if len(body) >= 4 else 0
            if frames > limits.max_frames:
                raise _refuse(
                    f"That picture is animated ({frames:,} frames): only a still picture I made "
                    "can be continued."
                )
        elif kind in _TEXT_CHUNKS and bytes(body[: len(PREFIX)]) == PREFIX.encode():
            if length > limits.max_text_chunk_bytes:
                raise _refuse("The text stored in that picture is too large to read.")
            _checked(kind, body, crc)
            key, text = _text_chunk(kind, body, budget)
            texts.setdefault(key, text)  # a repeated key: the first one counts
        elif kind == b"IEND":
            return texts
        pos = end


def _read_source(source: bytes | Path, limits: PngLimits) -> bytes:
    if isinstance(source, bytes):
        return source
    size = source.stat().st_size
    if size > limits.max_bytes:
        raise _refuse(f"That picture is too large to read: {size / _MiB:.1f} MiB.")
    with source.open("rb") as f:
        return f.read(limits.max_bytes + 1)


def read_png_metadata(source: bytes | Path, limits: PngLimits | None = None) -> RestoredRender | None:
    """Restore a render's canvas and settings from our PNG chunks; None when they are absent.

    Raises PictureRefused for a file past `limits` or a damaged one, and
    `omost_engine.canvas.CanvasError` when the canvas chunk is there but is not a valid canvas
    (an edited or forged file): both are worth telling the user, not ignoring.
    """
    limits = limits or PngLimits()
    text = read_png_text(_read_source(source, limits), limits)
    if text is None:
        return None
    code = text.get(CANVAS_KEY)
    if code is None:
        return None
    canvas = parse(code)
    params = RenderParams()
    ignored: list[str] = []
    for name, (kind, low, high) in _NUMBERS.items():
        raw = text.get(PREFIX + name)
        if raw is None:
            continue
        try:
            params = replace(params, **{name: _number(raw, kind, low, high)})
        except ValueError:
            ignored.append(name)
    negative = text.get(PREFIX + "negative_prompt")
    if negative is not None:
        if len(negative) <= MAX_TEXT:
            params = replace(params, negative_prompt=negative)
        else:
            ignored.append("negative_prompt")
    pooled = text.get(PREFIX + "pooled")
    if pooled is not None:
        if pooled in POOLED_EMBEDDINGS:
            params = replace(params, pooled="sdxl" if pooled == "sdxl" else "omost")
        else:
            ignored.append("pooled")
    model = text.get(MODEL_KEY)
    if model is not None and len(model) > MAX_TEXT:
        ignored.append("model")
        model = None
    return RestoredRender(canvas=canvas, code=code, params=params, model=model, ignored=tuple(ignored))


async def read_png_metadata_async(
    source: bytes | Path, *, timeout_s: float = 5.0, limits: PngLimits | None = None
) -> RestoredRender | None:
    """`read_png_metadata` on a worker thread, for the event loop: never blocks it, and gives
    up after `timeout_s` with a PictureRefused (the thread, bounded by `limits`, ends by itself).
    """
    try:
        return await asyncio.wait_for(asyncio.to_thread(read_png_metadata, source, limits), timeout_s)
    except TimeoutError:
        raise _refuse("That picture took too long to read.") from None
