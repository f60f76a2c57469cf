"""Edits that keep the picture: what to redraw, where, and how the result is pasted back (issue 15).

An edit is one render job whose `RenderParams.edit` is an `EditSpec`: the parent's image (PNG
bytes), which boxes of the 90 x 90 grid to redraw, a margin and a feather. Three kinds:

- "inpaint": an edit turn changed, added or removed local regions; redraw only their boxes
  (`decide_edit` says whether that, or a full redraw with the parent's seed, fits the change);
- "vary": one region redrawn with a new seed (the caller gives the new seed), the same mask path;
- "zoom_out": the parent scaled by 1 / zoom into the centre of a frame of the same size; only the
  border is drawn. The canvas keeps its vocabulary boxes; the renderer draws them scaled about
  the centre by `RenderParams.frame_zoom` (the stored turn records that factor, so a reply to a
  zoomed picture keeps its framing: `zoom_boxes`).

This module is the geometry, in numpy and PIL: masks grown and feathered (`edit_masks`), the
crop window of A1111's "only masked" path (`crop_window`), boxes mapped into a crop or a zoomed
frame, and the exact composite (`composite`: a pixel the feathered mask does not touch is the
parent's, bit for bit). `render/edits.py` runs the pixels through diffusers. No torch here.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal

import numpy as np
from PIL import Image

from omost_engine.canvas import GRID, Box, Canvas, Region, diff_canvases

if TYPE_CHECKING:  # render/base.py imports this module
    from omost_engine.render.base import RenderParams

EditKind = Literal["inpaint", "vary", "zoom_out"]
CropMode = Literal["auto", "always", "never"]
LATENT_BLOCK = 8
"""SDXL's VAE maps 8 x 8 pixels to one latent: the latent mask is decided per block."""
CROP_MULTIPLE = 32
"""A crop's sides are multiples of this: SDXL's UNet halves the latent twice (latent % 4 == 0)."""


@dataclass(frozen=True)
class EditSpec:
    """What an edit render keeps and what it redraws. Margin, feather and context are in pixels."""

    kind: EditKind
    parent_png: bytes
    boxes: tuple[Box, ...] = ()
    """Grid boxes to redraw, in the frame the canvas is drawn in (inpaint and vary)."""
    margin: int = 24
    feather: int = 24
    zoom: float = 1.5
    """zoom_out only: the parent is scaled by 1 / zoom."""
    crop: CropMode = "auto"
    """Draw only a window around the mask at full resolution ("auto": when it is small enough)."""
    crop_max_fraction: float = 0.5
    crop_min_size: int = 512
    crop_context: int = 64

    def parent_image(self) -> Image.Image:
        return Image.open(io.BytesIO(self.parent_png)).convert("RGB")

    def describe(self) -> str:
        """One line for the PNG metadata."""
        if self.kind == "zoom_out":
            return f"zoom_out zoom={self.zoom:g} margin={self.margin} feather={self.feather}"
        boxes = ";".join(",".join(str(v) for v in box) for box in self.boxes)
        return f"{self.kind} boxes={boxes} margin={self.margin} feather={self.feather}"


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# --- what an edit turn should redraw --------------------------------------------------------------


@dataclass(frozen=True)
class EditDecision:
    """`mode` "full" redraws everything with the parent's seed; "inpaint" only `boxes`."""

    mode: Literal["full", "inpaint"]
    reason: str
    boxes: tuple[Box, ...] = ()
    regions: tuple[str, ...] = ()
    """Short descriptions of the regions redrawn (added, changed, removed), for the summary."""


AUTO_MAX_AREA = 0.5
"""decide_edit redraws everything when the changed boxes cover more than this share of the frame."""


def decide_edit(
    before: Canvas, after: Canvas, *, max_area: float = AUTO_MAX_AREA, frame_zoom: float = 1.0
) -> EditDecision:
    """The "auto" edit mode: inpaint the changed local regions, or draw the whole picture again.

    The whole picture (with the parent's seed, Omost's behaviour) when the global description or
    colour changed, when nothing local changed, or when the changed boxes cover more than
    `max_area` of the frame; otherwise the union of the added, removed and changed regions' boxes
    (both the old and the new box of a moved region).
    """
    diff = diff_canvases(before, after)
    if diff.global_changed:
        return EditDecision("full", "the scene changed")
    touched: list[Region] = [*diff.added, *diff.removed]
    for old, new in diff.changed:
        touched += [new] if old.box == new.box else [old, new]
    if not touched:
        return EditDecision("full", "nothing in the canvas changed")
    boxes = zoom_boxes([r.box for r in touched], frame_zoom)
    if grid_area(boxes) > max_area:
        return EditDecision("full", "most of the picture changed")
    names: list[str] = []
    for region in touched:
        if region.description not in names:
            names.append(region.description)
    return EditDecision("inpaint", "only local regions changed", tuple(dict.fromkeys(boxes)), tuple(names))


def vary_boxes(canvas: Canvas, index: int, frame_zoom: float = 1.0) -> tuple[Box, ...]:
    """The box to redraw for Vary region on region `index` (1-based, as written), in the picture's frame."""
    if not 1 <= index <= len(canvas.regions):
        raise ValueError(f"the canvas has regions 1 to {len(canvas.regions)}; got {index}")
    return zoom_boxes([canvas.regions[index - 1].box], frame_zoom)


def grid_area(boxes: Sequence[Box]) -> float:
    """Share of the 90 x 90 frame covered by the union of `boxes`."""
    covered = np.zeros((GRID, GRID), dtype=bool)
    for top, bottom, left, right in boxes:
        covered[top:bottom, left:right] = True
    return float(covered.mean())


# --- boxes in other frames ---------------------------------------------------------------------------


def zoom_boxes(boxes: Sequence[Box], zoom: float) -> tuple[Box, ...]:
    """Boxes drawn scaled by 1 / zoom about the frame's centre (zoom 1: unchanged)."""
    if zoom == 1.0:
        return tuple(boxes)
    half = GRID / 2

    def scale(v: int) -> int:
        return max(0, min(GRID, round(half + (v - half) / zoom)))

    return tuple((scale(t), scale(b), scale(le), scale(r)) for t, b, le, r in boxes)


def box_pixels(box: Box, width: int, height: int) -> tuple[int, int, int, int]:
    """A grid box as pixel (top, bottom, left, right), rounded outward."""
    top, bottom, left, right = box
    return (
        (top * height) // GRID,
        -((-bottom * height) // GRID),
        (left * width) // GRID,
        -((-right * width) // GRID),
    )


def boxes_in_window(
    boxes: Sequence[Box], window: tuple[int, int, int, int], width: int, height: int
) -> list[Box | None]:
    """Each box mapped into the grid of a pixel window (None when it does not reach the window)."""
    y0, y1, x0, x1 = window
    out: list[Box | None] = []
    for box in boxes:
        top, bottom, left, right = box_pixels(box, width, height)
        t, b = max(top, y0) - y0, min(bottom, y1) - y0
        le, r = max(left, x0) - x0, min(right, x1) - x0
        if b <= t or r <= le:
            out.append(None)
            continue
        h, w = y1 - y0, x1 - x0
        mapped = (
            (t * GRID) // h,
            -((-b * GRID) // h),
            (le * GRID) // w,
            -((-r * GRID) // w),
        )
        out.append(mapped)
    return out


# --- masks ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EditMasks:
    soft: np.ndarray
    """(H, W) float32 in 0..1: how much of the new drawing a pixel takes; 0 keeps the parent's."""
    latent: np.ndarray
    """(H / 8, W / 8) bool: latents redrawn (every block the soft mask touches)."""

    @property
    def redrawn_fraction(self) -> float:
        return float(self.latent.mean())


def _rect_distance(height: int, width: int, rect: tuple[int, int, int, int]) -> np.ndarray:
    """(H, W) Euclidean distance in pixels from each pixel centre to a pixel rectangle (0 inside)."""
    top, bottom, left, right = rect
    ys = np.arange(height, dtype=np.float32)[:, None] + 0.5
    xs = np.arange(width, dtype=np.float32)[None, :] + 0.5
    dy = np.maximum(np.maximum(top - ys, ys - bottom), 0.0)
    dx = np.maximum(np.maximum(left - xs, xs - right), 0.0)
    return np.asarray(np.sqrt(dy * dy + dx * dx))


def _ramp(distance: np.ndarray, feather: int) -> np.ndarray:
    if feather <= 0:
        return (distance <= 0).astype(np.float32)
    return np.clip(1.0 - distance / feather, 0.0, 1.0).astype(np.float32)


def _latent_blocks(soft: np.ndarray) -> np.ndarray:
    h, w = soft.shape
    blocks = soft.reshape(h // LATENT_BLOCK, LATENT_BLOCK, w // LATENT_BLOCK, LATENT_BLOCK)
    result: np.ndarray = blocks.max(axis=(1, 3)) > 0
    return result


def edit_masks(width: int, height: int, boxes: Sequence[Box], margin: int, feather: int) -> EditMasks:
    """The union of `boxes` grown by `margin` pixels, then feathered over `feather` more pixels."""
    soft = np.zeros((height, width), dtype=np.float32)
    for box in boxes:
        top, bottom, left, right = box_pixels(box, width, height)
        grown = (top - margin, bottom + margin, left - margin, right + margin)
        soft = np.maximum(soft, _ramp(_rect_distance(height, width, grown), feather))
    return EditMasks(soft=soft, latent=_latent_blocks(soft))


def border_masks(
    width: int, height: int, keep: tuple[int, int, int, int], margin: int, feather: int
) -> EditMasks:
    """Zoom out: everything outside the pixel rectangle `keep`, grown `margin` into it, feathered inward."""
    top, bottom, left, right = keep
    inner = (top + margin, bottom - margin, left + margin, right - margin)
    ys = np.arange(height, dtype=np.float32)[:, None] + 0.5
    xs = np.arange(width, dtype=np.float32)[None, :] + 0.5
    # distance from each pixel inside `inner` to its edge; 0 (fully redrawn) outside it
    depth = np.minimum(np.minimum(ys - inner[0], inner[1] - ys), np.minimum(xs - inner[2], inner[3] - xs))
    depth = np.maximum(depth, 0.0)
    soft = _ramp(depth, feather) if feather > 0 else (depth <= 0).astype(np.float32)
    return EditMasks(soft=soft.astype(np.float32), latent=_latent_blocks(soft))


def crop_window(
    masks: EditMasks, spec: EditSpec, width: int, height: int
) -> tuple[int, int, int, int] | None:
    """A pixel window (top, bottom, left, right) holding the mask plus context, or None for full frame.

    Sides are multiples of CROP_MULTIPLE, at least `crop_min_size` where the image allows, inside
    the image. "auto" takes the window only when it is at most `crop_max_fraction` of the frame.
    """
    if spec.crop == "never" or not masks.latent.any():
        return None
    rows = np.flatnonzero(masks.latent.any(axis=1))
    cols = np.flatnonzero(masks.latent.any(axis=0))
    y0, y1 = rows[0] * LATENT_BLOCK - spec.crop_context, (rows[-1] + 1) * LATENT_BLOCK + spec.crop_context
    x0, x1 = cols[0] * LATENT_BLOCK - spec.crop_context, (cols[-1] + 1) * LATENT_BLOCK + spec.crop_context
    y0, y1 = _fit_span(int(y0), int(y1), height, spec.crop_min_size)
    x0, x1 = _fit_span(int(x0), int(x1), width, spec.crop_min_size)
    if (y0, y1, x0, x1) == (0, height, 0, width):
        return None
    fraction = (y1 - y0) * (x1 - x0) / (width * height)
    if spec.crop == "auto" and fraction > spec.crop_max_fraction:
        return None
    return y0, y1, x0, x1


def _fit_span(start: int, end: int, limit: int, min_size: int) -> tuple[int, int]:
    """[start, end) widened to a multiple of CROP_MULTIPLE (at least min_size), kept inside [0, limit)."""
    start, end = max(0, start), min(limit, end)  # context beyond the image is not context
    size = max(end - start, min(min_size, limit))
    size = min(limit, -(-size // CROP_MULTIPLE) * CROP_MULTIPLE)
    centre = (start + end) // 2
    begin = min(max(0, centre - size // 2), limit - size)
    return begin, begin + size


# --- pixels -------------------------------------------------------------------------------------------


def composite(parent: Image.Image, drawn: Image.Image, soft: np.ndarray) -> Image.Image:
    """parent x (1 - soft) + drawn x soft, and exactly the parent's pixel wherever soft is 0."""
    old = np.asarray(parent.convert("RGB"), dtype=np.float32)
    new = np.asarray(drawn.convert("RGB"), dtype=np.float32)
    weight = soft[..., None]
    blended = np.rint(old * (1.0 - weight) + new * weight).clip(0, 255).astype(np.uint8)
    kept = np.asarray(parent.convert("RGB"), dtype=np.uint8)
    return Image.fromarray(np.where(weight > 0, blended, kept), mode="RGB")


def zoomed_out(parent: Image.Image, zoom: float) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """The parent scaled by 1 / zoom in the centre of a frame of its size, and where it lies.

    The border is filled with the parent's mean colour (it is redrawn from noise; the fill only
    shows through where a latent block is kept).
    """
    width, height = parent.size
    w, h = max(1, round(width / zoom)), max(1, round(height / zoom))
    left, top = (width - w) // 2, (height - h) // 2
    mean = tuple(int(v) for v in np.asarray(parent.convert("RGB")).reshape(-1, 3).mean(axis=0))
    frame = Image.new("RGB", (width, height), mean)
    frame.paste(parent.convert("RGB").resize((w, h), Image.Resampling.LANCZOS), (left, top))
    return frame, (top, top + h, left, left + w)


def edited_params(params: RenderParams, spec: EditSpec) -> RenderParams:
    """The settings an edit renders with: the parent's size, and a zoom out's new framing."""
    parent = spec.parent_image()
    frame_zoom = params.frame_zoom * spec.zoom if spec.kind == "zoom_out" else params.frame_zoom
    return replace(
        params, width=parent.width, height=parent.height, hires_scale=1.0, frame_zoom=frame_zoom, edit=spec
    )
