"""The bot on the render cluster (issue 16): `[queue] backend = "redis"`, two worker processes,
the turn flow unchanged. Every turn finishes once (the store and the posts, by turn id), and a bot
restarted mid-turn attaches to its job instead of running it again."""

from __future__ import annotations

import asyncio
from pathlib import Path

from bot.app import App
from bot.config import Config, parse_config
from bot.store import TurnStatus
from omost_engine.cluster.state import ClusterState
from tests.cluster.conftest import StartWorker
from tests.fakes.fake_adapter import FakeAdapter
from tests.redis_server import RedisServer


def cluster_config(tmp_path: Path, url: str) -> Config:
    return parse_config(
        f'[data]\ndir = "{tmp_path / "data"}"\n[render]\nwidth = 128\nheight = 128\nsteps = 3\n'
        f'[queue]\nbackend = "redis"\nredis_url = "{url}"\nmax_per_user = 3\nmax_total = 200\n'
        "lease_s = 2.0\nheartbeat_s = 0.3\n[access]\nrate_limit_per_minute = 0\n",
        source="cluster-test.toml",
    )


async def until(condition: object, what: str, timeout: float = 60.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not (condition() if callable(condition) else condition):  # type: ignore[operator]
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def test_two_workers_finish_every_turn_once(
    tmp_path: Path, redis_server: RedisServer, start_worker: StartWorker
) -> None:
    start_worker("w1")
    start_worker("w2")
    adapter = FakeAdapter()
    users, turns = 20, 2

    def results(chat: str) -> int:
        return len([s for s in adapter.posts("image") if s.ref.chat == chat])

    async with App(cluster_config(tmp_path, redis_server.url), adapters=[adapter]) as app:

        async def user(n: int) -> None:
            for i in range(turns):  # each after the previous result, as people do
                await adapter.say(f"picture {i}", user=f"u{n}", chat=f"chat{n}")
                await until(lambda i=i: results(f"chat{n}") > i, "a result")

        await asyncio.wait_for(asyncio.gather(*(user(n) for n in range(users))), 240)
        await app.runner.drain()
        rows = await app.store.connection.execute_fetchall(
            "SELECT status, count(*) FROM turns GROUP BY status"
        )
        assert dict(rows) == {TurnStatus.DONE.value: users * turns}
        posted = [s.post.turn_id for s in adapter.posts("image")]
        assert sorted(posted) == list(range(1, users * turns + 1))  # each turn posted exactly once
        state = ClusterState(redis_server.url, prefix="omost")
        try:
            workers = await state.workers()
        finally:
            await state.close()
        assert {w.worker_id for w in workers if w.jobs_done} == {"w1", "w2"}  # both served


async def test_a_restarted_bot_attaches_to_its_running_job(
    tmp_path: Path, redis_server: RedisServer, start_worker: StartWorker
) -> None:
    start_worker("w1", "--step-delay", "0.4")
    config = cluster_config(tmp_path, redis_server.url)
    adapter = FakeAdapter()
    app = App(config, adapters=[adapter])
    await app.__aenter__()
    await adapter.say("a lighthouse in a storm")
    await until(lambda: any("step" in p.text for s in adapter.posts("status") for p in s.edits), "drawing")
    await app.__aexit__(None, None, None)  # the bot stops mid-render; the job goes on in the cluster
    rows = await asyncio.to_thread(
        lambda: (
            __import__("sqlite3")
            .connect(config.data.database)
            .execute("SELECT status FROM turns WHERE id = 1")
            .fetchone()
        )
    )
    assert rows[0] in ("queued", "running")  # left for the next start

    async with App(config, adapters=[adapter]) as app2:
        await asyncio.wait_for(app2.runner.drain(), 60)
        assert (await app2.store.get_turn(1)).status == TurnStatus.DONE
        assert [s.post.turn_id for s in adapter.posts("image")] == [1]
        state = ClusterState(redis_server.url, prefix="omost")
        try:
            for _ in range(100):  # the worker counts a job once it has handed its result over
                (worker,) = await state.workers()
                if worker.status != "busy":
                    break
                await asyncio.sleep(0.05)
        finally:
            await state.close()
        assert worker.jobs_done == 2  # one compose and one render: nothing ran twice


async def test_an_unreachable_cluster_keeps_the_turn_queued_and_sends_it_when_back(
    tmp_path: Path, redis_server: RedisServer, start_worker: StartWorker
) -> None:
    start_worker("w1")
    adapter = FakeAdapter()
    async with App(cluster_config(tmp_path, redis_server.url), adapters=[adapter]) as app:
        redis_server.stop()
        await asyncio.sleep(1.0)  # the engine notices Redis has gone
        await adapter.say("a lighthouse in a storm")
        await until(
            lambda: any("unreachable" in s.current.text for s in adapter.posts("status")), "the status"
        )
        assert (await app.store.get_turn(1)).status == TurnStatus.QUEUED  # kept, in SQLite
        redis_server.start()  # same port, same AOF
        await asyncio.wait_for(app.runner.drain(), 60)
        assert (await app.store.get_turn(1)).status == TurnStatus.DONE
        assert [s.post.turn_id for s in adapter.posts("image")] == [1]
