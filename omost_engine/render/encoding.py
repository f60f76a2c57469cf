"""Canvas layout -> SDXL conditions (SPEC.md section 5), with an LRU cache of bag encodings.

Each region's prefixes and suffixes are packed into greedy bags (`omost_engine.prompts`) by both
SDXL tokenizers; each bag is one 77-token pass through both text encoders, whose penultimate
hidden states are concatenated along channels (768 + 1280 = 2048 on SDXL). A region's condition
is its bags concatenated along the token axis. The negative prompt is one ordinary 77-token
encoding.

Pooled embedding (SPEC 5.6), chosen per call with `pooled`:
- "omost" (the default): text_encoder_2's un-projected `pooler_output`, which is what Omost's app
  feeds the UNet (it loads text_encoder_2 as a plain CLIPTextModel), for the prompt and the
  negative prompt alike; the same canvas and seed then give Omost's picture;
- "sdxl": the projected `text_embeds` of CLIPTextModelWithProjection, standard SDXL's choice.
Both are cached with the bag, so switching costs no encoder pass.

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
from dataclasses import dataclass, replace
from typing import Any

import torch

from omost_engine.canvas import Box, Layout
from omost_engine.prompts import HFTokenizer, greedy_bags
from omost_engine.render.base import PooledEmbedding as Pooled

CacheKey = tuple[tuple[int, ...], tuple[int, ...]]


@dataclass(frozen=True)
class BagEncoding:
    """One bag through both encoders, kept on the CPU by the cache."""

    hidden: torch.Tensor
    """(1, 77, D): both encoders' penultimate hidden states, concatenated along channels."""
    pooler: torch.Tensor
    """(1, P): text_encoder_2's un-projected pooler output (Omost's pooled embedding)."""
    projected: torch.Tensor
    """(1, P'): the same through text_encoder_2's projection (standard SDXL's `text_embeds`)."""

    def pooled(self, kind: Pooled) -> torch.Tensor:
        return self.pooler if kind == "omost" else self.projected


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

    def with_boxes(self, boxes: Sequence[Box | None]) -> Conditions:
        """The same conditions drawn in other boxes (one per region; None drops that region).

        Used for a zoomed frame and for a crop: the text is unchanged, only where it applies moves.
        """
        if len(boxes) != len(self.regions):
            raise ValueError("need one box (or None) per region")
        if boxes[0] is None:
            raise ValueError("the global region cannot be dropped")
        kept = tuple(
            replace(region, box=box)
            for region, box in zip(self.regions, boxes, strict=True)
            if box is not None
        )
        return replace(self, regions=kept)


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
        self._cache: OrderedDict[CacheKey, BagEncoding] = OrderedDict()

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

    def encode_bag(
        self, key: CacheKey, device: torch.device, pooled: Pooled = "omost"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(1, 77, D) penultimate hidden states of both encoders concatenated, and (1, P) pooled."""
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            self.stats.hits += 1
            bag = cached
        else:
            bag = self._run_encoders(key, device)
            self.stats.encoder_passes += 1
            if self.cache_size > 0:
                self._cache[key] = bag
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return bag.hidden.to(device), bag.pooled(pooled).to(device)

    @torch.no_grad()
    def _run_encoders(self, key: CacheKey, device: torch.device) -> BagEncoding:
        # One sequence per pass (no batching): an encoding must not depend on what else was
        # encoded with it, or a cache hit could differ from a fresh pass in the last bits and the
        # same seed would not always give the same image.
        states = []
        for ids, encoder in zip(key, (self.text_encoder, self.text_encoder_2), strict=True):
            input_ids = torch.tensor([ids], dtype=torch.long, device=device)
            with _PoolerTap(encoder) as tap:
                out = encoder(input_ids, output_hidden_states=True)
            states.append(out.hidden_states[-2])  # SPEC 5: the penultimate layer
        # `out` and `tap` are now text_encoder_2's (SPEC 5.6: the pooled embedding is its own).
        pooler = tap.value if tap.value is not None else out.pooler_output
        projected = out.text_embeds if getattr(out, "text_embeds", None) is not None else pooler
        return BagEncoding(
            hidden=torch.cat(states, dim=-1).detach().to("cpu"),
            pooler=pooler.detach().to("cpu"),
            projected=projected.detach().to("cpu"),
        )

    def encode_region(
        self,
        prefixes: Sequence[str],
        suffixes: Sequence[str],
        device: torch.device,
        pooled: Pooled = "omost",
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(1, 77 x bags, D), the first bag's pooled embedding, and the number of bags."""
        keys = self.bag_ids(prefixes, suffixes)
        encoded = [self.encode_bag(key, device, pooled) for key in keys]
        hidden = torch.cat([h for h, _ in encoded], dim=1)
        return hidden, encoded[0][1], len(keys)

    def encode_negative(
        self, prompt: str, device: torch.device, pooled: Pooled = "omost"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """SPEC 5.7: one ordinary 77-token encoding (truncated to 75 tokens between BOS and EOS)."""
        (key,) = self.bag_ids([prompt], [])
        return self.encode_bag(key, device, pooled)

    def encode_layout(
        self, layout: Layout, negative_prompt: str, device: torch.device, pooled: Pooled = "omost"
    ) -> Conditions:
        regions = []
        first_pooled = None
        for region in layout.regions:
            hidden, region_pooled, bags = self.encode_region(region.prefixes, region.suffixes, device, pooled)
            if first_pooled is None:
                first_pooled = region_pooled  # SPEC 5.6: from the global region's first bag
            regions.append(RegionCondition(box=region.box, embeds=hidden, bags=bags))
        if first_pooled is None:
            raise ValueError("a layout always has its global region first")
        negative, negative_pooled = self.encode_negative(negative_prompt, device, pooled)
        return Conditions(
            regions=tuple(regions), pooled=first_pooled, negative=negative, negative_pooled=negative_pooled
        )


class _PoolerTap:
    """Catches a CLIP text model's un-projected pooler output during one forward call.

    CLIPTextModelWithProjection returns only the projected `text_embeds`; the un-projected
    pooler (Omost's pooled embedding) is the output of its inner `text_model`, caught here with a
    forward hook so that the encoder itself is still what is called (model CPU offload moves
    weights on the outer module's call, so calling `text_model` directly would miss them).
    """

    def __init__(self, encoder: Any) -> None:
        self.module = getattr(encoder, "text_model", None)
        self.value: torch.Tensor | None = None
        self._handle: Any = None

    def _hook(self, module: Any, args: Any, output: Any) -> None:
        self.value = getattr(output, "pooler_output", None)

    def __enter__(self) -> _PoolerTap:
        if self.module is not None:
            self._handle = self.module.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            self._handle.remove()
