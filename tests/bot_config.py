"""The config.toml the bot tests run with, written once: small fast renders, no model swapping."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bot.config import Config, parse_config

FAKE_RENDER = "width = 128\nheight = 128\nsteps = 3"


def bot_config(
    tmp_path: Path,
    *,
    llm: str = "",
    render: str = FAKE_RENDER,
    access: str = "",
    platform: str = "",
    rate: int = 100,
    job_timeout_s: float = 30,
    source: str = "test.toml",
) -> Config:
    """A validated Config; `llm`/`render`/`access` are lines inside those sections and
    `platform` is whole extra sections (e.g. "[telegram]\\nenabled = true")."""
    return parse_config(
        f"""
[data]
dir = "{tmp_path / "data"}"
[llm]
{llm}
[render]
{render}
[queue]
max_per_user = 3
max_total = 20
job_timeout_s = {job_timeout_s}
swap_models = "never"
[access]
rate_limit_per_minute = {rate}
{access}
{platform}
""",
        source=source,
    )


def tiny_model_sections(llm_dir: Path, sdxl_dir: Path) -> dict[str, Any]:
    """bot_config keyword arguments that run the real backends on the tiny test models."""
    return {
        "llm": f'model = "{llm_dir}"\nmax_new_tokens = 24\ntemperature = 0.0',
        "render": f'model = "{sdxl_dir}"\nwidth = 64\nheight = 64\nsteps = 2',
        "job_timeout_s": 300.0,  # the first job loads the weights
    }
