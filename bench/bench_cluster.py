"""Benchmarks for the render cluster (issue 16); prints figures measured in this run.

Everything runs on this machine: a private redis-server (AOF on, as in production), worker
processes over the fake backends (tests/cluster/fake_worker.py), and a RedisEngine as the bot.

1. Scaling: render jobs that hold a simulated GPU for a fixed time each (`--gpu-s`, spent in the
   fake renderer's steps, sleeping, so N workers do not compete for this machine's CPU) served
   by 1, 2 and 4 workers; jobs per second and the scaling efficiency, throughput(N) / (N x
   throughput(1)). DESIGN's budget is at least 0.9.
2. Transport latency: one job at a time, zero GPU time, submit -> Finished, for the in-process
   Engine and for the cluster (one worker) in the same run; p50/p99 and the difference, which is
   what Redis, the worker's claim and the event stream add per job.
3. Takeover: a worker is SIGKILLed mid-render; the time until the job runs again on the other
   worker (the bot sees its second Started), against the bound lease_s + heartbeat_s.

Run: python bench/bench_cluster.py   (CPU only; about a minute; needs redis-server)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from omost_engine.cluster import RedisEngine
from omost_engine.engine import Engine
from omost_engine.jobs import Finished, Started, Step
from omost_engine.render.base import RenderParams
from tests.cluster.jobs import render_job
from tests.fakes.fake_backends import FakeLLM, FakeRenderer
from tests.redis_server import RedisServer

ROOT = Path(__file__).resolve().parents[1]
STEPS = 4


def start_worker(url: str, worker_id: str, *options: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [sys.executable, "-m", "tests.cluster.fake_worker", "--url", url, "--id", worker_id, *options],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def wait_workers(server: RedisServer, n: int) -> None:
    client = server.client()
    while len([w for w in client.smembers("omost:workers") if client.exists(b"omost:worker:" + w)]) < n:
        await asyncio.sleep(0.05)
    client.close()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def scaling(server: RedisServer, gpu_s: float, jobs_per_worker: int) -> dict[int, float]:
    params = RenderParams(width=128, height=128, steps=STEPS)
    rates: dict[int, float] = {}
    for n in (1, 2, 4):
        procs = [start_worker(server.url, f"s{n}-{i}", "--step-delay", str(gpu_s / STEPS)) for i in range(n)]
        try:
            await wait_workers(server, n)
            engine = RedisEngine(server.url, poll_s=0.5, max_total=10_000)
            await engine.start()
            began = time.perf_counter()
            total = jobs_per_worker * n
            handles = [
                engine.submit(render_job(f"user{i % 50}", f"scale-{n}-{i}", params)) for i in range(total)
            ]
            ends = await asyncio.gather(*(h.wait() for h in handles))
            seconds = time.perf_counter() - began
            await engine.stop()
            assert all(isinstance(e, Finished) for e in ends)
            rates[n] = total / seconds
            print(f"  {n} worker(s): {total} jobs in {seconds:.2f} s = {rates[n]:.2f} jobs/s")
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait()
        await asyncio.sleep(0.5)  # the stopped workers' heartbeats expire
    return rates


async def latency(server: RedisServer, jobs: int) -> tuple[list[float], list[float]]:
    params = RenderParams(width=128, height=128, steps=STEPS)
    local_s: list[float] = []
    async with Engine(FakeLLM(), FakeRenderer(previews=True)) as engine:
        for i in range(jobs):
            began = time.perf_counter()
            await engine.submit(render_job("alice", f"local-{i}", params)).wait()
            local_s.append(time.perf_counter() - began)
    cluster_s: list[float] = []
    proc = start_worker(server.url, "latency")
    try:
        await wait_workers(server, 1)
        cluster = RedisEngine(server.url, poll_s=0.5)
        await cluster.start()
        for i in range(jobs):
            began = time.perf_counter()
            await cluster.submit(render_job("alice", f"remote-{i}", params)).wait()
            cluster_s.append(time.perf_counter() - began)
        await cluster.stop()
    finally:
        proc.terminate()
        proc.wait()
    return local_s, cluster_s


async def takeover(server: RedisServer, lease_s: float, heartbeat_s: float, rounds: int) -> list[float]:
    options = ("--step-delay", "0.05", "--lease", str(lease_s), "--heartbeat", str(heartbeat_s))
    procs = {w: start_worker(server.url, w, *options) for w in ("ka", "kb")}
    times: list[float] = []
    client = server.client()
    try:
        await wait_workers(server, 2)
        engine = RedisEngine(server.url, poll_s=0.2)
        await engine.start()
        for r in range(rounds):
            handle = engine.submit(
                render_job("alice", f"kill-{r}", RenderParams(width=128, height=128, steps=60))
            )
            killed_at = 0.0
            async for event in handle.events():
                if isinstance(event, Step) and event.index == 3 and not killed_at:
                    holder = client.hget(f"omost:job:kill-{r}", "worker").decode()
                    procs[holder].send_signal(signal.SIGKILL)
                    procs[holder].wait()
                    killed_at = time.perf_counter()
                    procs[holder] = start_worker(server.url, holder, *options)  # the operator's restart
                elif isinstance(event, Started) and event.attempt == 2:
                    times.append(time.perf_counter() - killed_at)
            assert isinstance(handle.terminal, Finished)
        await engine.stop()
    finally:
        for p in procs.values():
            p.kill()
            p.wait()
    return times


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp) / "redis")
        server.start()
        try:
            print(f"1. scaling, {args.gpu_s:.2f} s of simulated GPU per job:")
            rates = await scaling(server, args.gpu_s, args.jobs_per_worker)
            for n in (2, 4):
                print(f"  efficiency with {n}: {rates[n] / (n * rates[1]):.3f}")
            print(f"2. transport latency, {args.latency_jobs} jobs one at a time, zero GPU time:")
            local_s, cluster_s = await latency(server, args.latency_jobs)
            for name, values in (("in-process Engine", local_s), ("cluster (1 worker)", cluster_s)):
                print(f"  {name}: p50 {pct(values, 0.5) * 1e3:.1f} ms, p99 {pct(values, 0.99) * 1e3:.1f} ms")
            added50 = (pct(cluster_s, 0.5) - pct(local_s, 0.5)) * 1e3
            added99 = (pct(cluster_s, 0.99) - pct(local_s, 0.99)) * 1e3
            print(f"  added by the transport: p50 {added50:.1f} ms, p99 {added99:.1f} ms")
            lease, beat = args.lease_s, args.heartbeat_s
            print(f"3. SIGKILL -> job running again elsewhere (lease {lease} s, heartbeat {beat} s):")
            times = await takeover(server, args.lease_s, args.heartbeat_s, args.rounds)
            print(
                f"  {len(times)} kills: mean {statistics.mean(times):.2f} s, max {max(times):.2f} s "
                f"(bound lease + heartbeat = {args.lease_s + args.heartbeat_s:.2f} s)"
            )
        finally:
            server.stop()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpu-s", type=float, default=0.2)
    p.add_argument("--jobs-per-worker", type=int, default=25)
    p.add_argument("--latency-jobs", type=int, default=200)
    p.add_argument("--lease-s", type=float, default=2.0)
    p.add_argument("--heartbeat-s", type=float, default=0.5)
    p.add_argument("--rounds", type=int, default=3)
    asyncio.run(main(p.parse_args()))
