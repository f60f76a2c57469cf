"""The Canvas grammar: accepts what the models write, refuses what the parser refuses, and every
text it accepts is a canvas that parses with no corrections.

Checked through the real matcher (llguidance) on tokenizers built here (byte-level BPE like
Llama-3, SentencePiece-style with byte fallback like Phi-3), through the GBNF readers of two other
engines (xgrammar, llguidance's GBNF converter), and by Python's own regex engine for the regex.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from omost_engine.canvas import AREAS, COLORS, LOCATIONS, OFFSETS, Canvas
from omost_engine.canvas_code import MAX_LIST_ITEMS, MAX_REGIONS, MAX_STRING_CHARS, parse
from omost_engine.grammar import canvas_automaton, export, to_gbnf, to_lark, to_regex
from omost_engine.llm.constrain import CanvasLogitsProcessor, tokenizer_view
from tests.seed import seed_answers
from tests.test_canvas_code import GLOBAL, HOSTILE, LOCAL, VALID
from tests.tiny_llm import build_tokenizer
from tests.tiny_tokenizers import build_sentencepiece_style_tokenizer


@pytest.fixture(scope="module")
def bpe() -> Any:
    return build_tokenizer()


@pytest.fixture(scope="module")
def sentencepiece() -> Any:
    return build_sentencepiece_style_tokenizer()


def _matcher(tokenizer: Any) -> Any:
    import llguidance

    view = tokenizer_view(tokenizer, len(tokenizer))
    return llguidance.LLMatcher(view.ll_tokenizer, view.grammar, log_level=0), view


def accepts(tokenizer: Any, text: str) -> bool:
    """The whole text, token by token through the matcher, ends in an accepting state."""
    matcher, view = _matcher(tokenizer)
    ids = view.ll_tokenizer.tokenize_str(text)
    assert view.ll_tokenizer.decode_str(ids) == text  # the tokenization round-trips
    return matcher.try_consume_tokens(ids) == len(ids) and matcher.is_accepting()


def fenced(code: str) -> str:
    return f"```python\n{code if code.endswith(chr(10)) else code + chr(10)}```"


@pytest.mark.parametrize("family", ["bpe", "sentencepiece"])
def test_both_seed_answers_are_accepted_token_by_token(family: str, request: pytest.FixtureRequest) -> None:
    tokenizer = request.getfixturevalue(family)
    for answer in seed_answers():
        assert accepts(tokenizer, answer)


def test_the_omost_styles_are_accepted(bpe: Any) -> None:
    # one call per line, double quotes, escapes, comments and blank lines, an inline list
    assert accepts(bpe, fenced(VALID))
    doubled = VALID.replace("'A room.'", '"Tom\\\'s \\"room\\"."')
    assert accepts(bpe, fenced(f"# Initialize the canvas\n\n{doubled}\n# done\n"))
    assert parse(fenced(doubled)).global_description.description == "Tom's \"room\"."
    no_trailing_comma = seed_answers()[0].replace("='dimgray',\n)", "='dimgray'\n)")
    assert accepts(bpe, no_trailing_comma)


# The parser's hostile corpus is all a grammar matter: imports, attribute access, calls to anything
# else, positional arguments, unknown names, bad numbers, bad nesting, oversize values.
# Lengths are the exception: the local matcher's lexemes leave them to the processor (tested
# below, a runaway string is closed at the limit), so those two go through the bounded GBNF.
LENGTH_LIMITS = {"megabyte-string", "huge-input"}


def accepts_gbnf(tokenizer: Any, text: str) -> bool:
    import llguidance
    from llguidance.gbnf_to_lark import gbnf_to_lark

    view = tokenizer_view(tokenizer, len(tokenizer))
    grammar = llguidance.LLMatcher.grammar_from_lark(gbnf_to_lark(to_gbnf()))
    matcher = llguidance.LLMatcher(view.ll_tokenizer, grammar, log_level=0)
    ids = view.ll_tokenizer.tokenize_str(text)
    return matcher.try_consume_tokens(ids) == len(ids) and matcher.is_accepting()


@pytest.mark.parametrize(("name", "code"), [c[:2] for c in HOSTILE], ids=[c[0] for c in HOSTILE])
def test_the_hostile_corpus_is_refused(name: str, code: str, bpe: Any) -> None:
    text = code if code.lstrip().startswith(("```", "Here", "I cannot")) else fenced(code)
    assert not (accepts_gbnf if name in LENGTH_LIMITS else accepts)(bpe, text)


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ("HTML_web_color_name='black'", "HTML_web_color_name='blackish'"),  # unknown colour
        ("HTML_web_color_name='black'", "HTML_web_color_name='Black'"),  # would need a correction
        ("location='in the center'", "location='in the middle'"),
        ("offset='no offset'", "offset='slightly left'"),
        ("area='a small square area'", "area='a tiny square area'"),
        ("distance_to_viewer=2.0", "distance_to_viewer=0.0"),
        ("distance_to_viewer=2.0", "distance_to_viewer=-2.0"),
        ("distance_to_viewer=2.0", "distance_to_viewer=1e999"),
        ("description='A cat.'", "description=', .'"),  # empty once cleaned
        ("location='in the center', ", ""),  # a keyword left out
        ("tags='cat', atmosphere='calm'", "atmosphere='calm', tags='cat'"),  # keyword order
    ],
)
def test_names_numbers_and_shapes_outside_the_parser_are_refused(before: str, after: str, bpe: Any) -> None:
    assert before in LOCAL
    assert accepts(bpe, fenced(VALID))
    assert not accepts(bpe, fenced(f"canvas = Canvas()\n{GLOBAL}\n{LOCAL.replace(before, after)}\n"))


def test_the_vocabularies_come_from_the_parser() -> None:
    gbnf = to_gbnf()
    for name in (*LOCATIONS, *OFFSETS, *AREAS, *COLORS):
        assert f'"\'{name}\'"' in gbnf
    assert f"{{0,{MAX_STRING_CHARS}}}" in gbnf and f"{{0,{MAX_REGIONS}}}" in gbnf
    assert f"{{0,{MAX_LIST_ITEMS - 1}}}" in gbnf and f"{{0,{MAX_REGIONS}}}" in to_lark()


def test_gbnf_reads_the_same_in_two_other_engines(bpe: Any) -> None:
    import llguidance
    import xgrammar
    from llguidance.gbnf_to_lark import gbnf_to_lark

    gbnf = to_gbnf()
    view = tokenizer_view(bpe, len(bpe))
    converted = llguidance.LLMatcher.grammar_from_lark(gbnf_to_lark(gbnf))
    compiled = xgrammar.GrammarCompiler(xgrammar.TokenizerInfo.from_huggingface(bpe)).compile_grammar(gbnf)
    bad = fenced(LOCAL.replace("2.0", "0"))
    for text, ok in [(seed_answers()[0], True), (seed_answers()[1], True), (bad, False)]:
        ids = bpe.encode(text, add_special_tokens=False)
        matcher = llguidance.LLMatcher(view.ll_tokenizer, converted, log_level=0)
        assert (matcher.try_consume_tokens(ids) == len(ids) and matcher.is_accepting()) is ok
        xgr = xgrammar.GrammarMatcher(compiled)
        assert all(xgr.accept_token(i) for i in ids) is ok


def test_the_regex_matches_the_seeds_and_refuses_the_hostile() -> None:
    pattern = re.compile(to_regex())
    assert all(pattern.fullmatch(a) for a in seed_answers())
    assert pattern.fullmatch(fenced(VALID))
    assert not pattern.fullmatch(fenced(f"import os\n{VALID}"))
    assert not pattern.fullmatch(fenced(VALID.replace("'white'", "'whitish'")))


def test_export_names_its_formats() -> None:
    assert export("gbnf").startswith("root ::=") and export("lark").startswith("start:")
    with pytest.raises(ValueError, match="gbnf, lark, regex"):
        export("json")


# --- the shortest completion -------------------------------------------------------------


@pytest.mark.parametrize("cut", [0, 1, 9, 20, 300, 1234, 2000, 4100, 6000, 8000, 8930])
def test_any_prefix_plus_its_shortest_completion_parses(cut: int) -> None:
    automaton = canvas_automaton()
    answer = seed_answers()[0]
    prefix = answer[:cut]
    states = automaton.feed(automaton.start, prefix)
    completion = automaton.completion(states)
    assert len(completion) == automaton.distance(states)
    canvas = parse(prefix + completion)
    assert canvas.corrections == ()
    assert len(canvas.regions) <= 5


# --- property: text sampled under the grammar always parses ---------------------------------


def _valid_in_every_rule(canvas: Canvas) -> None:
    assert canvas.corrections == ()
    assert len(canvas.regions) <= MAX_REGIONS
    assert canvas.global_description.description
    assert canvas.global_description.color in COLORS
    for region in canvas.regions:
        assert region.distance_to_viewer > 0
        assert region.description
        assert region.location in LOCATIONS and region.offset in OFFSETS and region.area in AREAS
        assert region.color in COLORS
        assert len(region.detailed_descriptions) <= MAX_LIST_ITEMS
        for text in (region.description, *region.detailed_descriptions, region.tags, region.style):
            assert len(text) <= MAX_STRING_CHARS + 1


def sample(tokenizer: Any, seed: int, budget: int, sharpness: float) -> tuple[str, int]:
    """Random logits under the processor, as a model with random weights would give."""
    view = tokenizer_view(tokenizer, len(tokenizer))
    processor = CanvasLogitsProcessor(view, 0, budget, tokenizer.eos_token_id)
    generator = torch.Generator().manual_seed(seed)
    ids: list[int] = []
    while len(ids) < budget:
        scores = torch.randn(1, len(tokenizer), generator=generator) * sharpness
        masked = processor(torch.tensor([ids], dtype=torch.long), scores)
        token = int(torch.multinomial(torch.softmax(masked[0], -1), 1, generator=generator))
        ids.append(token)
        if token == tokenizer.eos_token_id:
            break
    return tokenizer.decode(ids, skip_special_tokens=True), len(ids)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**31 - 1), budget=st.integers(150, 500), sharpness=st.floats(0.5, 6.0))
def test_property_sampled_text_always_parses(bpe: Any, seed: int, budget: int, sharpness: float) -> None:
    text, used = sample(bpe, seed, budget, sharpness)
    assert used <= budget
    _valid_in_every_rule(parse(text))


def test_sentencepiece_style_sampling_parses_too(sentencepiece: Any) -> None:
    for seed in range(3):
        text, used = sample(sentencepiece, seed, 400, 3.0)
        assert used <= 400
        _valid_in_every_rule(parse(text))


def test_a_runaway_string_is_closed_at_the_parsers_limit(bpe: Any) -> None:
    # A "model" that only ever wants to write the letter a: the description would run forever.
    view = tokenizer_view(bpe, len(bpe))
    budget = MAX_STRING_CHARS + 400
    processor = CanvasLogitsProcessor(view, 0, budget, bpe.eos_token_id)
    favourite = bpe.convert_tokens_to_ids("a")
    opening = "```python\ncanvas = Canvas()\ncanvas.set_global_description(description='"
    ids: list[int] = bpe.encode(opening, add_special_tokens=False)
    while len(ids) < budget:
        scores = torch.zeros(1, len(bpe))
        scores[0, favourite] = 50.0
        token = int(processor(torch.tensor([ids], dtype=torch.long), scores)[0].argmax())
        ids.append(token)
        if token == bpe.eos_token_id:
            break
    canvas = parse(bpe.decode(ids, skip_special_tokens=True))
    description = canvas.global_description.description
    assert set(description[:-1]) == {"a"} and MAX_STRING_CHARS - 60 < len(description) <= MAX_STRING_CHARS + 1
