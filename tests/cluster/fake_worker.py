"""`python -m tests.cluster.fake_worker`: a real cluster Worker process over the fake backends.

The tests and bench/bench_cluster.py start several of these as subprocesses and kill them (SIGKILL,
SIGTERM) to see what the cluster does; only the models are fakes (tests/fakes/fake_backends.py).
`--gpu-s` holds a simulated GPU for a fixed time per job (split over the render's steps).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

from omost_engine.canvas_code import to_answer
from omost_engine.cluster.worker import Worker, WorkerSettings
from tests.cluster.jobs import CANVAS
from tests.fakes.fake_backends import FakeLLM, FakeRenderer


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--prefix", default="omost")
    p.add_argument("--id", default=None)
    p.add_argument("--kinds", default="compose,render")
    p.add_argument("--token-delay", type=float, default=0.0)
    p.add_argument("--step-delay", type=float, default=0.0)
    p.add_argument("--lease", type=float, default=2.0)
    p.add_argument("--heartbeat", type=float, default=0.3)
    p.add_argument("--fail-load", default=None, help="pretend the models failed to load, with this error")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s worker %(message)s")
    settings = WorkerSettings(
        prefix=args.prefix,
        kinds=tuple(args.kinds.split(",")),
        device="fake:0",
        models="fake-llm, fake-renderer",
        lease_s=args.lease,
        heartbeat_s=args.heartbeat,
        cancel_poll_s=0.05,
    )
    llm = FakeLLM(answers=[to_answer(CANVAS)], token_delay_s=args.token_delay)
    renderer = FakeRenderer(step_delay_s=args.step_delay, previews=True)
    worker = Worker(args.url, llm, renderer, settings, load_error=args.fail_load, worker_id=args.id)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        print("worker ready", flush=True)
        await worker.run(stop)

    asyncio.run(run())


if __name__ == "__main__":
    main()
