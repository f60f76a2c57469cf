"""The safe parser, the incremental parser and the canonical writer (SPEC 1, 3)."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from omost_engine.canvas import AREAS, COLORS, LOCATIONS, OFFSETS, CanvasError
from omost_engine.canvas_code import (
    MAX_INPUT_CHARS,
    MAX_LIST_ITEMS,
    MAX_REGIONS,
    MAX_STRING_CHARS,
    PSEUDO_FILENAME,
    GlobalParsed,
    IncrementalParser,
    RegionParsed,
    parse,
    to_answer,
    to_code,
)
from tests.seed import seed_answers

GLOBAL = (
    "canvas.set_global_description(description='A room.', detailed_descriptions=['Warm light.'], "
    "tags='room', HTML_web_color_name='white')"
)
LOCAL = (
    "canvas.add_local_description(location='in the center', offset='no offset', area='a small square area', "
    "distance_to_viewer=2.0, description='A cat.', detailed_descriptions=['Black fur.'], tags='cat', "
    "atmosphere='calm', style='photo', quality_meta='sharp', HTML_web_color_name='black')"
)
VALID = f"canvas = Canvas()\n{GLOBAL}\n{LOCAL}\n"


def test_seed_answers_parse() -> None:
    first, second = (parse(a) for a in seed_answers())
    assert len(first.regions) == 5 and len(second.regions) == 6
    assert second.regions[-1].description == "Meteorites crashing into the ground."
    assert second.regions[-1].distance_to_viewer == 9.0
    assert first.global_description.color == "darkslategray"
    assert len(first.global_description.detailed_descriptions) == 7
    # the edit turn kept the five regions and added one
    assert second.regions[:5] == first.regions


def test_prose_around_the_block_and_bare_code_are_both_read() -> None:
    wrapped = f"Sure! Here is your image:\n\n```python\n{VALID}```\n\nEnjoy."
    assert parse(wrapped) == parse(VALID)
    assert parse(f"```py\n{VALID}```") == parse(VALID)


def _error(text: str) -> CanvasError:
    with pytest.raises(CanvasError) as e:
        parse(text)
    return e.value


# Each case: code, the line the error must name (None: no line), words the message must contain.
HOSTILE: list[tuple[str, str, int | None, str]] = [
    ("import", f"import os\n{VALID}", 1, "an import"),
    ("from-import", f"from os import system\n{VALID}", 1, "an import"),
    ("dunder", f"{VALID}canvas.__class__.__bases__\n", 4, "expected"),
    ("attribute-call", f"canvas = Canvas()\n{GLOBAL}\nos.system('ls')\n", 3, "a call on 'os'"),
    ("other-call", f"{VALID}print('hi')\n", 4, "a call to print"),
    (
        "builtin-in-arg",
        f"canvas = Canvas()\n{GLOBAL.replace(chr(39) + 'room' + chr(39), '__import__(' + chr(39) + 'os' + chr(39) + ')')}\n",
        2,
        "tags must be a string literal, found a call to __import__",
    ),
    ("lambda", f"{VALID}f = lambda: 1\n", 4, "assignment"),
    (
        "lambda-arg",
        f"canvas = Canvas()\n{GLOBAL.replace(chr(39) + 'room' + chr(39), 'lambda: 1')}\n",
        2,
        "a lambda",
    ),
    (
        "fstring",
        f"canvas = Canvas()\n{GLOBAL.replace(chr(39) + 'room' + chr(39), 'f' + chr(39) + '{1}' + chr(39))}\n",
        2,
        "f-strings are not allowed",
    ),
    (
        "comprehension",
        f"canvas = Canvas()\n{GLOBAL.replace(chr(91) + chr(39) + 'Warm light.' + chr(39) + chr(93), '[x for x in y]')}\n",
        2,
        "a comprehension",
    ),
    ("starred", "canvas = Canvas()\ncanvas.set_global_description(*args)\n", 2, "a starred"),
    ("kwargs", "canvas = Canvas()\ncanvas.set_global_description(**kw)\n", 2, "keyword unpacking"),
    (
        "too-many-positional",
        "canvas = Canvas()\ncanvas.set_global_description('A room', [], 'room', 'white', 'x')\n",
        2,
        "takes 4 arguments, found 5",
    ),
    (
        "positional-and-keyword",
        "canvas = Canvas()\ncanvas.set_global_description('A room', [], 'room', 'white', tags='x')\n",
        2,
        "'tags' is given twice",
    ),
    ("unknown-keyword", f"canvas = Canvas()\n{GLOBAL[:-1]}, colour='red')\n", 2, "no keyword 'colour'"),
    ("duplicate-keyword", f"canvas = Canvas()\n{GLOBAL[:-1]}, tags='again')\n", 2, "tags"),
    (
        "missing-keyword",
        "canvas = Canvas()\ncanvas.set_global_description(description='A room.')\n",
        2,
        "missing",
    ),
    (
        "wrong-type-str",
        f"canvas = Canvas()\n{GLOBAL.replace(chr(39) + 'room' + chr(39), '42')}\n",
        2,
        "tags must be a string literal, found a int literal",
    ),
    (
        "wrong-type-list",
        f"canvas = Canvas()\n{GLOBAL.replace(chr(91) + chr(39) + 'Warm light.' + chr(39) + chr(93), chr(39) + 'x' + chr(39))}\n",
        2,
        "must be a list of strings",
    ),
    (
        "list-of-non-str",
        f"canvas = Canvas()\n{GLOBAL.replace(chr(39) + 'Warm light.' + chr(39), '1')}\n",
        2,
        "each item of detailed_descriptions",
    ),
    (
        "bool-distance",
        f"canvas = Canvas()\n{GLOBAL}\n{LOCAL.replace('2.0', 'True')}\n",
        3,
        "must be a number",
    ),
    (
        "negative-distance",
        f"canvas = Canvas()\n{GLOBAL}\n{LOCAL.replace('2.0', '-3')}\n",
        3,
        "must be a positive number",
    ),
    (
        "zero-distance",
        f"canvas = Canvas()\n{GLOBAL}\n{LOCAL.replace('2.0', '0')}\n",
        3,
        "must be a positive number",
    ),
    (
        "nan-distance",
        f"canvas = Canvas()\n{GLOBAL}\n{LOCAL.replace('2.0', 'float(' + chr(39) + 'nan' + chr(39) + ')')}\n",
        3,
        "must be a number",
    ),
    (
        "minus-inf-distance",
        f"canvas = Canvas()\n{GLOBAL}\n{LOCAL.replace('2.0', '-1e999')}\n",
        3,
        "must be a positive number",
    ),
    ("missing-global", f"canvas = Canvas()\n{LOCAL}\n", None, "no global description"),
    ("two-globals", f"canvas = Canvas()\n{GLOBAL}\n{GLOBAL}\n", 3, "called twice"),
    ("no-canvas", f"{GLOBAL}\n", 1, "before `canvas = Canvas()`"),
    ("other-object", f"canvas = Canvas()\nc2 = canvas\n{GLOBAL}\n", 2, "assignment"),
    ("unknown-method", "canvas = Canvas()\ncanvas.add(location=1)\n", 2, "no method 'add'"),
    ("subscript", f"{VALID}canvas[0]\n", 4, "subscript"),
    ("loop", f"{VALID}for i in range(9):\n    pass\n", 4, "a loop"),
    ("def", f"{VALID}def f():\n    pass\n", 4, "a function definition"),
    ("class", f"{VALID}class X:\n    pass\n", 4, "a class definition"),
    ("with", f"{VALID}with open('/etc/passwd') as f:\n    pass\n", 4, "a with statement"),
    (
        "walrus-arg",
        f"canvas = Canvas()\n{GLOBAL.replace(chr(39) + 'room' + chr(39), '(x := 1)')}\n",
        2,
        "assignment expression",
    ),
    (
        "syntax-error",
        "canvas = Canvas()\ncanvas.set_global_description(description='A room'\n",
        None,
        "syntax",
    ),
    ("unterminated", f"Here:\n```python\n{VALID}", None, "never closed"),
    ("no-code", "I cannot draw that, sorry.", None, "no ```python code block"),
    (
        "megabyte-string",
        f"canvas = Canvas()\n{GLOBAL.replace('A room.', 'x' * (MAX_STRING_CHARS + 1))}\n",
        2,
        "characters long",
    ),
    ("huge-input", f"{VALID}#" + "x" * MAX_INPUT_CHARS, None, "at most"),
    (
        "deep-nesting",
        f"canvas = Canvas()\n{GLOBAL.replace(chr(91) + chr(39) + 'Warm light.' + chr(39) + chr(93), '[' * 5000 + ']' * 5000)}\n",
        2,
        "nested",
    ),
    (
        "nested-list",
        f"canvas = Canvas()\n{GLOBAL.replace(chr(39) + 'Warm light.' + chr(39), '[' + chr(39) + 'a' + chr(39) + ']')}\n",
        2,
        "each item of detailed_descriptions must be a string literal, found a list",
    ),
    (
        "long-list",
        f"canvas = Canvas()\n{GLOBAL.replace(chr(39) + 'Warm light.' + chr(39), ', '.join([chr(39) + 'a' + chr(39)] * (MAX_LIST_ITEMS + 1)))}\n",
        2,
        "items",
    ),
    (
        "too-many-regions",
        f"canvas = Canvas()\n{GLOBAL}\n" + f"{LOCAL}\n" * (MAX_REGIONS + 1),
        MAX_REGIONS + 3,
        "at most",
    ),
]


@pytest.mark.parametrize(("code", "line", "words"), [c[1:] for c in HOSTILE], ids=[c[0] for c in HOSTILE])
def test_hostile_input_is_rejected_with_a_useful_message(code: str, line: int | None, words: str) -> None:
    error = _error(code)
    assert words in str(error)
    if line is not None:
        assert error.line == line
        assert str(error).startswith(f"line {line}: ")


def test_parsing_the_hostile_corpus_runs_nothing() -> None:
    """No exec, import, open or subprocess audit event fires while any input is parsed."""
    # warm up: any lazy imports inside the parser happen before we start watching
    parse(VALID)
    answers = seed_answers()
    seen: list[str] = []
    watching = True

    def hook(event: str, args: tuple[object, ...]) -> None:
        if event == "open" and args and args[0] == PSEUDO_FILENAME:
            return  # CPython looks for the source of a SyntaxError under ast.parse's filename
        if watching and (
            event in {"exec", "import", "open", "os.system", "subprocess.Popen", "os.exec", "os.posix_spawn"}
            or event.startswith(("os.", "subprocess.", "socket.", "ctypes."))
        ):
            seen.append(event)

    sys.addaudithook(hook)
    try:
        for _, code, _, _ in HOSTILE:
            try:  # not pytest.raises: its traceback rendering opens source files
                parse(code)
            except CanvasError:
                pass
            else:
                seen.append("accepted a hostile input")
            parser = IncrementalParser()
            for i in range(0, len(code), 97):
                parser.feed(code[i : i + 97])
        for answer in answers:
            parse(answer)
    finally:
        watching = False  # audit hooks cannot be removed; this one goes quiet
    assert seen == []


def test_comments_and_blank_lines_are_allowed_anywhere() -> None:
    code = f"# a canvas\n\ncanvas = Canvas()  # create\n\n# global\n{GLOBAL}  # done\n\n\n{LOCAL}\n# end\n"
    assert parse(code) == parse(VALID)


# --- incremental parsing ------------------------------------------------------------------------


def _stream(text: str, sizes: Iterator[int]) -> tuple[IncrementalParser, list[object], list[int]]:
    parser = IncrementalParser()
    events: list[object] = []
    arrival: list[int] = []
    i = 0
    while i < len(text):
        n = next(sizes)
        got = parser.feed(text[i : i + n])
        i += n
        events += got
        arrival += [i] * len(got)
    return parser, events, arrival


def test_incremental_yields_each_call_when_its_parenthesis_arrives() -> None:
    answer = seed_answers()[1]
    parser, events, arrival = _stream(answer, iter(lambda: 1, 0))
    canvas = parse(answer)
    assert isinstance(events[0], GlobalParsed)
    assert events[0].global_description == canvas.global_description
    regions = [e for e in events if isinstance(e, RegionParsed)]
    assert [e.region for e in regions] == list(canvas.regions)
    assert [e.index for e in regions] == [1, 2, 3, 4, 5, 6]
    # each event arrives exactly with the ')' that closes its call
    for event, at in zip(events, arrival, strict=True):
        assert answer[at - 1] == ")"
        assert isinstance(event, GlobalParsed | RegionParsed)
    assert parser.error is None
    assert parser.finish() == canvas


def test_incremental_event_lines_match_the_code() -> None:
    answer = seed_answers()[0]
    _, events, _ = _stream(answer, iter(lambda: 7, 0))
    code_lines = answer.split("\n")[1:]  # the code starts after the ```python line
    for event in events:
        assert isinstance(event, GlobalParsed | RegionParsed)
        assert code_lines[event.line - 1].startswith("canvas.")


def test_incremental_reports_a_bad_statement_and_stops() -> None:
    parser = IncrementalParser()
    events = parser.feed(f"```python\ncanvas = Canvas()\n{GLOBAL}\nimport os\n{LOCAL}\n```")
    assert len(events) == 1 and isinstance(events[0], GlobalParsed)
    assert parser.error is not None and parser.error.line == 3 and "an import" in str(parser.error)
    with pytest.raises(CanvasError):
        parser.finish()


def test_incremental_waits_for_prose_then_code() -> None:
    parser = IncrementalParser()
    assert parser.feed("Sure, here is ") == []
    assert parser.feed("the canvas:\n```pyth") == []
    assert parser.feed(f"on\ncanvas = Canvas()\n{GLOBAL[:40]}") == []
    events = parser.feed(GLOBAL[40:] + "\n")
    assert len(events) == 1
    assert parser.feed("```\nBye (really).") == []


# --- canonical writer ---------------------------------------------------------------------------


def test_to_code_round_trips_the_seed() -> None:
    for answer in seed_answers():
        canvas = parse(answer)
        code = to_code(canvas)
        assert parse(code) == canvas
        assert parse(to_answer(canvas)) == canvas
        assert to_code(parse(code)) == code  # canonical: a fixed point


def test_to_code_looks_like_omost() -> None:
    code = to_code(parse(seed_answers()[0]))
    assert code.startswith("# Initialize the canvas\ncanvas = Canvas()\n")
    assert "# Add a group of warriors fighting a dinosaur.\ncanvas.add_local_description(\n" in code
    assert "    distance_to_viewer=5.0,\n" in code


# --- property tests -----------------------------------------------------------------------------

_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=0, max_size=60
)
_prompt = _text.filter(lambda s: s.strip(",. \t\r\n") != "")


def _literal_str(draw: st.DrawFn, strategy: st.SearchStrategy[str]) -> str:
    return repr(draw(strategy))


@st.composite
def canvas_code(draw: st.DrawFn) -> str:
    def name(options: list[str]) -> str:
        return repr(draw(st.sampled_from(options)))

    def lst() -> str:
        return "[" + ", ".join(repr(s) for s in draw(st.lists(_text, max_size=4))) + "]"

    lines = ["canvas = Canvas()"]
    lines.append(
        f"canvas.set_global_description(description={_literal_str(draw, _prompt)}, "
        f"detailed_descriptions={lst()}, tags={_literal_str(draw, _text)}, "
        f"HTML_web_color_name={name(list(COLORS))})"
    )
    for _ in range(draw(st.integers(0, 5))):
        distance = draw(st.floats(min_value=0.01, max_value=1e6, allow_nan=False, allow_infinity=False))
        lines.append(
            "canvas.add_local_description(\n"
            f"    location={name(list(LOCATIONS))}, offset={name(list(OFFSETS))}, area={name(list(AREAS))},\n"
            f"    distance_to_viewer={distance!r}, description={_literal_str(draw, _prompt)},\n"
            f"    detailed_descriptions={lst()}, tags={_literal_str(draw, _text)},\n"
            f"    atmosphere={_literal_str(draw, _text)}, style={_literal_str(draw, _text)},\n"
            f"    quality_meta={_literal_str(draw, _text)}, HTML_web_color_name={name(list(COLORS))},\n"
            ")"
        )
        if draw(st.booleans()):
            lines.append("# a comment with ) and ( and ''' in it")
    return "\n".join(lines) + "\n"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(canvas_code())
def test_property_to_code_round_trip(code: str) -> None:
    canvas = parse(code)
    assert parse(to_code(canvas)) == canvas


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(canvas_code(), st.lists(st.integers(1, 40), min_size=1, max_size=50), st.booleans())
def test_property_incremental_equals_one_shot(code: str, sizes: list[int], fenced: bool) -> None:
    text = f"Here you go:\n```python\n{code}```\nDone." if fenced else code
    cycle = iter(sizes * (len(text) // len(sizes) + 2))
    parser, events, _ = _stream(text, cycle)
    canvas = parse(text)
    assert parser.error is None
    assert parser.finish() == canvas
    assert [e.global_description for e in events if isinstance(e, GlobalParsed)] == [
        canvas.global_description
    ]
    assert tuple(e.region for e in events if isinstance(e, RegionParsed)) == canvas.regions
