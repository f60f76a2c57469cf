"""The region-aware FLUX.2 [klein] renderer: a canvas -> an image on diffusers' klein components.

`Flux2RegionalRenderer` implements `omost_engine.render.base.Renderer`, so the bot, the CLI and
the engine's GPU lane cannot tell it from the SDXL one. It loads `Flux2KleinPipeline` (hub id or
local folder, never the network at render time) for its components and helpers, and runs its own
denoising loop in diffusers' shape, because the stock `__call__` hands the same attention kwargs
to the conditional and the unconditional pass, while the regional mask (flux2_attention.py)
belongs to the conditional pass only:

1. check the settings (`check_params`);
2. encode: each layout region's prefixes and suffixes (SPEC 4) joined into one prompt and
   encoded by the pipeline's own `encode_prompt` (Qwen3 hidden states, padded to
   `text_tokens`), cached by text; the blocks are concatenated global first, each block keeping
   the text positions 0..L-1 it was trained with; the negative prompt is one more block;
3. prepare the seeded noise on the render device (the pipeline's `prepare_latents`) and the
   flow-matching schedule (klein's sigmas and empirical mu);
4. denoise: one transformer pass a step with the regional mask, plus an unmasked negative pass
   for true CFG on the undistilled ("base") checkpoints; distilled ones take no guidance;
5. optionally a high-resolution pass (SPEC 6's arrangement on a flow-matching schedule): decode,
   Lanczos-resize, VAE-encode, re-noise to the point `hires_steps` before the end of a
   `hires_steps / hires_denoise` schedule, and denoise from there with the same regions (their
   mask rebuilt for the larger token grid);
6. decode with the VAE (its batch-norm statistics undone, 2 x 2 patches unfolded).

Step previews decode the current clean-image estimate (x - sigma v) with the VAE every
`preview_every` steps (FLUX.2 has no published latent-to-RGB map; klein runs few steps, so a
decode per step is affordable). A set `cancel` event stops the render between transformer blocks
(forward pre-hooks on every block), so cancelling never waits for a whole step.

Memory modes: "resident" keeps the components on the device; "offload" is diffusers' model CPU
offload (one component on the GPU at a time) plus VAE tiling. `quantize="4bit"` loads the
transformer and the text encoder in bitsandbytes NF4 (needs the bitsandbytes package).

Errors as in pipeline.py: ModelNotAvailable naming `omost-bot download`, OutOfMemory naming the
model, InvalidRenderParams. Knows diffusers, torch and canvases; nothing of chats, jobs or queues.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

from omost_engine.canvas import Canvas, Layout, LayoutRegion, process
from omost_engine.canvas_code import to_code
from omost_engine.errors import ModelNotAvailable, OutOfMemory
from omost_engine.render.base import (
    RenderParams,
    RenderResult,
    Step,
    StepCallback,
    check_cancel,
    check_params,
    hires_size,
    model_not_available,
)
from omost_engine.render.flux2_attention import RegionalJointAttention
from omost_engine.render.metadata import png_metadata

DEFAULT_MODEL = "black-forest-labs/FLUX.2-klein-4B"
TEXT_TOKENS = 512
"""Klein's prompt length: every prompt is padded to it, and the transformer attends the padding."""
MemoryMode = Literal["resident", "offload"]
MEMORY_MODES: tuple[MemoryMode, ...] = ("resident", "offload")
Quantize = Literal["4bit"] | None


@dataclass(frozen=True)
class TextBlocks:
    """Text tokens for one transformer pass: embeddings, their position ids, tokens per block."""

    embeds: torch.Tensor  # (1, T, D)
    ids: torch.Tensor  # (1, T, 4)
    counts: tuple[int, ...]


@dataclass(frozen=True)
class _RenderCall:
    """What one render's denoising passes share (diffusers keeps a call's state on the call)."""

    pipe: Any
    positive: TextBlocks
    negative: TextBlocks | None
    """None: no guidance (a distilled checkpoint, or cfg <= 1)."""
    regions: RegionalJointAttention
    cfg: float
    on_step: StepCallback | None
    cancel: threading.Event | None


def region_prompt(region: LayoutRegion) -> str:
    """SPEC 4's prefixes then suffixes as one prompt (each part already ends with a full stop)."""
    return " ".join((*region.prefixes, *region.suffixes))


def text_layers_for(text_encoder: Any, joint_attention_dim: int) -> tuple[int, ...]:
    """Which hidden states feed the transformer: n evenly spaced layers, n = joint dim / hidden.

    On Qwen3's 36 layers with n = 3 this is klein's own (9, 18, 27); smaller encoders get the
    same spacing.
    """
    config = text_encoder.config
    count = max(1, joint_attention_dim // config.hidden_size)
    layers = config.num_hidden_layers
    return tuple(layers * (i + 1) // (count + 1) for i in range(count))


def _not_available(model: str, reason: str) -> ModelNotAvailable:
    return model_not_available(model, reason, "a local diffusers folder of a FLUX.2 [klein] pipeline")


def _quantized_parts(model: str, dtype: torch.dtype, local_files_only: bool) -> dict[str, Any]:
    """The transformer and text encoder in bitsandbytes NF4, computing in `dtype`."""
    from diffusers import BitsAndBytesConfig as DiffusersBnb
    from diffusers import Flux2Transformer2DModel
    from transformers import BitsAndBytesConfig, Qwen3ForCausalLM

    nf4 = dict(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)
    return {
        "transformer": Flux2Transformer2DModel.from_pretrained(
            model,
            subfolder="transformer",
            quantization_config=DiffusersBnb(**nf4),
            dtype=dtype,
            local_files_only=local_files_only,
        ),
        "text_encoder": Qwen3ForCausalLM.from_pretrained(
            model,
            subfolder="text_encoder",
            quantization_config=BitsAndBytesConfig(**nf4),
            dtype=dtype,
            local_files_only=local_files_only,
        ),
    }


def load_flux2_klein(
    model: str, dtype: torch.dtype, local_files_only: bool = True, quantize: Quantize = None
) -> Any:
    """Flux2KleinPipeline from a hub id or a local folder, without the network by default."""
    from diffusers import Flux2KleinPipeline

    path = Path(model).expanduser()
    if not path.is_dir() and (model.startswith(("/", "./", "../", "~")) or model.count("/") != 1):
        raise _not_available(model, f"there is no folder at {path}")
    source = str(path) if path.is_dir() else model
    try:
        parts = _quantized_parts(source, dtype, local_files_only) if quantize == "4bit" else {}
        return Flux2KleinPipeline.from_pretrained(
            source, dtype=dtype, local_files_only=local_files_only, **parts
        )
    except (OSError, ValueError) as e:  # huggingface_hub's not-found errors are OSErrors
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise _not_available(model, f"its weights could not be loaded ({first_line})") from e


@contextmanager
def _cancel_between_blocks(transformer: Any, cancel: threading.Event | None) -> Iterator[None]:
    """Raise Interrupted before the next transformer block once `cancel` is set (within a step)."""
    if cancel is None:
        yield
        return
    handles = [
        block.register_forward_pre_hook(lambda *_: check_cancel(cancel))
        for block in (*transformer.transformer_blocks, *transformer.single_transformer_blocks)
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class Flux2RegionalRenderer:
    """Omost's canvases on FLUX.2 [klein] with regional joint attention (see the module docstring)."""

    supports_edits = False  # no keep-the-picture edits yet: the bot draws whole pictures with it

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        device: str | None = None,
        dtype: torch.dtype | None = None,
        memory: MemoryMode = "resident",
        quantize: Quantize = None,
        local_files_only: bool = True,
        text_tokens: int = TEXT_TOKENS,
        text_layers: Sequence[int] | None = None,
        cache_size: int = 64,
        preview_every: int = 1,
    ) -> None:
        if memory not in MEMORY_MODES:
            raise ValueError(f"memory mode must be one of {MEMORY_MODES}; got {memory!r}")
        if quantize not in (None, "4bit"):
            raise ValueError(f"quantize must be None or '4bit'; got {quantize!r}")
        self.name = model
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if quantize == "4bit" and self.device.type != "cuda":
            # diffusers' bitsandbytes quantiser refuses to load without a CUDA GPU.
            raise ValueError(f"the 4-bit transformer needs a CUDA GPU; the render device is {self.device}")
        # FLUX is trained in bfloat16; float16 overflows in its activations.
        self.dtype = dtype or (torch.bfloat16 if self.device.type == "cuda" else torch.float32)
        self.memory: MemoryMode = memory
        self.quantize: Quantize = quantize
        self.local_files_only = local_files_only
        self.text_tokens = text_tokens
        self.text_layers = tuple(text_layers) if text_layers is not None else None
        self.cache_size = cache_size
        self.preview_every = preview_every
        self.encoder_passes = 0
        """Prompts run through the text encoder (cache misses), for tests and benchmarks."""
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._pipe: Any = None
        self._lock = threading.Lock()

    # --- lifecycle ----------------------------------------------------------------------------

    @property
    def pipeline(self) -> Any:
        """The loaded Flux2KleinPipeline (for inspection and benchmarks)."""
        return self._ensure_loaded()

    def _ensure_loaded(self) -> Any:
        if self._pipe is not None:
            return self._pipe
        pipe = load_flux2_klein(self.name, self.dtype, self.local_files_only, self.quantize)
        pipe.set_progress_bar_config(disable=True)
        if self.text_layers is None:
            self.text_layers = text_layers_for(pipe.text_encoder, pipe.transformer.config.joint_attention_dim)
        # Never pad past the tokenizer's own limit (Qwen3's is far above klein's 512).
        self.text_tokens = min(
            self.text_tokens, int(getattr(pipe.tokenizer, "model_max_length", self.text_tokens))
        )
        self._pipe = pipe
        self._place()
        return pipe

    def _place(self) -> None:
        pipe = self._pipe
        if self.memory == "offload":
            pipe.vae.enable_tiling()
            if self.device.type != "cpu":
                pipe.enable_model_cpu_offload(device=self.device)
        else:
            pipe.to(self.device)  # diffusers leaves bitsandbytes-quantised modules where they are

    def load(self) -> None:
        with self._lock:
            try:
                if self._pipe is None:
                    self._ensure_loaded()
                elif self.memory == "resident":
                    self._pipe.to(self.device)
            except torch.OutOfMemoryError as e:
                self._empty_device_cache()
                raise OutOfMemory(
                    self.name,
                    f"The image model {self.name} does not fit in GPU memory ({self.memory} mode); "
                    "try the 'offload' memory mode or the 4-bit transformer.",
                ) from e

    def unload(self) -> None:
        with self._lock:
            if self._pipe is None:
                return
            if self.memory == "resident":
                self._pipe.to("cpu")
            elif self.device.type != "cpu":
                self._pipe.maybe_free_model_hooks()
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
            self._cache.clear()
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
        with self._lock:
            try:
                image = self._render(canvas, params, on_step, cancel)
            except torch.OutOfMemoryError as e:
                self._empty_device_cache()
                raise OutOfMemory(
                    self.name,
                    f"The image model {self.name} ran out of GPU memory at {params.width}x{params.height} "
                    f"({self.memory} mode). Try a smaller size, no high-resolution fix, the 'offload' "
                    "memory mode or the 4-bit transformer.",
                ) from e
        return RenderResult(
            image=image,
            params=params,
            model=self.name,
            seconds=time.perf_counter() - started,
            metadata=png_metadata(to_code(canvas), params, self.name),
        )

    @torch.no_grad()
    def _render(
        self,
        canvas: Canvas,
        params: RenderParams,
        on_step: StepCallback | None,
        cancel: threading.Event | None,
    ) -> Image.Image:
        # 1. Inputs were checked by render(); load the components.
        check_cancel(cancel)
        pipe = self._ensure_loaded()
        device = pipe._execution_device
        # 2. Encode: one text block per region, and the negative prompt for true CFG.
        layout = process(canvas)
        positive = self.encode_layout(layout, device)
        guided = params.cfg > 1.0 and not pipe.config.is_distilled
        call = _RenderCall(
            pipe=pipe,
            positive=positive,
            negative=self.encode_texts([params.negative_prompt], device) if guided else None,
            regions=RegionalJointAttention(tuple(r.box for r in layout.regions), positive.counts),
            cfg=params.cfg,
            on_step=on_step,
            cancel=cancel,
        )
        check_cancel(cancel)
        # 3. Prepare the seeded noise on the render device.
        generator = torch.Generator(device).manual_seed(params.seed)
        latents, ids = self._noise(pipe, params.width, params.height, generator, device)
        grid = self._grid(pipe, params.width, params.height)
        with _cancel_between_blocks(pipe.transformer, cancel):
            # 4. Denoising loop.
            timesteps = self._schedule(pipe, params.steps, grid, device)
            latents = self._denoise(call, latents, ids, grid, timesteps, "base")
            size = hires_size(params)
            if size is not None:
                # 5. High-resolution pass: re-noise the resized image part of the way, denoise again.
                image = self._decode(pipe, latents, grid)
                check_cancel(cancel)
                clean = self._encode_image(pipe, image.resize(size, Image.Resampling.LANCZOS), device)
                noise, ids = self._noise(pipe, size[0], size[1], generator, device)
                grid = self._grid(pipe, size[0], size[1])
                total = max(params.hires_steps, round(params.hires_steps / params.hires_denoise))
                start = total - params.hires_steps
                timesteps = self._schedule(pipe, total, grid, device, start=start)
                sigma = pipe.scheduler.sigmas[start].to(device)
                latents = sigma * noise + (1.0 - sigma) * clean  # flow matching's forward process
                latents = self._denoise(call, latents, ids, grid, timesteps, "hires")
        check_cancel(cancel)
        # 6. Decode.
        return self._decode(pipe, latents, grid)

    # --- text ---------------------------------------------------------------------------------

    def encode_layout(self, layout: Layout, device: torch.device) -> TextBlocks:
        """One block of `text_tokens` per region, global first, far to near (the mask's order)."""
        return self.encode_texts([region_prompt(r) for r in layout.regions], device)

    def encode_texts(self, texts: Sequence[str], device: torch.device) -> TextBlocks:
        pipe = self._ensure_loaded()
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if missing:
            embeds, _ = pipe.encode_prompt(
                prompt=missing,
                device=device,
                max_sequence_length=self.text_tokens,
                text_encoder_out_layers=self.text_layers,
            )
            self.encoder_passes += len(missing)
            for text, row in zip(missing, embeds, strict=True):
                self._remember(text, row.to("cpu"))
        rows = [self._recall(t) for t in texts]
        blocks = torch.cat(rows, dim=0)[None].to(device=device, dtype=pipe.transformer.dtype)
        # Every block keeps the positions 0..L-1 of a lone prompt (the mask keeps blocks apart).
        ids = torch.cat([pipe._prepare_text_ids(row[None]) for row in rows], dim=1).to(device)
        return TextBlocks(embeds=blocks, ids=ids, counts=tuple(row.shape[0] for row in rows))

    def _remember(self, text: str, embeds: torch.Tensor) -> None:
        self._cache[text] = embeds
        while len(self._cache) > max(self.cache_size, 1):
            self._cache.popitem(last=False)

    def _recall(self, text: str) -> torch.Tensor:
        self._cache.move_to_end(text)
        return self._cache[text]

    # --- latents ------------------------------------------------------------------------------

    @staticmethod
    def _grid(pipe: Any, width: int, height: int) -> tuple[int, int]:
        """The image-token grid: VAE downscaling, then 2 x 2 patches."""
        patch = pipe.vae_scale_factor * 2
        return height // patch, width // patch

    @staticmethod
    def _noise(
        pipe: Any, width: int, height: int, generator: torch.Generator, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        channels = pipe.transformer.config.in_channels // 4
        latents, ids = pipe.prepare_latents(1, channels, height, width, torch.float32, device, generator)
        return latents, ids

    @staticmethod
    def _schedule(
        pipe: Any, steps: int, grid: tuple[int, int], device: torch.device, start: int = 0
    ) -> torch.Tensor:
        """Klein's flow-matching schedule (its sigmas and resolution-dependent shift mu)."""
        from diffusers.pipelines.flux2.pipeline_flux2_klein import compute_empirical_mu

        scheduler = pipe.scheduler
        sigmas: Any = np.linspace(1.0, 1 / steps, steps)
        if getattr(scheduler.config, "use_flow_sigmas", False):
            sigmas = None
        mu = compute_empirical_mu(image_seq_len=grid[0] * grid[1], num_steps=steps)
        scheduler.set_timesteps(steps, device=device, sigmas=sigmas, mu=mu)
        scheduler.set_begin_index(start)
        timesteps: torch.Tensor = scheduler.timesteps[start:]
        return timesteps

    def _denoise(
        self,
        call: _RenderCall,
        latents: torch.Tensor,
        ids: torch.Tensor,
        grid: tuple[int, int],
        timesteps: torch.Tensor,
        phase: str,
    ) -> torch.Tensor:
        transformer = call.pipe.transformer
        scheduler = call.pipe.scheduler
        masked = call.regions.kwargs(grid, latents.device, transformer.dtype)
        for i, t in enumerate(timesteps):
            check_cancel(call.cancel)
            velocity = self._velocity(transformer, latents, ids, t, call.positive, masked)
            if call.negative is not None:
                # True CFG; the unconditional pass is plain attention (no regions).
                unconditional = self._velocity(transformer, latents, ids, t, call.negative, None)
                velocity = unconditional + call.cfg * (velocity - unconditional)
            index = scheduler.step_index if scheduler.step_index is not None else scheduler.begin_index
            sigma = scheduler.sigmas[index or 0]
            estimate = latents - sigma.to(latents.device) * velocity  # the clean image, for previews
            latents = scheduler.step(velocity, t, latents, return_dict=False)[0]
            check_cancel(call.cancel)
            if call.on_step is not None:
                preview = None
                if self.preview_every > 0 and (i + 1) % self.preview_every == 0:
                    preview = self._decode(call.pipe, estimate, grid)
                call.on_step(Step(index=i + 1, total=len(timesteps), preview=preview, phase=phase))
        return latents

    @staticmethod
    def _velocity(
        transformer: Any,
        latents: torch.Tensor,
        ids: torch.Tensor,
        t: torch.Tensor,
        text: TextBlocks,
        attention: dict[str, Any] | None,
    ) -> torch.Tensor:
        out: torch.Tensor = transformer(
            hidden_states=latents.to(transformer.dtype),
            timestep=(t.expand(latents.shape[0]) / 1000).to(transformer.dtype),
            guidance=None,  # klein has no guidance embedding
            encoder_hidden_states=text.embeds,
            txt_ids=text.ids,
            img_ids=ids,
            joint_attention_kwargs=attention,
            return_dict=False,
        )[0]
        return out.float()

    @staticmethod
    def _batch_norm(pipe: Any, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The VAE's latent batch-norm statistics, which klein's latents are normalised by."""
        bn = pipe.vae.bn
        mean = bn.running_mean.view(1, -1, 1, 1).to(like.device, like.dtype)
        std = torch.sqrt(bn.running_var.view(1, -1, 1, 1) + pipe.vae.config.batch_norm_eps).to(
            like.device, like.dtype
        )
        return mean, std

    def _decode(self, pipe: Any, latents: torch.Tensor, grid: tuple[int, int]) -> Image.Image:
        vae = pipe.vae
        # Packed (1, H*W, C), row-major -> (1, C, H, W) patches -> VAE latents.
        patches = latents.transpose(1, 2).reshape(latents.shape[0], -1, grid[0], grid[1])
        mean, std = self._batch_norm(pipe, patches)
        unfolded = pipe._unpatchify_latents(patches * std + mean)
        decoded = vae.decode(unfolded.to(pipe._execution_device, vae.dtype), return_dict=False)[0]
        images: list[Image.Image] = pipe.image_processor.postprocess(decoded.float(), output_type="pil")
        return images[0]

    def _encode_image(self, pipe: Any, image: Image.Image, device: torch.device) -> torch.Tensor:
        """VAE-encode (the distribution's mode), fold 2 x 2 patches, normalise, pack row-major."""
        vae = pipe.vae
        pixels = pipe.image_processor.preprocess(image).to(device, vae.dtype)
        patches = pipe._patchify_latents(vae.encode(pixels).latent_dist.mode())
        mean, std = self._batch_norm(pipe, patches)
        packed = ((patches - mean) / std).flatten(2).transpose(1, 2)
        return packed.float()
