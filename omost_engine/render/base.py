"""The renderer interface: a canvas + parameters -> an image, with step progress and cancel.

Renderers are synchronous and run on an engine lane's worker thread. They call `on_step` after
every denoising step and raise `omost_engine.errors.Interrupted` within one step of `cancel`.
This module must not import torch or diffusers.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from PIL import Image

from omost_engine.canvas import Canvas
from omost_engine.errors import EngineError

DEFAULT_NEGATIVE_PROMPT = "lowres, bad anatomy, bad hands, cropped, worst quality"


@dataclass(frozen=True)
class RenderParams:
    """SPEC 6 defaults: 896 wide x 1152 high, 25 steps, CFG 5, seed 12345, hires off."""

    width: int = 896
    height: int = 1152
    steps: int = 25
    cfg: float = 5.0
    seed: int = 12345
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT
    hires_scale: float = 1.0
    hires_steps: int = 20
    hires_denoise: float = 0.4


SIZE_MULTIPLE = 64
MIN_SIZE, MAX_SIZE = 64, 2048
MAX_STEPS = 150
CFG_RANGE = (0.0, 30.0)
HIRES_SCALE_RANGE = (1.0, 2.0)
HIRES_MIN_SCALE = 1.05
"""SPEC 6: the high-resolution fix runs when the scale is above this."""


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


def hires_size(params: RenderParams) -> tuple[int, int] | None:
    """SPEC 6: (width, height) of the high-resolution pass, or None when it is off."""
    if params.hires_scale <= HIRES_MIN_SCALE:
        return None
    s = params.hires_scale
    return (
        round(params.width * s / SIZE_MULTIPLE) * SIZE_MULTIPLE,
        round(params.height * s / SIZE_MULTIPLE) * SIZE_MULTIPLE,
    )


@dataclass(frozen=True)
class Step:
    """Progress of one render: step `index` (1-based) of `total`, with an optional cheap preview."""

    index: int
    total: int
    preview: Image.Image | None = None
    phase: str = "base"  # "base" or "hires"


StepCallback = Callable[[Step], None]


@dataclass
class RenderResult:
    image: Image.Image
    params: RenderParams
    model: str
    seconds: float
    metadata: dict[str, str] = field(default_factory=dict)  # what goes into the PNG text chunks


class Renderer(Protocol):
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
