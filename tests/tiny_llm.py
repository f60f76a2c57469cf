"""A tiny Llama-architecture chat model built on the spot, so LLM tests need no downloaded weights.

`build_tiny_llm(path)` trains a byte-level BPE tokenizer (about 512 tokens) on the seed
conversation and the system prompt, wraps it with Llama-3's special tokens and chat template,
builds a 2-layer Llama with random weights, and saves both with `save_pretrained`, so tests load
it through the real `from_pretrained` code path (TESTING.md). `tiny_llm_fixture()` turns that
into a session-scoped pytest fixture other test modules can reuse:

    tiny_llm = tiny_llm_fixture()      # at module level in a test file

Random weights can end a reply at any moment; by default the saved generation config suppresses
the end tokens so replies run to `max_new_tokens` (tests that need a natural stop pass
`stops=False`). This module knows nothing of the backends it serves.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.seed import seed_messages

BOS = "<|begin_of_text|>"
EOS = "<|end_of_text|>"
EOT = "<|eot_id|>"
SPECIAL_TOKENS = [BOS, EOS, "<|start_header_id|>", "<|end_header_id|>", EOT]

# Llama 3's chat template (header tokens, trimmed content, <|eot_id|> after each message).
LLAMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim"
    " + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)


def _training_texts() -> list[str]:
    from omost_engine.llm.system_prompt import SYSTEM_PROMPT

    texts = [m["content"] for m in seed_messages()]
    texts.append(SYSTEM_PROMPT)
    texts.append("The quick brown fox jumps over the lazy dog. 0123456789 " * 4)
    return texts


def build_tokenizer(vocab_size: int = 512):  # type: ignore[no-untyped-def]
    """A byte-level BPE PreTrainedTokenizerFast with Llama-3 special tokens and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(_training_texts(), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token=BOS, eos_token=EOT, pad_token=EOS)
    tokenizer.chat_template = LLAMA3_CHAT_TEMPLATE
    return tokenizer


def build_tiny_llm(path: Path, *, stops: bool = False, seed: int = 0) -> Path:
    """Save a tiny Llama chat model (random weights) and its tokenizer under `path`; return it."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = build_tokenizer()
    end_ids = [tokenizer.convert_tokens_to_ids(EOT), tokenizer.convert_tokens_to_ids(EOS)]
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=8192,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=end_ids,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    # Random weights give flat logits; sharpen them a little so sampling is not pure noise.
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)
    generation = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=end_ids,
        pad_token_id=tokenizer.pad_token_id,
        suppress_tokens=None if stops else end_ids,
    )
    model.generation_config = generation
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def tiny_llm_fixture(*, stops: bool = False) -> Callable[..., Iterator[Path]]:
    """A session-scoped fixture yielding the folder of a freshly built tiny model."""

    @pytest.fixture(scope="session")
    def _fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
        yield build_tiny_llm(tmp_path_factory.mktemp("tiny-llm"), stops=stops)

    return _fixture
