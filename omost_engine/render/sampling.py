"""What the stock diffusers pipeline is given, and how its output is read, so that its numbers are Omost's.

Omost's app samples with its own DPM++ 2M loop (k-diffusion style: latents carry sigma, the UNet
sees x / sqrt(sigma^2 + 1)); we keep diffusers' DPMSolverMultistepScheduler, which computes the
same steps in the variance-preserving form, and close the remaining gaps by its inputs (issue 12):

1. the seed's noise is drawn with a generator on the render device, in the UNet's dtype, as Omost
   draws it (a CPU generator gives other numbers for the same seed on a GPU);
2. the base pass starts from noise x sigma_0 / sqrt(sigma_0^2 + 1) (sigma_0: the first Karras
   sigma), the latent Omost's UNet first sees, where diffusers would start from noise x 1.0;
3. the high-resolution pass runs the last `steps` of the Karras schedule of int(steps / denoise)
   steps (`base.hires_schedule`); `img2img_arguments` picks the img2img strength that makes
   diffusers start exactly there, and its `add_noise` then equals Omost's x0 + noise x sigma;
4. decoded images become 8-bit by truncation, computed in the VAE's dtype, and go back to the
   VAE as x / 127.5 - 1, both as Omost's app converts them (diffusers rounds).

Knows torch, numpy and diffusers' scheduler API; nothing of canvases, pipelines' callers or chats.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from omost_engine.render.base import hires_schedule


def seeded_generator(seed: int, device: torch.device) -> torch.Generator:
    """A generator on the render device, seeded: Omost draws its noise on the GPU it renders on."""
    return torch.Generator(device=device).manual_seed(seed)


def draw_noise(shape: tuple[int, ...], generator: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    """Standard normal noise drawn on the generator's device in `dtype` (Omost's randn call)."""
    return torch.randn(shape, generator=generator, device=generator.device, dtype=dtype)


def first_sigma(scheduler: Any, steps: int) -> float:
    """sigma_0 of the schedule `scheduler` runs for `steps` steps (a copy is set, not the original)."""
    probe = type(scheduler).from_config(scheduler.config)
    probe.set_timesteps(steps)
    return float(probe.sigmas[0])


def initial_latents(noise: torch.Tensor, sigma: float) -> torch.Tensor:
    """The latent Omost's UNet sees first: (noise x sigma) / sqrt(sigma^2 + 1), in the noise's dtype.

    The scheduler's `init_noise_sigma` is 1.0 for DPM-Solver, so the pipeline passes this on
    unchanged. The arithmetic runs in the noise's dtype and order, as Omost's does.
    """
    s = torch.tensor(sigma, dtype=noise.dtype, device=noise.device)
    return (noise * s) / (s * s + 1) ** 0.5


def img2img_arguments(steps: int, denoise: float) -> tuple[int, float]:
    """(num_inference_steps, strength) for diffusers' img2img to run Omost's hires schedule.

    diffusers runs the last int(num_inference_steps x strength) steps of the schedule. With the
    schedule length Omost uses and strength (steps + 0.5) / length, that product is steps + 0.5
    (never within float error of an integer), so exactly `steps` steps run.
    """
    total, run = hires_schedule(steps, denoise)
    return total, min(1.0, (run + 0.5) / total)


def to_pixels(decoded: torch.Tensor) -> np.ndarray:
    """(1, 3, H, W) VAE output in -1..1 -> (H, W, 3) uint8, as Omost's app converts it.

    x * 127.5 + 127.5 in the tensor's own dtype (bf16 rounds there, as in Omost), then clipped and
    truncated to 8 bits; diffusers' postprocess would round instead (up to one level per pixel).
    """
    scaled = decoded[0].movedim(0, -1) * 127.5 + 127.5
    array: np.ndarray = scaled.detach().float().cpu().numpy().clip(0, 255).astype(np.uint8)
    return array


def from_pixels(pixels: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 3, H, W) float32 in -1..1: x / 127.5 - 1, as Omost's app feeds the VAE."""
    tensor = torch.from_numpy(np.array(pixels, dtype=np.uint8)[None]).float() / 127.5 - 1.0
    return tensor.movedim(-1, 1)
