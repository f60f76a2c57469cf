"""The terminal chat's input side: stdin as lines that never block the event loop, and file paths.

`StdinLines` delivers the lines typed or piped into the terminal chat to the event loop. It reads
the file descriptor with `loop.add_reader` (a terminal or a pipe: one `os.read` per readiness,
so nothing ever blocks and nothing is left running when the chat exits), falling back to a daemon
thread where the descriptor cannot be watched (a regular file, /dev/null) or the stream has none
(a StringIO in tests). Unlike a blocking readline in the default executor, neither keeps the
process alive after Ctrl+C: that readline was why Ctrl+C used to hang until Enter.

`dropped_path` recognises a line that starts with the path of a file (typed, or dropped on the
terminal: quoted, with backslash-escaped spaces, or as a file:// URL) and splits off the words
after it.

Knows nothing of the bot: it deals in text and paths only.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import os
import threading
from pathlib import Path
from typing import TextIO
from urllib.parse import unquote, urlparse

READ_CHUNK = 65536


class StdinLines:
    """The lines of `stream` (without their newline), then None at the end of the input."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._queue: asyncio.Queue[str | None] = asyncio.Queue()
        encoding = getattr(stream, "encoding", None) or "utf-8"
        self._decoder = codecs.getincrementaldecoder(encoding)(errors="replace")
        self._partial = ""
        self._fd: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ended = False

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        fd = _fileno(self.stream)
        if fd is not None:
            try:
                self._loop.add_reader(fd, self._readable, fd)
                self._fd = fd
                return
            except (OSError, ValueError, NotImplementedError):  # epoll refuses regular files
                pass
        # A daemon thread never keeps the process alive; for a descriptor it uses os.read, which
        # holds none of the io module's locks that interpreter shutdown would wait for.
        target = self._thread_fd if fd is not None else self._thread_stream
        threading.Thread(target=target, args=(fd,), name="console-stdin", daemon=True).start()

    def close(self) -> None:
        if self._fd is not None and self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._fd)
            self._fd = None

    async def next_line(self) -> str | None:
        """The next line, or None once the input has ended (and on every call after that)."""
        if self._ended and self._queue.empty():
            return None
        line = await self._queue.get()
        if line is None:
            self._ended = True
        return line

    # --- feeding the queue (always on the loop's thread) --------------------------------------

    def _feed(self, data: bytes) -> None:
        if not data:
            self._end()
            return
        self._partial += self._decoder.decode(data)
        *lines, self._partial = self._partial.split("\n")
        for line in lines:
            self._queue.put_nowait(line.removesuffix("\r"))

    def _end(self) -> None:
        self.close()
        rest = self._partial + self._decoder.decode(b"", final=True)
        self._partial = ""
        if rest:
            self._queue.put_nowait(rest)
        self._queue.put_nowait(None)

    def _readable(self, fd: int) -> None:
        try:
            data = os.read(fd, READ_CHUNK)  # ready, so this returns at once
        except BlockingIOError:
            return
        except OSError:  # the terminal went away: that is the end of the input
            data = b""
        self._feed(data)

    def _thread_fd(self, fd: int) -> None:
        loop = self._loop
        assert loop is not None  # start() sets it before the thread starts
        while True:
            try:
                data = os.read(fd, READ_CHUNK)
            except OSError:
                data = b""
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody is listening
                loop.call_soon_threadsafe(self._feed, data)
            if not data:
                return

    def _thread_stream(self, _fd: None) -> None:
        loop = self._loop
        assert loop is not None
        while True:
            line = self.stream.readline()
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._feed_text, line)
            if not line:
                return

    def _feed_text(self, line: str) -> None:
        if not line:
            self._end()
        else:
            self._queue.put_nowait(line.rstrip("\n").removesuffix("\r"))


def _fileno(stream: TextIO) -> int | None:
    try:
        fd = stream.fileno()
        os.fstat(fd)
    except (OSError, ValueError, AttributeError):  # no descriptor (StringIO), or a closed one
        return None
    return fd


# --- paths typed or dropped on the terminal --------------------------------------------------


def dropped_path(line: str, suffixes: tuple[str, ...]) -> tuple[Path, str] | None:
    """(path, the words after it) when `line` starts with a path ending in one of `suffixes`.

    Accepts what terminals paste when a file is dropped on them: 'quoted' or "quoted" paths,
    spaces escaped with backslashes, file:// URLs, and a whole line that is one existing path
    with bare spaces. The file need not exist (the caller says so when it does not)."""
    text = line.strip()
    whole = _as_path(text)
    if whole is not None and whole.suffix.lower() in suffixes and whole.is_file():
        return whole, ""
    first, rest = _first_word(text)
    path = _as_path(first)
    if path is None or path.suffix.lower() not in suffixes:
        return None
    return path, rest.strip()


def _first_word(text: str) -> tuple[str, str]:
    """The first shell-like word (quotes and backslash escapes undone) and the rest of the line."""
    if text[:1] in ("'", '"'):
        end = text.find(text[0], 1)
        if end > 0:
            return text[1:end], text[end + 1 :]
    word: list[str] = []
    i = 0
    while i < len(text) and not text[i].isspace():
        if text[i] == "\\" and i + 1 < len(text):
            i += 1
        word.append(text[i])
        i += 1
    return "".join(word), text[i:]


def _as_path(word: str) -> Path | None:
    if not word:
        return None
    if word.startswith("file://"):
        word = unquote(urlparse(word).path)
    return Path(word).expanduser()
