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

Lengths: the Lark lexemes leave string and comment lengths unbounded (a counted repeat costs the
mask about 100x, see grammar.LEXEME_MAX_COUNT), so the processor follows strings itself (`_Scan`)
and closes one before its value reaches canvas_code.MAX_STRING_CHARS, and closes the canvas
before the answer nears MAX_INPUT_CHARS.

It knows nothing of chats, queues or the renderer; torch and llguidance are imported lazily.
"""

from __future__ import annotations

import codecs
import threading
import weakref
from dataclasses import dataclass
from typing import Any

from omost_engine.canvas_code import MAX_INPUT_CHARS, MAX_STRING_CHARS
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
    allowed_length: Any  # numpy bool array over the vocabulary: tokens of MAX_TOKEN_CHARS or fewer
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
    import numpy as np

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
    allowed_length = np.array([len(b) <= MAX_TOKEN_CHARS for b in spelled], dtype=bool)
    return TokenizerView(ll, grammar, spelled, by_bytes, allowed_length, vocab_size)


@dataclass(frozen=True)
class _Scan:
    """Where the text stands lexically: inside which string (and how long its value is so far)."""

    quote: str = ""  # the open string's quote, "" outside strings
    escape: bool = False
    length: int = 0  # characters of the open string's value
    comment: bool = False
    total: int = 0  # characters of the answer so far

    def feed(self, text: str) -> _Scan:
        quote, escape, length, comment = self.quote, self.escape, self.length, self.comment
        for ch in text:
            if quote:
                if escape:
                    escape, length = False, length + 1
                elif ch == "\\":
                    escape = True
                elif ch == quote:
                    quote, length = "", 0
                else:
                    length += 1
            elif comment:
                comment = ch != "\n"
            elif ch in "'\"":
                quote, length = ch, 0
            elif ch == "#":
                comment = True
        return _Scan(quote, escape, length, comment, self.total + len(text))

    def must_close(self) -> bool:
        """True when one more token could overrun a parser limit (a string's or the answer's)."""
        if self.quote and self.length + MAX_TOKEN_CHARS >= MAX_STRING_CHARS:
            return True
        return self.total + 4 * 1024 >= MAX_INPUT_CHARS  # the longest completion is under 1 KB


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
        # Per consumed token (and one for the start): automaton states, undecoded UTF-8 tail, scan.
        self._states: list[tuple[frozenset[int], bytes, _Scan]] = [(self.automaton.start, b"", _Scan())]
        self.forced_tokens = 0
        self.reach_chars = MAX_TOKEN_CHARS
        self.automaton.reach(self.automaton.start, self.reach_chars)  # builds the table once, here

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

    def _advance(
        self, state: tuple[frozenset[int], bytes, _Scan], token: int
    ) -> tuple[frozenset[int], bytes, _Scan]:
        states, tail, scan = state
        data = tail + self.view.token_bytes[token]
        decoder = codecs.getincrementaldecoder("utf-8")()
        text = decoder.decode(data)
        pending = decoder.getstate()[0]
        return self.automaton.feed(states, text), pending, scan.feed(text)

    # --- the mask ----------------------------------------------------------------------------

    def _allowed(self) -> Any:
        """The grammar's mask as a bool tensor over the vocabulary (one numpy unpack, no loops)."""
        import numpy as np
        import torch

        bits = np.frombuffer(self.matcher.compute_bitmask(), dtype=np.uint8)
        allowed = np.unpackbits(bits, bitorder="little")[: self.view.vocab_size].astype(bool)
        allowed &= self.view.allowed_length
        return torch.from_numpy(allowed)

    def _forced(self, allowed: Any) -> int | None:
        """The longest allowed token spelling the start of the shortest completion, if any."""
        states, pending, _ = self._states[-1]
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
        if self.matcher.is_stopped() or self.matcher.is_accepting():
            out = torch.full_like(scores, float("-inf"))
            out[0, self.stop_id] = 0.0  # the closing fence is written: end the answer
            return out
        allowed = self._allowed()
        if width > allowed.shape[0]:  # a model head wider than the tokenizer: the rest is padding
            allowed = torch.cat([allowed, torch.zeros(width - allowed.shape[0], dtype=torch.bool)])
        allowed = allowed[:width].to(scores.device)
        left = self.max_new_tokens - len(generated)
        states, _, scan = self._states[-1]
        # Free choice only while any allowed token still leaves room to close the canvas after it.
        if left >= self.automaton.reach(states, self.reach_chars) + 2 and not scan.must_close():
            return scores.masked_fill(~allowed.unsqueeze(0), float("-inf"))
        token = self._forced(allowed)
        if token is None:
            return scores.masked_fill(~allowed.unsqueeze(0), float("-inf"))
        self.forced_tokens += 1
        out = torch.full_like(scores, float("-inf"))
        out[0, token] = 0.0
        return out
