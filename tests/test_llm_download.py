"""`omost-bot download`: argument handling, file selection and the offline error (never downloads)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bot.cli import build_parser, main
from bot.commands.download import DEFAULT_LLM_MODEL, DEFAULT_RENDER_MODEL, Fetch, allow_patterns, plan

REPO_ROOT = Path(__file__).resolve().parents[1]


def parse(*argv: str) -> list[Fetch]:
    return plan(build_parser().parse_args(["download", *argv]))


def test_without_flags_both_models_are_fetched() -> None:
    assert parse() == [Fetch("llm", DEFAULT_LLM_MODEL), Fetch("render", DEFAULT_RENDER_MODEL)]
    assert DEFAULT_LLM_MODEL == "lllyasviel/omost-llama-3-8b-4bits"
    assert DEFAULT_RENDER_MODEL == "SG161222/RealVisXL_V4.0"


def test_flags_pick_what_to_fetch_and_ids_override_defaults() -> None:
    assert parse("--llm") == [Fetch("llm", DEFAULT_LLM_MODEL)]
    assert parse("--render", "--render-model", "me/sdxl") == [Fetch("render", "me/sdxl")]
    assert parse("--llm", "--render", "--llm-model", "lllyasviel/omost-phi-3-mini-128k-8bits") == [
        Fetch("llm", "lllyasviel/omost-phi-3-mini-128k-8bits"),
        Fetch("render", DEFAULT_RENDER_MODEL),
    ]


def test_bad_arguments_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["download", "--everything"])
    assert info.value.code == 2
    assert "--everything" in capsys.readouterr().err


def test_help_lists_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "download" in capsys.readouterr().out


def test_sdxl_fetch_takes_the_fp16_diffusers_folders_only() -> None:
    files = [
        "model_index.json",
        "RealVisXL_V4.0.safetensors",  # single-file checkpoint: not what the renderer loads
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "unet/diffusion_pytorch_model.fp16.safetensors",
        "vae/diffusion_pytorch_model.fp16.safetensors",
        "tokenizer/vocab.json",
        "tokenizer/merges.txt",
    ]
    patterns = allow_patterns("render", files)
    assert "*/*.fp16.safetensors" in patterns and "*/*.safetensors" not in patterns
    from huggingface_hub.utils import filter_repo_objects

    chosen = set(filter_repo_objects(files, allow_patterns=patterns))
    assert chosen == set(files) - {"RealVisXL_V4.0.safetensors", "unet/diffusion_pytorch_model.safetensors"}


def test_llm_fetch_prefers_safetensors_over_bin() -> None:
    assert "*.bin" not in allow_patterns("llm", ["config.json", "model.safetensors", "pytorch_model.bin"])
    assert "*.bin" in allow_patterns("llm", ["config.json", "pytorch_model.bin"])


def test_a_local_folder_needs_no_download(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["download", "--llm", "--llm-model", str(tmp_path)]) == 0
    assert "nothing to download" in capsys.readouterr().out


def test_offline_without_the_files_is_a_clear_error(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path), "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "bot.cli", "download", "--llm"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 1
    assert DEFAULT_LLM_MODEL in result.stderr
    assert "offline" in result.stderr
    assert "local folder" in result.stderr
    assert not any(tmp_path.rglob("*.safetensors"))


def test_models_come_from_the_config(tmp_path: Path) -> None:
    from bot.config import parse_config

    args = build_parser().parse_args(["download"])
    local = parse_config('[llm]\nmodel = "me/llm"\n[render]\nmodel = "me/sdxl"\n')
    assert plan(args, local) == [Fetch("llm", "me/llm"), Fetch("render", "me/sdxl")]
    remote = parse_config('[llm]\nbackend = "openai"\nbase_url = "http://127.0.0.1:8000/v1"\nmodel = "x"\n')
    assert plan(args, remote) == [Fetch("render", DEFAULT_RENDER_MODEL)]  # the server holds the LLM
    flagged = build_parser().parse_args(["download", "--llm", "--llm-model", "other/llm"])
    assert plan(flagged, local) == [Fetch("llm", "other/llm")]
