"""Edit renders on diffusers' SDXL inpainting pipeline: keep the parent's pixels, redraw a mask (issue 15).

`render_edit` runs one `EditSpec` (see `edit_plan.py` for the kinds and the geometry):

1. the frame: the parent's image (inpaint, vary) or the parent scaled into the centre (zoom out);
2. the masks: the boxes (or the border) grown by the margin and feathered; the latent mask is
   every 8 x 8 block the feathered mask touches;
3. the window: the whole frame, or (A1111's "only masked") a crop around the mask at full
   resolution when it is small, with the regions' boxes mapped into the crop and SDXL's
   micro-conditioning told where the crop lies (original size = the frame, crop top-left);
4. denoise with `StableDiffusionXLInpaintPipeline` (a 4-channel UNet: latent blending, so every
   step puts back the parent's latents, noised to that step, outside the mask), the regional
   attention processor and the new canvas's conditions, from the seed's full-frame noise
   (sliced to the window, so a crop sees the noise a full redraw would);
5. decode, paste the window back, and composite with the feathered mask: every pixel the mask
   does not touch is the parent's exactly.

An edit draws at the parent image's own size (a high-resolution parent is edited at its size;
no second hires pass). Knows torch and diffusers through the renderer; nothing of chats.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from omost_engine.render.base import InvalidRenderParams, RenderParams, StepCallback
from omost_engine.render.edit_plan import (
    EditMasks,
    EditSpec,
    border_masks,
    boxes_in_window,
    composite,
    crop_window,
    edit_masks,
    zoomed_out,
)
from omost_engine.render.edit_plan import edited_params as edited_params  # re-exported
from omost_engine.render.encoding import Conditions
from omost_engine.render.sampling import draw_noise, first_sigma, initial_latents, seeded_generator

if TYPE_CHECKING:
    from omost_engine.render.pipeline import SDXLRegionalRenderer


@dataclass(frozen=True)
class EditOutcome:
    image: Image.Image
    window: tuple[int, int, int, int]
    """The pixel window that was denoised (top, bottom, left, right); the whole frame if no crop."""
    redrawn_fraction: float
    """Share of the frame's latents the mask redraws."""

    def metadata(self, spec: EditSpec) -> dict[str, str]:
        top, bottom, left, right = self.window
        return {
            "omost:edit": spec.describe(),
            "omost:edit_window": f"{top},{bottom},{left},{right}",
            "omost:edit_redrawn": f"{self.redrawn_fraction:.4f}",
        }


def _frame_and_masks(spec: EditSpec) -> tuple[Image.Image, EditMasks]:
    parent = spec.parent_image()
    width, height = parent.size
    if width % 8 or height % 8:
        raise InvalidRenderParams(f"the parent image must be a multiple of 8 pixels; got {width}x{height}")
    if spec.kind == "zoom_out":
        frame, keep = zoomed_out(parent, spec.zoom)
        return frame, border_masks(width, height, keep, spec.margin, spec.feather)
    return parent, edit_masks(width, height, spec.boxes, spec.margin, spec.feather)


def _window(
    spec: EditSpec, masks: EditMasks, conditions: Conditions, width: int, height: int
) -> tuple[tuple[int, int, int, int], Conditions]:
    """The pixel window to denoise and the conditions with their boxes in that window's grid."""
    window = crop_window(masks, spec, width, height) or (0, height, 0, width)
    boxes = boxes_in_window([r.box for r in conditions.regions], window, width, height)
    boxes[0] = (0, 90, 0, 90)  # the global region covers the whole window
    return window, conditions.with_boxes(boxes)


def render_edit(
    renderer: SDXLRegionalRenderer,
    conditions: Conditions,
    params: RenderParams,
    on_step: StepCallback | None,
    cancel: threading.Event | None,
) -> EditOutcome:
    """Steps 1-5 of the module docstring; `conditions` are the new canvas's, in the output frame."""
    spec = params.edit
    if spec is None:
        raise ValueError("render_edit needs params.edit")
    # 1-2. the frame and the masks
    frame, masks = _frame_and_masks(spec)
    width, height = frame.size
    if (width, height) != (params.width, params.height):
        raise InvalidRenderParams(
            f"an edit draws at its parent's size ({width}x{height}), but the settings say "
            f"{params.width}x{params.height}; build them with edited_params()"
        )
    # 3. the window
    window, local = _window(spec, masks, conditions, width, height)
    y0, y1, x0, x1 = window
    # 4. denoise the window from the seed's full-frame noise
    pipe = renderer.inpaint_pipeline()
    device = pipe._execution_device
    generator = seeded_generator(params.seed, device)
    f = pipe.vae_scale_factor
    noise = draw_noise((1, pipe.unet.config.in_channels, height // f, width // f), generator, pipe.unet.dtype)
    start = initial_latents(noise, first_sigma(pipe.scheduler, params.steps))[
        :, :, y0 // f : y1 // f, x0 // f : x1 // f
    ]
    parent_latents = renderer.encode_image(frame.crop((x0, y0, x1, y1)))
    latent_mask = masks.latent[y0 // f : y1 // f, x0 // f : x1 // f]
    block = np.ones((f, f), dtype=np.uint8)
    mask_image = Image.fromarray(np.kron(latent_mask.astype(np.uint8), block) * 255, mode="L")
    latents = renderer.denoise(
        pipe,
        local,
        (x1 - x0, y1 - y0),
        params,
        generator,
        on_step,
        cancel,
        "edit",
        image=parent_latents,
        mask_image=mask_image,
        strength=1.0,  # inside the mask everything is drawn anew (from the seed's noise)
        num_inference_steps=params.steps,
        width=x1 - x0,
        height=y1 - y0,
        latents=start,
        original_size=(height, width),  # SDXL micro-conditioning: a crop of the whole frame
        crops_coords_top_left=(y0, x0),
        target_size=(y1 - y0, x1 - x0),
    )
    # 5. decode, paste back, composite
    drawn = renderer.decode(latents)
    full = frame.copy()
    full.paste(drawn, (x0, y0))
    image = composite(frame, full, masks.soft)
    return EditOutcome(image=image, window=window, redrawn_fraction=masks.redrawn_fraction)
