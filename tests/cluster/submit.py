"""`python -m tests.cluster.submit`: another bot process submitting render jobs, then exiting.

For the fairness test: its jobs stay in the cluster after it is gone (the cluster, not the
submitting process, owns the queue).
"""

from __future__ import annotations

import argparse
import asyncio

from omost_engine.cluster import RedisEngine
from tests.cluster.jobs import render_job


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--prefix", default="omost")
    p.add_argument("--owner", required=True)
    p.add_argument("--count", type=int, required=True)
    args = p.parse_args()

    async def run() -> None:
        engine = RedisEngine(args.url, prefix=args.prefix, poll_s=0.1)
        await engine.start()
        handles = [engine.submit(render_job(args.owner, f"{args.owner}-{i}")) for i in range(args.count)]
        while not all(h.submitted for h in handles):
            await asyncio.sleep(0.01)
        await engine.stop()

    asyncio.run(run())


if __name__ == "__main__":
    main()
