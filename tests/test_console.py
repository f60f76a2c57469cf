"""The terminal chat as a user meets it: the real console adapter in a process of its own.

Most tests drive `tests/fakes/console_bot.py` (the terminal chat with fake backends) in a
pseudo-terminal with pexpect, pressing Ctrl+C as a terminal does (the interrupt character, so
the line discipline sends SIGINT) and Ctrl+D as the end-of-file character; the piped ones run it
with stdin from a pipe, as the README's example does. What they check is what the user sees and
what the store holds afterwards.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest

from adapters.console_input import dropped_path
from tests.fakes.console_bot import UNPARSABLE
from tests.seed import seed_messages

ROOT = Path(__file__).resolve().parents[1]
FIRST = next(m["content"] for m in seed_messages() if m["role"] == "user")
ENV = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "PYTHONUNBUFFERED": "1"}
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _spawn(data: Path, step_delay: float, *extra: str) -> pexpect.spawn:
    child = pexpect.spawn(
        sys.executable,
        ["-m", "tests.fakes.console_bot", str(data), str(step_delay), *extra],
        cwd=str(ROOT),
        env=ENV,
        encoding="utf-8",
        timeout=60,
        dimensions=(50, 200),
    )
    child.expect("describe a picture")  # the greeting of a chat in a terminal
    return child


@pytest.fixture
def bots() -> Iterator[list[pexpect.spawn]]:
    """Every process a test started is gone when it ends, whatever happened."""
    started: list[pexpect.spawn] = []
    yield started
    for child in started:
        if child.isalive():
            child.kill(signal.SIGKILL)
        child.close(force=True)


def _exit_status(child: pexpect.spawn, timeout: float = 30) -> int | None:
    child.expect(pexpect.EOF, timeout=timeout)
    child.close()
    return child.exitstatus


def _seen(child: pexpect.spawn) -> str:
    return ANSI.sub("", child.before or "")


def _column(data: Path, turn_id: int, column: str) -> object:
    db = sqlite3.connect(next(iter(data.glob("*.sqlite3"))))
    try:
        row = db.execute(f"SELECT {column} FROM turns WHERE id = ?", (turn_id,)).fetchone()
    finally:
        db.close()
    return row[0] if row else "missing"


def _status(data: Path, turn_id: int) -> str:
    return str(_column(data, turn_id, "status"))


def _piped(data: Path, text: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tests.fakes.console_bot", str(data), "0.0"],
        cwd=ROOT,
        input=text,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=ENV,
    )


# --- Ctrl+C, Ctrl+D, SIGTERM -------------------------------------------------------------------


def test_ctrl_c_cancels_the_running_turn_then_ctrl_c_when_idle_exits(tmp_path: Path, bots: list) -> None:
    data = tmp_path / "data"
    child = _spawn(data, 0.5)
    bots.append(child)
    child.sendline(FIRST)
    child.expect("drawing")
    child.sendintr()
    child.expect("Ctrl\\+C again to quit")
    child.expect("Turn 1: Cancelled")
    child.expect("/retry")  # the Retry button, as the command that presses it
    # still chatting: the reader was not stuck, and the next line is answered at once
    child.sendline("/help")
    child.expect("/newseed")
    time.sleep(DOUBLE_PRESS_GAP)
    started = time.monotonic()
    child.sendintr()  # nothing runs now: this one quits, without waiting for Enter
    assert _exit_status(child) == 0
    assert time.monotonic() - started < 10
    assert _status(data, 1) == "cancelled"


DOUBLE_PRESS_GAP = 2.5  # longer than the console's double-press window


def test_a_second_ctrl_c_quits_while_the_cancel_is_under_way(tmp_path: Path, bots: list) -> None:
    data = tmp_path / "data"
    child = _spawn(data, 0.5)
    bots.append(child)
    child.sendline(FIRST)
    child.expect("drawing")
    child.sendintr()
    child.expect("Cancelling")
    child.sendintr()
    assert _exit_status(child) == 0
    # the turn the user cancelled ended cancelled: it is not drawn again at the next start
    assert _status(data, 1) == "cancelled"
    again = _piped(data, "")
    assert again.returncode == 0 and "Turn 1: done" not in again.stdout


def test_sigterm_exits_cleanly_and_the_next_start_finishes_the_turn(tmp_path: Path, bots: list) -> None:
    data = tmp_path / "data"
    child = _spawn(data, 0.5)
    bots.append(child)
    child.sendline(FIRST)
    child.expect("drawing")
    child.kill(signal.SIGTERM)
    child.expect("Turn 1 is not finished: the next start finishes it")
    assert _exit_status(child) == 0
    assert "Cancelled" not in _seen(child)
    assert _status(data, 1) in ("queued", "running")

    restart = _piped(data, "")
    assert restart.returncode == 0, restart.stdout + restart.stderr
    assert restart.stdout.count("Turn 1: done.") == 1
    assert _status(data, 1) == "done"


def test_ctrl_d_in_a_terminal_leaves_at_once_keeping_the_turn_for_later(tmp_path: Path, bots: list) -> None:
    data = tmp_path / "data"
    child = _spawn(data, 0.5)
    bots.append(child)
    child.sendline(FIRST)
    child.expect("drawing")
    child.sendeof()
    child.expect("not finished")
    assert _exit_status(child, timeout=15) == 0
    assert _status(data, 1) in ("queued", "running")


# --- sessions ----------------------------------------------------------------------------------


def test_the_readme_piped_example_run_twice_says_it_continues(tmp_path: Path) -> None:
    data = tmp_path / "data"
    readme = "a lighthouse in a storm\nmake it night\n"  # README's `printf ... | omost-bot chat`
    first = _piped(data, readme)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "Turn 2: done." in first.stdout
    assert "Continuing" not in first.stdout  # a first session has nothing to continue

    second = _piped(data, readme)
    assert second.returncode == 0, second.stdout + second.stderr
    greeting = re.search(
        r"Continuing your conversation from (.+) \(turn (\d+)\)\. /new starts fresh\.", second.stdout
    )
    assert greeting is not None, second.stdout
    assert greeting.group(2) == "2"  # the first session's last turn, which the request now edits
    made = _column(data, 2, "created_at")
    assert greeting.group(1) == time.strftime("%Y-%m-%d %H:%M", time.localtime(float(made)))
    assert second.stdout.index("Continuing") < second.stdout.index("Turn 3")

    fresh = _piped(data, "/new\na lighthouse in a storm\n")
    assert "Started a new conversation" in fresh.stdout
    assert "New picture" in fresh.stdout  # not an edit of the old conversation's canvas


def test_help_is_the_terminals_own(tmp_path: Path) -> None:
    out = _piped(tmp_path / "data", "/help\n").stdout
    wanted = ">N /undo /new /seed /size /steps /hires /settings /cancel /retry /newseed /rewrite /quit"
    for command in [*wanted.split(), ".png", "Ctrl+C", "Ctrl+D"]:
        assert command in out, command
    assert "Reply to any of my messages" not in out and "Buttons:" not in out


# --- the result's buttons as commands, and pictures by path ------------------------------------


def test_retry_after_a_failed_parse_then_newseed_then_a_dropped_png(tmp_path: Path, bots: list) -> None:
    data = tmp_path / "data"
    child = _spawn(data, 0.0, "unparsable-first")
    bots.append(child)
    child.sendline("a quiet harbour at dawn")
    child.expect("did not parse")
    child.expect("/retry")
    child.expect(r"file: (\S+\.txt)")  # the answer as the model wrote it, kept beside the turn
    assert Path(child.match.group(1)).read_text(encoding="utf-8") == UNPARSABLE
    child.sendline("/retry")
    child.expect_exact("/newseed  /rewrite  /hires")  # the result's buttons, as commands
    assert "image: " in _seen(child)
    child.expect("Turn 1: done.")

    child.sendline("/newseed")  # the latest result: turn 1
    child.expect("Same canvas, drawn again.")
    child.expect(r"image: (\S+\.png)")
    picture = Path(child.match.group(1))
    child.expect("Turn 2: done.")
    assert _status(data, 2) == "done"
    assert _column(data, 2, "seed") != _column(data, 1, "seed")  # another picture of the same canvas

    # dropped on the terminal: a folder with a space, escaped as terminals paste it
    dropped = tmp_path / "my pictures" / "turn 2.png"
    dropped.parent.mkdir()
    shutil.copy(picture, dropped)
    escaped = str(dropped).replace(" ", "\\ ")
    child.sendline(f"{escaped} add meteorites")
    child.expect("Turn 4: done.")
    out = _seen(child)
    assert "Added meteorites" in out  # the change was made against the picture's own canvas
    child.sendline("/quit")
    assert _exit_status(child) == 0


def test_button_commands_name_a_turn_and_say_what_is_wrong(tmp_path: Path, bots: list) -> None:
    data = tmp_path / "data"
    child = _spawn(data, 0.0)
    bots.append(child)
    child.sendline("/newseed")
    child.expect("There is no picture to /newseed yet")
    child.sendline("/retry")
    child.expect("nothing to retry")
    child.sendline(FIRST)
    child.expect("Turn 1: done.")
    child.sendline("/retry")
    child.expect("Turn 1 did not fail")
    child.sendline("/hires 1")  # a scale: the setting, not a turn
    child.expect("Saved")
    child.sendline("/hires #1")  # turn 1, at a higher resolution
    child.expect("refining")
    child.expect("Turn 2: done.")
    child.sendline("/rewrite 9")
    child.expect("no longer available")
    child.sendline("'/no/such/dir/turn-1.png'")
    child.expect("There is no file /no/such/dir/turn-1.png")
    child.sendline("/quit")
    assert _exit_status(child) == 0


@pytest.mark.parametrize(
    ("line", "path", "rest"),
    [
        ("/tmp/a/turn-1.png", "/tmp/a/turn-1.png", ""),
        ("'/tmp/my pics/turn 1.png' make it night", "/tmp/my pics/turn 1.png", "make it night"),
        ('"/tmp/my pics/turn 1.png"', "/tmp/my pics/turn 1.png", ""),
        ("/tmp/my\\ pics/turn\\ 1.png  add a moon", "/tmp/my pics/turn 1.png", "add a moon"),
        ("file:///tmp/my%20pics/turn-1.png", "/tmp/my pics/turn-1.png", ""),
        ("~/turn-1.PNG", str(Path("~/turn-1.PNG").expanduser()), ""),
    ],
)
def test_paths_typed_or_dropped_on_the_terminal(line: str, path: str, rest: str) -> None:
    assert dropped_path(line, (".png", ".py")) == (Path(path), rest)


def test_words_are_not_paths() -> None:
    assert dropped_path("a lighthouse in a storm", (".png",)) is None
    assert dropped_path("make the sky darker.", (".png",)) is None


def test_requests_redirected_from_a_file_are_all_drawn(tmp_path: Path) -> None:
    """`omost-bot chat < requests.txt`: a regular file cannot be watched by the event loop, so the
    chat reads it on its fallback thread; every line is still a turn, and the chat exits at its end."""
    requests = tmp_path / "requests.txt"
    requests.write_text("a lighthouse in a storm\nmake it night", encoding="utf-8")  # no final newline
    with requests.open("rb") as stdin:
        done = subprocess.run(
            [sys.executable, "-m", "tests.fakes.console_bot", str(tmp_path / "data"), "0.0"],
            cwd=ROOT,
            stdin=stdin,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            env=ENV,
        )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Turn 1: done." in done.stdout and "Turn 2: done." in done.stdout


def test_vary_region_and_zoom_out_as_typed_commands(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert "Turn 1: done." in _piped(data, "a lighthouse in a storm\n").stdout
    varied = _piped(data, "/vary\n/vary 2\n")
    assert varied.returncode == 0, varied.stdout + varied.stderr
    assert "which region should I redraw with a new seed?" in varied.stdout
    assert re.search(r"^  /vary 2   2\. ", varied.stdout, re.M)  # the regions, as the commands to type
    assert "Redrew region 2 with a new seed" in varied.stdout and "Turn 2: done." in varied.stdout
    zoomed = _piped(data, "/zoom 2\n")
    assert "Zoomed out 2x" in zoomed.stdout and "Turn 3: done." in zoomed.stdout
    assert _column(data, 3, "params") and '"frame_zoom": 2.0' in str(_column(data, 3, "params"))
    assert "/zoom takes a number" in _piped(data, "/zoom far\n").stdout
