"""The renderer interface: a canvas + parameters -> an image, with step progress and cancel.

Renderers are synchronous and run on an engine lane's worker thread. They call `on_step` after
every denoising step and raise `omost_engine.errors.Interrupted` within one step of `cancel`.
This module must not import torch or diffusers.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol, get_args

from PIL import Image

from omost_engine.canvas import GRID, Canvas
from omost_engine.errors import EngineError, Interrupted, ModelNotAvailable
from omost_engine.render.edit_plan import EditSpec

DEFAULT_NEGATIVE_PROMPT = "lowres, bad anatomy, bad hands, cropped, worst quality"

PooledEmbedding = Literal["omost", "sdxl"]
"""SPEC 5.6: "omost" feeds text_encoder_2's un-projected pooler output (Omost's app, the default:
same canvas and seed, same picture); "sdxl" its projected `text_embeds` (standard SDXL)."""
POOLED_EMBEDDINGS: tuple[str, ...] = get_args(PooledEmbedding)


@dataclass(frozen=True)
class RenderParams:
    """SPEC 6 defaults: 896 wide x 1152 high, 25 steps, CFG 5, seed 12345, hires off.

    `hires_steps` and `hires_denoise` follow Omost's high-resolution fix (20 and 0.4 by default;
    see `hires_schedule`); `pooled` chooses the pooled text embedding (SPEC 5.6).

    `frame_zoom` draws the canvas's boxes scaled by 1 / frame_zoom about the centre (a zoomed-out
    picture's framing, kept by every later render of it); `edit` makes the render an edit of a
    parent picture (`edit_plan.EditSpec`: inpaint changed regions, vary one, zoom out).
    """

    width: int = 896
    height: int = 1152
    steps: int = 25
    cfg: float = 5.0
    seed: int = 12345
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT
    hires_scale: float = 1.0
    hires_steps: int = 20
    hires_denoise: float = 0.4
    pooled: PooledEmbedding = "omost"
    frame_zoom: float = 1.0
    edit: EditSpec | None = None


SIZE_MULTIPLE = 64
MIN_SIZE, MAX_SIZE = 64, 2048
MAX_STEPS = 150
CFG_RANGE = (0.0, 30.0)
HIRES_SCALE_RANGE = (1.0, 2.0)
HIRES_STEPS_RANGE = (1, 100)  # Omost's app's sliders for its high-resolution fix
HIRES_DENOISE_RANGE = (0.1, 1.0)
HIRES_MIN_SCALE = 1.05
"""SPEC 6: the high-resolution fix runs when the scale is above this."""
MAX_FRAME_ZOOM = 8.0
"""A picture may be zoomed out (in total) at most this far: its boxes stay a few grid cells wide."""
MAX_HIRES_SCHEDULE = 1000
"""The hires schedule cannot be longer than the model's 1000 training timesteps."""


def looks_like_path(model: str) -> bool:
    """A model named by a path (a folder or a single file) rather than a hub id (owner/name)."""
    return (
        model.startswith(("/", "./", "../", "~"))
        or model.endswith((".safetensors", ".ckpt"))
        or model.count("/") != 1
    )


def model_not_available(model: str, reason: str, local: str) -> ModelNotAvailable:
    """The error for image-model weights that cannot be loaded, naming a command that works as
    spelled (a local path has nothing to download); `local` says what a local model may be."""
    if looks_like_path(model):
        fix = "Check the path, or use a hub id and fetch it with `omost-bot download --render`."
    else:
        fix = f"Fetch it with `omost-bot download --render --render-model {model}`, or use {local}."
    return ModelNotAvailable(model, f"The image model {model} is not available: {reason}. {fix}")


def check_cancel(cancel: threading.Event | None) -> None:
    """Stop a render within one step (or block) of its cancel event being set."""
    if cancel is not None and cancel.is_set():
        raise Interrupted("render cancelled")


class InvalidRenderParams(EngineError, ValueError):
    """Render settings that cannot be used; the message says which and what is allowed."""


def check_params(params: RenderParams) -> None:
    """Raise InvalidRenderParams for settings a renderer cannot honour (checked before any GPU work)."""
    for name in ("width", "height"):
        value = getattr(params, name)
        if value % SIZE_MULTIPLE or not MIN_SIZE <= value <= MAX_SIZE:
            raise InvalidRenderParams(
                f"{name} must be a multiple of {SIZE_MULTIPLE} between {MIN_SIZE} and {MAX_SIZE}; got {value}"
            )
    if not 1 <= params.steps <= MAX_STEPS:
        raise InvalidRenderParams(f"steps must be between 1 and {MAX_STEPS}; got {params.steps}")
    if not CFG_RANGE[0] <= params.cfg <= CFG_RANGE[1]:
        low, high = CFG_RANGE
        raise InvalidRenderParams(f"cfg must be between {low:g} and {high:g}; got {params.cfg}")
    if not 0 <= params.seed < 2**63:
        raise InvalidRenderParams(f"seed must be between 0 and 2^63 - 1; got {params.seed}")
    low, high = HIRES_SCALE_RANGE
    if not low <= params.hires_scale <= high:
        raise InvalidRenderParams(f"hires scale must be between {low} and {high}; got {params.hires_scale}")
    if not 1 <= params.hires_steps <= 150:
        raise InvalidRenderParams(f"hires steps must be between 1 and 150; got {params.hires_steps}")
    if not 0.0 < params.hires_denoise <= 1.0:
        raise InvalidRenderParams(f"hires denoise must be in (0, 1]; got {params.hires_denoise}")
    if int(params.hires_steps / params.hires_denoise) > MAX_HIRES_SCHEDULE:
        raise InvalidRenderParams(
            f"hires steps / hires denoise must be at most {MAX_HIRES_SCHEDULE}; got "
            f"{params.hires_steps} / {params.hires_denoise}"
        )
    if not 1.0 <= params.frame_zoom <= MAX_FRAME_ZOOM:
        raise InvalidRenderParams(
            f"frame zoom must be between 1 and {MAX_FRAME_ZOOM}; got {params.frame_zoom}"
        )
    if params.edit is not None:
        _check_edit(params.edit)
    if params.pooled not in POOLED_EMBEDDINGS:
        raise InvalidRenderParams(
            f"pooled must be one of {', '.join(POOLED_EMBEDDINGS)}; got {params.pooled!r}"
        )


def _check_edit(edit: EditSpec) -> None:
    if edit.kind not in ("inpaint", "vary", "zoom_out"):
        raise InvalidRenderParams(f"edit kind must be inpaint, vary or zoom_out; got {edit.kind!r}")
    if edit.margin < 0 or edit.feather < 0:
        raise InvalidRenderParams("edit margin and feather must not be negative")
    if edit.kind == "zoom_out" and not 1.0 < edit.zoom <= MAX_FRAME_ZOOM:
        raise InvalidRenderParams(f"zoom must be above 1 and at most {MAX_FRAME_ZOOM}; got {edit.zoom}")
    if edit.kind != "zoom_out" and not edit.boxes:
        raise InvalidRenderParams("an inpaint or vary edit needs at least one box to redraw")
    for box in edit.boxes:
        top, bottom, left, right = box
        if not (0 <= top < bottom <= GRID and 0 <= left < right <= GRID):
            raise InvalidRenderParams(f"edit box {box} is not inside the {GRID} x {GRID} grid")
    if edit.crop not in ("auto", "always", "never"):
        raise InvalidRenderParams(f"edit crop must be auto, always or never; got {edit.crop!r}")


def hires_size(params: RenderParams) -> tuple[int, int] | None:
    """SPEC 6: (width, height) of the high-resolution pass, or None when it is off."""
    if params.hires_scale <= HIRES_MIN_SCALE:
        return None
    s = params.hires_scale
    return (
        round(params.width * s / SIZE_MULTIPLE) * SIZE_MULTIPLE,
        round(params.height * s / SIZE_MULTIPLE) * SIZE_MULTIPLE,
    )


def hires_schedule(steps: int, denoise: float) -> tuple[int, int]:
    """Omost's high-resolution fix schedule: (length of the Karras schedule, steps run from its end).

    Omost builds the Karras schedule of int(steps / denoise) steps and runs its last `steps`
    (steps + 1 sigmas), so the pass starts at that schedule's sigma number int(steps / denoise) -
    steps. (diffusers' img2img with round(steps / denoise) and `strength` lands there only for
    some settings.)
    """
    total = int(steps / denoise)
    return total, min(steps, total)


@dataclass(frozen=True)
class Step:
    """Progress of one render: step `index` (1-based) of `total`, with an optional cheap preview."""

    index: int
    total: int
    preview: Image.Image | None = None
    phase: str = "base"  # "base", "hires" or "edit"


StepCallback = Callable[[Step], None]


@dataclass
class RenderResult:
    image: Image.Image
    params: RenderParams
    model: str
    seconds: float
    metadata: dict[str, str] = field(default_factory=dict)  # what goes into the PNG text chunks


class Renderer(Protocol):
    """`supports_edits` (optional, default False): whether `RenderParams.edit` is honoured; the
    bot draws whole pictures with a renderer that says no."""

    name: str

    def render(
        self,
        canvas: Canvas,
        params: RenderParams,
        *,
        on_step: StepCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> RenderResult: ...

    def close(self) -> None: ...

    def unload(self) -> None:
        """Move the pipeline off the GPU so the LLM can use the memory (GPU too small for both)."""
        ...

    def load(self) -> None:
        """Bring the pipeline back after `unload()` (no-op when already resident)."""
        ...

    def lower_memory(self) -> bool:
        """Switch to a lower-memory mode (CPU offload + VAE tiling) after an out-of-memory error.

        Returns False when already in the lowest mode (the engine then fails the job).
        """
        ...
