"""History load time for a 50-turn chain (DESIGN.md budget: under 2 ms).

Builds a file database in a temporary folder with a 50-turn chain whose turns carry the seed
conversation's real answers (the assistant text and the canvas code, about 6-13 KB each), then
times `Store.history(last turn)` many times and prints the median and p99, their ratio to the
budget, and two comparisons measured in the same run: walking the chain with one `get_turn` per
turn (what the single recursive query replaces) and the same recursive query on a plain,
synchronous sqlite3 connection (the cost of aiosqlite's hop to its thread and back).

    python bench/bench_store.py [--loads 2000] [--turns 50]
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bot.store import Store, TurnKind
from omost_engine.canvas_code import find_code
from tests.seed import seed_messages

BUDGET_MS = 2.0


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def build_chain(store: Store, turns: int) -> int:
    messages = seed_messages()
    pairs = [(messages[i]["content"], messages[i + 1]["content"]) for i in range(0, len(messages) - 1, 2)]
    conversation = await store.get_or_create_conversation("telegram", "-1001234567890", "42")
    parent: int | None = None
    for i in range(turns):
        user, answer = pairs[i % len(pairs)]
        turn = await store.create_turn(
            conversation_id=conversation.id,
            parent_id=parent,
            kind=TurnKind.COMPOSE,
            owner="123456789",
            user_text=user,
            seed=12345 + i,
            params={"width": 896, "height": 1152, "steps": 25, "cfg": 5.0},
        )
        await store.update_turn(turn.id, status="running")
        await store.update_turn(
            turn.id,
            status="done",
            assistant_text=answer,
            canvas_code=find_code(answer).code,
            image_path=store.new_image_path(turn.id),
        )
        parent = turn.id
    assert parent is not None
    return parent


async def time_async(fn, loads: int) -> list[float]:  # type: ignore[no-untyped-def]
    for _ in range(min(50, loads)):  # warm the page cache and the statement cache
        await fn()
    samples = []
    for _ in range(loads):
        start = time.perf_counter()
        await fn()
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def summary(name: str, samples: list[float]) -> tuple[float, float]:
    p50, p99 = statistics.median(samples), percentile(samples, 0.99)
    print(f"{name:<44} p50 {p50:7.3f} ms   p99 {p99:7.3f} ms")
    return p50, p99


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loads", type=int, default=2000)
    parser.add_argument("--turns", type=int, default=50)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.sqlite3"
        async with Store.open(path) as store:
            last = await build_chain(store, args.turns)
            history = await store.history(last)
            assert len(history) == args.turns
            size = sum(
                len(t.assistant_text or "") + len(t.canvas_code or "") + len(t.user_text) for t in history
            )
            print(
                f"{args.turns}-turn chain, {size / 1024:.0f} KiB of text, {args.loads} loads, file db (WAL)"
            )

            async def one_query() -> None:
                await store.history(last)

            async def walk() -> None:
                turn = await store.get_turn(last)
                while turn.parent_id is not None:
                    turn = await store.get_turn(turn.parent_id)

            cte50, cte99 = summary(
                "Store.history (one recursive query)", await time_async(one_query, args.loads)
            )
            walk50, _walk99 = summary(
                "get_turn per turn (naive walk)", await time_async(walk, args.loads // 4)
            )

        # The same query without aiosqlite, to show what the thread hop costs.
        sql_store = sqlite3.connect(path)
        query = """
            WITH RECURSIVE chain (id, depth) AS (
                SELECT id, 0 FROM turns WHERE id = ?
                UNION ALL
                SELECT turns.parent_id, chain.depth + 1 FROM turns JOIN chain ON turns.id = chain.id
                WHERE turns.parent_id IS NOT NULL
            )
            SELECT turns.* FROM chain JOIN turns ON turns.id = chain.id ORDER BY chain.depth DESC
        """
        samples = []
        for i in range(args.loads + 50):
            start = time.perf_counter()
            sql_store.execute(query, (last,)).fetchall()
            if i >= 50:
                samples.append((time.perf_counter() - start) * 1000)
        sql_store.close()
        raw50, _ = summary("same query, plain sqlite3 (no Turn objects)", samples)

    print()
    verdict = "within" if cte99 < BUDGET_MS else "OVER"
    print(f"p99 / budget ({BUDGET_MS} ms):             {cte99 / BUDGET_MS:.2f}  ({verdict})")
    print(f"naive walk / one query (p50):          {walk50 / cte50:.1f}x")
    print(f"one query / plain sqlite3 (p50):       {cte50 / raw50:.1f}x")


if __name__ == "__main__":
    asyncio.run(main())
