"""A tiny but real CLIP tokenizer, trained here on the seed transcript (no hub, no network).

`build_clip_tokenizer(folder)` writes vocab.json/merges.txt in CLIP's byte-level BPE format
(every byte, every byte + "</w>", learned merges, the two special tokens) and returns a
transformers CLIPTokenizer loaded from them. Reused by the renderer's tiny SDXL fixture.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from tests.seed import seed_messages

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def _corpus() -> list[str]:
    return [m["content"] for m in seed_messages()]


def build_clip_tokenizer(folder: Path, vocab_size: int = 1000, pad_token: str = EOS) -> Any:
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    bpe = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Whitespace(), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        end_of_word_suffix="</w>",
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator((text.lower() for text in _corpus()), trainer)
    learned = json.loads(bpe.to_str())["model"]
    vocab: dict[str, int] = {}
    for token in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab.setdefault(token, len(vocab))
    for token in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab.setdefault(token + "</w>", len(vocab))
    merges = [m if isinstance(m, str) else " ".join(m) for m in learned["merges"]]
    for merge in merges:
        vocab.setdefault(merge.replace(" ", ""), len(vocab))
    for special in (BOS, EOS, pad_token):
        vocab.setdefault(special, len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    tokenizer = CLIPTokenizer(
        vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"), pad_token=pad_token
    )
    tokenizer.save_pretrained(folder)
    return CLIPTokenizer.from_pretrained(folder)
