"""Edits that keep the picture: which part of the parent's picture a turn redraws (issue 15).

    a reply that changed local regions   ->  inpaint their boxes, keep every other pixel ("auto")
    a reply that changed the scene       ->  the whole picture again, with the parent's seed
    Vary region (a region picked)        ->  that region's box, with a new seed
    Zoom out                             ->  the parent scaled into the centre, the border drawn

`plan` returns the renderer's `EditSpec` for the turn (None: draw the whole picture) and leaves
a line for the result's summary in `live.edit_note`. The geometry and the pixels are the
renderer's (omost_engine/render/edit_plan.py, edits.py); this room only decides, from the turn's
settings and the parent's canvas and picture.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

from bot.store import TurnKind
from bot.turns.live import LiveTurn
from bot.turns.results import short_description
from omost_engine.canvas import Canvas
from omost_engine.render.base import RenderParams
from omost_engine.render.edit_plan import EditSpec, decide_edit, edited_params, vary_boxes

MAX_NAMED = 3


async def render_params_for(live: LiveTurn, canvas: Canvas, params: RenderParams) -> RenderParams:
    """The turn's render settings, made an edit of its parent's picture where it is one."""
    spec = await plan(live, canvas)
    if spec is None:
        return params
    if spec.kind == "zoom_out":  # the renderer widens the parent's frame by the zoom itself
        params = replace(params, frame_zoom=live.settings.frame_zoom / live.settings.zoom_out)
    return edited_params(params, spec)


async def plan(live: LiveTurn, canvas: Canvas) -> EditSpec | None:
    settings = live.settings
    if not live.can_edit:
        if (live.parent_canvas is not None and live.turn.kind != TurnKind.RENDER) or settings.vary_region:
            live.edit_note = "Redrew the whole picture: this image model draws whole pictures only."
        return None
    if settings.vary_region or settings.zoom_out > 1.0:
        return await _button_edit(live, canvas)
    if live.turn.kind == TurnKind.RENDER or live.parent_canvas is None:
        return None  # a re-render (new seed, hires) draws it all; a first picture has no parent
    if settings.edit == "full":
        live.edit_note = "Redrew the whole picture (edits: full)."
        return None
    missing = _why_not_over_the_parent(live)
    if missing:
        live.edit_note = f"Redrew the whole picture: {missing}."
        return None
    decision = decide_edit(live.parent_canvas, canvas, frame_zoom=settings.frame_zoom)
    if decision.mode == "full":
        live.edit_note = f"Redrew the whole picture: {decision.reason}."
        return None
    live.edit_note = _redrew(decision.regions)
    return EditSpec("inpaint", await _picture(live), decision.boxes)


async def _button_edit(live: LiveTurn, canvas: Canvas) -> EditSpec | None:
    """Vary region or Zoom out, over the parent's picture."""
    settings = live.settings
    missing = _why_not_over_the_parent(live)
    if missing:
        live.edit_note = f"Redrew the whole picture: {missing}."
        return None
    if settings.vary_region:
        boxes = vary_boxes(canvas, settings.vary_region, settings.frame_zoom)
        region = short_description(canvas.regions[settings.vary_region - 1].description, 40)
        live.edit_note = f"Redrew region {settings.vary_region} with a new seed: {region}; kept the rest."
        return EditSpec("vary", await _picture(live), boxes)
    live.edit_note = (
        f"Zoomed out {settings.zoom_out:g}x: drew the new border; kept the picture in the middle."
    )
    return EditSpec("zoom_out", await _picture(live), zoom=settings.zoom_out)


def _why_not_over_the_parent(live: LiveTurn) -> str:
    """Why this turn cannot be drawn over its parent's picture ("" when it can)."""
    parent = live.parent
    if parent is None or parent.image_path is None:
        return "the picture it continues was not drawn yet"
    if not _same_frame(live):
        return "the size changed"
    return ""


def _same_frame(live: LiveTurn) -> bool:
    """An edit pastes over the parent's pixels: only at the parent's own size and hires scale."""
    parent = live.parent
    assert parent is not None
    params, settings = parent.params, live.settings
    return (params.get("width"), params.get("height"), params.get("hires_scale", 1.0)) == (
        settings.width,
        settings.height,
        settings.hires_scale,
    )


async def _picture(live: LiveTurn) -> bytes:
    assert live.parent is not None and live.parent.image_path is not None
    return await asyncio.to_thread(live.store.image_file(live.parent.image_path).read_bytes)


def _redrew(names: tuple[str, ...]) -> str:
    shown = ", ".join(short_description(n, 40) for n in names[:MAX_NAMED]) + (
        f" and {len(names) - MAX_NAMED} more" if len(names) > MAX_NAMED else ""
    )
    n = len(names)
    return f"Redrew {n} region{'s' if n != 1 else ''}: {shown}; kept the rest."
