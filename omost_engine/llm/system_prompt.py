"""The system prompt the Omost models were tuned with (SPEC.md section 7).

The prompt is one sentence, a blank line, then a python code block holding the `Canvas` class of
Omost's "Symbols" section with each method signature on one line and each `assert ... in [...]`
list on one line, items separated by ", ". The allowed strings come from the vocabularies in
`omost_engine.canvas` (their dict order is the order the models were tuned with), so the prompt
and the validator can never disagree.

This module owns only the text; it knows nothing of tokenizers, models or chats.
"""

from __future__ import annotations

from collections.abc import Iterable

from omost_engine.canvas import AREAS, LOCATIONS, OFFSETS

INTRODUCTION = "You are a helpful AI assistant to compose images using the below python class `Canvas`:"

_GLOBAL_SIGNATURE = (
    "def set_global_description(self, description: str, detailed_descriptions: list[str], "
    "tags: str, HTML_web_color_name: str):"
)
_LOCAL_SIGNATURE = (
    "def add_local_description(self, location: str, offset: str, area: str, "
    "distance_to_viewer: float, description: str, detailed_descriptions: list[str], tags: str, "
    "atmosphere: str, style: str, quality_meta: str, HTML_web_color_name: str):"
)


def _one_line_list(items: Iterable[str]) -> str:
    return "[" + ", ".join(f'"{item}"' for item in items) + "]"


def canvas_class_source() -> str:
    """The `Canvas` class as the models saw it, signatures and assert lists on single lines."""
    lines = [
        "class Canvas:",
        f"    {_GLOBAL_SIGNATURE}",
        "        pass",
        "",
        f"    {_LOCAL_SIGNATURE}",
        f"        assert location in {_one_line_list(LOCATIONS)}",
        f"        assert offset in {_one_line_list(OFFSETS)}",
        f"        assert area in {_one_line_list(AREAS)}",
        "        assert distance_to_viewer > 0",
        "        pass",
    ]
    return "\n".join(lines)


def build_system_prompt() -> str:
    """The full system prompt: the introduction, a blank line, the class in a python block."""
    return f"{INTRODUCTION}\n\n```python\n{canvas_class_source()}\n```"


SYSTEM_PROMPT = build_system_prompt()
"""Built once at import; the vocabularies are constants."""
