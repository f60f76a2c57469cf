"""How fast the terminal chat answers Ctrl+C, a second Ctrl+C and SIGTERM, in a pseudo-terminal.

Runs tests/fakes/console_bot.py (fake backends, a render step of STEP seconds) in a pty with
pexpect, as tests/test_console.py does, and times from the key press (or signal) to what the user
sees: the turn cancelled, the process gone. Latencies are printed as ratios to one render step
(cancel) and to the process's own start-up time (exit), both measured in the same run.

    python bench/bench_console.py [--runs N]
"""

from __future__ import annotations

import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pexpect

ROOT = Path(__file__).resolve().parents[1]
STEP = 0.5
ENV = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "PYTHONPATH": str(ROOT)}


def _spawn(data: Path) -> tuple[pexpect.spawn, float]:
    started = time.perf_counter()
    child = pexpect.spawn(
        sys.executable,
        ["-m", "tests.fakes.console_bot", str(data), str(STEP)],
        cwd=str(ROOT),
        env=ENV,
        encoding="utf-8",
        timeout=60,
        dimensions=(50, 200),
    )
    child.expect("describe a picture")
    return child, time.perf_counter() - started


def _drawing(child: pexpect.spawn) -> None:
    child.sendline("a lighthouse in a storm")
    child.expect("drawing")


def _gone(child: pexpect.spawn, since: float) -> float:
    child.expect(pexpect.EOF)
    elapsed = time.perf_counter() - since
    child.close()
    if child.exitstatus != 0:
        raise SystemExit(f"the chat exited with {child.exitstatus}")
    return elapsed


def one_run(tmp: Path, n: int) -> dict[str, float]:
    figures: dict[str, float] = {}
    # 1. Ctrl+C while drawing: the cancel; then Ctrl+C when idle: the exit
    child, figures["start-up"] = _spawn(tmp / f"a{n}")
    _drawing(child)
    pressed = time.perf_counter()
    child.sendintr()
    child.expect("Cancelled")
    figures["Ctrl+C -> turn cancelled"] = time.perf_counter() - pressed
    time.sleep(2.5)  # past the double-press window: the next press is "Ctrl+C when idle"
    pressed = time.perf_counter()
    child.sendintr()
    figures["idle Ctrl+C -> exited"] = _gone(child, pressed)
    # 2. two quick presses while drawing
    child, _ = _spawn(tmp / f"b{n}")
    _drawing(child)
    pressed = time.perf_counter()
    child.sendintr()
    child.expect("Cancelling")
    child.sendintr()
    figures["Ctrl+C Ctrl+C -> exited"] = _gone(child, pressed)
    # 3. SIGTERM while drawing (the turn is left for the next start)
    child, _ = _spawn(tmp / f"c{n}")
    _drawing(child)
    pressed = time.perf_counter()
    child.kill(signal.SIGTERM)
    figures["SIGTERM -> exited"] = _gone(child, pressed)
    return figures


def main() -> None:
    runs = int(sys.argv[sys.argv.index("--runs") + 1]) if "--runs" in sys.argv else 3
    with tempfile.TemporaryDirectory() as tmp:
        results = [one_run(Path(tmp), n) for n in range(runs)]
    startup = statistics.median(r["start-up"] for r in results)
    print(f"runs: {runs}; render step {STEP * 1000:.0f} ms; start-up {startup * 1000:.0f} ms (median)")
    for key in results[0]:
        if key == "start-up":
            continue
        values = [r[key] for r in results]
        median, worst = statistics.median(values), max(values)
        base, name = (STEP, "step") if "cancelled" in key else (startup, "start-up")
        print(
            f"{key:28s} median {median * 1000:6.0f} ms, worst {worst * 1000:6.0f} ms"
            f"  = {median / base:.2f}x one {name}"
        )


if __name__ == "__main__":
    main()
