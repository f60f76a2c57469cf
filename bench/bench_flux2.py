"""Benchmark FLUX.2's regional joint attention: one transformer step with the mask vs without.

Both runs see the same tokens (seven regions' text blocks like the seed canvas, then the image
tokens); the only difference is the regional mask (flux2_attention.py) passed as the stock
processors' `attention_mask`. Printed as a ratio measured in this run, plus the one-off cost of
building the mask (once per resolution per render). On the CPU a transformer larger than the test
one at a reduced token count; with CUDA also klein 4B's real configuration (random weights,
bfloat16) at 1024 x 1024 with 512 text tokens per region: step time and peak GPU memory.

    python bench/bench_flux2.py            # CPU figures; adds the klein-4B-sized run when CUDA exists
    python bench/bench_flux2.py --quick    # fewer repeats
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from diffusers import Flux2Transformer2DModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from omost_engine.render.flux2_attention import RegionalJointAttention

# Seven regions (global + six) like the seed canvas.
BOXES = (
    (0, 90, 0, 90),
    (10, 80, 10, 80),
    (15, 75, 0, 60),
    (15, 75, 30, 90),
    (0, 30, 0, 30),
    (45, 90, 20, 70),
    (5, 45, 50, 90),
)

CPU_CONFIG: dict[str, Any] = dict(
    patch_size=1,
    in_channels=128,
    num_layers=2,
    num_single_layers=4,
    attention_head_dim=32,
    num_attention_heads=4,
    joint_attention_dim=256,
    axes_dims_rope=(8, 8, 8, 8),
    guidance_embeds=False,
)
# FLUX.2 [klein] 4B's transformer (black-forest-labs/FLUX.2-klein-4B, transformer/config.json).
KLEIN_4B_CONFIG: dict[str, Any] = dict(
    patch_size=1,
    in_channels=128,
    num_layers=5,
    num_single_layers=20,
    attention_head_dim=128,
    num_attention_heads=24,
    joint_attention_dim=7680,
    axes_dims_rope=(32, 32, 32, 32),
    guidance_embeds=False,
)


def _inputs(
    model: Any, tokens: int, grid: tuple[int, int], device: str, dtype: torch.dtype
) -> dict[str, Any]:
    config = model.config
    text = torch.randn(1, tokens * len(BOXES), config.joint_attention_dim, device=device, dtype=dtype)
    block_ids = torch.cartesian_prod(
        torch.zeros(1), torch.zeros(1), torch.zeros(1), torch.arange(tokens).float()
    )
    txt_ids = block_ids.repeat(len(BOXES), 1)[None].to(device)
    img_ids = torch.cartesian_prod(
        torch.zeros(1), torch.arange(grid[0]).float(), torch.arange(grid[1]).float(), torch.zeros(1)
    )[None].to(device)
    latents = torch.randn(1, grid[0] * grid[1], config.in_channels, device=device, dtype=dtype)
    return dict(
        hidden_states=latents,
        timestep=torch.tensor([0.5], device=device, dtype=dtype),
        guidance=None,
        encoder_hidden_states=text,
        txt_ids=txt_ids,
        img_ids=img_ids,
        return_dict=False,
    )


def _timed(fn: Any, device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def run(
    config: dict[str, Any], tokens: int, grid: tuple[int, int], device: str, dtype: torch.dtype, repeats: int
) -> None:
    torch.manual_seed(0)
    model = Flux2Transformer2DModel(**config).to(device=device, dtype=dtype).eval()
    inputs = _inputs(model, tokens, grid, device, dtype)
    regions = RegionalJointAttention(BOXES, (tokens,) * len(BOXES))
    start = time.perf_counter()
    masked = regions.kwargs(grid, torch.device(device), dtype)
    build = time.perf_counter() - start

    def step(kwargs: dict[str, Any] | None) -> None:
        with torch.no_grad():
            model(**inputs, joint_attention_kwargs=kwargs)

    # Interleaved, so load from other processes on a shared machine hits both alike.
    variants: dict[str, dict[str, Any] | None] = {"no mask": None, "regional mask": masked}
    times: dict[str, list[float]] = {name: [] for name in variants}
    peaks: dict[str, float | None] = {}
    for kwargs in variants.values():
        step(kwargs)  # warm-up
    for _ in range(repeats):
        for name, kwargs in variants.items():
            times[name].append(_timed(lambda k=kwargs: step(k), device))
    for name, kwargs in variants.items():
        peaks[name] = None
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            step(kwargs)
            peaks[name] = torch.cuda.max_memory_allocated() / 2**30
    results = {name: (statistics.median(times[name]), peaks[name]) for name in variants}
    text_tokens = tokens * len(BOXES)
    print(
        f"{device} {dtype}: {len(BOXES)} regions x {tokens} text tokens + {grid[0]}x{grid[1]} image tokens "
        f"= {text_tokens + grid[0] * grid[1]} tokens; mask built once in {build * 1e3:.1f} ms"
    )
    for name, (seconds, peak) in results.items():
        memory = f", peak {peak:.2f} GiB" if peak is not None else ""
        print(f"  {name:14} {seconds * 1e3:9.1f} ms per transformer step{memory}")
    ratio = results["regional mask"][0] / results["no mask"][0]
    print(f"  ratio regional / no mask: {ratio:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    args = parser.parse_args()
    repeats = 3 if args.quick else 8
    run(CPU_CONFIG, 64, (32, 32), "cpu", torch.float32, repeats)
    if torch.cuda.is_available():
        run(KLEIN_4B_CONFIG, 512, (64, 64), "cuda", torch.bfloat16, repeats)
    else:
        print("cuda: not measured (no GPU on this machine)")


if __name__ == "__main__":
    main()
