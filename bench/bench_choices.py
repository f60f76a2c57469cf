"""What a pick from a question's choices costs on the platforms, against a plain button press.

A Discord select menu is rebuilt from the message on every pick (so it survives restarts), and
with two templates registered every component id is matched twice; a Telegram choice is one more
codec field. This measures, in one run, the time from the user's press or pick (the fake server's
event) to the ButtonPress reaching the handler, through the real discord.py and
python-telegram-bot against the fakes on loopback, and prints p50/p99 and the ratio pick/press.

    python bench/bench_choices.py [--n 100]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))

from adapters.base import Adapter, Button, ButtonPress, Choice, Incoming, Post
from adapters.discord_bot import DiscordAdapter
from adapters.telegram_bot import TelegramAdapter
from tests.fakes.discord_server import CHANNEL_ID, GUILD_ID, serve
from tests.fakes.telegram_server import TOKEN, FakeTelegram

CHOICES = tuple(Choice("vary", 7, str(i), f"{i}. region number {i}") for i in range(1, 13))
BUTTONS = tuple(Button(a, 7) for a in ("seed", "rewrite", "hires", "vary", "zoom"))


class Arrivals:
    """The handler: notes when each press arrives."""

    def __init__(self) -> None:
        self.arrived = asyncio.Event()

    async def on_message(self, adapter: Adapter, message: Incoming) -> None:
        return None

    async def on_button(self, adapter: Adapter, press: ButtonPress) -> str | None:
        self.arrived.set()
        return "ok"


async def timed(handler: Arrivals, act: Callable[[], Awaitable[object] | object], n: int) -> list[float]:
    out = []
    for _ in range(n):
        handler.arrived.clear()
        start = time.perf_counter()
        result = act()
        if asyncio.iscoroutine(result):
            await result
        await asyncio.wait_for(handler.arrived.wait(), 10)
        out.append((time.perf_counter() - start) * 1000)
    return out


async def discord_run(n: int) -> tuple[list[float], list[float]]:
    async with serve() as fake:
        handler = Arrivals()
        adapter = DiscordAdapter("bench-token", guild_ids=[GUILD_ID], guild_ready_timeout=0.05)
        await adapter.start(handler)
        try:
            [menu] = await adapter.send(str(CHANNEL_ID), "", Post(text="Which?", choices=CHOICES))
            [result] = await adapter.send(str(CHANNEL_ID), "", Post(text="Turn 7", buttons=BUTTONS))
            picks = await timed(handler, lambda: fake.select("omost:vary:7", ["5"], int(menu.message_id)), n)
            presses = await timed(handler, lambda: fake.press("omost:vary:7", int(result.message_id)), n)
        finally:
            await adapter.stop()
    return picks, presses


async def telegram_run(n: int) -> tuple[list[float], list[float]]:
    async with FakeTelegram() as tg:
        tg.chat(1001)
        handler = Arrivals()
        adapter = TelegramAdapter(TOKEN, base_url=tg.base_url, poll_timeout=1.0)
        await adapter.start(handler)
        try:
            [menu] = await adapter.send("1001", "", Post(text="Which?", choices=CHOICES))
            [result] = await adapter.send("1001", "", Post(text="Turn 7", buttons=BUTTONS))
            picks = await timed(handler, lambda: tg.press(1001, int(menu.message_id), "omost:vary:7:5"), n)
            presses = await timed(handler, lambda: tg.press(1001, int(result.message_id), "omost:vary:7"), n)
        finally:
            await adapter.stop()
    return picks, presses


def report(platform: str, picks: list[float], presses: list[float]) -> None:
    def p99(xs: list[float]) -> float:
        return sorted(xs)[max(0, round(len(xs) * 0.99) - 1)]

    pick, press = statistics.median(picks), statistics.median(presses)
    print(
        f"{platform:8s} pick p50 {pick:6.2f} ms p99 {p99(picks):6.2f} | "
        f"press p50 {press:6.2f} ms p99 {p99(presses):6.2f} | pick/press {pick / press:.2f}x"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100)
    args = parser.parse_args()
    report("discord", *await discord_run(args.n))
    report("telegram", *await telegram_run(args.n))


if __name__ == "__main__":
    asyncio.run(main())
