"""A chat platform in memory: records every post and edit the bot makes, through the real port."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from adapters.base import ButtonPress, Handler, Incoming, MessageRef, Post


@dataclass
class Sent:
    ref: MessageRef
    post: Post
    edits: list[Post] = field(default_factory=list)

    @property
    def current(self) -> Post:
        return self.edits[-1] if self.edits else self.post


class FakeAdapter:
    """`platform` is configurable so two adapters can share a store; `edit_fails` makes edits of
    those message ids answer with a new message, as a platform does for a message too old to edit."""

    def __init__(self, platform: str = "fake", min_edit_interval: float = 0.0) -> None:
        self.platform = platform
        self.min_edit_interval = min_edit_interval
        self.answers: list[str | None] = []  # what each button press told the presser privately
        self.sent: list[Sent] = []
        self.handler: Handler | None = None
        self.edit_fails: set[str] = set()
        self._ids = itertools.count(1000)

    def edit_interval(self, chat: str) -> float:
        return self.min_edit_interval

    async def start(self, handler: Handler) -> None:
        self.handler = handler

    async def stop(self) -> None:
        self.handler = None

    async def send(self, chat: str, thread: str, post: Post) -> list[MessageRef]:
        refs = [MessageRef(self.platform, chat, str(next(self._ids)), thread)]
        refs += [MessageRef(self.platform, chat, str(next(self._ids)), thread) for _ in post.files]
        self.sent.append(Sent(refs[0], post))
        return refs

    async def edit(self, ref: MessageRef, post: Post) -> MessageRef:
        if ref.message_id in self.edit_fails:
            return (await self.send(ref.chat, ref.thread, post))[0]
        for sent in self.sent:
            if sent.ref == ref:
                sent.edits.append(post)
                return ref
        raise KeyError(f"edit of a message never sent: {ref}")

    # --- driving the bot, as a user would ------------------------------------------------------

    _in = itertools.count(1)

    async def say(
        self,
        text: str,
        *,
        user: str = "alice",
        chat: str = "c1",
        reply_to: str | None = None,
        command: str | None = None,
        **kw: object,
    ) -> Incoming:
        message = Incoming(
            platform=self.platform,
            chat=chat,
            message_id=f"u{next(self._in)}",
            user=user,
            text=text,
            reply_to=reply_to,
            command=command,
            **kw,
        )  # type: ignore[arg-type]
        assert self.handler is not None
        await self.handler.on_message(self, message)
        return message

    async def press(
        self, action: str, turn_id: int, *, user: str = "alice", chat: str = "c1", value: str = ""
    ) -> str | None:
        """Press a button (or pick a Choice's `value`) as `user`; returns the private answer the
        presser was shown."""
        assert self.handler is not None
        press = ButtonPress(self.platform, chat, user, action, turn_id, value=value)
        answer = await self.handler.on_button(self, press)
        self.answers.append(answer)
        return answer

    def posts(self, role: str) -> list[Sent]:
        return [s for s in self.sent if s.post.role == role]

    def texts(self) -> list[str]:
        return [s.current.text for s in self.sent]
