"""Reading a canvas back from a PNG: our own pictures round-trip; hostile ones are refused fast.

The hostile files are the ones that froze the bot (issue 13): a small PNG declaring 11000x11000,
13000x13000 RGBA, an animation of many 3000x3000 frames, a 50000x50000 header, a text bomb. Each
is read through the async helper while a ticker task measures how late the event loop wakes up.
"""

from __future__ import annotations

import asyncio
import io
import os
import threading
import time
import zlib
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from PIL import Image, PngImagePlugin

from omost_engine.canvas import Canvas, CanvasError
from omost_engine.canvas_code import parse, to_code
from omost_engine.render.base import RenderParams
from omost_engine.render.metadata import (
    PictureRefused,
    PngLimits,
    encode_png,
    png_metadata,
    read_png_metadata,
    read_png_metadata_async,
)
from tests.fakes import hostile_png
from tests.seed import seed_answers

T = TypeVar("T")
PARAMS = RenderParams(width=64, height=64, steps=7, cfg=6.5, seed=99, hires_scale=1.5)


@pytest.fixture(scope="module")
def seed_canvas() -> Canvas:
    return parse(seed_answers()[0])


@pytest.fixture(scope="module")
def our_chunks(seed_canvas: Canvas) -> dict[str, str]:
    return png_metadata(to_code(seed_canvas), PARAMS, "tiny-sdxl")


async def with_loop_lag(work: Awaitable[T]) -> tuple[T | BaseException, float]:
    """Await `work` while a ticker sleeps 5 ms at a time; return its outcome and the worst lateness."""
    worst = 0.0
    done = False

    async def ticker() -> None:
        nonlocal worst
        while not done:
            began = time.perf_counter()
            await asyncio.sleep(0.005)
            worst = max(worst, time.perf_counter() - began - 0.005)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0.02)  # the ticker is running before the work starts
    outcome: T | BaseException
    try:
        outcome = await work
    except Exception as e:  # the refusals are what we measure
        outcome = e
    done = True
    await task
    return outcome, worst


# --- our own pictures -------------------------------------------------------------------------


def test_our_png_reads_back(seed_canvas: Canvas, our_chunks: dict[str, str]) -> None:
    restored = read_png_metadata(encode_png(Image.new("RGB", (64, 64)), our_chunks))
    assert restored is not None
    assert restored.canvas == seed_canvas and restored.code == to_code(seed_canvas)
    assert restored.params == PARAMS and restored.model == "tiny-sdxl" and restored.ignored == ()


def test_our_png_reads_back_from_a_file(
    tmp_path: Path, seed_canvas: Canvas, our_chunks: dict[str, str]
) -> None:
    path = tmp_path / "turn.png"
    path.write_bytes(encode_png(Image.new("RGB", (64, 64)), our_chunks))
    restored = read_png_metadata(path)
    assert restored is not None and restored.canvas == seed_canvas


@pytest.mark.parametrize("how", ["tEXt", "zTXt", "iTXt"])
def test_every_text_chunk_kind_is_read(how: str, seed_canvas: Canvas, our_chunks: dict[str, str]) -> None:
    # Another tool may re-save the picture with its own choice of chunk.
    info = PngImagePlugin.PngInfo()
    for key, value in our_chunks.items():
        if how == "iTXt":
            info.add_itxt(key, value, zip=False)
        else:
            info.add_text(key, value, zip=how == "zTXt")
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG", pnginfo=info)
    restored = read_png_metadata(buffer.getvalue())
    assert restored is not None and restored.canvas == seed_canvas and restored.params == PARAMS


def test_text_after_the_image_data_of_a_big_picture_is_read_without_decoding_it(
    seed_canvas: Canvas, our_chunks: dict[str, str]
) -> None:
    # 4096x4096 is a size the renderer makes (2048 with hires 2.0); Pillow would decode 50 MB
    # of pixels to see chunks placed after the image data. The reader only steps over them.
    png = hostile_png.black_png(4096, 4096)
    iend = len(png) - 12
    tail = b"".join(hostile_png.itxt(k, v.encode()) for k, v in our_chunks.items())
    began = time.perf_counter()
    restored = read_png_metadata(png[:iend] + tail + png[iend:])
    assert time.perf_counter() - began < 0.5
    assert restored is not None and restored.canvas == seed_canvas


def test_not_ours_gives_none() -> None:
    plain = hostile_png.black_png(8, 8)
    assert read_png_metadata(plain) is None
    assert read_png_metadata(b"\xff\xd8\xff\xe0 a JPEG") is None
    assert read_png_metadata(b"") is None


def test_a_forged_canvas_is_a_canvas_error(our_chunks: dict[str, str]) -> None:
    chunks = {**our_chunks, "omost:canvas": "import os\nos.system('echo pwned')\n"}
    with pytest.raises(CanvasError):
        read_png_metadata(encode_png(Image.new("RGB", (8, 8)), chunks))


# --- hostile pictures ---------------------------------------------------------------------------


def test_the_hostile_builders_make_real_pngs() -> None:
    # Small versions decode with Pillow: the big ones are real pictures, not just bad headers.
    with Image.open(io.BytesIO(hostile_png.black_png(300, 200, colour_type=6))) as still:
        still.load()
        assert (still.size, still.mode, still.getextrema()[0]) == ((300, 200), "RGBA", (0, 0))
    with Image.open(io.BytesIO(hostile_png.animated_png(40, 30, 5))) as animation:
        assert getattr(animation, "n_frames", 1) == 5
        animation.seek(4)
        animation.load()


def _with_canvas(png: bytes, chunks: dict[str, str]) -> bytes:
    """Our chunks placed right after the header, so only the limits can stop the reader."""
    cut = len(hostile_png.SIGNATURE) + 25
    text = b"".join(hostile_png.itxt(k, v.encode()) for k, v in chunks.items())
    return png[:cut] + text + png[cut:]


HOSTILE: dict[str, tuple[Any, str]] = {
    "11000x11000 black": (
        lambda: hostile_png.black_png(11000, 11000),
        "That picture is too large to read: 11000x11000.",
    ),
    "13000x13000 RGBA": (
        lambda: hostile_png.black_png(13000, 13000, colour_type=6),
        "That picture is too large to read: 13000x13000.",
    ),
    "APNG of 120 frames at 3000x3000": (
        lambda: hostile_png.animated_png(3000, 3000, 120),
        "That picture is animated (120 frames): only a still picture I made can be continued.",
    ),
    "50000x50000 header": (
        lambda: hostile_png.header_only_png(50000, 50000),
        "That picture is too large to read: 50000x50000.",
    ),
}


@pytest.mark.parametrize("name", list(HOSTILE))
async def test_hostile_pictures_are_refused_without_stalling_the_loop(
    name: str, our_chunks: dict[str, str]
) -> None:
    build, message = HOSTILE[name]
    data = _with_canvas(build(), our_chunks)  # even carrying a valid canvas
    began = time.perf_counter()
    outcome, lag = await with_loop_lag(read_png_metadata_async(data))
    elapsed = time.perf_counter() - began
    assert isinstance(outcome, PictureRefused) and str(outcome) == message
    assert lag < 0.1, f"the event loop stalled {lag * 1000:.0f} ms"  # DESIGN.md: 100 ms
    assert elapsed < 0.5


async def test_a_text_bomb_is_refused_after_the_budget(our_chunks: dict[str, str]) -> None:
    # 32 MiB of spaces compress to about 32 kB; the reader inflates at most its 1.6 MB budget.
    bomb = zlib.compress(b" " * (32 << 20), 9)
    body = b"omost:canvas\0\x01\x00\0\0" + bomb
    png = hostile_png.black_png(64, 64, extra=hostile_png.chunk(b"iTXt", body))
    outcome, lag = await with_loop_lag(read_png_metadata_async(png))
    assert isinstance(outcome, PictureRefused)
    assert str(outcome) == "The text stored in that picture is too large to read."
    assert lag < 0.1


def test_a_picture_past_the_file_size_limit_is_refused_before_reading() -> None:
    with pytest.raises(PictureRefused, match=r"too large to read: 1\.0 MiB"):
        read_png_metadata(bytes(1 << 20), PngLimits(max_bytes=1000))


def test_too_many_chunks_are_refused() -> None:
    junk = hostile_png.chunk(b"tIME", bytes(7)) * 50
    png = hostile_png.black_png(8, 8, extra=junk)
    with pytest.raises(PictureRefused, match="too many parts"):
        read_png_metadata(png, PngLimits(max_chunks=20))


@pytest.mark.parametrize(
    ("damage", "why"),
    [
        (lambda png: png[: len(png) // 2], "runs past the end of the file"),
        (lambda png: png[:-12], "ends before its last chunk"),
        (lambda png: hostile_png.SIGNATURE + png[33:], "does not start with a header"),
        (lambda png: png.replace(b"omost:canvas", b"omost:canvaz"), "checksum of its iTXt chunk"),
    ],
)
def test_a_damaged_picture_says_so(damage: Any, why: str, our_chunks: dict[str, str]) -> None:
    png = _with_canvas(hostile_png.black_png(64, 64), our_chunks)
    with pytest.raises(PictureRefused, match=why) as info:
        read_png_metadata(damage(png))
    assert str(info.value).startswith("That picture is damaged (")


async def test_a_read_that_hangs_is_given_up_within_the_time_bound(tmp_path: Path) -> None:
    # A FIFO blocks open() until a writer comes: a read that would never end by itself.
    fifo = tmp_path / "stuck.png"
    os.mkfifo(fifo)
    began = time.perf_counter()
    outcome, lag = await with_loop_lag(read_png_metadata_async(fifo, timeout_s=0.2))
    assert isinstance(outcome, PictureRefused) and str(outcome) == "That picture took too long to read."
    assert time.perf_counter() - began < 1.0 and lag < 0.1
    # Release the worker thread so it ends (it reads an empty "file": not a PNG).
    threading.Thread(target=lambda: fifo.open("wb").close(), daemon=True).start()
