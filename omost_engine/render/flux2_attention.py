"""Omost's regions in FLUX.2's joint attention: one boolean mask per resolution, built once per render.

FLUX.2 has no cross-attention layer to manipulate the way SPEC 6 does for SDXL. Every block attends
over one joint sequence `[text tokens ; image tokens]`: the double-stream blocks concatenate the
two streams (each with its own projections) for attention, and the single-stream blocks run
attention on the already concatenated sequence. Both orders are text first, so one (S, S) mask
serves every block, double and single, and travels as the stock processors' `attention_mask`
through the transformer's `joint_attention_kwargs`; nothing in diffusers is replaced or patched.

The text part is one block of tokens per region (global first, then far to near): each region's
prefixes and suffixes (SPEC 4) encoded as one sequence by the pipeline's own text encoder. With
region r's box resized to the image-token grid (nearest-exact, as SPEC 6 does per UNet level):

* an image token attends to every image token (restricting image-to-image attention would split
  the picture into separate images) and to the text tokens of every region whose box covers it;
  the global region covers everything, so no image row is ever empty;
* a region's text tokens attend to themselves (their own block) and to the image tokens of their
  box; they never see another region's text, so each region's text stream evolves as if it were
  the only prompt, over the part of the picture it describes.

Unlike SPEC 6 there is no per-region score scale: FLUX's text tokens are not a separate softmax
over a small token set but compete with thousands of image tokens, and the mask alone carries the
layout. Guidance: the distilled klein checkpoints take no guidance at all (one conditional pass a
step); the base checkpoints use true classifier-free guidance, whose unconditional pass sees the
negative prompt with no mask (plain attention, as SPEC 6 asks of SDXL's unconditional half).

`regional_mask` is the rule; `RegionalJointAttention` caches its result per token grid for one
render and hands out the `joint_attention_kwargs`. Knows tensors and boxes; nothing of canvases,
text encoders, pipelines or chats.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from omost_engine.render.attention import MASK_ALIGN, Box, box_masks


def regional_mask(
    boxes: Sequence[Box], token_counts: Sequence[int], grid: tuple[int, int], device: Any = "cpu"
) -> torch.Tensor:
    """(1, 1, S, S) bool, True where a query (row) may attend to a key (column); S = T + H * W.

    `boxes[r]` and `token_counts[r]` are region r's 90 x 90 box and its number of text tokens; the
    text blocks come first, in region order, then the H x W image tokens in row-major order (the
    order FLUX.2 packs latents in).
    """
    if len(boxes) != len(token_counts) or not boxes:
        raise ValueError("need one token count per region, and at least one region")
    height, width = grid
    pixels = height * width
    text = sum(token_counts)
    covers = box_masks(boxes, height, width).reshape(len(boxes), pixels)  # (R, HW)
    owner = torch.repeat_interleave(torch.arange(len(boxes)), torch.tensor(list(token_counts)))  # (T,)
    text_to_image = covers[owner]  # (T, HW): text token j sees the pixels of its region's box
    mask = torch.zeros(text + pixels, text + pixels, dtype=torch.bool)
    mask[:text, :text] = owner[:, None] == owner[None, :]
    mask[:text, text:] = text_to_image
    mask[text:, :text] = text_to_image.T
    mask[text:, text:] = True
    return mask[None, None].to(device)


@dataclass
class RegionalJointAttention:
    """One render's regions: masks built once per image-token grid (base pass, hires pass)."""

    boxes: tuple[Box, ...]
    token_counts: tuple[int, ...]
    _biases: dict[tuple[int, int, str, torch.dtype], torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def text_tokens(self) -> int:
        return sum(self.token_counts)

    def bias(self, grid: tuple[int, int], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """The mask as an additive 0 / -inf bias in the attention's dtype, cached per grid.

        SDPA would convert a boolean mask to this on every call of every block; converting once
        per render saves that, and the padded allocation keeps the rows aligned for the
        memory-efficient GPU kernels (they refuse a misaligned bias).
        """
        key = (grid[0], grid[1], str(device), dtype)
        if key not in self._biases:
            allowed = regional_mask(self.boxes, self.token_counts, grid, device)
            size = allowed.shape[-1]
            padded = -(-size // MASK_ALIGN) * MASK_ALIGN
            bias = torch.zeros(1, 1, size, padded, device=device, dtype=dtype)[..., :size]
            bias.masked_fill_(~allowed, float("-inf"))
            self._biases[key] = bias
        return self._biases[key]

    def kwargs(self, grid: tuple[int, int], device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
        """The transformer's `joint_attention_kwargs` for the conditional pass at this grid."""
        return {"attention_mask": self.bias(grid, device, dtype)}
