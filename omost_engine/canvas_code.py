"""Text <-> Canvas: reads an Omost answer as data and writes canonical Canvas code.

The reference Omost code `exec`s the model's answer, which gives anyone who can steer the model a
shell on the host (SPEC.md section 1). Here the code block is parsed with `ast` and only this
shape is interpreted:

    canvas = Canvas()
    canvas.set_global_description(<keyword>=<literal>, ...)
    canvas.add_local_description(<keyword>=<literal>, ...)     # repeated

Arguments may also be passed by position, in the order of Omost's method signatures (read as
data, the way Python would bind them). Literals are str, int/float (a leading minus allowed so
the error can say "must be positive"; 1e999 reads as infinity, as in Omost) and lists of str
(a tuple is read as a list). Only the first ```python block of an answer is read. Comments
and blank lines may stand anywhere. Nothing is ever executed, evaluated or compiled into a
code object; `ast.parse` only builds a syntax tree.

Errors are `CanvasError` (from canvas.py) with the line in the code and what was expected.
This module knows nothing of chats, models or GPUs.
"""

from __future__ import annotations

import ast
import difflib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from omost_engine.canvas import (
    Canvas,
    CanvasError,
    CorrectionLog,
    GlobalDescription,
    Region,
    build_global,
    build_region,
)

# Limits: far above any real answer (the seed's second answer is 13 KB with 6 regions), low
# enough that a hostile or runaway answer costs milliseconds, not memory.
MAX_INPUT_CHARS = 200_000
MAX_REGIONS = 64
MAX_STRING_CHARS = 4_000
MAX_LIST_ITEMS = 64
MAX_NESTING = 4  # brackets open at once; a real answer needs 2: the call and a list

PSEUDO_FILENAME = "<canvas code>"
"""ast.parse's filename. On a syntax error CPython tries to open it to quote the line; no such file."""

GLOBAL_METHOD = "set_global_description"
LOCAL_METHOD = "add_local_description"

_Kind = str  # "str" | "list" | "number"
GLOBAL_FIELDS: dict[str, _Kind] = {
    "description": "str",
    "detailed_descriptions": "list",
    "tags": "str",
    "HTML_web_color_name": "str",
}
LOCAL_FIELDS: dict[str, _Kind] = {
    "location": "str",
    "offset": "str",
    "area": "str",
    "distance_to_viewer": "number",
    "description": "str",
    "detailed_descriptions": "list",
    "tags": "str",
    "atmosphere": "str",
    "style": "str",
    "quality_meta": "str",
    "HTML_web_color_name": "str",
}

_EXPECTED = (
    "expected `canvas = Canvas()`, `canvas.set_global_description(...)` or "
    "`canvas.add_local_description(...)`"
)

# --- finding the code in an answer --------------------------------------------------------------

_FENCE = re.compile(r"^[ \t]*```[ \t]*([A-Za-z0-9_+-]*)[ \t]*$")
_PYTHON_LANGS = {"python", "py", "python3", ""}
_CLOSING_FENCE = re.compile(r"^[ \t]*```", re.MULTILINE)


@dataclass(frozen=True)
class CodeBlock:
    code: str
    first_line: int  # 1-based line of the answer where the code starts


def find_code(text: str) -> CodeBlock:
    """The canvas code in a whole answer: its first ```python block, or the text itself if bare code.

    Like Omost, the first complete python block is the canvas and any later block is ignored
    (an answer that quotes its canvas twice is still drawn).
    """
    _check_size(text)
    lines = text.split("\n")
    open_at: int | None = None
    open_lang = ""
    for i, line in enumerate(lines):
        m = _FENCE.match(line)
        if not m:
            continue
        if open_at is None:
            open_at, open_lang = i, m.group(1).lower()
        elif m.group(1) == "":
            if open_lang in _PYTHON_LANGS:
                return CodeBlock("\n".join(lines[open_at + 1 : i]), open_at + 2)
            open_at = None
    if open_at is not None and open_lang in _PYTHON_LANGS:
        raise CanvasError(
            f"the code block opened on line {open_at + 1} of the answer is never closed with ```"
        )
    if not re.search(r"\bcanvas\s*[=.]|\bCanvas\(", text):
        raise CanvasError("the answer holds no ```python code block with a canvas")
    return CodeBlock(text, 1)


def _check_size(text: str) -> None:
    if len(text) > MAX_INPUT_CHARS:
        raise CanvasError(
            f"the answer is {len(text):,} characters long; at most {MAX_INPUT_CHARS:,} are read"
        )


# --- a small lexical scanner: statement boundaries and bracket depth, without tokenize ----------


class _Scanner:
    """Follows brackets, strings and comments over a growing text, one character at a time.

    Reports where each top-level statement ends (the closing bracket that returns the depth to 0,
    or the end of a line holding code outside brackets) and refuses nesting deeper than
    MAX_NESTING before `ast` ever sees the text.
    """

    def __init__(self) -> None:
        self.pos = 0
        self.line = 1
        self.depth = 0
        self.quote = ""  # the open string's delimiter: ', ", ''' or """
        self.escape = False
        self.comment = False
        self.pending = False  # code seen outside brackets since the statement started
        self.statement_start = 0
        self.statement_line = 1

    def scan(self, text: str) -> Iterator[tuple[int, int, int]]:
        """Yield (start, end, first_line) of each statement that ends in text[pos:]."""
        n = len(text)
        i = self.pos
        while i < n:
            c = text[i]
            step = 1
            if c == "\n":
                self.line += 1
            if self.quote:
                if self.escape:
                    self.escape = False
                elif c == "\\":
                    self.escape = True
                elif c == self.quote[0]:
                    if len(self.quote) == 1:
                        self.quote = ""
                    elif i + 3 > n and text[i:n] == c * (n - i):
                        break  # cannot tell the closing triple quote yet
                    elif text.startswith(self.quote, i):
                        self.quote, step = "", 3
            elif self.comment:
                if c == "\n":
                    self.comment = False
                    if self.depth == 0:
                        yield from self._end_line(i)
            elif c in "'\"":
                if i + 3 > n and text[i:n] == c * (n - i):
                    break  # cannot tell ' from ''' yet
                self.quote = c * 3 if text.startswith(c * 3, i) else c
                step = len(self.quote)
                self.pending = True
            elif c == "#":
                self.comment = True
            elif c in "([{":
                self.depth += 1
                self.pending = True
                if self.depth > MAX_NESTING:
                    raise CanvasError(
                        f"brackets are nested more than {MAX_NESTING} deep; expected a call "
                        "with literal arguments and flat lists of strings",
                        self.line,
                    )
            elif c in ")]}":
                self.depth = max(0, self.depth - 1)
                if self.depth == 0:
                    yield self.statement_start, i + 1, self.statement_line
                    self.pending = False
                    self.statement_start, self.statement_line = i + 1, self.line
            elif c == "\n":
                if self.depth == 0:
                    yield from self._end_line(i)
            elif not c.isspace():
                self.pending = True
            i += step
            self.pos = i
        self.pos = i

    def _end_line(self, i: int) -> Iterator[tuple[int, int, int]]:
        """A newline outside brackets: code since the statement start is a statement."""
        if self.pending:
            yield self.statement_start, i, self.statement_line
            self.pending = False
        self.statement_start, self.statement_line = i + 1, self.line


# --- the interpreter: syntax tree -> Canvas, one statement at a time ----------------------------


@dataclass(frozen=True)
class GlobalParsed:
    """The global description is complete (streaming)."""

    global_description: GlobalDescription
    line: int


@dataclass(frozen=True)
class RegionParsed:
    """A local description is complete (streaming). `index` is 1-based in the order written."""

    index: int
    region: Region
    line: int


CanvasEvent = GlobalParsed | RegionParsed


def _describe(node: ast.AST) -> str:
    """What a piece of syntax is, in words for the error message."""
    names: dict[type[ast.AST], str] = {
        ast.Import: "an import",
        ast.ImportFrom: "an import",
        ast.FunctionDef: "a function definition",
        ast.AsyncFunctionDef: "a function definition",
        ast.ClassDef: "a class definition",
        ast.Lambda: "a lambda",
        ast.JoinedStr: "an f-string",
        ast.ListComp: "a comprehension",
        ast.SetComp: "a comprehension",
        ast.DictComp: "a comprehension",
        ast.GeneratorExp: "a generator expression",
        ast.Starred: "a starred (*) argument",
        ast.Attribute: "attribute access",
        ast.Subscript: "a subscript",
        ast.BinOp: "an arithmetic expression",
        ast.BoolOp: "a boolean expression",
        ast.Compare: "a comparison",
        ast.IfExp: "a conditional expression",
        ast.Name: "a variable name",
        ast.Dict: "a dict",
        ast.Set: "a set",
        ast.Await: "an await",
        ast.Yield: "a yield",
        ast.NamedExpr: "an assignment expression",
        ast.For: "a loop",
        ast.While: "a loop",
        ast.If: "an if statement",
        ast.With: "a with statement",
        ast.Try: "a try statement",
        ast.Global: "a global statement",
        ast.Delete: "a del statement",
        ast.AugAssign: "an augmented assignment",
        ast.Assert: "an assert",
        ast.Raise: "a raise",
        ast.Return: "a return",
        ast.Pass: "a pass statement",
    }
    if isinstance(node, ast.Call):
        return f"a call to {ast.unparse(node.func)[:60]}"
    if isinstance(node, ast.Constant):
        return f"a {type(node.value).__name__} literal"
    if isinstance(node, ast.List | ast.Tuple):
        return "a list"
    if isinstance(node, ast.Assign):
        return "an assignment"
    if isinstance(node, ast.Expr):
        return _describe(node.value)
    return names.get(type(node), f"a {type(node).__name__} node")


class _Interpreter:
    """Turns the allowed statements into Canvas parts; rejects everything else."""

    def __init__(self) -> None:
        self.has_canvas = False
        self.global_description: GlobalDescription | None = None
        self.global_line = 0
        self.regions: list[Region] = []
        self.log = CorrectionLog()

    def statement(self, node: ast.stmt) -> CanvasEvent | None:
        line = node.lineno
        if isinstance(node, ast.Assign):
            if self._is_canvas_creation(node):
                if self.has_canvas:
                    raise CanvasError("`canvas = Canvas()` appears twice; expected it once", line)
                self.has_canvas = True
                return None
            raise CanvasError(f"{_EXPECTED}, found an assignment that is not `canvas = Canvas()`", line)
        if not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)):
            raise CanvasError(f"{_EXPECTED}, found {_describe(node)}", line)
        call = node.value
        method = self._method_name(call, line)
        if not self.has_canvas:
            raise CanvasError(f"canvas.{method}(...) comes before `canvas = Canvas()`", line)
        fields = GLOBAL_FIELDS if method == GLOBAL_METHOD else LOCAL_FIELDS
        values = self._arguments(call, method, fields, line)
        if method == GLOBAL_METHOD:
            if self.global_description is not None:
                raise CanvasError(
                    f"set_global_description is called twice (first on line {self.global_line})", line
                )
            self.global_description = build_global(
                description=values["description"],
                detailed_descriptions=values["detailed_descriptions"],
                tags=values["tags"],
                color=values["HTML_web_color_name"],
                log=self.log,
                line=line,
            )
            self.global_line = line
            return GlobalParsed(self.global_description, line)
        if len(self.regions) >= MAX_REGIONS:
            raise CanvasError(
                f"more than {MAX_REGIONS} local descriptions; at most {MAX_REGIONS} are read", line
            )
        region = build_region(
            index=len(self.regions) + 1,
            location=values["location"],
            offset=values["offset"],
            area=values["area"],
            distance_to_viewer=values["distance_to_viewer"],
            description=values["description"],
            detailed_descriptions=values["detailed_descriptions"],
            tags=values["tags"],
            atmosphere=values["atmosphere"],
            style=values["style"],
            quality_meta=values["quality_meta"],
            color=values["HTML_web_color_name"],
            log=self.log,
            line=line,
        )
        self.regions.append(region)
        return RegionParsed(len(self.regions), region, line)

    def result(self) -> Canvas:
        if self.global_description is None:
            raise CanvasError(
                "the canvas has no global description; expected a call to canvas.set_global_description(...)"
            )
        return Canvas(self.global_description, tuple(self.regions), tuple(self.log.items))

    @staticmethod
    def _is_canvas_creation(node: ast.Assign) -> bool:
        value = node.value
        return (
            len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and node.targets[0].id == "canvas"
            and isinstance(value, ast.Call)
            and isinstance(value.func, ast.Name)
            and value.func.id == "Canvas"
            and not value.args
            and not value.keywords
        )

    @staticmethod
    def _method_name(call: ast.Call, line: int) -> str:
        func = call.func
        if not (isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name)):
            raise CanvasError(f"{_EXPECTED}, found {_describe(call)}", line)
        if func.value.id != "canvas":
            raise CanvasError(f"{_EXPECTED}, found a call on {func.value.id!r}", line)
        if func.attr not in (GLOBAL_METHOD, LOCAL_METHOD):
            raise CanvasError(
                f"canvas has no method {func.attr!r}; expected set_global_description or "
                "add_local_description",
                line,
            )
        return func.attr

    def _arguments(self, call: ast.Call, method: str, fields: dict[str, _Kind], line: int) -> dict[str, Any]:
        """The call's arguments by field name: positional ones in the signature's order (as Python
        binds them for Omost's Canvas), then keywords."""
        values: dict[str, Any] = {}  # each value's type is checked by _literal for its field
        if len(call.args) > len(fields):
            raise CanvasError(
                f"canvas.{method}(...) takes {len(fields)} arguments, "
                f"found {len(call.args)} passed by position",
                line,
            )
        for name, node in zip(fields, call.args, strict=False):
            arg_line = getattr(node, "lineno", line)
            if isinstance(node, ast.Starred):
                raise CanvasError(f"canvas.{method}(...) does not take {_describe(node)}", arg_line)
            values[name] = _literal(node, name, fields[name], arg_line)
        for kw in call.keywords:
            kw_line = getattr(kw, "lineno", line)
            if kw.arg is None:
                raise CanvasError(f"canvas.{method}(...) does not take **keyword unpacking", kw_line)
            if kw.arg not in fields:
                near = difflib.get_close_matches(kw.arg, list(fields), n=1)
                hint = f" (did you mean {near[0]!r}?)" if near else ""
                raise CanvasError(f"canvas.{method}(...) has no keyword {kw.arg!r}{hint}", kw_line)
            if kw.arg in values:
                raise CanvasError(f"keyword {kw.arg!r} is given twice (or also by position)", kw_line)
            values[kw.arg] = _literal(kw.value, kw.arg, fields[kw.arg], kw_line)
        missing = [f for f in fields if f not in values]
        if missing:
            raise CanvasError(f"canvas.{method}(...) is missing {', '.join(repr(m) for m in missing)}", line)
        return values


def _literal(node: ast.expr, name: str, kind: _Kind, line: int) -> object:
    line = getattr(node, "lineno", line)
    if kind == "str":
        return _string(node, name, line)
    if kind == "list":
        if not isinstance(node, ast.List | ast.Tuple):
            raise CanvasError(f"{name} must be a list of strings, found {_describe(node)}", line)
        if len(node.elts) > MAX_LIST_ITEMS:
            raise CanvasError(f"{name} has {len(node.elts)} items; at most {MAX_LIST_ITEMS} are read", line)
        return [_string(item, f"each item of {name}", getattr(item, "lineno", line)) for item in node.elts]
    # a number; a sign in front is folded so that -3 reaches the "must be positive" check
    sign = 1.0
    inner: ast.expr = node
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        sign = -1.0 if isinstance(node.op, ast.USub) else 1.0
        inner = node.operand
    if (
        isinstance(inner, ast.Constant)
        and isinstance(inner.value, int | float)
        and not isinstance(inner.value, bool)
    ):
        return sign * float(inner.value)
    raise CanvasError(f"{name} must be a number, found {_describe(node)}", line)


def _string(node: ast.expr, name: str, line: int) -> str:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        if len(node.value) > MAX_STRING_CHARS:
            raise CanvasError(
                f"{name} is {len(node.value):,} characters long; at most {MAX_STRING_CHARS:,} are read",
                line,
            )
        return node.value
    if isinstance(node, ast.JoinedStr):
        raise CanvasError(f"{name} must be a plain string literal; f-strings are not allowed", line)
    raise CanvasError(f"{name} must be a string literal, found {_describe(node)}", line)


def _syntax_tree(code: str, first_line: int = 1) -> ast.Module:
    """ast.parse with the line numbers shifted to `first_line`; syntax errors become CanvasError."""
    try:
        tree = ast.parse(code, filename=PSEUDO_FILENAME, mode="exec")
    except SyntaxError as e:
        line = (e.lineno or 1) + first_line - 1
        raise CanvasError(f"not valid Python syntax: {e.msg}", line) from None
    except (MemoryError, RecursionError, ValueError):
        raise CanvasError("the code is too deeply nested or too large to read") from None
    if first_line != 1:
        ast.increment_lineno(tree, first_line - 1)
    return tree


# --- public API ---------------------------------------------------------------------------------


def parse(text: str) -> Canvas:
    """Read a whole answer (prose around a ```python block) or bare code into a Canvas."""
    block = find_code(text)
    # Deep nesting needs no pre-scan here: CPython's parser refuses more than 200 nested brackets
    # with a SyntaxError, and the interpreter accepts no nesting beyond a flat list anyway.
    interpreter = _Interpreter()
    for node in _syntax_tree(block.code).body:
        interpreter.statement(node)
    return interpreter.result()


class IncrementalParser:
    """Fed a growing answer (as the model streams), yields each part as soon as it is complete.

    `feed(chunk)` returns the GlobalParsed/RegionParsed events completed by that chunk. A problem
    stops the events and is kept in `error`; `finish()` gives the same result as `parse(text)`
    of everything fed (and raises the same error).
    """

    def __init__(self) -> None:
        self.text = ""
        self.error: CanvasError | None = None
        self._code_start: int | None = None
        self._code_end: int | None = None
        self._fence_checked = 0  # offset in the code from which a closing fence may still appear
        self._scanner = _Scanner()
        self._interpreter = _Interpreter()

    def feed(self, chunk: str) -> list[CanvasEvent]:
        self.text += chunk
        if self.error is not None or self._code_end is not None:
            return []
        events: list[CanvasEvent] = []
        try:
            _check_size(self.text)
            self._advance(events)
        except CanvasError as e:
            self.error = e
        return events

    def finish(self) -> Canvas:
        return parse(self.text)

    def _advance(self, events: list[CanvasEvent]) -> None:
        if self._code_start is None:
            self._code_start = self._find_code_start()
            if self._code_start is None:
                return
        code = self.text[self._code_start :]
        # A closing fence ends the code. Only the text after the last complete line can hold a new
        # one, so each feed searches a few characters rather than the whole answer.
        fence = _CLOSING_FENCE.search(code, max(0, self._fence_checked))
        if fence is not None:
            self._code_end = self._code_start + fence.start()
            code = code[: fence.start()]
        else:
            self._fence_checked = code.rfind("\n") + 1
        for start, end, first_line in self._scanner.scan(code):
            snippet = code[start:end]
            if not snippet.strip():
                continue
            # Statements begin at column 0; a snippet may carry the previous line's comment tail.
            snippet_line = first_line + snippet[: len(snippet) - len(snippet.lstrip())].count("\n")
            for node in _syntax_tree(snippet.strip(), snippet_line).body:
                event = self._interpreter.statement(node)
                if event is not None:
                    events.append(event)

    def _find_code_start(self) -> int | None:
        for m in re.finditer(r"^[ \t]*```[ \t]*([A-Za-z0-9_+-]*)[ \t]*\n", self.text, re.MULTILINE):
            if m.group(1).lower() in _PYTHON_LANGS:
                return m.end()
        stripped = self.text.lstrip()
        if "```" not in self.text and (stripped.startswith(("canvas", "#"))):
            return 0
        return None


# --- the canonical writer -----------------------------------------------------------------------


def _lit(value: str) -> str:
    return repr(value)


def _number(value: float) -> str:
    # repr(inf) is "inf", a variable name the reader refuses; 1e999 is the literal that reads as inf.
    return "1e999" if value == float("inf") else repr(value)


def _list(items: tuple[str, ...], indent: str) -> str:
    if not items:
        return "[]"
    inner = "".join(f"{indent}    {_lit(s)},\n" for s in items)
    return f"[\n{inner}{indent}]"


def _comment(text: str) -> str:
    text = " ".join(text.split())
    return text[:1].lower() + text[1:] if text else text


def to_code(canvas: Canvas) -> str:
    """Canonical Omost code for a canvas, in the style the models write; parse() reads it back."""
    g = canvas.global_description
    out = [
        "# Initialize the canvas",
        "canvas = Canvas()",
        "",
        "# Set a global description for the canvas",
        "canvas.set_global_description(",
        f"    description={_lit(g.description)},",
        f"    detailed_descriptions={_list(g.detailed_descriptions, '    ')},",
        f"    tags={_lit(g.tags)},",
        f"    HTML_web_color_name={_lit(g.color)},",
        ")",
    ]
    for r in canvas.regions:
        out += [
            "",
            f"# Add {_comment(r.description)}",
            "canvas.add_local_description(",
            f"    location={_lit(r.location)},",
            f"    offset={_lit(r.offset)},",
            f"    area={_lit(r.area)},",
            f"    distance_to_viewer={_number(r.distance_to_viewer)},",
            f"    description={_lit(r.description)},",
            f"    detailed_descriptions={_list(r.detailed_descriptions, '    ')},",
            f"    tags={_lit(r.tags)},",
            f"    atmosphere={_lit(r.atmosphere)},",
            f"    style={_lit(r.style)},",
            f"    quality_meta={_lit(r.quality_meta)},",
            f"    HTML_web_color_name={_lit(r.color)},",
            ")",
        ]
    return "\n".join(out) + "\n"


def to_answer(canvas: Canvas) -> str:
    """The canonical code wrapped in a ```python block, as the models answer."""
    return f"```python\n{to_code(canvas)}```"
