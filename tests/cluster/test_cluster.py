"""The render cluster end to end: a real redis-server, worker processes over fake backends, and
RedisEngines as the bot uses them. What a user would notice: every job ends exactly once, in
order, fairly, whatever process dies."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from bot.cli import main
from omost_engine.canvas_code import GlobalParsed, to_answer
from omost_engine.cluster import RedisEngine
from omost_engine.cluster.codec import encode_event, encode_job
from omost_engine.cluster.state import ClusterState
from omost_engine.engine_api import EngineUnavailable
from omost_engine.jobs import (
    Cancelled,
    ComposeResult,
    Finished,
    JobEvent,
    PartParsed,
    Queued,
    Started,
    Step,
    TextDelta,
)
from omost_engine.render.base import RenderParams
from tests.cluster.conftest import REPO, StartWorker, worker_env
from tests.cluster.jobs import CANVAS, compose_job, render_job
from tests.redis_server import RedisServer, free_port

pytestmark = pytest.mark.timeout(120)

SLOW = RenderParams(width=128, height=128, steps=20)


@pytest.fixture
async def engines() -> AsyncIterator[Callable[..., Any]]:
    made: list[RedisEngine] = []

    async def make(url: str, **options: Any) -> RedisEngine:
        engine = RedisEngine(url, poll_s=0.1, **options)
        await engine.start()
        made.append(engine)
        return engine

    yield make
    for engine in made:
        await engine.stop()


async def eventually(condition: Callable[[], object], timeout: float = 30.0, what: str = "it") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def live_workers(server: RedisServer) -> dict[str, dict[bytes, bytes]]:
    client = server.client()
    try:
        ids = [i.decode() for i in client.smembers("omost:workers")]
        return {i: h for i in ids if (h := client.hgetall(f"omost:worker:{i}"))}
    finally:
        client.close()


async def all_events(handle: Any) -> list[JobEvent]:
    return [event async for event in handle.events()]


def check_render_order(events: list[JobEvent], steps: int) -> None:
    """Queued* then, per attempt, Started and steps 1..n in order; one terminal, last."""
    kinds = [type(e).__name__ for e in events]
    assert kinds.count("Finished") == 1 and kinds[-1] == "Finished", kinds
    first = kinds.index("Started")
    assert set(kinds[:first]) <= {"Queued"}, kinds
    expected = 0
    for event in events[first:-1]:
        if isinstance(event, Started):
            expected = 1  # a retry or a takeover starts over
        else:
            assert isinstance(event, Step) and event.index == expected, kinds
            expected += 1
    assert expected == steps + 1, kinds


async def test_two_workers_serve_200_users_times_5_jobs_exactly_once_in_order(
    redis_server: RedisServer, start_worker: StartWorker, engines: Callable[..., Any]
) -> None:
    start_worker("w1")
    start_worker("w2")
    await eventually(lambda: len(live_workers(redis_server)) == 2, what="two workers")
    engine = await engines(redis_server.url, max_total=1000)
    handles = [engine.submit(render_job(f"user{u}", f"job-{u}-{k}")) for k in range(5) for u in range(200)]
    results = await asyncio.wait_for(asyncio.gather(*(all_events(h) for h in handles)), 90)
    for events in results:
        check_render_order(events, steps=3)
        assert sum(isinstance(e, Started) for e in events) == 1  # nobody died: no job ran twice
        finished = events[-1]
        assert isinstance(finished, Finished) and finished.result.image.size == (16, 16)  # type: ignore[union-attr]
        assert all(e.preview is not None and e.preview.size == (8, 8) for e in events if isinstance(e, Step))

    def done() -> dict[str, int]:
        return {w: int(h[b"jobs_done"]) for w, h in live_workers(redis_server).items()}

    await eventually(lambda: sum(done().values()) == 1000, 5, "the heartbeats to count every job")
    assert min(done().values()) > 100, done()  # both served
    client = redis_server.client()
    assert client.zcard("omost:lease") == 0 and not client.keys("omost:q:*")  # nothing left behind


async def test_a_worker_killed_mid_render_loses_its_job_to_the_other_within_the_lease(
    redis_server: RedisServer, start_worker: StartWorker, engines: Callable[..., Any]
) -> None:
    procs = {
        w: start_worker(w, "--step-delay", "0.05", "--lease", "1.0", "--heartbeat", "0.2") for w in ("a", "b")
    }
    await eventually(lambda: len(live_workers(redis_server)) == 2, what="two workers")
    engine = await engines(redis_server.url)
    handle = engine.submit(render_job("alice", "doomed", SLOW))
    seen: list[JobEvent] = []

    async def follow() -> None:
        async for event in handle.events():
            seen.append(event)

    follower = asyncio.create_task(follow())
    await eventually(lambda: any(isinstance(e, Step) and e.index >= 3 for e in seen), what="steps")
    holder = redis_server.client().hget("omost:job:doomed", "worker").decode()
    procs[holder].send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    await eventually(lambda: sum(isinstance(e, Started) for e in seen) == 2, what="the takeover")
    takeover_s = time.monotonic() - killed_at
    await asyncio.wait_for(follower, 30)
    check_render_order(seen, steps=20)
    assert seen[-1] == handle.terminal and isinstance(handle.terminal, Finished)
    assert redis_server.client().hget("omost:job:doomed", "attempt") == b"2"
    assert takeover_s < 1.0 + 0.2 + 1.0, takeover_s  # lease + heartbeat + slack


async def test_a_restarted_bot_reattaches_and_gets_one_result(
    redis_server: RedisServer, start_worker: StartWorker, engines: Callable[..., Any]
) -> None:
    start_worker("w1", "--step-delay", "0.05")
    first = await engines(redis_server.url)
    handle = first.submit(render_job("alice", "turn-7-attempt-1", SLOW))
    async for event in handle.events():
        if isinstance(event, Step):
            break
    await first.stop()  # the bot goes away mid-job; the cluster keeps the job
    second = await engines(redis_server.url)
    again = second.submit(render_job("alice", "turn-7-attempt-1", SLOW))  # same deterministic id
    events = await asyncio.wait_for(all_events(again), 30)
    check_render_order(events, steps=20)  # replayed from the first event
    assert sum(isinstance(e, Started) for e in events) == 1  # the worker ran it once
    # Submitting it once more after it finished replays the result; nothing runs again.
    third = await engines(redis_server.url)
    replay = await asyncio.wait_for(third.submit(render_job("alice", "turn-7-attempt-1", SLOW)).wait(), 10)
    assert isinstance(replay, Finished)
    assert redis_server.client().hget("omost:job:turn-7-attempt-1", "attempt") == b"1"


async def test_one_users_many_jobs_from_another_process_delay_a_single_job_by_one_job(
    redis_server: RedisServer, start_worker: StartWorker, engines: Callable[..., Any]
) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.cluster.submit",
            "--url",
            redis_server.url,
            "--owner",
            "heavy",
            "--count",
            "10",
        ],
        cwd=REPO,
        env=worker_env(),
        check=True,
        timeout=60,
    )
    engine = await engines(redis_server.url)
    light = engine.submit(render_job("light", "light-0"))
    await eventually(lambda: light.position > 0, what="a position from the cluster")
    assert light.position == 2  # behind heavy's first job only, not behind all ten
    queued = next(e for e in light._events if isinstance(e, Queued))
    assert queued.eta_s is None  # no worker alive yet: nothing honest to promise
    start_worker("w1")
    assert isinstance(await asyncio.wait_for(light.wait(), 30), Finished)
    client = redis_server.client()

    def started_at(job_id: str) -> bytes:
        entries = client.xrange(f"omost:ev:{job_id}")
        return next(i for i, fields in entries if fields[b"type"] == b"Started")

    await eventually(
        lambda: all(client.hget(f"omost:job:heavy-{i}", "state") == b"finished" for i in range(10))
    )
    before = [i for i in range(10) if started_at(f"heavy-{i}") < started_at("light-0")]
    assert before == [0]


async def test_cancel_a_queued_job_and_a_running_one(
    redis_server: RedisServer, start_worker: StartWorker, engines: Callable[..., Any]
) -> None:
    start_worker("w1", "--step-delay", "0.1")
    engine = await engines(redis_server.url)
    running = engine.submit(render_job("alice", "running", SLOW))
    queued = engine.submit(render_job("bob", "queued", SLOW, tag="turn-9"))
    after = engine.submit(render_job("carol", "after"))
    async for event in running.events():
        if isinstance(event, Step):
            break
    assert engine.cancel_tagged("turn-9", "the user pressed stop") == 1
    began = time.monotonic()
    assert await asyncio.wait_for(queued.wait(), 5) == Cancelled("the user pressed stop")
    assert running.cancel("the user pressed stop")
    assert await asyncio.wait_for(running.wait(), 5) == Cancelled("the user pressed stop")
    assert time.monotonic() - began < 2.0  # not the 2 s the render had left
    steps = [e for e in await all_events(running) if isinstance(e, Step)]
    assert len(steps) < 20
    assert isinstance(await asyncio.wait_for(after.wait(), 10), Finished)  # the worker serves on
    assert redis_server.client().hget("omost:job:queued", "attempt") == b"0"  # never started


async def test_redis_stopped_and_restarted_mid_run_loses_nothing(
    redis_server: RedisServer, start_worker: StartWorker, engines: Callable[..., Any]
) -> None:
    start_worker("w1", "--step-delay", "0.02", "--lease", "3")
    start_worker("w2", "--step-delay", "0.02", "--lease", "3")
    await eventually(lambda: len(live_workers(redis_server)) == 2, what="two workers")
    engine = await engines(redis_server.url)
    handles = [engine.submit(render_job(f"user{i % 8}", f"job-{i}")) for i in range(40)]
    await eventually(lambda: sum(h.terminal is not None for h in handles) >= 8, what="some results")
    redis_server.stop()  # SIGTERM: Redis writes its AOF and exits
    await asyncio.sleep(1.0)
    assert not engine.reachable
    with pytest.raises(EngineUnavailable, match="unreachable"):
        engine.submit(render_job("late", "late-0"))
    redis_server.start()  # same port, same folder: the AOF brings the queues back
    results = await asyncio.wait_for(asyncio.gather(*(all_events(h) for h in handles)), 60)
    for events in results:
        check_render_order(events, steps=3)
    assert engine.reachable


async def test_redis_unreachable_at_start_says_so_then_recovers(
    tmp_path: Any, start_worker: StartWorker, engines: Callable[..., Any], redis_server: RedisServer
) -> None:
    port = free_port()
    engine = await engines(f"redis://127.0.0.1:{port}/0", connect_timeout_s=0.2)
    assert not engine.reachable
    with pytest.raises(EngineUnavailable) as refused:
        engine.submit(render_job("alice", "first"))
    assert "the render cluster is unreachable" in str(refused.value).lower()
    late = RedisServer(tmp_path / "late")
    late.port = port
    late.start()
    try:
        await asyncio.wait_for(engine.wait_until_reachable(), 10)
        handle = engine.submit(render_job("alice", "first"))
        worker = subprocess.Popen(
            [sys.executable, "-m", "tests.cluster.fake_worker", "--url", late.url, "--id", "late-worker"],
            cwd=REPO,
            env=worker_env(),
        )
        try:
            assert isinstance(await asyncio.wait_for(handle.wait(), 30), Finished)
        finally:
            worker.kill()
            worker.wait()
    finally:
        late.stop()


@pytest.mark.slow  # the worker process imports diffusers to find the model missing
def test_a_worker_whose_models_fail_reports_it_and_takes_no_jobs(
    redis_server: RedisServer, tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        f'[data]\ndir = "{tmp_path / "data"}"\n[render]\nmodel = "{tmp_path / "no-such-model.safetensors"}"\n'
        f'[queue]\nbackend = "redis"\nredis_url = "{redis_server.url}"\nheartbeat_s = 0.5\n'
    )
    client = redis_server.client()
    client.hset("omost:job:x", mapping={"state": "queued"})  # not a real job: just something to claim
    client.rpush("omost:q:render:alice", "x")
    client.rpush("omost:rr:render", "alice")
    worker = subprocess.Popen(
        [sys.executable, "-m", "bot.cli", "worker", "-c", str(config), "--id", "broken", "--jobs", "render"],
        cwd=REPO,
        env=worker_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 90
        while not (status := client.hget("omost:worker:broken", "status")):
            assert worker.poll() is None and time.monotonic() < deadline, "the worker never reported"
            time.sleep(0.1)
        assert status.startswith(b"failed: ")
        time.sleep(1.5)  # three heartbeats: still nothing claimed
        assert client.hget("omost:job:x", "state") == b"queued" and client.llen("omost:q:render:alice") == 1
        assert main(["doctor", "-c", str(config)]) == 0
        doctor = capsys.readouterr().out
        assert "cluster:  Redis ok, 1 worker(s), 1 queued, 0 running" in doctor
        assert "worker broken: failed: " in doctor
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 1  # a clean exit, saying the models failed
    assert not client.exists("omost:worker:broken")  # it took itself off the list


def test_doctor_says_when_the_cluster_is_unreachable(
    tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'[queue]\nbackend = "redis"\nredis_url = "redis://127.0.0.1:{free_port()}/0"\n')
    assert main(["doctor", "-c", str(config)]) == 0
    assert "cluster:  UNREACHABLE" in capsys.readouterr().out


async def test_a_compose_job_streams_its_text_and_regions_back_in_order(
    redis_server: RedisServer, start_worker: StartWorker, engines: Callable[..., Any]
) -> None:
    start_worker("w1", "--token-delay", "0.001")
    engine = await engines(redis_server.url)
    events = await asyncio.wait_for(all_events(engine.submit(compose_job("alice", "compose-1"))), 30)
    finished = events[-1]
    assert isinstance(finished, Finished) and isinstance(finished.result, ComposeResult)
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert text == finished.result.text == to_answer(CANVAS)
    parts = [e.part for e in events if isinstance(e, PartParsed)]
    assert isinstance(parts[0], GlobalParsed) and len(parts) == 1 + len(CANVAS.regions)
    assert finished.result.canvas == CANVAS
    # Each part arrives after the text that completes it, as in the embedded engine.
    first_part = next(i for i, e in enumerate(events) if isinstance(e, PartParsed))
    assert any(isinstance(e, TextDelta) for e in events[:first_part])


async def test_a_stopped_worker_hands_its_job_back_at_once(
    redis_server: RedisServer, start_worker: StartWorker, engines: Callable[..., Any]
) -> None:
    procs = {w: start_worker(w, "--step-delay", "0.05", "--lease", "30") for w in ("a", "b")}
    await eventually(lambda: len(live_workers(redis_server)) == 2, what="two workers")
    engine = await engines(redis_server.url)
    handle = engine.submit(render_job("alice", "handed-back", SLOW))
    seen: list[JobEvent] = []

    async def follow() -> None:
        async for event in handle.events():
            seen.append(event)

    follower = asyncio.create_task(follow())
    await eventually(lambda: any(isinstance(e, Step) for e in seen), what="a step")
    holder = redis_server.client().hget("omost:job:handed-back", "worker").decode()
    procs[holder].send_signal(signal.SIGTERM)
    await asyncio.wait_for(follower, 10)  # far sooner than the 30 s lease
    check_render_order(seen, steps=20)
    assert procs[holder].wait(timeout=10) == 0
    assert redis_server.client().hget("omost:job:handed-back", "worker") is None


async def test_a_cut_off_worker_cannot_write_into_a_job_another_worker_took_over(
    redis_server: RedisServer,
) -> None:
    state = ClusterState(redis_server.url)
    try:
        await state.submit("j", "render", "alice", "", encode_job(render_job("alice", "j")))
        first = await state.claim("w1", 50, ["render"])
        assert first is not None
        await asyncio.sleep(0.1)  # w1 stops renewing: its lease runs out
        assert await state.reap(60) == 1
        second = await state.claim("w2", 10_000, ["render"])
        assert second is not None and second.attempt == "2"
        started = encode_event(Started(), max_image_bytes=1)
        assert not await state.publish(first, "w1", 50, 60, [started], seq=1)
        assert await state.renew(first, "w1", 50) == (False, "")
        assert await state.publish(second, "w2", 10_000, 60, [started], seq=1)
        assert await state.publish(second, "w2", 10_000, 60, [started], seq=1)  # a retry: applied once
        entries = await state.redis.xrange(state.keys.events("j"))
        assert len(entries) == 1
    finally:
        await state.close()
