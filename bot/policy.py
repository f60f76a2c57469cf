"""Who may use the bot, how often, and with which words.

Owns the decision on an incoming request (platform, user, chat, text): the allow and deny lists
for users and chats, admins, a per-user rate limit over a sliding one-minute window, a per-user
queue cap given the caller's count of that user's waiting jobs, and blocked words, checked on the
user's text and on every sub-prompt of the Canvas the model wrote (a model can be steered into
writing what the user was refused).

Rules, in the order they are checked:
1. Lists. Admins are always let in. Otherwise a deny (user or chat) beats any allow; a non-empty
   allow list admits only its members. Ids are compared as strings; a list entry may be bare
   ("123", any platform) or platform-qualified ("telegram:123").
2. Blocked words, for everyone (the operator's content rule): case-insensitive, whole words and
   phrases, compared in the folded form of bot/lookalikes.py (NFKD, accents, invisible characters
   and blank fillers gone, Cyrillic/Greek look-alikes read as Latin), after spaced-out letters
   ("b a d", also inside a longer run of one-letter words: "a b a d"), separators ("b.a.d",
   "bad-word"), run-together phrases ("badword"), common digit/symbol swaps ("b4d") and plain
   plurals ("words"). Substrings of ordinary words never match: blocking "ass" leaves "class"
   alone, and blocking "zebra" leaves "zebrafish" (a compound is a word of its own; list it too
   if it should be refused). Only a run of spelled-out letters is searched inside: "z e b r a"
   and "a z e b r a" are refused, and so is a spelled-out "c l a s s" when "ass" is blocked.
   `is_blank(text)` says whether a request is empty once folded (`EMPTY_REQUEST_MESSAGE`).
3. The queue cap, for everyone (it protects the shared queue).
4. The rate limit; admins are exempt. A request counts against it only once it is let through.

A refusal's message is short, specific and written for the person in the chat; it never reveals
the blocked word list.

It must not know about chat platforms' APIs, the store or the engine.
"""

from __future__ import annotations

import math
import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum

from bot.config import AccessConfig, Config
from bot.lookalikes import fold, is_blank
from omost_engine.canvas import Canvas

__all__ = ["EMPTY_REQUEST_MESSAGE", "BlockedWords", "Decision", "DenyReason", "Policy", "is_blank"]

RATE_WINDOW_S = 60.0
_SWEEP_EVERY = 1024  # checks between sweeps of idle users out of the rate-limit table


class DenyReason(StrEnum):
    USER_DENIED = "user_denied"
    USER_NOT_ALLOWED = "user_not_allowed"
    CHAT_DENIED = "chat_denied"
    CHAT_NOT_ALLOWED = "chat_not_allowed"
    BLOCKED_WORD = "blocked_word"
    QUEUE_FULL = "queue_full"
    RATE_LIMITED = "rate_limited"


@dataclass(frozen=True)
class Decision:
    """The answer to "may this go ahead?". `message` is for the person in the chat."""

    allowed: bool
    message: str = ""
    reason: DenyReason | None = None
    retry_after_s: float | None = None


ALLOW = Decision(allowed=True)

MESSAGES: dict[DenyReason, str] = {
    DenyReason.USER_DENIED: "Sorry, you can't use this bot.",
    DenyReason.USER_NOT_ALLOWED: "Sorry, this bot is only open to people its operator added.",
    DenyReason.CHAT_DENIED: "Sorry, this bot is switched off in this chat.",
    DenyReason.CHAT_NOT_ALLOWED: "Sorry, this bot isn't enabled in this chat.",
    DenyReason.BLOCKED_WORD: "That request uses a blocked word.",
}
EMPTY_REQUEST_MESSAGE = "Tell me what to draw."
"""The reply to a request that `is_blank` (only spaces, punctuation or invisible characters)."""
CANVAS_BLOCKED_MESSAGE = (
    "The picture the model described uses a blocked word, so it won't be drawn. Try asking differently."
)


# --- blocked words ----------------------------------------------------------------------------

# Common swaps of a digit or symbol for a letter. Only applied inside words that have a letter,
# so plain numbers ("3 cats") stay numbers.
_LOOKALIKES = str.maketrans(
    {"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s", "!": "i", "|": "l"}
)
_WORD_WITH_SYMBOLS = re.compile(r"[\w@$!|]+")
_TOKEN = re.compile(r"[^\W_]+")


def _swap_lookalikes(folded: str) -> str:
    def swap(m: re.Match[str]) -> str:
        word = m.group()
        return word.translate(_LOOKALIKES) if any(ch.isalpha() for ch in word) else word

    return _WORD_WITH_SYMBOLS.sub(swap, folded)


def _join_spelled_out(tokens: list[str]) -> list[str]:
    """Merge runs of two or more one-character tokens: "b a d" -> "bad"."""
    out: list[str] = []
    run: list[str] = []
    for token in [*tokens, ""]:
        if len(token) == 1:
            run.append(token)
            continue
        if len(run) >= 2:
            out.append("".join(run))
        else:
            out.extend(run)
        run = []
        if token:
            out.append(token)
    return out


def _spelled_runs(tokens: list[str]) -> Iterator[str]:
    """Each run of two or more one-character tokens, joined: "a z e b r a" -> "azebra"."""
    run: list[str] = []
    for token in [*tokens, ""]:
        if len(token) == 1:
            run.append(token)
            continue
        if len(run) >= 2:
            yield "".join(run)
        run = []


def _variants(text: str) -> Iterator[list[str]]:
    """The token sequences a text is checked as: blank fillers removed or read as spaces, each
    plain and with digit/symbol look-alikes swapped, each with spelled-out letters joined."""
    seen: set[tuple[str, ...]] = set()
    for folded in {fold(text), fold(text, fillers_as_space=True)}:
        for source in (folded, _swap_lookalikes(folded)):
            tokens = _TOKEN.findall(source)
            for variant in (tokens, _join_spelled_out(tokens)):
                key = tuple(variant)
                if key not in seen:
                    seen.add(key)
                    yield variant


class BlockedWords:
    """A compiled blocked-word list; `found(text)` says whether any entry occurs in `text`."""

    def __init__(self, entries: Iterable[str]) -> None:
        self._phrases: dict[str, list[tuple[str, ...]]] = {}
        self._compact: set[str] = set()
        spelled: set[str] = set()  # every entry's letters run together, searched in spelled runs
        for entry in entries:
            base = tuple(_TOKEN.findall(fold(entry)))
            if not base:
                continue
            # Plurals of the last word ("gun" also catches "guns"), never other substrings.
            for ending in ("", "s", "es"):
                tokens = (*base[:-1], base[-1] + ending)
                self._phrases.setdefault(tokens[0], []).append(tokens)
                if len(tokens) > 1:
                    self._compact.add("".join(tokens))  # "bad word" also catches "badword"
            spelled.add("".join(base))  # plurals are longer runs containing it: found anyway
        # Longest first, so the alternation reports a match wherever any entry occurs.
        alternatives = sorted(spelled, key=len, reverse=True)
        self._in_spelled = re.compile("|".join(map(re.escape, alternatives))) if alternatives else None

    def __bool__(self) -> bool:
        return bool(self._phrases)

    def found(self, text: str) -> bool:
        if not self._phrases or not text:
            return False
        for tokens in _variants(text):
            if self._in_spelled is not None and any(
                self._in_spelled.search(run) for run in _spelled_runs(tokens)
            ):
                return True  # a spelled-out word inside a run of one-letter words: "a z e b r a"
            for i, token in enumerate(tokens):
                if token in self._compact:
                    return True
                for phrase in self._phrases.get(token, ()):
                    if tuple(tokens[i : i + len(phrase)]) == phrase:
                        return True
        return False


def canvas_prompts(canvas: Canvas) -> Iterator[str]:
    """Every prompt text of a canvas: what the renderer will be asked to draw (SPEC 4)."""
    g = canvas.global_description
    yield g.description
    yield from g.detailed_descriptions
    yield g.tags
    for r in canvas.regions:
        yield r.description
        yield from r.detailed_descriptions
        yield from (r.tags, r.atmosphere, r.style, r.quality_meta)


# --- the policy -------------------------------------------------------------------------------


class _IdList:
    """Ids from the config: bare ones match on any platform, "platform:id" on that one only."""

    def __init__(self, entries: Iterable[str]) -> None:
        self._any: set[str] = set()
        self._qualified: set[tuple[str, str]] = set()
        for entry in entries:
            platform, sep, ident = entry.partition(":")
            if sep and platform.isalpha() and ident:
                self._qualified.add((platform.lower(), ident))
            else:
                self._any.add(entry)

    def __bool__(self) -> bool:
        return bool(self._any or self._qualified)

    def __contains__(self, key: tuple[str, str]) -> bool:
        platform, ident = key
        return ident in self._any or (platform.lower(), ident) in self._qualified


class Policy:
    """Decides whether an incoming request may go ahead. One per process; not thread-safe (it
    runs on the event loop)."""

    def __init__(
        self,
        access: AccessConfig,
        *,
        max_queued_per_user: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._allowed_users = _IdList(access.allowed_users)
        self._allowed_chats = _IdList(access.allowed_chats)
        self._denied_users = _IdList(access.denied_users)
        self._denied_chats = _IdList(access.denied_chats)
        self._admins = _IdList(access.admins)
        self._blocked = BlockedWords(access.blocked_words)
        self._rate_limit = access.rate_limit_per_minute
        self._max_queued = max_queued_per_user
        self._clock = clock
        self._recent: dict[tuple[str, str], deque[float]] = {}
        self._checks = 0

    @classmethod
    def from_config(cls, config: Config, *, clock: Callable[[], float] = time.monotonic) -> Policy:
        return cls(config.access, max_queued_per_user=config.queue.max_per_user, clock=clock)

    def is_admin(self, platform: str, user: str | int) -> bool:
        return (platform, str(user)) in self._admins

    def decide(
        self,
        platform: str,
        user: str | int,
        chat: str | int,
        text: str = "",
        *,
        queued: int = 0,
        places: Iterable[str | int] = (),
        roles: Iterable[str | int] = (),
    ) -> Decision:
        """The whole check for an incoming request; `queued` is the user's jobs already waiting
        or running. An allowed request is counted against the user's rate limit."""
        for check in (
            lambda: self.check_access(platform, user, chat, places=places, roles=roles),
            lambda: self.check_text(text),
            lambda: self.check_queue(platform, user, queued),
            lambda: self.check_rate(platform, user, record=True),
        ):
            decision = check()
            if not decision.allowed:
                return decision
        return ALLOW

    def check_access(
        self,
        platform: str,
        user: str | int,
        chat: str | int,
        *,
        places: Iterable[str | int] = (),
        roles: Iterable[str | int] = (),
    ) -> Decision:
        """Who and where. `roles` (e.g. Discord role ids) count as the user's for the user lists
        and admins; `places` (a thread, a Discord guild) count as the chat's for the chat lists:
        denied if any is denied, allowed if any is allowed."""
        who = [(platform, str(user))] + [(platform, str(r)) for r in roles if str(r)]
        where = [(platform, str(chat))] + [(platform, str(p)) for p in places if str(p)]
        if any(key in self._admins for key in who):
            return ALLOW
        if any(key in self._denied_users for key in who):
            return _deny(DenyReason.USER_DENIED)
        if any(key in self._denied_chats for key in where):
            return _deny(DenyReason.CHAT_DENIED)
        if self._allowed_users and not any(key in self._allowed_users for key in who):
            return _deny(DenyReason.USER_NOT_ALLOWED)
        if self._allowed_chats and not any(key in self._allowed_chats for key in where):
            return _deny(DenyReason.CHAT_NOT_ALLOWED)
        return ALLOW

    def check_text(self, text: str) -> Decision:
        return _deny(DenyReason.BLOCKED_WORD) if self._blocked.found(text) else ALLOW

    def check_canvas(self, canvas: Canvas) -> Decision:
        """Blocked words in any prompt the model (or a user) wrote into a canvas."""
        if any(self._blocked.found(prompt) for prompt in canvas_prompts(canvas)):
            return Decision(False, CANVAS_BLOCKED_MESSAGE, DenyReason.BLOCKED_WORD)
        return ALLOW

    def check_queue(self, platform: str, user: str | int, queued: int) -> Decision:
        if self._max_queued is None or queued < self._max_queued:
            return ALLOW
        jobs = "request" if self._max_queued == 1 else "requests"
        return Decision(
            False,
            f"You already have {queued} {jobs} in the queue: wait for one to finish "
            f"(or cancel one), then try again.",
            DenyReason.QUEUE_FULL,
        )

    def check_rate(self, platform: str, user: str | int, *, record: bool = False) -> Decision:
        """The sliding-window rate limit. With `record`, an allowed request is counted."""
        if self._rate_limit == 0 or self.is_admin(platform, user):
            return ALLOW
        now = self._clock()
        self._sweep(now)
        key = (platform, str(user))
        window = self._recent.get(key)
        if window is None:
            window = self._recent[key] = deque()
        while window and window[0] <= now - RATE_WINDOW_S:
            window.popleft()
        if len(window) >= self._rate_limit:
            wait = window[0] + RATE_WINDOW_S - now
            seconds = max(1, math.ceil(wait))
            return Decision(
                False,
                f"You're sending requests too fast: try again in {seconds} s.",
                DenyReason.RATE_LIMITED,
                retry_after_s=wait,
            )
        if record:
            window.append(now)
        return ALLOW

    def _sweep(self, now: float) -> None:
        """Forget users with no request in the window, so the table does not grow forever."""
        self._checks += 1
        if self._checks % _SWEEP_EVERY:
            return
        idle = [k for k, w in self._recent.items() if not w or w[-1] <= now - RATE_WINDOW_S]
        for key in idle:
            del self._recent[key]


def _deny(reason: DenyReason) -> Decision:
    return Decision(False, MESSAGES[reason], reason)
