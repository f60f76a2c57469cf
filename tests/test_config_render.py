"""The `[render]` keys that reach Omost's settings (issue 12): hires steps/denoise and the pooled embedding."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.config import ConfigError, load_config
from omost_engine.render.base import RenderParams


def load(tmp_path: Path, text: str):  # type: ignore[no-untyped-def]
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return load_config(path)


def test_defaults_are_omosts_and_match_the_render_params(tmp_path: Path) -> None:
    render = load(tmp_path, "").render
    defaults = RenderParams()
    assert (render.hires_steps, render.hires_denoise, render.pooled) == (20, 0.4, "omost")
    assert (defaults.hires_steps, defaults.hires_denoise, defaults.pooled) == (20, 0.4, "omost")


def test_the_keys_are_read(tmp_path: Path) -> None:
    render = load(tmp_path, '[render]\nhires_steps = 12\nhires_denoise = 0.55\npooled = "sdxl"\n').render
    assert (render.hires_steps, render.hires_denoise, render.pooled) == (12, 0.55, "sdxl")


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("hires_steps = 0", "render.hires_steps: must be at least 1"),
        ("hires_steps = 101", "render.hires_steps: must be at most 100"),
        ("hires_denoise = 0.05", "render.hires_denoise: must be at least 0.1"),
        ("hires_denoise = 1.5", "render.hires_denoise: must be at most 1.0"),
        ('pooled = "clip"', "render.pooled: expected 'omost' or 'sdxl'"),
    ],
)
def test_out_of_range_values_name_the_key(tmp_path: Path, text: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, f"[render]\n{text}\n")
    assert words in str(info.value)
