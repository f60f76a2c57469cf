"""The one user-facing error of the turn flow.

    UserError    a request cannot go on; str(e) is the reply, written for the person in the chat

Raised wherever the flow finds the problem (a bad setting, an unreadable attachment, no such turn)
and turned into a reply in exactly one place: the handler's `on_message` / `on_button`. Nothing
in the turn flow passes error strings or (value, problem) tuples around.
"""

from __future__ import annotations


class UserError(Exception):
    """A request the bot cannot take, with the reply that says why."""

    def __init__(self, reply: str) -> None:
        self.reply = reply
        super().__init__(reply)
