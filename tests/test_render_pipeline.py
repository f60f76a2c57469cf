"""The renderer end to end on a tiny SDXL folder (CPU, <= 128 px): what a user of it would notice."""

from __future__ import annotations

import io
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from bot.cli import main
from omost_engine.canvas import CanvasError
from omost_engine.canvas_code import parse, to_code
from omost_engine.errors import Interrupted, ModelNotAvailable, OutOfMemory
from omost_engine.render.attention import RegionalAttnProcessor
from omost_engine.render.base import InvalidRenderParams, RenderParams, Step
from omost_engine.render.metadata import encode_png, read_png_metadata
from omost_engine.render.pipeline import SDXLRegionalRenderer
from tests.seed import seed_answers
from tests.tiny_sdxl import build_tiny_sdxl

SMALL = RenderParams(width=64, height=64, steps=4)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_sdxl(tmp_path_factory.mktemp("sdxl") / "tiny-sdxl")


@pytest.fixture(scope="module")
def renderer(model_dir: Path) -> SDXLRegionalRenderer:
    return SDXLRegionalRenderer(str(model_dir), device="cpu")


@pytest.fixture(scope="module")
def seed_canvas() -> Any:
    return parse(seed_answers()[0])


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def test_every_cross_attention_layer_runs_the_regional_processor(
    renderer: SDXLRegionalRenderer, seed_canvas: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    unet = renderer.pipeline.unet
    attn2 = {name: module for name, module in unet.named_modules() if name.endswith("attn2")}
    assert attn2 and all(isinstance(m.processor, RegionalAttnProcessor) for m in attn2.values())

    called_with_regions: set[str] = set()

    def record(name: str):  # type: ignore[no-untyped-def]
        def hook(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
            if kwargs.get("regions") is not None:
                called_with_regions.add(name)

        return hook

    handles = [m.register_forward_pre_hook(record(n), with_kwargs=True) for n, m in attn2.items()]
    masked_calls = 0
    sdpa = F.scaled_dot_product_attention

    def counting_sdpa(*args: Any, **kwargs: Any) -> torch.Tensor:
        nonlocal masked_calls
        masked_calls += kwargs.get("attn_mask") is not None
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counting_sdpa)
    try:
        renderer.render(seed_canvas, SMALL)
    finally:
        for h in handles:
            h.remove()
    assert called_with_regions == set(attn2)
    # One fused (masked) SDPA call per cross-attention layer per step, CFG halves included.
    assert masked_calls == len(attn2) * SMALL.steps


def test_the_seed_canvas_renders_with_progress_and_previews(
    renderer: SDXLRegionalRenderer, seed_canvas: Any
) -> None:
    steps: list[Step] = []
    result = renderer.render(seed_canvas, RenderParams(width=128, height=64, steps=3), on_step=steps.append)
    assert result.image.size == (128, 64)
    assert pixels(result.image).std() > 1.0  # not a blank or NaN (black) image
    assert [(s.index, s.total, s.phase) for s in steps] == [(1, 3, "base"), (2, 3, "base"), (3, 3, "base")]
    assert all(s.preview is not None and s.preview.size == (16, 8) for s in steps)
    assert result.model == renderer.name


def test_same_seed_same_image_and_another_seed_differs(
    renderer: SDXLRegionalRenderer, seed_canvas: Any
) -> None:
    first = renderer.render(seed_canvas, SMALL).image
    renderer.encoder.clear_cache()  # a fresh encoding must not change a pixel either
    again = renderer.render(seed_canvas, SMALL).image
    other = renderer.render(seed_canvas, RenderParams(width=64, height=64, steps=4, seed=777)).image
    assert np.array_equal(pixels(first), pixels(again))
    assert np.abs(pixels(first) - pixels(other)).mean() > 1.0


def test_guidance_off_renders_without_the_negative_half(
    renderer: SDXLRegionalRenderer, seed_canvas: Any
) -> None:
    guided = renderer.render(seed_canvas, SMALL).image
    unguided = renderer.render(seed_canvas, RenderParams(width=64, height=64, steps=4, cfg=1.0)).image
    assert unguided.size == (64, 64)
    assert not np.array_equal(pixels(guided), pixels(unguided))


def test_regions_change_the_image(renderer: SDXLRegionalRenderer, seed_canvas: Any) -> None:
    from dataclasses import replace

    with_regions = renderer.render(seed_canvas, SMALL).image
    global_only = renderer.render(replace(seed_canvas, regions=()), SMALL).image
    assert np.abs(pixels(with_regions) - pixels(global_only)).mean() > 0.1


def test_cancel_stops_within_one_step(renderer: SDXLRegionalRenderer, seed_canvas: Any) -> None:
    cancel = threading.Event()
    seen: list[int] = []

    def on_step(step: Step) -> None:
        seen.append(step.index)
        if step.index == 2:
            cancel.set()

    with pytest.raises(Interrupted):
        renderer.render(
            seed_canvas, RenderParams(width=64, height=64, steps=8), on_step=on_step, cancel=cancel
        )
    assert seen == [1, 2]

    with pytest.raises(Interrupted):
        renderer.render(seed_canvas, SMALL, on_step=on_step, cancel=cancel)  # already cancelled
    assert seen == [1, 2]
    # The renderer keeps working after a cancellation.
    assert renderer.render(seed_canvas, SMALL).image.size == (64, 64)


def test_hires_fix_runs_and_gives_the_scaled_size(renderer: SDXLRegionalRenderer, seed_canvas: Any) -> None:
    steps: list[Step] = []
    params = RenderParams(width=64, height=64, steps=3, hires_scale=2.0, hires_steps=4, hires_denoise=0.5)
    result = renderer.render(seed_canvas, params, on_step=steps.append)
    assert result.image.size == (128, 128)
    assert [s.phase for s in steps] == ["base"] * 3 + ["hires"] * 4
    assert steps[-1].index == steps[-1].total == 4
    assert pixels(result.image).std() > 1.0
    # Off at or below 1.05 (SPEC 6).
    assert renderer.render(
        seed_canvas, RenderParams(width=64, height=64, steps=2, hires_scale=1.05)
    ).image.size == (
        64,
        64,
    )


def test_png_metadata_round_trips(renderer: SDXLRegionalRenderer, seed_canvas: Any) -> None:
    params = RenderParams(width=64, height=64, steps=2, seed=4242, cfg=6.5, hires_scale=1.0)
    result = renderer.render(seed_canvas, params)
    restored = read_png_metadata(encode_png(result.image, result.metadata))
    assert restored is not None
    assert restored.canvas == seed_canvas
    assert restored.code == to_code(seed_canvas)
    assert restored.params == params
    assert restored.model == renderer.name
    assert restored.ignored == ()


def test_png_metadata_reader_does_not_trust_the_chunks(seed_canvas: Any) -> None:
    from omost_engine.render.metadata import png_metadata

    image = Image.new("RGB", (8, 8))
    plain = io.BytesIO()
    image.save(plain, format="PNG")
    assert read_png_metadata(plain.getvalue()) is None

    chunks = png_metadata(to_code(seed_canvas), RenderParams(), "m")
    chunks["omost:steps"] = "__import__('os')"
    chunks["omost:cfg"] = "nan"
    chunks["omost:width"] = "100000"
    restored = read_png_metadata(encode_png(image, chunks))
    assert restored is not None
    assert set(restored.ignored) == {"steps", "cfg", "width"}
    assert restored.params == RenderParams()

    chunks["omost:canvas"] = "import os\nos.system('echo pwned')\n"
    with pytest.raises(CanvasError):
        read_png_metadata(encode_png(image, chunks))


def test_sizes_must_be_multiples_of_64(renderer: SDXLRegionalRenderer, seed_canvas: Any) -> None:
    with pytest.raises(InvalidRenderParams, match="multiple of 64"):
        renderer.render(seed_canvas, RenderParams(width=100, height=64, steps=2))


def test_missing_weights_name_the_model_and_the_download_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed_canvas: Any
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    for model in ("nobody/no-such-sdxl", str(tmp_path / "missing-folder"), str(tmp_path / "x.safetensors")):
        with pytest.raises(ModelNotAvailable) as info:
            SDXLRegionalRenderer(model, device="cpu").render(seed_canvas, SMALL)
        assert model in info.value.detail and info.value.model == model
        # A hub id is shown as it is; a local path only by its last part (issue 13).
        shown = model if model.startswith("nobody/") else "\u2026/" + Path(model).name
        assert shown in str(info.value) and str(tmp_path) not in str(info.value)
        assert "omost-bot download" in str(info.value)


def test_out_of_memory_names_the_model(renderer: SDXLRegionalRenderer, seed_canvas: Any) -> None:
    def exhausted(step: Step) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    with pytest.raises(OutOfMemory) as info:
        renderer.render(seed_canvas, SMALL, on_step=exhausted)
    assert info.value.model == renderer.name
    assert renderer.name in info.value.detail
    assert Path(renderer.name).name in str(info.value) and str(Path(renderer.name).parent) not in str(
        info.value
    )


def test_lower_memory_mode_renders_the_same_image(model_dir: Path, seed_canvas: Any) -> None:
    renderer = SDXLRegionalRenderer(str(model_dir), device="cpu")
    before = renderer.render(seed_canvas, SMALL).image
    assert renderer.lower_memory() is True
    assert renderer.memory == "offload"
    assert renderer.lower_memory() is False  # already the lowest mode
    renderer.unload()
    renderer.load()
    after = renderer.render(seed_canvas, SMALL).image
    assert np.array_equal(pixels(before), pixels(after))
    renderer.close()


def test_render_cli_writes_the_seed_canvas_with_metadata(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "seed.txt"
    source.write_text(seed_answers()[0], encoding="utf-8")
    out = tmp_path / "out.png"
    argv = ["render", str(source), "-o", str(out), "--model", str(model_dir), "--device", "cpu"]
    code = main([*argv, "--width", "64", "--height", "128", "--steps", "2", "--seed", "99", "--cfg", "4"])
    assert code == 0, capsys.readouterr().err
    image = Image.open(out)
    assert image.size == (64, 128)
    restored = read_png_metadata(out)
    assert restored is not None
    assert restored.canvas == parse(seed_answers()[0])
    assert (restored.params.seed, restored.params.steps, restored.params.cfg) == (99, 2, 4.0)
    assert restored.model == str(model_dir)
    assert "base" in capsys.readouterr().err  # the progress bar


def test_render_cli_bad_canvas_exits_2_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.png"
    monkeypatch.setattr("sys.stdin", io.StringIO("canvas = Canvas()\ncanvas.set_global_description(\n"))
    assert main(["render", "-", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "line 2" in err
    source = tmp_path / "bad.py"
    source.write_text("canvas = Canvas()\ncanvas.add_local_description(location=1)\n", encoding="utf-8")
    assert main(["render", str(source), "-o", str(out)]) == 2
    assert "line" in capsys.readouterr().err
    assert not out.exists()
    assert list(tmp_path.iterdir()) == [source]


def test_render_cli_rejects_sizes_that_are_not_multiples_of_64(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "seed.txt"
    source.write_text(seed_answers()[0], encoding="utf-8")
    out = tmp_path / "out.png"
    assert main(["render", str(source), "-o", str(out), "--width", "900"]) == 2
    assert "multiple of 64" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_offload_mode_and_bf16_vae(model_dir: Path, seed_canvas: Any) -> None:
    renderer = SDXLRegionalRenderer(str(model_dir), device="cuda", memory="offload")
    result = renderer.render(seed_canvas, SMALL)
    assert result.image.size == (64, 64)
    expected = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    assert renderer.pipeline.vae.dtype == expected
    renderer.close()
