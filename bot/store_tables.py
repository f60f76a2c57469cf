"""The store's two small tables: message links (which posted message belongs to which turn) and
saved settings (per user and per chat). A mixin of `Store`, which gives it the connection.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

import aiosqlite

from bot.records import LinkRole, LinkSpec, MessageLink, SettingsScope, TurnNotFound


class LinksAndSettings:
    """Needs from its host: the connection, the write lock, the clock and the read helpers."""

    _db: aiosqlite.Connection
    _write_lock: asyncio.Lock
    _clock: Callable[[], float]

    def _transaction(self) -> AbstractAsyncContextManager[aiosqlite.Connection]:
        raise NotImplementedError

    async def _rows(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        raise NotImplementedError

    async def _row(self, sql: str, args: Sequence[Any] = ()) -> Any:
        raise NotImplementedError

    # --- message links ------------------------------------------------------------------------

    async def link_messages(self, turn_id: int, links: Sequence[LinkSpec]) -> None:
        """Link several posted messages to a turn at once (one post can make several messages)."""
        if links:
            async with self._transaction() as db:
                await self._insert_links(db, turn_id, links)

    async def _insert_links(self, db: aiosqlite.Connection, turn_id: int, links: Sequence[LinkSpec]) -> None:
        if not links:
            return
        now = self._clock()
        rows = [
            (platform, str(chat), str(mid), turn_id, LinkRole(role).value, now)
            for platform, chat, mid, role in links
        ]
        try:
            await db.executemany(
                "INSERT INTO message_links (platform, chat, message_id, turn_id, role, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (platform, chat, message_id) "
                "DO UPDATE SET turn_id = excluded.turn_id, role = excluded.role",
                rows,
            )
        except aiosqlite.IntegrityError:
            raise TurnNotFound(turn_id) from None

    async def link_message(
        self, platform: str, chat: str, message_id: str | int, turn_id: int, role: LinkRole | str
    ) -> MessageLink:
        """Remember that a posted message belongs to a turn (relinking a message moves it)."""
        link = MessageLink(platform, str(chat), str(message_id), turn_id, LinkRole(role))
        async with self._write_lock:
            try:
                await self._db.execute(
                    "INSERT INTO message_links (platform, chat, message_id, turn_id, role, created_at) "
                    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (platform, chat, message_id) "
                    "DO UPDATE SET turn_id = excluded.turn_id, role = excluded.role",
                    (link.platform, link.chat, link.message_id, turn_id, link.role.value, self._clock()),
                )
            except aiosqlite.IntegrityError:
                raise TurnNotFound(turn_id) from None
        return link

    async def messages_for_turn(self, turn_id: int, role: LinkRole | str | None = None) -> list[MessageLink]:
        """A turn's posted messages (e.g. its status message, to edit it in place after a restart)."""
        sql = "SELECT platform, chat, message_id, turn_id, role FROM message_links WHERE turn_id = ?"
        args: list[Any] = [turn_id]
        if role is not None:
            sql += " AND role = ?"
            args.append(LinkRole(role).value)
        rows = await self._rows(sql + " ORDER BY created_at, rowid", args)
        return [MessageLink(r[0], r[1], r[2], r[3], LinkRole(r[4])) for r in rows]


    # --- settings -----------------------------------------------------------------------------

    async def get_settings(
        self, scope: SettingsScope | str, platform: str, subject: str | int
    ) -> dict[str, Any]:
        """A user's or chat's settings ({} when none were saved)."""
        row = await self._row(
            "SELECT value FROM settings WHERE scope = ? AND platform = ? AND subject = ?",
            (SettingsScope(scope).value, platform, str(subject)),
        )
        value: dict[str, Any] = json.loads(row[0]) if row else {}
        return value

    async def set_settings(
        self,
        scope: SettingsScope | str,
        platform: str,
        subject: str | int,
        changes: Mapping[str, Any],
        *,
        replace: bool = False,
    ) -> dict[str, Any]:
        """Merge `changes` into the saved settings (a None value removes that key), or replace
        them all; returns the result. The merge is one statement (SQLite's json_patch)."""
        patch = json.dumps(dict(changes))
        # json_patch (RFC 7396) drops null members, so a new row never stores a None either.
        base = "'{}'" if replace else "settings.value"
        async with (
            self._write_lock,
            self._db.execute(
                "INSERT INTO settings (scope, platform, subject, value, updated_at) "
                "VALUES (?, ?, ?, json_patch('{}', ?), ?) "
                "ON CONFLICT (scope, platform, subject) DO UPDATE SET "
                f"value = json_patch({base}, ?), updated_at = excluded.updated_at RETURNING value",
                (SettingsScope(scope).value, platform, str(subject), patch, self._clock(), patch),
            ) as cursor,
        ):
            row = await cursor.fetchone()
        assert row is not None
        value: dict[str, Any] = json.loads(row[0])
        return value
