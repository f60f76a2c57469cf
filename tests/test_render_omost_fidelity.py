"""Same canvas, same seed, same latents as Omost's own pipeline (issue 12, items 1-5).

The reference below is Omost's sampling written out from its published formulas (not its code):
the k-diffusion DPM++ 2M loop over a Karras schedule built from SD's betas in float64, the UNet
fed x / sqrt(sigma^2 + 1) at the nearest training timestep, the seed's noise drawn on the render
device and scaled by sigma_0, the high-resolution pass over the last `steps` sigmas of the
schedule of int(steps / denoise) steps, and 8-bit pixels by truncation. Our renderer runs the
stock diffusers pipelines; with the defaults its latents must equal the reference's.
"""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from omost_engine.canvas import process
from omost_engine.canvas_code import parse
from omost_engine.render.attention import RegionalAttention
from omost_engine.render.base import InvalidRenderParams, RenderParams, check_params
from omost_engine.render.metadata import encode_png, read_png_metadata
from omost_engine.render.pipeline import SDXLRegionalRenderer, dpmpp_2m_karras
from omost_engine.render.sampling import from_pixels, img2img_arguments, seeded_generator, to_pixels
from tests.seed import seed_answers
from tests.tiny_sdxl import build_tiny_sdxl

BASE = RenderParams(width=64, height=64, steps=4, seed=2024)


@pytest.fixture(scope="module")
def renderer(tmp_path_factory: pytest.TempPathFactory) -> SDXLRegionalRenderer:
    folder = build_tiny_sdxl(tmp_path_factory.mktemp("sdxl") / "tiny-sdxl")
    return SDXLRegionalRenderer(str(folder), device="cpu", preview_every=0)


@pytest.fixture(scope="module")
def canvas() -> Any:
    return parse(seed_answers()[0])


# --- Omost's formulas, written out -----------------------------------------------------------


def omost_training_sigmas() -> torch.Tensor:
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    alphas_cumprod = torch.tensor(np.cumprod((1.0 - betas).numpy()), dtype=torch.float32)
    return ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5


def omost_karras(n: int, rho: float = 7.0) -> torch.Tensor:
    """n Karras sigmas from the largest training sigma to the smallest, then a final 0."""
    sigmas = omost_training_sigmas()
    ramp = torch.linspace(0, 1, n)
    hi, lo = sigmas[-1] ** (1 / rho), sigmas[0] ** (1 / rho)
    return torch.cat([(hi + ramp * (lo - hi)) ** rho, torch.zeros(1)])


def omost_timestep(sigma: torch.Tensor) -> int:
    """The training timestep whose sigma is nearest in log space."""
    return int((omost_training_sigmas().log() - sigma.log()).abs().argmin())


def omost_hires_sigmas(steps: int, denoise: float) -> torch.Tensor:
    return omost_karras(int(steps / denoise))[-(steps + 1) :]


def omost_to_uint8(decoded: torch.Tensor) -> np.ndarray:
    return (decoded[0].movedim(0, -1) * 127.5 + 127.5).float().numpy().clip(0, 255).astype(np.uint8)


class OmostReference:
    """Omost's sampler on the renderer's own UNet, VAE and conditions."""

    def __init__(self, renderer: SDXLRegionalRenderer, canvas: Any, params: RenderParams) -> None:
        self.pipe = renderer.pipeline
        self.params = params
        self.conditions = renderer.encoder.encode_layout(
            process(canvas), params.negative_prompt, torch.device("cpu"), "omost"
        )

    def _denoiser(self, height: int, width: int) -> Any:
        c = self.conditions
        combined = torch.cat([c.positive, c.negative], dim=1)
        regions = RegionalAttention(
            boxes=[r.box for r in c.regions],
            token_counts=[r.embeds.shape[1] for r in c.regions],
            negative_tokens=c.negative.shape[1],
            latent_size=(height // 8, width // 8),
        )
        time_ids = torch.tensor([[height, width, 0, 0, height, width]] * 2, dtype=torch.float32)
        added = {"text_embeds": torch.cat([c.negative_pooled, c.pooled]), "time_ids": time_ids}

        def denoised(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            x_in = x / (sigma**2 + 1) ** 0.5
            t = torch.tensor(omost_timestep(sigma))
            eps = self.pipe.unet(
                torch.cat([x_in, x_in]),
                t,
                encoder_hidden_states=torch.cat([combined, combined]),
                added_cond_kwargs=added,
                cross_attention_kwargs={"regions": regions},
            ).sample
            uncond, cond = eps.chunk(2)
            return x - (uncond + self.params.cfg * (cond - uncond)) * sigma

        return denoised

    @staticmethod
    def _dpmpp_2m(denoised: Any, x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
        previous = None
        for i in range(len(sigmas) - 1):
            sigma, following = sigmas[i], sigmas[i + 1]
            estimate = denoised(x, sigma)
            t, t_next = -sigma.log(), -following.log()
            h = t_next - t
            if previous is None or following == 0:
                x = (following / sigma) * x - torch.expm1(-h) * estimate
            else:
                r = (t - (-sigmas[i - 1].log())) / h
                blended = (1 + 1 / (2 * r)) * estimate - (1 / (2 * r)) * previous
                x = (following / sigma) * x - torch.expm1(-h) * blended
            previous = estimate
        return x

    @torch.no_grad()
    def latents(self) -> torch.Tensor:
        p = self.params
        generator = torch.Generator("cpu").manual_seed(p.seed)
        sigmas = omost_karras(p.steps)
        noise = torch.randn((1, 4, p.height // 8, p.width // 8), generator=generator)
        x = self._dpmpp_2m(self._denoiser(p.height, p.width), noise * sigmas[0], sigmas)
        if p.hires_scale <= 1.05:
            return x
        vae = self.pipe.vae
        pixels = omost_to_uint8(vae.decode(x / vae.config.scaling_factor).sample)
        w, h = round(p.width * p.hires_scale / 64) * 64, round(p.height * p.hires_scale / 64) * 64
        resized = np.asarray(Image.fromarray(pixels).resize((w, h), Image.Resampling.LANCZOS))
        scaled = torch.from_numpy(resized.copy())[None].float() / 127.5 - 1.0
        x0 = vae.encode(scaled.movedim(-1, 1)).latent_dist.mode() * vae.config.scaling_factor
        sigmas = omost_hires_sigmas(p.hires_steps, p.hires_denoise)
        noise = torch.randn(x0.shape, generator=generator)
        return self._dpmpp_2m(self._denoiser(h, w), x0 + noise * sigmas[0], sigmas)


def close(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return float((ours - reference).abs().max() / reference.abs().max())


# --- the whole render ----------------------------------------------------------------------------


def test_base_latents_equal_omosts_pipeline(renderer: SDXLRegionalRenderer, canvas: Any) -> None:
    ours = renderer.render_latents(canvas, BASE)
    reference = OmostReference(renderer, canvas, BASE).latents()
    assert close(ours, reference) < 1e-4


def test_hires_latents_equal_omosts_pipeline(renderer: SDXLRegionalRenderer, canvas: Any) -> None:
    # 3 / 0.55 -> a schedule of 5 of which the last 3 run: diffusers' own round() and strength
    # would have run 3 of round(5.45) = 5 too, but 0.45 -> int(6.67) = 6 vs round = 7 differs.
    params = RenderParams(
        width=64, height=64, steps=3, seed=7, hires_scale=2.0, hires_steps=3, hires_denoise=0.45
    )
    ours = renderer.render_latents(canvas, params)
    reference = OmostReference(renderer, canvas, params).latents()
    assert ours.shape == (1, 4, 16, 16)
    assert close(ours, reference) < 1e-4


# --- each difference on its own -----------------------------------------------------------------


def _first_unet_inputs(renderer: SDXLRegionalRenderer, canvas: Any, params: RenderParams) -> list[Any]:
    seen: list[Any] = []

    def hook(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        seen.append((args[0].detach().clone(), int(args[1])))

    handle = renderer.pipeline.unet.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        renderer.render(canvas, params)
    finally:
        handle.remove()
    return seen


def test_the_first_latent_is_noise_times_sigma0_over_sqrt_sigma0_squared_plus_one(
    renderer: SDXLRegionalRenderer, canvas: Any
) -> None:
    (first, t), *_ = _first_unet_inputs(renderer, canvas, BASE)
    noise = torch.randn((1, 4, 8, 8), generator=torch.Generator("cpu").manual_seed(BASE.seed))
    sigma0 = omost_karras(BASE.steps)[0]
    assert abs(float(sigma0) - 14.6146) < 1e-3  # SD's largest sigma
    expected = noise * sigma0 / (sigma0**2 + 1) ** 0.5  # x 0.99767, not diffusers' x 1.0
    assert torch.allclose(first[:1], expected, atol=1e-5)
    assert not torch.allclose(first[:1], noise, atol=1e-3)
    assert t == omost_timestep(sigma0) == 999


@pytest.mark.parametrize(("steps", "denoise"), [(3, 0.45), (2, 0.3), (4, 1.0)])
def test_the_hires_pass_runs_omosts_timesteps(
    renderer: SDXLRegionalRenderer, canvas: Any, steps: int, denoise: float
) -> None:
    params = RenderParams(
        width=64, height=64, steps=1, hires_scale=1.5, hires_steps=steps, hires_denoise=denoise
    )
    seen = _first_unet_inputs(renderer, canvas, params)
    hires = [t for _, t in seen[1:]]  # after the one base step
    expected = [omost_timestep(s) for s in omost_hires_sigmas(steps, denoise)[:-1]]
    assert hires == expected


def test_every_hires_setting_starts_where_omost_starts() -> None:
    """All of Omost's settings (steps 10 and 20, denoise 0.10-1.00), through diffusers' own slicing."""
    from diffusers import StableDiffusionXLImg2ImgPipeline

    for steps in (10, 20):
        for hundredths in range(10, 101):
            denoise = hundredths / 100
            total, strength = img2img_arguments(steps, denoise)
            scheduler = dpmpp_2m_karras()
            scheduler.set_timesteps(total)
            holder = SimpleNamespace(scheduler=scheduler)
            timesteps, count = StableDiffusionXLImg2ImgPipeline.get_timesteps(holder, total, strength, "cpu")
            omost = omost_hires_sigmas(steps, denoise)
            assert count == steps, (steps, denoise)
            assert torch.allclose(scheduler.sigmas[-(steps + 1) :], omost, rtol=1e-4), (steps, denoise)
            assert timesteps.tolist() == [omost_timestep(s) for s in omost[:-1]], (steps, denoise)


def test_hires_settings_out_of_range_are_refused() -> None:
    with pytest.raises(InvalidRenderParams, match="hires denoise"):
        check_params(RenderParams(hires_denoise=0.0))
    with pytest.raises(InvalidRenderParams, match="at most 1000"):
        check_params(RenderParams(hires_steps=150, hires_denoise=0.1))
    with pytest.raises(InvalidRenderParams, match="pooled"):
        check_params(RenderParams(pooled="clip"))  # type: ignore[arg-type]


def test_pixels_are_truncated_to_8_bits_not_rounded() -> None:
    decoded = torch.tensor([0.999, -0.999, 0.0, 1.5, -1.5, 0.5039]).view(1, 3, 1, 2)
    pixels = to_pixels(decoded)
    # x * 127.5 + 127.5: 254.87 -> 254, 0.13 -> 0, 127.5 -> 127, clipped 255 and 0, 191.75 -> 191
    assert pixels.shape == (1, 2, 3)
    assert sorted(pixels.reshape(-1).tolist()) == [0, 0, 127, 191, 254, 255]
    back = from_pixels(np.array([[[0, 255, 127]]], dtype=np.uint8))
    assert torch.allclose(back.view(-1), torch.tensor([-1.0, 1.0, 127 / 127.5 - 1.0]))


def test_the_image_is_the_truncated_decode_of_the_latents(
    renderer: SDXLRegionalRenderer, canvas: Any
) -> None:
    latents = renderer.render_latents(canvas, BASE)
    image = renderer.render(canvas, BASE).image
    vae = renderer.pipeline.vae
    with torch.no_grad():
        decoded = vae.decode(latents / vae.config.scaling_factor).sample
    assert np.array_equal(np.asarray(image), omost_to_uint8(decoded))
    rounded = ((decoded[0].movedim(0, -1) / 2 + 0.5).clamp(0, 1).numpy() * 255).round().astype(np.uint8)
    assert not np.array_equal(np.asarray(image), rounded)  # diffusers' rounding would differ


def test_the_seed_generator_lives_on_the_render_device(renderer: SDXLRegionalRenderer) -> None:
    generator = seeded_generator(5, renderer.device)
    assert generator.device == renderer.device
    assert generator.initial_seed() == 5


def test_standard_sdxl_pooling_is_one_setting_away(renderer: SDXLRegionalRenderer, canvas: Any) -> None:
    omost = renderer.render_latents(canvas, BASE)
    sdxl_params = RenderParams(width=64, height=64, steps=4, seed=2024, pooled="sdxl")
    sdxl = renderer.render_latents(canvas, sdxl_params)
    assert close(sdxl, omost) > 1e-3
    result = renderer.render(canvas, sdxl_params)
    restored = read_png_metadata(encode_png(result.image, result.metadata))
    assert restored is not None and restored.params.pooled == "sdxl"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_a_gpu_the_noise_is_drawn_by_a_cuda_generator(tmp_path: Path, canvas: Any) -> None:
    renderer = SDXLRegionalRenderer(str(build_tiny_sdxl(tmp_path / "m")), device="cuda")
    seen: list[torch.Tensor] = []
    handle = renderer.pipeline.unet.register_forward_pre_hook(
        lambda m, args: seen.append(args[0].detach().clone())
    )
    try:
        renderer.render(canvas, BASE, cancel=threading.Event())
    finally:
        handle.remove()
    generator = torch.Generator("cuda").manual_seed(BASE.seed)
    noise = torch.randn((1, 4, 8, 8), generator=generator, device="cuda", dtype=renderer.pipeline.unet.dtype)
    sigma0 = omost_karras(BASE.steps)[0].item()
    expected = noise * sigma0 / (sigma0**2 + 1) ** 0.5
    assert torch.allclose(seen[0][:1].float(), expected.float(), atol=1e-2)
    renderer.close()


def test_the_render_cli_honours_hires_steps_denoise_and_pooled(
    renderer: SDXLRegionalRenderer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bot.cli import main

    source = tmp_path / "seed.txt"
    source.write_text(seed_answers()[0], encoding="utf-8")
    out = tmp_path / "out.png"
    argv = ["render", str(source), "-o", str(out), "--model", renderer.name, "--device", "cpu"]
    argv += ["--width", "64", "--height", "64", "--steps", "1", "--hires-scale", "1.5"]
    assert main([*argv, "--hires-steps", "2", "--hires-denoise", "0.3", "--pooled", "sdxl"]) == 0
    restored = read_png_metadata(out)
    assert restored is not None
    assert (restored.params.hires_steps, restored.params.hires_denoise) == (2, 0.3)
    assert restored.params.pooled == "sdxl"
    assert Image.open(out).size == (128, 128)
    capsys.readouterr()
