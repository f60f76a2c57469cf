"""What a turn shows: corrections wherever a canvas is drawn, the raw answer of a failed parse, and
the canvas when the renderer's weights are missing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omost_engine import errors
from omost_engine.canvas_code import parse, to_answer
from tests.fakes.fake_backends import FakeLLM, FakeRenderer
from tests.seed import seed_answers
from tests.test_conversation import open_bot


def misspelled_canvas() -> str:
    """The seed's first canvas with one location misspelled, as a user might send it."""
    code = to_answer(parse(seed_answers()[0]))
    first = parse(seed_answers()[0]).regions[0].location
    return code.replace(f"location='{first}'", f"location='{first}x'", 1), first


async def test_corrections_are_shown_with_the_preview_and_the_result(tmp_path: Path) -> None:
    app, bot = await open_bot(tmp_path)
    try:
        code, location = misspelled_canvas()
        await bot.adapter.say(code)
        await bot.settle()
        said = f"“{location}x” → “{location}”"
        [preview] = bot.adapter.posts("preview")
        [result] = bot.adapter.posts("image")
        assert said in preview.post.text and said in result.post.text
        assert "Read as the nearest allowed names" in result.post.text
    finally:
        await app.__aexit__(None, None, None)


async def test_a_failed_parse_attaches_the_answer_and_keeps_it_on_disk(tmp_path: Path) -> None:
    garbage = "Sure! Here is a lovely picture of a cat.\n" * 3
    app, bot = await open_bot(tmp_path, llm=FakeLLM([garbage]))
    try:
        await bot.adapter.say("a cat")
        await bot.settle()
        [attached] = [s for s in bot.adapter.sent if s.post.files]
        [answer] = attached.post.files
        assert answer.filename == "turn-1-answer.txt" and answer.data.decode() == garbage
        assert answer.path is not None and Path(answer.path).read_text() == garbage
        assert Path(answer.path).is_relative_to(tmp_path)
        status = bot.adapter.posts("status")[0].current
        assert "did not parse" in status.text and [b.action for b in status.buttons] == ["retry"]
    finally:
        await app.__aexit__(None, None, None)


class MissingWeights(FakeRenderer):
    def render(self, *args: Any, **kwargs: Any) -> Any:
        raise errors.ModelNotAvailable(
            "SG161222/RealVisXL_V4.0",
            "The image model is not downloaded yet: run `omost-bot download --render`.",
        )


async def test_without_renderer_weights_a_turn_still_gives_the_layout_and_the_code(tmp_path: Path) -> None:
    app, bot = await open_bot(tmp_path, renderer=MissingWeights())
    try:
        await bot.adapter.say("a battle")
        await bot.settle()
        assert len(bot.adapter.posts("preview")) == 1  # the layout, before any pixels
        [canvas] = [s for s in bot.adapter.sent if s.post.files]
        assert canvas.post.files[0].filename == "turn-1-canvas.py"
        assert parse(canvas.post.files[0].data.decode()) == parse(seed_answers()[0])
        status = bot.adapter.posts("status")[0].current
        assert "omost-bot download --render" in status.text
        assert not bot.adapter.posts("image")
    finally:
        await app.__aexit__(None, None, None)


async def test_a_repaired_answer_says_so_and_is_recorded(tmp_path: Path) -> None:
    garbage = "Sure! Here is a lovely picture of a cat.\n"
    app, bot = await open_bot(tmp_path, llm=FakeLLM([garbage, seed_answers()[0]]))
    try:
        await bot.adapter.say("a cat")
        await bot.settle()
        status = bot.adapter.posts("status")[0]
        assert any("asking the model once more" in p.text for p in status.edits)
        turn = await bot.turn(1)
        assert turn.status.value == "done" and turn.params.get("repaired") is True
        assert parse(turn.canvas_code or "") == parse(seed_answers()[0])
        assert len(bot.adapter.posts("image")) == 1
    finally:
        await app.__aexit__(None, None, None)
