"""The port's shared pieces every adapter uses: the button codec, text clipping, bounded memory."""

from __future__ import annotations

import pytest

from adapters.base import BUTTON_ACTIONS, BoundedMap, Button, clip_text, clipped, decode_button, encode_button


def test_every_button_round_trips_within_telegrams_64_bytes() -> None:
    for action in BUTTON_ACTIONS:
        data = encode_button(Button(action, 2**63 - 1))
        assert len(data.encode()) <= 64 and decode_button(data) == (action, 2**63 - 1)
    for hostile in ("omost:rm -rf:1", "omost:seed:", "omost:seed:-1", "set:size=1", "omost:drop:3", "x"):
        assert decode_button(hostile) is None


def test_clipping_cuts_at_a_line_or_word_and_says_so() -> None:
    assert clip_text("short", 10) == ("short", False)
    text, cut = clip_text("one two three four five six", 16)
    assert cut and text == "one two three…" and len(text) <= 16
    assert clip_text("first line\nsecond line here", 16) == ("first line…", True)
    assert len(clipped("x" * 100, 10)) == 10  # no break to cut at: cut hard


def test_a_bounded_map_forgets_the_oldest_and_tells_first_times() -> None:
    seen: BoundedMap[str, int] = BoundedMap(2)
    assert seen.first_time("a", 1) and not seen.first_time("a", 1)
    seen["b"] = 2
    seen["a"] = 3  # setting again makes "a" the newest
    seen["c"] = 4
    assert "b" not in seen and seen["a"] == 3 and seen.get("c") == 4 and len(seen) == 2
    with pytest.raises(ValueError):
        BoundedMap(0)
