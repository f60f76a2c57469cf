"""`omost-bot worker`: serve this GPU to the render cluster (`[queue] backend = "redis"`).

Loads the models the config names onto `--device`, then pulls compose and/or render jobs
(`--jobs`) from Redis until SIGINT/SIGTERM, handing a running job back on the way out. Start one
per GPU, on any machine that reaches the cluster's Redis (docs/scaling.md).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

HELP = "serve this machine's GPU to the render cluster (Redis): one process per GPU"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", type=Path, help="config file (default ./config.toml if present)")
    parser.add_argument(
        "--device", help="both models on this device, e.g. cuda:1 (default: the config's)"
    )
    parser.add_argument(
        "--jobs", default="compose,render", help="job kinds to take: compose, render or both (default both)"
    )
    parser.add_argument("--id", help="this worker's name in `omost-bot doctor` (default host-pid-device)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")


def run(args: argparse.Namespace) -> int:
    from bot.commands.chat import load
    from bot.config import ConfigError
    from bot.worker import JOB_KINDS, run_worker

    kinds = [k.strip() for k in args.jobs.split(",") if k.strip()]
    if not kinds or any(k not in JOB_KINDS for k in kinds):
        print(f"error: --jobs takes compose, render or compose,render; got {args.jobs!r}", file=sys.stderr)
        return 2
    config = load(args)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return run_worker(config, device=args.device, kinds=kinds, worker_id=args.id)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
