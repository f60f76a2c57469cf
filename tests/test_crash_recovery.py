"""A bot process killed with SIGKILL mid-turn, then restarted, finishes that turn exactly once."""

from __future__ import annotations

import os
import queue
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.seed import seed_messages

ROOT = Path(__file__).resolve().parents[1]
FIRST = next(m["content"] for m in seed_messages() if m["role"] == "user")


def _bot(data_dir: Path, step_delay: float, *extra: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    return subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.console_bot", str(data_dir), str(step_delay), *extra],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


def _restart(data_dir: Path) -> subprocess.CompletedProcess[str]:
    """The bot started again with no input: it resumes what was left, then exits."""
    return subprocess.run(
        [sys.executable, "-m", "tests.fakes.console_bot", str(data_dir), "0.0"],
        cwd=ROOT,
        input="",
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "COLUMNS": "200"},
    )


def _kill_when(first: subprocess.Popen[str], marker: str) -> list[str]:
    """Send the first request, read until a line holds `marker`, then SIGKILL; the lines seen."""
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in first.stdout], daemon=True).start()  # type: ignore[union-attr]
    assert first.stdin is not None
    first.stdin.write(FIRST + "\n")
    first.stdin.flush()
    seen: list[str] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            continue
        seen.append(line)
        if marker in line:
            break
    else:
        first.kill()
        raise AssertionError(f"the bot never printed {marker!r}:\n" + "".join(seen))
    first.kill()  # SIGKILL: no cleanup, no goodbye
    first.wait(10)
    return seen


def test_sigkill_mid_render_then_restart_finishes_the_turn_once(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _kill_when(_bot(data, step_delay=1.0), "drawing")

    db_files = list(data.glob("*.sqlite3")) + list(data.glob("*.db"))
    assert db_files, "the store was never written"
    db = sqlite3.connect(db_files[0])
    assert db.execute("SELECT status FROM turns WHERE id = 1").fetchone()[0] in ("queued", "running")
    db.close()

    second = _restart(data)
    assert second.returncode == 0, second.stdout + second.stderr
    out = second.stdout
    assert out.count("Turn 1: done.") == 1
    # the canvas and its layout preview came before the crash; only the picture is new
    assert out.count("image: ") == 1 and "/images/" in out
    assert "writing the canvas" not in out
    db = sqlite3.connect(db_files[0])
    assert db.execute("SELECT status, image_path IS NOT NULL FROM turns WHERE id = 1").fetchone() == (
        "done",
        1,
    )
    assert db.execute("SELECT count(*) FROM turns").fetchone()[0] == 1
    assert (
        db.execute("SELECT count(*) FROM message_links WHERE turn_id = 1 AND role = 'image'").fetchone()[0]
        == 1
    )
    images = list((data / "images").rglob("*.png"))
    assert len(images) == 1

    # and a third start finds nothing left to do
    third = _restart(data)
    assert third.returncode == 0 and "Turn 1" not in third.stdout


def test_sigkill_between_posting_and_linking_never_posts_twice(tmp_path: Path) -> None:
    data = tmp_path / "data"
    seen = _kill_when(_bot(data, 0.0, "stall-links"), "linking…")
    # the layout preview and the result were posted, then the kill
    assert sum("image: " in line for line in seen) == 2 and any("/images/" in line for line in seen)

    second = _restart(data)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "image: " not in second.stdout  # not posted a second time
    assert "may be above already" in second.stdout and "press Retry" in second.stdout
    db = sqlite3.connect(next(data.glob("*.sqlite3")))
    assert db.execute("SELECT status, announcing_at IS NOT NULL FROM turns WHERE id = 1").fetchone() == (
        "done",
        1,
    )
    db.close()
