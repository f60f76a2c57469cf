"""A question's choices (Vary region: which region?) and the result's five buttons, on the platforms.

The real python-telegram-bot and discord.py adapters run against the fake servers with a small
recording Handler in place of the bot: what is asserted is what a user sees (keyboard rows, a
select menu and its options) and what the bot would be handed when they press or pick
(ButtonPress: action, turn, value, user), including after a restart and for data no button of
ours carries.
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from PIL import Image

from adapters.base import Adapter, Button, ButtonPress, Choice, Incoming, MessageRef, OutFile, Post
from adapters.discord_bot import DiscordAdapter
from adapters.telegram_bot import TelegramAdapter
from tests.fakes.discord_server import CHANNEL_ID, GUILD_ID, FakeDiscord, serve
from tests.fakes.telegram_server import TOKEN, ChatMessage, FakeTelegram

pytestmark = pytest.mark.timeout(60)

ALICE, BOB = 1001, 1002
REGIONS = ("1. the lighthouse on the cliff", "2. the storm clouds", "3. a red boat")
FIVE = tuple(Button(action, 7) for action in ("seed", "rewrite", "hires", "vary", "zoom"))


@pytest.fixture(autouse=True)
def nothing_logged_as_an_error(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """A pick handled twice, a dynamic item that could not be rebuilt ("Ignoring exception in
    dynamic item ..."), a failed send: each logs an error, and none may happen."""
    yield
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []


def vary_choices(turn_id: int = 7, labels: tuple[str, ...] = REGIONS) -> tuple[Choice, ...]:
    return tuple(Choice("vary", turn_id, str(i), label) for i, label in enumerate(labels, 1))


def png() -> OutFile:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), "navy").save(buffer, format="PNG")
    return OutFile("turn-7.png", buffer.getvalue(), "image/png")


class RecordingHandler:
    """The bot's side of the port, reduced to remembering what it was handed."""

    def __init__(self) -> None:
        self.presses: list[ButtonPress] = []
        self.messages: list[Incoming] = []

    async def on_message(self, adapter: Adapter, message: Incoming) -> None:
        self.messages.append(message)

    async def on_button(self, adapter: Adapter, press: ButtonPress) -> str | None:
        self.presses.append(press)
        return f"Redrawing region {press.value}" if press.value else f"{press.action} it is"

    async def pressed(self, count: int) -> list[ButtonPress]:
        for _ in range(1000):
            if len(self.presses) >= count:
                return self.presses
            await asyncio.sleep(0.02)
        raise TimeoutError(f"the handler got {len(self.presses)} presses, not {count}")


# --- Telegram -------------------------------------------------------------------------------------


@pytest.fixture
async def tg() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram() as server:
        server.chat(ALICE)
        server.chat(-2001, "group")
        yield server


@asynccontextmanager
async def telegram(tg: FakeTelegram, handler: RecordingHandler) -> AsyncIterator[TelegramAdapter]:
    adapter = TelegramAdapter(TOKEN, base_url=tg.base_url, poll_timeout=0.5, retry_delay=0.05)
    await adapter.start(handler)
    try:
        yield adapter
    finally:
        await adapter.stop()


async def telegram_post(adapter: TelegramAdapter, tg: FakeTelegram, chat: int, post: Post) -> ChatMessage:
    [ref, *_] = await adapter.send(str(chat), "", post)
    return tg.find(chat, int(ref.message_id))


async def answer_to(tg: FakeTelegram, query: str) -> str:
    await tg.wait_for(lambda: query in tg.callback_answers)
    return str(tg.callback_answers[query].get("text", ""))


async def test_telegram_choices_are_keyboard_rows_and_a_press_carries_the_value(tg: FakeTelegram) -> None:
    handler = RecordingHandler()
    async with telegram(tg, handler) as adapter:
        question = Post(text="Which region should I redraw?", choices=vary_choices())
        message = await telegram_post(adapter, tg, -2001, question)
        assert message.rows == [[label] for label in REGIONS]  # one choice a row
        assert message.buttons == ["omost:vary:7:1", "omost:vary:7:2", "omost:vary:7:3"]

        query = tg.press(-2001, message.message_id, "omost:vary:7:2", user=BOB)
        [press] = await handler.pressed(1)
        assert (press.platform, press.chat, press.user) == ("telegram", "-2001", str(BOB))
        assert (press.action, press.turn_id, press.value) == ("vary", 7, "2")
        assert press.message_id == str(message.message_id)
        assert await answer_to(tg, query) == "Redrawing region 2"  # shown to the presser alone


async def test_telegram_a_choice_pressed_after_a_restart_still_works(tg: FakeTelegram) -> None:
    async with telegram(tg, RecordingHandler()) as adapter:
        message = await telegram_post(adapter, tg, ALICE, Post(text="Which?", choices=vary_choices(41)))
    handler = RecordingHandler()
    async with telegram(tg, handler):  # a new process: nothing in memory but the message's data
        tg.press(ALICE, message.message_id, message.buttons[2])
        [press] = await handler.pressed(1)
        assert (press.action, press.turn_id, press.value, press.user) == ("vary", 41, "3", str(ALICE))


async def test_telegram_result_buttons_sit_in_two_rows_and_retry_and_cancel_alone(tg: FakeTelegram) -> None:
    handler = RecordingHandler()
    async with telegram(tg, handler) as adapter:
        result = await telegram_post(adapter, tg, ALICE, Post(text="Turn 7", image=png(), buttons=FIVE))
        assert result.kind == "photo"
        assert result.rows == [["New seed", "Rewrite", "Higher resolution"], ["Vary region", "Zoom out"]]
        status = await telegram_post(
            adapter, tg, ALICE, Post(text="Failed.", buttons=(Button("retry", 7), Button("cancel", 7)))
        )
        assert status.rows == [["Retry"], ["Cancel"]]

        # a plain button carries no value; an edit keeps the rows
        tg.press(ALICE, result.message_id, "omost:zoom:7")
        [press] = await handler.pressed(1)
        assert (press.action, press.turn_id, press.value) == ("zoom", 7, "")
        await adapter.edit(adapter_ref(status), Post(text="Turn 7: drawing", buttons=FIVE[3:]))
        assert status.rows == [["Vary region", "Zoom out"]]


def adapter_ref(message: ChatMessage) -> MessageRef:
    return MessageRef("telegram", str(message.chat_id), str(message.message_id))


async def test_telegram_hostile_or_oversized_callback_data_is_not_a_button(tg: FakeTelegram) -> None:
    handler = RecordingHandler()
    async with telegram(tg, handler) as adapter:
        message = await telegram_post(adapter, tg, ALICE, Post(text="Which?", choices=vary_choices()))
        hostile = [
            "omost:vary:1:../../x",
            "omost:vary:1:" + "1" * 60,  # over 64 bytes: Telegram would never carry it
            "omost:vary:" + "9" * 60,
            "omost:vary:1:A",
            "omost:explode:1:1",
        ]
        queries = [tg.press(ALICE, message.message_id, data) for data in hostile]
        for query in queries:
            assert await answer_to(tg, query) == "That button is not one I know."
        assert handler.presses == []


async def test_telegram_long_labels_are_cut_and_a_value_the_codec_cannot_read_is_refused(
    tg: FakeTelegram,
) -> None:
    async with telegram(tg, RecordingHandler()) as adapter:
        long = "4. " + "a very detailed description of a distant mountain range " * 4
        message = await telegram_post(
            adapter, tg, ALICE, Post(text="Which?", choices=vary_choices(labels=(*REGIONS, long)))
        )
        assert len(message.rows[3][0]) <= 64 and message.rows[3][0].endswith("…")
        before = len(tg.bot_messages(ALICE))
        with pytest.raises(ValueError, match="cannot read back"):
            await adapter.send(str(ALICE), "", Post(text="Which?", choices=(Choice("vary", 1, "../x", "x"),)))
        assert len(tg.bot_messages(ALICE)) == before  # no button that would do nothing


# --- Discord --------------------------------------------------------------------------------------


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    async with serve() as server:
        yield server


@asynccontextmanager
async def discord_adapter(handler: RecordingHandler) -> AsyncIterator[DiscordAdapter]:
    adapter = DiscordAdapter("fake-token", guild_ids=[GUILD_ID], guild_ready_timeout=0.05)
    await adapter.start(handler)
    try:
        yield adapter
    finally:
        await adapter.stop()


async def discord_post(adapter: DiscordAdapter, fake: FakeDiscord, post: Post) -> dict[str, Any]:
    [ref] = await adapter.send(str(CHANNEL_ID), "", post)
    return fake.messages[int(ref.message_id)]


def menus(message: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for row in message["components"] for c in row["components"] if c["type"] == 3]


def callbacks(fake: FakeDiscord, interaction: dict[str, Any]) -> list[Any]:
    """The interaction's responses: exactly one, or Discord reports 'already acknowledged'."""
    path = f"/interactions/{interaction['id']}/{interaction['token']}/callback"
    return [call.json for call in fake.calls if call.path == path]


async def private_answer(fake: FakeDiscord, interaction: dict[str, Any]) -> dict[str, Any]:
    def found() -> list[dict[str, Any]]:
        return [
            m
            for m in fake.messages.values()
            if (m.get("interaction_metadata") or {}).get("id") == interaction["id"] and m["content"]
        ]

    [answer] = await fake.wait_for(found)
    return answer


async def test_discord_choices_are_one_select_menu_and_a_pick_carries_the_value(fake: FakeDiscord) -> None:
    handler = RecordingHandler()
    async with discord_adapter(handler) as adapter:
        message = await discord_post(adapter, fake, Post(text="Which region?", choices=vary_choices()))
        [menu] = menus(message)
        assert menu["custom_id"] == "omost:vary:7"
        assert [(o["label"], o["value"]) for o in menu["options"]] == list(zip(REGIONS, "123", strict=True))
        assert (menu["min_values"], menu["max_values"], menu["placeholder"]) == (
            1,
            1,
            "Vary region: pick one",
        )

        interaction = await fake.select("omost:vary:7", ["3"], int(message["id"]), user_id=BOB)
        [press] = await handler.pressed(1)
        assert (press.platform, press.chat, press.user) == ("discord", str(CHANNEL_ID), str(BOB))
        assert (press.action, press.turn_id, press.value) == ("vary", 7, "3")
        assert press.message_id == message["id"] and press.guild == str(GUILD_ID)
        answer = await private_answer(fake, interaction)
        assert answer["content"] == "Redrawing region 3" and answer["flags"] & 64  # ephemeral
        assert [c["type"] for c in callbacks(fake, interaction)] == [6]  # deferred once, nothing else
        assert len(handler.presses) == 1  # the button template, which matches the id too, kept out


async def test_discord_a_pick_after_a_restart_still_works(fake: FakeDiscord) -> None:
    async with discord_adapter(RecordingHandler()) as adapter:
        message = await discord_post(adapter, fake, Post(text="Which?", choices=vary_choices(41)))
    handler = RecordingHandler()
    async with discord_adapter(handler):  # a new client: the menu is rebuilt from the message alone
        await fake.select("omost:vary:41", ["1"], int(message["id"]), user_id=ALICE)
        [press] = await handler.pressed(1)
        assert (press.action, press.turn_id, press.value, press.user) == ("vary", 41, "1", str(ALICE))


async def test_discord_many_choices_split_into_menus_of_25_with_labels_cut(fake: FakeDiscord) -> None:
    # 64 regions: the most a canvas may hold (omost_engine.canvas_code.MAX_REGIONS)
    labels = tuple(f"{i}. " + "a figure standing in the rain, " * 5 for i in range(1, 65))
    handler = RecordingHandler()
    async with discord_adapter(handler) as adapter:
        question = Post(text="Which?", choices=vary_choices(labels=labels), buttons=(Button("cancel", 7),))
        message = await discord_post(adapter, fake, question)
        shown = menus(message)  # the fake refuses a menu over 25 options or 100-character labels
        assert [(m["custom_id"], len(m["options"])) for m in shown] == [
            ("omost:vary:7", 25),
            ("omost:vary:7/1", 25),
            ("omost:vary:7/2", 14),
        ]
        assert [m["placeholder"] for m in shown] == [
            "Vary region: pick one (1-25)",
            "Vary region: pick one (26-50)",
            "Vary region: pick one (51-64)",
        ]
        assert [o["value"] for m in shown for o in m["options"]] == [str(i) for i in range(1, 65)]
        assert all(len(o["label"]) <= 100 and o["label"].endswith("…") for m in shown for o in m["options"])
        assert message["components"][-1]["components"][0]["custom_id"] == "omost:cancel:7"

        await fake.select("omost:vary:7/1", ["28"], int(message["id"]))
        [press] = await handler.pressed(1)
        assert (press.action, press.turn_id, press.value) == ("vary", 7, "28")


async def test_discord_the_five_result_buttons_and_a_plain_press(fake: FakeDiscord) -> None:
    handler = RecordingHandler()
    async with discord_adapter(handler) as adapter:
        result = await discord_post(
            adapter, fake, Post(text="Turn 7", image=png(), buttons=FIVE, role="image")
        )
        ids = [[c["custom_id"] for c in row["components"]] for row in result["components"]]
        assert ids == [["omost:seed:7", "omost:rewrite:7", "omost:hires:7", "omost:vary:7", "omost:zoom:7"]]
        labels = [c["label"] for row in result["components"] for c in row["components"]]
        assert labels == ["New seed", "Rewrite", "Higher resolution", "Vary region", "Zoom out"]

        interaction = await fake.press("omost:vary:7", int(result["id"]))
        [press] = await handler.pressed(1)
        assert (press.action, press.turn_id, press.value) == ("vary", 7, "")
        assert (await private_answer(fake, interaction))["content"] == "vary it is"
        assert len(callbacks(fake, interaction)) == 1 and len(handler.presses) == 1  # one press, once


async def test_discord_a_choice_or_button_we_do_not_know_is_refused_or_ignored(fake: FakeDiscord) -> None:
    old = fake.bot_message_from_before(
        CHANNEL_ID,
        "Which?",
        [
            {
                "type": 1,
                "components": [
                    {
                        "type": 3,
                        "custom_id": "omost:vary:1",
                        "options": [{"label": "odd", "value": "../../x"}, {"label": "ok", "value": "2"}],
                        "min_values": 1,
                        "max_values": 1,
                    }
                ],
            },
            {
                "type": 1,
                "components": [{"type": 2, "style": 2, "label": "?", "custom_id": "omost:vary:1:../x"}],
            },
        ],
    )
    handler = RecordingHandler()
    async with discord_adapter(handler):
        odd = await fake.select("omost:vary:1", ["../../x"], int(old["id"]))
        assert (await private_answer(fake, odd))["content"] == "That is not a choice I know."
        await fake.press("omost:vary:1:../x", int(old["id"]))  # no template matches: discord.py drops it
        await fake.select("omost:vary:1", ["2"], int(old["id"]))
        [press] = await handler.pressed(1)  # only the pick we know reached the bot
        assert (press.action, press.turn_id, press.value) == ("vary", 1, "2")
