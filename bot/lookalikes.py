"""What a text reads as, for matching blocked words: one folded form that look-alike spellings share.

Owns the Unicode side of blocked-word matching (bot/policy.py does the word matching):

1. Compatibility decomposition (NFKD, which includes NFKC's mappings: full-width, mathematical
   and circled letters, ligatures) and then dropping combining marks, so accents fold away
   ("góre" -> "gore").
2. Invisible characters removed: format characters (zero-width space, joiners, soft hyphen,
   bidi controls, tags), variation selectors, the other default-ignorable code points, and
   control characters other than whitespace.
3. Blank fillers (Hangul fillers U+3164, U+115F, U+1160, U+FFA0 and the braille blank U+2800)
   render as space but are letters or symbols to Unicode; `fold` removes them or, with
   `fillers_as_space`, turns them into spaces (a filler can stand inside a word or between two).
4. Case folding, then confusables to Latin: the Cyrillic and Greek letters that look like Latin
   ones, Latin small capitals, a few Armenian letters, the regional indicator letters
   (a skeleton in the sense of Unicode TS #39, restricted to the letters that pass for Latin in
   a chat font). Capitals are mapped before case folding where the capital and the small letter
   look like different Latin letters (Greek H-like Eta, n-like eta).

`is_blank(text)` says whether nothing would be left to draw: no letter, digit or symbol once
invisible characters and fillers are gone ("Tell me what to draw").

Pure functions; knows nothing of the config, chats or the policy.
"""

from __future__ import annotations

import unicodedata

# Removed wherever they are: they render as nothing.
_INVISIBLE_CATEGORIES = frozenset({"Mn", "Me", "Cf", "Cs"})  # unassigned and private use may show
_WHITESPACE_CONTROLS = frozenset("\t\n\r\x0b\x0c")
_DEFAULT_IGNORABLE = frozenset(
    [
        *(0x034F, 0x061C, 0x17B4, 0x17B5, 0x180B, 0x180C, 0x180D, 0x180E, 0x180F, 0x200B, 0x2060, 0xFEFF),
        *range(0xFE00, 0xFE10),  # variation selectors
        *range(0xE0100, 0xE01F0),  # variation selectors supplement
        *range(0x1D173, 0x1D17B),  # musical formatting controls
    ]
)
# Rendered as blank space, yet letters (Lo) or symbols (So) to Unicode.
FILLERS = frozenset([0x115F, 0x1160, 0x3164, 0xFFA0, 0x2800])

# Capitals whose look differs from their small letter's (mapped before case folding).
_CAPITALS = str.maketrans(
    {
        "Η": "h", "Ν": "n", "Ρ": "p", "Χ": "x", "Υ": "y", "Β": "b", "Μ": "m", "Τ": "t", "Κ": "k",  # Greek
        "Ι": "i", "Ζ": "z", "Ε": "e", "Α": "a", "Ο": "o",
        "Н": "h", "В": "b", "М": "m", "Т": "t", "К": "k", "Р": "p", "С": "c", "Х": "x",  # Cyrillic
        "А": "a", "Е": "e", "О": "o", "У": "y", "Ѕ": "s", "І": "i", "Ј": "j",
    }
)  # fmt: skip
# Small letters (after case folding) that pass for Latin ones.
_SMALL = str.maketrans(
    {
        # Cyrillic
        "а": "a", "в": "b", "г": "r", "е": "e", "к": "k", "м": "m", "н": "h", "о": "o", "п": "n",
        "р": "p", "с": "c", "т": "t", "у": "y", "х": "x", "ь": "b", "ѕ": "s", "і": "i", "ј": "j",
        "ԁ": "d", "ԛ": "q", "ԝ": "w", "һ": "h", "ӏ": "l", "ѵ": "v", "ү": "y",
        # Greek
        "α": "a", "β": "b", "γ": "y", "ε": "e", "ζ": "z", "η": "n", "ι": "i", "κ": "k", "μ": "u",
        "ν": "v", "ο": "o", "π": "n", "ρ": "p", "σ": "o", "ς": "c", "τ": "t", "υ": "u", "χ": "x",
        "ω": "w",
        # Latin look-alikes: dotless i, script a and g, small capitals
        "ı": "i", "ɑ": "a", "ɡ": "g", "ᴀ": "a", "ʙ": "b", "ᴄ": "c", "ᴅ": "d", "ᴇ": "e", "ꜰ": "f",
        "ɢ": "g", "ʜ": "h", "ɪ": "i", "ᴊ": "j", "ᴋ": "k", "ʟ": "l", "ᴍ": "m", "ɴ": "n", "ᴏ": "o",
        "ᴘ": "p", "ʀ": "r", "ꜱ": "s", "ᴛ": "t", "ᴜ": "u", "ᴠ": "v", "ᴡ": "w", "ʏ": "y", "ᴢ": "z",
        # Armenian
        "օ": "o", "ս": "u", "հ": "h", "ո": "n",
    }
    | {chr(0x1F1E6 + i): chr(ord("a") + i) for i in range(26)}  # regional indicators
)  # fmt: skip


def _visible(ch: str) -> bool:
    code = ord(ch)
    if code in _DEFAULT_IGNORABLE:
        return False
    category = unicodedata.category(ch)
    if category == "Cc":
        return ch in _WHITESPACE_CONTROLS
    return category not in _INVISIBLE_CATEGORIES


def fold(text: str, *, fillers_as_space: bool = False) -> str:
    """The folded form of `text` (see the module docstring); blocked words are compared in it."""
    decomposed = unicodedata.normalize("NFKD", text)
    filler = " " if fillers_as_space else ""
    kept = "".join(
        (filler if ord(ch) in FILLERS else ch) for ch in decomposed if ord(ch) in FILLERS or _visible(ch)
    )
    return kept.translate(_CAPITALS).casefold().translate(_SMALL)


def is_blank(text: str) -> bool:
    """True when nothing is left to draw: no letter, digit or symbol once invisible characters,
    fillers and marks are gone (punctuation and spaces alone do not count)."""
    return not any(unicodedata.category(ch)[0] in "LNS" for ch in fold(text))
