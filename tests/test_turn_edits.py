"""Edits that keep the picture, through the bot (issue 15): a reply that changes one region keeps
every other pixel, a changed scene is drawn again with the parent's seed, Vary region and Zoom out
are turns of their own, and all of it still works after a restart. The tiny SDXL draws."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from bot.app import App
from bot.store import TurnKind, TurnStatus
from omost_engine.canvas_code import parse, to_answer
from omost_engine.render.edit_plan import EditSpec, decide_edit, edit_masks, vary_boxes
from omost_engine.render.pipeline import SDXLRegionalRenderer
from tests.bot_config import bot_config
from tests.fakes.fake_adapter import FakeAdapter
from tests.fakes.fake_backends import FakeLLM
from tests.tiny_sdxl import build_tiny_sdxl

GLOBAL = (
    "canvas = Canvas()\ncanvas.set_global_description(description='A lighthouse in a storm', "
    "detailed_descriptions=['Waves'], tags='sea, storm', HTML_web_color_name='steelblue')\n"
)


def region(description: str, location: str, area: str, color: str, distance: float) -> str:
    return (
        f"canvas.add_local_description(location='{location}', offset='no offset', area='{area}', "
        f"distance_to_viewer={distance}, description='{description}', detailed_descriptions=[], "
        f"tags='', atmosphere='', style='', quality_meta='', HTML_web_color_name='{color}')\n"
    )


LIGHTHOUSE = region("A lighthouse", "on the right", "a large vertical area", "white", 3.0)
BEFORE = GLOBAL + LIGHTHOUSE + region("A gull", "on the top-left", "a small square area", "gray", 2.0)
BOAT = GLOBAL + LIGHTHOUSE + region("A red boat", "on the top-left", "a small square area", "red", 2.0)
NIGHT = BEFORE.replace("A lighthouse in a storm", "A lighthouse at night")
RENDER = "width = 128\nheight = 128\nsteps = 3"


@pytest.fixture(scope="module")
def tiny_sdxl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_sdxl(tmp_path_factory.mktemp("sdxl") / "tiny-sdxl")


class Recorder(SDXLRegionalRenderer):
    """The real tiny SDXL, remembering what each render was asked to do."""

    edits: list[EditSpec | None]

    def render(self, canvas: Any, params: Any, **kwargs: Any) -> Any:
        self.edits.append(params.edit)
        return super().render(canvas, params, **kwargs)


async def open_app(
    tmp_path: Path, tiny_sdxl: Path, answers: list[str], adapter: FakeAdapter
) -> tuple[App, Recorder]:
    renderer = Recorder(str(tiny_sdxl), device="cpu", preview_every=0)
    renderer.edits = []
    llm = FakeLLM([to_answer(parse(a)) for a in answers])
    app = App(
        bot_config(tmp_path, render=RENDER, job_timeout_s=120), adapters=[adapter], llm=llm, renderer=renderer
    )
    await app.__aenter__()
    return app, renderer


def picture(app: App, turn: Any) -> np.ndarray:
    return np.asarray(Image.open(app.store.image_file(turn.image_path)).convert("RGB"), dtype=np.int16)


async def test_a_reply_that_changes_one_region_keeps_every_other_pixel(
    tmp_path: Path, tiny_sdxl: Path
) -> None:
    adapter = FakeAdapter()
    app, renderer = await open_app(tmp_path, tiny_sdxl, [BEFORE, BOAT, NIGHT], adapter)
    try:
        await adapter.say("a lighthouse in a storm with a gull")
        await app.runner.drain()
        first = await app.store.get_turn(1)
        await adapter.say("make the gull a red boat", reply_to=adapter.posts("image")[0].ref.message_id)
        await app.runner.drain()
        edit = await app.store.get_turn(2)
        assert edit.status == TurnStatus.DONE and edit.seed == first.seed  # the seed carries over
        spec = renderer.edits[-1]
        assert spec is not None and spec.kind == "inpaint"
        boxes = decide_edit(parse(BEFORE), parse(BOAT)).boxes
        soft = edit_masks(128, 128, boxes, spec.margin, spec.feather).soft
        diff = np.abs(picture(app, edit) - picture(app, first)).max(axis=-1)
        assert diff[soft == 0].max() == 0  # every pixel outside the grown, feathered box: the parent's
        assert diff[soft == 1].mean() > 0  # the boat's box is drawn anew
        # the gull went and the boat came, in the same box: both named
        assert "Redrew 2 regions: a red boat, a gull; kept the rest." in adapter.posts("image")[1].post.text

        # a changed scene: the whole picture again, with the parent's seed (Omost's behaviour)
        await adapter.say("make it night", reply_to=adapter.posts("image")[1].ref.message_id)
        await app.runner.drain()
        night = await app.store.get_turn(3)
        assert renderer.edits[-1] is None and night.seed == first.seed
        assert "Redrew the whole picture: the scene changed." in adapter.posts("image")[2].post.text
    finally:
        await app.__aexit__(None, None, None)


async def test_edit_full_always_redraws_the_whole_picture(tmp_path: Path, tiny_sdxl: Path) -> None:
    adapter = FakeAdapter()
    app, renderer = await open_app(tmp_path, tiny_sdxl, [BEFORE, BOAT], adapter)
    try:
        await adapter.say("edit=full", command="settings")
        await adapter.say("a lighthouse in a storm with a gull")
        await adapter.say("make the gull a red boat")
        await app.runner.drain()
        assert renderer.edits == [None, None]
        assert "Redrew the whole picture (edits: full)." in adapter.posts("image")[1].post.text
    finally:
        await app.__aexit__(None, None, None)


async def test_vary_region_and_zoom_out_are_turns_that_keep_the_rest(tmp_path: Path, tiny_sdxl: Path) -> None:
    adapter = FakeAdapter()
    app, renderer = await open_app(tmp_path, tiny_sdxl, [BEFORE, BOAT], adapter)
    try:
        await adapter.say("a lighthouse in a storm with a gull")
        await app.runner.drain()
        first = await app.store.get_turn(1)
        assert [b.action for b in adapter.posts("image")[0].post.buttons][-2:] == ["vary", "zoom"]

        # Vary region: a question first (the regions by number), then the picked region redrawn
        assert await adapter.press("vary", 1, user="bob") is not None  # not bob's picture: refused
        await adapter.press("vary", 1)
        picker = adapter.sent[-1].post
        assert [c.value for c in picker.choices] == ["1", "2"] and picker.choices[1].label.startswith(
            "2. A gull"
        )
        await adapter.press("vary", 1, value="2")
        await app.runner.drain()
        varied = await app.store.get_turn(2)
        assert varied.kind == TurnKind.RENDER and varied.parent_id == 1 and varied.seed != first.seed
        spec = renderer.edits[-1]
        assert spec is not None and spec.kind == "vary" and spec.boxes == vary_boxes(parse(BEFORE), 2)
        soft = edit_masks(128, 128, spec.boxes, spec.margin, spec.feather).soft
        diff = np.abs(picture(app, varied) - picture(app, first)).max(axis=-1)
        assert diff[soft == 0].max() == 0 and diff[soft == 1].mean() > 0
        assert "Redrew region 2 with a new seed: a gull" in adapter.posts("image")[1].post.text

        # Zoom out: same size, the parent scaled into the centre, the framing kept by what follows
        await adapter.press("zoom", 1)
        await app.runner.drain()
        zoomed = await app.store.get_turn(3)
        assert zoomed.params["frame_zoom"] == 1.5 and renderer.edits[-1].kind == "zoom_out"  # type: ignore[union-attr]
        assert picture(app, zoomed).shape == picture(app, first).shape
        await adapter.say("make the gull a red boat", reply_to=adapter.posts("image")[2].ref.message_id)
        await app.runner.drain()
        assert (await app.store.get_turn(4)).params["frame_zoom"] == 1.5
    finally:
        await app.__aexit__(None, None, None)


async def test_the_edit_buttons_work_after_a_restart(tmp_path: Path, tiny_sdxl: Path) -> None:
    adapter = FakeAdapter()
    app, _ = await open_app(tmp_path, tiny_sdxl, [BEFORE], adapter)
    await adapter.say("a lighthouse in a storm with a gull")
    await app.runner.drain()
    await app.__aexit__(None, None, None)
    app, renderer = await open_app(tmp_path, tiny_sdxl, [BEFORE], adapter)
    try:
        await adapter.press("vary", 1, value="1")
        await adapter.press("zoom", 1)
        await app.runner.drain()
        assert [e.kind for e in renderer.edits if e is not None] == ["vary", "zoom_out"]
        assert (await app.store.get_turn(2)).status == (await app.store.get_turn(3)).status == TurnStatus.DONE
    finally:
        await app.__aexit__(None, None, None)


async def test_a_renderer_without_edits_draws_whole_pictures_and_offers_no_edit_buttons(
    tmp_path: Path,
) -> None:
    from tests.fakes.fake_backends import FakeRenderer

    class WholePictures(FakeRenderer):
        supports_edits = False

    adapter = FakeAdapter()
    renderer = WholePictures()
    llm = FakeLLM([to_answer(parse(a)) for a in (BEFORE, BOAT)])
    async with App(
        bot_config(tmp_path, render=RENDER), adapters=[adapter], llm=llm, renderer=renderer
    ) as app:
        await adapter.say("a lighthouse in a storm with a gull")
        await adapter.say("make the gull a red boat")
        await app.runner.drain()
        assert [params.edit for _, params in renderer.calls] == [None, None]
        result = adapter.posts("image")[1].post
        assert [b.action for b in result.buttons] == ["seed", "rewrite", "hires"]
        assert "this image model draws whole pictures only" in result.text
        assert "whole pictures only" in (await adapter.press("vary", 1) or "")


async def test_an_edit_sent_while_its_parent_is_drawn_still_keeps_the_picture(
    tmp_path: Path, tiny_sdxl: Path
) -> None:
    adapter = FakeAdapter()
    app, renderer = await open_app(tmp_path, tiny_sdxl, [BEFORE, BOAT], adapter)
    try:
        await adapter.say("a lighthouse in a storm with a gull")
        await adapter.say("make the gull a red boat")  # at once: the first picture is not drawn yet
        await app.runner.drain()
        spec = renderer.edits[-1]
        assert spec is not None and spec.kind == "inpaint"
        first, edit = await app.store.get_turn(1), await app.store.get_turn(2)
        soft = edit_masks(128, 128, spec.boxes, spec.margin, spec.feather).soft
        diff = np.abs(picture(app, edit) - picture(app, first)).max(axis=-1)
        assert diff[soft == 0].max() == 0
    finally:
        await app.__aexit__(None, None, None)
