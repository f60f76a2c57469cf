"""The bot's memory: conversations as trees of turns, in SQLite, plus the image files they point to.

Owns the schema and its numbered migrations (recorded in `_migrations`, in the style of
simonw/llm's migrations.py), the turn lifecycle (which status may follow which), the links from
posted platform messages back to turns, per-user and per-chat settings, and where image files
live under the data directory: images/ for results (kept), uploads/ for the pictures users send
back (`prune_uploads` deletes them by age). Opening a file that is no usable database raises
DatabaseUnusable (one line: the file and what to do); the file work is bot/datafiles.py's.

A result's post is guarded by the turn's announcing mark (`announcing_at`): set before it goes
out, cleared when it surely failed; with its image link written after the post, a restart can
tell a result never posted from one that may have been (`unannounced_turns`).

Conversations are keyed by (platform, chat, thread); a thread may be "" (a Telegram private chat,
the console). `/new` starts a fresh conversation under the same key, so a key maps to its latest
conversation. Turns form a tree through parent_id; a history is the chain from the root to a
turn, loaded with one recursive query. Turn ids are integers that are never reused, so a button's
callback data ("r:12345") and a message link stay valid across restarts.

The database runs in WAL mode with synchronous=NORMAL: a committed transaction survives the
process being killed (the crash-recovery promise); only an OS crash or power loss may drop the
last commits. One aiosqlite connection serves the process; multi-statement writes hold a lock.

It must not know about chat platforms' APIs, models or the engine: it stores ids and text.

The values (Turn, Conversation, statuses, link roles) and the errors live in bot/records.py.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, NoReturn

import aiosqlite

from bot.datafiles import IMAGES, UPLOADS, connect, make_private, remove_old_files
from bot.images import ImageFiles
from bot.migrations import immediate_transaction
from bot.records import (  # re-exported: callers import the values from the store
    ALLOWED_TRANSITIONS,
    UNSET,
    Conversation,
    DatabaseUnusable,
    ImagePathError,
    InvalidTransition,
    LinkRole,
    LinkSpec,
    MessageLink,
    SettingsScope,
    StoreError,
    Turn,
    TurnKind,
    TurnNotFound,
    TurnStatus,
    _Unset,
)
from bot.store_tables import LinksAndSettings

__all__ = [
    "ALLOWED_TRANSITIONS",
    "IMAGES",
    "UNSET",
    "UPLOADS",
    "Conversation",
    "DatabaseUnusable",
    "ImagePathError",
    "InvalidTransition",
    "LinkRole",
    "LinkSpec",
    "MessageLink",
    "SettingsScope",
    "Store",
    "StoreError",
    "Turn",
    "TurnKind",
    "TurnNotFound",
    "TurnStatus",
    "make_private",
]

# --- the store --------------------------------------------------------------------------------

_TURN_COLUMNS = (
    "id, conversation_id, parent_id, kind, owner, user_text, assistant_text, canvas_code, "
    "status, error, seed, params, image_path, created_at, updated_at, announcing_at"
)
_TURN_COLUMNS_QUALIFIED = ", ".join("turns." + c.strip() for c in _TURN_COLUMNS.split(","))
_TURN_WIDTH = len(_TURN_COLUMNS.split(","))
_CONVERSATION_COLUMNS_QUALIFIED = ", ".join(
    f"conversations.{c}" for c in ("id", "platform", "chat", "thread", "created_at")
)
_CONVERSATION_WIDTH = 5
_MAX_DEPTH = 100_000  # a guard against a hand-edited cycle; real chains are far shorter


def _turn(row: Sequence[Any]) -> Turn:
    return Turn(
        id=row[0],
        conversation_id=row[1],
        parent_id=row[2],
        kind=TurnKind(row[3]),
        owner=row[4],
        user_text=row[5],
        assistant_text=row[6],
        canvas_code=row[7],
        status=TurnStatus(row[8]),
        error=row[9],
        seed=row[10],
        params=json.loads(row[11]),
        image_path=row[12],
        created_at=row[13],
        updated_at=row[14],
        announcing_at=row[15],
    )


def _conversation(row: Sequence[Any]) -> Conversation:
    return Conversation(id=row[0], platform=row[1], chat=row[2], thread=row[3], created_at=row[4])


class Store(LinksAndSettings, ImageFiles):
    """Async access to the bot's database. Open it with `async with Store.open(path) as store`."""

    def __init__(self, db: aiosqlite.Connection, data_dir: Path | None, clock: Callable[[], float]) -> None:
        self._db = db
        self._data_dir = data_dir.resolve() if data_dir is not None else None
        self._clock = clock
        self._write_lock = asyncio.Lock()

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        path: Path | str,
        *,
        data_dir: Path | None = None,
        clock: Callable[[], float] = time.time,
        busy_timeout_ms: int = 5000,
    ) -> AsyncIterator[Store]:
        """Open (creating and migrating as needed) the database at `path` (":memory:" works).

        Images live under `data_dir`, by default the database file's folder. A file that cannot
        be used (not a database, damaged, locked by another process for `busy_timeout_ms`,
        unreadable) raises DatabaseUnusable, whose message says which file and what to do.
        """
        memory = str(path) == ":memory:"
        if not memory:
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            if data_dir is None:
                data_dir = path.parent
        db = await connect(str(path), busy_timeout_ms)
        try:
            yield cls(db, data_dir, clock)
        finally:
            await db.close()

    def now(self) -> float:
        """The store's clock (what created_at and updated_at are written with)."""
        return self._clock()

    @property
    def connection(self) -> aiosqlite.Connection:
        """The underlying connection, for diagnostics (doctor, tests counting queries)."""
        return self._db

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        async with self._write_lock, immediate_transaction(self._db) as db:
            yield db

    async def _rows(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        """Run a read and fetch every row in one hop to the connection's thread (not three)."""
        return list(await self._db.execute_fetchall(sql, args))

    async def _row(self, sql: str, args: Sequence[Any] = ()) -> Any:
        rows = await self._rows(sql, args)
        return rows[0] if rows else None

    async def instance_id(self) -> str:
        """This database's own random id (made by a migration, never changed)."""
        row = await self._row("SELECT id FROM instance")
        return str(row[0])

    async def journal_mode(self) -> str:
        row = await self._row("PRAGMA journal_mode")
        return str(row[0]) if row else ""

    # --- conversations ------------------------------------------------------------------------

    async def get_or_create_conversation(
        self, platform: str, chat: str | int, thread: str | int = ""
    ) -> Conversation:
        """The latest conversation for (platform, chat, thread), created if there is none."""
        chat, thread = str(chat), str(thread)
        found = await self._latest_conversation(self._db, platform, chat, thread)
        if found is not None:  # the common case needs no write lock
            return found
        async with self._transaction() as db:
            found = await self._latest_conversation(db, platform, chat, thread)
            if found is not None:
                return found
            return await self._insert_conversation(db, platform, chat, thread)

    async def new_conversation(self, platform: str, chat: str | int, thread: str | int = "") -> Conversation:
        """Start a fresh conversation under this key (/new); it becomes the key's latest."""
        async with self._transaction() as db:
            return await self._insert_conversation(db, platform, str(chat), str(thread))

    async def _latest_conversation(
        self, db: aiosqlite.Connection, platform: str, chat: str, thread: str
    ) -> Conversation | None:
        rows = await db.execute_fetchall(
            "SELECT id, platform, chat, thread, created_at FROM conversations "
            "WHERE platform = ? AND chat = ? AND thread = ? ORDER BY id DESC LIMIT 1",
            (platform, chat, thread),
        )
        row = next(iter(rows), None)
        return _conversation(row) if row else None

    async def _insert_conversation(
        self, db: aiosqlite.Connection, platform: str, chat: str, thread: str
    ) -> Conversation:
        now = self._clock()
        async with db.execute(
            "INSERT INTO conversations (platform, chat, thread, created_at) VALUES (?, ?, ?, ?) RETURNING id",
            (platform, chat, thread, now),
        ) as cursor:
            row = await cursor.fetchone()
        assert row is not None  # RETURNING always yields the inserted row
        return Conversation(id=row[0], platform=platform, chat=chat, thread=thread, created_at=now)

    # --- turns --------------------------------------------------------------------------------

    async def create_turn(
        self,
        *,
        conversation_id: int,
        parent_id: int | None,
        kind: TurnKind | str,
        owner: str,
        user_text: str = "",
        canvas_code: str | None = None,
        seed: int | None = None,
        params: Mapping[str, Any] | None = None,
        status: TurnStatus | str = TurnStatus.QUEUED,
        links: Sequence[LinkSpec] = (),
    ) -> Turn:
        """Store a new turn (queued unless told otherwise) and link `links` to it, in one
        transaction. The parent must be in the same conversation: a reply continues the tree it
        belongs to."""
        kind = TurnKind(kind)
        status = TurnStatus(status)
        params_json = json.dumps(dict(params or {}), sort_keys=True)
        async with self._transaction() as db:
            if parent_id is not None:
                rows = await db.execute_fetchall(
                    "SELECT conversation_id FROM turns WHERE id = ?", (parent_id,)
                )
                row = next(iter(rows), None)
                if row is None:
                    raise TurnNotFound(parent_id)
                if row[0] != conversation_id:
                    raise StoreError(
                        f"turn #{parent_id} belongs to conversation {row[0]}, not {conversation_id}"
                    )
            now = self._clock()
            inserted = await db.execute_fetchall(
                f"INSERT INTO turns (conversation_id, parent_id, kind, owner, user_text, "
                f"canvas_code, status, seed, params, created_at, updated_at) "
                f"VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING {_TURN_COLUMNS}",
                (
                    conversation_id,
                    parent_id,
                    kind.value,
                    owner,
                    user_text,
                    canvas_code,
                    status.value,
                    seed,
                    params_json,
                    now,
                    now,
                ),
            )
            row = next(iter(inserted))  # RETURNING always yields the inserted row
            await self._insert_links(db, row[0], links)
        return _turn(row)

    async def get_turn(self, turn_id: int) -> Turn:
        row = await self._row(f"SELECT {_TURN_COLUMNS} FROM turns WHERE id = ?", (turn_id,))
        if row is None:
            raise TurnNotFound(turn_id)
        return _turn(row)

    async def find_turn(self, turn_id: int) -> Turn | None:
        try:
            return await self.get_turn(turn_id)
        except TurnNotFound:
            return None

    async def latest_turn(
        self, conversation_id: int, *, statuses: Sequence[TurnStatus] | None = None
    ) -> Turn | None:
        """The conversation's most recent turn (optionally only among `statuses`)."""
        sql = f"SELECT {_TURN_COLUMNS} FROM turns WHERE conversation_id = ?"
        args: list[Any] = [conversation_id]
        if statuses is not None:
            sql += f" AND status IN ({', '.join('?' for _ in statuses)})"
            args += [TurnStatus(s).value for s in statuses]
        row = await self._row(sql + " ORDER BY id DESC LIMIT 1", args)
        return _turn(row) if row else None

    async def update_turn(
        self,
        turn_id: int,
        *,
        status: TurnStatus | str | None = None,
        assistant_text: str | _Unset | None = UNSET,
        canvas_code: str | _Unset | None = UNSET,
        error: str | _Unset | None = UNSET,
        seed: int | _Unset | None = UNSET,
        params: Mapping[str, Any] | _Unset = UNSET,
        image_path: Path | str | _Unset | None = UNSET,
        announcing_at: float | _Unset | None = UNSET,
        links: Sequence[LinkSpec] = (),
    ) -> Turn:
        """Change a turn's columns and, when `status` differs from the current one, its status;
        `links` are linked to the turn in the same transaction.

        The status change is checked against ALLOWED_TRANSITIONS in the same statement that
        makes it (compare-and-set), so two writers can never both finish one turn.
        """
        sets, args = self._column_changes(
            assistant_text=assistant_text,
            canvas_code=canvas_code,
            error=error,
            seed=seed,
            image_path=image_path,
            announcing_at=announcing_at,
        )
        if params is not UNSET:
            sets.append("params = ?")
            args.append(json.dumps(dict(params), sort_keys=True))
        wanted = TurnStatus(status) if status is not None else None
        where = "id = ?"
        where_args: list[Any] = [turn_id]
        if wanted is not None:
            sources = [s.value for s, targets in ALLOWED_TRANSITIONS.items() if wanted in targets]
            sets.append("status = ?")
            args.append(wanted.value)
            # Staying in the same status is no transition (e.g. storing text while running).
            where += f" AND status IN ({', '.join('?' for _ in [*sources, wanted])})"
            where_args += [*sources, wanted.value]
        sets.append("updated_at = ?")
        args.append(self._clock())
        update = f"UPDATE turns SET {', '.join(sets)} WHERE {where} RETURNING {_TURN_COLUMNS}"
        if not links:  # one statement is its own transaction (autocommit): one hop to the thread
            async with self._write_lock:
                row = next(iter(await self._db.execute_fetchall(update, [*args, *where_args])), None)
            if row is None:
                await self._refused(turn_id, wanted, self._db)
            return _turn(row)
        async with self._transaction() as db:
            async with db.execute(update, [*args, *where_args]) as cursor:
                row = await cursor.fetchone()
            if row is None:
                await self._refused(turn_id, wanted, db)
            await self._insert_links(db, turn_id, links)
        return _turn(row)

    @staticmethod
    async def _refused(turn_id: int, wanted: TurnStatus | None, db: aiosqlite.Connection) -> NoReturn:
        """Why an update matched no row: no such turn, or a status change the lifecycle refuses."""
        rows = await db.execute_fetchall("SELECT status FROM turns WHERE id = ?", (turn_id,))
        current = next(iter(rows), None)
        if current is None:
            raise TurnNotFound(turn_id)
        assert wanted is not None  # without a status change the update cannot miss
        raise InvalidTransition(turn_id, TurnStatus(current[0]), wanted)

    def _column_changes(self, **columns: Any) -> tuple[list[str], list[Any]]:
        """The SET clauses and arguments for the columns given a value (UNSET ones are left)."""
        sets: list[str] = []
        args: list[Any] = []
        for column, value in columns.items():
            if value is UNSET:
                continue
            if column == "image_path" and value is not None:
                value = self.relative_image_path(value)
            sets.append(f"{column} = ?")
            args.append(value)
        return sets, args

    async def history(self, turn_id: int) -> list[Turn]:
        """The chain from the root to `turn_id` (inclusive), oldest first, in one query."""
        rows = await self._rows(
            f"""
            WITH RECURSIVE chain (id, depth) AS (
                SELECT id, 0 FROM turns WHERE id = ?
                UNION ALL
                SELECT turns.parent_id, chain.depth + 1
                FROM turns JOIN chain ON turns.id = chain.id
                WHERE turns.parent_id IS NOT NULL AND chain.depth < {_MAX_DEPTH}
            )
            SELECT {_TURN_COLUMNS_QUALIFIED}
            FROM chain JOIN turns ON turns.id = chain.id
            ORDER BY chain.depth DESC
            """,
            (turn_id,),
        )
        if not rows:
            raise TurnNotFound(turn_id)
        return [_turn(row) for row in rows]

    async def children(self, turn_id: int) -> list[Turn]:
        """The turns continuing from `turn_id`, oldest first (more than one where it branched)."""
        rows = await self._rows(
            f"SELECT {_TURN_COLUMNS} FROM turns WHERE parent_id = ? ORDER BY id", (turn_id,)
        )
        return [_turn(row) for row in rows]

    async def unfinished_turns(self) -> list[Turn]:
        """Turns left queued or running (by a crash), oldest first, for resubmission at start."""
        rows = await self._rows(
            f"SELECT {_TURN_COLUMNS} FROM turns WHERE status IN ('queued', 'running') ORDER BY id"
        )
        return [_turn(row) for row in rows]

    async def unannounced_turns(self) -> list[Turn]:
        """Done turns with a picture but no posted image message: a crash came between storing
        the result and announcing it (or while announcing it: `announcing_at` is set then, and
        the post may be out). Oldest first, for announcing at start."""
        rows = await self._rows(
            f"SELECT {_TURN_COLUMNS} FROM turns WHERE status = 'done' AND image_path IS NOT NULL "
            "AND NOT EXISTS (SELECT 1 FROM message_links "
            "WHERE message_links.turn_id = turns.id AND message_links.role = 'image') ORDER BY id"
        )
        return [_turn(row) for row in rows]

    async def message_turn(
        self, platform: str, chat: str, message_id: str | int
    ) -> tuple[Turn, Conversation] | None:
        """The turn a posted message belongs to, with its conversation, in one query."""
        return await self._turn_with_conversation(
            "JOIN message_links ON message_links.turn_id = turns.id WHERE message_links.platform = ? "
            "AND message_links.chat = ? AND message_links.message_id = ?",
            (platform, str(chat), str(message_id)),
        )

    async def turn_in_conversation(self, turn_id: int) -> tuple[Turn, Conversation] | None:
        """A turn with its conversation, in one query (None when there is no such turn)."""
        return await self._turn_with_conversation("WHERE turns.id = ?", (turn_id,))

    async def _turn_with_conversation(
        self, where: str, args: Sequence[Any]
    ) -> tuple[Turn, Conversation] | None:
        row = await self._row(
            f"SELECT {_TURN_COLUMNS_QUALIFIED}, {_CONVERSATION_COLUMNS_QUALIFIED} FROM turns "
            f"JOIN conversations ON conversations.id = turns.conversation_id {where}",
            args,
        )
        return (_turn(row), _conversation(row[_TURN_WIDTH:])) if row else None

    async def conversation_head(
        self, platform: str, chat: str | int, thread: str | int = ""
    ) -> tuple[Conversation | None, Turn | None]:
        """The key's latest conversation and its latest turn, in one query."""
        row = await self._row(
            f"SELECT {_CONVERSATION_COLUMNS_QUALIFIED}, {_TURN_COLUMNS_QUALIFIED} FROM conversations "
            "LEFT JOIN turns ON turns.id = "
            "(SELECT max(id) FROM turns WHERE turns.conversation_id = conversations.id) "
            "WHERE conversations.platform = ? AND conversations.chat = ? AND conversations.thread = ? "
            "ORDER BY conversations.id DESC LIMIT 1",
            (platform, str(chat), str(thread)),
        )
        if row is None:
            return None, None
        turn = _turn(row[_CONVERSATION_WIDTH:]) if row[_CONVERSATION_WIDTH] is not None else None
        return _conversation(row), turn

    async def turn_for_message(self, platform: str, chat: str, message_id: str | int) -> Turn | None:
        """The turn a posted message belongs to (what a reply or a button press continues)."""
        row = await self._row(
            f"SELECT {_TURN_COLUMNS_QUALIFIED} "
            "FROM message_links JOIN turns ON turns.id = message_links.turn_id "
            "WHERE message_links.platform = ? AND message_links.chat = ? "
            "AND message_links.message_id = ?",
            (platform, str(chat), str(message_id)),
        )
        return _turn(row) if row else None

    # --- uploads ------------------------------------------------------------------------------

    async def prune_uploads(self, older_than_s: float) -> int:
        """Delete the pictures users sent that are older than `older_than_s` (their turns keep
        the canvas; their image path is cleared), and stray upload files a crash left; returns
        how many files went."""
        root = self._require_data_dir() / UPLOADS
        cutoff = self._clock() - older_than_s
        rows = await self._rows(
            "SELECT id, image_path FROM turns WHERE image_path LIKE ? AND created_at < ?",
            (f"{UPLOADS}/%", cutoff),
        )
        known = {self._data_dir / row[1] for row in rows if self._data_dir is not None}
        removed = await asyncio.to_thread(remove_old_files, root, known, cutoff)
        ids = [row[0] for row in rows]
        for start in range(0, len(ids), 500):  # under SQLite's bound-parameter limit
            chunk = ids[start : start + 500]
            async with self._transaction() as db:
                await db.execute(
                    f"UPDATE turns SET image_path = NULL WHERE id IN ({', '.join('?' for _ in chunk)})",
                    chunk,
                )
        return removed
