"""The turn runner's promises: the Cancel button (the owner or an admin only, and after a restart),
the per-user cap reserved at request time, and how few store round trips an ordinary turn costs."""

from __future__ import annotations

import asyncio
from pathlib import Path

from adapters.base import Button
from bot.store import TurnStatus
from bot.turns.handler import NOT_YOURS
from tests.fakes.fake_adapter import FakeAdapter
from tests.fakes.fake_backends import FakeRenderer
from tests.store_counter import count_store_calls
from tests.test_conversation import FIRST, Bot, open_bot

ORDINARY_TURN_ROUND_TRIPS = 7
"""A compose + render turn in a conversation that has one: find the head, store the turn with its
user message, link the status message, load the history, store the answer, store the picture
(with the layout preview's link), link the result's messages. DESIGN.md's budget is 8."""


async def until_drawing(bot: Bot, turn: int = 1) -> None:
    for _ in range(200):
        await asyncio.sleep(0.02)
        if len(bot.renderer.steps_run) >= turn and bot.renderer.steps_run[turn - 1] >= 1:
            return
    raise AssertionError("the turn never started drawing")


async def test_the_owner_cancels_from_the_status_message_and_others_are_refused(tmp_path: Path) -> None:
    app, bot = await open_bot(tmp_path, renderer=FakeRenderer(step_delay_s=0.2))
    try:
        await bot.adapter.say(FIRST, user="alice")
        await until_drawing(bot)
        status = bot.adapter.posts("status")[0]
        assert Button("cancel", 1) in status.current.buttons  # shown while it runs

        assert await bot.adapter.press("cancel", 1, user="bob") == NOT_YOURS
        assert (await bot.turn(1)).status == TurnStatus.RUNNING  # bob's press changed nothing
        assert not any(NOT_YOURS in text for text in bot.adapter.texts())  # told privately only

        assert await bot.adapter.press("cancel", 1, user="alice") == "Cancelling…"
        await bot.settle()
        turn = await bot.turn(1)
        assert turn.status == TurnStatus.CANCELLED
        final = status.current
        assert "Cancelled" in final.text and final.buttons == (Button("retry", 1),)
        assert not bot.adapter.posts("image")
    finally:
        await app.__aexit__(None, None, None)


async def test_an_admin_may_cancel_anyones_turn(tmp_path: Path) -> None:
    app, bot = await open_bot(
        tmp_path, extra='admins = ["fake:root"]', renderer=FakeRenderer(step_delay_s=0.2)
    )
    try:
        await bot.adapter.say(FIRST, user="alice")
        await until_drawing(bot)
        assert await bot.adapter.press("cancel", 1, user="root") == "Cancelling…"
        await bot.settle()
        assert (await bot.turn(1)).status == TurnStatus.CANCELLED
    finally:
        await app.__aexit__(None, None, None)


async def test_the_cancel_button_works_after_a_restart(tmp_path: Path) -> None:
    adapter = FakeAdapter()
    app, bot = await open_bot(tmp_path, adapter=adapter, renderer=FakeRenderer(step_delay_s=0.3))
    await bot.adapter.say(FIRST, user="alice")
    await until_drawing(bot)
    for flight in list(app.runner._flight.values()):  # a crash: the task dies mid-render
        assert flight.task is not None
        flight.task.cancel()
    await asyncio.sleep(0.05)
    await bot.store.connection.execute("UPDATE turns SET status = 'running' WHERE id = 1")
    await app.__aexit__(None, None, None)

    app2, bot2 = await open_bot(tmp_path, adapter=adapter, renderer=FakeRenderer(step_delay_s=0.3))
    try:
        await until_drawing(bot2)  # resumed
        assert await adapter.press("cancel", 1, user="bob") == NOT_YOURS
        assert await adapter.press("cancel", 1, user="alice") == "Cancelling…"
        await bot2.settle()
        assert (await bot2.turn(1)).status == TurnStatus.CANCELLED
        assert not adapter.posts("image")
    finally:
        await app2.__aexit__(None, None, None)


async def test_simultaneous_requests_cannot_pass_the_cap_together(tmp_path: Path) -> None:
    app, bot = await open_bot(tmp_path)
    try:
        # max_per_user is 3: five requests at once from five chats
        await asyncio.gather(*(bot.adapter.say(f"picture {n}", chat=f"c{n}") for n in range(5)))
        refused = [t for t in bot.adapter.texts() if "in the queue" in t]
        assert len(refused) == 2
        rows = await bot.store.connection.execute_fetchall("SELECT count(*) FROM turns")
        assert next(iter(rows))[0] == 3
        await bot.settle()
    finally:
        await app.__aexit__(None, None, None)


async def test_an_ordinary_turn_costs_seven_store_round_trips(tmp_path: Path) -> None:
    app, bot = await open_bot(tmp_path)
    try:
        await bot.adapter.say("a battle")
        await bot.settle()
        calls = count_store_calls(bot.store)
        await bot.adapter.say("add meteorites")  # continues the conversation: compose + render
        await bot.settle()
        trips = list(calls)  # before the test's own reads below
        assert (await bot.turn(2)).status == TurnStatus.DONE
        assert len(trips) == ORDINARY_TURN_ROUND_TRIPS, "\n".join(trips)
        calls.clear()
        image = bot.adapter.posts("image")[-1]
        await bot.adapter.say("make it night", reply_to=image.ref.message_id)  # a reply: the same
        await bot.settle()
        trips = list(calls)
        assert (await bot.turn(3)).parent_id == 2
        assert len(trips) == ORDINARY_TURN_ROUND_TRIPS, "\n".join(trips)
    finally:
        await app.__aexit__(None, None, None)


async def test_an_edit_keeps_its_parents_seed_unless_the_user_says_otherwise(tmp_path: Path) -> None:
    app, bot = await open_bot(tmp_path)
    try:
        await bot.adapter.say("a lighthouse in a storm")
        await bot.settle()
        first = await bot.turn(1)
        image = bot.adapter.posts("image")[-1]
        await bot.adapter.say("add a red boat", reply_to=image.ref.message_id)  # a reply: same seed
        await bot.adapter.say("make it night")  # the thread's head: same seed again
        await bot.settle()
        assert (await bot.turn(2)).seed == first.seed == (await bot.turn(3)).seed
        assert f"seed {first.seed}" in bot.adapter.posts("image")[-1].post.text  # the result shows it

        await bot.adapter.press("seed", 3)  # New seed: a different one
        await bot.settle()
        assert (await bot.turn(4)).seed != first.seed

        await bot.adapter.say("7", command="seed")  # /seed 7 from now on
        await bot.adapter.say("add a moon")
        await bot.settle()
        assert (await bot.turn(5)).seed == 7

        await bot.adapter.say("random", command="seed")
        await bot.adapter.say("", command="new")
        seeds = set()
        for n in range(3):  # new conversations: random seeds
            await bot.adapter.say(f"picture {n}", chat=f"fresh{n}")
            await bot.settle()
            seeds.add((await bot.turn(6 + n)).seed)
        assert len(seeds) == 3
    finally:
        await app.__aexit__(None, None, None)


async def test_a_retry_of_someone_elses_turn_runs_as_the_presser(tmp_path: Path) -> None:
    app, bot = await open_bot(tmp_path, renderer=FakeRenderer(step_delay_s=0.2))
    try:
        await bot.adapter.say(FIRST, user="alice")
        await until_drawing(bot)
        assert await bot.adapter.press("cancel", 1, user="alice") == "Cancelling…"
        await bot.settle()
        bot.renderer.step_delay_s = 0.0
        await bot.adapter.press("retry", 1, user="bob")  # bob sees the Retry button too
        await bot.settle()
        original, copy = await bot.turn(1), await bot.turn(2)
        assert original.status == TurnStatus.CANCELLED and original.owner == "fake:alice"
        assert copy.status == TurnStatus.DONE and copy.owner == "fake:bob"  # under bob's cap and rate
        # a press that names a turn of another chat is refused, and changes nothing
        assert await bot.adapter.press("retry", 1, user="mallory", chat="elsewhere") == (
            "That picture is no longer available."
        )
        assert await bot.adapter.press("cancel", 2, user="mallory", chat="elsewhere") == (
            "That picture is no longer available."
        )
    finally:
        await app.__aexit__(None, None, None)


async def test_new_seed_and_rewrite_on_a_varied_picture_do_not_vary_again(tmp_path: Path) -> None:
    app, bot = await open_bot(tmp_path)
    try:
        await bot.adapter.say("a battle")
        await bot.settle()
        await bot.adapter.press("vary", 1, value="1")
        await bot.settle()
        assert (await bot.turn(2)).params["vary_region"] == 1
        await bot.adapter.press("seed", 2)
        await bot.adapter.press("rewrite", 2)
        await bot.settle()
        assert (await bot.turn(3)).params["vary_region"] == 0 and (await bot.turn(4)).params["vary_region"] == 0
        assert bot.renderer.calls[-1][1].edit is None and bot.renderer.calls[-2][1].edit is None
    finally:
        await app.__aexit__(None, None, None)
