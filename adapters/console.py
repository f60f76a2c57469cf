"""The terminal chat: the bot in a console, through the same port as the chat platforms.

Reads lines from stdin (a terminal or a pipe, so it can be scripted) and prints the bot's posts
with rich: the model's code streamed with syntax colour as it is written, a progress bar line
for the render, and images and code files saved under the data dir with their paths printed.

Input:
    any text               a request; it continues the latest turn
    >N text                continue from turn N (a reply to an earlier turn; branches allowed)
    ```python ... ```      canvas code (several lines) drawn directly
    /new /undo /cancel /help /settings ... /seed N|random /size WxH /quit

Never imports torch or the engine (DESIGN.md's one-way rule).
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import itertools
import re
import sys
import time
from pathlib import Path
from typing import TextIO

from rich.console import Console
from rich.syntax import Syntax

from adapters.base import BoundedMap, Handler, Incoming, MessageRef, OutFile, Post

PLATFORM = "console"
CHAT = "local"
COMMANDS = ("new", "undo", "cancel", "help", "settings", "seed", "size", "steps", "hires")


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
        self.input_done = asyncio.Event()
        self._run = f"{time.time_ns():x}"
        self.quit_requested = False
        # ids stay unique across restarts: the store links them to turns for good
        self._ids = (f"{self._run}-{n}" for n in itertools.count(1))
        self._handler: Handler | None = None
        self._reader: asyncio.Task[None] | None = None
        self._printed_code: BoundedMap[str, int] = BoundedMap(256)  # status id -> code lines shown
        self._last_status: BoundedMap[str, str] = BoundedMap(256)

    # --- the port ----------------------------------------------------------------------------

    def edit_interval(self, chat: str) -> float:
        return 0.0  # a terminal takes every edit

    async def start(self, handler: Handler) -> None:
        self._handler = handler
        self._reader = asyncio.create_task(self._read_loop())

    async def stop(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader

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

    # --- output ------------------------------------------------------------------------------

    def _show(self, ref: MessageRef, post: Post) -> None:
        if post.role == "status":
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
            self.console.print(f"  code: {path}", style="cyan", markup=False, soft_wrap=True)
        if post.buttons and post.turn_id is not None:
            self.console.print(
                f"  continue: >{post.turn_id} <change>   " + "  ".join(f"[{b.label}]" for b in post.buttons),
                style="dim",
                markup=False,
            )

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

    def _keep(self, file: OutFile, folder: str) -> Path:
        if file.path:
            return Path(file.path)
        target = self.data_dir / folder / _safe_name(file.filename)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(file.data)
        return target

    # --- input -------------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                line = await loop.run_in_executor(None, self.stdin.readline)
                if not line:
                    break
                text = line.rstrip("\n")
                if text.strip().startswith("```"):
                    text = await self._read_block(text)
                if text.strip() in ("/quit", "/exit"):
                    self.quit_requested = True
                    break
                message = self.parse_line(text)
                if message is not None and self._handler is not None:
                    await self._handler.on_message(self, message)
        finally:
            self.input_done.set()

    async def _read_block(self, first: str) -> str:
        loop = asyncio.get_running_loop()
        lines = [first]
        while True:
            line = await loop.run_in_executor(None, self.stdin.readline)
            if not line:
                break
            lines.append(line.rstrip("\n"))
            if line.strip() == "```":
                break
        return "\n".join(lines)

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


def _user_name() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no login name in some containers
        return "you"


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)[:100] or "file"
