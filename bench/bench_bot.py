"""The bot's own cost around the models, with fake backends that take no time.

1. Per-turn overhead: one user, turns one after another; the time from the message to the
   posted result, minus the time spent inside the fake LLM and renderer (p50, p99), and the store
   round trips of each turn (awaited Store calls, counted by tests/store_counter.py).
   `--baseline REF` runs the same against git REF (checked out in a temporary worktree, in a
   subprocess, in the same run) and prints both with their ratio.
2. Load: N users (default 200) each sending 5 messages, each after their previous result
   arrived; checks nothing is lost or duplicated and reports the total time.
3. History: loading a 50-turn chain from the store (p50, p99), as the turn flow does.

    python bench/bench_bot.py [--users 200] [--turns 200] [--baseline REF]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# --tree PATH: whose bot to import (the baseline's worktree, in the subprocess); else this tree's
sys.path.insert(
    0, sys.argv[sys.argv.index("--tree") + 1] if "--tree" in sys.argv else str(Path(__file__).parents[1])
)

from adapters.base import MessageRef, Post
from bot.app import App
from bot.config import parse_config
from bot.store import TurnStatus
from tests.fakes.fake_adapter import FakeAdapter
from tests.fakes.fake_backends import FakeLLM, FakeRenderer

HERE = Path(__file__).resolve().parents[1]


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


def _store_counter() -> Any:
    """This tree's store-call counter, whichever tree's bot is measured."""
    spec = importlib.util.spec_from_file_location("store_counter", HERE / "tests" / "store_counter.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.count_store_calls


def _drain(app: Any) -> Any:
    runner = getattr(app, "runner", None) or app.conversations  # the code before the redesign
    return runner.drain()


async def overhead(data: Path, turns: int, render_ms: float = 0.0) -> dict[str, float]:
    # render_ms: how long the fake renderer holds its "GPU" (spread over the 4 steps), as a real
    # render does; 0 measures the bot's work alone, with nothing to overlap it with
    step_delay_s = render_ms / 4 / 1000
    llm, renderer, adapter = FakeLLM(), FakeRenderer(downscale=8, step_delay_s=step_delay_s), FakeAdapter()
    async with App(config(data, 1), adapters=[adapter], llm=llm, renderer=renderer) as app:  # type: ignore[arg-type]
        calls = _store_counter()(app.store)
        walls: list[float] = []
        trips: list[int] = []
        for i in range(turns):
            calls.clear()
            t0 = time.perf_counter()
            await adapter.say("a battle" if i % 2 == 0 else "add meteorites", chat="solo")
            await _drain(app)
            walls.append(time.perf_counter() - t0)
            trips.append(len(calls))
        model = [(e - s) for s, e in llm.spans]
        render = [(e - s) for s, e in renderer.spans]
        per_turn_models = [a + b for a, b in zip(model, render, strict=True)]
        over = [w - m for w, m in zip(walls, per_turn_models, strict=True)]
    return {
        "p50_ms": pct(over, 0.5) * 1e3,
        "p99_ms": pct(over, 0.99) * 1e3,
        "whole_p50_ms": pct(walls, 0.5) * 1e3,
        "first_turn_trips": trips[0],
        "trips": pct([float(t) for t in trips[1:]], 0.5),
    }


def _print_overhead(label: str, o: dict[str, float], turns: int) -> None:
    print(
        f"{label}: per-turn overhead around the models, {turns} turns: p50 {o['p50_ms']:.1f} ms, "
        f"p99 {o['p99_ms']:.1f} ms (whole turn p50 {o['whole_p50_ms']:.1f} ms); store round trips "
        f"per ordinary turn {o['trips']:.0f} (the first turn after start {o['first_turn_trips']:.0f})"
    )


def _baseline(ref: str, turns: int, render_ms: float) -> dict[str, float]:
    """The overhead of git REF, measured by this script in a subprocess on a temporary worktree."""
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "baseline"
        subprocess.run(["git", "-C", str(HERE), "worktree", "add", "--detach", str(tree), ref], check=True)
        try:
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--tree",
                    str(tree),
                    "--overhead-json",
                    "--turns",
                    str(turns),
                    "--render-ms",
                    str(render_ms),
                ],
                check=True,
                capture_output=True,
                text=True,
                cwd=tree,
            ).stdout
        finally:
            subprocess.run(["git", "-C", str(HERE), "worktree", "remove", "--force", str(tree)], check=True)
    result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return result


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
        await _drain(app)
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
    ap.add_argument("--baseline", help="also measure the overhead of this git ref, in the same run")
    ap.add_argument("--overhead-only", action="store_true", help="skip the load and history parts")
    ap.add_argument("--tree", help=argparse.SUPPRESS)
    ap.add_argument("--overhead-json", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--render-ms", type=float, default=0.0, help="the fake render's simulated GPU time")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.overhead_json:  # the baseline's subprocess
            print(json.dumps(asyncio.run(overhead(Path(tmp) / "a", args.turns, args.render_ms))))
            return
        base = _baseline(args.baseline, args.turns, args.render_ms) if args.baseline else None
        now = asyncio.run(overhead(Path(tmp) / "a", args.turns, args.render_ms))
        _print_overhead("this tree", now, args.turns)
        if base is not None:
            _print_overhead(f"baseline {args.baseline}", base, args.turns)
            print(
                f"ratio this / baseline: p50 {now['p50_ms'] / base['p50_ms']:.2f}, "
                f"p99 {now['p99_ms'] / base['p99_ms']:.2f}, "
                f"store round trips {now['trips'] / base['trips']:.2f}"
            )
        if not args.overhead_only:
            asyncio.run(load(Path(tmp) / "b", args.users))
            asyncio.run(history(Path(tmp) / "c"))


if __name__ == "__main__":
    main()
