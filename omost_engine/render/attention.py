"""Regional cross-attention for SDXL: Omost's attention-score manipulation (SPEC.md section 6), fused.

SPEC 6, for a cross-attention layer with an H x W query grid and the T tokens of every region:

    S[p, j] = (q_p . k_j / sqrt(d)) * s_j,   S = -inf where M[p, j] = 0,   out = softmax_j(S) V

with M[p, j] = 1 where the box of token j's region (90 x 90 grid, resized to H x W with
nearest-exact) covers pixel p, and s_j = HW / (pixels that region covers). The reference renderer
materialises S per layer and per step, rebuilds the masks every call and runs the negative pass
separately. Here it is one `F.scaled_dot_product_attention` call per layer:

* the per-token scale is folded into the keys: (q . (s_j k_j)) = s_j (q . k_j), so SDPA's own
  1/sqrt(d) scaling then gives S exactly;
* the masks and scales are built once per resolution per render (`RegionalAttention.plan`) and
  cached as an additive 0 / -inf bias;
* classifier-free guidance is batched: every batch row carries the same combined token set
  [regions' tokens ; negative tokens] (the pipeline passes it as both prompt and negative prompt),
  keys/values are projected once, the rows are stacked along the query axis, and a block mask lets
  the unconditional rows see only the negative tokens (plain attention, as SPEC 6 asks) and the
  conditional rows only the region tokens their pixel is in.

`RegionalAttnProcessor` is installed on every attn2 layer with `unet.set_attn_processor` and
receives the per-render `RegionalAttention` as the named argument `regions` through the
pipeline's `cross_attention_kwargs`. Self-attention (attn1) keeps diffusers' stock maths
(`StockSelfAttnProcessor` only accepts and ignores `regions`, which diffusers would otherwise warn
about on every call). Nothing in diffusers is monkeypatched.

This module knows tensors, boxes and diffusers' `Attention`; it knows nothing of canvases,
prompts, pipelines or chats.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

GRID = 90
Box = tuple[int, int, int, int]
"""(top, bottom, left, right) on the 90 x 90 grid, bottom/right exclusive (omost_engine.canvas)."""

MASK_ALIGN = 16
"""Memory-efficient SDPA kernels want the bias's last-dim stride aligned; we allocate it padded."""


def box_masks(boxes: Sequence[Box], height: int, width: int) -> torch.Tensor:
    """(R, height, width) bool: each 90 x 90 box resized to the layer's grid with nearest-exact."""
    grid = torch.zeros(len(boxes), 1, GRID, GRID)
    for i, (top, bottom, left, right) in enumerate(boxes):
        grid[i, 0, top:bottom, left:right] = 1.0
    resized = F.interpolate(grid, size=(height, width), mode="nearest-exact")
    return resized[:, 0] > 0.5


def spatial_size(latent_size: tuple[int, int], pixels: int) -> tuple[int, int]:
    """The (H, W) of a UNet level with `pixels` = H * W queries, walking down from the latent size.

    SDXL's down-samplers are stride-2 3x3 convolutions with padding 1: each level is ceil(n / 2).
    """
    height, width = latent_size
    while height * width > pixels and (height > 1 or width > 1):
        height, width = (height + 1) // 2, (width + 1) // 2
    if height * width != pixels:
        raise ValueError(
            f"cannot place {pixels} query pixels on the latent grid {latent_size[0]}x{latent_size[1]}"
        )
    return height, width


@dataclass(frozen=True)
class AttentionPlan:
    """What one resolution needs, built once per render: the additive bias and the key scales."""

    bias: torch.Tensor
    """(rows * H * W, T + N), 0 where a query may attend and -inf elsewhere; rows stacked
    unconditional first, then conditional (diffusers' CFG order)."""
    key_scale: torch.Tensor
    """(T + N, 1): s_j for region tokens (SPEC 6), 1 for negative tokens."""


class RegionalAttention:
    """One render's region data for the attention processor (passed as `regions=`).

    `boxes[r]` and `token_counts[r]` describe region r (global first); its tokens come in that
    order in the condition, followed by `negative_tokens` tokens of the negative prompt. With
    `cfg`, the batch's first half is unconditional (it sees only the negative tokens).
    """

    def __init__(
        self,
        boxes: Sequence[Box],
        token_counts: Sequence[int],
        negative_tokens: int,
        latent_size: tuple[int, int],
        cfg: bool = True,
    ) -> None:
        if len(boxes) != len(token_counts) or not boxes:
            raise ValueError("need one token count per region and at least one region")
        self.boxes: tuple[Box, ...] = tuple((int(t), int(b), int(le), int(r)) for t, b, le, r in boxes)
        self.token_counts = tuple(int(n) for n in token_counts)
        self.negative_tokens = int(negative_tokens)
        self.latent_size = latent_size
        self.cfg = cfg
        self.region_tokens = sum(self.token_counts)
        self.total_tokens = self.region_tokens + self.negative_tokens
        self._plans: dict[tuple[int, int, torch.device, torch.dtype], AttentionPlan] = {}
        self.plans_built = 0

    def plan(self, pixels: int, batch: int, device: torch.device, dtype: torch.dtype) -> AttentionPlan:
        key = (pixels, batch, device, dtype)
        cached = self._plans.get(key)
        if cached is None:
            cached = self._build(pixels, batch, device, dtype)
            self._plans[key] = cached
            self.plans_built += 1
        return cached

    def _build(self, pixels: int, batch: int, device: torch.device, dtype: torch.dtype) -> AttentionPlan:
        height, width = spatial_size(self.latent_size, pixels)
        masks = box_masks(self.boxes, height, width).reshape(len(self.boxes), pixels)  # (R, HW)
        covered = masks.sum(dim=1).to(torch.float32)
        # A region too small to cover a pixel at this resolution is masked out entirely; its
        # scale is then irrelevant, so clamp to avoid dividing by zero.
        region_scale = pixels / covered.clamp(min=1.0)
        region_of_token = torch.repeat_interleave(
            torch.arange(len(self.boxes)), torch.tensor(self.token_counts)
        )
        cond = torch.zeros(pixels, self.total_tokens, dtype=torch.bool)
        cond[:, : self.region_tokens] = masks[region_of_token].T
        uncond = torch.zeros(pixels, self.total_tokens, dtype=torch.bool)
        uncond[:, self.region_tokens :] = True
        if self.cfg:
            if batch % 2:
                raise ValueError(f"a CFG batch must be even, got {batch}")
            allowed = torch.cat([uncond] * (batch // 2) + [cond] * (batch // 2))
        else:
            allowed = torch.cat([cond] * batch)
        padded = -(-self.total_tokens // MASK_ALIGN) * MASK_ALIGN
        storage = torch.zeros(allowed.shape[0], padded, dtype=dtype, device=device)
        bias = storage[:, : self.total_tokens]
        bias.masked_fill_(~allowed.to(device), float("-inf"))
        key_scale = torch.ones(self.total_tokens, 1, dtype=torch.float32)
        key_scale[: self.region_tokens, 0] = region_scale[region_of_token]
        return AttentionPlan(bias=bias, key_scale=key_scale.to(device=device, dtype=dtype))


class RegionalAttnProcessor:
    """The attn2 processor: SPEC 6 in one fused SDPA call; stock attention when `regions` is None."""

    def __init__(self) -> None:
        self._stock = AttnProcessor2_0()

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        regions: RegionalAttention | None = None,
    ) -> torch.Tensor:
        if regions is None or encoder_hidden_states is None:
            return self._stock(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        if attention_mask is not None:
            raise ValueError("regional attention builds its own mask; got an encoder attention mask too")
        if hidden_states.ndim != 3 or attn.spatial_norm is not None or attn.group_norm is not None:
            raise ValueError("regional attention expects a transformer block's (batch, pixels, channels)")
        if encoder_hidden_states.shape[1] != regions.total_tokens:
            raise ValueError(
                f"the condition has {encoder_hidden_states.shape[1]} tokens but the regions "
                f"describe {regions.total_tokens}"
            )
        batch, pixels, _ = hidden_states.shape
        residual = hidden_states
        query = attn.to_q(hidden_states)
        # Every row carries the same combined token set, so project it once.
        context = encoder_hidden_states[:1]
        if attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        key = attn.to_k(context)
        value = attn.to_v(context)
        inner_dim = key.shape[-1]
        heads = attn.heads
        head_dim = inner_dim // heads

        # (batch, HW, inner) -> one sequence of batch * HW queries: (1, heads, batch * HW, d).
        query = query.reshape(1, batch * pixels, heads, head_dim).transpose(1, 2)
        key = key.view(1, -1, heads, head_dim).transpose(1, 2)
        value = value.view(1, -1, heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        plan = regions.plan(pixels, batch, query.device, query.dtype)
        key = key * plan.key_scale  # s_j folded into k_j: q . (s_j k_j) = s_j (q . k_j)
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=plan.bias, dropout_p=0.0)

        out = out.transpose(1, 2).reshape(batch, pixels, inner_dim).to(query.dtype)
        out = attn.to_out[0](out)
        out = attn.to_out[1](out)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


class StockSelfAttnProcessor(AttnProcessor2_0):
    """diffusers' AttnProcessor2_0 unchanged, except that it accepts (and ignores) `regions`.

    cross_attention_kwargs reach every attention layer; without this, diffusers logs a warning
    for each of SDXL's 70 self-attention layers at every step.
    """

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        regions: RegionalAttention | None = None,
    ) -> torch.Tensor:
        result: torch.Tensor = super().__call__(
            attn, hidden_states, encoder_hidden_states, attention_mask, temb
        )
        return result


def install_regional_attention(unet: Any) -> RegionalAttnProcessor:
    """Regional processor on every attn2 (cross-attention) layer, stock SDPA everywhere else."""
    regional = RegionalAttnProcessor()
    stock = StockSelfAttnProcessor()
    processors = {
        name: regional if name.endswith("attn2.processor") else stock for name in unet.attn_processors
    }
    unet.set_attn_processor(processors)
    return regional
