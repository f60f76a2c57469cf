"""Tokenizers of the other families the grammar must work with, built on the spot (no downloads).

`build_sentencepiece_style_tokenizer()` is shaped like Llama-2's and Phi-3's: a "▁" word marker
in place of spaces (prepended to the text), BPE merges, and byte-fallback tokens `<0x00>`..`<0xFF>`
for anything outside the vocabulary. `build_large_bpe_tokenizer(n)` is a byte-level BPE (Llama-3's
kind) of about `n` entries, trained on generated text, for timing the grammar mask at a real
vocabulary size. This module knows nothing of the code under test.
"""

from __future__ import annotations

import json
import random
from typing import Any

from tests.tiny_llm import _training_texts


def build_sentencepiece_style_tokenizer(vocab_size: int = 700) -> Any:
    from tokenizers import Tokenizer, decoders, models, normalizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>", "<|end|>"], show_progress=False
    )
    core.train_from_iterator(_training_texts(), trainer=trainer)
    # Byte fallback needs the 256 byte tokens as ordinary vocabulary entries, as SentencePiece has.
    spec = json.loads(core.to_str())
    vocab = spec["model"]["vocab"]
    for i in range(256):
        vocab.setdefault(f"<0x{i:02X}>", len(vocab))
    spec["model"]["byte_fallback"] = True
    spec["model"]["fuse_unk"] = True
    decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    spec["decoder"] = json.loads(decoder.__getstate__())
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(spec)),
        bos_token="<s>",
        eos_token="<|end|>",
        unk_token="<unk>",
        pad_token="</s>",
    )


def build_large_bpe_tokenizer(vocab_size: int = 32768, seed: int = 0) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = ["".join(rng.choice(letters) for _ in range(rng.randint(2, 9))) for _ in range(60_000)]
    corpus = [" ".join(rng.choice(words) for _ in range(200)) for _ in range(1500)]
    corpus += _training_texts()
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>", pad_token="<|end_of_text|>"
    )
