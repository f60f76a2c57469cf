"""Greedy sub-prompt bags (SPEC 5) with a real, locally trained CLIP tokenizer."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from omost_engine.canvas import process
from omost_engine.canvas_code import parse
from omost_engine.prompts import CLIP_LENGTH, HFTokenizer, greedy_bags
from tests.seed import seed_answers
from tests.tiny_clip import build_clip_tokenizer


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> HFTokenizer:
    return HFTokenizer(build_clip_tokenizer(Path(tmp_path_factory.mktemp("clip"))))


class CountingTokenizer:
    """One token per word: lets a test state token counts exactly, as SPEC's README example does."""

    bos_id, eos_id, pad_id = 1, 2, 0

    def encode(self, text: str) -> list[int]:
        return [10 + len(w) for w in text.split()]


def words(n: int) -> str:
    return " ".join(["w"] * n)


def test_readme_example_packs_greedily_within_75() -> None:
    # Omost README's sizes A 25, B 35, C 5, D 60, E 15, F 25 (no prefix). SPEC 5 adds while the total
    # stays within the budget, so D + E = 75 share a bag (the README's drawing shows {D}, {E, F}).
    sizes = [25, 35, 5, 60, 15, 25]
    bags = greedy_bags([], [words(n) for n in sizes], CountingTokenizer())
    assert [b.suffix_indices for b in bags] == [(0, 1, 2), (3, 4), (5,)]
    bags = greedy_bags([], [words(n) for n in [25, 35, 5, 60, 16, 25]], CountingTokenizer())
    assert [b.suffix_indices for b in bags] == [(0, 1, 2), (3,), (4, 5)]


def test_prefix_counts_against_the_budget_and_oversize_goes_alone() -> None:
    tok = CountingTokenizer()
    bags = greedy_bags([words(10), words(5)], [words(30), words(30), words(100), words(20)], tok)
    # budget 60: 30 fits, 30 more fits (60), 100 alone (cropped to 75), 20 alone after it
    assert [b.suffix_indices for b in bags] == [(0, 1), (2,), (3,)]
    for bag in bags:
        assert len(bag.input_ids) == CLIP_LENGTH
        assert bag.input_ids[0] == tok.bos_id
    # the oversize bag: BOS + (15 prefix + 75 cropped)[:75] + EOS, no padding
    assert bag_eos_position(bags[1], tok) == 76
    assert bag_eos_position(bags[0], tok) == 1 + 15 + 60


def bag_eos_position(bag, tok) -> int:  # type: ignore[no-untyped-def]
    return bag.input_ids.index(tok.eos_id)


def test_region_without_suffixes_still_gets_its_prefix_bag() -> None:
    tok = CountingTokenizer()
    bags = greedy_bags([words(3)], [], tok)
    assert len(bags) == 1 and bags[0].suffix_indices == ()
    assert bags[0].input_ids[:5] == (1, 11, 11, 11, 2)
    assert set(bags[0].input_ids[5:]) == {0}


def test_seed_regions_with_a_real_clip_tokenizer(clip: HFTokenizer) -> None:
    layout = process(parse(seed_answers()[1]))
    for region in layout.regions:
        bags = greedy_bags(region.prefixes, region.suffixes, clip)
        prefix = [t for p in region.prefixes for t in clip.encode(p)]
        order = [i for b in bags for i in b.suffix_indices]
        assert order == list(range(len(region.suffixes)))  # every suffix once, in order
        for bag in bags:
            ids = list(bag.input_ids)
            assert len(ids) == CLIP_LENGTH and ids[0] == clip.bos_id
            body = ids[1 : ids.index(clip.eos_id)]
            assert body[: len(prefix)] == prefix  # each bag starts with the region's prefix
            assert len(body) <= 75
        # greedy: no two neighbouring bags could have been one
        sizes = [sum(len(clip.encode(region.suffixes[i])) for i in b.suffix_indices) for b in bags]
        for a, b in itertools.pairwise(sizes):
            assert a + b > 75 - len(prefix)
    assert any(len(greedy_bags(r.prefixes, r.suffixes, clip)) > 1 for r in layout.regions)
    tokens = clip.tokenizer.convert_ids_to_tokens(clip.encode("A fallen warrior."))
    assert tokens == ["a</w>", "fallen</w>", "warrior</w>", ".</w>"]


_sub_prompt = st.text(alphabet="abcdefghij ,.", min_size=0, max_size=120)


@settings(max_examples=100, deadline=None)
@given(st.lists(_sub_prompt, max_size=3), st.lists(_sub_prompt, max_size=12))
def test_property_bags_fit_keep_order_place_each_suffix_once(
    prefixes: list[str], suffixes: list[str]
) -> None:
    tok = _PROPERTY_TOKENIZER
    bags = greedy_bags(prefixes, suffixes, tok)
    prefix = [t for p in prefixes for t in tok.encode(p)]
    assert [i for b in bags for i in b.suffix_indices] == list(range(len(suffixes)))
    for bag in bags:
        ids = list(bag.input_ids)
        assert len(ids) == CLIP_LENGTH
        body = ids[1 : ids.index(tok.eos_id)]
        assert len(body) <= 75
        expected = prefix + [t for i in bag.suffix_indices for t in tok.encode(suffixes[i])[:75]]
        assert body == expected[:75]
        # a bag holding several suffixes fits its budget with the prefix, so nothing is cut
        if len(bag.suffix_indices) > 1:
            assert len(expected) <= 75


class _CharTokenizer:
    """Deterministic, fast stand-in for the property test: one token per non-space character."""

    bos_id, eos_id, pad_id = 1, 2, 0

    def encode(self, text: str) -> list[int]:
        return [ord(c) for c in text if not c.isspace()]


_PROPERTY_TOKENIZER = _CharTokenizer()
