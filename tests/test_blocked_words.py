"""Blocked words through Unicode tricks (issue 13): look-alike letters, invisible and blank filler
characters, letters spelled out across one-letter words; and requests that are empty once folded.

The policy is asked the way the bot asks it (`Policy.decide`, `check_canvas`); the folding itself
is checked where its result is what a reader would see.
"""

from __future__ import annotations

import pytest

from bot.config import AccessConfig
from bot.lookalikes import fold, is_blank
from bot.policy import EMPTY_REQUEST_MESSAGE, DenyReason, Policy
from omost_engine.canvas_code import parse
from tests.seed import seed_answers

BLOCKED = ["zebra", "naked body", "gore", "ass"]


def policy() -> Policy:
    return Policy(AccessConfig(blocked_words=BLOCKED, rate_limit_per_minute=0))


def refused(text: str) -> bool:
    decision = policy().decide("telegram", 1, 1, text)
    if decision.allowed:
        return False
    assert (
        decision.reason is DenyReason.BLOCKED_WORD and decision.message == "That request uses a blocked word."
    )
    return True


@pytest.mark.parametrize(
    "text",
    [
        # the bypasses from the issue
        "a z e b r a",  # a one-letter word joins the spelled-out run
        "z.e.b.r.a",
        "draw a z.e.b.r.a please",
        "z\u0435bra",  # Cyrillic e
        "\u0396\u0395\u0392R\u0391",  # Greek capitals Z, E, B, A around a Latin R
        "\u03b6ebra",  # Greek zeta
        "z\u3164ebra",  # Hangul filler inside the word
        "a\u3164zebra",  # ... or standing in for a space
        "z\u2800e\u2800b\u2800r\u2800a",  # braille blanks between the letters
        "ze\u200bbra",
        "ze\ufe0fbra",  # a variation selector
        "z\u20ddebra",  # an enclosing mark
        # and their relatives
        "\U0001f1ff\U0001f1ea\U0001f1e7\U0001f1f7\U0001f1e6",  # regional indicator letters
        "\u1d22\u1d07\u0299\u0280\u1d00",  # small capitals
        "\uff5a\uff45\uff42\uff52\uff41",  # full-width (NFKC/NFKD)
        "\U0001d433\U0001d41e\U0001d41b\U0001d42b\U0001d41a",  # mathematical bold
        "n\u0430k\u0435d b\u043edy",  # a phrase with Cyrillic a, e, o
        "a n a k e d b o d y",
        "z e b r a s",
        "g\u043er\u0435",
    ],
)
def test_unicode_and_spelling_bypasses_are_refused(text: str) -> None:
    assert refused(text), text


@pytest.mark.parametrize(
    "text",
    [
        "a zebrafish in a tank",  # a compound is its own word (see bot/policy.py); list it to refuse it
        "a classic glass vase",
        "a gorgeous sunset",
        "I am a cat, a b-movie poster",  # one-letter words that spell nothing blocked
        "x y z axes on a chart",
        "\u041c\u043e\u0441\u043a\u0432\u0430 at night",  # Moskva in Cyrillic
        "\u03b1\u03b8\u03ae\u03bd\u03b1",  # Athina in Greek
        "\u00e9t\u00e9 \u00e0 Paris",
        "a naked tree, a body of water",
    ],
)
def test_ordinary_text_in_any_script_is_not_refused(text: str) -> None:
    assert not refused(text), text


def test_the_models_canvas_is_checked_through_the_same_folding() -> None:
    code = seed_answers()[0]
    assert policy().check_canvas(parse(code)).allowed
    tricked = code.replace("dinosaur", "z\u0435br\u0430", 1)
    assert tricked != code
    assert policy().check_canvas(parse(tricked)).reason is DenyReason.BLOCKED_WORD


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "\u200b\u200b\u200b",
        "\u3164",
        "\u2800 \u2800",
        "\ufe0f",
        "...",
        "\u200d\u2060\u00ad",
        "\n\t",
    ],
)
def test_a_request_empty_once_folded_is_blank(text: str) -> None:
    assert is_blank(text)
    assert EMPTY_REQUEST_MESSAGE == "Tell me what to draw."


@pytest.mark.parametrize("text", ["a", "7", "\U0001f993", "\u732b", "a\u200b", "\u0436"])
def test_anything_visible_is_not_blank(text: str) -> None:
    assert not is_blank(text)


def test_fold_reads_look_alikes_as_latin() -> None:
    assert fold("\u0417\u0435br\u0430") == "\u0437ebra"  # Cyrillic Ze has no Latin twin: kept
    assert fold("\u0397\u03b7") == "hn"  # Greek Eta: H as a capital, n as a small letter
    assert fold("z\u3164e") == "ze" and fold("z\u3164e", fillers_as_space=True) == "z e"
