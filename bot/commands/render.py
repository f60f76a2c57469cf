"""`omost-bot render FILE -o OUT.png`: canvas code -> an image with a regional renderer.

`--family` picks SDXL or FLUX.2 [klein] (default "auto": read from the model's model_index.json,
`omost_engine.render.factory.make_renderer`).

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
from typing import Any, Literal

HELP = "render canvas code to a PNG with the regional SDXL or FLUX.2 renderer (needs the image model)"
DEFAULT_MODEL = "SG161222/RealVisXL_V4.0"  # omost_engine.render.pipeline.DEFAULT_MODEL, without torch


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "file", metavar="FILE", help="canvas code, a whole model answer or one of our PNGs; '-' reads stdin"
    )
    parser.add_argument(
        "-o",
        "--output",
        metavar="OUT.png",
        required=True,
        help="where to write the PNG (its folder must exist)",
    )
    # Defaults come from the config's [render] section (-c, or ./config.toml when present), else
    # SPEC's: so every flag below defaults to None and only a given flag overrides the config.
    parser.add_argument(
        "--model",
        help="hub id, local diffusers folder or single .safetensors file "
        f"(default: render.model, {DEFAULT_MODEL})",
    )
    parser.add_argument(
        "--family",
        choices=("auto", "sdxl", "flux2-klein"),
        help="image model family; auto reads the model folder's pipeline class (default: render.family)",
    )
    parser.add_argument(
        "--quantize",
        choices=("none", "4bit"),
        help="flux2-klein on a CUDA GPU: transformer and text encoder in 4-bit (default: render.quantize)",
    )
    parser.add_argument("--seed", type=int, help="random seed (default 12345)")
    parser.add_argument("--steps", type=int, help="denoising steps (default: render.steps, 25)")
    parser.add_argument("--width", type=int, help="width, a multiple of 64 (default: render.width, 896)")
    parser.add_argument("--height", type=int, help="height, a multiple of 64 (default: render.height, 1152)")
    parser.add_argument("--cfg", type=float, help="classifier-free guidance (default: render.cfg, 5.0)")
    parser.add_argument(
        "--hires-scale",
        type=float,
        help="high-resolution fix scale, 1.0-2.0; on above 1.05 (default: render.hires_scale, 1.0: off)",
    )
    parser.add_argument(
        "--hires-steps",
        type=int,
        help="high-resolution fix steps, as in Omost (default: render.hires_steps, 20)",
    )
    parser.add_argument(
        "--hires-denoise",
        type=float,
        help="high-resolution fix denoise, 0.1-1.0, as in Omost (default: render.hires_denoise, 0.4)",
    )
    parser.add_argument(
        "--pooled",
        choices=("omost", "sdxl"),
        help="pooled text embedding: Omost's or SDXL's projected one (default: render.pooled, omost)",
    )
    parser.add_argument("--negative", help="negative prompt (default: render.negative_prompt, SPEC's)")
    parser.add_argument("--device", help="torch device: cuda, cuda:1, cpu (default: render.device, auto)")
    parser.add_argument(
        "--memory",
        choices=("resident", "offload"),
        help="keep the model on the GPU, or offload to the CPU for small GPUs (default: render.memory)",
    )


# flag (argparse dest) -> RenderParams field it overrides
PARAM_FLAGS = {
    "width": "width",
    "height": "height",
    "steps": "steps",
    "cfg": "cfg",
    "seed": "seed",
    "hires_scale": "hires_scale",
    "hires_steps": "hires_steps",
    "hires_denoise": "hires_denoise",
    "pooled": "pooled",
    "negative": "negative_prompt",
}


def render_settings(args: argparse.Namespace, config: Any) -> dict[str, Any]:
    """RenderParams keyword arguments: the flags given, over the config's [render] values (every
    key the section shares with RenderParams), over RenderParams' own defaults."""
    from dataclasses import fields

    from omost_engine.render.base import RenderParams

    names = {f.name for f in fields(RenderParams)}
    settings = {name: getattr(config.render, name) for name in names if hasattr(config.render, name)}
    for flag, name in PARAM_FLAGS.items():
        value = getattr(args, flag, None)
        if value is not None:
            settings[name] = value
    return settings


def renderer_options(
    args: argparse.Namespace, config: Any
) -> tuple[str, str | None, Literal["resident", "offload"]]:
    """(model, device or None for auto, memory mode): flags over the config."""
    model = args.model or config.render.model
    device = args.device or (None if config.render.device == "auto" else config.render.device)
    setting = args.memory or config.render.memory
    memory: Literal["resident", "offload"] = "offload" if setting == "offload" else "resident"
    return model, device, memory


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
            # disable=False: ours stays when bot/logs.py turns the libraries' bars off (TQDM_DISABLE)
            self.bar = tqdm(total=step.total, desc=step.phase, unit="step", file=sys.stderr, disable=False)
        self.bar.update(step.index - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _renderer(args: argparse.Namespace, config: Any) -> Any:
    from omost_engine.render.factory import make_renderer

    model, device, memory = renderer_options(args, config)
    family = args.family or config.render.family
    quantize = args.quantize or config.render.quantize
    return make_renderer(
        family,
        model,
        device=device,
        memory=memory,
        quantize=None if quantize == "none" else quantize,
        preview_every=0,
    )


def run(args: argparse.Namespace) -> int:
    from bot.commands.canvas_input import BadInput, check_output, read_canvas
    from bot.commands.config_arg import load_config_for
    from omost_engine.render.base import InvalidRenderParams, RenderParams, check_params

    config = load_config_for(args)
    out = Path(args.output)
    try:
        check_output(out)
        canvas = read_canvas(args.file)
    except BadInput as e:
        print(e, file=sys.stderr)
        return 2
    for c in canvas.corrections:
        print(f"corrected {c}", file=sys.stderr)
    params = RenderParams(**render_settings(args, config))
    try:
        check_params(params)
    except InvalidRenderParams as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    from omost_engine.errors import EngineError
    from omost_engine.render.metadata import save_png

    try:
        renderer = _renderer(args, config)
    except ValueError as e:  # an unknown pipeline class, 4-bit without a GPU or with SDXL
        print(f"error: {e}", file=sys.stderr)
        return 2
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
