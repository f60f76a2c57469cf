"""`omost-bot` as an operator meets it: real subprocesses of `python -m bot.cli`.

Start-up failures are one line and exit 2 (an unset token, an unreachable Telegram, a rejected
token against the fake Bot API, a damaged database, a bad config); options work before and after
the subcommand; `--version`; output paths are checked before any work; `preview` reads our PNGs;
the first start offers the missing weights in a pseudo-terminal and prints the download command
once when piped; the default output carries no library warnings or loading bars.

Every subprocess runs offline (HF_HUB_OFFLINE, an empty HF_HOME) in a temporary folder, so no
./config.toml and no real cache leak in.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import socket
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pexpect
import pytest
from PIL import Image

from bot.config import parse_config
from bot.firststart import MissingWeights, download_command, missing_weights, offer_download
from omost_engine.canvas_code import parse, to_code
from omost_engine.render.base import RenderParams
from omost_engine.render.metadata import encode_png, png_metadata
from tests.fakes.telegram_server import FakeTelegram
from tests.seed import seed_answers
from tests.tiny_sdxl import build_tiny_sdxl

ROOT = Path(__file__).resolve().parents[1]
# What a library prints when left alone, and must not reach a default run's output.
LIBRARY_NOISE = ("torchvision", "Loading pipeline components", "Loading weights", "Token indices", "Warning")


def offline_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_BOT_TOKEN")}
    env.update(PYTHONPATH=str(ROOT), HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1", **extra)
    return env


def omost(
    tmp_path: Path, *args: str, stdin: str = "", timeout: float = 180, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", *args],
        input=stdin,
        env=offline_env(tmp_path, **env),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def write_config(tmp_path: Path, body: str = "", name: str = "bot.toml") -> Path:
    path = tmp_path / name
    path.write_text(f'[data]\ndir = "{tmp_path / "data"}"\n{body}', encoding="utf-8")
    return path


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def assert_one_line_failure(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    (line,) = error_lines(result.stderr)
    for needle in needles:
        assert needle in line
    return line


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port  # nothing listens there once the socket is closed


@pytest.fixture
def seed_file(tmp_path: Path) -> Path:
    path = tmp_path / "seed.md"
    path.write_text(seed_answers()[0], encoding="utf-8")
    return path


# --- start-up failures: one line, exit 2 ------------------------------------------------------


def test_an_unset_token_is_one_line_naming_the_variable(tmp_path: Path) -> None:
    config = write_config(tmp_path, "[telegram]\nenabled = true\n")
    result = omost(tmp_path, "run", "-c", str(config))
    assert_one_line_failure(result, "TELEGRAM_BOT_TOKEN", "is not set", str(config))


def test_an_unreachable_telegram_is_one_line_naming_the_url(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    config = write_config(tmp_path, f'[telegram]\nenabled = true\nbase_url = "{url}"\n')
    result = omost(tmp_path, "run", "-c", str(config), TELEGRAM_BOT_TOKEN="123:abc")
    line = assert_one_line_failure(result, "cannot reach the Telegram Bot API", url, "telegram.base_url")
    assert "123:abc" not in result.stderr + line
    # a service start names the missing weights' download command once, before anything else
    hints = [line for line in result.stderr.splitlines() if "fetch with: omost-bot download" in line]
    assert hints == [result.stderr.splitlines()[0]]
    assert hints[0].endswith(f"omost-bot download -c {config}")


async def test_a_rejected_token_is_one_line_without_the_token(tmp_path: Path) -> None:
    async with FakeTelegram() as tg:
        config = write_config(tmp_path, f'[telegram]\nenabled = true\nbase_url = "{tg.base_url}"\n')
        process = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "bot.cli", "run", "-c", str(config)),
            env=offline_env(tmp_path, TELEGRAM_BOT_TOKEN="999:not-the-token"),
            cwd=tmp_path,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), 180)
    result = subprocess.CompletedProcess([], process.returncode or 0, out.decode(), err.decode())
    assert_one_line_failure(result, "Telegram rejected the bot token in $TELEGRAM_BOT_TOKEN", "@BotFather")
    assert "not-the-token" not in result.stdout + result.stderr


def test_a_damaged_database_is_one_line_naming_the_file(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    (tmp_path / "data").mkdir()
    database = tmp_path / "data" / "omost-bot.sqlite3"
    database.write_bytes(b"this is not a SQLite file" * 200)
    result = omost(tmp_path, "chat", "-c", str(config))
    assert_one_line_failure(result, str(database), "move the file away")
    assert database.read_bytes().startswith(b"this is not")  # nothing overwrote it


def test_a_data_folder_that_is_a_file_is_one_line(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    (tmp_path / "data").write_text("not a folder", encoding="utf-8")
    result = omost(tmp_path, "chat", "-c", str(config))
    assert_one_line_failure(result, "cannot use the data folder", str(tmp_path / "data"), "data.dir")


def test_debug_adds_the_traceback_to_the_same_line(tmp_path: Path) -> None:
    config = write_config(tmp_path, "[telegram]\nenabled = true\n")
    result = omost(tmp_path, "--debug", "run", "-c", str(config))
    assert result.returncode == 2
    assert "Traceback (most recent call last)" in result.stderr
    assert len(error_lines(result.stderr)) == 1


def test_a_bad_config_is_one_line_before_the_subcommand_too(tmp_path: Path) -> None:
    config = write_config(tmp_path, "[render]\nwidth = 900\n")
    result = omost(tmp_path, "-c", str(config))  # no subcommand: `run`
    assert_one_line_failure(result, str(config), "render.width", "multiple of 64")


# --- options ----------------------------------------------------------------------------------


def test_config_before_or_after_the_subcommand_gives_its_settings(tmp_path: Path, seed_file: Path) -> None:
    small = write_config(tmp_path, "[render]\nwidth = 512\nheight = 768\n")
    large = write_config(tmp_path, "[render]\nwidth = 1024\nheight = 640\n", name="large.toml")
    sizes = []
    for args in (
        ["-c", str(small), "preview", str(seed_file), "--json"],
        ["preview", str(seed_file), "--json", "-c", str(small)],
        ["-c", str(large), "preview", str(seed_file), "--json", "-c", str(small)],  # the later wins
        ["-c", str(small), "preview", str(seed_file), "--json", "--width", "640"],  # flags win
    ):
        result = omost(tmp_path, *args)
        assert result.returncode == 0, result.stderr
        data = json.loads(result.stdout)
        sizes.append((data["width"], data["height"]))
    assert sizes == [(512, 768), (512, 768), (512, 768), (640, 768)]


def test_version(tmp_path: Path) -> None:
    result = omost(tmp_path, "--version")
    assert result.returncode == 0
    try:
        expected = version("omost-bot")
    except PackageNotFoundError:
        expected = "unknown"
    assert result.stdout.strip().startswith(f"omost-bot {expected}")


def test_help_says_where_default_outputs_go(tmp_path: Path) -> None:
    result = omost(tmp_path, "preview", "--help")
    assert "FILE.preview.png" in result.stdout
    assert "-c FILE" in result.stdout and "--verbose" in result.stdout


# --- output paths and inputs ------------------------------------------------------------------


@pytest.mark.parametrize("command", ["preview", "render"])
def test_an_output_folder_that_does_not_exist_stops_before_any_work(
    tmp_path: Path, seed_file: Path, command: str
) -> None:
    target = tmp_path / "missing" / "dir" / "x.png"
    # A model that does not exist: had render started working, it would fail on it with exit 1.
    model = ["--model", str(tmp_path / "no-model")] if command == "render" else []
    result = omost(tmp_path, command, str(seed_file), "-o", str(target), *model)
    assert_one_line_failure(result, str(target.parent), "does not exist")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seed.md"]


def test_preview_reads_the_canvas_from_our_png(tmp_path: Path) -> None:
    canvas = parse(seed_answers()[1])
    picture = tmp_path / "turn-3.png"
    meta = png_metadata(to_code(canvas), RenderParams(seed=7), "some/model")
    picture.write_bytes(encode_png(Image.new("RGB", (64, 64), "navy"), meta))
    result = omost(tmp_path, "preview", str(picture), "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert len(data["regions"]) == len(canvas.regions) + 1
    assert data["regions"][0]["description"] == canvas.global_description.description
    assert data["preview"] == str(tmp_path / "turn-3.preview.png")
    assert Image.open(data["preview"]).size[0] > 0
    assert f"preview written to {data['preview']}" in result.stderr

    plain = tmp_path / "holiday.png"
    Image.new("RGB", (8, 8)).save(plain)
    refused = omost(tmp_path, "preview", str(plain))
    assert_one_line_failure(refused, "without an omost-bot canvas")


# --- first start --------------------------------------------------------------------------------


def test_first_start_in_a_terminal_offers_the_download_and_takes_no(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    env = offline_env(tmp_path, HF_ENDPOINT=f"http://127.0.0.1:{closed_port()}")
    del env["HF_HUB_OFFLINE"]  # online as far as the bot knows; the hub just cannot be reached
    child = pexpect.spawn(
        sys.executable,
        ["-m", "bot.cli", "chat", "-c", str(config)],
        env=env,
        cwd=str(tmp_path),
        encoding="utf-8",
        timeout=120,
    )
    try:
        child.expect(r"\[Y/n\] ")
        asked = child.before
        assert "lllyasviel/omost-llama-3-8b-4bits" in asked and "SG161222/RealVisXL_V4.0" in asked
        assert "size unknown" in asked
        assert f"omost-bot download -c {config}" in asked
        child.sendline("n")
        child.expect("Not fetching")
        child.expect("describe a picture")  # the chat starts anyway
        child.sendline("/quit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0
    assert not (tmp_path / "hf" / "hub").exists() or not any((tmp_path / "hf" / "hub").rglob("*.safetensors"))


def test_a_piped_start_prints_the_download_command_once_and_carries_on(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    result = omost(tmp_path, "chat", "-c", str(config), stdin="")
    assert result.returncode == 0, result.stderr
    hints = [line for line in result.stderr.splitlines() if "omost-bot download" in line]
    assert hints == [
        "omost-bot: not on this machine yet: the language model lllyasviel/omost-llama-3-8b-4bits, "
        f"the image model SG161222/RealVisXL_V4.0 (size unknown); fetch with: omost-bot download -c {config}"
    ]


def _fake_snapshot(cache: Path, repo: str, files: list[str]) -> None:
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("abc123", encoding="utf-8")
    for name in files:
        path = folder / "snapshots" / "abc123" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}", encoding="utf-8")


def test_weights_in_the_cache_are_found_and_missing_ones_named(tmp_path: Path) -> None:
    cache = tmp_path / "hub"
    _fake_snapshot(cache, "me/sdxl", ["model_index.json", "unet/diffusion_pytorch_model.fp16.safetensors"])
    _fake_snapshot(cache, "me/half", ["model_index.json"])  # a download that stopped before the weights
    remote = '[llm]\nbackend = "openai"\nbase_url = "http://127.0.0.1:1/v1"\n'
    present = parse_config(f'{remote}[render]\nmodel = "me/sdxl"\n', source="a.toml")
    assert missing_weights(present, sizes=False, cache_dir=str(cache)) == []
    half = parse_config(f'{remote}[render]\nmodel = "me/half"\n', source="a.toml")
    assert missing_weights(half, sizes=False, cache_dir=str(cache)) == [
        MissingWeights("render", "me/half", None, downloadable=True)
    ]
    assert download_command(half, missing_weights(half, sizes=False, cache_dir=str(cache))) == [
        "omost-bot",
        "download",
        "--render",
        "-c",
        "a.toml",
    ]
    local = parse_config(f'[llm]\nmodel = "{tmp_path}"\n[render]\nmodel = "{tmp_path / "nope"}"\n')
    assert missing_weights(local, sizes=False) == [
        MissingWeights("render", str(tmp_path / "nope"), None, downloadable=False)
    ]


def test_a_yes_runs_the_download_command_and_reports_a_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    config = parse_config("", source="bot.toml")
    missing = [MissingWeights("render", "SG161222/RealVisXL_V4.0", 6_900_000_000, downloadable=True)]
    ran: list[list[str]] = []
    out = io.StringIO()
    ok = offer_download(
        config, missing, stdin=io.StringIO("\n"), stdout=out, download=lambda c: ran.append(c) or 1
    )
    assert ran == [["omost-bot", "download", "--render", "-c", "bot.toml"]]
    assert not ok
    assert "6.9 GB" in out.getvalue() and "did not finish" in out.getvalue()


# --- quiet by default -----------------------------------------------------------------------------


def test_a_failed_render_prints_its_error_once_and_no_library_noise(tmp_path: Path, seed_file: Path) -> None:
    args = ["render", str(seed_file), "-o", str(tmp_path / "x.png"), "--model", str(tmp_path / "no-model")]
    quiet = omost(tmp_path, *args)
    assert quiet.returncode == 1
    assert quiet.stderr.count("The image model") == 1
    assert "omost-bot download --render" in quiet.stderr
    assert not [n for n in LIBRARY_NOISE if n in quiet.stderr], quiet.stderr
    loud = omost(tmp_path, *args, "--verbose")  # the noise is real: --verbose brings it back
    assert "torchvision" in loud.stderr


def test_a_default_render_shows_only_our_progress_and_result(tmp_path: Path, seed_file: Path) -> None:
    model = build_tiny_sdxl(tmp_path / "tiny-sdxl")
    config = write_config(tmp_path, f'[render]\nmodel = "{model}"\nwidth = 64\nheight = 64\nsteps = 1\n')
    out = tmp_path / "out.png"
    result = omost(tmp_path, "render", str(seed_file), "-o", str(out), "-c", str(config), "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert Image.open(out).size == (64, 64)  # the config's size: render honours -c
    assert not [n for n in LIBRARY_NOISE if n in result.stderr], result.stderr
    assert "base:" in result.stderr and f"wrote {out}" in result.stderr


async def test_an_unreachable_discord_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real discord.py against a closed loopback port (the config has no Discord URL to point
    a subprocess at, so this runs the adapter's start inside the CLI's boundary in process)."""
    import discord

    from adapters.discord_bot import DiscordAdapter
    from bot.operator_errors import OperatorError, operator_failures

    monkeypatch.setattr(discord.http.Route, "BASE", f"http://127.0.0.1:{closed_port()}/api/v10")
    monkeypatch.setenv("DISCORD_BOT_TOKEN", "not-a-real-token")
    config = parse_config(f'[data]\ndir = "{tmp_path}"\n[discord]\nenabled = true\n', source="bot.toml")
    adapter = DiscordAdapter.from_config(config)
    try:
        with pytest.raises(OperatorError) as info, operator_failures(config):
            await adapter.start(handler=None)  # type: ignore[arg-type]  # fails before any event
    finally:
        await adapter.stop()
    message = str(info.value)
    assert message.startswith("cannot reach Discord") and "\n" not in message
    assert "not-a-real-token" not in message
