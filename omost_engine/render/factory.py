"""Which renderer draws: `make_renderer(family, model, ...)` -> a `Renderer`, chosen once at start.

Families: "sdxl" (pipeline.py, SPEC 6) and "flux2-klein" (flux2.py). "auto" reads the model's
`model_index.json` (a local folder's, or the copy in the Hugging Face cache; never the network)
and maps its pipeline `_class_name` to a family. A single .safetensors/.ckpt file is an SDXL
checkpoint. When the index cannot be read yet (weights not downloaded), a hub id that names
FLUX.2 klein is taken as that family and anything else as SDXL; the renderer then reports the
missing weights, naming `omost-bot download`, at its first use, as before.

The rest of the engine and the bot see only the Renderer protocol. This module imports torch and
diffusers only inside `make_renderer` (through the renderer modules), so `detect_family` is cheap.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from omost_engine.errors import EngineError
from omost_engine.render.base import Renderer

Family = Literal["sdxl", "flux2-klein"]
FAMILIES: tuple[str, ...] = ("auto", "sdxl", "flux2-klein")

PIPELINE_FAMILIES: dict[str, Family] = {
    "StableDiffusionXLPipeline": "sdxl",
    "StableDiffusionXLImg2ImgPipeline": "sdxl",
    "StableDiffusionXLInpaintPipeline": "sdxl",
    "Flux2KleinPipeline": "flux2-klein",
    "Flux2KleinInpaintPipeline": "flux2-klein",
}


class UnknownModelFamily(EngineError, ValueError):
    """The model's pipeline class is not one this bot can draw with; the message names it."""


def _model_index(model: str) -> dict[str, Any] | None:
    path = Path(model).expanduser()
    if path.is_dir():
        index = path / "model_index.json"
        return json.loads(index.read_text(encoding="utf-8")) if index.is_file() else None
    if path.suffix or model.count("/") != 1:
        return None
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(model, "model_index.json")
    if isinstance(cached, str):
        loaded: dict[str, Any] = json.loads(Path(cached).read_text(encoding="utf-8"))
        return loaded
    return None


def detect_family(model: str) -> Family:
    """The family of `model` (hub id, folder or single file) from its pipeline class, offline."""
    if Path(model).suffix in (".safetensors", ".ckpt"):
        return "sdxl"
    index = _model_index(model)
    if index is None:
        name = model.lower().replace("_", "-")
        return "flux2-klein" if "flux.2-klein" in name or "flux2-klein" in name else "sdxl"
    class_name = str(index.get("_class_name", ""))
    family = PIPELINE_FAMILIES.get(class_name)
    if family is None:
        known = ", ".join(sorted(PIPELINE_FAMILIES))
        raise UnknownModelFamily(
            f"The image model {model} is a {class_name or 'pipeline without a class name'}; this bot "
            f"draws with {known}. Set `[render] family` and `model` to one of those."
        )
    return family


def make_renderer(
    family: str,
    model: str,
    *,
    device: str | None = None,
    memory: str = "resident",
    quantize: str | None = None,
    **options: Any,
) -> Renderer:
    """The renderer for `family` ("auto" detects it); `options` go to the renderer's constructor.

    `quantize="4bit"` (bitsandbytes NF4) exists for flux2-klein only; asking it of SDXL is an
    error rather than a setting silently ignored.
    """
    if family not in FAMILIES:
        raise ValueError(f"render family must be one of {FAMILIES}; got {family!r}")
    chosen: Family = detect_family(model) if family == "auto" else family  # type: ignore[assignment]
    if chosen == "flux2-klein":
        from omost_engine.render.flux2 import Flux2RegionalRenderer

        return Flux2RegionalRenderer(model, device=device, memory=memory, quantize=quantize, **options)  # type: ignore[arg-type]
    if quantize is not None:
        raise ValueError("quantize is only available for the flux2-klein family")
    from omost_engine.render.pipeline import SDXLRegionalRenderer

    return SDXLRegionalRenderer(model, device=device, memory=memory, **options)  # type: ignore[arg-type]
