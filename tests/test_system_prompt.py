"""The system prompt matches what the Omost models were tuned with (SPEC.md section 7)."""

from __future__ import annotations

import ast
import re

from omost_engine.canvas import AREAS, LOCATIONS, OFFSETS
from omost_engine.llm.base import ChatMessage
from omost_engine.llm.context import with_system_prompt
from omost_engine.llm.system_prompt import SYSTEM_PROMPT

# The reference prompt's assert lines, written out by hand from Omost's "Symbols" section with
# each list on one line: a typo in the vocabularies or in the builder shows up here.
EXPECTED_ASSERTS = [
    'assert location in ["in the center", "on the left", "on the right", "on the top", "on the bottom", '
    '"on the top-left", "on the top-right", "on the bottom-left", "on the bottom-right"]',
    'assert offset in ["no offset", "slightly to the left", "slightly to the right", "slightly to the upper", '
    '"slightly to the lower", "slightly to the upper-left", "slightly to the upper-right", '
    '"slightly to the lower-left", "slightly to the lower-right"]',
    'assert area in ["a small square area", "a small vertical area", "a small horizontal area", '
    '"a medium-sized square area", "a medium-sized vertical area", "a medium-sized horizontal area", '
    '"a large square area", "a large vertical area", "a large horizontal area"]',
]


def _code_block(prompt: str) -> str:
    match = re.search(r"```python\n(.*)\n```$", prompt, re.S)
    assert match, "the prompt must end with one python code block"
    return match.group(1)


def test_prompt_starts_with_the_tuned_sentence_then_a_blank_line() -> None:
    first, blank, third = SYSTEM_PROMPT.split("\n")[:3]
    assert first == "You are a helpful AI assistant to compose images using the below python class `Canvas`:"
    assert blank == ""
    assert third == "```python"


def test_every_allowed_string_appears_quoted_exactly_once_in_order() -> None:
    code = _code_block(SYSTEM_PROMPT)
    for vocabulary in (LOCATIONS, OFFSETS, AREAS):
        positions = [code.index(f'"{name}"') for name in vocabulary]
        assert positions == sorted(positions)
        for name in vocabulary:
            assert code.count(f'"{name}"') == 1, name


def test_assert_lists_are_single_lines_as_the_models_saw_them() -> None:
    lines = [line.strip() for line in _code_block(SYSTEM_PROMPT).split("\n")]
    for expected in EXPECTED_ASSERTS:
        assert expected in lines
    assert "assert distance_to_viewer > 0" in lines


def test_method_signatures_are_on_single_lines() -> None:
    lines = [line.strip() for line in _code_block(SYSTEM_PROMPT).split("\n")]
    assert (
        "def set_global_description(self, description: str, detailed_descriptions: list[str], tags: str, "
        "HTML_web_color_name: str):"
    ) in lines
    assert (
        "def add_local_description(self, location: str, offset: str, area: str, distance_to_viewer: float, "
        "description: str, detailed_descriptions: list[str], tags: str, atmosphere: str, style: str, "
        "quality_meta: str, HTML_web_color_name: str):"
    ) in lines


def test_class_is_valid_python_with_the_two_methods() -> None:
    tree = ast.parse(_code_block(SYSTEM_PROMPT))  # parsed as data, never executed
    (cls,) = tree.body
    assert isinstance(cls, ast.ClassDef) and cls.name == "Canvas"
    assert [f.name for f in cls.body if isinstance(f, ast.FunctionDef)] == [
        "set_global_description",
        "add_local_description",
    ]


def test_system_prompt_is_added_only_when_the_history_has_none() -> None:
    user = ChatMessage("user", "a cat")
    assert with_system_prompt([user]) == [ChatMessage("system", SYSTEM_PROMPT), user]
    own = ChatMessage("system", "be brief")
    assert with_system_prompt([own, user]) == [own, user]
