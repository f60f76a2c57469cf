"""Walk one message through a turn and print the rooms it enters, in order.

A profile hook records every call into the bot's own modules (bot/, adapters/) from outside that
module (a call within a module stays in its room) while one ordinary turn (a follow-up message:
compose + render, fake backends) goes from the adapter to the posted result.

    python bench/trace_turn.py [--tree PATH]     (PATH: another checkout to walk, e.g. an old commit)
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from collections import Counter
from pathlib import Path
from types import FrameType
from typing import Any

# --tree PATH: whose bot to walk; else this tree's
sys.path.insert(
    0, sys.argv[sys.argv.index("--tree") + 1] if "--tree" in sys.argv else str(Path(__file__).parents[1])
)

from bot.app import App
from tests.bot_config import bot_config
from tests.fakes.fake_adapter import FakeAdapter
from tests.fakes.fake_backends import FakeLLM, FakeRenderer

ROOT = Path(sys.path[0]).resolve()
FIRST_INSTRUCTION = 4


def _module(frame: FrameType | None) -> str | None:
    if frame is None:
        return None
    path = Path(frame.f_code.co_filename)
    if not path.is_relative_to(ROOT) or path.parts[len(ROOT.parts)] not in ("bot", "adapters"):
        return None
    return path.relative_to(ROOT).as_posix()


async def walk() -> list[str]:
    visits: list[str] = []

    def hook(frame: FrameType, event: str, arg: Any) -> None:
        # "call" also fires when a coroutine resumes; a fresh call starts at the code's first
        # instructions (offset 0, or 4 past a coroutine's RETURN_GENERATOR in CPython 3.11+)
        if event == "call" and frame.f_lasti <= FIRST_INSTRUCTION:
            module = _module(frame)
            if module is not None and _module(frame.f_back) != module:
                visits.append(module)

    with tempfile.TemporaryDirectory() as tmp:
        adapter = FakeAdapter()
        async with App(
            bot_config(Path(tmp)), adapters=[adapter], llm=FakeLLM(), renderer=FakeRenderer()
        ) as app:
            await adapter.say("a battle")
            drain = getattr(app, "runner", None) or app.conversations  # before the redesign
            await drain.drain()
            sys.setprofile(hook)
            await adapter.say("add meteorites")
            await drain.drain()
            sys.setprofile(None)
    return visits


def main() -> None:
    visits = asyncio.run(walk())
    rooms = Counter(visits)
    print(f"one follow-up message -> posted result: {len(rooms)} modules, entered {len(visits)} times")
    for module, count in sorted(rooms.items(), key=lambda kv: visits.index(kv[0])):
        print(f"  {module}: entered {count} time(s)")


if __name__ == "__main__":
    main()
