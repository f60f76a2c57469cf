"""Benchmark the regional renderer's two budgets, as ratios measured in one run.

1. Per UNet step (one CFG-batched UNet call): the fused regional processor (attention.py) against
   diffusers' stock SDPA processor at the same token count (every row attends to the same
   [regions ; negative] token set, unmasked), and against a literal SPEC 6 processor in the
   reference renderer's style (full score matrix per region set, masks rebuilt every call, the
   negative pass run separately). On the CPU a UNet larger than the test one; with CUDA also an
   SDXL-sized UNet (random weights) at 1024 x 1024 with 7 regions, with peak GPU memory.
2. Text-encoder passes on the seed conversation's second turn, after its first turn, with and
   without the bag cache (tiny SDXL text stack; passes are what the cache saves, not model size).

    python bench/bench_render.py            # CPU figures; adds the SDXL-sized run when CUDA exists
    python bench/bench_render.py --quick    # fewer repeats
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from omost_engine.render.attention import (
    RegionalAttention,
    RegionalAttnProcessor,
    StockSelfAttnProcessor,
    box_masks,
    spatial_size,
)

# Seven regions (global + six) like the seed canvas, two bags each.
BOXES = [
    (0, 90, 0, 90),
    (10, 80, 10, 80),
    (15, 75, 0, 60),
    (15, 75, 30, 90),
    (0, 30, 0, 30),
    (45, 90, 20, 70),
    (5, 45, 50, 90),
]
BAGS_PER_REGION = 2


class LiteralSpec6Processor:
    """SPEC 6 as the reference renderer computes it: explicit scores, masks rebuilt every call."""

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        regions: RegionalAttention | None = None,
    ) -> torch.Tensor:
        assert regions is not None and encoder_hidden_states is not None
        batch, pixels, _ = hidden_states.shape
        half = batch // 2
        t = regions.region_tokens
        # Negative half: plain attention over the negative tokens, as its own pass.
        uncond = AttnProcessor2_0()(attn, hidden_states[:half], encoder_hidden_states[:half, t:])
        cond_h = hidden_states[half:]
        q = attn.to_q(cond_h)
        k = attn.to_k(encoder_hidden_states[half:, :t])
        v = attn.to_v(encoder_hidden_states[half:, :t])
        heads = attn.heads
        d = q.shape[-1] // heads
        q, k, v = (x.view(half, -1, heads, d).transpose(1, 2) for x in (q, k, v))
        height, width = spatial_size(regions.latent_size, pixels)
        masks = box_masks(regions.boxes, height, width).reshape(len(regions.boxes), pixels)
        per_token_mask = torch.cat(
            [m[:, None].expand(pixels, n) for m, n in zip(masks, regions.token_counts, strict=True)], dim=1
        ).to(q.device)
        scale = torch.cat(
            [
                torch.full((n,), pixels / max(int(m.sum()), 1))
                for m, n in zip(masks, regions.token_counts, strict=True)
            ]
        ).to(q.device, q.dtype)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(d) * scale
        scores = scores.masked_fill(~per_token_mask, float("-inf"))
        out = torch.softmax(scores, dim=-1) @ v
        out = out.transpose(1, 2).reshape(half, pixels, heads * d)
        cond = attn.to_out[1](attn.to_out[0](out))
        return torch.cat([uncond, cond])


class SharedKVStockProcessor(RegionalAttnProcessor):
    """Plain attention with the regional processor's data layout (K/V projected once, CFG rows
    stacked), but no mask and no scale: isolates what the masks and scales cost."""

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        regions: RegionalAttention | None = None,
    ) -> torch.Tensor:
        assert encoder_hidden_states is not None
        batch, pixels, _ = hidden_states.shape
        query = attn.to_q(hidden_states)
        key = attn.to_k(encoder_hidden_states[:1])
        value = attn.to_v(encoder_hidden_states[:1])
        heads = attn.heads
        d = key.shape[-1] // heads
        query = query.reshape(1, batch * pixels, heads, d).transpose(1, 2)
        key = key.view(1, -1, heads, d).transpose(1, 2)
        value = value.view(1, -1, heads, d).transpose(1, 2)
        out = F.scaled_dot_product_attention(query, key, value)
        out = out.transpose(1, 2).reshape(batch, pixels, heads * d)
        return attn.to_out[1](attn.to_out[0](out))


def bench_unet(config: dict[str, Any]) -> UNet2DConditionModel:
    return UNet2DConditionModel(**config)


CPU_UNET = dict(
    block_out_channels=(64, 128, 256),
    layers_per_block=2,
    sample_size=64,
    in_channels=4,
    out_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=(1, 2, 4),  # heads (diffusers' legacy name): head dim 64 as in SDXL
    transformer_layers_per_block=(1, 1, 2),
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=32,
    projection_class_embeddings_input_dim=6 * 32 + 1280,
    cross_attention_dim=2048,
    norm_num_groups=32,
)

SDXL_UNET = dict(
    block_out_channels=(320, 640, 1280),
    layers_per_block=2,
    sample_size=128,
    in_channels=4,
    out_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=(5, 10, 20),
    transformer_layers_per_block=(1, 2, 10),
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
    cross_attention_dim=2048,
    norm_num_groups=32,
)


def time_interleaved(
    variants: dict[str, Callable[[], Any]], sync: Callable[[], None], repeats: int
) -> dict[str, float]:
    """Median seconds per variant, the variants taking turns so machine noise hits them alike."""
    for fn in variants.values():  # warm-up (kernel selection, allocator)
        fn()
        fn()
    sync()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def unet_step_ratios(
    config: dict[str, Any], latent: int, device: torch.device, dtype: torch.dtype, repeats: int
) -> dict[str, float]:
    torch.manual_seed(0)
    unet = bench_unet(config).eval()
    if device.type != "cpu" or dtype != torch.float32:
        unet = unet.to(device, dtype)
    tokens = [77 * BAGS_PER_REGION] * len(BOXES)
    regions = RegionalAttention(BOXES, tokens, 77, (latent, latent), cfg=True)
    total = regions.total_tokens
    sample = torch.randn(2, 4, latent, latent, device=device, dtype=dtype)
    context = torch.randn(1, total, config["cross_attention_dim"], device=device, dtype=dtype).expand(
        2, -1, -1
    )
    pooled = config["projection_class_embeddings_input_dim"] - 6 * config["addition_time_embed_dim"]
    added = {
        "text_embeds": torch.randn(2, pooled, device=device, dtype=dtype),
        "time_ids": torch.tensor(
            [[latent * 8, latent * 8, 0, 0, latent * 8, latent * 8]] * 2, device=device
        ).to(dtype),
    }
    t = torch.tensor(500, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def install(cross: Any) -> None:
        stock = StockSelfAttnProcessor()
        unet.set_attn_processor(
            {n: cross if n.endswith("attn2.processor") else stock for n in unet.attn_processors}
        )

    def step(processor: Any, kwargs: dict[str, Any] | None) -> Callable[[], Any]:
        def run() -> Any:
            install(processor)
            with torch.no_grad():
                return unet(sample, t, context, added_cond_kwargs=added, cross_attention_kwargs=kwargs)

        return run

    variants = {
        "stock": step(StockSelfAttnProcessor(), None),
        "stock_shared_kv": step(SharedKVStockProcessor(), {"regions": regions}),
        "regional": step(RegionalAttnProcessor(), {"regions": regions}),
        "literal": step(LiteralSpec6Processor(), {"regions": regions}),
    }
    peaks: dict[str, float] = {}
    if device.type == "cuda":
        for name, fn in variants.items():
            fn()
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            fn()
            torch.cuda.synchronize()
            peaks[name] = torch.cuda.max_memory_allocated() / 2**30
    results = time_interleaved(variants, sync, repeats)
    results["tokens"] = total
    results.update({f"peak_gib_{k}": v for k, v in peaks.items()})
    return results


def attention_layer_ratios(device: torch.device, dtype: torch.dtype, repeats: int) -> dict[str, float]:
    """One SDXL attn2 layer at the 64 x 64 level of a 1024 px image (640 channels): the layer alone."""
    torch.manual_seed(0)
    attn = Attention(query_dim=640, cross_attention_dim=2048, heads=10, dim_head=64).to(device, dtype).eval()
    tokens = [77 * BAGS_PER_REGION] * len(BOXES)
    latent = 128
    pixels = (latent // 2) ** 2
    regions = RegionalAttention(BOXES, tokens, 77, (latent, latent), cfg=True)
    hidden = torch.randn(2, pixels, 640, device=device, dtype=dtype)
    context = torch.randn(1, regions.total_tokens, 2048, device=device, dtype=dtype).expand(2, -1, -1)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    stock, shared = AttnProcessor2_0(), SharedKVStockProcessor()
    regional, literal = RegionalAttnProcessor(), LiteralSpec6Processor()
    variants: dict[str, Callable[[], Any]] = {
        "stock": lambda: stock(attn, hidden, context),
        "stock_shared_kv": lambda: shared(attn, hidden, context, regions=regions),
        "regional": lambda: regional(attn, hidden, context, regions=regions),
        "literal": lambda: literal(attn, hidden, context, regions=regions),
    }
    out = time_interleaved(variants, sync, repeats)
    out["pixels"] = pixels
    return out


def encoder_cache_passes() -> dict[str, int]:
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from omost_engine.canvas import process
    from omost_engine.canvas_code import parse
    from omost_engine.render.base import DEFAULT_NEGATIVE_PROMPT
    from omost_engine.render.encoding import PromptEncoder
    from tests.seed import seed_answers
    from tests.tiny_sdxl import build_tiny_sdxl

    with tempfile.TemporaryDirectory() as tmp:
        folder = build_tiny_sdxl(Path(tmp) / "tiny")
        parts = (
            CLIPTokenizer.from_pretrained(folder / "tokenizer"),
            CLIPTokenizer.from_pretrained(folder / "tokenizer_2"),
            CLIPTextModel.from_pretrained(folder / "text_encoder").eval(),
            CLIPTextModelWithProjection.from_pretrained(folder / "text_encoder_2").eval(),
        )
    first, second = (process(parse(a)) for a in seed_answers())
    cpu = torch.device("cpu")
    result: dict[str, int] = {}
    for label, size in (("cached", 512), ("uncached", 0)):
        encoder = PromptEncoder(*parts, cache_size=size)
        encoder.encode_layout(first, DEFAULT_NEGATIVE_PROMPT, cpu)
        result[f"{label}_turn1"] = encoder.stats.encoder_passes
        encoder.stats.reset()
        encoder.encode_layout(second, DEFAULT_NEGATIVE_PROMPT, cpu)
        result[f"{label}_turn2"] = encoder.stats.encoder_passes
        result[f"{label}_turn2_hits"] = encoder.stats.hits
        encoder.stats.reset()
        encoder.encode_layout(second, DEFAULT_NEGATIVE_PROMPT, cpu)  # re-render: new seed / hires
        result[f"{label}_rerender"] = encoder.stats.encoder_passes
    return result


def ratios(t: dict[str, float]) -> str:
    return (
        f"stock {t['stock'] * 1e3:.1f} ms, stock with shared K/V {t['stock_shared_kv'] * 1e3:.1f} ms, "
        f"regional {t['regional'] * 1e3:.1f} ms, literal {t['literal'] * 1e3:.1f} ms -> "
        f"regional/stock {t['regional'] / t['stock']:.3f}, "
        f"regional/stock-shared-KV {t['regional'] / t['stock_shared_kv']:.3f}, "
        f"literal/regional {t['literal'] / t['regional']:.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    args = parser.parse_args()
    repeats = 3 if args.quick else 7
    torch.set_grad_enabled(False)

    cpu = torch.device("cpu")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    layer = attention_layer_ratios(cpu, torch.float32, repeats)
    print(f"CPU attn2 layer alone (640 ch, {layer['pixels']} px x2 CFG, 1155 tokens): " + ratios(layer))
    r = unet_step_ratios(CPU_UNET, 64, cpu, torch.float32, repeats)
    print(
        f"CPU UNet step (channels 64/128/256, latent 64x64 = 512 px, CFG batch 2, {r['tokens']:.0f} tokens, "
        f"7 regions): " + ratios(r)
    )
    if torch.cuda.is_available():
        gpu = torch.device("cuda")
        g = unet_step_ratios(SDXL_UNET, 128, gpu, torch.float16, repeats)
        print(
            f"GPU SDXL-sized UNet step at 1024x1024, fp16, 7 regions, {g['tokens']:.0f} tokens: "
            + ratios(g)
            + f"; peak GiB stock {g['peak_gib_stock']:.2f}, regional "
            f"{g['peak_gib_regional']:.2f}, literal {g['peak_gib_literal']:.2f}"
        )
    else:
        print("GPU SDXL-sized UNet at 1024x1024: not measured (no CUDA device in this run)")

    e = encoder_cache_passes()
    print(
        "Encoder passes, seed turn 1 then turn 2: with cache "
        f"{e['cached_turn1']} then {e['cached_turn2']} ({e['cached_turn2_hits']} hits); without "
        f"{e['uncached_turn1']} then {e['uncached_turn2']}. Re-render of turn 2 (new seed / hires): "
        f"with cache {e['cached_rerender']}, without {e['uncached_rerender']}"
    )


if __name__ == "__main__":
    main()
