"""A turn's status message: sent once, then edited in place, never faster than the platform allows.

This is the bot's one edit-pacing mechanism, for every adapter: each adapter only declares how
often one message may be edited in a chat (`Adapter.edit_interval`, e.g. Telegram's 1 s in a
private chat and 3 s in a group); `StatusMessage.show` edits at once when that interval has
passed and otherwise keeps the newest state and writes it when the interval ends (older pending
states are dropped: the newest always lands). A state shown `now` (a new phase, the final state)
is never merged away, but it too waits for the interval: edits always start an interval apart.

When a platform answers an edit with a new message (the old one was deleted or is too old), the
new message is linked to the turn, so replies and buttons on it keep working.

It knows the port and the store's message links; nothing about the engine.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace

from adapters.base import Adapter, MessageRef, Post
from bot.store import LinkRole, Store

log = logging.getLogger(__name__)


class StatusMessage:
    def __init__(
        self,
        adapter: Adapter,
        store: Store,
        turn_id: int,
        chat: str,
        thread: str,
        *,
        ref: MessageRef | None = None,
        reply_to: str | None = None,
    ) -> None:
        self.adapter = adapter
        self.store = store
        self.turn_id = turn_id
        self.chat = chat
        self.thread = thread
        self.ref = ref  # the message from before a restart, edited in place
        self.reply_to = reply_to
        self._last_write = 0.0
        self._pending: Post | None = None
        self._flush: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    async def show(self, post: Post, *, now: bool = False) -> None:
        """Show `post` as the turn's status: now, or as soon as the platform's pace allows."""
        post = replace(post, role="status", turn_id=self.turn_id, reply_to=self.reply_to)
        if self.ref is None:
            await self._write(post)
            return
        if now:  # not merged with later states, but still no sooner than the pace allows
            self._drop_pending()
            async with self._lock:
                await asyncio.sleep(max(0.0, self._interval() - (time.monotonic() - self._last_write)))
                await self._write_locked(post)
            return
        self._pending = post  # the newest state replaces one still waiting
        if self._flush is None:
            wait = self._interval() - (time.monotonic() - self._last_write)
            self._flush = asyncio.create_task(self._write_later(max(0.0, wait)))

    async def finish(self, post: Post) -> None:
        """The final state, written as soon as the pace allows (a pending older state is dropped)."""
        await self.show(post, now=True)

    def _interval(self) -> float:
        return self.adapter.edit_interval(self.chat)

    def _drop_pending(self) -> None:
        flush, self._flush = self._flush, None
        if flush is not None and flush is not asyncio.current_task():
            flush.cancel()
        self._pending = None

    async def _write_later(self, delay: float) -> None:
        await asyncio.sleep(delay)
        async with self._lock:
            self._flush = None  # from here on, a newer state schedules the next edit
            post, self._pending = self._pending, None
            if post is not None:
                await self._write_locked(post)

    async def _write(self, post: Post) -> None:
        async with self._lock:
            await self._write_locked(post)

    async def _write_locked(self, post: Post) -> None:
        self._last_write = time.monotonic()  # claimed when it starts: edits start an interval apart
        try:
            if self.ref is None:
                refs = await self.adapter.send(self.chat, self.thread, post)
                await self._relink(refs[0])
            else:
                await self._relink(await self.adapter.edit(self.ref, post))
        except Exception:  # a status update must never kill the turn
            log.exception("turn %s: status update failed", self.turn_id)

    async def _relink(self, ref: MessageRef) -> None:
        if ref == self.ref:
            return
        self.ref = ref
        await self.store.link_message(ref.platform, ref.chat, ref.message_id, self.turn_id, LinkRole.STATUS)
