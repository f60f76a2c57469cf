"""The bot's own cost around the models, with fake backends that take no time.

1. Per-turn overhead: one user, turns one after another; the time from the message to the
   posted result, minus the time spent inside the fake LLM and renderer (p50, p99).
2. Load: N users (default 200) each sending 5 messages, each after their previous result
   arrived; checks nothing is lost or duplicated and reports the total time.
3. History: loading a 50-turn chain from the store (p50, p99), as the turn flow does.

    python bench/bench_bot.py [--users 200] [--turns 200]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapters.base import MessageRef, Post
from bot.app import App
from bot.config import parse_config
from bot.store import TurnStatus
from tests.fakes.fake_adapter import FakeAdapter
from tests.fakes.fake_backends import FakeLLM, FakeRenderer


def config(data: Path, users: int) -> object:
    return parse_config(
        f'[data]\ndir = "{data}"\n[render]\nwidth = 64\nheight = 64\nsteps = 4\n'
        f'[queue]\nmax_per_user = 3\nmax_total = {max(100, users * 3)}\nswap_models = "never"\n'
        "[access]\nrate_limit_per_minute = 0\n",
        source="bench",
    )


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def overhead(data: Path, turns: int) -> None:
    llm, renderer, adapter = FakeLLM(), FakeRenderer(downscale=8), FakeAdapter()
    async with App(config(data, 1), adapters=[adapter], llm=llm, renderer=renderer) as app:  # type: ignore[arg-type]
        walls: list[float] = []
        for i in range(turns):
            t0 = time.perf_counter()
            await adapter.say("a battle" if i % 2 == 0 else "add meteorites", chat="solo")
            await app.conversations.drain()
            walls.append(time.perf_counter() - t0)
        model = [(e - s) for s, e in llm.spans]
        render = [(e - s) for s, e in renderer.spans]
        per_turn_models = [a + b for a, b in zip(model, render, strict=True)]
        over = [w - m for w, m in zip(walls, per_turn_models, strict=True)]
        print(
            f"per-turn overhead around the models, {turns} turns: p50 {pct(over, 0.5) * 1e3:.1f} ms, "
            f"p99 {pct(over, 0.99) * 1e3:.1f} ms (whole turn p50 {pct(walls, 0.5) * 1e3:.1f} ms; "
            f"inside the fakes p50 {pct(per_turn_models, 0.5) * 1e3:.1f} ms)"
        )


class CountingAdapter(FakeAdapter):
    """Wakes each simulated user when a result lands in their chat."""

    def __init__(self) -> None:
        super().__init__()
        self.results: dict[str, int] = {}
        self.changed: dict[str, asyncio.Event] = {}

    async def send(self, chat: str, thread: str, post: Post) -> list[MessageRef]:
        refs = await super().send(chat, thread, post)
        if post.role == "image":
            self.results[chat] = self.results.get(chat, 0) + 1
            self.changed.setdefault(chat, asyncio.Event()).set()
        return refs

    async def wait_results(self, chat: str, count: int) -> None:
        while self.results.get(chat, 0) < count:
            event = self.changed.setdefault(chat, asyncio.Event())
            event.clear()
            await event.wait()


async def load(data: Path, users: int) -> None:
    adapter = CountingAdapter()
    llm, renderer = FakeLLM(), FakeRenderer()
    async with App(config(data, users), adapters=[adapter], llm=llm, renderer=renderer) as app:  # type: ignore[arg-type]

        async def user(n: int) -> None:
            for i in range(5):  # each message after the previous one's result, as people do
                await adapter.say(f"picture {i}", user=f"u{n}", chat=f"chat{n}")
                await adapter.wait_results(f"chat{n}", i + 1)

        t0 = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(user(n) for n in range(users))), 1800)
        await app.conversations.drain()
        total = time.perf_counter() - t0
        rows = await app.store.connection.execute_fetchall(
            "SELECT status, count(*) FROM turns GROUP BY status"
        )
        counts = {status: count for status, count in rows}
        turn_ids = [s.post.turn_id for s in adapter.posts("image")]
        assert counts == {TurnStatus.DONE.value: users * 5}, counts
        assert len(turn_ids) == len(set(turn_ids)) == users * 5, "lost or duplicated results"
        inside = sum(e - s for s, e in llm.spans) + sum(e - s for s, e in renderer.spans)
        print(
            f"{users} users x 5 messages: {users * 5} turns done, {len(turn_ids)} results, none lost or "
            f"duplicated; total {total:.1f} s ({users * 5 / total:.0f} turns/s; {inside:.1f} s of it inside "
            "the fake models, which one device lane runs one at a time)"
        )


async def history(data: Path) -> None:
    from bot.store import Store

    async with Store.open(data / "h.sqlite3") as store:
        conv = await store.get_or_create_conversation("bench", "c")
        parent = None
        for i in range(50):
            turn = await store.create_turn(
                conversation_id=conv.id,
                parent_id=parent,
                kind="compose",
                owner="u",
                user_text=f"message {i}",
                canvas_code="x" * 10000,
            )
            parent = turn.id
        assert parent is not None
        times = []
        for _ in range(500):
            t0 = time.perf_counter()
            chain = await store.history(parent)
            times.append(time.perf_counter() - t0)
        assert len(chain) == 50
        print(
            f"50-turn history load: p50 {pct(times, 0.5) * 1e3:.2f} ms, p99 {pct(times, 0.99) * 1e3:.2f} ms"
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=200)
    ap.add_argument("--turns", type=int, default=200)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(overhead(Path(tmp) / "a", args.turns))
        asyncio.run(load(Path(tmp) / "b", args.users))
        asyncio.run(history(Path(tmp) / "c"))


if __name__ == "__main__":
    main()
