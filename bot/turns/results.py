"""What a turn shows when it has something to show: the layout preview and the result post.

- `post_layout_preview`: the layout (boxes in their colours) before any GPU time goes to pixels.
- `store_result`: the rendered image written to the data dir and the turn marked done, before
  anything is announced (crash recovery announces a stored result that was never posted).
- `announce`: the result post (image, a one-line change summary against the parent canvas, the
  canvas code as a .py file, the buttons) with every message it made linked to the turn, behind
  an announcing mark so that a restart never posts a result twice.
- `deliver`: `announce`, tried again with backoff while the platform fails the post, the status
  saying so ("I drew it but could not post it; retrying…"), then a Retry button.

It knows the port, the store and the canvas; it never talks to the engine.
"""

from __future__ import annotations

import asyncio
import functools
import io
import logging
from collections.abc import Sequence
from pathlib import Path

from adapters.base import Adapter, Button, ButtonAction, OutFile, Post
from bot.store import LinkRole, Store, Turn, TurnKind, TurnStatus
from bot.turns.live import LiveTurn
from omost_engine.canvas import Canvas, CanvasError, diff_canvases, process
from omost_engine.canvas_code import parse
from omost_engine.preview import render_layout_preview
from omost_engine.render.base import RenderResult
from omost_engine.render.metadata import encode_png, png_metadata

log = logging.getLogger(__name__)

RESULT_BUTTONS: tuple[ButtonAction, ...] = ("seed", "rewrite", "hires", "vary", "zoom")
EDIT_BUTTONS = ("vary", "zoom")  # shown when the renderer can redraw part of a picture
DELIVERY_RETRYING = "I drew it but could not post it; retrying…"
DELIVERY_FAILED = "I drew it but could not post it. Press Retry to try again."
MAYBE_POSTED = (
    "done, I think: I was restarted while posting this picture, so it may be above already. "
    "If it is not, press Retry."
)


@functools.lru_cache(maxsize=256)
def stored_canvas(code: str) -> Canvas:
    """Canvas code stored on a turn, parsed once (a Canvas is immutable, so sharing it is safe)."""
    return parse(code)


def canvas_of(turn: Turn | None) -> Canvas | None:
    """A turn's canvas, or None when it has none (or, from an older version, one that no longer
    parses)."""
    if turn is None or turn.canvas_code is None:
        return None
    try:
        return stored_canvas(turn.canvas_code)
    except CanvasError:
        return None


def describe_change(before: Canvas | None, after: Canvas) -> str:
    """A one-line summary of what changed against the parent canvas."""
    if before is None:
        n = len(after.regions)
        return f"New picture: {n} region{'s' if n != 1 else ''}."
    diff = diff_canvases(before, after)
    if diff.unchanged:
        return "Same canvas as before."
    parts = []
    if diff.added:
        parts.append("added " + ", ".join(short_description(r.description) for r in diff.added))
    if diff.removed:
        parts.append("removed " + ", ".join(short_description(r.description) for r in diff.removed))
    if diff.changed:
        parts.append("changed " + ", ".join(short_description(new.description) for _, new in diff.changed))
    if diff.global_changed:
        parts.append("updated the overall scene")
    text = "; ".join(parts)
    return text[:1].upper() + text[1:] + "."


def short_description(description: str, limit: int = 60) -> str:
    """A region's description as a phrase inside a sentence: no final dot, lower-case, clipped."""
    text = description.rstrip(".")
    text = text[:1].lower() + text[1:]
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _layout_png(canvas: Canvas, width: int, height: int) -> bytes:
    image = render_layout_preview(process(canvas), width, height, long_side=512)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


MAX_CORRECTIONS_SHOWN = 5


def corrections_line(canvas: Canvas) -> str:
    """The names that were read as the nearest allowed ones (every correction is reported)."""
    if not canvas.corrections:
        return ""
    shown = [
        f"“{c.given}” → “{c.corrected}”" + (f" (line {c.line})" if c.line is not None else "")
        for c in canvas.corrections[:MAX_CORRECTIONS_SHOWN]
    ]
    more = len(canvas.corrections) - len(shown)
    return (
        "Read as the nearest allowed names: "
        + "; ".join(shown)
        + (f"; and {more} more" if more > 0 else "")
        + "."
    )


def code_file(turn: Turn) -> OutFile:
    return OutFile(f"turn-{turn.id}-canvas.py", (turn.canvas_code or "").encode("utf-8"), "text/x-python")


async def post_files(live: LiveTurn, text: str, files: tuple[OutFile, ...]) -> None:
    """A message with files (e.g. the canvas or a failed answer), linked to the turn."""
    post = Post(text=f"Turn {live.turn.id}: {text}", files=files, turn_id=live.turn.id)
    refs = await live.adapter.send(live.conversation.chat, live.conversation.thread, post)
    await live.store.link_messages(
        live.turn.id, [(r.platform, r.chat, r.message_id, LinkRole.CODE) for r in refs]
    )


async def keep_failed_answer(live: LiveTurn, answer: str) -> OutFile:
    """The model's answer that did not parse, saved beside the turn's other files."""
    data = answer.encode("utf-8")
    path = live.store.new_image_path(live.turn.id, ".txt")
    await asyncio.to_thread(path.write_bytes, data)
    return OutFile(f"turn-{live.turn.id}-answer.txt", data, "text/plain", path=str(path))


async def post_layout_preview(live: LiveTurn, canvas: Canvas) -> None:
    """The layout preview; its message is linked with the turn's next write (`live.links`)."""
    settings = live.settings
    # drawn off the event loop: it is the bot's costliest step of its own (a few ms)
    png = await asyncio.to_thread(_layout_png, canvas, settings.width, settings.height)
    n = len(canvas.regions)
    corrected = corrections_line(canvas)
    post = Post(
        text=f"Turn {live.turn.id}: layout: {n} region{'s' if n != 1 else ''}. Drawing next…"
        + (f"\n{corrected}" if corrected else ""),
        image=OutFile(f"turn-{live.turn.id}-layout.png", png, "image/png"),
        role="preview",
        turn_id=live.turn.id,
    )
    refs = await live.adapter.send(live.conversation.chat, live.conversation.thread, post)
    live.links += [(ref.platform, ref.chat, ref.message_id, LinkRole.PREVIEW) for ref in refs]


def _encode_and_write(result: RenderResult, metadata: dict[str, str], path: Path) -> bytes:
    data = encode_png(result.image, metadata)
    path.write_bytes(data)
    return data


async def store_result(live: LiveTurn, result: RenderResult, model_name: str) -> bytes:
    """Write the picture (with the canvas and settings in its metadata) and mark the turn done.

    The same write sets the announcing mark, since the result post follows at once: a crash from
    here until its messages are linked leaves a result that may have been posted, which a restart
    does not post again (see `announce`). It costs no round trip of its own."""
    code = live.turn.canvas_code or ""
    # the renderer's chunks, with the turn's own canvas code and settings taking precedence
    metadata = {**result.metadata, **png_metadata(code, result.params, result.model or model_name)}
    path = live.store.new_image_path(live.turn.id)
    data = await asyncio.to_thread(_encode_and_write, result, metadata, path)
    await live.save(status=TurnStatus.DONE, image_path=path, announcing_at=live.store.now())
    return data


class NotPosted(Exception):
    """The platform failed the result post even after the adapter's own retries. Nothing was
    posted (the adapters' sends fail before they take effect), so posting again cannot duplicate it."""


async def _result_post(store: Store, live: LiveTurn, canvas: Canvas, data: bytes | None) -> Post:
    """The result post: the image, its change summary and settings, the code file, the buttons."""
    turn, settings = live.turn, live.settings
    if turn.image_path is None:
        raise ValueError(f"turn {turn.id} has no picture to post")
    path = store.image_file(turn.image_path)
    if data is None:
        data = await asyncio.to_thread(path.read_bytes)
    change = describe_change(live.parent_canvas, canvas)
    parent = live.parent_canvas
    if turn.kind == TurnKind.RENDER and parent is not None and diff_canvases(parent, canvas).unchanged:
        change = "Same canvas, drawn again."
    hires = f", hires {settings.hires_scale:g}x" if settings.hires else ""
    summary = (
        f"{change}\n{canvas.global_description.description} · seed {turn.seed} · "
        f"{settings.width}x{settings.height}{hires}"
    )
    for line in (live.edit_note, corrections_line(canvas)):
        if line:
            summary += f"\n{line}"
    image = OutFile(f"turn-{turn.id}.png", data, "image/png", path=str(path))
    files = [code_file(turn)]
    if settings.png:
        files.append(image)
    return Post(
        text=summary,
        image=image,
        files=tuple(files),
        buttons=tuple(
            Button(action, turn.id)
            for action in RESULT_BUTTONS
            if live.can_edit or action not in EDIT_BUTTONS
        ),
        role="image",
        turn_id=turn.id,
    )


async def announce(
    adapter: Adapter, store: Store, live: LiveTurn, canvas: Canvas, data: bytes | None = None
) -> None:
    """Post a done turn's result and link every message it made to the turn.

    The announcing mark is set before the post goes out (unless `store_result` set it) and
    cleared when the post surely failed (`NotPosted`); the links are written after it. So at a
    restart, a done turn with no image link and no mark was never posted (it is posted then),
    and one with the mark may have been (it is not posted again: a duplicate is worse than a
    Retry press)."""
    post = await _result_post(store, live, canvas, data)
    if live.turn.announcing_at is None:
        await live.save(announcing_at=store.now())
    try:
        refs = await adapter.send(live.conversation.chat, live.conversation.thread, post)
    except Exception as e:
        await live.save(announcing_at=None)
        raise NotPosted(f"turn {live.id}: the result post failed: {e!r}") from e
    roles = [LinkRole.IMAGE] + [LinkRole.CODE] * (len(refs) - 1)
    await store.link_messages(
        live.id,
        [(ref.platform, ref.chat, ref.message_id, role) for ref, role in zip(refs, roles, strict=True)],
    )
    await live.status.finish(Post(text=f"Turn {live.id}: done."))


async def deliver(
    live: LiveTurn, canvas: Canvas, data: bytes | None = None, *, delays_s: Sequence[float] = ()
) -> bool:
    """Announce a stored result, trying again after each of `delays_s` while the post fails, with
    the status saying so; in the end, a Retry button that announces it again. True once posted."""
    attempts = len(delays_s) + 1
    for attempt in range(attempts):
        try:
            await announce(live.adapter, live.store, live, canvas, data)
            return True
        except NotPosted as e:
            last = attempt == attempts - 1
            # the detail for the log, once per try; the trace only with the last one
            log.warning("%s (try %d of %d)", e, attempt + 1, attempts, exc_info=last)
        if attempt < len(delays_s):
            await live.show(f"{DELIVERY_RETRYING} (try {attempt + 2} of {attempts})", now=True)
            await asyncio.sleep(delays_s[attempt])
    await live.status.finish(
        Post(text=f"Turn {live.id}: {DELIVERY_FAILED}", buttons=(Button("retry", live.id),))
    )
    return False


async def show_maybe_posted(live: LiveTurn) -> None:
    """A restart found the result post under way: say so, and offer Retry instead of posting."""
    await live.status.finish(
        Post(text=f"Turn {live.id}: {MAYBE_POSTED}", buttons=(Button("retry", live.id),))
    )
