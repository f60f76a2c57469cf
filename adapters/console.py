"""The terminal chat: the bot in a console, through the same port as the chat platforms.

Reads lines from stdin (a terminal or a pipe, so it can be scripted) and prints the bot's posts
with rich: the model's code streamed with syntax colour as it is written, a progress bar line
for the render, and images and code files saved under the data dir with their paths printed.

Input (HELP_TEXT is the user's version):
    any text               a request; it continues the latest turn
    >N text                continue from turn N (a reply to an earlier turn; branches allowed)
    ```python ... ```      canvas code (several lines) drawn directly
    a .png or .py path     continue from one of the bot's pictures, or draw a canvas file
    /newseed /rewrite /hires /retry [N]   the result's buttons, on the latest turn or turn N
    /vary [N]  /zoom [X]                 Vary region N, Zoom out (X times), on the latest picture
    /new /undo /cancel /settings /seed /size /steps /hires X   the bot's chat commands
    /help /quit            answered here

It behaves like a terminal program: Ctrl+C cancels the running turn (the Cancel button's path),
a second Ctrl+C, or one with nothing running, quits; Ctrl+D in a terminal, /quit and SIGTERM
quit at once, leaving unfinished turns for the next start; the end of piped input waits for the
turns it asked for. Quitting never waits on a blocked read (console_input.py).

Never imports torch, the engine or the bot (DESIGN.md's one-way rule): what it asks the bot
beyond the port (the latest turn, for commands without a number and the session greeting) goes
through the small `ChatLookup` protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import itertools
import re
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Literal, Protocol, TextIO, runtime_checkable

from rich.console import Console
from rich.syntax import Syntax

from adapters.base import Attachment, BoundedMap, ButtonPress, Handler, Incoming, MessageRef, OutFile, Post
from adapters.console_input import StdinLines, dropped_path

PLATFORM = "console"
CHAT = "local"
# the result's buttons as typed commands: command -> the button's action
BUTTON_COMMANDS = {
    "newseed": "seed",
    "rewrite": "rewrite",
    "hires": "hires",
    "vary": "vary",
    "zoom": "zoom",
    "retry": "retry",
}
DOUBLE_PRESS_S = 2.0  # a second Ctrl+C this soon after the first quits
CANCEL_GRACE_S = 3.0  # how long quitting waits for a turn it just cancelled to say so
MAX_FILE_BYTES = 20 * 1024 * 1024  # the bot's own attachment limit (bot/turns/requests.py)
INPUT_SUFFIXES = (".png", ".py")

HELP_TEXT = """\
Describe a picture and press Enter: a language model writes a canvas (a scene and its regions),
then it is drawn. Each request continues the latest picture.
  a cat on a windowsill     a new request, or a change to the latest picture ("make it night")
  >N change                 continue from turn N instead (branches are fine)
  /newseed [N]              draw the latest picture (or turn N) again with a new seed
  /rewrite [N]              ask the model to write that request again
  /hires [#N]               redraw it at 1.5x (/hires 1.5 or /hires off sets it for new pictures)
  /vary [N]                 redraw region N of the latest picture with a new seed (no N: list them)
  /zoom [X]                 zoom the latest picture out (1.5x, or X): only the new border is drawn
  /retry [N]                try a failed or cancelled turn again
  /undo  /new               step back one turn  /  start a fresh conversation
  /seed N|random  /size WxH  /steps N  /settings    your settings for new pictures
  /cancel                   cancel the running turn (or press Ctrl+C)
  path/to/turn-3.png [change]   continue from a picture the bot made (drag it onto the terminal)
  path/to/canvas.py         draw a canvas file as it is
  ```python ... ```         paste canvas code to draw it directly
  /quit                     leave (Ctrl+C twice, or Ctrl+D, also leaves; unfinished turns finish
                            at the next start)"""

ExitReason = Literal["eof", "quit", "interrupt", "terminate"]


class LatestTurns(Protocol):
    @property
    def turn_id(self) -> int | None: ...
    @property
    def turn_status(self) -> str | None: ...
    @property
    def turn_at(self) -> float | None: ...
    @property
    def result_id(self) -> int | None: ...


@runtime_checkable
class ChatLookup(Protocol):
    """What the terminal asks the bot besides the port (bot/turns/handler.py implements it)."""

    async def latest_in_chat(self, platform: str, chat: str, thread: str = "") -> LatestTurns: ...


class ConsoleAdapter:
    platform = PLATFORM

    def __init__(
        self,
        data_dir: Path,
        *,
        stdin: TextIO | None = None,
        console: Console | None = None,
        user: str | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.stdin = stdin if stdin is not None else sys.stdin
        self.console = console or Console(highlight=False)
        self.user = user or _user_name()
        self.input_done = asyncio.Event()  # the user is done: quit, or the input ended
        self._left = asyncio.Event()  # the user quit (not merely the end of piped input)
        self.exit_reason: ExitReason | None = None
        self._run = f"{time.time_ns():x}"
        # ids stay unique across restarts: the store links them to turns for good
        self._ids = (f"{self._run}-{n}" for n in itertools.count(1))
        self._handler: Handler | None = None
        self._lines: StdinLines | None = None
        self._reader: asyncio.Task[None] | None = None
        self._printed_code: BoundedMap[str, int] = BoundedMap(256)  # status id -> code lines shown
        self._last_status: BoundedMap[str, str] = BoundedMap(256)
        self._active: dict[int, asyncio.Event] = {}  # turns queued or running -> set when they end
        self._cancelling: set[int] = set()  # cancelled with Ctrl+C, not ended yet
        self._retryable: int | None = None  # the last turn this session saw fail or be cancelled
        self._last_interrupt = 0.0
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def quit_requested(self) -> bool:
        """The user left (rather than the piped input simply ending): unfinished turns wait."""
        return self.exit_reason not in (None, "eof")

    # --- the port ----------------------------------------------------------------------------

    def edit_interval(self, chat: str) -> float:
        return 0.0  # a terminal takes every edit

    async def start(self, handler: Handler) -> None:
        self._handler = handler
        await self._greet()
        self._lines = StdinLines(self.stdin)
        self._lines.start()
        self._reader = asyncio.create_task(self._read_loop())

    async def stop(self) -> None:
        for task in [self._reader, *self._tasks]:
            if task is not None and task is not asyncio.current_task():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._lines is not None:
            self._lines.close()

    async def send(self, chat: str, thread: str, post: Post) -> list[MessageRef]:
        ref = MessageRef(PLATFORM, chat, str(next(self._ids)), thread)
        self._show(ref, post)
        refs = [ref]
        for _ in post.files:  # each file is its own message, as on the chat platforms
            refs.append(MessageRef(PLATFORM, chat, str(next(self._ids)), thread))
        return refs

    async def edit(self, ref: MessageRef, post: Post) -> MessageRef:
        self._show(ref, post)
        return ref

    # --- the session: until the user leaves --------------------------------------------------

    async def session(self, drain: Callable[[], Awaitable[None]]) -> None:
        """Wait until the user leaves. When piped input ends, `drain` (the turns it asked for)
        is awaited first, and Ctrl+C or SIGTERM still end the wait at once."""
        await self.input_done.wait()
        if self.exit_reason == "eof":
            draining = asyncio.ensure_future(drain())
            quitting = asyncio.ensure_future(self._left.wait())
            await asyncio.wait({draining, quitting}, return_when=asyncio.FIRST_COMPLETED)
            for task in (draining, quitting):
                task.cancel()
        await self._say_goodbye()

    @contextlib.contextmanager
    def signal_handlers(self) -> Iterator[None]:
        """Ctrl+C and SIGTERM as the terminal chat's own (where the loop can take signals)."""
        loop = asyncio.get_running_loop()
        installed = []
        for sig, callback in ((signal.SIGINT, self._on_interrupt), (signal.SIGTERM, self._on_terminate)):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # Windows, threads
                loop.add_signal_handler(sig, callback)
                installed.append(sig)
        try:
            yield
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)

    def _quit(self, reason: ExitReason) -> None:
        if not self.quit_requested:
            self.exit_reason = reason
        if self.quit_requested:
            self._left.set()
        self.input_done.set()

    def _on_terminate(self) -> None:
        self._quit("terminate")

    def _on_interrupt(self) -> None:
        self._spawn(self._interrupt())

    async def _interrupt(self) -> None:
        """Ctrl+C: cancel the latest running turn; quit when nothing runs, when a turn cancelled
        with Ctrl+C has not ended yet, or on a second press in quick succession."""
        now, last = time.monotonic(), self._last_interrupt
        self._last_interrupt = now
        running = [turn for turn in self._active if turn not in self._cancelling]
        if not running or self._cancelling or now - last < DOUBLE_PRESS_S:
            self.console.print()
            self._quit("interrupt")
            return
        turn_id = max(running)
        self._cancelling.add(turn_id)
        answer = await self._press("cancel", turn_id)
        text = f"\n{answer or 'Cancelling…'} (turn {turn_id}; Ctrl+C again to quit)"
        self.console.print(text, style="yellow", markup=False)

    async def _say_goodbye(self) -> None:
        waiting = [self._active[turn].wait() for turn in self._cancelling if turn in self._active]
        if waiting:  # a turn cancelled just before quitting ends as cancelled, not resumed later
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*waiting), CANCEL_GRACE_S)
        if self.quit_requested:
            left = sorted(self._active)
            if left:
                turns = ", ".join(str(t) for t in left)
                one = len(left) == 1
                self.console.print(
                    f"Turn{'' if one else 's'} {turns} {'is' if one else 'are'} not finished: the next "
                    f"start finishes {'it' if one else 'them'}.",
                    style="yellow",
                    markup=False,
                    soft_wrap=True,
                )

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _greet(self) -> None:
        """A session that continues a conversation says so, and how to start afresh."""
        latest = await self._latest()
        if latest is None or latest.turn_id is None:
            return
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(latest.turn_at or time.time()))
        self.console.print(
            f"Continuing your conversation from {when} (turn {latest.turn_id}). /new starts fresh.",
            style="bold",
            markup=False,
            soft_wrap=True,
        )

    async def _latest(self) -> LatestTurns | None:
        if not isinstance(self._handler, ChatLookup):
            return None
        return await self._handler.latest_in_chat(PLATFORM, CHAT)

    # --- output ------------------------------------------------------------------------------

    def _show(self, ref: MessageRef, post: Post) -> None:
        if post.role == "status":
            self._track(post)
            self._show_status(ref, post)
            return
        if post.text:
            self.console.print(post.text, markup=False)
        if post.image is not None:
            path = self._keep(post.image, "previews" if post.role == "preview" else "images")
            self.console.print(f"  image: {path}", style="bold green", markup=False, soft_wrap=True)
        for file in post.files:
            if file.mime == "image/png" and post.image is not None and file.data == post.image.data:
                continue  # the lossless PNG is the image already saved
            path = self._keep(file, "code")
            label = "code" if file.filename.endswith(".py") else "file"  # e.g. an answer that failed
            self.console.print(f"  {label}: {path}", style="cyan", markup=False, soft_wrap=True)
        for choice in post.choices:  # a question (Vary region: which region?) as typed commands
            self.console.print(
                f"  /{choice.action} {choice.value}   {choice.label}", markup=False, soft_wrap=True
            )
        if post.buttons and post.turn_id is not None:
            self._show_commands(post)

    def _show_commands(self, post: Post) -> None:
        """The post's buttons as the commands that press them (with no number: this turn, while
        it is the latest)."""
        names = [name for b in post.buttons for name, action in BUTTON_COMMANDS.items() if action == b.action]
        if not names:
            return
        line = "  " + "  ".join(f"/{name}" for name in names)
        if post.role == "image":
            line += f"  (or >{post.turn_id} and a change to continue from turn {post.turn_id})"
        self.console.print(line, style="dim", markup=False, soft_wrap=True)

    def _track(self, post: Post) -> None:
        """Which turns are queued or running: their status carries a Cancel button until they end."""
        turn_id = post.turn_id
        if turn_id is None:
            return
        if any(b.action == "cancel" for b in post.buttons):
            self._active.setdefault(turn_id, asyncio.Event())
            if self._retryable == turn_id:
                self._retryable = None
            return
        if any(b.action == "retry" for b in post.buttons):
            self._retryable = turn_id
        ended = self._active.pop(turn_id, None)
        self._cancelling.discard(turn_id)
        if ended is not None:
            ended.set()

    def _show_status(self, ref: MessageRef, post: Post) -> None:
        if post.code:
            lines = post.code.split("\n")
            complete = lines[:-1]  # the last line may still be growing
            shown = self._printed_code.get(ref.message_id) or 0
            fresh = complete[shown:]
            if fresh:
                self.console.print(
                    Syntax(
                        "\n".join(fresh),
                        "python",
                        theme="monokai",
                        background_color="default",
                        word_wrap=True,
                    )
                )
                self._printed_code[ref.message_id] = len(complete)
            return
        # a status without code ends the stream; a repair turn's answer then streams from its start
        self._printed_code.pop(ref.message_id)
        text = post.text
        if post.progress is not None:
            step, total = post.progress
            width = 24
            filled = round(width * step / max(1, total))
            text = f"{text.split(',')[0]}  [{'#' * filled}{'.' * (width - filled)}] {step}/{total}"
        if self._last_status.get(ref.message_id) == text:
            return
        self._last_status[ref.message_id] = text
        self.console.print(f"· {text}", style="yellow", markup=False)
        for choice in post.choices:  # a question (Vary region: which region?) as typed commands
            self.console.print(
                f"  /{choice.action} {choice.value}   {choice.label}", markup=False, soft_wrap=True
            )
        if post.buttons and post.turn_id is not None:
            self._show_commands(post)

    def _keep(self, file: OutFile, folder: str) -> Path:
        if file.path:
            return Path(file.path)
        target = self.data_dir / folder / _safe_name(file.filename)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(file.data)
        return target

    # --- input -------------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        assert self._lines is not None  # start() makes it first
        try:
            while not self.quit_requested:
                line = await self._lines.next_line()
                if line is None:
                    # a terminal's Ctrl+D means "I'm leaving"; a pipe's end means "that was all"
                    self._quit("quit" if _isatty(self.stdin) else "eof")
                    break
                if line.strip().startswith("```"):
                    line = await self._read_block(line)
                await self._take(line)
        finally:
            self.input_done.set()

    async def _read_block(self, first: str) -> str:
        assert self._lines is not None
        lines = [first]
        while True:
            line = await self._lines.next_line()
            if line is None:
                break
            lines.append(line)
            if line.strip() == "```":
                break
        return "\n".join(lines)

    async def _take(self, text: str) -> None:
        """One line the user typed: a command answered here, a button, a file, or a message."""
        stripped = text.strip()
        name, _, rest = stripped[1:].partition(" ") if stripped.startswith("/") else ("", "", "")
        name = name.lower()
        if name in ("quit", "exit"):
            self._quit("quit")
        elif name == "help":
            self.console.print(HELP_TEXT, markup=False, soft_wrap=True)
        elif name in ("vary", "zoom"):
            await self._edit_command(name, rest.strip())
        elif name in BUTTON_COMMANDS and not _is_setting(name, rest.strip()):
            await self._button_command(name, rest.strip())
        else:
            message = await self._message(text)
            if message is not None and self._handler is not None:
                await self._handler.on_message(self, message)

    async def _button_command(self, name: str, argument: str) -> None:
        """/newseed /rewrite /hires /retry [N]: the button of turn N, or of the latest turn."""
        action = BUTTON_COMMANDS[name]
        turn_id = _turn_number(argument)
        if argument and turn_id is None:
            self._say(f"/{name} takes a turn number, e.g. /{name} 3 (or nothing: the latest turn).")
            return
        if turn_id is None:
            turn_id = await self._default_turn(name, action)
            if turn_id is None:
                return
        answer = await self._press(action, turn_id)
        if answer:
            self._say(answer)

    async def _edit_command(self, name: str, argument: str) -> None:
        """/vary [N]: redraw region N of the latest picture with a new seed (no N: list them);
        /zoom [X]: zoom the latest picture out (1.5x, or X)."""
        if argument and not re.fullmatch(r"\d+(\.\d+)?", argument):
            example = "/vary 2 (region 2)" if name == "vary" else "/zoom 1.5"
            self._say(f"/{name} takes a number, e.g. {example}.")
            return
        turn_id = await self._default_turn(name, name)
        if turn_id is None:
            return
        press = ButtonPress(PLATFORM, CHAT, self.user, name, turn_id, user_name=self.user, value=argument)
        answer = await self._handler.on_button(self, press) if self._handler is not None else None
        if answer:
            self._say(answer)

    async def _default_turn(self, name: str, action: str) -> int | None:
        if action == "retry" and self._retryable is not None:
            return self._retryable  # what "/retry" under a failure means, even if more came since
        latest = await self._latest()
        if action == "retry":
            if latest is None or latest.turn_id is None:
                self._say("There is nothing to retry yet.")
                return None
            if latest.turn_status == "done":
                self._say(f"Turn {latest.turn_id} did not fail; try /newseed or /rewrite for another go.")
                return None
            return latest.turn_id
        if latest is None or latest.result_id is None:
            self._say(f"There is no picture to /{name} yet: describe one first.")
            return None
        return latest.result_id

    async def _press(self, action: str, turn_id: int) -> str | None:
        if self._handler is None:
            return None
        press = ButtonPress(PLATFORM, CHAT, self.user, action, turn_id, user_name=self.user)
        return await self._handler.on_button(self, press)

    def _say(self, text: str) -> None:
        self.console.print(text, markup=False, soft_wrap=True)

    async def _message(self, text: str) -> Incoming | None:
        """A typed line as the bot sees it, with a typed or dropped file read in."""
        # an absolute path starts with "/" too; no command name ends in .png or .py
        found = dropped_path(text, INPUT_SUFFIXES) if not text.lstrip().startswith((">", "`")) else None
        if found is None:
            return self.parse_line(text)
        path, words = found
        attachment = await self._read_file(path)
        if attachment is None:
            return None
        return Incoming(
            platform=PLATFORM,
            chat=CHAT,
            message_id=f"in-{next(self._ids)}",
            user=self.user,
            user_name=self.user,
            text=words,
            attachments=(attachment,),
            private=True,
        )

    async def _read_file(self, path: Path) -> Attachment | None:
        try:
            size = path.stat().st_size
            if size > MAX_FILE_BYTES:
                limit = MAX_FILE_BYTES // 2**20
                self._say(f"{path} is too large ({size // 2**20} MB; the limit is {limit} MB).")
                return None
            data = await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            self._say(f"There is no file {path}.")
            return None
        except OSError as e:
            self._say(f"I couldn't read {path}: {e.strerror or e}.")
            return None
        mime = "image/png" if path.suffix.lower() == ".png" else "text/x-python"
        return Attachment(path.name, data, mime)

    def parse_line(self, text: str) -> Incoming | None:
        """A typed line as the bot sees it (None for a blank line)."""
        stripped = text.strip()
        if not stripped:
            return None
        message_id = f"in-{next(self._ids)}"
        options: dict[str, str] = {}
        command = None
        m = re.match(r"^(?:>|/reply\s+)(\d+)\s*(.*)$", stripped, re.S)
        if m:
            options["turn"] = m.group(1)
            stripped = m.group(2)
        elif stripped.startswith("/"):
            name, _, rest = stripped[1:].partition(" ")
            command = name.lower()
            stripped = rest.strip()
        return Incoming(
            platform=PLATFORM,
            chat=CHAT,
            message_id=message_id,
            user=self.user,
            user_name=self.user,
            text=stripped if command or options else text,
            command=command,
            options=options,
            private=True,
        )


def _turn_number(argument: str) -> int | None:
    m = re.fullmatch(r"(?:#|turn\s*)?(\d+)", argument.strip(), re.I)
    return int(m.group(1)) if m else None


def _is_setting(name: str, argument: str) -> bool:
    """`/hires 1.5` and `/hires off` set the scale for new pictures (the bot's /hires command);
    `/hires`, `/hires 3` and `/hires #2` redraw a turn. A scale is at most 2, so 1 and 2 are scales."""
    if name != "hires" or not argument:
        return False
    if argument.startswith("#") or argument.lower().startswith("turn"):
        return False
    m = re.fullmatch(r"\d+", argument)
    return m is None or int(argument) <= 2


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (ValueError, AttributeError):
        return False


def _user_name() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no login name in some containers
        return "you"


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)[:100] or "file"
