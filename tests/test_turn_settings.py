"""Typed turn settings: defaults < chat < user < message, one message per bad value, and the chat's
limits are the config's (which are the renderer's)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.config import ConfigError, RenderConfig, parse_config
from bot.store import Store
from bot.turns.errors import UserError
from bot.turns.settings import SettingsBook, TurnSettings, parse_changes, render_params
from omost_engine.render.base import MAX_SIZE, MAX_STEPS, RenderParams, check_params


@pytest.fixture
async def book(tmp_path: Path) -> SettingsBook:
    async with Store.open(tmp_path / "s.sqlite3") as store:
        yield SettingsBook(store, TurnSettings.defaults(RenderConfig(width=896, height=1152, steps=25)))


async def test_each_layer_overrides_the_one_below(book: SettingsBook) -> None:
    base = await book.effective("tg", "alice", "chat1")
    assert (base.width, base.height, base.steps, base.seed) == (896, 1152, 25, None)

    await book.save("chat", "tg", "chat1", {"steps": 30, "width": 1024, "height": 1024})
    chat = await book.effective("tg", "alice", "chat1")
    assert (chat.width, chat.steps) == (1024, 30)

    await book.save("user", "tg", "alice", parse_changes("steps=12 seed=7"))
    user = await book.effective("tg", "alice", "chat1")
    assert (user.width, user.steps, user.seed) == (1024, 12, 7)  # the chat's size stays

    message = await book.effective("tg", "alice", "chat1", {"steps": "40", "size": "512x768"})
    assert (message.width, message.height, message.steps, message.seed) == (512, 768, 40, 7)

    other = await book.effective("tg", "bob", "chat1")
    assert (other.steps, other.seed) == (30, None)  # bob sees the chat's, not alice's


async def test_the_cache_reads_what_was_written_and_the_store_agrees(book: SettingsBook) -> None:
    await book.save("user", "tg", "alice", {"steps": 9})
    again = SettingsBook(book.store, book.defaults)  # a fresh start reads the store
    assert (await again.effective("tg", "alice", "c")).steps == 9
    await book.save("user", "tg", "alice", {"seed": None})  # random again: the key is removed
    assert (await book.effective("tg", "alice", "c")).seed is None


@pytest.mark.parametrize(
    ("words", "says"),
    [
        ("size=1000x1000", "width and height must be multiples of 64 between 64 and 2048, got 1000x1000."),
        ("size=big", "size must look like 1024x1024, got “big”."),
        (f"size={MAX_SIZE + 64}x64", f"between 64 and {MAX_SIZE}"),
        ("steps=0", f"steps must be between 1 and {MAX_STEPS}, got 0."),
        ("steps=ten", "steps must be a number, got “ten”."),
        ("seed=-1", "seed must be between 0 and 2147483647, got -1."),
        ("hires=3", "hires must be between 1 and 2, got 3."),
        ("hires=nan", "hires must be between 1 and 2, got nan."),
        ("png=maybe", "png must be on or off, got “maybe”."),
        ("colour=red", "I don't know the setting “colour”. Settings: size, steps, seed, hires, hires_steps"),
        ("edit=some", "edit must be auto (redraw only what changed) or full, got “some”."),
        ("hires_steps=101", "hires_steps must be between 1 and 100, got 101."),
        ("hires_denoise=0", "hires_denoise must be between 0.1 and 1, got 0."),
    ],
)
def test_one_clear_message_per_bad_value(words: str, says: str) -> None:
    with pytest.raises(UserError) as refused:
        parse_changes(words)
    assert says in refused.value.reply


def test_the_chat_limits_are_the_configs_and_the_renderers() -> None:
    # the largest size and step count the chat accepts are what the config accepts...
    top = parse_changes(f"size={MAX_SIZE}x{MAX_SIZE} steps={MAX_STEPS}")
    config = parse_config(f"[render]\nwidth = {MAX_SIZE}\nheight = {MAX_SIZE}\nsteps = {MAX_STEPS}\n")
    assert (config.render.width, config.render.steps) == (top["width"], top["steps"])
    # ...and what the renderer takes
    check_params(RenderParams(width=top["width"], height=top["width"], steps=top["steps"]))
    # one step beyond is refused by all three
    with pytest.raises(UserError):
        parse_changes(f"steps={MAX_STEPS + 1}")
    with pytest.raises(ConfigError):
        parse_config(f"[render]\nsteps = {MAX_STEPS + 1}\n")
    with pytest.raises(ConfigError):
        parse_config(f"[render]\nwidth = {MAX_SIZE + 64}\n")


def test_render_params_is_the_one_conversion() -> None:
    settings = TurnSettings.defaults(RenderConfig()).merged(parse_changes("size=1024x768 hires=1.5"))
    params = render_params(settings, seed=42)
    assert (params.width, params.height, params.seed, params.hires_scale) == (1024, 768, 42, 1.5)
    assert settings.hires and not TurnSettings.defaults(RenderConfig()).hires
    stored = settings.stored()
    assert "seed" not in stored
    assert (
        TurnSettings.from_turn(TurnSettings.defaults(RenderConfig()), stored, 42).merged({"seed": None})
        == settings
    )
