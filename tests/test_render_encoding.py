"""SPEC 5 conditions from the tiny SDXL text stack: shapes, what is encoded, and the bag cache."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from omost_engine.canvas import process
from omost_engine.canvas_code import parse
from omost_engine.prompts import HFTokenizer, greedy_bags
from omost_engine.render.base import DEFAULT_NEGATIVE_PROMPT
from omost_engine.render.encoding import PromptEncoder
from tests.seed import seed_answers
from tests.tiny_sdxl import CROSS_ATTENTION_DIM, HIDDEN, build_tiny_sdxl

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def text_stack(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    folder: Path = build_tiny_sdxl(tmp_path_factory.mktemp("sdxl") / "model")
    return {
        "tokenizer": CLIPTokenizer.from_pretrained(folder / "tokenizer"),
        "tokenizer_2": CLIPTokenizer.from_pretrained(folder / "tokenizer_2"),
        "text_encoder": CLIPTextModel.from_pretrained(folder / "text_encoder").eval(),
        "text_encoder_2": CLIPTextModelWithProjection.from_pretrained(folder / "text_encoder_2").eval(),
        "folder": folder,
    }


def make_encoder(stack: dict[str, Any], cache_size: int = 512) -> PromptEncoder:
    return PromptEncoder(
        stack["tokenizer"], stack["tokenizer_2"], stack["text_encoder"], stack["text_encoder_2"], cache_size
    )


def test_the_second_tokenizer_pads_with_an_exclamation_mark(text_stack: dict[str, Any]) -> None:
    assert text_stack["tokenizer_2"].pad_token == "!"
    assert text_stack["tokenizer"].pad_token == "<|endoftext|>"


def test_each_region_is_its_bags_of_77_tokens_by_the_concatenated_width(text_stack: dict[str, Any]) -> None:
    layout = process(parse(seed_answers()[0]))
    encoder = make_encoder(text_stack)
    conditions = encoder.encode_layout(layout, DEFAULT_NEGATIVE_PROMPT, CPU)

    tok = HFTokenizer(text_stack["tokenizer"])
    assert len(conditions.regions) == len(layout.regions)
    total_bags = 0
    for region, condition in zip(layout.regions, conditions.regions, strict=True):
        bags = len(greedy_bags(region.prefixes, region.suffixes, tok))
        total_bags += bags
        assert condition.bags == bags
        assert condition.box == region.box
        assert condition.embeds.shape == (1, 77 * bags, CROSS_ATTENTION_DIM)
    assert total_bags > len(layout.regions)  # the seed's long prompts need several bags somewhere
    assert conditions.positive.shape == (1, 77 * total_bags, CROSS_ATTENTION_DIM)
    assert conditions.pooled.shape == (1, HIDDEN)
    assert conditions.negative.shape == (1, 77, CROSS_ATTENTION_DIM)
    assert conditions.negative_pooled.shape == (1, HIDDEN)
    assert encoder.stats.encoder_passes == total_bags + 1  # + the negative prompt


@torch.no_grad()
def test_a_bag_is_both_penultimate_layers_and_the_chosen_pool(text_stack: dict[str, Any]) -> None:
    encoder = make_encoder(text_stack)
    prefixes, suffixes = ["A red fox."], ["It sleeps in the snow.", "Soft light."]
    hidden, pooled, bags = encoder.encode_region(prefixes, suffixes, CPU, "sdxl")
    assert bags == 1
    ids_1 = greedy_bags(prefixes, suffixes, HFTokenizer(text_stack["tokenizer"]))[0].input_ids
    ids_2 = greedy_bags(prefixes, suffixes, HFTokenizer(text_stack["tokenizer_2"]))[0].input_ids
    assert ids_1 != ids_2  # same text, different padding ("!" in the second)
    out_1 = text_stack["text_encoder"](torch.tensor([ids_1]), output_hidden_states=True)
    out_2 = text_stack["text_encoder_2"](torch.tensor([ids_2]), output_hidden_states=True)
    expected = torch.cat([out_1.hidden_states[-2], out_2.hidden_states[-2]], dim=-1)
    assert torch.allclose(hidden, expected, atol=1e-6)
    assert torch.allclose(pooled, out_2.text_embeds, atol=1e-6)
    assert not torch.allclose(hidden, torch.cat([out_1.hidden_states[-1], out_2.hidden_states[-1]], -1))

    # Omost's pooled embedding (the default): text_encoder_2 loaded as a plain CLIPTextModel, as
    # Omost's app loads it, and its un-projected pooler_output; the cached bag serves both.
    from transformers import CLIPTextModel

    plain = CLIPTextModel.from_pretrained(text_stack["folder"] / "text_encoder_2").eval()
    omost_pooled = plain(torch.tensor([ids_2])).pooler_output
    passes = encoder.stats.encoder_passes
    _, default_pooled, _ = encoder.encode_region(prefixes, suffixes, CPU)
    assert encoder.stats.encoder_passes == passes  # a cache hit
    assert torch.allclose(default_pooled, omost_pooled, atol=1e-6)
    assert not torch.allclose(default_pooled, pooled, atol=1e-2)
    negative_default = encoder.encode_negative(DEFAULT_NEGATIVE_PROMPT, CPU)[1]
    negative_sdxl = encoder.encode_negative(DEFAULT_NEGATIVE_PROMPT, CPU, "sdxl")[1]
    assert not torch.allclose(negative_default, negative_sdxl, atol=1e-2)


def test_the_seed_second_turn_reencodes_only_what_changed(text_stack: dict[str, Any]) -> None:
    first, second = (process(parse(answer)) for answer in seed_answers())
    tok = HFTokenizer(text_stack["tokenizer"])

    def bag_ids(layout: Any) -> list[tuple[int, ...]]:
        return [b.input_ids for r in layout.regions for b in greedy_bags(r.prefixes, r.suffixes, tok)]

    cached = make_encoder(text_stack)
    cached.encode_layout(first, DEFAULT_NEGATIVE_PROMPT, CPU)
    cached.stats.reset()
    with_cache = cached.encode_layout(second, DEFAULT_NEGATIVE_PROMPT, CPU)
    # The seed's edit rewrote the global description, which prefixes every region's bags, so
    # only bags identical in token ids (and the negative prompt) can be reused.
    unchanged = len(set(bag_ids(second)) & set(bag_ids(first)))
    assert cached.stats.hits == unchanged + 1
    assert cached.stats.encoder_passes == len(bag_ids(second)) - unchanged

    fresh = make_encoder(text_stack, cache_size=0)
    without_cache = fresh.encode_layout(second, DEFAULT_NEGATIVE_PROMPT, CPU)
    assert fresh.stats.encoder_passes == len(bag_ids(second)) + 1
    assert torch.equal(with_cache.positive, without_cache.positive)

    cached.stats.reset()
    cached.encode_layout(second, DEFAULT_NEGATIVE_PROMPT, CPU)  # a re-render (new seed): all cached
    assert cached.stats.encoder_passes == 0
    assert cached.stats.hits == len(bag_ids(second)) + 1


def test_an_edit_of_one_region_encodes_only_that_region(text_stack: dict[str, Any]) -> None:
    canvas = parse(seed_answers()[0])
    edited_region = replace(canvas.regions[2], description="A warrior riding a triceratops.")
    edited = replace(canvas, regions=(*canvas.regions[:2], edited_region, *canvas.regions[3:]))
    encoder = make_encoder(text_stack)
    before = encoder.encode_layout(process(canvas), DEFAULT_NEGATIVE_PROMPT, CPU)
    encoder.stats.reset()
    after = encoder.encode_layout(process(edited), DEFAULT_NEGATIVE_PROMPT, CPU)

    changed = [
        i
        for i, (a, b) in enumerate(zip(before.regions, after.regions, strict=True))
        if not torch.equal(a.embeds, b.embeds)
    ]
    assert len(changed) == 1
    changed_bags = after.regions[changed[0]].bags
    assert encoder.stats.encoder_passes == changed_bags
    assert encoder.stats.hits == sum(r.bags for r in after.regions) - changed_bags + 1


def test_the_cache_is_lru_and_bounded(text_stack: dict[str, Any]) -> None:
    encoder = make_encoder(text_stack, cache_size=2)
    for text in ("one cat.", "two dogs.", "one cat.", "three birds.", "two dogs.", "one cat."):
        encoder.encode_region([text], [], CPU)
    # one cat, two dogs: miss, miss; one cat: hit; three birds: miss, evicts two dogs;
    # two dogs: miss, evicts one cat; one cat: miss.
    assert (encoder.stats.hits, encoder.stats.encoder_passes) == (1, 5)
