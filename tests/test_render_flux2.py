"""The FLUX.2 [klein] renderer on a tiny klein folder (CPU, <= 128 px): pictures, regions, the mask.

End to end through the real diffusers components: the seed canvas draws with progress and
previews, the same seed gives the same pixels, cancel stops inside a step, the PNG carries the
canvas. Locality is measured on the transformer itself: a region's text reaches only the image
tokens of its box after the first block. The mask is checked against a literal implementation
of the rule that materialises every score.
"""

from __future__ import annotations

import json
import math
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from omost_engine.canvas import process
from omost_engine.canvas_code import parse
from omost_engine.errors import Interrupted, ModelNotAvailable, OutOfMemory
from omost_engine.render.base import RenderParams, Step
from omost_engine.render.factory import UnknownModelFamily, detect_family, make_renderer
from omost_engine.render.flux2 import Flux2RegionalRenderer
from omost_engine.render.flux2_attention import RegionalJointAttention, regional_mask
from omost_engine.render.metadata import encode_png, read_png_metadata
from tests.seed import seed_answers
from tests.tiny_flux2 import build_tiny_flux2

SMALL = RenderParams(width=64, height=64, steps=2, cfg=4.0)
TOKENS = 48  # text tokens per region here (klein uses 512); holds every prefix of the seed canvas


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_flux2(tmp_path_factory.mktemp("flux2") / "tiny-klein")


@pytest.fixture(scope="module")
def renderer(model_dir: Path) -> Flux2RegionalRenderer:
    return Flux2RegionalRenderer(str(model_dir), device="cpu", text_tokens=TOKENS)


@pytest.fixture(scope="module")
def seed_canvas() -> Any:
    return parse(seed_answers()[0])


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


# --- end to end -------------------------------------------------------------------------------


def test_the_seed_canvas_renders_with_progress_and_previews(
    renderer: Flux2RegionalRenderer, seed_canvas: Any
) -> None:
    steps: list[Step] = []
    result = renderer.render(
        seed_canvas, RenderParams(width=64, height=128, steps=3, cfg=4.0), on_step=steps.append
    )
    assert result.image.size == (64, 128)
    assert [(s.index, s.total, s.phase) for s in steps] == [(1, 3, "base"), (2, 3, "base"), (3, 3, "base")]
    assert all(s.preview is not None and s.preview.size == (64, 128) for s in steps)
    assert pixels(result.image).std() > 0  # not a blank picture
    assert result.model == renderer.name


def test_same_seed_same_pixels_and_another_seed_differs(
    renderer: Flux2RegionalRenderer, seed_canvas: Any
) -> None:
    first = renderer.render(seed_canvas, SMALL).image
    again = renderer.render(seed_canvas, SMALL).image
    other = renderer.render(seed_canvas, RenderParams(width=64, height=64, steps=3, cfg=4.0, seed=7)).image
    assert np.array_equal(pixels(first), pixels(again))
    assert not np.array_equal(pixels(first), pixels(other))


def _with_region(canvas: Any, index: int, description: str) -> Any:
    """The canvas with region `index` (in the order written) described differently."""
    regions = list(canvas.regions)
    regions[index] = replace(regions[index], description=description)
    return replace(canvas, regions=tuple(regions))


def test_a_region_text_changes_the_picture(renderer: Flux2RegionalRenderer, seed_canvas: Any) -> None:
    edited = _with_region(seed_canvas, 0, "A red bicycle.")
    before, after = renderer.render(seed_canvas, SMALL).image, renderer.render(edited, SMALL).image
    assert not np.array_equal(pixels(before), pixels(after))


def _count_passes(transformer: Any) -> tuple[list[bool], Any]:
    """Record, per transformer call, whether it carried the regional mask."""
    masked: list[bool] = []

    def hook(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        attention = kwargs.get("joint_attention_kwargs") or {}
        masked.append("attention_mask" in attention)

    return masked, transformer.register_forward_pre_hook(hook, with_kwargs=True)


def test_guidance_adds_an_unmasked_negative_pass_and_cfg_1_runs_one_pass(
    renderer: Flux2RegionalRenderer, seed_canvas: Any
) -> None:
    masked, handle = _count_passes(renderer.pipeline.transformer)
    try:
        renderer.render(seed_canvas, SMALL)  # cfg 4 on a base (undistilled) checkpoint: true CFG
        assert masked == [True, False] * 2
        masked.clear()
        renderer.render(seed_canvas, RenderParams(width=64, height=64, steps=2, cfg=1.0))
        assert masked == [True] * 2
    finally:
        handle.remove()


def test_a_distilled_checkpoint_ignores_guidance(tmp_path: Path, seed_canvas: Any) -> None:
    folder = build_tiny_flux2(tmp_path / "distilled", distilled=True)
    renderer = Flux2RegionalRenderer(str(folder), device="cpu", text_tokens=TOKENS, preview_every=0)
    masked, handle = _count_passes(renderer.pipeline.transformer)
    renderer.render(seed_canvas, SMALL)
    handle.remove()
    assert masked == [True] * 2


def test_cancel_stops_inside_a_step(renderer: Flux2RegionalRenderer, seed_canvas: Any) -> None:
    cancel = threading.Event()
    transformer = renderer.pipeline.transformer
    blocks = [*transformer.transformer_blocks, *transformer.single_transformer_blocks]
    ran: list[int] = []

    def count(module: Any, args: Any, output: Any) -> None:
        ran.append(1)
        if len(ran) == len(blocks) + 1:  # the first block of the second pass
            cancel.set()

    handles = [b.register_forward_hook(count) for b in blocks]
    try:
        with pytest.raises(Interrupted):
            renderer.render(seed_canvas, SMALL, cancel=cancel)
    finally:
        for h in handles:
            h.remove()
    assert len(ran) == len(blocks) + 1  # no block ran after the event was set
    assert renderer.render(seed_canvas, SMALL).image.size == (64, 64)  # and the renderer still works


def test_hires_pass_gives_the_scaled_size_and_reports_its_phase(
    renderer: Flux2RegionalRenderer, seed_canvas: Any
) -> None:
    steps: list[Step] = []
    params = RenderParams(
        width=64, height=64, steps=2, cfg=1.0, hires_scale=2.0, hires_steps=2, hires_denoise=0.5
    )
    result = renderer.render(seed_canvas, params, on_step=steps.append)
    assert result.image.size == (128, 128)
    assert [(s.phase, s.index, s.total) for s in steps] == [
        ("base", 1, 2),
        ("base", 2, 2),
        ("hires", 1, 2),
        ("hires", 2, 2),
    ]


def test_png_metadata_round_trips(renderer: Flux2RegionalRenderer, seed_canvas: Any) -> None:
    params = RenderParams(width=64, height=64, steps=2, cfg=3.0, seed=42)
    result = renderer.render(seed_canvas, params)
    restored = read_png_metadata(encode_png(result.image, result.metadata))
    assert restored is not None
    assert restored.canvas == seed_canvas
    assert restored.params == params
    assert restored.model == renderer.name


def test_text_encodings_are_cached_by_prompt(renderer: Flux2RegionalRenderer, seed_canvas: Any) -> None:
    renderer.render(seed_canvas, SMALL)
    before = renderer.encoder_passes
    renderer.render(seed_canvas, RenderParams(width=64, height=64, steps=1, cfg=4.0, seed=5))
    assert renderer.encoder_passes == before


def test_missing_weights_name_the_model_and_the_download_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed_canvas: Any
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    for model in ("nobody/no-such-klein", str(tmp_path / "missing-folder")):
        with pytest.raises(ModelNotAvailable) as info:
            Flux2RegionalRenderer(model, device="cpu").render(seed_canvas, SMALL)
        assert model in info.value.detail  # the whole name for the log
        assert Path(model).name in str(info.value)  # the user's text leaves local paths out
        assert "omost-bot download" in str(info.value)


def test_out_of_memory_names_the_model(renderer: Flux2RegionalRenderer, seed_canvas: Any) -> None:
    def exhausted(step: Step) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    with pytest.raises(OutOfMemory) as info:
        renderer.render(seed_canvas, SMALL, on_step=exhausted)
    assert renderer.name in info.value.detail and Path(renderer.name).name in str(info.value)


def test_lower_memory_mode_renders_the_same_image(model_dir: Path, seed_canvas: Any) -> None:
    renderer = Flux2RegionalRenderer(str(model_dir), device="cpu", text_tokens=TOKENS, preview_every=0)
    before = renderer.render(seed_canvas, SMALL).image
    assert renderer.lower_memory() is True
    assert renderer.lower_memory() is False  # already the lowest mode
    renderer.unload()
    renderer.load()
    assert np.array_equal(pixels(before), pixels(renderer.render(seed_canvas, SMALL).image))
    renderer.close()


def test_4bit_needs_a_gpu_and_says_so() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ValueError, match="CUDA GPU"):
        Flux2RegionalRenderer("x/y", device="cpu", quantize="4bit")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_4bit_transformer_and_offload(model_dir: Path, seed_canvas: Any) -> None:
    renderer = Flux2RegionalRenderer(str(model_dir), device="cuda", quantize="4bit", text_tokens=TOKENS)
    assert renderer.render(seed_canvas, SMALL).image.size == (64, 64)
    assert getattr(renderer.pipeline.transformer, "is_loaded_in_4bit", False)
    renderer.close()
    offload = Flux2RegionalRenderer(str(model_dir), device="cuda", memory="offload", text_tokens=TOKENS)
    assert offload.render(seed_canvas, SMALL).image.size == (64, 64)
    offload.close()


# --- the renderer factory ---------------------------------------------------------------------


def test_auto_family_reads_the_pipeline_class(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert detect_family(str(model_dir)) == "flux2-klein"
    sdxl = tmp_path / "sdxl"
    sdxl.mkdir()
    (sdxl / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline"}))
    assert detect_family(str(sdxl)) == "sdxl"
    assert detect_family(str(tmp_path / "model.safetensors")) == "sdxl"
    # Not downloaded yet: the hub id decides, and the renderer reports the missing weights later.
    assert detect_family("black-forest-labs/FLUX.2-klein-4B") == "flux2-klein"
    assert detect_family("SG161222/RealVisXL_V4.0") == "sdxl"
    other = tmp_path / "other"
    other.mkdir()
    (other / "model_index.json").write_text(json.dumps({"_class_name": "WanPipeline"}))
    with pytest.raises(UnknownModelFamily, match="WanPipeline"):
        detect_family(str(other))


def test_make_renderer_builds_the_family_asked_for(model_dir: Path, seed_canvas: Any) -> None:
    from omost_engine.render.pipeline import SDXLRegionalRenderer

    auto = make_renderer("auto", str(model_dir), device="cpu", text_tokens=TOKENS, preview_every=0)
    assert isinstance(auto, Flux2RegionalRenderer)
    assert auto.render(seed_canvas, RenderParams(width=64, height=64, steps=1)).image.size == (64, 64)
    assert isinstance(make_renderer("sdxl", "SG161222/RealVisXL_V4.0", device="cpu"), SDXLRegionalRenderer)
    with pytest.raises(ValueError, match="flux2-klein"):
        make_renderer("sdxl", "SG161222/RealVisXL_V4.0", device="cpu", quantize="4bit")
    with pytest.raises(ValueError, match="family"):
        make_renderer("flux3", str(model_dir))


# --- locality and the mask --------------------------------------------------------------------


def _first_block_image_tokens(
    renderer: Flux2RegionalRenderer, canvas: Any, grid: tuple[int, int]
) -> torch.Tensor:
    """The image stream after the first (double-stream) block, for one denoising input."""
    pipe = renderer.pipeline
    device = torch.device("cpu")
    layout = process(canvas)
    text = renderer.encode_layout(layout, device)
    regions = RegionalJointAttention(tuple(r.box for r in layout.regions), text.counts)
    generator = torch.Generator("cpu").manual_seed(0)
    latents, ids = pipe.prepare_latents(1, 4, grid[0] * 4, grid[1] * 4, torch.float32, device, generator)
    captured: list[torch.Tensor] = []
    handle = pipe.transformer.transformer_blocks[0].register_forward_hook(
        lambda module, args, output: captured.append(output[1][0])
    )
    try:
        with torch.no_grad():
            pipe.transformer(
                hidden_states=latents,
                timestep=torch.tensor([0.5]),
                guidance=None,
                encoder_hidden_states=text.embeds,
                txt_ids=text.ids,
                img_ids=ids,
                joint_attention_kwargs=regions.kwargs(grid, device, torch.float32),
                return_dict=False,
            )
    finally:
        handle.remove()
    return captured[0]  # (H * W, C)


def _inside(box: tuple[int, int, int, int], grid: tuple[int, int]) -> torch.Tensor:
    """(H * W,) bool: image tokens whose nearest-exact source cell on the 90 grid is in the box."""
    top, bottom, left, right = box
    rows = [min(math.floor((r + 0.5) * 90 / grid[0]), 89) for r in range(grid[0])]
    cols = [min(math.floor((c + 0.5) * 90 / grid[1]), 89) for c in range(grid[1])]
    return torch.tensor([top <= y < bottom and left <= x < right for y in rows for x in cols])


def test_a_region_text_reaches_only_its_box_after_the_first_block(
    renderer: Flux2RegionalRenderer, seed_canvas: Any
) -> None:
    grid = (16, 24)
    base = _first_block_image_tokens(renderer, seed_canvas, grid)
    for index in (0, len(seed_canvas.regions) - 1):
        edited = _with_region(seed_canvas, index, "A bright yellow submarine.")
        changed = (_first_block_image_tokens(renderer, edited, grid) != base).any(dim=1)
        inside = _inside(seed_canvas.regions[index].box, grid)
        assert 0 < int(inside.sum()) < inside.numel()
        assert not changed[~inside].any()  # exactly zero change outside the box
        assert changed[inside].all()
    # The global text reaches every image token.
    described = replace(seed_canvas.global_description, description="A grey winter morning.")
    everywhere = _first_block_image_tokens(renderer, replace(seed_canvas, global_description=described), grid)
    assert (everywhere != base).any(dim=1).all()


def test_the_mask_keeps_image_attention_unrestricted_and_text_blocks_apart() -> None:
    boxes = [(0, 90, 0, 90), (0, 45, 0, 45), (45, 90, 30, 90)]
    counts = [3, 2, 4]
    grid = (6, 6)
    mask = regional_mask(boxes, counts, grid)[0, 0]
    text = sum(counts)
    assert mask[text:, text:].all()  # image to image: unrestricted
    assert mask[text:, :3].all()  # every image token sees the global text
    owner = [0, 0, 0, 1, 1, 2, 2, 2, 2]
    for i in range(text):
        assert [bool(mask[i, j]) for j in range(text)] == [owner[j] == owner[i] for j in range(text)]
    inside = _inside(boxes[1], grid)
    assert torch.equal(mask[3, text:], inside)  # region 1's text sees its box only
    assert torch.equal(mask[text:, 3], inside)


def _literal_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    boxes: list[Any],
    counts: list[int],
    grid: tuple[int, int],
) -> torch.Tensor:
    """The rule written out token by token, with every score materialised (q, k, v: (B, S, H, D))."""
    text = sum(counts)
    owner = [r for r, n in enumerate(counts) for _ in range(n)]
    cover = [_inside(box, grid).tolist() for box in boxes]
    size = q.shape[1]
    allowed = torch.zeros(size, size, dtype=torch.bool)
    for i in range(size):
        for j in range(size):
            if i >= text and j >= text:
                allowed[i, j] = True
            elif i < text and j < text:
                allowed[i, j] = owner[i] == owner[j]
            elif i < text:
                allowed[i, j] = cover[owner[i]][j - text]
            else:
                allowed[i, j] = cover[owner[j]][i - text]
    scores = torch.einsum("bihd,bjhd->bhij", q, k) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.einsum("bhij,bjhd->bihd", scores.softmax(dim=-1), v)


def test_the_transformer_with_the_mask_matches_the_literal_rule(
    renderer: Flux2RegionalRenderer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import diffusers.models.transformers.transformer_flux2 as flux2_module

    pipe = renderer.pipeline
    boxes = [(0, 90, 0, 90), (0, 60, 0, 45), (30, 90, 40, 90)]
    counts = [5, 4, 6]
    grid = (6, 8)
    torch.manual_seed(1)
    text = torch.randn(1, sum(counts), pipe.transformer.config.joint_attention_dim)
    latents = torch.randn(1, grid[0] * grid[1], pipe.transformer.config.in_channels)
    txt_ids = torch.cat([pipe._prepare_text_ids(text[:, :n]) for n in counts], dim=1)
    img_ids = pipe._prepare_latent_ids(torch.zeros(1, 1, *grid))
    regions = RegionalJointAttention(tuple(boxes), tuple(counts))

    def run(kwargs: dict[str, Any] | None) -> torch.Tensor:
        with torch.no_grad():
            out: torch.Tensor = pipe.transformer(
                hidden_states=latents,
                timestep=torch.tensor([0.7]),
                guidance=None,
                encoder_hidden_states=text,
                txt_ids=txt_ids,
                img_ids=img_ids,
                joint_attention_kwargs=kwargs,
                return_dict=False,
            )[0]
        return out

    fused = run(regions.kwargs(grid, torch.device("cpu"), torch.float32))
    calls: list[int] = []

    def literal(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, **_: Any) -> torch.Tensor:
        calls.append(1)
        return _literal_attention(query, key, value, boxes, counts, grid)

    monkeypatch.setattr(flux2_module, "dispatch_attention_fn", literal)
    reference = run(None)
    blocks = len(pipe.transformer.transformer_blocks) + len(pipe.transformer.single_transformer_blocks)
    assert len(calls) == blocks  # every attention, double and single stream, ran the literal rule
    assert (fused - reference).abs().max().item() <= 1e-4
    monkeypatch.undo()
    assert (run(None) - fused).abs().max().item() > 1e-3  # without the mask the output differs


# --- the command line -------------------------------------------------------------------------


def test_render_cli_draws_with_the_family_it_finds(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bot.cli import main

    source = tmp_path / "seed.txt"
    source.write_text(seed_answers()[0], encoding="utf-8")
    out = tmp_path / "out.png"
    argv = ["render", str(source), "-o", str(out), "--model", str(model_dir), "--device", "cpu"]
    assert main([*argv, "--width", "64", "--height", "64", "--steps", "1", "--seed", "5"]) == 0
    restored = read_png_metadata(out)
    assert restored is not None and restored.canvas == parse(seed_answers()[0])
    assert restored.model == str(model_dir)
    assert main([*argv, "--family", "sdxl", "--quantize", "4bit"]) == 2
    assert "flux2-klein" in capsys.readouterr().err


def test_download_and_doctor_name_the_family(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from huggingface_hub.utils import filter_repo_objects

    from bot.cli import main
    from bot.commands.download import allow_patterns

    files = [
        "model_index.json",
        "flux-2-klein-4b.safetensors",  # the single-file checkpoint beside the diffusers folders
        "transformer/config.json",
        "transformer/diffusion_pytorch_model.safetensors",
        "text_encoder/model-00001-of-00002.safetensors",
        "tokenizer/tokenizer.json",
        "tokenizer/chat_template.jinja",
        "vae/diffusion_pytorch_model.safetensors",
    ]
    chosen = set(filter_repo_objects(files, allow_patterns=allow_patterns("render", files)))
    assert chosen == set(files) - {"flux-2-klein-4b.safetensors"}
    assert main(["download", "--render", "--render-model", str(model_dir)]) == 0
    assert "is a flux2-klein model" in capsys.readouterr().out
    config = tmp_path / "config.toml"
    config.write_text(f'[render]\nmodel = "{model_dir}"\n', encoding="utf-8")
    assert main(["doctor", "-c", str(config)]) == 0
    assert "(flux2-klein)" in capsys.readouterr().out


# --- the engine -------------------------------------------------------------------------------


async def test_the_engine_draws_and_cancels_with_it(
    renderer: Flux2RegionalRenderer, seed_canvas: Any
) -> None:
    from omost_engine.engine import Engine
    from omost_engine.jobs import Cancelled, Finished, RenderJob
    from omost_engine.jobs import Step as StepEvent
    from tests.fakes.fake_backends import FakeLLM

    engine = Engine(FakeLLM(), renderer)
    await engine.start()
    try:
        events = [
            e
            async for e in engine.submit(RenderJob(owner="alice", canvas=seed_canvas, params=SMALL)).events()
        ]
        assert [e.index for e in events if isinstance(e, StepEvent)] == [1, 2]
        finished = events[-1]
        assert isinstance(finished, Finished) and finished.result.image.size == (64, 64)
        long = RenderParams(width=64, height=64, steps=50, cfg=1.0)
        handle = engine.submit(RenderJob(owner="alice", canvas=seed_canvas, params=long))
        async for event in handle.events():
            if isinstance(event, StepEvent) and event.index == 1:
                handle.cancel()
        assert isinstance(handle.terminal, Cancelled)
    finally:
        await engine.stop(grace_s=5)


def test_config_knows_the_family_and_4bit(tmp_path: Path) -> None:
    from bot.config import ConfigError, parse_config

    config = parse_config(
        '[render]\nfamily = "flux2-klein"\nmodel = "black-forest-labs/FLUX.2-klein-4B"\nquantize = "4bit"\n'
    )
    assert (config.render.family, config.render.quantize) == ("flux2-klein", "4bit")
    assert parse_config("").render.family == "auto"
    with pytest.raises(ConfigError, match=r"render\.family"):
        parse_config('[render]\nfamily = "flux3"\n')
    with pytest.raises(ConfigError, match=r"render\.quantize: needs family"):
        parse_config('[render]\nfamily = "sdxl"\nquantize = "4bit"\n')
