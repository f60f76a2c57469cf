"""Canvas layout -> SDXL conditions (SPEC.md section 5), with an LRU cache of bag encodings.

Each region's prefixes and suffixes are packed into greedy bags (`omost_engine.prompts`) by both
SDXL tokenizers; each bag is one 77-token pass through both text encoders, whose penultimate
hidden states are concatenated along channels (768 + 1280 = 2048 on SDXL). A region's condition
is its bags concatenated along the token axis. The negative prompt is one ordinary 77-token
encoding.

Encodings are cached by their token ids (both tokenizers'), so an edit turn, which rewrites the
whole canvas but usually changes a few sub-prompts, only runs the encoders on what changed.
`CacheStats` counts hits and encoder passes. Entries live on the CPU, so the cache survives the
pipeline moving between devices and never holds GPU memory.

This module knows tokenizers, text encoders and tensors; it knows nothing of UNets, attention,
pipelines or chats.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from omost_engine.canvas import Box, Layout
from omost_engine.prompts import HFTokenizer, greedy_bags

CacheKey = tuple[tuple[int, ...], tuple[int, ...]]


@dataclass(frozen=True)
class RegionCondition:
    box: Box
    embeds: torch.Tensor
    """(1, 77 x bags, D): the region's bags, concatenated along the token axis."""
    bags: int


@dataclass(frozen=True)
class Conditions:
    """Everything the UNet needs from the text, for one canvas and one negative prompt."""

    regions: tuple[RegionCondition, ...]
    """Global first, then local regions far to near (the layout's order)."""
    pooled: torch.Tensor
    negative: torch.Tensor
    """(1, 77, D): one ordinary CLIP-length encoding."""
    negative_pooled: torch.Tensor

    @property
    def positive(self) -> torch.Tensor:
        """(1, T, D): every region's tokens, in region order."""
        return torch.cat([r.embeds for r in self.regions], dim=1)


@dataclass
class CacheStats:
    hits: int = 0
    encoder_passes: int = 0
    """Sequences run through the text encoders (each pass runs both)."""

    def reset(self) -> None:
        self.hits = 0
        self.encoder_passes = 0


class PromptEncoder:
    """SPEC 5 with both SDXL tokenizers and text encoders; `cache_size=0` disables the cache."""

    def __init__(
        self,
        tokenizer: Any,
        tokenizer_2: Any,
        text_encoder: Any,
        text_encoder_2: Any,
        cache_size: int = 512,
    ) -> None:
        self.tokenizers = (HFTokenizer(tokenizer), HFTokenizer(tokenizer_2))
        self.text_encoder = text_encoder
        self.text_encoder_2 = text_encoder_2
        self.cache_size = cache_size
        self.stats = CacheStats()
        self._cache: OrderedDict[CacheKey, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()

    def clear_cache(self) -> None:
        self._cache.clear()

    def bag_ids(self, prefixes: Sequence[str], suffixes: Sequence[str]) -> list[CacheKey]:
        """SPEC 5 steps 1-4 for both tokenizers: one (ids, ids_2) pair per bag."""
        first = greedy_bags(prefixes, suffixes, self.tokenizers[0])
        second = greedy_bags(prefixes, suffixes, self.tokenizers[1])
        # SDXL's two tokenizers share one vocabulary and differ only in padding, so they split a
        # prompt identically; a pair that does not is not an SDXL checkpoint we can condition.
        if [b.suffix_indices for b in first] != [b.suffix_indices for b in second]:
            raise ValueError("the two text tokenizers split this prompt differently; not an SDXL pair")
        return [(a.input_ids, b.input_ids) for a, b in zip(first, second, strict=True)]

    def encode_bag(self, key: CacheKey, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(1, 77, D) penultimate hidden states of both encoders concatenated, and (1, P) pooled."""
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            self.stats.hits += 1
            hidden, pooled = cached
        else:
            hidden, pooled = self._run_encoders(key, device)
            self.stats.encoder_passes += 1
            if self.cache_size > 0:
                self._cache[key] = (hidden, pooled)
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return hidden.to(device), pooled.to(device)

    @torch.no_grad()
    def _run_encoders(self, key: CacheKey, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        # One sequence per pass (no batching): an encoding must not depend on what else was
        # encoded with it, or a cache hit could differ from a fresh pass in the last bits and the
        # same seed would not always give the same image.
        states = []
        outputs = []
        for ids, encoder in zip(key, (self.text_encoder, self.text_encoder_2), strict=True):
            input_ids = torch.tensor([ids], dtype=torch.long, device=device)
            out = encoder(input_ids, output_hidden_states=True)
            states.append(out.hidden_states[-2])  # SPEC 5: the penultimate layer
            outputs.append(out)
        # SPEC 5.6: standard SDXL conditions on text_encoder_2's *projected* pooled embedding
        # (CLIPTextModelWithProjection.text_embeds), which is what the UNet was trained with.
        # The reference renderer loads text_encoder_2 as a plain CLIPTextModel and feeds its
        # un-projected pooler_output instead; we follow standard SDXL.
        second = outputs[1]
        pooled_embeds = second.text_embeds if hasattr(second, "text_embeds") else second.pooler_output
        hidden = torch.cat(states, dim=-1)
        return hidden.detach().to("cpu"), pooled_embeds.detach().to("cpu")

    def encode_region(
        self, prefixes: Sequence[str], suffixes: Sequence[str], device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(1, 77 x bags, D), the first bag's pooled embedding, and the number of bags."""
        keys = self.bag_ids(prefixes, suffixes)
        encoded = [self.encode_bag(key, device) for key in keys]
        hidden = torch.cat([h for h, _ in encoded], dim=1)
        return hidden, encoded[0][1], len(keys)

    def encode_negative(self, prompt: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """SPEC 5.7: one ordinary 77-token encoding (truncated to 75 tokens between BOS and EOS)."""
        (key,) = self.bag_ids([prompt], [])
        return self.encode_bag(key, device)

    def encode_layout(self, layout: Layout, negative_prompt: str, device: torch.device) -> Conditions:
        regions = []
        pooled = None
        for region in layout.regions:
            hidden, first_pooled, bags = self.encode_region(region.prefixes, region.suffixes, device)
            if pooled is None:
                pooled = first_pooled  # SPEC 5.6: from the global region's first bag
            regions.append(RegionCondition(box=region.box, embeds=hidden, bags=bags))
        if pooled is None:
            raise ValueError("a layout always has its global region first")
        negative, negative_pooled = self.encode_negative(negative_prompt, device)
        return Conditions(
            regions=tuple(regions), pooled=pooled, negative=negative, negative_pooled=negative_pooled
        )
