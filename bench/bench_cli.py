"""What the command line costs an operator before any model work: start-up of `omost-bot` itself.

Measures, in one run, each as a ratio to a bare `python -c pass` on the same machine:
- `omost-bot --version` (builds the whole parser: every command module is imported);
- `omost-bot preview FILE --json` on the seed answer (no torch);
- the first-start weights check (`bot.firststart.missing_weights`, offline: cache look-ups only),
  and a failed start (`run` with Telegram enabled and no token: the one-line error path).
Prints ratios measured in one run (this machine is shared and noisy; absolute times mean little).

    python bench/bench_cli.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.seed import seed_answers  # noqa: E402


def wall(argv: list[str], env: dict[str, str], cwd: Path, repeat: int) -> float:
    """Median wall seconds of a subprocess."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(argv, env=env, cwd=cwd, capture_output=True, check=False)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def check_in_process(repeat: int) -> float:
    from bot.config import parse_config
    from bot.firststart import missing_weights

    config = parse_config("")
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        missing_weights(config, sizes=False)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp / "hf")}
        env.pop("TELEGRAM_BOT_TOKEN", None)
        answer = tmp / "seed.md"
        answer.write_text(seed_answers()[0], encoding="utf-8")
        config = tmp / "tg.toml"
        config.write_text(f'[data]\ndir = "{tmp / "data"}"\n[telegram]\nenabled = true\n', encoding="utf-8")
        cli = [sys.executable, "-m", "bot.cli"]
        base = wall([sys.executable, "-c", "pass"], env, tmp, args.repeat)
        commands = {
            "omost-bot --version": ["--version"],
            "omost-bot preview seed --json": ["preview", str(answer), "--json"],
            "omost-bot run, token unset (one-line error)": ["run", "-c", str(config)],
        }
        rows = {name: wall([*cli, *extra], env, tmp, args.repeat) for name, extra in commands.items()}
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["HF_HOME"] = str(tmp / "hf")
        check = check_in_process(args.repeat)
    print(f"python -c pass: {base * 1000:.0f} ms (the unit below)")
    for name, seconds in rows.items():
        print(f"{name:45} {seconds * 1000:7.0f} ms  {seconds / base:5.1f}x python start")
    name = "first-start weights check (in process)"
    print(f"{name:45} {check * 1000:7.1f} ms  {check / base:5.2f}x python start")


if __name__ == "__main__":
    main()
