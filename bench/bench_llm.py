"""Benchmarks for the language-model backends (issue 3); prints figures measured in this run.

1. Edit turns: if a model wrote the seed's second answer (teacher-forced, so model-independent),
   how many target-model forward passes per generated token would prompt-lookup decoding need?
   transformers' own PromptLookupCandidateGenerator proposes candidates from the prompt (system
   prompt + first turn + the edit request) and the text so far; a candidate is accepted up to the
   first token that differs from the seed answer, and each forward pass also yields one token of
   its own (the correction or the bonus token). Swept over prompt_lookup_num_tokens and
   max_matching_ngram_size. Plain decoding needs exactly 1.0 pass per token.
   Tokenisers: the Llama-3 pre-tokeniser split (its regex; with a 128k vocabulary nearly every
   piece is one Llama-3 token, so this approximates the real model's tokens) and the tests' tiny
   byte-level BPE (512 tokens: many more, shorter tokens).
2. Streaming overhead: our LocalBackend (thread + streamer + cancel check + forward-pass hook +
   chat template + context fit) against a bare model.generate on the tiny test model, greedy,
   same prompt and token count. Reported as a ratio of medians.

Run: python bench/bench_llm.py   (CPU; about a minute)
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import regex
import torch
from transformers.generation.candidate_generator import PromptLookupCandidateGenerator

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from omost_engine.llm.base import ChatMessage, GenerationParams
from omost_engine.llm.local import LocalBackend
from omost_engine.llm.system_prompt import SYSTEM_PROMPT
from tests.seed import seed_messages
from tests.tiny_llm import build_tiny_llm, build_tokenizer

# Llama 3's pre-tokeniser pattern (tokenizer.json of Meta-Llama-3-8B).
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

NUM_TOKENS = (3, 5, 10, 20, 30, 50, 80, 120)
NGRAM_SIZES = (1, 2, 3, 4, 5)


def header(role: str) -> str:
    return f"<|start_header_id|>{role}<|end_header_id|>\n\n"


def edit_turn_texts() -> tuple[str, str]:
    """(prompt text up to the second answer, the second answer), in Llama 3's chat layout."""
    u1, a1, u2, a2 = (m["content"] for m in seed_messages())
    prompt = (
        "<|begin_of_text|>"
        + "".join(
            header(role) + text.strip() + "<|eot_id|>"
            for role, text in (("system", SYSTEM_PROMPT), ("user", u1), ("assistant", a1), ("user", u2))
        )
        + header("assistant")
    )
    return prompt, a2.strip()


def ids_for(pieces: list[str], vocab: dict[str, int]) -> list[int]:
    return [vocab.setdefault(p, len(vocab)) for p in pieces]


def passes_needed(prompt: list[int], target: list[int], num_tokens: int, ngram: int) -> int:
    """Forward passes prompt lookup needs to produce `target` after `prompt` (teacher-forced)."""
    generator = PromptLookupCandidateGenerator(
        num_output_tokens=num_tokens, max_matching_ngram_size=ngram, max_length=10**9
    )
    ids = torch.tensor([prompt + target], dtype=torch.long)
    start, pos, passes = len(prompt), 0, 0
    while pos < len(target):
        current = ids[:, : start + pos]
        candidates, _ = generator.get_candidates(current)
        proposed = candidates[0, current.shape[1] :].tolist()
        accepted = 0
        for a, b in zip(proposed, target[pos:], strict=False):
            if a != b:
                break
            accepted += 1
        pos = min(pos + accepted + 1, len(target))  # the pass adds one token of its own
        passes += 1
    return passes


def bench_prompt_lookup() -> list[str]:
    prompt_text, answer_text = edit_turn_texts()
    lines = []
    tiny = build_tokenizer()
    tokenisations = {
        "Llama-3 pre-tokeniser split (~Llama-3 tokens)": (
            lambda text, vocab: ids_for(regex.findall(LLAMA3_SPLIT, text), vocab)
        ),
        "tiny byte-level BPE (512 tokens)": (
            lambda text, vocab: tiny(text, add_special_tokens=False)["input_ids"]
        ),
    }
    for name, tokenise in tokenisations.items():
        vocab: dict[str, int] = {}
        prompt, target = tokenise(prompt_text, vocab), tokenise(answer_text, vocab)
        results = {
            (k, n): passes_needed(prompt, target, k, n) / len(target) for k in NUM_TOKENS for n in NGRAM_SIZES
        }
        best = min(results, key=lambda key: results[key])
        lines.append(f"{name}: prompt {len(prompt)} tokens, answer {len(target)} tokens")
        lines.append("  passes/token  " + "  ".join(f"ngram={n}" for n in NGRAM_SIZES))
        for k in NUM_TOKENS:
            row = "  ".join(f"{results[(k, n)]:7.3f}" for n in NGRAM_SIZES)
            lines.append(f"  lookup={k:<3}      {row}")
        k, n = best
        lines.append(
            f"  best: prompt_lookup_num_tokens={k}, max_matching_ngram_size={n}: "
            f"{results[best]:.3f} passes/token ({1 / results[best]:.2f} tokens/pass) vs 1.000 plain"
        )
    return lines


def bench_streaming_overhead(repeats: int = 7, tokens: int = 200) -> list[str]:
    torch.set_num_threads(1)
    folder = build_tiny_llm(Path(tempfile.mkdtemp()) / "tiny-llm")
    backend = LocalBackend(str(folder), prompt_lookup_num_tokens=None)
    backend.load()
    model, tokenizer = backend._model, backend._tokenizer
    messages = [ChatMessage("user", "generate an image of the fierce battle of warriors and dinosaurs")]
    params = GenerationParams(temperature=0, max_new_tokens=tokens)
    enc = tokenizer.apply_chat_template(
        [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": messages[0].content}],
        add_generation_prompt=True,
        return_dict=True,
        return_tensors="pt",
    )

    def bare() -> float:
        started = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(
                **enc, max_new_tokens=tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
            )
        assert out.shape[1] - enc["input_ids"].shape[1] == tokens
        return time.perf_counter() - started

    def streamed() -> float:
        from transformers import TextIteratorStreamer

        streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        started = time.perf_counter()

        def work() -> None:
            with torch.inference_mode():
                model.generate(
                    **enc,
                    max_new_tokens=tokens,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                    streamer=streamer,
                )

        thread = threading.Thread(target=work)
        thread.start()
        for _ in streamer:
            pass
        thread.join()
        return time.perf_counter() - started

    def ours() -> float:
        started = time.perf_counter()
        generation = backend.generate(messages, params, threading.Event())
        for _ in generation:
            pass
        assert generation.stats.new_tokens == tokens
        return time.perf_counter() - started

    bare(), streamed(), ours()  # warm-up
    bare_times, streamed_times, our_times = [], [], []
    for _ in range(repeats):  # interleaved so drift hits all alike
        bare_times.append(bare())
        streamed_times.append(streamed())
        our_times.append(ours())
    b, s, o = (statistics.median(t) for t in (bare_times, streamed_times, our_times))
    return [
        f"tiny Llama, greedy, {tokens} new tokens, median of {repeats}, 1 torch thread:",
        f"  bare model.generate                  {b * 1000:7.1f} ms  ({tokens / b:6.0f} tokens/s)",
        f"  generate + TextIteratorStreamer      {s * 1000:7.1f} ms  ({tokens / s:6.0f} tokens/s)",
        f"  LocalBackend stream (ours)           {o * 1000:7.1f} ms  ({tokens / o:6.0f} tokens/s)",
        f"  ratio ours / bare                    {o / b:.3f}",
        f"  ratio ours / generate+streamer       {o / s:.3f}",
        f"  overhead per token vs bare           {(o - b) / tokens * 1000:.3f} ms",
    ]


def main() -> None:
    print("== prompt lookup on the seed's second answer (teacher-forced) ==")
    for line in bench_prompt_lookup():
        print(line)
    print()
    print("== streaming loop overhead ==")
    for line in bench_streaming_overhead():
        print(line)
    print()
    print("GPU figures (8B Llama, random weights, 4-bit, plain vs prompt lookup): not measured, no GPU here.")


if __name__ == "__main__":
    main()
