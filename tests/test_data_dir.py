"""What the bot keeps on disk: a database file it cannot use is one clear line naming the file,
everything it keeps is private to its user (folders 0700, files 0600), and the pictures users
send back are deleted after [data] keep_uploads_days."""

from __future__ import annotations

import os
import sqlite3
import stat
import time
from pathlib import Path

import pytest

from adapters.base import Attachment
from bot.app import App
from bot.store import DatabaseUnusable, Store, TurnStatus
from tests.fakes.fake_adapter import FakeAdapter
from tests.fakes.fake_backends import FakeLLM, FakeRenderer
from tests.test_conversation import FIRST, make_config, open_bot

DAY = 24 * 3600.0


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- a database file the bot cannot use -----------------------------------------------------------


def _not_a_database(path: Path) -> None:
    path.write_bytes(b"these are somebody's notes, not a database\n" * 100)


def _damaged(path: Path) -> None:
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE t (x)")
    db.executemany("INSERT INTO t VALUES (?)", [("x" * 500,)] * 50)
    db.commit()
    db.close()
    data = bytearray(path.read_bytes())
    data[100:4096] = b"\xff" * (4096 - 100)  # the schema page overwritten
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("spoil", "says", "advice"),
    [
        (_not_a_database, "is not an SQLite database", "move the file away"),
        (_damaged, "is damaged", "restore it from a backup"),
    ],
)
async def test_an_unusable_database_file_is_one_line_naming_it(
    tmp_path: Path, spoil: object, says: str, advice: str
) -> None:
    path = tmp_path / "omost-bot.sqlite3"
    spoil(path)  # type: ignore[operator]
    before = path.read_bytes()
    with pytest.raises(DatabaseUnusable) as caught:
        async with Store.open(path):
            pass
    line = str(caught.value)
    assert "\n" not in line and str(path) in line and says in line and advice in line
    assert path.read_bytes() == before  # nothing was written over it


async def test_a_database_another_process_holds_is_named_as_locked(tmp_path: Path) -> None:
    path = tmp_path / "omost-bot.sqlite3"
    async with Store.open(path):
        pass
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("PRAGMA locking_mode = EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(DatabaseUnusable) as caught:
            async with Store.open(path, busy_timeout_ms=100):
                pass
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    line = str(caught.value)
    assert str(path) in line and "is locked by another process" in line
    assert "another omost-bot" in line


async def test_the_app_refuses_to_start_on_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    config.data.dir.mkdir(parents=True)
    _not_a_database(config.data.database)
    app = App(config, adapters=[FakeAdapter()], llm=FakeLLM(), renderer=FakeRenderer())
    with pytest.raises(DatabaseUnusable, match="is not an SQLite database"):
        await app.__aenter__()


# --- private files ------------------------------------------------------------------------------


async def test_everything_the_bot_keeps_is_private_to_its_user(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    # what an older version left: a world-readable folder, database and picture
    old_umask = os.umask(0o022)
    try:
        async with Store.open(config.data.database) as store:
            old_picture = store.new_image_path(999_999)
            old_picture.write_bytes(b"png")
        os.chmod(config.data.dir, 0o755)
        assert mode(config.data.database) == 0o644 and mode(old_picture) == 0o644

        app, bot = await open_bot(tmp_path)
        try:
            await bot.adapter.say(FIRST)
            await bot.settle()
            new_picture = bot.store.image_file((await bot.turn(1)).image_path)
            assert mode(config.data.dir) == 0o700
            assert mode(config.data.database) == 0o600
            assert mode(old_picture) == 0o600 and mode(old_picture.parent) == 0o700
            assert mode(new_picture) == 0o600 and mode(new_picture.parent) == 0o700
            for journal in config.data.dir.glob("*.sqlite3-*"):
                assert mode(journal) == 0o600, journal
        finally:
            await app.__aexit__(None, None, None)
        assert os.umask(0o022) == 0o022  # the bot's umask ended with it
    finally:
        os.umask(old_umask)


# --- uploads ------------------------------------------------------------------------------------


async def test_pictures_users_send_are_deleted_after_keep_uploads_days(tmp_path: Path) -> None:
    adapter = FakeAdapter()
    app, bot = await open_bot(tmp_path, adapter=adapter)
    await adapter.say(FIRST)
    await bot.settle()
    png = adapter.posts("image")[0].post.image
    assert png is not None
    await adapter.say("", attachments=(Attachment("turn-1.png", png.data, "image/png"),))
    upload = await bot.turn(2)
    assert upload.status == TurnStatus.DONE and upload.image_path.startswith("uploads/")
    upload_file = bot.store.image_file(upload.image_path)
    assert upload_file.read_bytes() == png.data
    # the upload is 40 days old (the default keeps 30); the bot's own result as old
    await bot.store.connection.execute(f"UPDATE turns SET created_at = created_at - {40 * DAY}")
    aged = time.time() - 40 * DAY
    result_file = bot.store.image_file((await bot.turn(1)).image_path)
    for path in (upload_file, result_file):
        os.utime(path, (aged, aged))
    stray = upload_file.with_name("12345.png")  # a crash left it without its turn
    stray.write_bytes(b"png")
    os.utime(stray, (aged, aged))
    await app.__aexit__(None, None, None)

    app2, bot2 = await open_bot(tmp_path, adapter=adapter)  # pruned at start
    try:
        assert not upload_file.exists() and not stray.exists()
        assert result_file.exists()  # results are kept: only uploads age out
        pruned = await bot2.turn(2)
        assert pruned.image_path is None and pruned.canvas_code == upload.canvas_code
        # the conversation still continues from that picture's canvas
        await adapter.say("make it night")
        await bot2.settle()
        turn = await bot2.turn(3)
        assert turn.parent_id == 2 and turn.status == TurnStatus.DONE
    finally:
        await app2.__aexit__(None, None, None)


async def test_keep_uploads_days_is_read_from_the_config(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    assert config.data.keep_uploads_days == 30
    from bot.config import parse_config

    text = f'[data]\ndir = "{tmp_path}"\nkeep_uploads_days = 2.5\n'
    assert parse_config(text).data.keep_uploads_days == 2.5
    with pytest.raises(Exception, match="keep_uploads_days"):
        parse_config('[data]\nkeep_uploads_days = -1\n')
