"""Edits that keep the picture (issue 15, renderer side): geometry, then the tiny SDXL end to end.

What a user would notice: after "add a red boat" every pixel outside the boat's grown, feathered
box is the parent's exactly and the box itself is drawn anew; Vary region changes only that
region; Zoom out keeps the parent, scaled, in the centre and draws the border; the PNG says what
was done.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from omost_engine.canvas_code import parse
from omost_engine.render.base import InvalidRenderParams, RenderParams, check_params
from omost_engine.render.edit_plan import (
    EditSpec,
    boxes_in_window,
    crop_window,
    decide_edit,
    edit_masks,
    png_bytes,
    vary_boxes,
    zoom_boxes,
    zoomed_out,
)
from omost_engine.render.edits import edited_params
from omost_engine.render.metadata import encode_png, read_png_metadata
from omost_engine.render.pipeline import SDXLRegionalRenderer
from tests.tiny_sdxl import build_tiny_sdxl

GLOBAL = (
    "canvas = Canvas()\ncanvas.set_global_description(description='A harbour at dusk', "
    "detailed_descriptions=['A calm sea'], tags='sea, harbour', HTML_web_color_name='steelblue')\n"
)


def region(description: str, location: str, area: str, color: str = "red", distance: float = 2.0) -> str:
    return (
        f"canvas.add_local_description(location='{location}', offset='no offset', area='{area}', "
        f"distance_to_viewer={distance}, description='{description}', detailed_descriptions=[], "
        f"tags='', atmosphere='', style='', quality_meta='', HTML_web_color_name='{color}')\n"
    )


LIGHTHOUSE = region("A lighthouse", "on the right", "a large vertical area", "white", 3.0)
BEFORE = parse(GLOBAL + LIGHTHOUSE + region("A gull", "on the top-left", "a small square area"))
AFTER = parse(GLOBAL + LIGHTHOUSE + region("A red boat", "on the top-left", "a small square area"))
SMALL_BOX = (0, 40, 0, 40)  # on the top-left, a small square area
PARAMS = RenderParams(width=128, height=128, steps=3, seed=1480316567)


# --- deciding what to redraw ------------------------------------------------------------------------


def test_a_changed_local_region_is_inpainted_and_the_summary_names_it() -> None:
    decision = decide_edit(BEFORE, AFTER)
    assert decision.mode == "inpaint"
    assert decision.boxes == (SMALL_BOX,)
    assert decision.regions == ("A red boat.", "A gull.")  # added, removed


def test_a_changed_scene_or_a_large_change_redraws_everything() -> None:
    new_scene = parse(GLOBAL.replace("A harbour at dusk", "A harbour at noon") + LIGHTHOUSE)
    assert decide_edit(BEFORE, new_scene).mode == "full"
    assert decide_edit(BEFORE, new_scene).reason == "the scene changed"
    recoloured = parse(GLOBAL.replace("steelblue", "navy") + LIGHTHOUSE)
    assert decide_edit(parse(GLOBAL + LIGHTHOUSE), recoloured).mode == "full"
    bigger = parse(GLOBAL + LIGHTHOUSE.replace("A lighthouse", "A tall lighthouse"))
    assert decide_edit(parse(GLOBAL + LIGHTHOUSE), bigger).mode == "inpaint"  # 45 x 90: half the frame
    assert (
        decide_edit(parse(GLOBAL + LIGHTHOUSE), bigger, max_area=0.4).reason == "most of the picture changed"
    )
    assert decide_edit(BEFORE, BEFORE).mode == "full"


def test_a_moved_region_redraws_its_old_and_new_box() -> None:
    moved = parse(GLOBAL + LIGHTHOUSE + region("A gull", "on the bottom-left", "a small square area"))
    decision = decide_edit(BEFORE, moved)
    assert decision.mode == "inpaint"
    assert set(decision.boxes) == {(0, 40, 0, 40), (50, 90, 0, 40)}


def test_masks_grow_by_the_margin_and_feather_to_zero() -> None:
    masks = edit_masks(128, 128, [SMALL_BOX], margin=8, feather=8)
    # the box is pixels 0..57 (40 / 90 x 128, rounded out); grown to 65, feathered to 73
    assert masks.soft[:65, :65].min() == 1.0
    assert 0 < masks.soft[60, 69] < 1
    assert masks.soft[:, 74:].max() == 0 and masks.soft[74:, :].max() == 0
    assert masks.latent.shape == (16, 16)
    assert masks.latent[:9, :10].all() and masks.latent[9, :9].all() and not masks.latent[10:, :].any()
    assert not masks.latent[9, 9]  # the feather's rounded corner misses that block


def test_the_crop_window_holds_the_mask_in_multiples_of_32() -> None:
    masks = edit_masks(256, 256, [SMALL_BOX], margin=8, feather=8)
    spec = EditSpec("inpaint", b"", (SMALL_BOX,), crop_min_size=64, crop_context=16)
    window = crop_window(masks, spec, 256, 256)
    assert window is not None
    top, bottom, left, right = window
    assert (top, left) == (0, 0) and bottom % 32 == 0 and right % 32 == 0
    assert bottom >= 10 * 8 + 16 and (bottom - top) * (right - left) < 256 * 256 / 2
    assert crop_window(masks, EditSpec("inpaint", b"", (SMALL_BOX,), crop="never"), 256, 256) is None
    # boxes in the window's own grid: the small box fills most of it, the far one is dropped
    mapped = boxes_in_window([(0, 90, 0, 90), SMALL_BOX, (70, 90, 70, 90)], window, 256, 256)
    assert mapped[1] is not None and mapped[1][0] == 0 and mapped[1][1] > 45
    assert mapped[2] is None


def test_zoom_boxes_shrink_towards_the_centre() -> None:
    assert zoom_boxes([(0, 90, 0, 90), SMALL_BOX], 2.0) == ((22, 68, 22, 68), (22, 42, 22, 42))
    assert zoom_boxes([SMALL_BOX], 1.0) == (SMALL_BOX,)


def test_edit_settings_are_checked() -> None:
    with pytest.raises(InvalidRenderParams, match="at least one box"):
        check_params(RenderParams(edit=EditSpec("inpaint", b"")))
    with pytest.raises(InvalidRenderParams, match="inside the 90 x 90 grid"):
        check_params(RenderParams(edit=EditSpec("vary", b"", ((0, 95, 0, 10),))))
    with pytest.raises(InvalidRenderParams, match="zoom must be above 1"):
        check_params(RenderParams(edit=EditSpec("zoom_out", b"", zoom=1.0)))
    with pytest.raises(ValueError, match="regions 1 to 2"):
        vary_boxes(BEFORE, 3)


def test_an_edit_at_another_size_than_its_parent_is_refused(
    renderer: SDXLRegionalRenderer, parent: Image.Image
) -> None:
    spec = EditSpec("inpaint", png_bytes(parent), (SMALL_BOX,))
    with pytest.raises(InvalidRenderParams, match="its parent's size"):
        renderer.render(AFTER, RenderParams(width=64, height=64, steps=1, edit=spec))


# --- the tiny SDXL, end to end ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def renderer(tmp_path_factory: pytest.TempPathFactory) -> SDXLRegionalRenderer:
    folder = build_tiny_sdxl(tmp_path_factory.mktemp("sdxl") / "tiny-sdxl")
    return SDXLRegionalRenderer(str(folder), device="cpu", preview_every=0)


@pytest.fixture(scope="module")
def parent(renderer: SDXLRegionalRenderer) -> Image.Image:
    return renderer.render(BEFORE, PARAMS).image


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def assert_kept_outside_and_redrawn_inside(
    result: Image.Image, parent: Image.Image, soft: np.ndarray
) -> None:
    diff = np.abs(pixels(result) - pixels(parent)).max(axis=-1)
    assert result.size == parent.size
    assert diff[soft == 0].max() == 0  # every pixel the feathered mask misses: the parent's, exactly
    assert diff[soft == 1].mean() > 2.0  # the box itself is drawn anew


@pytest.mark.parametrize("crop", ["never", "always"])
def test_an_inpaint_edit_keeps_every_pixel_outside_the_feathered_box(
    renderer: SDXLRegionalRenderer, parent: Image.Image, crop: Any
) -> None:
    decision = decide_edit(BEFORE, AFTER)
    spec = EditSpec(
        "inpaint",
        png_bytes(parent),
        decision.boxes,
        margin=8,
        feather=8,
        crop=crop,
        crop_min_size=64,
        crop_context=8,
    )
    steps: list[Any] = []
    result = renderer.render(AFTER, edited_params(PARAMS, spec), on_step=steps.append)
    assert_kept_outside_and_redrawn_inside(
        result.image, parent, edit_masks(128, 128, decision.boxes, 8, 8).soft
    )
    assert [s.phase for s in steps] == ["edit"] * PARAMS.steps
    window = tuple(int(v) for v in result.metadata["omost:edit_window"].split(","))
    if crop == "always":
        assert window == (0, 96, 0, 96)  # the mask's blocks plus context, in multiples of 32
    else:
        assert window == (0, 128, 0, 128)
    assert result.metadata["omost:edit"].startswith("inpaint boxes=0,40,0,40")
    restored = read_png_metadata(encode_png(result.image, result.metadata))
    assert restored is not None and restored.canvas == AFTER and restored.params.seed == PARAMS.seed


def test_vary_region_redraws_only_that_region_with_a_new_seed(
    renderer: SDXLRegionalRenderer, parent: Image.Image
) -> None:
    (lighthouse_box,) = vary_boxes(BEFORE, 1)
    assert lighthouse_box == BEFORE.regions[0].box
    spec = EditSpec("vary", png_bytes(parent), (lighthouse_box,), margin=4, feather=4, crop="never")
    params = edited_params(RenderParams(width=128, height=128, steps=3, seed=99), spec)
    result = renderer.render(BEFORE, params).image
    assert_kept_outside_and_redrawn_inside(result, parent, edit_masks(128, 128, [lighthouse_box], 4, 4).soft)


def test_zoom_out_keeps_the_scaled_parent_in_the_centre_and_draws_the_border(
    renderer: SDXLRegionalRenderer, parent: Image.Image
) -> None:
    spec = EditSpec("zoom_out", png_bytes(parent), zoom=2.0, margin=4, feather=4)
    params = edited_params(PARAMS, spec)
    assert params.frame_zoom == 2.0
    result = renderer.render(BEFORE, params)
    image = result.image
    assert image.size == (128, 128)
    frame, keep = zoomed_out(parent, 2.0)
    assert keep == (32, 96, 32, 96)
    centre = (slice(32 + 8, 96 - 8), slice(32 + 8, 96 - 8))  # inside the margin and the feather
    scaled = pixels(parent.resize((64, 64), Image.Resampling.LANCZOS))
    assert np.array_equal(pixels(image)[centre], scaled[8:56, 8:56])
    border = np.ones((128, 128), dtype=bool)
    border[28:100, 28:100] = False
    assert np.abs(pixels(image) - pixels(frame)).max(axis=-1)[border].mean() > 2.0
    # the boxes are drawn in the new frame: scaled about the centre
    conditions = renderer.conditions(BEFORE, params)
    assert [r.box for r in conditions.regions] == [
        (0, 90, 0, 90),
        *zoom_boxes([r.box for r in BEFORE.regions], 2.0),
    ]
    restored = read_png_metadata(encode_png(image, result.metadata))
    assert restored is not None and restored.params.frame_zoom == 2.0
    assert result.metadata["omost:edit"] == "zoom_out zoom=2 margin=4 feather=4"


def test_a_reply_to_a_zoomed_picture_redraws_its_boxes_in_the_zoomed_frame(
    renderer: SDXLRegionalRenderer, parent: Image.Image, tmp_path: Path
) -> None:
    zoom = EditSpec("zoom_out", png_bytes(parent), zoom=2.0, margin=4, feather=4)
    zoomed_params = edited_params(PARAMS, zoom)
    zoomed = renderer.render(BEFORE, zoomed_params).image
    decision = decide_edit(BEFORE, AFTER, frame_zoom=zoomed_params.frame_zoom)
    assert decision.boxes == zoom_boxes([SMALL_BOX], 2.0)
    spec = EditSpec("inpaint", png_bytes(zoomed), decision.boxes, margin=4, feather=4, crop="never")
    edit_params = edited_params(zoomed_params, spec)
    assert edit_params.frame_zoom == 2.0  # an inpaint keeps the parent's framing
    result = renderer.render(AFTER, edit_params).image
    assert_kept_outside_and_redrawn_inside(result, zoomed, edit_masks(128, 128, decision.boxes, 4, 4).soft)
