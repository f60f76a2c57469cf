"""Greedy sub-prompt bags (SPEC.md section 5), against a small tokenizer interface.

Omost's sub-prompts are each under 75 tokens and self-contained, so a region's prompt is packed
greedily into "bags" that each fit one CLIP pass with the region's prefixes in front. The renderer
passes the two SDXL CLIP tokenizers (wrapped by `HFTokenizer`); tests pass a tiny real one.

This module knows nothing of torch, models or chats.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

CLIP_LENGTH = 77
CLIP_BODY = CLIP_LENGTH - 2  # room between BOS and EOS


class Tokenizer(Protocol):
    """What bag packing needs from a tokenizer."""

    bos_id: int
    eos_id: int
    pad_id: int

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` without special tokens."""
        ...


class HFTokenizer:
    """Adapts a Hugging Face (CLIP) tokenizer to `Tokenizer` without importing transformers."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.bos_id = int(tokenizer.bos_token_id)
        self.eos_id = int(tokenizer.eos_token_id)
        self.pad_id = int(tokenizer.pad_token_id)

    def encode(self, text: str) -> list[int]:
        ids = self.tokenizer(text, add_special_tokens=False, truncation=False).input_ids
        return list(ids)


@dataclass(frozen=True)
class Bag:
    """One CLIP pass: which suffixes it holds and its 77 token ids (BOS, body, EOS, padding)."""

    suffix_indices: tuple[int, ...]
    input_ids: tuple[int, ...]


def greedy_bags(prefixes: Sequence[str], suffixes: Sequence[str], tokenizer: Tokenizer) -> list[Bag]:
    """SPEC 5 steps 1-4: pack suffixes in order into bags that fit 75 tokens with the prefix.

    A region always gets at least one bag (the prefix alone when it has no suffixes).
    """
    prefix: list[int] = []
    for p in prefixes:
        prefix += tokenizer.encode(p)
    budget = CLIP_BODY - len(prefix)
    pieces = [tokenizer.encode(s)[:CLIP_BODY] for s in suffixes]

    groups: list[list[int]] = []
    current: list[int] = []
    used = 0
    for index, piece in enumerate(pieces):
        if current and used + len(piece) > budget:
            groups.append(current)
            current, used = [], 0
        current.append(index)
        used += len(piece)
    if current or not groups:
        groups.append(current)

    bags = []
    for group in groups:
        body = list(prefix)
        for index in group:
            body += pieces[index]
        ids = [tokenizer.bos_id, *body[:CLIP_BODY], tokenizer.eos_id]
        ids += [tokenizer.pad_id] * (CLIP_LENGTH - len(ids))
        bags.append(Bag(tuple(group), tuple(ids)))
    return bags
