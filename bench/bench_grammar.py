"""Benchmarks for the Canvas grammar enforced while decoding (issue 11); figures from this run.

1. Valid-canvas rate: the tests' tiny random-weight Llama through LocalBackend, temperature 1.0,
   max_new_tokens 1200, the same seeds with and without the grammar (`--seeds`, default 20).
2. Cost per generated token: seconds per new token, constrained / unconstrained, from those runs.
3. The mask per token at a real vocabulary size: a byte-level BPE of 32,768 entries trained here;
   random logits sampled under the grammar for `--mask-tokens` steps, timing llguidance's mask
   alone (compute_bitmask) and our whole processor call (sync, mask, budget check), in microseconds.
4. Forward passes per token with prompt lookup on the seed's edit turn (greedy, the tiny model),
   with and without the grammar, and whether the tokens are identical.

Run: python bench/bench_grammar.py   (CPU; several minutes at the defaults; --seeds 5 is quicker)
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from omost_engine.canvas import CanvasError
from omost_engine.canvas_code import parse
from omost_engine.llm.base import ChatMessage, GenerationParams
from omost_engine.llm.constrain import CanvasLogitsProcessor, tokenizer_view
from omost_engine.llm.local import LocalBackend
from tests.seed import seed_messages
from tests.tiny_llm import build_tiny_llm
from tests.tiny_tokenizers import build_large_bpe_tokenizer

ASK = [ChatMessage("user", "generate an image of the fierce battle of warriors and dinosaurs")]


def valid_rate(model: Path, seeds: int, max_new: int) -> None:
    print(f"1-2. tiny random Llama, temperature 1.0, max_new_tokens {max_new}, seeds 0..{seeds - 1}")
    backends = {c: LocalBackend(str(model), device="cpu", constrain=c) for c in ("auto", "off")}  # type: ignore[arg-type]
    for backend in backends.values():  # warm-up: weights, the tokenizer view, the automaton
        "".join(backend.generate(ASK, GenerationParams(max_new_tokens=20, seed=0), threading.Event()))
    valid = dict.fromkeys(backends, 0)
    tokens = dict.fromkeys(backends, 0)
    seconds = dict.fromkeys(backends, 0.0)
    for seed in range(seeds):
        for constrain, backend in backends.items():  # alternated, so machine load hits both alike
            params = GenerationParams(temperature=1.0, max_new_tokens=max_new, seed=seed)
            began = time.perf_counter()
            generation = backend.generate(ASK, params, threading.Event())
            text = "".join(generation)
            seconds[constrain] += time.perf_counter() - began
            tokens[constrain] += generation.stats.new_tokens
            with contextlib.suppress(CanvasError):
                valid[constrain] += parse(text).corrections == ()
    per_token = {c: seconds[c] / max(tokens[c], 1) for c in backends}
    for constrain in backends:
        label = "with the grammar   " if constrain == "auto" else "without the grammar"
        print(
            f"   {label}: {valid[constrain]}/{seeds} valid canvases, {tokens[constrain] / seeds:.0f} tokens "
            f"an answer, {per_token[constrain] * 1e3:.2f} ms a token"
        )
    print(f"   cost per token, constrained / unconstrained: {per_token['auto'] / per_token['off']:.2f}x")


def mask_cost(steps: int) -> None:
    import llguidance

    tokenizer = build_large_bpe_tokenizer()
    view = tokenizer_view(tokenizer, len(tokenizer))
    print(f"3. mask per token, byte-level BPE of {len(tokenizer):,} entries, {steps} sampled steps")
    generator = torch.Generator().manual_seed(0)
    call_us: list[float] = []
    answers: list[list[int]] = []
    done = 0
    # Pass A: sample answers under the processor, timing each whole call (sync, mask, budget).
    while done < steps:
        processor = CanvasLogitsProcessor(view, 0, 1200, tokenizer.eos_token_id)
        ids: list[int] = []
        while len(ids) < 1200 and done < steps:
            scores = torch.randn(1, len(tokenizer), generator=generator) * 4
            began = time.perf_counter()
            masked = processor(torch.tensor([ids], dtype=torch.long), scores)
            call_us.append((time.perf_counter() - began) * 1e6)
            token = int(torch.multinomial(torch.softmax(masked[0], -1), 1, generator=generator))
            done += 1
            if token == tokenizer.eos_token_id:
                break
            ids.append(token)
        answers.append(ids)
    # Pass B: a fresh matcher replays the same tokens, timing llguidance's mask alone.
    mask_us: list[float] = []
    for ids in answers:
        matcher = llguidance.LLMatcher(view.ll_tokenizer, view.grammar, log_level=0)
        for token in ids:
            began = time.perf_counter()
            matcher.compute_bitmask()
            mask_us.append((time.perf_counter() - began) * 1e6)
            matcher.consume_token(token)
    for name, values in (("llguidance mask", mask_us), ("whole processor call", call_us)):
        values.sort()
        p99 = values[int(len(values) * 0.99)]
        print(f"   {name}: median {statistics.median(values):.0f} us, p99 {p99:.0f} us")


def prompt_lookup(model: Path, max_new: int) -> None:
    turn = [ChatMessage(m["role"], m["content"]) for m in seed_messages()[:3]]
    print(f"4. prompt lookup on the seed's edit turn, greedy, max_new_tokens {max_new}")
    outputs: dict[tuple[str, bool], str] = {}
    for constrain in ("auto", "off"):
        for lookup in (False, True):
            backend = LocalBackend(
                str(model),
                device="cpu",
                constrain=constrain,  # type: ignore[arg-type]
                prompt_lookup_num_tokens=50 if lookup else None,
            )
            generation = backend.generate(
                turn, GenerationParams(temperature=0, max_new_tokens=max_new), threading.Event()
            )
            outputs[constrain, lookup] = "".join(generation)
            stats = generation.stats
            print(
                f"   grammar {'on ' if constrain == 'auto' else 'off'}, lookup {'on ' if lookup else 'off'}: "
                f"{stats.forward_passes / max(stats.new_tokens, 1):.3f} forward passes a token "
                f"({stats.new_tokens} tokens)"
            )
    for constrain in ("auto", "off"):
        same = outputs[constrain, True] == outputs[constrain, False]
        print(f"   grammar {'on' if constrain == 'auto' else 'off'}: lookup output identical: {same}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--max-new-tokens", type=int, default=1200)
    parser.add_argument("--mask-tokens", type=int, default=2000)
    parser.add_argument("--lookup-tokens", type=int, default=400)
    args = parser.parse_args()
    torch.set_num_threads(1)  # comparable ratios on a shared 2-core machine
    with tempfile.TemporaryDirectory() as tmp:
        model = build_tiny_llm(Path(tmp) / "tiny")
        mask_cost(args.mask_tokens)
        prompt_lookup(model, args.lookup_tokens)
        valid_rate(model, args.seeds, args.max_new_tokens)


if __name__ == "__main__":
    main()
