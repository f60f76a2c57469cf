"""Benchmark a one-region edit against a full redraw: UNet pixel-steps and wall time, in one run.

On the tiny SDXL of the tests (random weights, CPU), at the same size and steps:

1. a full redraw of the edited canvas with the parent's seed (what an edit cost before issue 15);
2. the keep-the-picture inpaint over the whole frame (latent blending; the UNet still sees every
   latent pixel, so its pixel-steps equal a full redraw: it keeps the picture, it saves nothing);
3. the same edit on the crop path (A1111's "only masked"): only a window around the grown,
   feathered box is denoised, at full resolution.

UNet pixel-steps = the latent pixels of every UNet call (CFG rows included), counted by a forward
hook, so the figure holds on any machine; wall times are ratios within this run.

    python bench/bench_edits.py                 # 512 x 512, 8 steps
    python bench/bench_edits.py --size 256 --steps 4
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from omost_engine.canvas_code import parse
from omost_engine.render.base import RenderParams
from omost_engine.render.edit_plan import EditSpec, decide_edit, png_bytes
from omost_engine.render.edits import edited_params
from omost_engine.render.pipeline import SDXLRegionalRenderer
from tests.tiny_sdxl import build_tiny_sdxl

GLOBAL = (
    "canvas = Canvas()\ncanvas.set_global_description(description='A lighthouse in a storm', "
    "detailed_descriptions=['Dark waves'], tags='storm, sea', HTML_web_color_name='darkslategray')\n"
)
LOCAL = (
    "canvas.add_local_description(location='{loc}', offset='no offset', area='{area}', "
    "distance_to_viewer={d}, description='{desc}', detailed_descriptions=[], tags='', atmosphere='', "
    "style='', quality_meta='', HTML_web_color_name='{color}')\n"
)
LIGHTHOUSE = LOCAL.format(
    loc="on the right", area="a large vertical area", d=5.0, desc="A lighthouse", color="white"
)
BEFORE = parse(GLOBAL + LIGHTHOUSE)
AFTER = parse(
    GLOBAL
    + LIGHTHOUSE
    + LOCAL.format(
        loc="on the bottom-left", area="a small square area", d=2.0, desc="A red boat", color="red"
    )
)


class PixelSteps:
    """Counts the latent pixels the UNet processes (batch x height x width per call)."""

    def __init__(self, unet: Any) -> None:
        self.count = 0
        self.calls = 0
        self.handle = unet.register_forward_pre_hook(self._hook)

    def _hook(self, module: Any, args: Any) -> None:
        sample = args[0]
        self.count += sample.shape[0] * sample.shape[-2] * sample.shape[-1]
        self.calls += 1

    def take(self) -> tuple[int, int]:
        taken = (self.count, self.calls)
        self.count = self.calls = 0
        return taken


def measure(
    renderer: SDXLRegionalRenderer, counter: PixelSteps, params: RenderParams, repeats: int
) -> tuple[int, float]:
    renderer.render(AFTER, params)  # warm-up: pipelines built, plans cached
    counter.take()
    started = time.perf_counter()
    for _ in range(repeats):
        renderer.render(AFTER, params)
    seconds = (time.perf_counter() - started) / repeats
    pixel_steps, _ = counter.take()
    return pixel_steps // repeats, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        renderer = SDXLRegionalRenderer(
            str(build_tiny_sdxl(Path(scratch) / "sdxl")), device="cpu", preview_every=0
        )
        base = RenderParams(width=args.size, height=args.size, steps=args.steps, seed=1480316567)
        parent = renderer.render(BEFORE, base).image
        decision = decide_edit(BEFORE, AFTER)
        counter = PixelSteps(renderer.pipeline.unet)
        full_px, full_s = measure(renderer, counter, base, args.repeats)
        rows = [("full redraw, parent's seed", full_px, full_s, "-")]
        for crop in ("never", "auto"):
            spec = EditSpec(
                "inpaint", png_bytes(parent), decision.boxes, crop=crop, crop_min_size=args.size // 4
            )
            params = edited_params(base, spec)
            px, s = measure(renderer, counter, params, args.repeats)
            window = renderer.render(AFTER, params).metadata["omost:edit_window"]
            rows.append((f"one-region edit, crop={crop}", px, s, window))
        size = f"{args.size} x {args.size}"
        print(f"tiny SDXL, {size}, {args.steps} steps; edit: {decision.reason}, boxes {decision.boxes}")
        print(f"{'run':34} {'UNet pixel-steps':>16} {'ratio':>6} {'wall s':>8} {'ratio':>6}  window")
        for name, px, s, window in rows:
            print(f"{name:34} {px:16d} {px / full_px:6.2f} {s:8.3f} {s / full_s:6.2f}  {window}")


if __name__ == "__main__":
    main()
