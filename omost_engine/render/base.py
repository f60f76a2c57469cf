"""The renderer interface: a canvas + parameters -> an image, with step progress and cancel.

Renderers are synchronous and run on an engine lane's worker thread. They call `on_step` after
every denoising step and raise `omost_engine.errors.Cancelled` within one step of `cancel`.
This module must not import torch or diffusers.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from PIL import Image

from omost_engine.canvas import Canvas

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
