"""The local transformers backend, on a tiny Llama built on the spot and loaded from disk.

Covers streaming, the chat template and system prompt, cancellation within one token, seeds,
greedy decoding, prompt-lookup equivalence on edit turns, context trimming, 4-bit and 8-bit
loading through bitsandbytes on CPU (quantise on load and a repo that ships quantised weights),
unload/load, and the errors a user sees (model not on disk while offline, out of memory).

These tests pin the unconstrained machinery (constrain="off"): answers compared with a bare
`model.generate`. The same backend under the Canvas grammar is tested in test_llm_constrained.py.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from omost_engine.errors import Interrupted, ModelNotAvailable, OutOfMemory
from omost_engine.llm.base import ChatMessage, GenerationParams
from omost_engine.llm.context import ContextTooLong, fit_to_context
from omost_engine.llm.local import LocalBackend, estimate_memory
from omost_engine.llm.system_prompt import SYSTEM_PROMPT
from tests.seed import seed_messages
from tests.tiny_llm import tiny_llm_fixture

tiny_llm = tiny_llm_fixture()

GREEDY = GenerationParams(temperature=0, max_new_tokens=60)
HELLO = [ChatMessage("user", "generate an image of a cat")]


def seed_chat(turns: int) -> list[ChatMessage]:
    """The seed conversation's first `turns` (user, canvas) pairs, then a new edit request."""
    history = [ChatMessage(m["role"], m["content"]) for m in seed_messages()[: 2 * turns]]  # type: ignore[arg-type]
    return [*history, ChatMessage("user", "make the sky red")]


@pytest.fixture(scope="module")
def backend(tiny_llm: Path) -> LocalBackend:
    b = LocalBackend(str(tiny_llm), constrain="off")
    b.load()
    return b


def run(backend: LocalBackend, messages: list[ChatMessage], params: GenerationParams = GREEDY):  # type: ignore[no-untyped-def]
    generation = backend.generate(messages, params, threading.Event())
    pieces = list(generation)
    return generation, pieces


# --- streaming and the chat ------------------------------------------------------------------


def test_streams_pieces_whose_concatenation_is_the_answer(backend: LocalBackend) -> None:
    generation, pieces = run(backend, HELLO)
    assert len(pieces) > 3
    assert "".join(pieces) == generation.text
    assert generation.stats.new_tokens == GREEDY.max_new_tokens
    assert generation.stats.tokens_per_second > 0
    assert any("60-token limit" in note for note in generation.stats.notes)


def test_prompt_is_the_chat_template_with_the_system_prompt_in_front(backend: LocalBackend) -> None:
    generation, _ = run(backend, HELLO)
    tokenizer = backend._tokenizer
    expected = tokenizer.apply_chat_template(
        [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": HELLO[0].content}],
        add_generation_prompt=True,
        return_dict=True,
    )["input_ids"]
    assert generation.stats.prompt_tokens == len(expected)


def test_answer_matches_a_bare_greedy_generate(backend: LocalBackend) -> None:
    generation, _ = run(backend, HELLO)
    tokenizer, model = backend._tokenizer, backend._model
    enc = tokenizer.apply_chat_template(
        [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": HELLO[0].content}],
        add_generation_prompt=True,
        return_dict=True,
        return_tensors="pt",
    )
    out = model.generate(**enc, max_new_tokens=GREEDY.max_new_tokens, do_sample=False)
    bare = tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    assert generation.text == bare


# --- cancellation ----------------------------------------------------------------------------


def test_cancel_mid_stream_stops_within_one_token(backend: LocalBackend) -> None:
    cancel = threading.Event()
    generation = backend.generate(HELLO, GenerationParams(temperature=0, max_new_tokens=2000), cancel)
    tokens_when_cancelled = -1
    with pytest.raises(Interrupted):
        for i, _ in enumerate(generation):
            if i == 3:
                cancel.set()
                tokens_when_cancelled = generation.stats.new_tokens
    assert 0 < tokens_when_cancelled < 2000
    assert generation.stats.new_tokens <= tokens_when_cancelled + 1
    assert not [t for t in threading.enumerate() if t.name.startswith("llm-generate")]


def test_cancel_before_start_raises_at_once(backend: LocalBackend) -> None:
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Interrupted):
        backend.generate(HELLO, GREEDY, cancel)


def test_leaving_the_stream_early_stops_the_model(backend: LocalBackend) -> None:
    generation = backend.generate(
        HELLO, GenerationParams(temperature=0, max_new_tokens=2000), threading.Event()
    )
    stream = iter(generation)
    next(stream)
    stream.close()  # type: ignore[attr-defined]
    assert generation.stats.new_tokens < 2000
    assert not [t for t in threading.enumerate() if t.name.startswith("llm-generate")]


# --- seeds and sampling ----------------------------------------------------------------------


def test_same_seed_same_answer_other_seed_other_answer(backend: LocalBackend) -> None:
    def sample(seed: int) -> str:
        return run(
            backend, HELLO, GenerationParams(temperature=1.0, top_p=0.95, max_new_tokens=40, seed=seed)
        )[0].text

    first = sample(7)
    assert sample(7) == first
    assert sample(8) != first


def test_temperature_zero_is_greedy_whatever_the_seed(backend: LocalBackend) -> None:
    a = run(backend, HELLO, GenerationParams(temperature=0, max_new_tokens=40, seed=1))[0].text
    b = run(backend, HELLO, GenerationParams(temperature=0, max_new_tokens=40, seed=2))[0].text
    assert a == b


# --- prompt lookup on edit turns -------------------------------------------------------------


def test_prompt_lookup_gives_the_same_greedy_answer_with_fewer_forward_passes(tiny_llm: Path) -> None:
    params = GenerationParams(temperature=0, max_new_tokens=200)
    plain = LocalBackend(str(tiny_llm), constrain="off", prompt_lookup_num_tokens=None)
    lookup = LocalBackend(str(tiny_llm), constrain="off", prompt_lookup_num_tokens=10, max_matching_ngram_size=3)
    chat = seed_chat(turns=1)
    without, _ = run(plain, chat, params)
    with_lookup, _ = run(lookup, chat, params)
    assert with_lookup.text == without.text
    assert without.stats.forward_passes == without.stats.new_tokens == 200
    assert with_lookup.stats.new_tokens == 200
    assert with_lookup.stats.forward_passes < with_lookup.stats.new_tokens


def test_prompt_lookup_stays_off_without_a_canvas_in_the_history(backend: LocalBackend) -> None:
    generation, _ = run(backend, HELLO)
    assert generation.stats.forward_passes == generation.stats.new_tokens


def test_sampled_edit_turn_with_prompt_lookup_is_reproducible(backend: LocalBackend) -> None:
    params = GenerationParams(temperature=0.6, top_p=0.9, max_new_tokens=60, seed=3)
    chat = seed_chat(turns=1)
    assert run(backend, chat, params)[0].text == run(backend, chat, params)[0].text


# --- context budget --------------------------------------------------------------------------


def test_long_history_drops_oldest_turns_and_keeps_the_latest_canvas(tiny_llm: Path) -> None:
    chat = seed_chat(turns=2)  # user, canvas, user, canvas, new user message
    b = LocalBackend(str(tiny_llm), constrain="off", context_tokens=0)  # context set below, once the sizes are known
    b.load()
    sys_msg = ChatMessage("system", SYSTEM_PROMPT)
    kept = [sys_msg, chat[2], chat[3], chat[4]]
    b.context_tokens = b._count_tokens(kept) + GREEDY.max_new_tokens  # room for exactly the newest turn
    generation, _ = run(b, chat)
    assert generation.stats.dropped_messages == 2
    assert generation.stats.prompt_tokens == b._count_tokens(kept)
    assert any("2 oldest messages" in note for note in generation.stats.notes)
    assert generation.stats.new_tokens == GREEDY.max_new_tokens


def test_a_conversation_that_fits_is_untouched(backend: LocalBackend) -> None:
    generation, _ = run(backend, seed_chat(turns=2))
    assert generation.stats.dropped_messages == 0
    assert not any("oldest" in note for note in generation.stats.notes)


def test_answer_is_shortened_when_only_the_protected_messages_fit(tiny_llm: Path) -> None:
    b = LocalBackend(str(tiny_llm), constrain="off")
    b.load()
    chat = seed_chat(turns=1)
    protected = b._count_tokens([ChatMessage("system", SYSTEM_PROMPT), *chat[1:]])
    b.context_tokens = protected + 20
    generation, _ = run(b, chat, GenerationParams(temperature=0, max_new_tokens=100))
    assert generation.stats.dropped_messages == 1  # the first user message; the canvas stays
    assert generation.stats.new_tokens == 20
    assert any("limited to 20 tokens" in note for note in generation.stats.notes)


def test_no_room_at_all_is_a_clear_error(tiny_llm: Path) -> None:
    b = LocalBackend(str(tiny_llm), constrain="off", context_tokens=100)
    with pytest.raises(ContextTooLong, match="too long for the model"):
        b.generate(seed_chat(turns=1), GREEDY, threading.Event())


def words(messages: object) -> int:
    return sum(len(m.content.split()) for m in messages)  # type: ignore[attr-defined]


def test_trimming_never_drops_system_newest_user_or_latest_canvas() -> None:
    canvas = "```python\ncanvas = Canvas()\n```"
    chat = [
        ChatMessage("system", "s"),
        ChatMessage("user", "one two three"),
        ChatMessage("assistant", canvas + " a b c"),
        ChatMessage("user", "four five"),
        ChatMessage("assistant", "sorry, no canvas this time"),
        ChatMessage("user", "six"),
    ]
    fit = fit_to_context(chat, words, context_tokens=11, max_new_tokens=1)
    # Only the newest user message, the system prompt and the latest canvas survive.
    assert fit.messages == [chat[0], chat[2], chat[5]]
    assert fit.dropped_messages == 3
    assert fit.prompt_tokens == words(fit.messages)


def test_trimming_drops_whole_turns_oldest_first() -> None:
    chat = [ChatMessage("user", "a a a"), ChatMessage("assistant", "b b b")] * 3 + [ChatMessage("user", "c")]
    fit = fit_to_context(chat, words, context_tokens=9, max_new_tokens=2)
    assert fit.messages == chat[4:]
    assert fit.dropped_messages == 4


# --- quantisation on CPU ---------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:MatMul8bitLt")
@pytest.mark.parametrize(("quantize", "layer"), [("4bit", "Linear4bit"), ("8bit", "Linear8bitLt")])
def test_quantise_on_load_and_reload_the_saved_quantised_repo(
    tiny_llm: Path, tmp_path: Path, quantize: str, layer: str
) -> None:
    b = LocalBackend(str(tiny_llm), constrain="off", quantize=quantize)  # type: ignore[arg-type]
    generation, pieces = run(b, HELLO, GenerationParams(temperature=0, max_new_tokens=30))
    assert type(b._model.model.layers[0].mlp.down_proj).__name__ == layer
    assert b.quantized == quantize
    assert generation.stats.new_tokens == 30 and pieces

    # A repo that ships its quantisation config (like lllyasviel/omost-llama-3-8b-4bits) loads
    # quantised without being asked to, and answers exactly as before.
    b._model.save_pretrained(tmp_path)
    b._tokenizer.save_pretrained(tmp_path)
    shipped = LocalBackend(str(tmp_path), constrain="off")
    again, _ = run(shipped, HELLO, GenerationParams(temperature=0, max_new_tokens=30))
    assert type(shipped._model.model.layers[0].mlp.down_proj).__name__ == layer
    assert shipped.quantized == quantize
    assert again.text == generation.text


# --- loading, unloading and errors -----------------------------------------------------------


def test_unload_frees_the_weights_and_the_next_turn_reloads_them(tiny_llm: Path) -> None:
    b = LocalBackend(str(tiny_llm), constrain="off")
    before = run(b, HELLO)[0].text
    b.unload()
    assert not b.loaded
    assert run(b, HELLO)[0].text == before
    assert b.loaded
    b.close()
    assert not b.loaded


def test_model_not_on_disk_while_offline_names_it_and_the_download_command(tmp_path: Path) -> None:
    b = LocalBackend("lllyasviel/omost-llama-3-8b-4bits", offline=True, cache_dir=str(tmp_path))
    with pytest.raises(ModelNotAvailable) as info:
        b.generate(HELLO, GREEDY, threading.Event())
    message = str(info.value)
    assert info.value.model == "lllyasviel/omost-llama-3-8b-4bits"
    assert "'lllyasviel/omost-llama-3-8b-4bits'" in message
    assert "offline" in message
    assert "omost-bot download --llm" in message
    assert "local folder" in message


def test_missing_local_folder_says_so(tmp_path: Path) -> None:
    folder = tmp_path / "no-such-model"
    with pytest.raises(ModelNotAvailable, match="does not exist"):
        LocalBackend(str(folder), offline=True).load()


def test_out_of_memory_while_generating_names_the_model_and_the_memory(tiny_llm: Path) -> None:
    b = LocalBackend(str(tiny_llm), constrain="off")
    b.load()

    def exhausted(*_: object) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    hook = b._model.register_forward_pre_hook(exhausted)
    try:
        with pytest.raises(OutOfMemory) as info:
            run(b, HELLO)
    finally:
        hook.remove()
    assert info.value.model == str(tiny_llm)
    assert info.value.needed_bytes and info.value.needed_bytes > 0
    assert str(tiny_llm) in info.value.detail and "GB" in str(info.value)
    assert f"'\u2026/{tiny_llm.name}'" in str(info.value) and str(tiny_llm) not in str(info.value)
    assert run(b, HELLO)[0].stats.new_tokens == GREEDY.max_new_tokens  # the backend still works


def test_memory_estimate_for_the_default_omost_model_matches_its_size() -> None:
    from transformers import LlamaConfig

    llama3_8b = LlamaConfig(
        vocab_size=128256,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
    )
    four_bit = estimate_memory(llama3_8b, "4bit")
    assert 5.2 < four_bit.weights / 1024**3 < 6.0  # SPEC 7: the 4-bit repo is about 5.7 GB
    assert four_bit.kv_cache == 2 * 32 * 8 * 128 * 8192 * 2  # 1 GiB for 8k tokens in 16 bit
    assert estimate_memory(llama3_8b, None).weights / 1024**3 > 14
