"""`omost-bot download [--llm] [--render]`: prefetch model weights into the Hugging Face cache.

With neither flag both models are fetched. Models come from `--llm-model` / `--render-model`,
else from the config (`-c`, or ./config.toml when present), else SPEC.md's defaults
(lllyasviel/omost-llama-3-8b-4bits and SG161222/RealVisXL_V4.0). A config whose LLM is a remote
server (`backend = "openai"`) needs no language-model weights here.
huggingface_hub's own progress bars show the transfer; only the files the
engine loads are fetched (safetensors over .bin; for SDXL the fp16 variant when the repo has one,
never the single-file checkpoints beside the diffusers folders, which FLUX.2 [klein] repos carry
too). After an image model is fetched its family (sdxl or flux2-klein, from model_index.json) is
printed: that is what `[render] family = "auto"` will choose. A model given as a local folder
needs no download. Exit codes: 0 fetched or already there, 1 a download failed (offline, unknown
repo, gated, network), 2 bad arguments.

This module knows the hub and the CLI; it loads no model and imports no torch.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HELP = "fetch the language model and/or image model (SDXL or FLUX.2 [klein]) weights, with progress bars"
LIBRARY_PROGRESS = True  # huggingface_hub's bars are what this command shows (bot/cli.py)

DEFAULT_LLM_MODEL = "lllyasviel/omost-llama-3-8b-4bits"
DEFAULT_RENDER_MODEL = "SG161222/RealVisXL_V4.0"


@dataclass(frozen=True)
class Fetch:
    kind: str  # "llm" or "render"
    model: str


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--llm", action="store_true", help="fetch the language model")
    parser.add_argument(
        "--render", action="store_true", help="fetch the image model (SDXL or FLUX.2 [klein])"
    )
    parser.add_argument(
        "--llm-model", metavar="ID", help=f"hub id (default: the config's, else {DEFAULT_LLM_MODEL})"
    )
    parser.add_argument(
        "--render-model", metavar="ID", help=f"hub id (default: the config's, else {DEFAULT_RENDER_MODEL})"
    )
    parser.add_argument("-c", "--config", type=Path, help="config file (default ./config.toml if present)")
    parser.add_argument("--cache-dir", metavar="DIR", help="Hugging Face cache folder (default: HF_HOME's)")


def plan(args: argparse.Namespace, config: Any = None) -> list[Fetch]:
    """What to fetch: the flagged models, or both when neither flag is given."""
    both = not args.llm and not args.render
    fetches: list[Fetch] = []
    remote_llm = config is not None and config.llm.backend == "openai" and not args.llm_model
    if (args.llm or both) and not remote_llm:
        default = config.llm.model if config is not None else DEFAULT_LLM_MODEL
        fetches.append(Fetch("llm", args.llm_model or default))
    if args.render or both:
        default = config.render.model if config is not None else DEFAULT_RENDER_MODEL
        fetches.append(Fetch("render", args.render_model or default))
    return fetches


def allow_patterns(kind: str, files: list[str]) -> list[str]:
    """The files of a repo the engine loads, as snapshot_download patterns."""
    if kind == "llm":
        weights = ["*.safetensors"] if any(f.endswith(".safetensors") for f in files) else ["*.bin"]
        return ["*.json", "*.jinja", "*.model", "*.txt", "*.tiktoken", *weights]
    if "model_index.json" not in files:  # a repo holding single-file checkpoints only
        return ["*.json", "*.safetensors"]
    fp16 = any("/" in f and f.endswith(".fp16.safetensors") for f in files)
    # *.jinja: newer tokenizers (klein's Qwen3) keep their chat template in chat_template.jinja.
    return ["*.json", "*.txt", "*.jinja", "*/*.fp16.safetensors" if fp16 else "*/*.safetensors"]


def _fetch(item: Fetch, cache_dir: str | None) -> str:
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import OfflineModeIsEnabled

    try:
        files = HfApi().list_repo_files(item.model)
    except OfflineModeIsEnabled:
        files = []  # offline: snapshot_download answers from the cache or says what is missing
    patterns = allow_patterns(item.kind, files) if files else None
    return str(snapshot_download(item.model, allow_patterns=patterns, cache_dir=cache_dir))


def _failure(item: Fetch, error: Exception) -> str:
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
    )

    what = "language model" if item.kind == "llm" else "image model"
    if isinstance(error, OfflineModeIsEnabled | LocalEntryNotFoundError):
        return (
            f"cannot download the {what} {item.model}: this machine is offline (HF_HUB_OFFLINE is set, or "
            "the hub cannot be reached) and the files are not in the cache. Run `omost-bot download` where "
            "the hub is reachable, or point the config at a local folder that holds the model."
        )
    if isinstance(error, GatedRepoError):
        return (
            f"the {what} {item.model} is gated: accept its licence on huggingface.co, "
            "then log in (hf auth login)."
        )
    if isinstance(error, RepositoryNotFoundError):
        return f"there is no {what} {item.model} on the hub (check the id, or log in if it is private)."
    return f"downloading the {what} {item.model} failed: {type(error).__name__}: {error}"


def run(args: argparse.Namespace) -> int:
    from bot.firststart import is_hub_id

    config = None
    if args.config is not None or Path("config.toml").is_file():
        from bot.commands.chat import load

        config = load(args)
    failed = 0
    for item in plan(args, config):
        if Path(item.model).expanduser().is_dir():
            print(f"{item.kind}: {item.model} is a local folder; nothing to download")
            if item.kind == "render":
                print(f"render: {item.model} is a {_family(item.model)} model")
            continue
        if not is_hub_id(item.model):  # a path that is not there: the hub cannot help
            flag = "--llm-model" if item.kind == "llm" else "--render-model"
            print(
                f"error: {item.model} is neither a folder on this machine nor a hub id (owner/name): "
                f"fix {item.kind}.model in the config, or pass {flag} ID",
                file=sys.stderr,
            )
            failed += 1
            continue
        print(f"{item.kind}: fetching {item.model}", flush=True)
        try:
            path = _fetch(item, args.cache_dir)
        except Exception as e:  # the hub's errors, httpx's network errors, a full disk
            print(f"error: {_failure(item, e)}", file=sys.stderr)
            failed += 1
            continue
        print(f"{item.kind}: {item.model} is in {path}")
        if item.kind == "render":
            print(f"render: {item.model} is a {_family(path)} model")
    return 1 if failed else 0


def _family(folder: str) -> str:
    """The renderer family `[render] family = "auto"` will pick for this folder, or why none."""
    from omost_engine.render.factory import UnknownModelFamily, detect_family

    try:
        return detect_family(folder)
    except UnknownModelFamily as e:
        return f"model this bot cannot draw with ({e})"
