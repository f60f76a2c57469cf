"""How close our renderer's latents are to Omost's own sampler, with and without each fix (issue 12).

Omost's sampling is written out in tests/test_render_omost_fidelity.py (`OmostReference`: its
k-diffusion DPM++ 2M loop, Karras schedule, initial noise, hires schedule, truncating pixels). On
the tiny SDXL (fp32, CPU) this prints max |ours - Omost| / max |Omost| of the final latents for
our defaults, and for our renderer with one difference put back at a time.

    python bench/bench_omost_fidelity.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import omost_engine.render.pipeline as pipeline_module
from omost_engine.canvas_code import parse
from omost_engine.render.base import RenderParams
from omost_engine.render.pipeline import SDXLRegionalRenderer
from tests.seed import seed_answers
from tests.test_render_omost_fidelity import OmostReference, close
from tests.tiny_sdxl import build_tiny_sdxl


def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        renderer = SDXLRegionalRenderer(
            str(build_tiny_sdxl(Path(scratch) / "m")), device="cpu", preview_every=0
        )
        canvas = parse(seed_answers()[0])
        base = RenderParams(width=64, height=64, steps=4, seed=2024)
        hires = RenderParams(
            width=64, height=64, steps=3, seed=7, hires_scale=2.0, hires_steps=3, hires_denoise=0.45
        )
        base_ref = OmostReference(renderer, canvas, base).latents()
        hires_ref = OmostReference(renderer, canvas, hires).latents()
        rows = [
            ("defaults, base", close(renderer.render_latents(canvas, base), base_ref)),
            ("defaults, hires fix", close(renderer.render_latents(canvas, hires), hires_ref)),
        ]
        sdxl = RenderParams(width=64, height=64, steps=4, seed=2024, pooled="sdxl")
        rows.append(('pooled = "sdxl", base', close(renderer.render_latents(canvas, sdxl), base_ref)))
        original = pipeline_module.initial_latents
        pipeline_module.initial_latents = lambda noise, sigma: noise  # diffusers' own start: noise x 1.0
        try:
            rows.append(
                ("diffusers' initial latent, base", close(renderer.render_latents(canvas, base), base_ref))
            )
        finally:
            pipeline_module.initial_latents = original
    print(f"{'renderer':36} max |ours - Omost| / max |Omost|")
    for name, value in rows:
        print(f"{name:36} {value:.2e}")


if __name__ == "__main__":
    main()
