"""The bot's files on disk, below the queries: opening the database file, the folders images
live in, their modes, and deleting old uploads.

- `connect`: a migrated aiosqlite connection, or `DatabaseUnusable` with one line naming the file
  and what to do (not a database, damaged, locked by another process, unreadable).
- `make_private`: folders 0700 and files 0600 for what the bot keeps (prompts and pictures are
  nobody else's to read); bot/app.py also sets the umask, so new files are born private.
- `remove_old_files`: the pruning of the pictures users sent (`Store.prune_uploads` decides which).

It knows paths, SQLite's error names and aiosqlite; the tables are bot/migrations.py's and the
queries bot/store.py's.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import aiosqlite

from bot.migrations import migrate
from bot.records import DatabaseUnusable

IMAGES = "images"  # the bot's results, kept for good
UPLOADS = "uploads"  # pictures users sent back, kept for [data] keep_uploads_days
PRIVATE_DIR, PRIVATE_FILE = 0o700, 0o600

# --- opening the database ---------------------------------------------------------------------

# What each SQLite failure at open means for the operator, by SQLite's error name.
_UNUSABLE: dict[str, tuple[str, str]] = {
    "SQLITE_NOTADB": (
        "is not an SQLite database",
        "move the file away and start again (a new, empty database is created), "
        "or set [data] dir to another folder",
    ),
    "SQLITE_CORRUPT": (
        "is damaged",
        "restore it from a backup, or move the file away to start with an empty one "
        "(`sqlite3 FILE .recover` can save what is left)",
    ),
    "SQLITE_BUSY": (
        "is locked by another process",
        "another omost-bot is probably running on the same data folder: stop it, "
        "or set [data] dir to another folder",
    ),
    "SQLITE_CANTOPEN": (
        "cannot be opened",
        "check that the path is a file (not a folder) and that this user may read and write it "
        "and its folder",
    ),
    "SQLITE_READONLY": (
        "is read-only for this user",
        "give this user write access to the file and its folder, or set [data] dir elsewhere",
    ),
}
_UNUSABLE["SQLITE_LOCKED"] = _UNUSABLE["SQLITE_BUSY"]
_UNUSABLE["SQLITE_PERM"] = _UNUSABLE["SQLITE_READONLY"]


async def connect(path: str, busy_timeout_ms: int) -> aiosqlite.Connection:
    """A migrated connection, or DatabaseUnusable naming the file and what to do."""
    db: aiosqlite.Connection | None = None
    try:
        # isolation_level=None: autocommit; transactions are explicit BEGIN ... COMMIT.
        db = await aiosqlite.connect(path, isolation_level=None)
        # the busy timeout first: a database another process holds is waited for, then reported
        await db.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        await db.execute("PRAGMA journal_mode = WAL")
        await db.execute("PRAGMA synchronous = NORMAL")
        await db.execute("PRAGMA foreign_keys = ON")
        await migrate(db)
    except sqlite3.DatabaseError as e:
        if db is not None:
            await db.close()
        name = getattr(e, "sqlite_errorname", "")
        problem, advice = _UNUSABLE.get(name, (f"cannot be used ({e})", "see the log for details"))
        raise DatabaseUnusable(path, problem, advice.replace("FILE", path)) from e
    except BaseException:
        if db is not None:
            await db.close()
        raise
    return db


# --- files -----------------------------------------------------------------------------------


def remove_old_files(root: Path, known: set[Path], cutoff: float) -> int:
    """Delete `known` files and any file under `root` last changed before `cutoff`."""
    removed = 0
    for path in known:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed += 1
    if root.is_dir():
        for path in root.rglob("*"):
            if path.is_file() and not path.is_symlink() and path.stat().st_mtime < cutoff:
                path.unlink(missing_ok=True)
                removed += 1
    return removed


def make_private(data_dir: Path, database: Path) -> int:
    """Folders 0700 and files 0600 for what the bot keeps (the data folder, the database and its
    journal files, images/, uploads/): prompts and pictures are nobody else's to read. Symlinks
    are left alone. Returns how many modes were changed."""
    changed = 0

    def restrict(path: Path, mode: int) -> None:
        nonlocal changed
        if path.is_symlink() or not path.exists():
            return
        if path.stat().st_mode & 0o777 != mode:
            path.chmod(mode)
            changed += 1

    restrict(data_dir, PRIVATE_DIR)
    for suffix in ("", "-wal", "-shm", "-journal"):
        restrict(database.with_name(database.name + suffix), PRIVATE_FILE)
    for kept in (IMAGES, UPLOADS):
        folder = data_dir / kept
        restrict(folder, PRIVATE_DIR)
        if folder.is_dir() and not folder.is_symlink():
            for path in folder.rglob("*"):
                restrict(path, PRIVATE_DIR if path.is_dir() else PRIVATE_FILE)
    return changed
