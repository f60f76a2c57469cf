"""The database schema as numbered migrations, each applied once and recorded in `_migrations`
(in the style of simonw/llm's migrations.py). Never rename or reorder a migration: add a new one.

It knows SQL and aiosqlite only; bot/store.py reads and writes the tables these create.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import aiosqlite

Migration = Callable[[aiosqlite.Connection], Awaitable[None]]
MIGRATIONS: list[tuple[str, Migration]] = []


def migration(fn: Migration) -> Migration:
    """Register a migration. Its name is recorded once applied; never rename or reorder them."""
    MIGRATIONS.append((fn.__name__, fn))
    return fn


@migration
async def m001_conversations_and_turns(db: aiosqlite.Connection) -> None:
    await db.execute(
        """
        CREATE TABLE conversations (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            platform TEXT NOT NULL,
            chat TEXT NOT NULL,
            thread TEXT NOT NULL DEFAULT '',
            created_at REAL NOT NULL
        )
        """
    )
    await db.execute("CREATE INDEX conversations_by_key ON conversations (platform, chat, thread, id)")
    # AUTOINCREMENT: ids are never reused, so an old button or message link cannot reach a new turn.
    await db.execute(
        """
        CREATE TABLE turns (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            conversation_id INTEGER NOT NULL REFERENCES conversations (id),
            parent_id INTEGER REFERENCES turns (id),
            kind TEXT NOT NULL CHECK (kind IN ('compose', 'render', 'user_canvas')),
            owner TEXT NOT NULL,
            user_text TEXT NOT NULL DEFAULT '',
            assistant_text TEXT,
            canvas_code TEXT,
            status TEXT NOT NULL DEFAULT 'queued'
                CHECK (status IN ('queued', 'running', 'done', 'failed', 'cancelled')),
            error TEXT,
            seed INTEGER,
            params TEXT NOT NULL DEFAULT '{}',
            image_path TEXT,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        )
        """
    )
    await db.execute("CREATE INDEX turns_by_parent ON turns (parent_id)")
    await db.execute("CREATE INDEX turns_by_conversation ON turns (conversation_id, id)")


@migration
async def m002_message_links(db: aiosqlite.Connection) -> None:
    await db.execute(
        """
        CREATE TABLE message_links (
            platform TEXT NOT NULL,
            chat TEXT NOT NULL,
            message_id TEXT NOT NULL,
            turn_id INTEGER NOT NULL REFERENCES turns (id),
            role TEXT NOT NULL,
            created_at REAL NOT NULL,
            PRIMARY KEY (platform, chat, message_id)
        )
        """
    )
    await db.execute("CREATE INDEX message_links_by_turn ON message_links (turn_id)")


@migration
async def m003_settings(db: aiosqlite.Connection) -> None:
    await db.execute(
        """
        CREATE TABLE settings (
            scope TEXT NOT NULL CHECK (scope IN ('user', 'chat')),
            platform TEXT NOT NULL,
            subject TEXT NOT NULL,
            value TEXT NOT NULL DEFAULT '{}',
            updated_at REAL NOT NULL,
            PRIMARY KEY (scope, platform, subject)
        )
        """
    )


@migration
async def m004_unfinished_turns_index(db: aiosqlite.Connection) -> None:
    # Crash recovery scans for unfinished turns at every start; keep that scan off the full table.
    await db.execute("CREATE INDEX turns_unfinished ON turns (id) WHERE status IN ('queued', 'running')")


async def applied_migrations(db: aiosqlite.Connection) -> list[str]:
    await db.execute(
        "CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)"
    )
    async with db.execute("SELECT name FROM _migrations ORDER BY rowid") as cursor:
        return [row[0] for row in await cursor.fetchall()]


async def migrate(db: aiosqlite.Connection, *, upto: int | None = None) -> list[str]:
    """Apply the migrations not yet recorded, each in its own transaction; returns their names.

    `upto` stops after that many migrations in total (tests build old schemas with it).
    """
    done = set(await applied_migrations(db))
    applied: list[str] = []
    for name, fn in MIGRATIONS[:upto]:
        if name in done:
            continue
        async with immediate_transaction(db):
            # Another process may have applied it since we looked; the write lock is ours now.
            if name in await applied_migrations(db):
                continue
            await fn(db)
            await db.execute("INSERT INTO _migrations (name, applied_at) VALUES (?, ?)", (name, time.time()))
        applied.append(name)
    return applied


@asynccontextmanager
async def immediate_transaction(db: aiosqlite.Connection) -> AsyncIterator[aiosqlite.Connection]:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any error or cancellation.

    aiosqlite runs statements in order on its thread, so a ROLLBACK queued after a BEGIN whose
    await was cancelled still follows it; "no transaction is active" is then harmless.
    """
    try:
        await db.execute("BEGIN IMMEDIATE")
        yield db
        await db.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.OperationalError):
            await db.execute("ROLLBACK")
        raise


@migration
async def m005_instance_id(db: aiosqlite.Connection) -> None:
    # A random id for this database: the engine's job ids carry it, so bots that share a render
    # cluster (each with its own database, so its own turn 7) never take each other's jobs.
    await db.execute("CREATE TABLE instance (id TEXT NOT NULL)")
    await db.execute("INSERT INTO instance (id) VALUES (lower(hex(randomblob(8))))")
