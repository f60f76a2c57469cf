"""The seed conversation (a real two-turn Omost transcript) shipped with the tests."""

from __future__ import annotations

import json
from pathlib import Path

SEED_PATH = Path(__file__).parent / "data" / "seed_conversation.json"


def seed_messages() -> list[dict[str, str]]:
    messages: list[dict[str, str]] = json.loads(SEED_PATH.read_text(encoding="utf-8"))
    return messages


def seed_answers() -> list[str]:
    """The assistant's two answers: the first canvas, then the edited one with meteorites."""
    return [m["content"] for m in seed_messages() if m["role"] == "assistant"]
