"""A drawn picture reaches the chat: a failed result post is tried again (and Retry posts it), a
crash between posting and linking never posts it twice, and a failing store is told to the user
with the turn freed. Through the real turn flow, with the in-memory platform's send failures."""

from __future__ import annotations

import asyncio
import errno
import logging
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from adapters.base import Attachment, Button
from bot.store import LinkRole, TurnStatus
from bot.turns.handler import STORAGE_REFUSED
from bot.turns.results import DELIVERY_FAILED, DELIVERY_RETRYING, MAYBE_POSTED
from bot.turns.runner import SOMETHING_WENT_WRONG, STORAGE_FAILED
from tests.fakes.fake_adapter import FakeAdapter, Sent
from tests.test_conversation import FIRST, open_bot

DISK_FULL = sqlite3.OperationalError("database or disk is full")


def shown(sent: Sent) -> list[str]:
    """Every text a message showed, oldest first."""
    return [sent.post.text, *(edit.text for edit in sent.edits)]


async def test_a_failed_result_post_is_tried_again_and_the_status_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app, bot = await open_bot(tmp_path)
    try:
        app.runner.delivery_delays_s = (0.05, 0.05, 0.05)
        bot.adapter.fail_sends("image", 2)
        await bot.adapter.say(FIRST)
        await bot.settle()
        [status] = bot.adapter.posts("status")
        texts = shown(status)
        assert any(DELIVERY_RETRYING in text for text in texts)
        assert not any(SOMETHING_WENT_WRONG in text for text in texts)
        assert status.current.text == "Turn 1: done."
        assert len(bot.adapter.failed_sends) == 2 and len(bot.adapter.posts("image")) == 1
        assert len(await bot.store.messages_for_turn(1, LinkRole.IMAGE)) == 1
        assert bot.renderer.calls and len(bot.renderer.calls) == 1  # posted again, not drawn again
        failures = [r for r in caplog.records if "result post failed" in r.getMessage()]
        assert len(failures) == 2 and all(r.levelno == logging.WARNING for r in failures)
    finally:
        await app.__aexit__(None, None, None)


async def test_when_posting_keeps_failing_retry_posts_the_stored_picture(tmp_path: Path) -> None:
    app, bot = await open_bot(tmp_path)
    try:
        app.runner.delivery_delays_s = (0.01, 0.01)
        bot.adapter.fail_sends("image", 3)  # every try fails
        await bot.adapter.say(FIRST)
        await bot.settle()
        [status] = bot.adapter.posts("status")
        assert status.current.text == f"Turn 1: {DELIVERY_FAILED}"
        assert status.current.buttons == (Button("retry", 1),)
        assert not bot.adapter.posts("image")
        assert (await bot.turn(1)).status == TurnStatus.DONE  # drawn and stored
        assert app.runner.in_flight("fake:alice") == 0

        assert await bot.adapter.press("retry", 1, user="alice") == "Posting it again…"
        await bot.settle()
        assert len(bot.adapter.posts("image")) == 1
        assert status.current.text == "Turn 1: done."
        assert len(bot.renderer.calls) == 1  # the stored picture, not a new one
        assert await bot.adapter.press("retry", 1, user="alice") == "That picture was posted already."
        await bot.settle()
        assert len(bot.adapter.posts("image")) == 1
    finally:
        await app.__aexit__(None, None, None)


async def test_a_crash_between_posting_and_linking_does_not_post_twice(tmp_path: Path) -> None:
    adapter = FakeAdapter()
    app, bot = await open_bot(tmp_path, adapter=adapter)
    never = asyncio.Event()

    async def dies_here(*_: Any, **__: Any) -> None:  # the process is killed while linking
        await never.wait()

    bot.store.link_messages = dies_here  # type: ignore[method-assign]
    await adapter.say(FIRST)
    for _ in range(500):
        await asyncio.sleep(0.01)
        if adapter.posts("image"):
            break
    assert len(adapter.posts("image")) == 1
    await app.__aexit__(None, None, None)  # nothing linked the post

    app2, bot2 = await open_bot(tmp_path, adapter=adapter)
    try:
        await bot2.settle()
        assert len(adapter.posts("image")) == 1  # not posted again on its own
        [status] = adapter.posts("status")
        assert status.current.text == f"Turn 1: {MAYBE_POSTED}"
        assert status.current.buttons == (Button("retry", 1),)
        # the user says it is missing: it is posted (once) and linked
        assert await adapter.press("retry", 1, user="alice") == "Posting it again…"
        await bot2.settle()
        assert len(adapter.posts("image")) == 2
        assert len(await bot2.store.messages_for_turn(1, LinkRole.IMAGE)) == 1
        assert bot2.renderer.calls == [] and bot2.llm.calls == []
    finally:
        await app2.__aexit__(None, None, None)


async def test_a_full_disk_mid_turn_tells_the_user_and_frees_the_turn(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    app, bot = await open_bot(tmp_path)
    try:
        writes = bot.store.update_turn

        async def disk_full(*_: Any, **__: Any) -> Any:
            raise DISK_FULL

        monkeypatch.setattr(bot.store, "update_turn", disk_full)
        await bot.adapter.say(FIRST)
        await bot.settle()
        [status] = bot.adapter.posts("status")
        assert status.current.text == f"Turn 1: {STORAGE_FAILED}"
        assert "queued" not in status.current.text and not status.current.buttons
        assert app.runner.in_flight("fake:alice") == 0  # the cap slot is free
        assert not bot.adapter.posts("image")
        assert "database or disk is full" in caplog.text  # the detail, for the admin

        monkeypatch.setattr(bot.store, "update_turn", writes)  # space again: the bot goes on
        await bot.adapter.say("a cat on a sofa")
        await bot.settle()
        assert len(bot.adapter.posts("image")) == 1
    finally:
        await app.__aexit__(None, None, None)


async def test_a_request_that_cannot_be_stored_is_refused_with_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app, bot = await open_bot(tmp_path)
    try:

        async def disk_full(*_: Any, **__: Any) -> Any:
            raise DISK_FULL

        monkeypatch.setattr(bot.store, "create_turn", disk_full)
        await bot.adapter.say(FIRST)
        assert bot.adapter.texts() == [STORAGE_REFUSED]
        assert app.runner.in_flight("fake:alice") == 0  # the reservation was released
    finally:
        await app.__aexit__(None, None, None)



async def test_a_picture_sent_back_onto_a_full_disk_is_refused_and_never_drawn_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app, bot = await open_bot(tmp_path)
    try:
        await bot.adapter.say(FIRST)
        await bot.settle()
        png = bot.adapter.posts("image")[0].post.image
        assert png is not None
        write_bytes = Path.write_bytes

        def no_space(self: Path, data: Any) -> int:
            if "uploads" in self.parts:
                raise OSError(errno.ENOSPC, "No space left on device", str(self))
            return write_bytes(self, data)

        monkeypatch.setattr(Path, "write_bytes", no_space)
        await bot.adapter.say("", attachments=(Attachment("turn-1.png", png.data, "image/png"),))
        assert bot.adapter.texts()[-1] == STORAGE_REFUSED
        assert (await bot.turn(2)).status == TurnStatus.FAILED  # not "running": a restart skips it
        assert app.runner.in_flight("fake:alice") == 0
    finally:
        await app.__aexit__(None, None, None)
