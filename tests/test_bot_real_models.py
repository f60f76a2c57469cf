"""The bot with the real backends on tiny models built here (no hub): the composition root builds
them from config, exactly as `omost-bot run` does."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bot.app import App
from bot.store import TurnStatus
from omost_engine.canvas_code import parse, to_answer
from omost_engine.render.metadata import read_png_metadata
from tests.bot_config import bot_config, tiny_model_sections
from tests.fakes.fake_adapter import FakeAdapter
from tests.seed import seed_answers
from tests.tiny_llm import build_tiny_llm
from tests.tiny_sdxl import build_tiny_sdxl


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("models")
    return build_tiny_llm(root / "llm"), build_tiny_sdxl(root / "sdxl")


async def test_real_tiny_models_through_the_bot(tmp_path: Path, models: tuple[Path, Path]) -> None:
    llm_dir, sdxl_dir = models
    config = bot_config(tmp_path, **tiny_model_sections(llm_dir, sdxl_dir))
    adapter = FakeAdapter()
    async with App(config, adapters=[adapter]) as app:
        # a canvas the user wrote: the real regional SDXL pipeline draws it
        await adapter.say(to_answer(parse(seed_answers()[0])))
        await asyncio.wait_for(app.runner.drain(), 300)
        turn = await app.store.get_turn(1)
        assert turn.status == TurnStatus.DONE, turn.error
        image = adapter.posts("image")[0].post.image
        assert image is not None
        restored = read_png_metadata(image.data)
        assert restored is not None and restored.canvas == parse(seed_answers()[0])
        assert (restored.params.width, restored.params.height, restored.params.steps) == (64, 64, 2)

        # a prompt: the random-weight model streams for real, cannot write a canvas, and the user
        # is told so with the line and a Retry button (nothing is drawn)
        await adapter.say("a lighthouse in a storm", chat="c2")
        await asyncio.wait_for(app.runner.drain(), 300)
        turn = await app.store.get_turn(2)
        assert turn.status == TurnStatus.FAILED
        assert turn.assistant_text  # the model's streamed answer was kept
        status = next(s for s in adapter.posts("status") if s.ref.chat == "c2").current
        assert "did not parse" in status.text
        assert [b.action for b in status.buttons] == ["retry"]
