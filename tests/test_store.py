"""The store: migrations, conversation trees, message links, settings, crash leftovers, images."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import aiosqlite
import pytest

from bot.migrations import MIGRATIONS, applied_migrations, migrate
from bot.store import (
    ImagePathError,
    InvalidTransition,
    LinkRole,
    Store,
    StoreError,
    TurnKind,
    TurnNotFound,
    TurnStatus,
)

ALL_MIGRATIONS = [name for name, _ in MIGRATIONS]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with Store.open(tmp_path / "bot.sqlite3") as opened:
        yield opened


async def chain(store: Store, length: int, *, platform: str = "telegram", chat: str = "42") -> list[int]:
    conversation = await store.get_or_create_conversation(platform, chat)
    ids: list[int] = []
    parent: int | None = None
    for i in range(length):
        turn = await store.create_turn(
            conversation_id=conversation.id,
            parent_id=parent,
            kind=TurnKind.COMPOSE,
            owner="7",
            user_text=f"message {i}",
            seed=i,
            params={"width": 896, "n": i},
        )
        ids.append(turn.id)
        parent = turn.id
    return ids


async def tables(db: aiosqlite.Connection) -> set[str]:
    async with db.execute("SELECT name FROM sqlite_master WHERE type = 'table'") as cursor:
        return {row[0] for row in await cursor.fetchall()}


# --- migrations -------------------------------------------------------------------------------


async def test_fresh_database_gets_every_migration(tmp_path: Path) -> None:
    async with Store.open(tmp_path / "new.sqlite3") as store:
        assert await applied_migrations(store.connection) == ALL_MIGRATIONS
        assert {"conversations", "turns", "message_links", "settings"} <= await tables(store.connection)
    # Opening again applies nothing twice.
    async with Store.open(tmp_path / "new.sqlite3") as store:
        assert await migrate(store.connection) == []
        assert await applied_migrations(store.connection) == ALL_MIGRATIONS


async def test_in_memory_database_works() -> None:
    async with Store.open(":memory:") as store:
        ids = await chain(store, 3)
        assert [t.id for t in await store.history(ids[-1])] == ids
        assert store.data_dir is None
        with pytest.raises(ImagePathError):
            store.new_image_path(ids[0])


async def test_existing_database_at_an_older_version_is_upgraded_keeping_its_data(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    # Build the schema as the first release had it: only the first migration.
    db = await aiosqlite.connect(path, isolation_level=None)
    assert await migrate(db, upto=1) == ALL_MIGRATIONS[:1]
    await db.execute(
        "INSERT INTO conversations (id, platform, chat, thread, created_at) VALUES (1, 'discord', '9', 't', 0)"
    )
    for turn_id, parent, status in ((1, None, "done"), (2, 1, "running")):
        await db.execute(
            "INSERT INTO turns (id, conversation_id, parent_id, kind, owner, user_text, status, "
            "created_at, updated_at) VALUES (?, 1, ?, 'compose', 'u', ?, ?, 0, 0)",
            (turn_id, parent, f"old {turn_id}", status),
        )
    assert "message_links" not in await tables(db)
    await db.close()

    async with Store.open(path) as store:
        assert await applied_migrations(store.connection) == ALL_MIGRATIONS
        history = await store.history(2)
        assert [(t.id, t.user_text, t.status) for t in history] == [
            (1, "old 1", TurnStatus.DONE),
            (2, "old 2", TurnStatus.RUNNING),
        ]
        # What the later migrations added works on the old rows.
        await store.link_message("discord", "9", "555", 2, LinkRole.STATUS)
        assert (await store.turn_for_message("discord", "9", "555")) == history[1]
        assert [t.id for t in await store.unfinished_turns()] == [2]
        await store.set_settings("user", "discord", "u", {"steps": 30})
        # New turns continue the old tree with fresh ids.
        conversation = await store.get_or_create_conversation("discord", "9", "t")
        assert conversation.id == 1
        new = await store.create_turn(conversation_id=1, parent_id=2, kind="render", owner="u")
        assert new.id == 3


async def test_a_failing_migration_leaves_no_trace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(db: aiosqlite.Connection) -> None:
        await db.execute("CREATE TABLE half_done (x)")
        raise RuntimeError("boom")

    monkeypatch.setattr("bot.migrations.MIGRATIONS", [*MIGRATIONS, ("m999_broken", broken)])
    db = await aiosqlite.connect(tmp_path / "x.sqlite3", isolation_level=None)
    with pytest.raises(RuntimeError):
        await migrate(db)
    assert "half_done" not in await tables(db)
    assert await applied_migrations(db) == ALL_MIGRATIONS
    await db.close()


async def test_file_database_runs_in_wal_mode(store: Store) -> None:
    assert await store.journal_mode() == "wal"


# --- conversations and turns ------------------------------------------------------------------


async def test_conversations_are_per_platform_chat_and_thread(store: Store) -> None:
    a = await store.get_or_create_conversation("telegram", "1")
    assert await store.get_or_create_conversation("telegram", "1") == a
    assert await store.get_or_create_conversation("telegram", 1) == a  # platform ids may be ints
    assert (await store.get_or_create_conversation("telegram", "1", "topic 5")).id != a.id
    assert (await store.get_or_create_conversation("discord", "1")).id != a.id
    assert a.thread == ""


async def test_new_conversation_becomes_the_latest_for_its_key(store: Store) -> None:
    ids = await chain(store, 2, chat="1")
    old = await store.get_or_create_conversation("telegram", "1")
    assert (await store.latest_turn(old.id)).id == ids[-1]  # type: ignore[union-attr]
    fresh = await store.new_conversation("telegram", "1")
    assert fresh.id != old.id
    assert await store.get_or_create_conversation("telegram", "1") == fresh
    assert await store.latest_turn(fresh.id) is None


async def test_concurrent_first_messages_share_one_conversation(store: Store) -> None:
    got = await asyncio.gather(*(store.get_or_create_conversation("telegram", "9") for _ in range(20)))
    assert len({c.id for c in got}) == 1


async def test_branching_two_replies_to_turn_one(store: Store) -> None:
    first, second = await chain(store, 2)
    conversation = (await store.get_turn(first)).conversation_id
    branch = await store.create_turn(
        conversation_id=conversation, parent_id=first, kind=TurnKind.RENDER, owner="8", seed=99
    )
    assert [t.id for t in await store.children(first)] == [second, branch.id]
    assert [t.id for t in await store.history(second)] == [first, second]
    assert [t.id for t in await store.history(branch.id)] == [first, branch.id]
    assert await store.children(branch.id) == []
    assert (await store.latest_turn(conversation)).id == branch.id  # type: ignore[union-attr]


async def test_history_of_a_50_turn_chain_is_one_query_in_order(store: Store) -> None:
    ids = await chain(store, 50)
    statements: list[str] = []
    await store.connection.set_trace_callback(statements.append)
    history = await store.history(ids[-1])
    await store.connection.set_trace_callback(None)
    assert len(statements) == 1
    assert [t.id for t in history] == ids
    assert [t.user_text for t in history] == [f"message {i}" for i in range(50)]
    assert history[0].parent_id is None
    assert all(t.parent_id == prev.id for prev, t in itertools.pairwise(history))
    # From the middle: the root up to that turn, nothing after it.
    assert [t.id for t in await store.history(ids[9])] == ids[:10]


async def test_turn_fields_round_trip(store: Store) -> None:
    conversation = await store.get_or_create_conversation("console", "local")
    turn = await store.create_turn(
        conversation_id=conversation.id,
        parent_id=None,
        kind="user_canvas",
        owner="me",
        user_text="```python\ncanvas = Canvas()\n```",
        canvas_code="canvas = Canvas()",
        seed=12345,
        params={"width": 896, "height": 1152, "steps": 25, "cfg": 5.0},
    )
    again = await store.get_turn(turn.id)
    assert again == turn
    assert again.kind is TurnKind.USER_CANVAS
    assert again.status is TurnStatus.QUEUED
    assert again.params == {"width": 896, "height": 1152, "steps": 25, "cfg": 5.0}
    # Fits Telegram's 64-byte callback data with an action prefix, even at a large id.
    assert len(f"omost:rewrite:{turn.id + 10**12}".encode()) <= 64


async def test_missing_turns_and_cross_conversation_parents_are_refused(store: Store) -> None:
    ids = await chain(store, 1, chat="1")
    other = await store.get_or_create_conversation("telegram", "2")
    with pytest.raises(TurnNotFound):
        await store.get_turn(999)
    with pytest.raises(TurnNotFound):
        await store.history(999)
    with pytest.raises(TurnNotFound):
        await store.create_turn(conversation_id=other.id, parent_id=999, kind="compose", owner="7")
    with pytest.raises(StoreError, match="belongs to conversation"):
        await store.create_turn(conversation_id=other.id, parent_id=ids[0], kind="compose", owner="7")
    with pytest.raises(ValueError):
        await store.create_turn(conversation_id=other.id, parent_id=None, kind="painting", owner="7")


# --- status transitions -----------------------------------------------------------------------


async def test_lifecycle_and_refused_transitions(store: Store) -> None:
    (turn_id,) = await chain(store, 1)
    running = await store.update_turn(turn_id, status="running")
    assert running.status is TurnStatus.RUNNING
    streaming = await store.update_turn(turn_id, assistant_text="canvas = Canvas()")  # no status change
    assert streaming.status is TurnStatus.RUNNING
    done = await store.update_turn(turn_id, status=TurnStatus.DONE, canvas_code="c", error=None)
    assert (done.status, done.assistant_text, done.canvas_code) == (TurnStatus.DONE, "canvas = Canvas()", "c")
    assert done.updated_at >= done.created_at
    for wanted in ("running", "queued", "failed", "cancelled"):
        with pytest.raises(InvalidTransition, match=f"turn #{turn_id} is done; it cannot become {wanted}"):
            await store.update_turn(turn_id, status=wanted, error="late")
    assert (await store.get_turn(turn_id)).error is None  # a refused update changes nothing


async def test_queued_cannot_skip_to_done_but_failed_can_be_retried(store: Store) -> None:
    a, b = await chain(store, 2)
    with pytest.raises(InvalidTransition):
        await store.update_turn(a, status="done")
    await store.update_turn(a, status="failed", error="line 3: expected a keyword argument")
    retried = await store.update_turn(a, status="queued", error=None)
    assert (retried.status, retried.error) == (TurnStatus.QUEUED, None)
    await store.update_turn(b, status="cancelled")
    with pytest.raises(TurnNotFound):
        await store.update_turn(12345, status="running")


async def test_two_writers_cannot_both_finish_a_turn(store: Store) -> None:
    (turn_id,) = await chain(store, 1)
    await store.update_turn(turn_id, status="running")
    results = await asyncio.gather(
        store.update_turn(turn_id, status="done", image_path=None),
        store.update_turn(turn_id, status="cancelled"),
        return_exceptions=True,
    )
    assert sum(isinstance(r, InvalidTransition) for r in results) == 1
    final = await store.get_turn(turn_id)
    assert final.status in (TurnStatus.DONE, TurnStatus.CANCELLED)


# --- message links and settings ---------------------------------------------------------------


async def test_message_links_lead_back_to_their_turn(store: Store) -> None:
    first, second = await chain(store, 2)
    await store.link_message("telegram", "42", 100, first, "user")
    await store.link_message("telegram", "42", 101, first, LinkRole.STATUS)
    await store.link_message("telegram", "42", "102", second, LinkRole.IMAGE)
    assert (await store.turn_for_message("telegram", "42", "101")).id == first  # type: ignore[union-attr]
    assert (await store.turn_for_message("telegram", 42, 102)).id == second  # type: ignore[union-attr]
    assert await store.turn_for_message("telegram", "43", "101") is None  # another chat
    assert await store.turn_for_message("discord", "42", "101") is None  # another platform
    status = await store.messages_for_turn(first, LinkRole.STATUS)
    assert [(m.message_id, m.role) for m in status] == [("101", LinkRole.STATUS)]
    assert [m.message_id for m in await store.messages_for_turn(first)] == ["100", "101"]
    # Relinking a message moves it; linking to a missing turn is refused.
    await store.link_message("telegram", "42", "101", second, "status")
    assert (await store.turn_for_message("telegram", "42", "101")).id == second  # type: ignore[union-attr]
    with pytest.raises(TurnNotFound):
        await store.link_message("telegram", "42", "103", 999, "image")
    with pytest.raises(ValueError):
        await store.link_message("telegram", "42", "104", first, "sticker")


async def test_settings_per_user_and_per_chat(store: Store) -> None:
    assert await store.get_settings("user", "telegram", "7") == {}
    assert await store.set_settings("user", "telegram", 7, {"steps": 30, "size": [896, 1152]}) == {
        "steps": 30,
        "size": [896, 1152],
    }
    await store.set_settings("chat", "telegram", 7, {"steps": 10})
    assert await store.get_settings("user", "telegram", "7") == {"steps": 30, "size": [896, 1152]}
    assert await store.get_settings("chat", "telegram", "7") == {"steps": 10}
    assert await store.get_settings("user", "discord", "7") == {}
    merged = await store.set_settings("user", "telegram", "7", {"seed": 5, "size": None})
    assert merged == {"steps": 30, "seed": 5}
    assert await store.set_settings("user", "telegram", "7", {"cfg": 4.5}, replace=True) == {"cfg": 4.5}
    assert await store.get_settings("user", "telegram", "7") == {"cfg": 4.5}
    with pytest.raises(ValueError):
        await store.get_settings("guild", "discord", "1")


# --- crash leftovers --------------------------------------------------------------------------


async def test_unfinished_turns_are_queued_and_running_ones_oldest_first(store: Store) -> None:
    ids = await chain(store, 5)
    await store.update_turn(ids[0], status="running")
    await store.update_turn(ids[0], status="done")
    await store.update_turn(ids[1], status="failed", error="x")
    await store.update_turn(ids[2], status="cancelled")
    await store.update_turn(ids[3], status="running")
    assert [(t.id, t.status) for t in await store.unfinished_turns()] == [
        (ids[3], TurnStatus.RUNNING),
        (ids[4], TurnStatus.QUEUED),
    ]


CRASHING_WRITER = textwrap.dedent(
    """
    import asyncio, sys, time
    from pathlib import Path
    from bot.store import Store

    async def main():
        async with Store.open(Path(sys.argv[1])) as store:
            conversation = await store.get_or_create_conversation("telegram", "1")
            turn = await store.create_turn(conversation_id=conversation.id, parent_id=None,
                                           kind="compose", owner="7", user_text="a cat")
            await store.update_turn(turn.id, status="running")
            await store.link_message("telegram", "1", "900", turn.id, "status")
            print(turn.id, flush=True)
            time.sleep(60)  # killed here, mid-turn

    asyncio.run(main())
    """
)


async def test_a_killed_process_leaves_its_committed_turns_behind(tmp_path: Path) -> None:
    path = tmp_path / "bot.sqlite3"
    proc = subprocess.Popen(
        [sys.executable, "-c", CRASHING_WRITER, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        turn_id = int(proc.stdout.readline())
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    async with Store.open(path) as store:
        (left,) = await store.unfinished_turns()
        assert (left.id, left.status, left.user_text) == (turn_id, TurnStatus.RUNNING, "a cat")
        (status_message,) = await store.messages_for_turn(turn_id, "status")
        assert status_message.message_id == "900"  # to be edited in place, not posted again
        await store.update_turn(turn_id, status="queued")  # resubmitted after the restart


# --- image files ------------------------------------------------------------------------------


async def test_images_live_under_the_data_dir_and_are_stored_relative(tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with Store.open(data / "bot.sqlite3") as store:
        (turn_id,) = await chain(store, 1)
        path = store.new_image_path(turn_id)
        assert path.parent.is_dir() and path.is_relative_to(data.resolve())
        path.write_bytes(b"\x89PNG")
        await store.update_turn(turn_id, status="running")
        turn = await store.update_turn(turn_id, status="done", image_path=path)
        assert turn.image_path is not None and not Path(turn.image_path).is_absolute()
        assert store.image_file(turn.image_path).read_bytes() == b"\x89PNG"


async def test_image_paths_that_escape_the_data_dir_are_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    outside = tmp_path / "secret.txt"
    outside.write_text("private")
    async with Store.open(data / "bot.sqlite3") as store:
        (turn_id,) = await chain(store, 1)
        (data / "images").mkdir(exist_ok=True)
        (data / "images" / "link.png").symlink_to(outside)
        for bad in (
            "../secret.txt",
            str(outside),
            "images/../../secret.txt",
            "images/link.png",
            "/etc/passwd",
        ):
            with pytest.raises(ImagePathError, match="outside the data directory"):
                store.image_file(bad)
            with pytest.raises(ImagePathError):
                await store.update_turn(turn_id, image_path=bad)
        assert (await store.get_turn(turn_id)).image_path is None
        with pytest.raises(ImagePathError):
            store.new_image_path(turn_id, suffix="/../../x")


async def test_writes_cancelled_at_any_point_leave_the_store_usable(store: Store) -> None:
    conversation = await store.get_or_create_conversation("telegram", "1")
    finished = 0
    for delay in range(30):
        task = asyncio.create_task(
            store.create_turn(conversation_id=conversation.id, parent_id=None, kind="compose", owner="7")
        )
        for _ in range(delay):
            await asyncio.sleep(0)
        task.cancel()
        try:
            await task
            finished += 1
        except asyncio.CancelledError:
            pass
    # Every write that reported success is there (one cancelled while committing may be too: its
    # outcome is unknown to the caller, as with any database), and writing still works.
    rows = await store.connection.execute_fetchall("SELECT count(*) FROM turns")
    (count,) = next(iter(rows))
    assert finished <= count <= 30
    turn = await store.create_turn(conversation_id=conversation.id, parent_id=None, kind="compose", owner="7")
    assert (await store.get_turn(turn.id)).owner == "7"
    assert not store.connection.in_transaction
