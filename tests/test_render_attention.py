"""The fused regional processor equals a literal SPEC 6 implementation, and is local.

`literal_spec6` below is SPEC.md section 6 written out plainly (one region at a time, the full
score matrix, masks by nearest-exact resizing, the scale multiplied into the scores, a separate
plain pass for the unconditional half); the processor under test must match it to 1e-4 in fp32.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from omost_engine.render.attention import (
    RegionalAttention,
    RegionalAttnProcessor,
    StockSelfAttnProcessor,
    install_regional_attention,
    spatial_size,
)

Box = tuple[int, int, int, int]


def literal_spec6(
    attn: Attention,
    hidden: torch.Tensor,  # (1, H*W, C) one conditional row
    region_tokens: list[torch.Tensor],  # each (1, n_r, D)
    boxes: list[Box],
    height: int,
    width: int,
) -> torch.Tensor:
    pixels = height * width
    q = attn.to_q(hidden)[0]  # (HW, inner)
    keys, values, masks, scales = [], [], [], []
    for tokens, (top, bottom, left, right) in zip(region_tokens, boxes, strict=True):
        keys.append(attn.to_k(tokens)[0])
        values.append(attn.to_v(tokens)[0])
        grid = torch.zeros(1, 1, 90, 90)
        grid[0, 0, top:bottom, left:right] = 1.0
        m = F.interpolate(grid, size=(height, width), mode="nearest-exact").reshape(pixels) > 0.5
        n = tokens.shape[1]
        masks.append(m[:, None].expand(pixels, n))
        scales.append(torch.full((n,), pixels / max(int(m.sum()), 1)))
    k, v = torch.cat(keys), torch.cat(values)
    mask, scale = torch.cat(masks, dim=1), torch.cat(scales)
    heads = attn.heads
    d = k.shape[1] // heads
    outs = []
    for h in range(heads):
        qh, kh, vh = (t[:, h * d : (h + 1) * d] for t in (q, k, v))
        scores = (qh @ kh.T) / math.sqrt(d) * scale[None, :]
        scores = scores.masked_fill(~mask, float("-inf"))
        outs.append(torch.softmax(scores, dim=-1) @ vh)
    out = torch.cat(outs, dim=1)[None]
    return attn.to_out[1](attn.to_out[0](out))


def plain_attention(attn: Attention, hidden: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    return AttnProcessor2_0()(attn, hidden, tokens)


def random_boxes(gen: torch.Generator, count: int) -> list[Box]:
    boxes: list[Box] = [(0, 90, 0, 90)]  # the global region
    for _ in range(count):
        top, left = (int(v) for v in torch.randint(0, 80, (2,), generator=gen))
        bottom = min(90, top + int(torch.randint(5, 90, (1,), generator=gen)))
        right = min(90, left + int(torch.randint(5, 90, (1,), generator=gen)))
        boxes.append((top, bottom, left, right))
    return boxes


def make_case(seed: int, channels: int, context_dim: int, heads: int, regions: int):  # type: ignore[no-untyped-def]
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    attn = Attention(
        query_dim=channels, cross_attention_dim=context_dim, heads=heads, dim_head=channels // heads
    )
    attn.eval()
    boxes = random_boxes(gen, regions)
    counts = [int(torch.randint(1, 4, (1,), generator=gen)) * 7 for _ in boxes]  # bags of 7 tokens
    tokens = [torch.randn(1, n, context_dim, generator=gen) for n in counts]
    negative = torch.randn(1, 7, context_dim, generator=gen)
    return attn, boxes, counts, tokens, negative, gen


CASES = [
    # seed, latent (h, w), level (how many halvings), channels, context dim, heads, local regions
    (0, (16, 16), 0, 32, 24, 2, 3),
    (1, (13, 9), 0, 16, 8, 1, 4),  # odd latent size
    (2, (13, 9), 1, 16, 8, 2, 2),  # odd size at the next level down: 7 x 5
    (3, (11, 17), 2, 64, 32, 4, 6),  # 3 x 5: boxes smaller than a pixel vanish
    (4, (12, 20), 1, 40, 16, 5, 5),
]


@pytest.mark.parametrize(("seed", "latent", "level", "channels", "context_dim", "heads", "regions"), CASES)
@torch.no_grad()
def test_fused_equals_literal_spec6_with_cfg_batch(
    seed: int, latent: tuple[int, int], level: int, channels: int, context_dim: int, heads: int, regions: int
) -> None:
    attn, boxes, _counts, tokens, negative, gen = make_case(seed, channels, context_dim, heads, regions)
    height, width = latent
    for _ in range(level):
        height, width = (height + 1) // 2, (width + 1) // 2
    assert spatial_size(latent, height * width) == (height, width)
    uncond = torch.randn(1, height * width, channels, generator=gen)
    cond = torch.randn(1, height * width, channels, generator=gen)
    combined = torch.cat([*tokens, negative], dim=1)
    context = RegionalAttention(boxes, [t.shape[1] for t in tokens], negative.shape[1], latent, cfg=True)

    fused = RegionalAttnProcessor()(
        attn, torch.cat([uncond, cond]), combined.expand(2, -1, -1), regions=context
    )

    expected_cond = literal_spec6(attn, cond, tokens, boxes, height, width)
    expected_uncond = plain_attention(attn, uncond, negative)
    assert (fused[1:] - expected_cond).abs().max().item() <= 1e-4
    assert (fused[:1] - expected_uncond).abs().max().item() <= 1e-4


@torch.no_grad()
def test_overlapping_and_edge_touching_boxes_without_cfg() -> None:
    attn, _, _, _, negative, gen = make_case(7, 32, 16, 4, 0)
    boxes: list[Box] = [
        (0, 90, 0, 90),
        (0, 45, 0, 90),  # touches top, left and right edges
        (30, 90, 60, 90),  # touches bottom and right, overlaps the one above
        (40, 50, 40, 50),  # inside both
        (0, 90, 0, 1),  # one grid column on the left edge
    ]
    tokens = [torch.randn(1, 5, 16, generator=gen) for _ in boxes]
    latent = (9, 15)
    hidden = torch.randn(1, 9 * 15, 32, generator=gen)
    context = RegionalAttention(boxes, [5] * len(boxes), negative.shape[1], latent, cfg=False)
    fused = RegionalAttnProcessor()(attn, hidden, torch.cat([*tokens, negative], dim=1), regions=context)
    expected = literal_spec6(attn, hidden, tokens, boxes, *latent)
    assert (fused - expected).abs().max().item() <= 1e-4


@torch.no_grad()
def test_perturbing_one_region_changes_nothing_outside_its_box() -> None:
    attn, _, _, _, negative, gen = make_case(11, 32, 16, 2, 0)
    boxes: list[Box] = [(0, 90, 0, 90), (10, 50, 20, 70), (45, 90, 0, 40)]
    tokens = [torch.randn(1, 14, 16, generator=gen) for _ in boxes]
    latent = (18, 12)
    hidden = torch.randn(2, 18 * 12, 32, generator=gen)
    context = RegionalAttention(boxes, [14] * 3, negative.shape[1], latent, cfg=True)
    processor = RegionalAttnProcessor()

    def run(region_tokens: list[torch.Tensor]) -> torch.Tensor:
        combined = torch.cat([*region_tokens, negative], dim=1).expand(2, -1, -1)
        return processor(attn, hidden, combined, regions=context)

    before = run(tokens)
    perturbed = list(tokens)
    perturbed[1] = tokens[1] + torch.randn(tokens[1].shape, generator=gen)
    after = run(perturbed)

    grid = torch.zeros(1, 1, 90, 90)
    top, bottom, left, right = boxes[1]
    grid[..., top:bottom, left:right] = 1
    inside = F.interpolate(grid, size=latent, mode="nearest-exact").reshape(-1) > 0.5
    change = (after - before).abs().amax(dim=-1)  # (2, HW)
    assert change[1, ~inside].max().item() <= 1e-6  # conditional row, outside the box
    assert change[1, inside].min().item() > 1e-3  # ... and every pixel inside noticed
    assert change[0].max().item() <= 1e-6  # the unconditional row never sees region tokens


@torch.no_grad()
def test_masks_and_scales_are_built_once_per_resolution() -> None:
    attn, boxes, counts, tokens, negative, gen = make_case(5, 16, 8, 2, 3)
    latent = (8, 8)
    context = RegionalAttention(boxes, counts, negative.shape[1], latent, cfg=True)
    processor = RegionalAttnProcessor()
    combined = torch.cat([*tokens, negative], dim=1).expand(2, -1, -1)
    for pixels in (64, 16, 64, 16, 4, 64):
        processor(attn, torch.randn(2, pixels, 16, generator=gen), combined, regions=context)
    assert context.plans_built == 3


def test_token_count_mismatch_is_an_error() -> None:
    attn, boxes, counts, _tokens, negative, _ = make_case(6, 16, 8, 2, 1)
    context = RegionalAttention(boxes, counts, negative.shape[1], (4, 4), cfg=False)
    with pytest.raises(ValueError, match="tokens"):
        RegionalAttnProcessor()(attn, torch.randn(1, 16, 16), torch.randn(1, 3, 8), regions=context)


def test_without_regions_the_processor_is_stock_attention() -> None:
    attn, _, _, _, negative, gen = make_case(8, 16, 8, 2, 0)
    hidden = torch.randn(2, 12, 16, generator=gen)
    context = negative.expand(2, -1, -1)
    with torch.no_grad():
        ours = RegionalAttnProcessor()(attn, hidden, context)
        stock = AttnProcessor2_0()(attn, hidden, context)
    assert torch.equal(ours, stock)


def test_install_puts_regional_on_attn2_and_stock_on_attn1() -> None:
    from tests.tiny_sdxl import tiny_unet

    unet = tiny_unet()
    install_regional_attention(unet)
    processors = unet.attn_processors
    attn2 = [name for name in processors if ".attn2." in name]
    attn1 = [name for name in processors if ".attn1." in name]
    assert attn2 and len(attn2) == len(attn1)
    assert all(isinstance(processors[n], RegionalAttnProcessor) for n in attn2)
    assert all(type(processors[n]) is StockSelfAttnProcessor for n in attn1)
