"""Grammar-constrained decoding for the local backend: every answer is a canvas that parses.

Owns the transformers logits processor that enforces omost_engine/grammar.py token by token.
The mask comes from llguidance (`LLMatcher`): chosen over xgrammar because it compiles the Lark
form straight from our grammar tree with regex lexemes (bounded string lengths cost no grammar
size), builds its token view from any Hugging Face fast tokenizer (byte-level BPE like Llama-3
and SentencePiece-style byte-fallback vocabularies like Phi-3), and rolls back consumed tokens,
which prompt-lookup decoding needs.

The processor keeps no assumptions about call order: each call names its whole prefix
(`input_ids`), and the processor rolls the matcher back to the longest prefix it has seen and
consumes the rest. Prompt lookup calls it once per speculative position and then drops the
rejected tail; the rollback makes the next call correct, so greedy output with prompt lookup is
token-identical to greedy output without it. A speculative token the grammar rejects leaves that
position's scores untouched: transformers rejects it anyway, because the previous position's
masked argmax differs from it.

The budget: an answer must also *end* as a canvas within max_new_tokens. `CanvasAutomaton` knows
the shortest text that completes a canvas from the current prefix and how far one token can
move that distance. While the budget left exceeds that bound the model chooses freely under the
mask; after it, the processor forces the shortest completion (the longest allowed token that
spells the next part of it), then the stop token. Tokens longer than `MAX_TOKEN_CHARS` bytes are
never allowed, so the bound holds for every allowed token.

It knows nothing of chats, queues or the renderer; torch and llguidance are imported lazily.
"""

from __future__ import annotations

import codecs
import threading
import weakref
from dataclasses import dataclass
from typing import Any

from omost_engine.grammar import CanvasAutomaton, canvas_automaton, to_lark

MAX_TOKEN_CHARS = 48
"""Longest token (in bytes) the constrained decoder may choose; canvases never need longer ones."""


@dataclass
class TokenizerView:
    """What the processor needs of one tokenizer, built once and shared by every generation."""

    ll_tokenizer: Any  # llguidance.LLTokenizer
    grammar: str  # llguidance's serialised grammar (from the Lark form)
    token_bytes: list[bytes]  # per id; b"" for special tokens
    by_bytes: dict[bytes, int]  # spelling -> id, to force the shortest completion
    too_long: Any  # torch.bool tensor over the vocabulary: tokens longer than MAX_TOKEN_CHARS
    vocab_size: int


_views: weakref.WeakKeyDictionary[Any, dict[int, TokenizerView]] = weakref.WeakKeyDictionary()
_views_lock = threading.Lock()


def tokenizer_view(tokenizer: Any, vocab_size: int) -> TokenizerView:
    """The (cached) llguidance view of a Hugging Face fast tokenizer for a model of `vocab_size`."""
    with _views_lock:
        per_size = _views.setdefault(tokenizer, {})
        view = per_size.get(vocab_size)
        if view is None:
            view = per_size[vocab_size] = _build_view(tokenizer, vocab_size)
        return view


def _build_view(tokenizer: Any, vocab_size: int) -> TokenizerView:
    import llguidance
    import llguidance.hf
    import torch

    ll = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size)
    grammar = llguidance.LLMatcher.grammar_from_lark(to_lark())
    error = llguidance.LLMatcher.validate_grammar(grammar, ll)
    if error:
        raise RuntimeError(f"the Canvas grammar does not compile in llguidance: {error}")
    spelled: list[bytes] = []
    for i in range(vocab_size):
        if i >= ll.vocab_size or ll.is_special_token(i):
            spelled.append(b"")
        else:
            spelled.append(ll.decode_bytes([i]))
    by_bytes: dict[bytes, int] = {}
    for i, b in enumerate(spelled):
        if b and b not in by_bytes:
            by_bytes[b] = i
    too_long = torch.tensor([len(b) > MAX_TOKEN_CHARS for b in spelled], dtype=torch.bool)
    return TokenizerView(ll, grammar, spelled, by_bytes, too_long, vocab_size)


class CanvasLogitsProcessor:
    """A transformers logits processor for one generation (batch size 1) under the Canvas grammar.

    `prompt_length` is the number of prompt tokens in front of every `input_ids` it is given;
    `max_new_tokens` the budget the answer must close within; `stop_id` the token that ends it.
    `forced_tokens` counts the tokens it forced to close the canvas (for the stats).
    """

    def __init__(self, view: TokenizerView, prompt_length: int, max_new_tokens: int, stop_id: int) -> None:
        import llguidance

        self.view = view
        self.prompt_length = prompt_length
        self.max_new_tokens = max_new_tokens
        self.stop_id = stop_id
        self.matcher = llguidance.LLMatcher(view.ll_tokenizer, view.grammar, log_level=0)
        self.automaton: CanvasAutomaton = canvas_automaton()
        self.tokens: list[int] = []  # consumed by the matcher, in order
        # Per consumed token (and one for the start): automaton states and undecoded UTF-8 tail.
        self._states: list[tuple[frozenset[int], bytes]] = [(self.automaton.start, b"")]
        self.forced_tokens = 0
        self.reach_chars = MAX_TOKEN_CHARS

    # --- keeping the matcher on the prefix it is asked about ---------------------------------

    def _sync(self, generated: list[int]) -> bool:
        """Roll back to the common prefix, consume the rest. False if the grammar rejects a token."""
        common = 0
        limit = min(len(generated), len(self.tokens))
        if generated[:limit] == self.tokens[:limit]:
            common = limit
        else:
            while common < limit and generated[common] == self.tokens[common]:
                common += 1
        if common < len(self.tokens):
            self.matcher.rollback(len(self.tokens) - common)
            del self.tokens[common:]
            del self._states[common + 1 :]
        for token in generated[common:]:
            if self.matcher.validate_tokens([token]) != 1 or not self.matcher.consume_token(token):
                return False  # a speculative token the model will not confirm
            self.tokens.append(token)
            self._states.append(self._advance(self._states[-1], token))
        return True

    def _advance(self, state: tuple[frozenset[int], bytes], token: int) -> tuple[frozenset[int], bytes]:
        states, tail = state
        data = tail + self.view.token_bytes[token]
        decoder = codecs.getincrementaldecoder("utf-8")()
        text = decoder.decode(data)
        pending = decoder.getstate()[0]
        return self.automaton.feed(states, text), pending

    # --- the mask ----------------------------------------------------------------------------

    def _allowed(self) -> Any:
        import torch

        words = (self.view.vocab_size + 31) // 32
        bits = torch.frombuffer(bytearray(self.matcher.compute_bitmask()), dtype=torch.int32)[:words]
        shifts = torch.arange(32, dtype=torch.int32)
        allowed = ((bits.unsqueeze(-1) >> shifts) & 1).flatten()[: self.view.vocab_size].bool()
        return allowed & ~self.view.too_long

    def _forced(self, allowed: Any) -> int | None:
        """The longest allowed token spelling the start of the shortest completion, if any."""
        states, pending = self._states[-1]
        if pending:
            return None  # mid-character: let the mask finish the character first
        path = self.automaton.completion(states).encode("utf-8")
        for n in range(min(len(path), MAX_TOKEN_CHARS), 0, -1):
            token = self.view.by_bytes.get(path[:n])
            if token is not None and bool(allowed[token]):
                return token
        return None

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        if input_ids.shape[0] != 1:
            raise ValueError("the Canvas grammar processor decodes one sequence at a time")
        generated = input_ids[0, self.prompt_length :].tolist()
        if not self._sync(generated):
            return scores
        width = scores.shape[-1]
        out = torch.full_like(scores, float("-inf"))
        if self.matcher.is_stopped() or self.matcher.is_accepting():
            out[0, self.stop_id] = 0.0  # the closing fence is written: end the answer
            return out
        allowed = self._allowed()
        if width > allowed.shape[0]:  # a model head wider than the tokenizer: the rest is padding
            allowed = torch.cat([allowed, torch.zeros(width - allowed.shape[0], dtype=torch.bool)])
        allowed = allowed[:width].to(scores.device)
        left = self.max_new_tokens - len(generated)
        states, _ = self._states[-1]
        # Free choice only while any allowed token still leaves room to close the canvas after it.
        if left >= self.automaton.reach(states, self.reach_chars) + 2:
            return torch.where(allowed.unsqueeze(0), scores, out)
        token = self._forced(allowed)
        if token is None:
            return torch.where(allowed.unsqueeze(0), scores, out)
        self.forced_tokens += 1
        out[0, token] = 0.0
        return out
