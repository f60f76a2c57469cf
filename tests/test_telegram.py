"""The bot on Telegram: the real python-telegram-bot against a fake Bot API on loopback.

Every test builds the bot the way `omost-bot run` does (config -> platform_adapters -> App) with
the fake LLM and renderer, and plays users through tests/fakes/telegram_server.py; assertions are
about what the chats show: messages, photos, documents, keyboards, edits.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from adapters.base import Button, Post, decode_button, encode_button
from adapters.telegram_bot import TelegramAdapter
from bot.app import App, platform_adapters
from bot.config import Config
from bot.store import TurnKind, TurnStatus
from omost_engine.canvas_code import parse, to_code
from omost_engine.render.metadata import read_png_metadata
from tests.bot_config import bot_config, tiny_model_sections
from tests.fakes.fake_backends import FakeLLM, FakeRenderer
from tests.fakes.telegram_server import BOT_USERNAME, TOKEN, ChatMessage, FakeTelegram
from tests.seed import seed_answers, seed_messages

FIRST, SECOND = (m["content"] for m in seed_messages() if m["role"] == "user")
TOKEN_ENV = "OMOST_TEST_TELEGRAM_TOKEN"
ALICE, BOB = 1001, 1002
GROUP, FORUM = -2001, -3001


def make_config(tmp_path: Path, base_url: str, access: str = "") -> Config:
    return bot_config(
        tmp_path, access=access, platform=_telegram_section(base_url), source="telegram-test.toml"
    )


def _telegram_section(base_url: str) -> str:
    return f'[telegram]\nenabled = true\ntoken_env = "{TOKEN_ENV}"\nbase_url = "{base_url}"'


@dataclass
class Bot:
    app: App
    adapter: TelegramAdapter
    tg: FakeTelegram
    llm: FakeLLM
    renderer: FakeRenderer

    def results(self, chat: int, thread: int | None = None) -> list[ChatMessage]:
        """Result photos: the ones with the New seed / Rewrite / Higher resolution keyboard."""
        return [m for m in self.tg.bot_messages(chat, thread) if m.kind == "photo" and m.keyboard]

    def previews(self, chat: int) -> list[ChatMessage]:
        return [m for m in self.tg.bot_messages(chat) if m.kind == "photo" and not m.keyboard]

    def documents(self, chat: int) -> list[ChatMessage]:
        return [m for m in self.tg.bot_messages(chat) if m.kind == "document"]

    def statuses(self, chat: int) -> list[ChatMessage]:
        return [m for m in self.tg.bot_messages(chat) if m.kind == "text" and m.text.startswith("Turn ")]

    def texts(self, chat: int) -> list[str]:
        return [m.text for m in self.tg.bot_messages(chat) if m.kind == "text"]

    async def results_in(self, chat: int, count: int, thread: int | None = None) -> list[ChatMessage]:
        """Wait until `count` results are in the chat and every turn has finished."""
        await self.tg.wait_for(lambda: len(self.results(chat, thread)) >= count)
        await asyncio.wait_for(self.app.runner.drain(), 30)
        return self.results(chat, thread)

    async def reply_in(self, chat: int, count: int) -> str:
        """Wait until the bot has written `count` text messages in the chat; the last one."""
        await self.tg.wait_for(lambda: len(self.texts(chat)) >= count)
        return self.texts(chat)[-1]

    async def statuses_done(self, chat: int) -> list[ChatMessage]:
        """Status messages end as "done." once their last (coalesced) edit has landed."""
        await self.tg.wait_for(lambda: all(s.text.endswith("done.") for s in self.statuses(chat)))
        return self.statuses(chat)


@asynccontextmanager
async def telegram_bot(
    tmp_path: Path,
    tg: FakeTelegram,
    *,
    llm: FakeLLM | None = None,
    renderer: FakeRenderer | None = None,
    private_edit_interval: float = 0.2,
    group_edit_interval: float = 0.5,
    access: str = "",
) -> AsyncIterator[Bot]:
    config = make_config(tmp_path, tg.base_url, access)
    adapters = platform_adapters(config)  # the composition root picks the Telegram adapter
    adapter = adapters[0]
    assert isinstance(adapter, TelegramAdapter)
    adapter.private_edit_interval = private_edit_interval
    adapter.group_edit_interval = group_edit_interval
    adapter.retry_delay = 0.05
    llm = llm or FakeLLM()
    renderer = renderer or FakeRenderer()
    async with App(config, adapters=adapters, llm=llm, renderer=renderer) as app:
        yield Bot(app, adapter, tg, llm, renderer)


@pytest.fixture(autouse=True)
def token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)


@pytest.fixture
async def tg() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram() as server:
        yield server


# --- private chats ------------------------------------------------------------------------------


async def test_two_turn_private_chat_ends_with_photos_documents_and_keyboards(
    tmp_path: Path, tg: FakeTelegram
) -> None:
    async with telegram_bot(tmp_path, tg) as bot:
        first_id = tg.user_message(ALICE, FIRST)
        await bot.results_in(ALICE, 1)
        tg.user_message(ALICE, SECOND)
        first, second = await bot.results_in(ALICE, 2)
        statuses = await bot.statuses_done(ALICE)

        # per turn, in order: status (a reply to the request), layout preview, result, canvas code
        kinds = [(m.kind, bool(m.keyboard)) for m in tg.bot_messages(ALICE)]
        turn = [("text", False), ("photo", False), ("photo", True), ("document", False)]
        assert kinds == turn + turn
        assert statuses[0].reply_to == first_id
        assert [s.text for s in statuses] == ["Turn 1: done.", "Turn 2: done."]
        assert statuses[0].edits >= 2  # one status message, edited as the turn went on

        assert first.buttons == [
            "omost:seed:1",
            "omost:rewrite:1",
            "omost:hires:1",
            "omost:vary:1",
            "omost:zoom:1",
        ]
        assert first.labels == ["New seed", "Rewrite", "Higher resolution", "Vary region", "Zoom out"]
        assert second.buttons == [
            "omost:seed:2",
            "omost:rewrite:2",
            "omost:hires:2",
            "omost:vary:2",
            "omost:zoom:2",
        ]
        assert len(first.text) <= 1024 and "seed" in first.text
        assert second.text.startswith("Added meteorites crashing into the ground")
        # the photo is the PNG the bot made, carrying its canvas
        restored = read_png_metadata(second.data)
        assert restored is not None and restored.canvas == parse(seed_answers()[1])

        code_first, code_second = bot.documents(ALICE)
        assert code_first.filename == "turn-1-canvas.py"
        assert parse(code_first.data.decode()) == parse(seed_answers()[0])
        assert parse(code_second.data.decode()) == parse(seed_answers()[1])
        # the model saw the first exchange when writing the second canvas
        assert [m.role for m in bot.llm.calls[1][0]] == ["user", "assistant", "user"]
        turn2 = await bot.app.store.get_turn(2)
        assert turn2.parent_id == 1 and turn2.status == TurnStatus.DONE
        assert "omost" in [c["command"] for c in tg.commands]


async def test_replying_to_the_first_result_branches(tmp_path: Path, tg: FakeTelegram) -> None:
    async with telegram_bot(tmp_path, tg) as bot:
        tg.user_message(ALICE, FIRST)
        tg.user_message(ALICE, SECOND)
        first, _ = await bot.results_in(ALICE, 2)
        code_first = bot.documents(ALICE)[0]
        tg.user_message(ALICE, "make it night", reply_to=first.message_id)
        tg.user_message(ALICE, "add a moon", reply_to=code_first.message_id)
        await bot.results_in(ALICE, 4)
        children = await bot.app.store.children(1)
        assert [(c.id, c.user_text) for c in children] == [
            (2, SECOND),
            (3, "make it night"),
            (4, "add a moon"),
        ]
        # the branch's history is turn 1 only, not turn 2 (the chain comes from the store)
        history = bot.llm.calls[2][0]
        assert [m.content for m in history] == [FIRST, seed_answers()[0], "make it night"]
        # a plain message continues the latest turn again
        tg.user_message(ALICE, "more clouds")
        await bot.results_in(ALICE, 5)
        assert (await bot.app.store.get_turn(5)).parent_id == 4


async def test_commands_help_new_cancel_and_unknown(tmp_path: Path, tg: FakeTelegram) -> None:
    async with telegram_bot(tmp_path, tg, llm=FakeLLM(token_delay_s=0.0005)) as bot:
        tg.user_message(ALICE, "/start")
        assert "/new" in await bot.reply_in(ALICE, 1)
        tg.user_message(ALICE, "/help")
        assert "Reply to any of my messages" in await bot.reply_in(ALICE, 2)
        tg.user_message(ALICE, FIRST)
        await bot.tg.wait_for(lambda: bool(bot.statuses(ALICE)))
        tg.user_message(ALICE, "/cancel")
        await bot.tg.wait_for(lambda: any(t.startswith("Cancelling turn 1") for t in bot.texts(ALICE)))
        await asyncio.wait_for(bot.app.runner.drain(), 30)
        assert (await bot.app.store.get_turn(1)).status == TurnStatus.CANCELLED
        await bot.tg.wait_for(lambda: "Cancelled" in bot.statuses(ALICE)[0].text)
        status = bot.statuses(ALICE)[0]
        assert status.buttons == ["omost:retry:1"]
        tg.user_message(ALICE, "/new")
        await bot.tg.wait_for(lambda: any("new conversation" in t for t in bot.texts(ALICE)))
        tg.user_message(ALICE, "a red boat")
        await bot.results_in(ALICE, 1)
        assert (await bot.app.store.get_turn(2)).parent_id is None
        tg.user_message(ALICE, "/frobnicate")
        await bot.tg.wait_for(lambda: any("I don't know /frobnicate" in t for t in bot.texts(ALICE)))


async def test_settings_keyboard_changes_the_next_picture(tmp_path: Path, tg: FakeTelegram) -> None:
    async with telegram_bot(tmp_path, tg) as bot:
        tg.user_message(ALICE, "/settings")
        text = await bot.reply_in(ALICE, 1)
        assert text.startswith("Your settings: size 128x128")
        keyboard = tg.bot_messages(ALICE)[0]
        assert "set:size=1024x1024" in keyboard.buttons and "set:png=on" in keyboard.buttons
        assert all(len(b.encode()) <= 64 for b in keyboard.buttons)
        query = tg.press(ALICE, keyboard.message_id, "set:size=1024x1024")
        await tg.wait_for(lambda: keyboard.text.startswith("Saved."))
        assert "1024x1024" in keyboard.text and keyboard.buttons  # edited in place, keyboard kept
        assert query in tg.callback_answers
        tg.press(ALICE, keyboard.message_id, "set:png=on")
        await tg.wait_for(lambda: "lossless PNG on" in keyboard.text)
        tg.user_message(ALICE, "/settings steps=7")
        await tg.wait_for(lambda: any("7 steps" in t for t in bot.texts(ALICE)))
        tg.user_message(ALICE, FIRST)
        (result,) = await bot.results_in(ALICE, 1)
        params = bot.renderer.calls[0][1]
        assert (params.width, params.height, params.steps) == (1024, 1024, 7)
        # png=on: the lossless PNG follows the code as a document
        code, png = bot.documents(ALICE)
        assert code.filename.endswith(".py") and png.filename == "turn-1.png"
        assert png.data == result.data


async def test_documents_a_canvas_file_and_the_bots_own_png(tmp_path: Path, tg: FakeTelegram) -> None:
    code = to_code(parse(seed_answers()[0]))
    async with telegram_bot(tmp_path, tg) as bot:
        tg.user_message(ALICE, "", document=("scene.py", code.encode(), "text/x-python"))
        (result,) = await bot.results_in(ALICE, 1)
        turn = await bot.app.store.get_turn(1)
        assert turn.kind == TurnKind.USER_CANVAS and bot.llm.calls == []
        # the bot's PNG sent back as a file continues from it
        tg.user_message(ALICE, "make it night", document=("turn-1.png", result.data, "image/png"))
        await bot.results_in(ALICE, 2)
        continued = await bot.app.store.get_turn(3)
        assert continued.user_text == "make it night" and continued.parent_id == 2
        assert (await bot.app.store.get_turn(2)).canvas_code == turn.canvas_code
        # a compressed photo lost its canvas: the user is told how to send it
        buffer = io.BytesIO()
        Image.new("RGB", (8, 8)).save(buffer, format="JPEG")
        tg.user_message(ALICE, "continue", photo=buffer.getvalue())
        await tg.wait_for(lambda: any("as a file" in t for t in bot.texts(ALICE)))
        # anything else, or too large, is refused before it is downloaded
        tg.user_message(ALICE, "", document=("notes.docx", b"x", "application/msword"))
        await tg.wait_for(lambda: any("canvas code (.py)" in t for t in bot.texts(ALICE)))
        bot.adapter.max_download_bytes = 10
        tg.user_message(ALICE, "", document=("big.py", code.encode(), "text/x-python"))
        await tg.wait_for(lambda: any("too large" in t for t in bot.texts(ALICE)))
        assert len(bot.results(ALICE)) == 2


async def test_a_code_block_is_drawn_directly(tmp_path: Path, tg: FakeTelegram) -> None:
    async with telegram_bot(tmp_path, tg) as bot:
        # Telegram strips the ``` the user typed and marks the text as a "pre" entity
        tg.user_message(ALICE, to_code(parse(seed_answers()[0])), pre=True)
        await bot.results_in(ALICE, 1)
        assert (await bot.app.store.get_turn(1)).kind == TurnKind.USER_CANVAS
        assert bot.llm.calls == []


async def test_refusals_are_short_and_specific(tmp_path: Path, tg: FakeTelegram) -> None:
    access = f'allowed_chats = [{GROUP}]\nblocked_words = ["dinosaur"]'
    async with telegram_bot(tmp_path, tg, access=access) as bot:
        tg.user_message(ALICE, "a castle")
        assert await bot.reply_in(ALICE, 1) == "Sorry, this bot isn't enabled in this chat."
        tg.user_message(GROUP, "/omost a friendly dinosaur", chat_type="group", user=ALICE)
        assert await bot.reply_in(GROUP, 1) == "That request uses a blocked word."
        assert bot.llm.calls == [] and tg.bot_messages(GROUP)[0].reply_to is not None


# --- groups and forum topics --------------------------------------------------------------------


async def test_group_answers_only_commands_mentions_and_replies(tmp_path: Path, tg: FakeTelegram) -> None:
    async with telegram_bot(tmp_path, tg) as bot:
        tg.user_message(GROUP, "a castle on a hill", chat_type="group", user=ALICE)
        tg.user_message(GROUP, "/omost@some_other_bot a castle", chat_type="group", user=ALICE)
        tg.user_message(GROUP, f"@{BOT_USERNAME} {FIRST}", chat_type="group", user=ALICE)
        (result,) = await bot.results_in(GROUP, 1)
        assert [m.content for m in bot.llm.calls[0][0]] == [FIRST]  # the mention is not the prompt
        assert len(bot.llm.calls) == 1  # nothing else was taken as a request

        # a reply to another user's message is not for the bot; a reply to the bot's is
        other = tg.user_message(GROUP, "nice", chat_type="group", user=BOB)
        tg.user_message(GROUP, "me too", chat_type="group", user=ALICE, reply_to=other)
        tg.user_message(GROUP, SECOND, chat_type="group", user=BOB, reply_to=result.message_id)
        await bot.results_in(GROUP, 2)
        assert (await bot.app.store.get_turn(2)).parent_id == 1
        tg.user_message(GROUP, "/omost a lighthouse", chat_type="group", user=BOB)
        await bot.results_in(GROUP, 3)
        assert bot.llm.calls[2][0][-1].content == "a lighthouse"
        assert len(bot.llm.calls) == 3
        # the group's status edits were paced (slower than in private chats) and still ended as done
        statuses = await bot.statuses_done(GROUP)
        assert all(s.text.endswith("done.") for s in statuses)
        gaps = [b - a for s in statuses for a, b in zip(s.edit_times, s.edit_times[1:], strict=False)]
        assert gaps and min(gaps) >= bot.adapter.group_edit_interval - 0.05


async def test_forum_topics_are_separate_conversations(tmp_path: Path, tg: FakeTelegram) -> None:
    async with telegram_bot(tmp_path, tg) as bot:
        mention = f"@{BOT_USERNAME}"
        tg.user_message(FORUM, f"{mention} {FIRST}", chat_type="supergroup", thread=11)
        await bot.results_in(FORUM, 1, thread=11)
        tg.user_message(FORUM, f"{mention} a quiet harbour", chat_type="supergroup", thread=12)
        await bot.results_in(FORUM, 1, thread=12)
        tg.user_message(FORUM, "not for the bot", chat_type="supergroup", thread=11)
        tg.user_message(FORUM, f"{mention} {SECOND}", chat_type="supergroup", thread=11)
        await bot.results_in(FORUM, 2, thread=11)
        t1, t2, t3 = [await bot.app.store.get_turn(i) for i in (1, 2, 3)]
        assert t2.parent_id is None and t3.parent_id == 1  # topic 12 did not continue topic 11
        assert t1.conversation_id == t3.conversation_id != t2.conversation_id
        assert len(bot.llm.calls) == 3
        # every bot message went to its topic
        assert {m.thread for m in tg.bot_messages(FORUM)} == {11, 12}
        assert len(tg.bot_messages(FORUM, 12)) == 4


# --- restarts and failures ------------------------------------------------------------------------


async def test_buttons_pressed_after_a_restart_work(tmp_path: Path, tg: FakeTelegram) -> None:
    async with telegram_bot(tmp_path, tg) as bot:
        tg.user_message(ALICE, FIRST)
        (result,) = await bot.results_in(ALICE, 1)
        first_seed = (await bot.app.store.get_turn(1)).seed
    async with telegram_bot(tmp_path, tg) as bot:  # a new process: nothing in memory
        query = tg.press(ALICE, result.message_id, "omost:seed:1")
        await bot.results_in(ALICE, 2)
        tg.press(ALICE, result.message_id, "omost:hires:1")
        await bot.results_in(ALICE, 3)
        seed_turn, hires_turn = await bot.app.store.get_turn(2), await bot.app.store.get_turn(3)
        assert seed_turn.kind == TurnKind.RENDER and seed_turn.parent_id == 1 and seed_turn.seed != first_seed
        assert hires_turn.params["hires_scale"] == 1.5
        assert query in tg.callback_answers
        assert "drawn again" in bot.results(ALICE)[1].text
        tg.press(ALICE, result.message_id, "omost:explode:1")
        await tg.wait_for(lambda: len(tg.callback_answers) == 3)
        assert "not one I know" in str(list(tg.callback_answers.values())[-1].get("text"))


# PTB 22 warns about RetryAfter's future type when it builds one for the injected 429
@pytest.mark.filterwarnings("ignore::telegram.warnings.PTBDeprecationWarning")
async def test_flood_control_errors_and_dropped_connections_lose_and_duplicate_nothing(
    tmp_path: Path, tg: FakeTelegram
) -> None:
    tg.fail("getUpdates", "500")
    tg.fail("sendMessage", "drop")  # the status message
    tg.fail("editMessageText", "500")
    tg.fail("sendPhoto", "429", retry_after=1)  # the layout preview
    tg.fail("sendPhoto", "drop")  # ... and again
    tg.fail("sendDocument", "500")  # the canvas code
    tg.fail("answerCallbackQuery", "drop")
    async with telegram_bot(tmp_path, tg) as bot:
        tg.user_message(ALICE, FIRST)
        (result,) = await bot.results_in(ALICE, 1)
        tg.press(ALICE, result.message_id, "omost:seed:1")
        await bot.results_in(ALICE, 2)
        statuses = await bot.statuses_done(ALICE)
        assert sorted(tg.faults_fired) == sorted(
            [
                ("getUpdates", "500"),
                ("sendMessage", "drop"),
                ("editMessageText", "500"),
                ("sendPhoto", "429"),
                ("sendPhoto", "drop"),
                ("sendDocument", "500"),
                ("answerCallbackQuery", "drop"),
            ]
        )
        # exactly what a clean run shows: per turn one status, (a preview,) one result, one code file
        assert len(statuses) == 2
        assert len(bot.previews(ALICE)) == 1 and len(bot.results(ALICE)) == 2
        assert [d.filename for d in bot.documents(ALICE)] == ["turn-1-canvas.py", "turn-2-canvas.py"]
        assert len(bot.llm.calls) == 1 and len(bot.renderer.calls) == 2
        assert len(tg.callback_answers) == 1


async def test_a_status_message_that_cannot_be_edited_is_sent_again(tmp_path: Path, tg: FakeTelegram) -> None:
    async with telegram_bot(tmp_path, tg, llm=FakeLLM(token_delay_s=0.0005)) as bot:
        tg.user_message(ALICE, FIRST)
        await tg.wait_for(lambda: bool(bot.statuses(ALICE)))
        tg.forget(ALICE, bot.statuses(ALICE)[0].message_id)  # the user deleted it
        await bot.results_in(ALICE, 1)
        statuses = await bot.statuses_done(ALICE)
        assert len(statuses) == 1 and statuses[0].text == "Turn 1: done."
        # the new status message belongs to the turn: replying to it continues turn 1
        tg.user_message(ALICE, "make it night", reply_to=statuses[0].message_id)
        tg.user_message(ALICE, "/new")
        await bot.results_in(ALICE, 2)
        assert (await bot.app.store.get_turn(2)).parent_id == 1


async def test_a_message_that_cannot_be_handled_is_reported_once(tmp_path: Path, tg: FakeTelegram) -> None:
    code = to_code(parse(seed_answers()[0]))
    async with telegram_bot(tmp_path, tg) as bot:
        bot.adapter.retries = 2
        tg.fail("getFile", "500", times=3)  # the download keeps failing: the retries run out
        tg.user_message(ALICE, "", document=("scene.py", code.encode(), "text/x-python"))
        sorry = await bot.reply_in(ALICE, 1)
        assert sorry == "Sorry, I could not handle that message. Please try again."
        assert tg.faults_fired == [("getFile", "500")] * 3
        # the chat goes on: the same file again is drawn
        tg.user_message(ALICE, "", document=("scene.py", code.encode(), "text/x-python"))
        await bot.results_in(ALICE, 1)
        assert bot.texts(ALICE).count(sorry) == 1


async def test_long_captions_and_texts_are_cut_or_sent_as_files(tmp_path: Path, tg: FakeTelegram) -> None:
    canvas = parse(seed_answers()[0])
    long_description = "A vast battlefield under a burning sky, " * 40  # ~1600 characters
    code = to_code(canvas).replace(canvas.global_description.description, long_description.strip(), 1)
    async with telegram_bot(tmp_path, tg) as bot:
        tg.user_message(ALICE, f"```python\n{code}\n```")
        (result,) = await bot.results_in(ALICE, 1)
        assert len(result.text) <= 1024 and result.text.endswith("…")
        follow_up = tg.bot_messages(ALICE)[tg.bot_messages(ALICE).index(result) + 1]
        assert follow_up.kind == "text" and len(follow_up.text) > 1024
        assert follow_up.text.startswith(result.text[:-1])  # the whole summary, uncut
        # replying to the follow-up text continues the same turn
        tg.user_message(ALICE, "make it night", reply_to=follow_up.message_id)
        await bot.results_in(ALICE, 2)
        assert (await bot.app.store.get_turn(2)).parent_id == 1

        # a text over 4096 characters is cut, and the whole text follows as a file
        long_text = "\n".join(f"line {i}: " + "word " * 12 for i in range(200))
        refs = await bot.adapter.send(str(ALICE), "", Post(text=long_text, buttons=(Button("retry", 1),)))
        message = tg.find(ALICE, int(refs[0].message_id))
        attached = tg.find(ALICE, int(refs[1].message_id))
        assert len(message.text) <= 4096 and "full text" in message.text
        assert message.buttons == ["omost:retry:1"]
        assert attached.kind == "document" and attached.data.decode() == long_text


async def test_two_users_at_once_are_both_answered(tmp_path: Path, tg: FakeTelegram) -> None:
    llm = FakeLLM(token_delay_s=0.0003)
    async with telegram_bot(tmp_path, tg, llm=llm, renderer=FakeRenderer(step_delay_s=0.05)) as bot:
        tg.user_message(ALICE, FIRST, user_name="Alice")
        tg.user_message(BOB, "a lighthouse in a storm", user_name="Bob")
        (a,) = await bot.results_in(ALICE, 1)
        (b,) = await bot.results_in(BOB, 1)
        owners = {(await bot.app.store.get_turn(i)).owner for i in (1, 2)}
        assert owners == {f"telegram:{ALICE}", f"telegram:{BOB}"}
        assert a.buttons != b.buttons  # each result names its own turn
        # the two turns ran side by side: both composed before either was drawn
        starts = sorted(span[0] for span in llm.spans)
        assert len(starts) == 2 and starts[1] < min(span[0] for span in bot.renderer.spans)


async def test_the_tiny_real_models_through_telegram(tmp_path: Path, tg: FakeTelegram) -> None:
    """The bot built from config with the tiny real LLM and SDXL (no fakes but the Bot API)."""
    from tests.tiny_llm import build_tiny_llm
    from tests.tiny_sdxl import build_tiny_sdxl

    llm_dir, sdxl_dir = build_tiny_llm(tmp_path / "llm"), build_tiny_sdxl(tmp_path / "sdxl")
    config = bot_config(
        tmp_path,
        platform=_telegram_section(tg.base_url),
        source="real.toml",
        **tiny_model_sections(llm_dir, sdxl_dir),
    )
    async with App(config, adapters=platform_adapters(config)) as app:
        # canvas code sent as a file: the real regional SDXL pipeline draws it
        code = to_code(parse(seed_answers()[0]))
        tg.user_message(ALICE, "", document=("scene.py", code.encode(), "text/x-python"))
        await tg.wait_for(lambda: any(m.keyboard for m in tg.bot_messages(ALICE) if m.kind == "photo"), 240)
        await asyncio.wait_for(app.runner.drain(), 240)
        result = next(m for m in tg.bot_messages(ALICE) if m.kind == "photo" and m.keyboard)
        restored = read_png_metadata(result.data)
        assert restored is not None and restored.canvas == parse(seed_answers()[0])
        assert Image.open(io.BytesIO(result.data)).size == (64, 64)
        # a prompt: the random-weight model streams for real but cannot write a canvas; the user
        # is told so on the status message, with a Retry button
        tg.user_message(BOB, "a lighthouse in a storm")
        await tg.wait_for(lambda: any("did not parse" in m.text for m in tg.bot_messages(BOB)), 240)
        status = next(m for m in tg.bot_messages(BOB) if "did not parse" in m.text)
        assert status.buttons == ["omost:retry:2"]


def test_callback_data_fits_64_bytes_and_parses_back() -> None:
    for action in ("seed", "rewrite", "hires", "vary", "zoom", "retry", "cancel"):
        data = encode_button(Button(action, 2**63 - 1))  # type: ignore[arg-type]
        assert len(data.encode()) <= 64
        assert decode_button(data) == (action, 2**63 - 1)
    assert decode_button("omost:rm -rf:1") is None
    assert decode_button("set:size=1024x1024") is None


async def test_the_cancel_button_answers_only_its_owner(tmp_path: Path, tg: FakeTelegram) -> None:
    from bot.turns.handler import NOT_YOURS

    async with telegram_bot(tmp_path, tg, renderer=FakeRenderer(step_delay_s=0.2)) as bot:
        tg.user_message(GROUP, f"/omost {FIRST}", chat_type="group", user=ALICE)
        await tg.wait_for(lambda: any("step" in m.text for m in bot.statuses(GROUP)))
        (status,) = bot.statuses(GROUP)
        assert "omost:cancel:1" in status.buttons  # a Cancel button while it draws
        bob_press = tg.press(GROUP, status.message_id, "omost:cancel:1", user=BOB)
        await tg.wait_for(lambda: bob_press in tg.callback_answers)
        assert tg.callback_answers[bob_press]["text"] == NOT_YOURS  # a private answer, to bob only
        assert (await bot.app.store.get_turn(1)).status == TurnStatus.RUNNING
        alice_press = tg.press(GROUP, status.message_id, "omost:cancel:1", user=ALICE)
        await tg.wait_for(lambda: alice_press in tg.callback_answers)
        await asyncio.wait_for(bot.app.runner.drain(), 30)
        assert (await bot.app.store.get_turn(1)).status == TurnStatus.CANCELLED
        await tg.wait_for(lambda: "Cancelled" in bot.statuses(GROUP)[0].text)
        assert bot.statuses(GROUP)[0].buttons == ["omost:retry:1"]
        assert not bot.results(GROUP)


async def test_corrections_are_shown_in_the_result(tmp_path: Path, tg: FakeTelegram) -> None:
    from tests.test_turn_results import misspelled_canvas

    code, location = misspelled_canvas()
    async with telegram_bot(tmp_path, tg) as bot:
        tg.user_message(ALICE, code)
        (result,) = await bot.results_in(ALICE, 1)
        assert f"“{location}x” → “{location}”" in result.text


async def test_a_result_photo_refused_six_times_is_posted_on_the_next_try(
    tmp_path: Path, tg: FakeTelegram
) -> None:
    from bot.turns.results import DELIVERY_RETRYING

    async with telegram_bot(tmp_path, tg) as bot:
        bot.app.runner.delivery_delays_s = (0.3,)
        # every one of the adapter's six tries of the result photo answers 500 (the layout
        # preview, which has no keyboard, goes through)
        tg.fail("sendPhoto", "500", times=6, with_keyboard=True)
        tg.user_message(ALICE, FIRST)
        (result,) = await bot.results_in(ALICE, 1)
        assert tg.faults_fired.count(("sendPhoto", "500")) == 6
        (status,) = await bot.statuses_done(ALICE)
        assert any(DELIVERY_RETRYING in text for text in status.shown)
        assert not any("went wrong" in text for text in status.shown)
        assert result.buttons == ["omost:seed:1", "omost:rewrite:1", "omost:hires:1", "omost:vary:1", "omost:zoom:1"]
        assert len(bot.previews(ALICE)) == 1  # nothing was posted twice


async def test_a_document_larger_than_declared_is_not_read_whole(tmp_path: Path, tg: FakeTelegram) -> None:
    async with telegram_bot(tmp_path, tg) as bot:
        bot.adapter.max_download_bytes = 2**20
        big = b"#" * (32 * 2**20)
        tg.user_message(ALICE, "", document=("scene.py", big, "text/x-python"), declared_size=1000)
        answer = await bot.reply_in(ALICE, 1)
        assert answer == "That file is too large (the limit is 1 MB)."
        await asyncio.sleep(0.3)  # whatever the server still pushed after the bot hung up
        assert tg.bytes_served["documents/scene.py"] < len(big) // 2
        assert await bot.app.store.find_turn(1) is None and bot.llm.calls == []


async def test_vary_region_and_zoom_out_through_the_keyboard(tmp_path: Path, tg: FakeTelegram) -> None:
    from bot.turns.handler import NOT_YOURS_TO_VARY

    async with telegram_bot(tmp_path, tg) as bot:
        tg.user_message(GROUP, f"/omost {FIRST}", chat_type="group", user=ALICE)
        (result,) = await bot.results_in(GROUP, 1)
        assert result.rows[-1] == ["Vary region", "Zoom out"]
        refused = tg.press(GROUP, result.message_id, "omost:vary:1", user=BOB)
        await tg.wait_for(lambda: refused in tg.callback_answers)
        assert tg.callback_answers[refused]["text"] == NOT_YOURS_TO_VARY
        tg.press(GROUP, result.message_id, "omost:vary:1", user=ALICE)
        await tg.wait_for(lambda: any(m.text.endswith("with a new seed?") for m in tg.bot_messages(GROUP)))
        (question,) = [m for m in tg.bot_messages(GROUP) if m.text.endswith("with a new seed?")]
        regions = parse(seed_answers()[0]).regions
        assert len(question.buttons) == len(regions) and question.buttons[1] == "omost:vary:1:2"
        tg.press(GROUP, question.message_id, "omost:vary:1:2", user=ALICE)
        await bot.results_in(GROUP, 2)
        varied = await bot.app.store.get_turn(2)
        assert varied.kind == TurnKind.RENDER and varied.params["vary_region"] == 2
        edit = bot.renderer.calls[-1][1].edit
        assert edit is not None and edit.kind == "vary" and edit.boxes == (regions[1].box,)
        tg.press(GROUP, result.message_id, "omost:zoom:1", user=ALICE)
        await bot.results_in(GROUP, 3)
        assert (await bot.app.store.get_turn(3)).params["frame_zoom"] == 1.5
        assert bot.renderer.calls[-1][1].edit.kind == "zoom_out"  # type: ignore[union-attr]
