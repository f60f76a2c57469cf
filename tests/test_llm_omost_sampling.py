"""The local backend samples as Omost's app does (issue 12, item 6).

Omost calls `generate(do_sample=True, temperature=..., top_p=...)` without a top_k, so
transformers' default top_k = 50 applies. With the same seed our stream must be that call's
answer token for token, and not the answer without a top-k cut.
"""

from __future__ import annotations

import threading
from pathlib import Path

import torch

from omost_engine.llm.base import ChatMessage, GenerationParams
from omost_engine.llm.local import LocalBackend
from omost_engine.llm.system_prompt import SYSTEM_PROMPT
from tests.tiny_llm import tiny_llm_fixture

tiny_llm = tiny_llm_fixture()

HELLO = [ChatMessage("user", "generate an image of a cat")]
SAMPLED = GenerationParams(temperature=0.6, top_p=0.9, max_new_tokens=40, seed=11)


def test_sampling_matches_omosts_generate_call_with_transformers_top_k(tiny_llm: Path) -> None:
    # unconstrained: Omost decodes without a grammar, and this compares with its very call
    backend = LocalBackend(str(tiny_llm), constrain="off")
    ours = "".join(backend.generate(HELLO, SAMPLED, threading.Event()))
    tokenizer, model = backend._tokenizer, backend._model
    enc = tokenizer.apply_chat_template(
        [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": HELLO[0].content}],
        add_generation_prompt=True,
        return_dict=True,
        return_tensors="pt",
    )
    common = dict(
        max_new_tokens=SAMPLED.max_new_tokens,
        do_sample=True,
        temperature=SAMPLED.temperature,
        top_p=SAMPLED.top_p,
        eos_token_id=backend._stop_ids(),
        pad_token_id=tokenizer.pad_token_id,
    )

    def bare(**extra: object) -> str:
        torch.manual_seed(SAMPLED.seed or 0)
        with torch.inference_mode():
            out = model.generate(**enc, **common, **extra)
        return str(tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True))

    assert ours == bare()  # Omost's call: no top_k given
    assert ours != bare(top_k=None)  # without the cut the same seed writes something else
