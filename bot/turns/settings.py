"""Typed turn settings: what a turn is drawn with, merged from four layers and validated once.

    config defaults  <  chat settings  <  user settings  <  this message's options

`TurnSettings` is a frozen dataclass; `SettingsBook` reads the layers, `parse_changes` turns a
user's words ("size=1024x1024 steps=30", a keyboard's option) into checked changes, each bad value
with its own message, and `render_params` is the one place a turn's settings become the engine's
`RenderParams`. The limits are the config's own (which are the renderer's), so /settings, the
config file and the renderer agree on what is allowed.

It knows the config and the store's settings table; nothing about platforms or the engine's jobs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from adapters.base import BoundedMap
from bot.config import RenderConfig
from bot.store import Store
from bot.turns.errors import UserError
from omost_engine.render.base import (
    CFG_RANGE,
    HIRES_DENOISE_RANGE,
    HIRES_MIN_SCALE,
    HIRES_SCALE_RANGE,
    HIRES_STEPS_RANGE,
    MAX_FRAME_ZOOM,
    MAX_SIZE,
    MAX_STEPS,
    MIN_SIZE,
    SIZE_MULTIPLE,
    RenderParams,
)
from omost_engine.render.edit_plan import EditSpec

MAX_SEED = 2**31 - 1
SETTING_NAMES = ("size", "steps", "seed", "hires", "hires_steps", "hires_denoise", "png", "edit")
EDIT_MODES = ("auto", "full")


@dataclass(frozen=True)
class TurnSettings:
    """What a turn is drawn with. `seed` None: a random seed is drawn when the turn is made."""

    width: int
    height: int
    steps: int
    cfg: float
    hires_scale: float
    negative_prompt: str
    hires_steps: int = 20  # Omost's high-resolution fix: its steps and denoise (SPEC, issue 12)
    hires_denoise: float = 0.4
    pooled: str = "omost"  # the pooled text embedding: Omost's, or standard SDXL's ("sdxl")
    seed: int | None = None
    png: bool = False  # also send the lossless PNG as a file
    edit: str = "auto"  # "auto": an edit redraws only the regions it changed; "full": all of it
    # what this picture's frame is (kept by the turns that continue it) and what this one turn does
    frame_zoom: float = 1.0  # the canvas's boxes drawn scaled by 1 / frame_zoom (after Zoom out)
    vary_region: int = 0  # Vary region: redraw only this region (1-based) with a new seed
    zoom_out: float = 1.0  # Zoom out: the parent's picture scaled by 1 / zoom_out, a border drawn

    def continued(self) -> TurnSettings:
        """The settings a turn continuing this one starts from: the frame, not this turn's edit."""
        return replace(self, vary_region=0, zoom_out=1.0)

    @classmethod
    def defaults(cls, render: RenderConfig) -> TurnSettings:
        return cls(
            width=render.width,
            height=render.height,
            steps=render.steps,
            cfg=render.cfg,
            hires_scale=render.hires_scale,
            negative_prompt=render.negative_prompt,
            hires_steps=render.hires_steps,
            hires_denoise=render.hires_denoise,
            pooled=render.pooled,
        )

    def merged(self, changes: Mapping[str, Any]) -> TurnSettings:
        """These settings with `changes` (already checked) over them; unknown keys are ignored
        (an older version's stored settings may hold keys this one no longer has)."""
        known = {f.name for f in fields(self)}
        return replace(self, **{k: v for k, v in changes.items() if k in known})

    def stored(self) -> dict[str, Any]:
        """What a turn stores (its `params` column); the seed has a column of its own."""
        data = asdict(self)
        data.pop("seed")
        return data

    @classmethod
    def from_turn(cls, defaults: TurnSettings, params: Mapping[str, Any], seed: int | None) -> TurnSettings:
        return defaults.merged(params).merged({"seed": seed})

    def clamped(self) -> TurnSettings:
        """Within what /settings allows (settings read from a file or a picture are untrusted)."""

        def within(value: float, low: float, high: float) -> float:
            return min(max(value, low), high)

        def size(value: int) -> int:
            return int(within(value // SIZE_MULTIPLE * SIZE_MULTIPLE, MIN_SIZE, MAX_SIZE))

        seed = None if self.seed is None else int(within(self.seed, 0, MAX_SEED))
        return replace(
            self,
            width=size(self.width),
            height=size(self.height),
            steps=int(within(self.steps, 1, MAX_STEPS)),
            cfg=within(self.cfg, *CFG_RANGE),
            hires_scale=within(self.hires_scale, *HIRES_SCALE_RANGE),
            hires_steps=int(within(self.hires_steps, *HIRES_STEPS_RANGE)),
            hires_denoise=within(self.hires_denoise, *HIRES_DENOISE_RANGE),
            seed=seed,
            frame_zoom=within(self.frame_zoom, 1.0, MAX_FRAME_ZOOM),
            vary_region=0,
            zoom_out=1.0,
        )

    @property
    def hires(self) -> bool:
        return self.hires_scale > HIRES_MIN_SCALE

    def summary(self) -> str:
        seed = "random" if self.seed is None else str(self.seed)
        hires = (
            f"{self.hires_scale:g}x ({self.hires_steps} steps, denoise {self.hires_denoise:g})"
            if self.hires
            else "off"
        )
        return (
            f"size {self.width}x{self.height}, {self.steps} steps, seed {seed}, hires {hires}, "
            f"lossless PNG {'on' if self.png else 'off'}, edits {self.edit}"
        )


def render_params(settings: TurnSettings, seed: int, edit: EditSpec | None = None) -> RenderParams:
    """The one conversion from a turn's settings to what the renderer takes."""
    return RenderParams(
        frame_zoom=settings.frame_zoom,
        edit=edit,
        width=settings.width,
        height=settings.height,
        steps=settings.steps,
        cfg=settings.cfg,
        seed=seed,
        negative_prompt=settings.negative_prompt,
        hires_scale=settings.hires_scale,
        hires_steps=settings.hires_steps,
        hires_denoise=settings.hires_denoise,
        pooled="sdxl" if settings.pooled == "sdxl" else "omost",
    )


def settings_from_render_params(params: RenderParams, png: bool = False) -> TurnSettings:
    """A picture's recorded settings (e.g. read back from one of our PNGs) as turn settings."""
    return TurnSettings(
        width=params.width,
        height=params.height,
        steps=params.steps,
        cfg=params.cfg,
        hires_scale=params.hires_scale,
        negative_prompt=params.negative_prompt,
        seed=params.seed,
        png=png,
        frame_zoom=params.frame_zoom,
        hires_steps=params.hires_steps,
        hires_denoise=params.hires_denoise,
        pooled=params.pooled,
    )


# --- reading what a user typed ------------------------------------------------------------------


def parse_changes(words: str = "", options: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Checked changes from "key=value" words and structured options; raises UserError naming the
    first bad value and what is allowed."""
    pairs: list[tuple[str, str]] = []
    for item in words.replace(",", " ").split():
        key, _, value = item.partition("=")
        pairs.append((key, value))
    pairs += list((options or {}).items())
    changes: dict[str, Any] = {}
    for key, value in pairs:
        changes.update(parse_setting(key.strip().lower(), value.strip()))
    return changes


def parse_setting(key: str, value: str) -> dict[str, Any]:
    """One setting as the user wrote it -> the TurnSettings fields it sets."""
    if key == "size":
        return _size(value)
    if key == "steps":
        return {"steps": _number(key, value, int, 1, MAX_STEPS)}
    if key == "seed":
        if value.lower() in ("random", "off", "none", ""):
            return {"seed": None}
        return {"seed": _number(key, value, int, 0, MAX_SEED)}
    if key == "hires":
        if value.lower() in ("off", "no", "none"):
            return {"hires_scale": 1.0}
        return {"hires_scale": _number(key, value, float, *HIRES_SCALE_RANGE)}
    if key == "hires_steps":
        return {"hires_steps": _number(key, value, int, *HIRES_STEPS_RANGE)}
    if key == "hires_denoise":
        return {"hires_denoise": _number(key, value, float, *HIRES_DENOISE_RANGE)}
    if key == "cfg":
        return {"cfg": _number(key, value, float, *CFG_RANGE)}
    if key == "edit":
        if value.lower() not in EDIT_MODES:
            raise UserError(f"edit must be auto (redraw only what changed) or full, got “{value}”.")
        return {"edit": value.lower()}
    if key == "png":
        if value.lower() not in ("on", "off", "yes", "no", "true", "false", "1", "0"):
            raise UserError(f"png must be on or off, got “{value}”.")
        return {"png": value.lower() in ("on", "yes", "true", "1")}
    raise UserError(f"I don't know the setting “{key}”. Settings: {', '.join(SETTING_NAMES)}.")


def _number(key: str, value: str, kind: type[int] | type[float], low: float, high: float) -> Any:
    try:
        n = kind(value)
    except ValueError:
        raise UserError(f"{key} must be a number, got “{value}”.") from None
    if n != n or not low <= n <= high:  # n != n: NaN
        raise UserError(f"{key} must be between {low:.15g} and {high:.15g}, got {value}.")
    return n


def _size(value: str) -> dict[str, int]:
    m = re.fullmatch(r"(\d+)\s*[x×*]\s*(\d+)", value)
    if not m:
        raise UserError(f"size must look like 1024x1024, got “{value}”.")
    width, height = int(m.group(1)), int(m.group(2))
    if (
        width % SIZE_MULTIPLE
        or height % SIZE_MULTIPLE
        or not (MIN_SIZE <= width <= MAX_SIZE and MIN_SIZE <= height <= MAX_SIZE)
    ):
        raise UserError(
            f"width and height must be multiples of {SIZE_MULTIPLE} between {MIN_SIZE} and {MAX_SIZE}, "
            f"got {value}."
        )
    return {"width": width, "height": height}


# --- the layers ---------------------------------------------------------------------------------


class SettingsBook:
    """Chat and user settings, read through a write-through cache: the bot is the only writer of
    its database, so a saved setting is read from memory afterwards (no store round trip a turn)."""

    def __init__(self, store: Store, defaults: TurnSettings, *, cache_size: int = 4096) -> None:
        self.store = store
        self.defaults = defaults
        self._cache: BoundedMap[tuple[str, str, str], dict[str, Any]] = BoundedMap(cache_size)

    async def layer(self, scope: str, platform: str, subject: str) -> dict[str, Any]:
        key = (scope, platform, subject)
        cached = self._cache.get(key)
        if cached is None:
            cached = self._cache[key] = await self.store.get_settings(scope, platform, subject)
        return cached

    async def save(self, scope: str, platform: str, subject: str, changes: Mapping[str, Any]) -> None:
        saved = await self.store.set_settings(scope, platform, subject, changes)
        self._cache[(scope, platform, subject)] = saved

    async def effective(
        self, platform: str, user: str, chat_key: str, options: Mapping[str, str] | None = None
    ) -> TurnSettings:
        """defaults < chat < user < this message's options (checked: UserError on a bad one)."""
        settings = self.defaults
        for scope, subject in (("chat", chat_key), ("user", user)):
            settings = settings.merged(_known(await self.layer(scope, platform, subject)))
        relevant = {k: v for k, v in (options or {}).items() if k in SETTING_NAMES}
        return settings.merged(parse_changes(options=relevant)) if relevant else settings


def _known(saved: Mapping[str, Any]) -> dict[str, Any]:
    """The saved keys that are settings (the chat layer also keeps e.g. the /undo head)."""
    names = {f.name for f in fields(TurnSettings)}
    return {k: v for k, v in saved.items() if k in names}
