"""The repair turn: one more try when a backend that cannot enforce the grammar writes a bad canvas.

Where nothing enforces the Canvas grammar (Ollama, a generic server, a refused grammar field,
constrain = "off"), an answer may not parse. The engine then sends the conversation back once
with the bad answer as the assistant's turn and a user message quoting the parser's line-numbered
error and asking for the whole canvas again, at a lower temperature. The system prompt is not
touched (it stays Omost's exactly, SPEC.md section 7); the request travels as an ordinary turn,
so its tokens, and the bad answer's, count toward the context budget like any other turn's.

This module builds that request; the engine (engine.py) decides when to send it. It knows
nothing of chats, torch or servers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from omost_engine.canvas import CanvasError
from omost_engine.canvas_code import find_code
from omost_engine.llm.base import ChatMessage, GenerationParams

REPAIR_TEMPERATURE = 0.2
"""At most this temperature for the repair (0 stays greedy): the model should copy, not invent."""


def backend_enforces_grammar(backend: object) -> bool:
    """True when the backend decodes under the Canvas grammar (then no answer needs repair)."""
    return bool(getattr(backend, "enforces_grammar", False))


def _quoted_line(answer: str, line: int | None) -> str:
    """The code line the error points at, for the request ('' when it cannot be found)."""
    if line is None:
        return ""
    try:
        code = find_code(answer).code.split("\n")
    except CanvasError:
        return ""
    if not 1 <= line <= len(code):
        return ""
    text = code[line - 1].strip()
    return f"\nLine {line} reads: {text[:200]}" if text else ""


def repair_request(answer: str, error: CanvasError) -> str:
    """The user message asking for the whole canvas again, with the parser's error."""
    return (
        f"Your answer is not a valid canvas: {error}.{_quoted_line(answer, error.line)}\n"
        "Write the whole canvas again, from `canvas = Canvas()` to the last local description, as "
        "one ```python code block. Pass every argument by keyword with a literal value, exactly as "
        "the Canvas class defines them."
    )


def repair_messages(
    messages: Sequence[ChatMessage], answer: str, error: CanvasError
) -> tuple[ChatMessage, ...]:
    """The history, the bad answer as the assistant's turn, and the repair request."""
    return (
        *messages,
        ChatMessage("assistant", answer),
        ChatMessage("user", repair_request(answer, error)),
    )


def repair_params(params: GenerationParams) -> GenerationParams:
    """The same parameters at a lower temperature (greedy stays greedy)."""
    return replace(params, temperature=min(params.temperature, REPAIR_TEMPERATURE))
