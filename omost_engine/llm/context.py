"""Fitting a conversation into a model's context window (SPEC.md section 7: treat models as 8k).

The rule: prompt + max_new_tokens must fit. When it does not, whole turns are dropped oldest
first. Never dropped: the system prompt, the newest user message and the latest assistant canvas
(the model rewrites that canvas, so losing it would lose the picture). When even those do not
leave room for the answer, `ContextTooLong` says so in words a chat user can act on.

Also owns the system-prompt default (`with_system_prompt`) and the "does the history hold a
canvas" test that switches on prompt-lookup decoding. Token counting is passed in, so this module
knows nothing of tokenizers, torch or HTTP.

    EngineError (omost_engine.errors)
    +-- ContextTooLong     the protected messages alone leave no room for an answer
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from omost_engine.errors import EngineError
from omost_engine.llm.base import ChatMessage
from omost_engine.llm.system_prompt import SYSTEM_PROMPT

DEFAULT_CONTEXT_TOKENS = 8192
"""SPEC 7: every Omost model is treated as holding 8k tokens."""


class ContextTooLong(EngineError):
    def __init__(self, prompt_tokens: int, context_tokens: int) -> None:
        self.prompt_tokens = prompt_tokens
        self.context_tokens = context_tokens
        super().__init__(
            f"The conversation is too long for the model: the latest canvas and your message alone take "
            f"{prompt_tokens} of its {context_tokens} tokens, leaving no room for an answer. "
            "Start a new conversation or send a shorter message."
        )


def with_system_prompt(messages: Sequence[ChatMessage]) -> list[ChatMessage]:
    """The messages with SPEC 7's system prompt in front, unless they already start with one."""
    if messages and messages[0].role == "system":
        return list(messages)
    return [ChatMessage("system", SYSTEM_PROMPT), *messages]


def holds_canvas(message: ChatMessage) -> bool:
    """True for an assistant answer that carries Canvas code (the thing an edit turn repeats)."""
    return message.role == "assistant" and "Canvas()" in message.content


def has_canvas(messages: Sequence[ChatMessage]) -> bool:
    return any(holds_canvas(m) for m in messages)


@dataclass(frozen=True)
class ContextFit:
    messages: list[ChatMessage]
    prompt_tokens: int
    dropped_messages: int

    def note(self, context_tokens: int) -> str | None:
        """A sentence for the chat user when history was left out, else None."""
        if not self.dropped_messages:
            return None
        plural = "s" if self.dropped_messages != 1 else ""
        return (
            f"Left out the {self.dropped_messages} oldest message{plural} of this conversation so it "
            f"fits the model's {context_tokens}-token context; the latest canvas was kept."
        )


def _protected(messages: Sequence[ChatMessage]) -> set[int]:
    keep: set[int] = set()
    if messages and messages[0].role == "system":
        keep.add(0)
    if messages:
        keep.add(len(messages) - 1)
    for i in range(len(messages) - 1, -1, -1):
        if holds_canvas(messages[i]):
            keep.add(i)
            break
    return keep


def _turns(messages: Sequence[ChatMessage], keep: set[int]) -> list[list[int]]:
    """Droppable message indices grouped by turn (a user message and the answers after it)."""
    turns: list[list[int]] = []
    for i, message in enumerate(messages):
        if i in keep:
            if message.role == "user" and turns:
                turns.append([])  # a protected user message still ends the turn before it
            continue
        if message.role == "user" or not turns:
            turns.append([i])
        else:
            turns[-1].append(i)
    return [t for t in turns if t]


def fit_to_context(
    messages: Sequence[ChatMessage],
    count_tokens: Callable[[Sequence[ChatMessage]], int],
    context_tokens: int,
    max_new_tokens: int,
) -> ContextFit:
    """Drop whole turns, oldest first, until prompt + max_new_tokens fits `context_tokens`.

    Raises ContextTooLong when the protected messages alone leave no room for any answer. When
    they fit but leave less than `max_new_tokens`, the caller shortens the answer instead
    (`ContextFit.prompt_tokens` says how much room is left).
    """
    current = list(messages)
    tokens = count_tokens(current)
    if tokens + max_new_tokens <= context_tokens:
        return ContextFit(current, tokens, 0)
    keep = _protected(messages)
    dropped: set[int] = set()
    for turn in _turns(messages, keep):
        dropped.update(turn)
        current = [m for i, m in enumerate(messages) if i not in dropped]
        tokens = count_tokens(current)
        if tokens + max_new_tokens <= context_tokens:
            break
    if tokens >= context_tokens:
        raise ContextTooLong(tokens, context_tokens)
    return ContextFit(current, tokens, len(dropped))
