"""Policy: who may use the bot, how often, and which words are refused (in requests and canvases)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from bot.config import AccessConfig, Config, load_config
from bot.policy import ALLOW, DenyReason, Policy, canvas_prompts
from omost_engine.canvas import Canvas
from omost_engine.canvas_code import parse
from tests.seed import seed_answers


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def policy(clock: Clock | None = None, max_queued: int | None = None, **access: Any) -> Policy:
    access.setdefault("rate_limit_per_minute", 0)
    return Policy(AccessConfig(**access), max_queued_per_user=max_queued, clock=clock or Clock())


@pytest.fixture(scope="module")
def seed_canvas() -> Canvas:
    return parse(seed_answers()[0])


# --- lists ------------------------------------------------------------------------------------


def test_by_default_everyone_everywhere_is_allowed() -> None:
    assert policy().decide("telegram", 1, 1, "a cat on a sofa") == ALLOW


def test_allowed_users_admits_only_its_members() -> None:
    p = policy(allowed_users=["1", "2"])
    assert p.decide("telegram", 1, 99, "hi").allowed
    refused = p.decide("telegram", 3, 99, "hi")
    assert (refused.allowed, refused.reason) == (False, DenyReason.USER_NOT_ALLOWED)
    assert refused.message == "Sorry, this bot is only open to people its operator added."


def test_allowed_chats_admits_only_those_chats() -> None:
    p = policy(allowed_chats=["-100"])
    assert p.decide("telegram", 1, -100).allowed
    refused = p.decide("telegram", 1, -200)
    assert (refused.reason, refused.message) == (
        DenyReason.CHAT_NOT_ALLOWED,
        "Sorry, this bot isn't enabled in this chat.",
    )


def test_deny_beats_allow_for_users_and_chats() -> None:
    p = policy(allowed_users=["1"], denied_users=["1"], allowed_chats=["5"], denied_chats=["5"])
    assert p.decide("discord", 1, 6).reason is DenyReason.USER_DENIED
    p = policy(allowed_users=["1"], allowed_chats=["5"], denied_chats=["5"])
    assert p.decide("discord", 1, 5).reason is DenyReason.CHAT_DENIED


def test_platform_qualified_ids_match_one_platform_only() -> None:
    p = policy(denied_users=["telegram:5", "9"])
    assert p.decide("telegram", 5, 1).reason is DenyReason.USER_DENIED
    assert p.decide("discord", 5, 1).allowed
    assert not p.decide("discord", 9, 1).allowed and not p.decide("telegram", "9", 1).allowed


def test_admins_are_always_allowed() -> None:
    p = policy(admins=["telegram:1"], allowed_users=["2"], denied_users=["1"], denied_chats=["7"])
    assert p.decide("telegram", 1, 7, "hi").allowed
    assert p.is_admin("telegram", "1") and not p.is_admin("discord", "1")
    assert not p.decide("discord", 1, 8).allowed  # the admin entry names Telegram only


def test_ids_from_a_config_file_work(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[access]\nallowed_users = [123456789, "discord:42"]\nrate_limit_per_minute = 0\n')
    p = Policy.from_config(load_config(path))
    assert p.decide("telegram", 123456789, 1).allowed
    assert p.decide("discord", "42", 1).allowed
    assert not p.decide("telegram", 42, 1).allowed


# --- rate limit -------------------------------------------------------------------------------


def test_rate_limit_is_a_sliding_window() -> None:
    clock = Clock()
    p = policy(clock, rate_limit_per_minute=3)
    for t in (0, 10, 20):
        clock.now = 1000 + t
        assert p.decide("telegram", 1, 1, "go").allowed
    clock.now = 1030
    refused = p.decide("telegram", 1, 1, "go")
    assert (refused.allowed, refused.reason) == (False, DenyReason.RATE_LIMITED)
    assert refused.message == "You're sending requests too fast: try again in 30 s."
    assert refused.retry_after_s == pytest.approx(30)
    # Someone else is not affected.
    assert p.decide("telegram", 2, 1, "go").allowed
    # The first request leaves the window at 1060; the refused one never counted.
    clock.now = 1061
    assert p.decide("telegram", 1, 1, "go").allowed
    clock.now = 1062
    again = p.decide("telegram", 1, 1, "go")
    assert again.message == "You're sending requests too fast: try again in 8 s."  # 1010 + 60 - 1062


def test_refused_requests_do_not_use_up_the_rate_limit() -> None:
    clock = Clock()
    p = policy(clock, rate_limit_per_minute=1, blocked_words=["forbidden"], max_queued=1)
    assert p.decide("telegram", 1, 1, "something forbidden").reason is DenyReason.BLOCKED_WORD
    assert p.decide("telegram", 1, 1, "fine", queued=1).reason is DenyReason.QUEUE_FULL
    assert p.decide("telegram", 1, 1, "fine").allowed
    assert p.decide("telegram", 1, 1, "fine").reason is DenyReason.RATE_LIMITED


def test_admins_have_no_rate_limit_and_zero_means_no_limit() -> None:
    clock = Clock()
    p = policy(clock, rate_limit_per_minute=1, admins=["1"])
    assert all(p.decide("telegram", 1, 1, "go").allowed for _ in range(20))
    assert p.decide("telegram", 2, 1, "go").allowed
    assert not p.decide("telegram", 2, 1, "go").allowed
    unlimited = policy(clock, rate_limit_per_minute=0)
    assert all(unlimited.decide("telegram", 2, 1, "go").allowed for _ in range(100))


def test_idle_users_are_forgotten() -> None:
    clock = Clock()
    p = policy(clock, rate_limit_per_minute=5)
    for user in range(2000):
        p.decide("telegram", user, 1)
    clock.now += 120
    for _ in range(2000):  # the table is swept every 1024 checks
        p.check_rate("telegram", "active")
    assert len(p._recent) <= 1  # the size of the table is the point of this test


# --- queue cap --------------------------------------------------------------------------------


def test_queue_cap_counts_the_users_waiting_jobs() -> None:
    p = policy(max_queued=2)
    assert p.decide("telegram", 1, 1, "a", queued=1).allowed
    refused = p.decide("telegram", 1, 1, "a", queued=2)
    assert (refused.allowed, refused.reason) == (False, DenyReason.QUEUE_FULL)
    assert refused.message == (
        "You already have 2 requests in the queue: wait for one to finish (or cancel one), then try again."
    )
    assert Policy.from_config(Config()).check_queue("telegram", 1, Config().queue.max_per_user).reason is (
        DenyReason.QUEUE_FULL
    )


# --- blocked words ----------------------------------------------------------------------------

BLOCKED = ["nsfw", "gore", "naked body", "ass"]


@pytest.mark.parametrize(
    "text",
    [
        "make it NSFW please",
        "Gore everywhere",
        "a naked body on a beach",
        "a NAKED   BODY",
        "n s f w",
        "N.S.F.W",
        "g-o-r-e",
        "nakedbody",
        "naked-body",
        "n4k3d b0dy",
        "ns\u200bfw",
        "g\u00f3re",
        "more gores",
        "ｎｓｆｗ",  # full-width letters
    ],
)
def test_blocked_words_are_caught_through_simple_obfuscation(text: str) -> None:
    decision = policy(blocked_words=BLOCKED).decide("telegram", 1, 1, text)
    assert (decision.allowed, decision.reason) == (False, DenyReason.BLOCKED_WORD)
    assert decision.message == "That request uses a blocked word."


@pytest.mark.parametrize(
    "text",
    [
        "a classic glass vase",  # "ass" inside words
        "a gorgeous sunset",  # "gore" as a prefix
        "a naked tree, a body of water",  # the phrase's words apart
        "3 cats and 4 dogs",
        "",
    ],
)
def test_ordinary_text_is_not_blocked(text: str) -> None:
    assert policy(blocked_words=BLOCKED).decide("telegram", 1, 1, text).allowed


def test_the_message_never_reveals_the_list() -> None:
    p = policy(blocked_words=["zebra crossing", "unicorn"])
    for text in ("a unicorn", "a zebra crossing"):
        message = p.decide("telegram", 1, 1, text).message
        assert "unicorn" not in message and "zebra" not in message


def test_blocked_words_apply_to_admins_too() -> None:
    assert policy(admins=["1"], blocked_words=["gore"]).decide("telegram", 1, 1, "gore").reason is (
        DenyReason.BLOCKED_WORD
    )


def test_lists_are_checked_before_words() -> None:
    p = policy(denied_users=["1"], blocked_words=["gore"])
    assert p.decide("telegram", 1, 1, "gore").reason is DenyReason.USER_DENIED


def test_the_seed_canvas_passes_an_unrelated_list(seed_canvas: Canvas) -> None:
    assert policy(blocked_words=BLOCKED).check_canvas(seed_canvas) == ALLOW
    assert policy(blocked_words=["dinosaur"]).check_canvas(seed_canvas).reason is DenyReason.BLOCKED_WORD


def _with(canvas: Canvas, where: str, field: str, text: str) -> Canvas:
    if where == "global":
        target: Any = canvas.global_description
    else:
        target = canvas.regions[-1]
    value = getattr(target, field)
    new = (*value[:-1], f"{value[-1]} {text}") if isinstance(value, tuple) else f"{value} {text}"
    changed = dataclasses.replace(target, **{field: new})
    if where == "global":
        return dataclasses.replace(canvas, global_description=changed)
    return dataclasses.replace(canvas, regions=(*canvas.regions[:-1], changed))


SUB_PROMPTS = [("global", f) for f in ("description", "detailed_descriptions", "tags")] + [
    ("region", f)
    for f in ("description", "detailed_descriptions", "tags", "atmosphere", "style", "quality_meta")
]


@pytest.mark.parametrize(("where", "field"), SUB_PROMPTS)
def test_blocked_words_in_any_sub_prompt_of_a_canvas(seed_canvas: Canvas, where: str, field: str) -> None:
    p = policy(blocked_words=BLOCKED)
    tainted = _with(seed_canvas, where, field, "with extra G O R E.")
    decision = p.check_canvas(tainted)
    assert (decision.allowed, decision.reason) == (False, DenyReason.BLOCKED_WORD)
    assert "won't be drawn" in decision.message and "gore" not in decision.message.lower()


def test_canvas_prompts_cover_every_text_field(seed_canvas: Canvas) -> None:
    prompts = list(canvas_prompts(seed_canvas))
    g = seed_canvas.global_description
    expected = (
        2 + len(g.detailed_descriptions) + sum(5 + len(r.detailed_descriptions) for r in seed_canvas.regions)
    )
    assert len(prompts) == expected


def test_roles_count_as_the_user_and_places_as_the_chat() -> None:
    from bot.config import AccessConfig
    from bot.policy import DenyReason, Policy

    policy = Policy(
        AccessConfig(
            allowed_users=["discord:role-artists"],
            allowed_chats=["discord:guild-1"],
            denied_chats=["discord:thread-9"],
            admins=["discord:role-mods"],
        )
    )
    ok = policy.check_access("discord", "u1", "chan", places=("", "guild-1"), roles=("role-artists",))
    assert ok.allowed
    no_role = policy.check_access("discord", "u1", "chan", places=("", "guild-1"))
    assert no_role.reason == DenyReason.USER_NOT_ALLOWED
    other_guild = policy.check_access(
        "discord", "u1", "chan", places=("", "guild-2"), roles=("role-artists",)
    )
    assert other_guild.reason == DenyReason.CHAT_NOT_ALLOWED
    denied_thread = policy.check_access(
        "discord", "u1", "chan", places=("thread-9", "guild-1"), roles=("role-artists",)
    )
    assert denied_thread.reason == DenyReason.CHAT_DENIED
    admin = policy.check_access("discord", "u2", "elsewhere", roles=("role-mods",))
    assert admin.allowed
