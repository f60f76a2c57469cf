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
        model = [(e - s) for s, e in llm.spans] + [0.0] * 0
        render = [(e - s) for s, e in renderer.spans]
        per_turn_models = [a + b for a, b in zip(model, render, strict=True)]
        over = [w - m for w, m in zip(walls, per_turn_models, strict=True)]
        print(
            f"per-turn overhead around the models, {turns} turns: p50 {pct(over, 0.5) * 1e3:.1f} ms, "
            f"p99 {pct(over, 0.99) * 1e3:.1f} ms (whole turn p50 {pct(walls, 0.5) * 1e3:.1f} ms; "
            f"inside the fakes p50 {pct(per_turn_models, 0.5) * 1e3:.1f} ms)"
        )


async def load(data: Path, users: int) -> None:
    adapter = FakeAdapter()
    async with App(config(data, users), adapters=[adapter], llm=FakeLLM(), renderer=FakeRenderer()) as app:  # type: ignore[arg-type]

        async def user(n: int) -> None:
            for i in range(5):
                await adapter.say(f"picture {i}", user=f"u{n}", chat=f"chat{n}")
                while True:  # the next message after this one's result
                    images = sum(1 for s in adapter.posts("image") if s.ref.chat == f"chat{n}")
                    if images > i:
                        break
                    await asyncio.sleep(0.005)

        t0 = time.perf_counter()
        await asyncio.gather(*(user(n) for n in range(users)))
        await app.conversations.drain()
        total = time.perf_counter() - t0
        rows = await app.store.connection.execute_fetchall(
            "SELECT status, count(*) FROM turns GROUP BY status"
        )
        counts = dict(rows)  # type: ignore[arg-type]
        images = adapter.posts("image")
        turn_ids = [s.post.turn_id for s in images]
        assert counts == {TurnStatus.DONE.value: users * 5}, counts
        assert len(turn_ids) == len(set(turn_ids)) == users * 5, "lost or duplicated results"
        print(
            f"{users} users x 5 messages: {users * 5} turns done, {len(images)} results, none lost or "
            f"duplicated; total {total:.1f} s ({total / (users * 5) * 1e3:.1f} ms a turn, fakes included)"
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
