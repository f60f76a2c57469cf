"""The Canvas grammar: one description of the language, exported in the forms decoders take.

Owns a small grammar tree (literals, character sets, sequences, alternatives, bounded repeats)
built from the parser's own vocabularies and limits (canvas.py's LOCATIONS/OFFSETS/AREAS/COLORS,
canvas_code.py's keyword tables and MAX_* limits), and its three renderings:

    to_lark()    llguidance's Lark dialect (the local backend's matcher; SGLang's llguidance backend);
                 string and comment lengths are left to the processor (LEXEME_MAX_COUNT)
    to_gbnf()    GBNF: llama.cpp's `grammar`, vLLM's `structured_outputs.grammar`, SGLang's `ebnf`
    to_regex()   one regular expression for servers that take only that (TGI); string lengths and
                 repeat counts are left unbounded there (`*`), because bounded repeats multiply the
                 size of the DFA such servers build; the parser still enforces its limits after.

The language is a subset of what `canvas_code.parse` reads (SPEC.md section 1): one ```python
fence, comment lines and blank lines between statements, `canvas = Canvas()`, one
set_global_description call and up to MAX_REGIONS add_local_description calls, each on one line
or with one keyword per line (optional trailing comma), keywords in the Omost order, single- or
double-quoted strings with simple escapes, the closed vocabularies spelled exactly, a positive
distance_to_viewer and non-empty descriptions. Everything it accepts parses with no corrections.

`CanvasAutomaton` is the same tree as a character-level automaton with the bounds relaxed; the
local backend uses it to find the shortest text that completes a canvas from any prefix, so an
answer can always be closed before the token budget runs out. It knows nothing of tokenizers,
models, servers or chats.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from omost_engine.canvas import AREAS, COLORS, LOCATIONS, OFFSETS
from omost_engine.canvas_code import (
    GLOBAL_FIELDS,
    GLOBAL_METHOD,
    LOCAL_FIELDS,
    LOCAL_METHOD,
    MAX_LIST_ITEMS,
    MAX_REGIONS,
    MAX_STRING_CHARS,
)

# --- the grammar tree ------------------------------------------------------------------------


@dataclass(frozen=True)
class Lit:
    text: str


@dataclass(frozen=True)
class CharSet:
    """Characters in `ranges` (inclusive code points), or every character outside them."""

    ranges: tuple[tuple[int, int], ...]
    negate: bool = False

    def __contains__(self, ch: str) -> bool:
        c = ord(ch)
        inside = any(lo <= c <= hi for lo, hi in self.ranges)
        return inside != self.negate

    def example(self) -> str:
        """A plain character of the set, for the shortest completion (prefers 'x', then '1')."""
        for ch in "x1":
            if ch in self:
                return ch
        return chr(self.ranges[0][0])


@dataclass(frozen=True)
class Seq:
    items: tuple[Node, ...]


@dataclass(frozen=True)
class Alt:
    items: tuple[Node, ...]


@dataclass(frozen=True)
class Rep:
    item: Node
    lo: int
    hi: int | None  # None: unbounded


@dataclass(frozen=True)
class Ref:
    name: str


Node = Lit | CharSet | Seq | Alt | Rep | Ref


def seq(*items: Node | str) -> Seq:
    return Seq(tuple(Lit(i) if isinstance(i, str) else i for i in items))


def alt(*items: Node | str) -> Alt:
    return Alt(tuple(Lit(i) if isinstance(i, str) else i for i in items))


def chars(text: str = "", *, negate: bool = False, ranges: Iterable[tuple[int, int]] = ()) -> CharSet:
    points = [(ord(c), ord(c)) for c in text] + list(ranges)
    return CharSet(tuple(sorted(set(points))), negate)


@dataclass(frozen=True)
class Grammar:
    """Named rules; `lexemes` are the rules Lark gets as one regex terminal each."""

    rules: dict[str, Node]
    lexemes: frozenset[str]
    start: str = "answer"


# --- the Canvas language ---------------------------------------------------------------------

_CONTROL = (0x00, 0x1F)
_DEL = (0x7F, 0x7F)
INDENT = "    "


def _string_units(quote: str, *, solid: bool) -> Node:
    """One unit of a string body: a plain character or a simple escape (`\\\\ \\' \\" \\n \\t`).

    `solid` units survive clean_prompt's stripping of `,`, `.` and whitespace (SPEC 3), so a
    string holding one is not empty once cleaned.
    """
    excluded = quote + "\\" + ("., " if solid else "")
    plain = chars(excluded, negate=True, ranges=[_CONTROL, _DEL])
    escapes = "\\'\"" if solid else "\\'\"nt"
    return alt(plain, seq("\\", chars(escapes)))


def _string(quote: str, *, non_empty: bool) -> Node:
    any_unit = _string_units(quote, solid=False)
    if not non_empty:
        return seq(quote, Rep(any_unit, 0, MAX_STRING_CHARS), quote)
    # Up to 16 strippable units, then a solid one, then the rest: MAX_STRING_CHARS at most in all.
    blank = alt(chars(" ,.\t", negate=False), seq("\\", chars("nt")))
    return seq(
        quote,
        Rep(blank, 0, 16),
        _string_units(quote, solid=True),
        Rep(any_unit, 0, MAX_STRING_CHARS - 17),
        quote,
    )


def _vocabulary(names: Iterable[str]) -> Node:
    return alt(*(f"{q}{name}{q}" for name in names for q in "'\""))


def _positive_number() -> Node:
    digit = chars(ranges=[(ord("0"), ord("9"))])
    nonzero = chars(ranges=[(ord("1"), ord("9"))])
    # Bounded digits keep the value finite; "0", "0.0" and negatives are not in the language.
    whole = seq(nonzero, Rep(digit, 0, 5), Rep(seq(".", Rep(digit, 1, 6)), 0, 1))
    fraction = seq("0.", Rep(digit, 0, 5), nonzero, Rep(digit, 0, 5))
    return alt(whole, fraction)


def _value_rule(field_name: str, kind: str) -> str:
    if field_name == "location":
        return "LOCATION"
    if field_name == "offset":
        return "OFFSET"
    if field_name == "area":
        return "AREA"
    if field_name == "HTML_web_color_name":
        return "COLOR"
    if field_name == "description":
        return "TEXT"
    if kind == "number":
        return "NUMBER"
    if kind == "list":
        return "list"
    return "STRING"


def _call(method: str, fields: dict[str, str]) -> Node:
    """`canvas.<method>(...)` on one line, or one keyword per line with an optional trailing comma."""
    names = list(fields)

    def value(name: str, multiline: bool) -> Node:
        rule = _value_rule(name, fields[name])
        if rule == "list" and multiline:
            return alt(Ref("list_block"), Ref("list"))
        return Ref(rule)

    inline = seq(*_join([seq(f"{n}=", value(n, False)) for n in names], ", "))
    lines: list[Node] = [seq(f"{INDENT}{n}=", value(n, True), ",\n") for n in names[:-1]]
    last = names[-1]
    lines.append(seq(f"{INDENT}{last}=", value(last, True), alt(",\n", "\n")))
    block = seq("\n", *lines)
    return seq(f"canvas.{method}(", alt(inline, block), ")\n")


def _join(items: Sequence[Node], separator: str) -> list[Node]:
    out: list[Node] = []
    for i, item in enumerate(items):
        if i:
            out.append(Lit(separator))
        out.append(item)
    return out


@functools.cache
def canvas_grammar() -> Grammar:
    """The Canvas language (see the module docstring), built from the parser's tables."""
    comment_char = chars("\n", negate=True, ranges=[_CONTROL, _DEL])
    rules: dict[str, Node] = {
        "answer": seq(
            "```python\n",
            Rep(Ref("gap"), 0, None),
            "canvas = Canvas()\n",
            Rep(Ref("gap"), 0, None),
            Ref("global_call"),
            Rep(seq(Rep(Ref("gap"), 0, None), Ref("local_call")), 0, MAX_REGIONS),
            Rep(Ref("gap"), 0, None),
            "```",
        ),
        "gap": alt("\n", Ref("COMMENT")),
        "global_call": _call(GLOBAL_METHOD, GLOBAL_FIELDS),
        "local_call": _call(LOCAL_METHOD, LOCAL_FIELDS),
        "list": alt(
            "[]",
            seq("[", Ref("STRING"), Rep(seq(", ", Ref("STRING")), 0, MAX_LIST_ITEMS - 1), "]"),
        ),
        "list_block": seq(
            "[\n",
            Rep(seq(INDENT * 2, Ref("STRING"), ",\n"), 1, MAX_LIST_ITEMS),
            f"{INDENT}]",
        ),
        # A comment line: at most 400 characters, so a comment cannot run away with the budget.
        "COMMENT": seq("#", Rep(comment_char, 0, 400), "\n"),
        "STRING": alt(_string("'", non_empty=False), _string('"', non_empty=False)),
        "TEXT": alt(_string("'", non_empty=True), _string('"', non_empty=True)),
        "NUMBER": _positive_number(),
        "LOCATION": _vocabulary(LOCATIONS),
        "OFFSET": _vocabulary(OFFSETS),
        "AREA": _vocabulary(AREAS),
        "COLOR": _vocabulary(COLORS),
    }
    lexemes = frozenset(name for name in rules if name.isupper())
    return Grammar(rules, lexemes)


# --- rendering: regular expressions ----------------------------------------------------------

_PLAIN = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_ ")


def _escape_char(c: int, *, in_class: bool) -> str:
    ch = chr(c)
    if ch in _PLAIN and not (in_class and ch == " "):
        return ch
    if c < 0x80:
        return f"\\x{c:02X}"
    return f"\\u{c:04X}" if c <= 0xFFFF else f"\\U{c:08X}"


def _class(cs: CharSet) -> str:
    parts = []
    for lo, hi in cs.ranges:
        a = _escape_char(lo, in_class=True)
        parts.append(a if lo == hi else f"{a}-{_escape_char(hi, in_class=True)}")
    return "[" + ("^" if cs.negate else "") + "".join(parts) + "]"


def _count(lo: int, hi: int | None, *, max_count: int | None = None) -> str:
    """A repeat suffix; a bound above `max_count` is dropped (the repeat becomes unbounded)."""
    if hi is not None and max_count is not None and hi > max_count:
        hi = None
    if hi is None:
        return "*" if lo == 0 else ("+" if lo == 1 else f"{{{lo},}}")
    if (lo, hi) == (0, 1):
        return "?"
    return f"{{{lo}}}" if lo == hi else f"{{{lo},{hi}}}"


def _regex(node: Node, g: Grammar, *, max_count: int | None) -> str:
    if isinstance(node, Lit):
        return "".join(_escape_char(ord(c), in_class=False) for c in node.text)
    if isinstance(node, CharSet):
        return _class(node)
    if isinstance(node, Ref):
        return _regex(g.rules[node.name], g, max_count=max_count)
    if isinstance(node, Seq):
        return "".join(_regex(i, g, max_count=max_count) for i in node.items)
    if isinstance(node, Alt):
        return "(?:" + "|".join(_regex(i, g, max_count=max_count) for i in node.items) + ")"
    inner = _regex(node.item, g, max_count=max_count)
    single = isinstance(node.item, CharSet | Alt) or (isinstance(node.item, Lit) and len(node.item.text) == 1)
    if not single:
        inner = f"(?:{inner})"
    return inner + _count(node.lo, node.hi, max_count=max_count)


LEXEME_MAX_COUNT = 64
"""Repeat bounds above this are left out of the Lark lexemes (string bodies, comments): a counted
repeat makes every character a new lexer state, which costs the mask ~100x (bench_grammar.py).
The local processor enforces MAX_STRING_CHARS itself instead (llm/constrain.py)."""


def to_regex(grammar: Grammar | None = None) -> str:
    """One regular expression for the whole answer (strings and repeats unbounded; see above)."""
    g = grammar or canvas_grammar()
    return _regex(g.rules[g.start], g, max_count=16)


# --- rendering: Lark (llguidance) and GBNF ---------------------------------------------------


def _quoted(text: str) -> str:
    out = []
    for ch in text:
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _bnf(node: Node, name_of: dict[str, str], *, gbnf: bool) -> str:
    if isinstance(node, Lit):
        return _quoted(node.text)
    if isinstance(node, CharSet):
        return _class(node)
    if isinstance(node, Ref):
        return name_of[node.name]
    if isinstance(node, Seq):
        return " ".join(_bnf(i, name_of, gbnf=gbnf) for i in node.items)
    if isinstance(node, Alt):
        return "(" + " | ".join(_bnf(i, name_of, gbnf=gbnf) for i in node.items) + ")"
    inner = _bnf(node.item, name_of, gbnf=gbnf)
    if not isinstance(node.item, Ref | CharSet | Lit | Alt):
        inner = f"({inner})"
    return inner + _count(node.lo, node.hi)


def to_lark(grammar: Grammar | None = None) -> str:
    """llguidance's Lark: structure as rules, each lexeme (strings, names, numbers) one regex."""
    g = grammar or canvas_grammar()
    name_of = {n: ("start" if n == g.start else n) for n in g.rules}
    lines = []
    for name, node in g.rules.items():
        if name in g.lexemes:
            lines.append(f"{name}: /{_regex(node, g, max_count=LEXEME_MAX_COUNT)}/")
        else:
            lines.append(f"{name_of[name]}: {_bnf(node, name_of, gbnf=False)}")
    return "\n".join(lines) + "\n"


def to_gbnf(grammar: Grammar | None = None) -> str:
    """GBNF (llama.cpp's dialect; vLLM and SGLang read the same EBNF). `root` is the answer."""
    g = grammar or canvas_grammar()
    name_of = {n: ("root" if n == g.start else n.lower().replace("_", "-")) for n in g.rules}
    lines = [f"{name_of[n]} ::= {_bnf(node, name_of, gbnf=True)}" for n, node in g.rules.items()]
    return "\n".join(lines) + "\n"


GRAMMAR_FORMATS = ("gbnf", "lark", "regex")


def export(fmt: str) -> str:
    """The grammar as text in `fmt` ("gbnf", "lark" or "regex")."""
    if fmt == "gbnf":
        return to_gbnf()
    if fmt == "lark":
        return to_lark()
    if fmt == "regex":
        return to_regex()
    raise ValueError(f"unknown grammar format {fmt!r}: expected one of {', '.join(GRAMMAR_FORMATS)}")


# --- the automaton: shortest completions ------------------------------------------------------


@dataclass
class _Builder:
    eps: list[list[int]] = field(default_factory=list)
    edges: list[list[tuple[CharSet, int]]] = field(default_factory=list)

    def state(self) -> int:
        self.eps.append([])
        self.edges.append([])
        return len(self.eps) - 1

    def build(self, node: Node, g: Grammar) -> tuple[int, int]:
        """Thompson construction; repeats above 2 are relaxed to loops (the matcher bounds them)."""
        start, end = self.state(), self.state()
        if isinstance(node, Lit):
            prev = start
            for ch in node.text:
                nxt = self.state()
                self.edges[prev].append((chars(ch), nxt))
                prev = nxt
            self.eps[prev].append(end)
        elif isinstance(node, CharSet):
            self.edges[start].append((node, end))
        elif isinstance(node, Ref):
            s, e = self.build(g.rules[node.name], g)
            self.eps[start].append(s)
            self.eps[e].append(end)
        elif isinstance(node, Seq):
            prev = start
            for item in node.items:
                s, e = self.build(item, g)
                self.eps[prev].append(s)
                prev = e
            self.eps[prev].append(end)
        elif isinstance(node, Alt):
            for item in node.items:
                s, e = self.build(item, g)
                self.eps[start].append(s)
                self.eps[e].append(end)
        else:
            prev = start
            for _ in range(min(node.lo, 2)):
                s, e = self.build(node.item, g)
                self.eps[prev].append(s)
                prev = e
            if node.hi == 1 and node.lo == 0:
                s, e = self.build(node.item, g)
                self.eps[prev] += [s, end]
                self.eps[e].append(end)
            else:
                s, e = self.build(node.item, g)
                self.eps[prev] += [s, end]
                self.eps[e] += [s, end]
        return start, end


class CanvasAutomaton:
    """The grammar as a character automaton that knows, in every state, the shortest way out.

    `States` are frozensets of automaton states. `distance(states)` is the length of the shortest
    text that completes a canvas from there; `completion(states)` is that text; `reach(states, k)`
    bounds the distance after at most k more characters (how far one token can move it).
    """

    def __init__(self, grammar: Grammar | None = None) -> None:
        import numpy as np

        g = grammar or canvas_grammar()
        b = _Builder()
        start, final = b.build(g.rules[g.start], g)
        # Only the start and the targets of character edges are ever occupied; number those.
        kept = sorted({start} | {t for edges in b.edges for _, t in edges})
        index = {s: i for i, s in enumerate(kept)}
        closures = {s: self._closure(b.eps, s) for s in kept}
        self._moves: list[list[tuple[CharSet, frozenset[int]]]] = []
        self._accepting: list[bool] = []
        for s in kept:
            moves = [(cs, frozenset([index[t]])) for u in closures[s] for cs, t in b.edges[u]]
            self._moves.append(moves)
            self._accepting.append(final in closures[s])
        self.start: frozenset[int] = frozenset([index[start]])
        src = [s for s, moves in enumerate(self._moves) for _, ts in moves for _t in ts]
        dst = [t for moves in self._moves for _, ts in moves for t in ts]
        self._src, self._dst = np.array(src, dtype=np.int64), np.array(dst, dtype=np.int64)
        self._dist, self._hop = self._distances()
        self._step_cache: dict[tuple[frozenset[int], str], frozenset[int]] = {}
        self._reach: dict[int, Any] = {}
        self._completions: dict[frozenset[int], str] = {}

    @staticmethod
    def _closure(eps: list[list[int]], s: int) -> frozenset[int]:
        seen, todo = {s}, [s]
        while todo:
            for t in eps[todo.pop()]:
                if t not in seen:
                    seen.add(t)
                    todo.append(t)
        return frozenset(seen)

    def _distances(self) -> tuple[list[int], list[tuple[str, frozenset[int]] | None]]:
        """Breadth-first from the accepting states over reversed edges (every character costs 1)."""
        n = len(self._moves)
        inf = 1 << 30
        into: list[list[tuple[int, CharSet]]] = [[] for _ in range(n)]
        for s, moves in enumerate(self._moves):
            for cs, targets in moves:
                for t in targets:
                    into[t].append((s, cs))
        dist = [0 if self._accepting[s] else inf for s in range(n)]
        hop: list[tuple[str, frozenset[int]] | None] = [None] * n
        frontier = [s for s in range(n) if self._accepting[s]]
        while frontier:
            nxt = []
            for t in frontier:
                for s, cs in into[t]:
                    if dist[s] == inf:
                        dist[s], hop[s] = dist[t] + 1, (cs.example(), frozenset([t]))
                        nxt.append(s)
            frontier = nxt
        return dist, hop

    def step(self, states: frozenset[int], ch: str) -> frozenset[int]:
        key = (states, ch)
        cached = self._step_cache.get(key)
        if cached is None:
            out: set[int] = set()
            for s in states:
                for cs, targets in self._moves[s]:
                    if ch in cs:
                        out |= targets
            cached = frozenset(out)
            if len(self._step_cache) < 200_000:
                self._step_cache[key] = cached
        return cached

    def feed(self, states: frozenset[int], text: str) -> frozenset[int]:
        for ch in text:
            states = self.step(states, ch)
        return states

    def distance(self, states: frozenset[int]) -> int:
        return min((self._dist[s] for s in states), default=1 << 30)

    def completion(self, states: frozenset[int]) -> str:
        """The shortest text that ends a canvas from `states` ('' when already complete)."""
        cached = self._completions.get(states)
        if cached is not None:
            return cached
        start = states
        out: list[str] = []
        while states and not any(self._accepting[s] for s in states):
            best = min(states, key=lambda s: self._dist[s])
            hop = self._hop[best]
            if hop is None:
                break
            ch, _ = hop
            out.append(ch)
            states = self.step(states, ch)
        text = "".join(out)
        if len(self._completions) < 100_000:
            self._completions[start] = text
        return text

    def reach(self, states: frozenset[int], k: int) -> int:
        """An upper bound on distance() after at most k more characters from `states`."""
        import numpy as np

        table = self._reach.get(k)
        if table is None:
            table = np.array(self._dist, dtype=np.int64)
            for _ in range(k):
                widened = table.copy()
                np.maximum.at(widened, self._src, table[self._dst])
                table = widened
            self._reach[k] = table
        return int(max((table[s] for s in states), default=1 << 30))

    def accepting(self, states: frozenset[int]) -> bool:
        return any(self._accepting[s] for s in states)


@functools.cache
def canvas_automaton() -> CanvasAutomaton:
    """The shared automaton (building it takes most of a second; it never changes)."""
    return CanvasAutomaton()
