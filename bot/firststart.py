"""First start: are the configured weights on this machine, and if not, fetch them or say how.

The bot never downloads inside a chat turn (gigabytes, minutes), so a fresh install would start a
chat that cannot draw. At start, `check_weights_at_start(config)`:

- finds what is missing (`missing_weights`): a hub id not in the Hugging Face cache, or a local
  path that does not exist; a remote LLM (`[llm] backend = "openai"`) needs no weights here;
- in a terminal (stdin and stdout both ttys), lists them with their download sizes (from the
  hub's metadata; "size unknown" when the hub cannot be asked) and offers to fetch them now: a
  yes answer runs `omost-bot download ...` as its own process, so its progress bars show as they
  do when the operator runs it;
- otherwise (piped, a service) prints the exact download command once and carries on.

It returns what is still missing, so the app can serve what it can (the renderer-missing chat
mode composes and replies with the layout preview).

Knows huggingface_hub's cache and metadata and the download command's flags; loads no model and
imports no torch.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from bot.config import Config

KINDS = {"llm": "language model", "render": "image model"}
# The file every snapshot of that kind holds; its presence in the cache means "downloaded".
MARKER_FILE = {"llm": "config.json", "render": "model_index.json"}
WEIGHT_SUFFIXES = (".safetensors", ".bin")
METADATA_TIMEOUT_S = 5.0  # the size lookup must not hold up a start for long
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


@dataclass(frozen=True)
class MissingWeights:
    kind: str  # "llm" or "render"
    model: str
    size_bytes: int | None  # what `omost-bot download` would fetch; None: unknown (offline)
    downloadable: bool  # a hub id; False: a local path that does not exist

    @property
    def what(self) -> str:
        return KINDS[self.kind]


def is_hub_id(model: str) -> bool:
    """`owner/name` that is not a path on this machine."""
    return bool(_HUB_ID.fullmatch(model)) and not Path(model).expanduser().exists()


def _configured_models(config: Config) -> list[tuple[str, str]]:
    models = [("render", config.render.model)]
    if config.llm.backend != "openai":  # a remote server holds its own weights
        models.insert(0, ("llm", config.llm.model))
    return models


def in_cache(kind: str, model: str, cache_dir: str | None = None) -> bool:
    """The snapshot's marker file and at least one weight file are in the Hugging Face cache."""
    from huggingface_hub import try_to_load_from_cache

    marker = try_to_load_from_cache(model, MARKER_FILE[kind], cache_dir=cache_dir)
    if not isinstance(marker, str):
        return False
    snapshot = Path(marker).parent
    return any(p.name.endswith(WEIGHT_SUFFIXES) for p in snapshot.rglob("*"))


def download_size(kind: str, model: str) -> int | None:
    """Bytes of the files `omost-bot download` fetches for this repo, from the hub; None if it
    cannot be asked (offline, unreachable, gated) within METADATA_TIMEOUT_S."""
    from huggingface_hub import HfApi
    from huggingface_hub.utils import filter_repo_objects

    from bot.commands.download import allow_patterns

    try:
        info = HfApi().model_info(model, files_metadata=True, timeout=METADATA_TIMEOUT_S)
    except Exception:  # offline mode, no network, unknown or gated repo: the size stays unknown
        return None
    siblings = list(info.siblings or [])
    patterns = allow_patterns(kind, [s.rfilename for s in siblings])
    chosen = list(filter_repo_objects(siblings, allow_patterns=patterns, key=lambda s: s.rfilename))
    if any(s.size is None for s in chosen):
        return None
    return sum(int(s.size or 0) for s in chosen)


def missing_weights(
    config: Config, *, sizes: bool = True, cache_dir: str | None = None
) -> list[MissingWeights]:
    """The configured models that are not on this machine, in the order download fetches them
    (`cache_dir`: the Hugging Face cache to look in; default HF_HOME's)."""
    missing = []
    for kind, model in _configured_models(config):
        if is_hub_id(model):
            if in_cache(kind, model, cache_dir):
                continue
            size = download_size(kind, model) if sizes else None
            missing.append(MissingWeights(kind, model, size, downloadable=True))
        elif not Path(model).expanduser().exists():
            missing.append(MissingWeights(kind, model, None, downloadable=False))
    return missing


def download_command(config: Config, missing: list[MissingWeights]) -> list[str]:
    """`omost-bot download` with the flags that fetch exactly the downloadable missing models."""
    kinds = {m.kind for m in missing if m.downloadable}
    command = ["omost-bot", "download"]
    if kinds != {"llm", "render"} or config.llm.backend == "openai":
        command += [f"--{kind}" for kind in ("llm", "render") if kind in kinds]
    if config.source != "defaults":
        command += ["-c", config.source]
    return command


def format_size(size: int | None) -> str:
    if size is None:
        return "size unknown"
    return f"{size / 1e9:.1f} GB" if size >= 1e8 else f"{size / 1e6:.0f} MB"


def describe(config: Config, missing: list[MissingWeights]) -> list[str]:
    """One line per missing model: what it is, its id and size, or the path to fix."""
    lines = []
    for m in missing:
        if m.downloadable:
            lines.append(f"  {m.what:15} {m.model}  ({format_size(m.size_bytes)})")
        else:
            key = "llm.model" if m.kind == "llm" else "render.model"
            lines.append(f"  {m.what:15} {m.model}: no such file or folder; fix {key} in {config.source}")
    return lines


def hint(config: Config, missing: list[MissingWeights]) -> str:
    """The one line a non-interactive start prints."""
    names = ", ".join(f"the {m.what} {m.model}" for m in missing)
    if not any(m.downloadable for m in missing):
        return f"omost-bot: not found on this machine: {names}; fix the model path in {config.source}"
    return (
        f"omost-bot: not on this machine yet: {names} ({format_size(_total(missing))}); "
        f"fetch with: {shlex.join(download_command(config, missing))}"
    )


def _total(missing: list[MissingWeights]) -> int | None:
    sizes = [m.size_bytes for m in missing if m.downloadable]
    return None if any(s is None for s in sizes) else sum(s or 0 for s in sizes)


def _yes(answer: str) -> bool:
    return answer.strip().lower() in ("", "y", "yes")  # Enter accepts: the newcomer's path


def run_download(command: list[str]) -> int:
    """Run the download command as its own process (same interpreter), on this terminal."""
    argv = [sys.executable, "-m", "bot.cli", *command[1:]]
    env = {k: v for k, v in os.environ.items() if k != "TQDM_DISABLE"}  # its bars are the point
    return subprocess.run(argv, env=env, check=False).returncode


def offer_download(
    config: Config,
    missing: list[MissingWeights],
    *,
    stdin: TextIO,
    stdout: TextIO,
    download: Callable[[list[str]], int] = run_download,
) -> bool:
    """Ask in the terminal; True when the download ran and succeeded."""
    print("omost-bot: these model weights are not on this machine yet:", file=stdout)
    for line in describe(config, missing):
        print(line, file=stdout)
    command = download_command(config, missing)
    if os.environ.get("HF_HUB_OFFLINE", "").strip() not in ("", "0"):
        later = shlex.join(command)
        print(f"HF_HUB_OFFLINE is set, so they cannot be fetched now; later: {later}", file=stdout)
        return False
    stdout.write(f"Fetch them now with `{shlex.join(command)}`? [Y/n] ")
    stdout.flush()
    answer = stdin.readline()
    if not answer or not _yes(answer):  # EOF counts as no
        print(f"Not fetching. Later: {shlex.join(command)}", file=stdout)
        return False
    code = download(command)
    if code != 0:
        print(f"The download did not finish (exit {code}); retry with: {shlex.join(command)}", file=stdout)
    return code == 0


def check_weights_at_start(
    config: Config,
    *,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    interactive: bool | None = None,
) -> list[MissingWeights]:
    """At start: offer the download in a terminal, else print the command once. Returns what is
    still missing afterwards (empty: everything the config names is here)."""
    stdin = stdin if stdin is not None else sys.stdin
    stdout = stdout if stdout is not None else sys.stdout
    missing = missing_weights(config)
    if not missing:
        return []
    if interactive is None:
        interactive = stdin.isatty() and stdout.isatty()
    if interactive and any(m.downloadable for m in missing):
        if offer_download(config, missing, stdin=stdin, stdout=stdout):
            return missing_weights(config, sizes=False)
        return missing
    print(hint(config, missing), file=sys.stderr)
    return missing
