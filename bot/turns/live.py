"""The live turn: everything the runner knows about one turn in flight, held in one object.

A `LiveTurn` lives from the moment a turn is started (or resumed after a restart) until it ends.
It holds the turn as last written, its conversation, its status message, its typed settings and,
once the history is loaded, the parent's canvas. The store is written when something changes
(`save`, which takes the row the write returns) and never re-read to learn what the runner
already knows. Messages posted along the way are collected in `links` and linked with the next
write, so a post costs no store round trip of its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from adapters.base import Adapter, Button, Post
from bot.store import Conversation, LinkSpec, Store, Turn, TurnStatus
from bot.turns.settings import TurnSettings
from bot.turns.status import StatusMessage
from omost_engine.canvas import Canvas


def owner_key(platform: str, user: str) -> str:
    """Who a turn belongs to, for the fair queue, the caps and the buttons: one user on one platform."""
    return f"{platform}:{user}"


@dataclass
class LiveTurn:
    turn: Turn
    conversation: Conversation
    adapter: Adapter
    store: Store
    status: StatusMessage
    settings: TurnSettings
    parent: Turn | None = None  # the turn this one continues (its picture, for edits)
    parent_canvas: Canvas | None = None
    edit_note: str = ""  # what an edit redrew, for the result's summary
    can_edit: bool = True  # the renderer can redraw part of a picture (Vary region, Zoom out, edits)
    links: list[LinkSpec] = field(default_factory=list)

    @property
    def id(self) -> int:
        return self.turn.id

    async def save(self, **changes: Any) -> Turn:
        """Write `changes` (and the links collected so far) and keep the row the store returns."""
        links, self.links = self.links, []
        self.turn = await self.store.update_turn(self.turn.id, links=links, **changes)
        return self.turn

    async def show(self, text: str, *, now: bool = False, **post: Any) -> None:
        """A status update, with the Cancel button while the turn is queued or running."""
        buttons = (Button("cancel", self.turn.id),)
        await self.status.show(Post(text=f"Turn {self.turn.id}: {text}", buttons=buttons, **post), now=now)

    async def end(self, state: TurnStatus, text: str, *, retry: bool) -> None:
        """Finish the turn as failed or cancelled (unless something already finished it)."""
        if not self.turn.status.finished:
            await self.save(status=state, error=text if state == TurnStatus.FAILED else None)
        buttons = (Button("retry", self.turn.id),) if retry else ()
        await self.status.finish(Post(text=f"Turn {self.turn.id}: {text}", buttons=buttons))
