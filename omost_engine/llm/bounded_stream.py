"""One streaming HTTP request read within bounds the caller can rely on, whatever the server does.

A blocking read cannot be interrupted from its own thread: a server that trickles a byte every
2 s without a newline, or stalls after one token, keeps `iter_lines()` waiting, and a cancel
checked between lines is never seen. So the blocking I/O (send, wait for the head, read the body)
runs on a helper thread that hands chunks over a small queue, and the caller's thread waits on
that queue in slices of `poll_s`. Between slices it checks, in this order: the cancel event
(`errors.Interrupted`), the total time (`StreamTimeout("total")`), the idle time (no complete
line for `idle_s`: `StreamTimeout("idle")`), and the byte budgets (`StreamTooLarge`). So every
stop happens within one slice of its cause.

When the caller stops early, `close()` shuts the socket down, which makes the helper's blocked
read return at once; before the response head has arrived there is no socket to reach, and the
helper ends by the request's own read timeout (set by the caller, about `idle_s`). Either way
the caller never waits for it.

Lines are split from raw bytes as they come (bytes kept in one buffer, each newline searched
for once), so reading is linear in the body's size. A line is a complete `\\n`-terminated line,
decoded as UTF-8 (undecodable bytes replaced), without its `\\r\\n` or `\\n`.

Knows httpx and threads; nothing of chat completions, models or chats.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import httpx

from omost_engine.errors import Interrupted

_QUEUE_CHUNKS = 16  # chunks buffered between the threads (the helper waits when it is full)


@dataclass(frozen=True)
class StreamBounds:
    idle_s: float
    """Longest wait for the response head, and then for each complete line."""
    total_s: float
    """Longest the whole request may take, from the first attempt (see `deadline`)."""
    max_line_bytes: int
    """Longest line: one server-sent event is one line."""
    max_bytes: int
    """The whole body."""
    poll_s: float = 0.05
    """How often the waiting thread looks at the cancel event and the clocks."""


class StreamTimeout(Exception):
    """No line within `idle_s` ("idle"), or the request's total time ran out ("total")."""

    def __init__(self, kind: Literal["idle", "total"], waited_s: float) -> None:
        self.kind = kind
        self.waited_s = waited_s
        super().__init__(f"{kind} timeout after {waited_s:.1f} s")


class StreamTooLarge(Exception):
    """A line, or the whole body, went past its byte budget."""


class BoundedStream:
    """Send `request` on a helper thread; read its head, error body or lines within `bounds`.

    `deadline` is a `time.monotonic()` value shared by every attempt of one generation, so
    retries do not extend the total bound. Use as a context manager: leaving it closes the
    response (and shuts its socket) so the helper thread stops.
    """

    def __init__(
        self,
        client: httpx.Client,
        request: httpx.Request,
        cancel: threading.Event,
        bounds: StreamBounds,
        deadline: float,
    ) -> None:
        self._client = client
        self._request = request
        self._cancel = cancel
        self._bounds = bounds
        self._deadline = deadline
        self._idle_since = time.monotonic()
        self._queue: queue.Queue[tuple[str, Any]] = queue.Queue(_QUEUE_CHUNKS)
        self._stop = threading.Event()
        self._response: httpx.Response | None = None
        self._thread = threading.Thread(target=self._run, name="llm-http-stream", daemon=True)
        self._thread.start()

    def __enter__(self) -> BoundedStream:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # --- the caller's side --------------------------------------------------------------------

    def head(self) -> httpx.Response:
        """The response (status and headers); raises what sending raised (httpx errors)."""
        kind, value = self._next()
        if kind != "head":
            raise RuntimeError(f"expected the response head, got {kind}")  # the helper's order is fixed
        self._idle_since = time.monotonic()
        return value

    def body(self, limit: int) -> bytes:
        """Up to `limit` bytes of the body (an error response's JSON); the rest is not read."""
        parts: list[bytes] = []
        size = 0
        while size < limit:
            kind, value = self._next()
            if kind == "end":
                break
            parts.append(value)
            size += len(value)
            self._idle_since = time.monotonic()
        return b"".join(parts)[:limit]

    def lines(self) -> Iterator[str]:
        """The body's complete lines, as they arrive; ends when the body does."""
        pending = bytearray()
        scanned = 0  # bytes of `pending` already searched for a newline
        total = 0
        while True:
            kind, value = self._next()
            if kind == "end":
                if pending:
                    yield pending.decode("utf-8", "replace").rstrip("\r")  # a last line with no newline
                return
            total += len(value)
            if total > self._bounds.max_bytes:
                raise StreamTooLarge(f"the body passed {self._bounds.max_bytes} bytes")
            pending += value
            while (end := pending.find(b"\n", scanned)) >= 0:
                line = pending[:end].decode("utf-8", "replace")
                del pending[: end + 1]  # cheap: bytearray drops a prefix without moving the rest
                scanned = 0
                self._idle_since = time.monotonic()
                yield line[:-1] if line.endswith("\r") else line
            scanned = len(pending)
            if scanned > self._bounds.max_line_bytes:
                raise StreamTooLarge(f"a line passed {self._bounds.max_line_bytes} bytes")

    def close(self) -> None:
        """Stop the helper thread: unblock its read by shutting the socket down."""
        self._stop.set()
        response = self._response
        if response is not None and self._thread.is_alive():
            stream = response.extensions.get("network_stream")
            sock = stream.get_extra_info("socket") if stream is not None else None
            if isinstance(sock, socket.socket):
                with contextlib.suppress(OSError):  # already closed by the other side
                    sock.shutdown(socket.SHUT_RDWR)

    def _next(self) -> tuple[str, Any]:
        """The helper's next item, waiting in slices; raises on cancel, timeouts and errors."""
        while True:
            if self._cancel.is_set():
                raise Interrupted()
            now = time.monotonic()
            if now >= self._deadline:
                raise StreamTimeout("total", self._bounds.total_s)
            idle_until = self._idle_since + self._bounds.idle_s
            if now >= idle_until:
                raise StreamTimeout("idle", now - self._idle_since)
            try:
                kind, value = self._queue.get(timeout=min(self._bounds.poll_s, idle_until - now))
            except queue.Empty:
                continue
            if kind == "error":
                raise value
            return kind, value

    # --- the helper thread ----------------------------------------------------------------------

    def _put(self, item: tuple[str, Any]) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=self._bounds.poll_s)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            response = self._client.send(self._request, stream=True)
        except Exception as e:  # refused, reset, timed out: the caller decides about retries
            self._put(("error", e))
            return
        self._response = response
        try:
            if self._stop.is_set() or not self._put(("head", response)):
                return
            for chunk in response.iter_bytes():
                if self._stop.is_set() or not self._put(("data", chunk)):
                    return
            self._put(("end", None))
        except Exception as e:
            if not self._stop.is_set():  # after close() a failed read is the expected way out
                self._put(("error", e))
        finally:
            response.close()
