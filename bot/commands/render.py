"""`omost-bot render FILE -o OUT.png`: canvas code -> an image with the regional SDXL renderer.

FILE is a model answer or bare canvas code (`-` reads stdin). Bad input (a canvas that does not
parse, a size that is not a multiple of 64) exits 2 with the reason and writes nothing; a missing
model or an out-of-memory error exits 1 with the engine's message. The PNG carries the canvas
code and the settings in text chunks, so it can be dropped back into a chat to continue.

Heavy imports (torch, diffusers) happen inside `run()`, so `omost-bot --help` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

HELP = "render canvas code to a PNG with the regional SDXL renderer (needs the image model)"
DEFAULT_MODEL = "SG161222/RealVisXL_V4.0"  # omost_engine.render.pipeline.DEFAULT_MODEL, without torch


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="canvas code or a whole model answer; '-' reads stdin")
    parser.add_argument("-o", "--output", metavar="OUT.png", required=True, help="where to write the PNG")
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"hub id, local diffusers folder or single .safetensors file (default {DEFAULT_MODEL})",
    )
    parser.add_argument("--seed", type=int, default=12345, help="random seed (default 12345)")
    parser.add_argument("--steps", type=int, default=25, help="denoising steps (default 25)")
    parser.add_argument("--width", type=int, default=896, help="width, a multiple of 64 (default 896)")
    parser.add_argument("--height", type=int, default=1152, help="height, a multiple of 64 (default 1152)")
    parser.add_argument("--cfg", type=float, default=5.0, help="classifier-free guidance (default 5.0)")
    parser.add_argument(
        "--hires-scale",
        type=float,
        default=1.0,
        help="high-resolution fix scale, 1.0-2.0; on above 1.05 (default 1.0: off)",
    )
    parser.add_argument(
        "--hires-steps", type=int, default=20, help="high-resolution fix steps, as in Omost (default 20)"
    )
    parser.add_argument(
        "--hires-denoise",
        type=float,
        default=0.4,
        help="high-resolution fix denoise, 0.1-1.0, as in Omost (default 0.4)",
    )
    parser.add_argument(
        "--pooled",
        choices=("omost", "sdxl"),
        default="omost",
        help="pooled text embedding: Omost's (default) or standard SDXL's projected one",
    )
    parser.add_argument("--negative", default=None, help="negative prompt (default: SPEC's)")
    parser.add_argument("--device", default=None, help="torch device, e.g. cuda, cuda:1, cpu (default: auto)")
    parser.add_argument(
        "--memory",
        choices=("resident", "offload"),
        default="resident",
        help="keep the model on the GPU, or offload to the CPU for small GPUs (default resident)",
    )


class _ProgressBar:
    """A tqdm bar per phase (base, then hires), fed from the renderer's step callback."""

    def __init__(self) -> None:
        self.bar: Any = None
        self.phase = ""

    def __call__(self, step: Any) -> None:
        from tqdm import tqdm

        if self.bar is None or step.phase != self.phase:
            self.close()
            self.phase = step.phase
            self.bar = tqdm(total=step.total, desc=step.phase, unit="step", file=sys.stderr)
        self.bar.update(step.index - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def run(args: argparse.Namespace) -> int:
    from bot.commands.canvas_input import BadInput, read_canvas
    from omost_engine.render.base import InvalidRenderParams, RenderParams, check_params

    try:
        canvas = read_canvas(args.file)
    except BadInput as e:
        print(e, file=sys.stderr)
        return 2
    for c in canvas.corrections:
        print(f"corrected {c}", file=sys.stderr)

    settings: dict[str, Any] = dict(
        width=args.width,
        height=args.height,
        steps=args.steps,
        cfg=args.cfg,
        seed=args.seed,
        hires_scale=args.hires_scale,
        hires_steps=args.hires_steps,
        hires_denoise=args.hires_denoise,
        pooled=args.pooled,
    )
    if args.negative is not None:
        settings["negative_prompt"] = args.negative
    params = RenderParams(**settings)
    try:
        check_params(params)
    except InvalidRenderParams as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    from omost_engine.errors import EngineError
    from omost_engine.render.metadata import save_png
    from omost_engine.render.pipeline import SDXLRegionalRenderer

    out = Path(args.output)
    renderer = SDXLRegionalRenderer(args.model, device=args.device, memory=args.memory, preview_every=0)
    progress = _ProgressBar()
    try:
        result = renderer.render(canvas, params, on_step=progress)
    except EngineError as e:
        progress.close()
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        progress.close()
        renderer.close()
    save_png(result.image, out, result.metadata)
    print(
        f"wrote {out} ({result.image.width}x{result.image.height}, seed {params.seed}, "
        f"{result.seconds:.1f} s)",
        file=sys.stderr,
    )
    return 0
