"""The terminal chat with fake backends, as a process of its own: what the crash test kills.

python -m tests.fakes.console_bot DATA_DIR STEP_DELAY_S [stall-links | unparsable-first]

With `stall-links`, linking a posted result never finishes (it prints "linking…" first), so the
test can kill the process between posting a result and linking it. With `unparsable-first`, the
model's first answer and the engine's repair turn after it hold no code (a failed parse, for
/retry); its later answers are the seed conversation's.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from bot.commands.chat import chat
from bot.config import parse_config
from bot.store import Store
from tests.fakes.fake_backends import FakeLLM, FakeRenderer, seed_answers

UNPARSABLE = "I would draw a quiet harbour at dawn, but I forgot to write the code."


async def _stalled(*_: object, **__: object) -> None:
    print("linking…", flush=True)
    await asyncio.Event().wait()


def main() -> int:
    data_dir, step_delay = Path(sys.argv[1]), float(sys.argv[2])
    if sys.argv[3:] == ["stall-links"]:
        Store.link_messages = _stalled  # type: ignore[method-assign]
    config = parse_config(
        f'[data]\ndir = "{data_dir}"\n[render]\nwidth = 128\nheight = 128\nsteps = 6\n'
        '[queue]\nswap_models = "never"\n',
        source="console_bot",
    )
    answers = seed_answers()
    if sys.argv[3:] == ["unparsable-first"]:
        answers = [UNPARSABLE, UNPARSABLE, *answers]
    llm = FakeLLM(answers)
    return asyncio.run(chat(config, llm=llm, renderer=FakeRenderer(step_delay_s=step_delay)))


if __name__ == "__main__":
    raise SystemExit(main())
