"""The region-aware SDXL renderer: a canvas -> an image on the stock diffusers SDXL pipeline.

`SDXLRegionalRenderer` implements `omost_engine.render.base.Renderer`. In diffusers' shape
(check inputs, encode, prepare, denoise, decode):

1. check the settings (`check_params`: sizes are multiples of 64, ...);
2. encode the layout's regions into bag conditions (`encoding.PromptEncoder`, SPEC 5, cached);
3. run `StableDiffusionXLPipeline` with DPM++ 2M Karras, the regional attention processor on
   every attn2 layer (`attention.py`, SPEC 6) and the per-render region data passed as
   `cross_attention_kwargs={"regions": ...}`; the condition and the negative prompt travel as one
   combined token set (see attention.py for why);
4. optionally the high-resolution fix (SPEC 6) with `StableDiffusionXLImg2ImgPipeline` sharing
   the same components; an edit (`params.edit`) runs `edits.render_edit` instead of 3-4, on
   `StableDiffusionXLInpaintPipeline` sharing them too;
5. decode with the VAE in bfloat16 (SDXL's VAE overflows in fp16).

Omost fidelity (issue 12, `sampling.py`): the seed's noise is drawn on the render device, the base
pass starts from Omost's initial latent, the hires pass runs Omost's schedule, images are
converted to 8 bits by truncation, and the pooled embedding is Omost's unless `pooled="sdxl"`.
With the defaults a canvas and a seed give the latents of Omost's own pipeline (same device and
dtype, up to float rounding), through the stock pipeline and scheduler.

Progress goes to `on_step` after every denoising step (with a cheap latent preview), and a set
`cancel` event raises `errors.Interrupted` from the step callback, so a render stops within one step.
The same seed and settings give the same image on the same device.

Memory modes: "resident" keeps the pipeline on the device; "offload" uses diffusers' model CPU
offload (one component on the GPU at a time) plus VAE tiling, for small GPUs.

Errors: weights not on disk -> ModelNotAvailable (naming `omost-bot download`); CUDA out of
memory -> OutOfMemory naming the model; bad settings -> InvalidRenderParams.

This module knows diffusers, torch and canvases; it knows nothing of chats, jobs or queues.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

from omost_engine.canvas import Canvas, process
from omost_engine.canvas_code import to_code
from omost_engine.errors import ModelNotAvailable, OutOfMemory
from omost_engine.render.attention import RegionalAttention, install_regional_attention
from omost_engine.render.base import (
    RenderParams,
    RenderResult,
    Step,
    StepCallback,
    check_cancel,
    check_params,
    hires_size,
    looks_like_path,
    model_not_available,
)
from omost_engine.render.edit_plan import zoom_boxes
from omost_engine.render.edits import EditOutcome, render_edit
from omost_engine.render.encoding import Conditions, PromptEncoder
from omost_engine.render.latent_preview import latent_to_rgb
from omost_engine.render.metadata import png_metadata
from omost_engine.render.sampling import (
    draw_noise,
    first_sigma,
    from_pixels,
    img2img_arguments,
    initial_latents,
    seeded_generator,
    to_pixels,
)

DEFAULT_MODEL = "SG161222/RealVisXL_V4.0"
MemoryMode = Literal["resident", "offload"]
MEMORY_MODES: tuple[MemoryMode, ...] = ("resident", "offload")


def dpmpp_2m_karras() -> Any:
    """SPEC 6 sampler: DPM++ 2M with Karras sigmas over SD's scaled-linear betas 0.00085..0.012."""
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        algorithm_type="dpmsolver++",
        solver_order=2,
        use_karras_sigmas=True,
        steps_offset=1,
    )


def _not_available(model: str, reason: str) -> ModelNotAvailable:
    return model_not_available(model, reason, "a local diffusers folder or a single .safetensors file")


def _dtype_kwargs(dtype: torch.dtype) -> dict[str, torch.dtype]:
    """diffusers renamed from_pretrained's `torch_dtype` to `dtype` (and deprecates the old name)."""
    try:
        from diffusers.utils.deprecation_utils import _TORCH_DTYPE_DEPRECATION_MESSAGE  # noqa: F401
    except ImportError:
        return {"torch_dtype": dtype}
    return {"dtype": dtype}


def load_sdxl(model: str, dtype: torch.dtype, local_files_only: bool = True) -> Any:
    """StableDiffusionXLPipeline from a hub id, a local diffusers folder or a single checkpoint.

    `local_files_only` (the default) never reaches the network: weights are fetched beforehand
    with `omost-bot download`, so a chat render never stalls on a multi-GB download.
    """
    from diffusers import StableDiffusionXLPipeline

    path = Path(model).expanduser()
    try:
        if path.is_file():
            return StableDiffusionXLPipeline.from_single_file(
                str(path), local_files_only=local_files_only, **_dtype_kwargs(dtype)
            )
        if path.is_dir():
            # Use the fp16 variant files when the folder has them (hub snapshots saved as-is).
            variant = "fp16" if any(path.glob("unet/*.fp16.*")) else None
            return StableDiffusionXLPipeline.from_pretrained(path, variant=variant, **_dtype_kwargs(dtype))
        if looks_like_path(model):
            raise _not_available(model, f"there is no file or folder at {path}")
        return StableDiffusionXLPipeline.from_pretrained(
            model,
            variant="fp16",
            use_safetensors=True,
            local_files_only=local_files_only,
            **_dtype_kwargs(dtype),
        )
    except (OSError, ValueError) as e:  # huggingface_hub's not-found errors are OSErrors
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise _not_available(model, f"its weights could not be loaded ({first_line})") from e


def _is_oom(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError)


class SDXLRegionalRenderer:
    """Omost's regional SDXL renderer on the stock diffusers pipeline (see the module docstring)."""

    supports_edits = True  # RenderParams.edit: inpaint, vary a region, zoom out (render/edits.py)

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        device: str | None = None,
        dtype: torch.dtype | None = None,
        memory: MemoryMode = "resident",
        local_files_only: bool = True,
        cache_size: int = 512,
        preview_every: int = 1,
    ) -> None:
        if memory not in MEMORY_MODES:
            raise ValueError(f"memory mode must be one of {MEMORY_MODES}; got {memory!r}")
        self.name = model
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = dtype or (torch.float16 if self.device.type == "cuda" else torch.float32)
        self.memory: MemoryMode = memory
        self.local_files_only = local_files_only
        self.cache_size = cache_size
        self.preview_every = preview_every
        self._pipe: Any = None
        self._img2img: Any = None
        self._inpaint: Any = None
        self._encoder: PromptEncoder | None = None
        self._lock = threading.Lock()

    # --- lifecycle ----------------------------------------------------------------------------

    @property
    def encoder(self) -> PromptEncoder:
        """The prompt encoder (and its cache statistics); loads the pipeline if needed."""
        self._ensure_loaded()
        assert self._encoder is not None
        return self._encoder

    @property
    def pipeline(self) -> Any:
        """The loaded StableDiffusionXLPipeline (for inspection and benchmarks)."""
        return self._ensure_loaded()

    def _vae_dtype(self) -> torch.dtype:
        if self.dtype == torch.float32:
            return torch.float32  # fp32 does not overflow; nothing to fix
        if self.device.type == "cuda" and not torch.cuda.is_bf16_supported():
            return torch.float32  # pre-Ampere GPUs: bf16 is emulated; fp32 is the safe choice
        return torch.bfloat16

    def _ensure_loaded(self) -> Any:
        if self._pipe is not None:
            return self._pipe
        pipe = load_sdxl(self.name, self.dtype, self.local_files_only)
        pipe.scheduler = dpmpp_2m_karras()
        if pipe.vae.dtype != self._vae_dtype():
            pipe.vae.to(dtype=self._vae_dtype())
        pipe.set_progress_bar_config(disable=True)
        install_regional_attention(pipe.unet)
        self._encoder = PromptEncoder(
            pipe.tokenizer, pipe.tokenizer_2, pipe.text_encoder, pipe.text_encoder_2, self.cache_size
        )
        self._pipe = pipe
        self._place()
        return pipe

    def _place(self) -> None:
        """Put the pipeline where the memory mode says."""
        pipe = self._pipe
        if self.memory == "offload":
            pipe.vae.enable_tiling()
            if self.device.type != "cpu":
                pipe.enable_model_cpu_offload(device=self.device)
        else:
            pipe.to(self.device)

    def load(self) -> None:
        with self._lock:
            try:
                if self._pipe is None:
                    self._ensure_loaded()
                elif self.memory == "resident":
                    self._pipe.to(self.device)
            except Exception as e:
                if _is_oom(e):
                    self._empty_device_cache()
                    raise OutOfMemory(
                        self.name,
                        f"The image model {self.name} does not fit in GPU memory ({self.memory} mode); "
                        "try the 'offload' memory mode.",
                    ) from e
                raise

    def unload(self) -> None:
        with self._lock:
            if self._pipe is None:
                return
            if self.memory == "resident":
                self._pipe.to("cpu")
            elif self.device.type != "cpu":
                self._pipe.maybe_free_model_hooks()  # offloads every component
            self._empty_device_cache()

    def lower_memory(self) -> bool:
        with self._lock:
            if self.memory == "offload":
                return False
            self.memory = "offload"
            if self._pipe is not None:
                self._place()
                self._empty_device_cache()
            return True

    def close(self) -> None:
        with self._lock:
            self._pipe = None
            self._img2img = None
            self._inpaint = None
            if self._encoder is not None:
                self._encoder.clear_cache()
            self._encoder = None
            self._empty_device_cache()

    def _empty_device_cache(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    # --- rendering ----------------------------------------------------------------------------

    def render(
        self,
        canvas: Canvas,
        params: RenderParams,
        *,
        on_step: StepCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> RenderResult:
        check_params(params)
        started = time.perf_counter()
        extra: dict[str, str] = {}
        with self._lock:
            try:
                if params.edit is not None:
                    outcome = self._render_edit(canvas, params, on_step, cancel)
                    image, extra = outcome.image, outcome.metadata(params.edit)
                else:
                    image = self._render(canvas, params, on_step, cancel)
            except Exception as e:
                if _is_oom(e):
                    self._empty_device_cache()
                    raise OutOfMemory(
                        self.name,
                        f"The image model {self.name} ran out of GPU memory at "
                        f"{params.width}x{params.height} ({self.memory} mode). Try a smaller size, "
                        "no high-resolution fix, or the 'offload' memory mode.",
                    ) from e
                raise
        return RenderResult(
            image=image,
            params=params,
            model=self.name,
            seconds=time.perf_counter() - started,
            metadata=png_metadata(to_code(canvas), params, self.name) | extra,
        )

    def render_latents(
        self,
        canvas: Canvas,
        params: RenderParams,
        *,
        on_step: StepCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> torch.Tensor:
        """The final latents of a render, before the VAE decode (for comparisons and benchmarks)."""
        check_params(params)
        with self._lock:
            return self._render_latents(canvas, params, on_step, cancel)

    def _render(
        self,
        canvas: Canvas,
        params: RenderParams,
        on_step: StepCallback | None,
        cancel: threading.Event | None,
    ) -> Image.Image:
        latents = self._render_latents(canvas, params, on_step, cancel)
        check_cancel(cancel)
        return self.decode(latents)

    def conditions(self, canvas: Canvas, params: RenderParams) -> Conditions:
        """SPEC 5 conditions (the pooled embedding as chosen), boxes in the picture's frame."""
        pipe = self._ensure_loaded()
        assert self._encoder is not None
        layout = process(canvas)
        device = pipe._execution_device
        conditions = self._encoder.encode_layout(layout, params.negative_prompt, device, params.pooled)
        if params.frame_zoom != 1.0:
            # a zoomed-out picture: local boxes drawn scaled about the centre; the global stays whole
            boxes = [r.box for r in conditions.regions]
            conditions = conditions.with_boxes([boxes[0], *zoom_boxes(boxes[1:], params.frame_zoom)])
        return conditions

    def _render_latents(
        self,
        canvas: Canvas,
        params: RenderParams,
        on_step: StepCallback | None,
        cancel: threading.Event | None,
    ) -> torch.Tensor:
        check_cancel(cancel)
        pipe = self._ensure_loaded()
        # 1. encode
        conditions = self.conditions(canvas, params)
        check_cancel(cancel)
        # 2. the seed's noise on the render device, scaled to Omost's first latent
        generator = seeded_generator(params.seed, pipe._execution_device)
        factor = pipe.vae_scale_factor
        shape = (1, pipe.unet.config.in_channels, params.height // factor, params.width // factor)
        noise = draw_noise(shape, generator, pipe.unet.dtype)
        start = initial_latents(noise, first_sigma(pipe.scheduler, params.steps))
        # 3. the base pass
        width, height = params.width, params.height
        latents = self.denoise(
            pipe, conditions, (width, height), params, generator, on_step, cancel, "base",
            width=width, height=height, num_inference_steps=params.steps, latents=start,
        )  # fmt: skip
        size = hires_size(params)
        if size is None:
            return latents
        # 4. the high-resolution fix: decode, Lanczos, re-encode, then Omost's hires schedule (the
        # last hires_steps of the Karras schedule of int(hires_steps / hires_denoise) steps)
        check_cancel(cancel)
        latents = self.encode_image(self.decode(latents).resize(size, Image.Resampling.LANCZOS))
        check_cancel(cancel)
        total, strength = img2img_arguments(params.hires_steps, params.hires_denoise)
        return self.denoise(
            self._img2img_pipeline(), conditions, size, params, generator, on_step, cancel,
            "hires", image=latents, strength=strength, num_inference_steps=total,
        )  # fmt: skip

    def _render_edit(
        self,
        canvas: Canvas,
        params: RenderParams,
        on_step: StepCallback | None,
        cancel: threading.Event | None,
    ) -> EditOutcome:
        check_cancel(cancel)
        conditions = self.conditions(canvas, params)
        check_cancel(cancel)
        return render_edit(self, conditions, params, on_step, cancel)

    def _shared_components(self) -> dict[str, Any]:
        base = self._pipe
        return dict(
            vae=base.vae,
            text_encoder=base.text_encoder,
            text_encoder_2=base.text_encoder_2,
            tokenizer=base.tokenizer,
            tokenizer_2=base.tokenizer_2,
            unet=base.unet,
            scheduler=base.scheduler,
            requires_aesthetics_score=False,
            add_watermarker=False,
        )

    def _img2img_pipeline(self) -> Any:
        if self._img2img is None:
            from diffusers import StableDiffusionXLImg2ImgPipeline

            # Shares every component (and the regional processors) with the base pipeline. Built
            # directly: from_pipe() without a dtype would cast the shared modules to float32.
            self._img2img = StableDiffusionXLImg2ImgPipeline(**self._shared_components())
            self._img2img.set_progress_bar_config(disable=True)
        return self._img2img

    def inpaint_pipeline(self) -> Any:
        """diffusers' SDXL inpainting pipeline on the same components (edits; latent blending)."""
        self._ensure_loaded()
        if self._inpaint is None:
            from diffusers import StableDiffusionXLInpaintPipeline

            self._inpaint = StableDiffusionXLInpaintPipeline(**self._shared_components())
            self._inpaint.set_progress_bar_config(disable=True)
        return self._inpaint

    def denoise(
        self,
        pipe: Any,
        conditions: Conditions,
        size: tuple[int, int],
        params: RenderParams,
        generator: torch.Generator,
        on_step: StepCallback | None,
        cancel: threading.Event | None,
        phase: str,
        **call: Any,
    ) -> torch.Tensor:
        """One pipeline call on `conditions` at size = (width, height); `call` holds that pipeline's
        own arguments (steps, latents, image, strength, mask, micro-conditioning overrides)."""
        width, height = size
        unet = pipe.unet
        dtype = unet.dtype
        # One combined token set [regions ; negative] for both CFG halves: attention.py's block
        # mask gives each half its own tokens (the stock pipeline needs equal shapes anyway).
        combined = torch.cat([conditions.positive, conditions.negative], dim=1).to(dtype)
        factor = pipe.vae_scale_factor
        cfg = params.cfg > 1.0 and unet.config.time_cond_proj_dim is None  # diffusers' own rule
        regions = RegionalAttention(
            boxes=[r.box for r in conditions.regions],
            token_counts=[r.embeds.shape[1] for r in conditions.regions],
            negative_tokens=conditions.negative.shape[1],
            latent_size=(height // factor, width // factor),
            cfg=cfg,
        )
        arguments: dict[str, Any] = dict(
            prompt_embeds=combined,
            negative_prompt_embeds=combined,
            pooled_prompt_embeds=conditions.pooled.to(dtype),
            negative_pooled_prompt_embeds=conditions.negative_pooled.to(dtype),
            guidance_scale=params.cfg,
            generator=generator,
            output_type="latent",
            cross_attention_kwargs={"regions": regions},
            original_size=(height, width),  # SPEC 6 micro-conditioning
            target_size=(height, width),
            crops_coords_top_left=(0, 0),
            callback_on_step_end=self._step_callback(on_step, cancel, phase),
            callback_on_step_end_tensor_inputs=["latents"],
        )
        latents: torch.Tensor = pipe(**(arguments | call)).images
        return latents

    def _step_callback(
        self, on_step: StepCallback | None, cancel: threading.Event | None, phase: str
    ) -> Callable[[Any, int, Any, dict[str, Any]], dict[str, Any]]:
        def step_end(pipe: Any, index: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            check_cancel(cancel)
            if on_step is not None:
                preview = None
                if self.preview_every > 0 and (index + 1) % self.preview_every == 0:
                    preview = latent_to_rgb(_denoised_estimate(pipe, kwargs["latents"]))
                on_step(Step(index=index + 1, total=pipe.num_timesteps, preview=preview, phase=phase))
            return kwargs

        return step_end

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> Image.Image:
        """VAE decode and Omost's truncating 8-bit conversion."""
        pipe = self._pipe
        vae = pipe.vae
        latents = latents.to(dtype=vae.dtype)
        config = vae.config
        mean = getattr(config, "latents_mean", None)
        std = getattr(config, "latents_std", None)
        if mean is not None and std is not None:
            shape = (1, config.latent_channels, 1, 1)
            m = torch.tensor(mean).view(shape).to(latents)
            s = torch.tensor(std).view(shape).to(latents)
            latents = latents * s / config.scaling_factor + m
        else:
            latents = latents / config.scaling_factor
        decoded = vae.decode(latents.to(pipe._execution_device), return_dict=False)[0]
        return Image.fromarray(to_pixels(decoded), mode="RGB")  # Omost's truncating conversion

    @torch.no_grad()
    def encode_image(self, image: Image.Image) -> torch.Tensor:
        """SPEC 6: VAE-encode, the distribution's mode times the scaling factor."""
        pipe = self._pipe
        vae = pipe.vae
        pixels = from_pixels(np.asarray(image.convert("RGB")))
        pixels = pixels.to(pipe._execution_device, dtype=vae.dtype)
        latents = vae.encode(pixels).latent_dist.mode()
        config = vae.config
        mean = getattr(config, "latents_mean", None)
        std = getattr(config, "latents_std", None)
        if mean is not None and std is not None:
            shape = (1, config.latent_channels, 1, 1)
            m = torch.tensor(mean).view(shape).to(latents)
            s = torch.tensor(std).view(shape).to(latents)
            latents = (latents - m) * config.scaling_factor / s
        else:
            latents = latents * config.scaling_factor
        result: torch.Tensor = latents.to(pipe.unet.dtype)
        return result


def _denoised_estimate(pipe: Any, latents: torch.Tensor) -> torch.Tensor:
    """The sampler's current x0 estimate when it keeps one (DPM++ does), else the noisy latents."""
    outputs = getattr(pipe.scheduler, "model_outputs", None)
    if outputs and outputs[-1] is not None and outputs[-1].shape == latents.shape:
        estimate: torch.Tensor = outputs[-1]
        return estimate
    return latents
