"""The Discord adapter, driven through the real discord.py against a fake Discord on loopback.

Each test starts the bot (App + fake backends + DiscordAdapter) against tests/fakes/discord_server.py
and plays a user: slash commands and button presses arrive as INTERACTION_CREATE, messages as
MESSAGE_CREATE; what the user would see is read back from the messages the fake holds.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import logging
import re
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from adapters.base import OutFile
from adapters.discord_bot import DiscordAdapter, fit_image
from bot.app import App, platform_adapters
from bot.config import Config
from bot.store import LinkRole, TurnKind, TurnStatus
from omost_engine.canvas_code import parse, to_answer
from tests.bot_config import bot_config, tiny_model_sections
from tests.fakes.discord_server import (
    ATTACH_FILES,
    CHANNEL_ID,
    EMBED_LINKS,
    GUILD_ID,
    OTHER_CHANNEL_ID,
    FakeDiscord,
    serve,
)
from tests.fakes.fake_backends import FakeLLM, FakeRenderer
from tests.seed import seed_answers

pytestmark = pytest.mark.timeout(60)


def make_config(tmp_path: Path, **sections: Any) -> Config:
    platform = f"[discord]\nenabled = true\nguild_ids = [{GUILD_ID}]"
    return bot_config(tmp_path, platform=platform, source="discord-test.toml", **sections)


def make_adapter(config: Config) -> DiscordAdapter:
    (adapter,) = platform_adapters(config)
    assert isinstance(adapter, DiscordAdapter)
    adapter.guild_ready_timeout = 0.05
    adapter.min_edit_interval = 0.05
    return adapter


@asynccontextmanager
async def running_bot(
    tmp_path: Path, fake: FakeDiscord, *, llm: FakeLLM | None = None, renderer: FakeRenderer | None = None
) -> AsyncIterator[App]:
    config = make_config(tmp_path)
    async with App(
        config, adapters=[make_adapter(config)], llm=llm or FakeLLM(), renderer=renderer or FakeRenderer()
    ) as app:
        yield app


@pytest.fixture
async def fake(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeDiscord]:
    monkeypatch.setenv("DISCORD_BOT_TOKEN", "fake-token")
    async with serve() as server:
        yield server


def results(fake: FakeDiscord, channel_id: int | None = None) -> list[dict[str, Any]]:
    """The bot's result messages: an image in an embed, with the code file and buttons."""
    return [m for m in fake.sent(channel_id) if m["embeds"] and m["attachments"]]


def buttons(message: dict[str, Any]) -> list[str]:
    return [c["custom_id"] for row in message["components"] for c in row["components"]]


async def settle(
    app: App, fake: FakeDiscord, count: int, channel_id: int | None = None
) -> list[dict[str, Any]]:
    found = await fake.wait_for(lambda: len(results(fake, channel_id)) >= count and results(fake, channel_id))
    await asyncio.wait_for(app.runner.drain(), 20)
    return found


def thread_of(fake: FakeDiscord) -> int:
    threads = fake.threads()
    assert len(threads) == 1
    return int(threads[0]["id"])


@pytest.fixture(autouse=True)
def no_unexpected_errors(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Whatever a test does, nothing in the bot or the adapter may log an error."""
    yield
    errors = [
        r for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith(("adapters", "bot"))
    ]
    assert errors == [], [r.getMessage() for r in errors]


def mention_settings(fake: FakeDiscord) -> list[Any]:
    """allowed_mentions of every message the bot created or edited, interaction responses included."""
    found = []
    for call in fake.calls:
        if call.method in ("POST", "PATCH") and re.fullmatch(r"/channels/\d+/messages(/\d+)?", call.path):
            found.append((call.json or {}).get("allowed_mentions"))
        elif call.path.endswith("/callback") and (call.json or {}).get("type") == 4:
            found.append(call.json["data"].get("allowed_mentions"))
    return found


async def test_omost_opens_a_thread_and_ends_with_image_code_and_buttons(
    tmp_path: Path, fake: FakeDiscord
) -> None:
    async with running_bot(tmp_path, fake) as app:
        assert {c["name"] for c in fake.commands[str(GUILD_ID)]} == {
            "omost",
            "settings",
            "new",
            "cancel",
            "help",
        }
        started = time.monotonic()
        interaction = await fake.slash("omost", {"prompt": "a lighthouse in a storm", "seed": 7})
        callback = await fake.wait_for(
            lambda: [c for c in fake.calls if c.path.startswith(f"/interactions/{interaction['id']}/")]
        )
        assert callback[0].at - started < 3.0  # acknowledged within Discord's 3 seconds
        [result] = await settle(app, fake, 1)
        thread = thread_of(fake)
        assert fake.channels[thread]["parent_id"] == str(CHANNEL_ID)
        assert result["channel_id"] == str(thread)  # the conversation lives in the thread
        names = [a["filename"] for a in result["attachments"]]
        assert names == ["turn-1.png", "turn-1-canvas.py"]
        assert parse(fake.file(result, ".py").decode()) == parse(seed_answers()[0])
        assert Image.open(io.BytesIO(fake.file(result, ".png"))).size == (16, 16)
        embed = result["embeds"][0]
        assert embed["image"]["url"] == "attachment://turn-1.png"
        assert embed["description"].startswith("New picture")
        assert buttons(result) == ["omost:seed:1", "omost:rewrite:1", "omost:hires:1", "omost:vary:1", "omost:zoom:1"]
        turn = await app.store.get_turn(1)
        assert turn.status == TurnStatus.DONE and turn.seed == 7
        # the layout preview came before the result, and the status message ended as "done"
        in_thread = fake.sent(thread)
        preview = next(m for m in in_thread if "layout" in m["content"])
        assert in_thread.index(preview) < in_thread.index(result)
        assert any(m["content"].endswith("done.") for m in in_thread)
        # no result travelled over the interaction token
        assert not [c for c in fake.calls if c.path.startswith("/webhooks/")]


async def test_thread_messages_continue_and_a_reply_to_the_first_result_branches(
    tmp_path: Path, fake: FakeDiscord
) -> None:
    llm = FakeLLM()
    async with running_bot(tmp_path, fake, llm=llm) as app:
        await fake.slash("omost", {"prompt": "a lighthouse in a storm"})
        [first] = await settle(app, fake, 1)
        thread = thread_of(fake)
        # a plain message in the thread continues the conversation
        await fake.say("make it night", channel_id=thread)
        await settle(app, fake, 2)
        second = await app.store.get_turn(2)
        assert second.parent_id == 1 and second.user_text == "make it night"
        # a reply to the first result branches from turn 1, not from the thread's latest turn
        await fake.say("make it snow", channel_id=thread, reply_to=int(first["id"]))
        found = await settle(app, fake, 3)
        third = await app.store.get_turn(3)
        assert third.parent_id == 1 and third.status == TurnStatus.DONE
        assert all(m["channel_id"] == str(thread) for m in found)
        # the second compose saw turn 1 as history; the third did not see turn 2
        assert "make it night" not in [m.content for m in llm.calls[2][0]]
        # guild chatter that is neither a mention nor a reply is ignored
        before = len(fake.sent())
        await fake.say("just chatting", channel_id=CHANNEL_ID)
        await asyncio.sleep(0.3)
        assert len(fake.sent()) == before


async def test_a_dm_conversation(tmp_path: Path, fake: FakeDiscord) -> None:
    async with running_bot(tmp_path, fake) as app:
        dm = int(fake.dm_channel(1001)["id"])
        await fake.say("a lighthouse in a storm", channel_id=dm)
        await settle(app, fake, 1, dm)
        await fake.say("make it night", channel_id=dm)
        results_in_dm = await settle(app, fake, 2, dm)
        assert (await app.store.get_turn(2)).parent_id == 1
        assert fake.threads() == []  # in a DM the DM is the thread
        # a slash command in the DM continues the same conversation
        await fake.slash("omost", {"prompt": "add a moon"}, dm=True)
        await settle(app, fake, 3, dm)
        assert (await app.store.get_turn(3)).parent_id == 2
        assert len(results_in_dm) >= 2


async def test_a_button_pressed_after_a_restart_works(tmp_path: Path, fake: FakeDiscord) -> None:
    async with running_bot(tmp_path, fake) as app:
        await fake.slash("omost", {"prompt": "a lighthouse in a storm"})
        [first] = await settle(app, fake, 1)
    assert fake.identifies == 1
    async with running_bot(tmp_path, fake) as app:  # a new process: nothing in memory but the store
        assert fake.identifies == 2
        await fake.press("omost:seed:1", int(first["id"]))
        found = await settle(app, fake, 2)
        again = await app.store.get_turn(2)
        assert again.parent_id == 1 and again.seed != (await app.store.get_turn(1)).seed
        assert found[1]["channel_id"] == first["channel_id"]  # in the same thread
        assert buttons(found[1]) == ["omost:seed:2", "omost:rewrite:2", "omost:hires:2", "omost:vary:2", "omost:zoom:2"]


async def test_a_job_outliving_the_interaction_token_still_delivers(
    tmp_path: Path, fake: FakeDiscord
) -> None:
    async with running_bot(tmp_path, fake, renderer=FakeRenderer(step_delay_s=0.1)) as app:
        interaction = await fake.slash("omost", {"prompt": "a lighthouse in a storm"})
        await fake.wait_for(lambda: any(c.path.endswith("/callback") for c in fake.calls))
        fake.expire_token(interaction["token"])  # as if 15 minutes had passed
        [result] = await settle(app, fake, 1)
        assert result["attachments"]
        assert not [c for c in fake.calls if c.path.startswith("/webhooks/") or c.status == 401]


async def test_rate_limits_and_server_errors_are_survived_without_duplicates(
    tmp_path: Path, fake: FakeDiscord
) -> None:
    async with running_bot(tmp_path, fake) as app:
        # the first message the bot sends is rate limited, the next one fails with a 500 after
        # Discord had in fact made it (the bot retries; the nonce keeps it from posting twice)
        fake.fail("POST", r"^/channels/\d+/messages$", 429, retry_after=0.3)
        fake.fail("POST", r"^/channels/\d+/messages$", 500, after_effect=True)
        await fake.slash("omost", {"prompt": "a lighthouse in a storm"})
        await settle(app, fake, 1)
        assert [c.status for c in fake.calls if c.status in (429, 500)] == [429, 500]
        thread = thread_of(fake)
        contents = [m["content"] for m in fake.sent(thread) if m["content"]]
        assert len(contents) == len(set(contents))  # nothing posted twice
        assert len(results(fake)) == 1
        # a result whose upload hits a 500 is retried too, and posted once
        fake.fail("POST", r"^/channels/\d+/messages$", 500, times=1)
        await fake.say("make it night", channel_id=thread)
        await settle(app, fake, 2)
        assert len(results(fake)) == 2
        assert (await app.store.get_turn(2)).status == TurnStatus.DONE


async def test_everyone_in_content_never_pings(tmp_path: Path, fake: FakeDiscord) -> None:
    async with running_bot(tmp_path, fake) as app:
        await fake.slash("omost", {"prompt": "@everyone look at this <@1002> lighthouse"})
        await settle(app, fake, 1)
        await fake.slash("help")
        await fake.wait_for(lambda: any("Describe a picture" in m["content"] for m in fake.messages.values()))
        settings = mention_settings(fake)
        assert len(settings) >= 5
        assert all(s is not None and s["parse"] == [] for s in settings), settings
        assert any("@everyone" in m["content"] for m in fake.sent())  # shown, but pings nobody


async def test_quick_commands_answer_in_the_interaction(tmp_path: Path, fake: FakeDiscord) -> None:
    async with running_bot(tmp_path, fake) as app:
        await fake.slash("settings", {"steps": 5, "size": "128x128"})
        saved = await fake.wait_for(lambda: [m for m in fake.messages.values() if "Saved." in m["content"]])
        assert "interaction_metadata" in saved[0]  # the command's own response, not an extra message
        assert (await app.store.get_settings("user", "discord", "1001"))["steps"] == 5
        await fake.slash("new")
        await fake.wait_for(lambda: [m for m in fake.messages.values() if "new conversation" in m["content"]])


async def test_no_thread_permission_answers_in_the_channel(
    tmp_path: Path, fake: FakeDiscord, caplog: pytest.LogCaptureFixture
) -> None:
    async with running_bot(tmp_path, fake) as app:
        await fake.slash("omost", {"prompt": "a lighthouse in a storm"}, channel_id=OTHER_CHANNEL_ID)
        [result] = await settle(app, fake, 1)
        assert result["channel_id"] == str(OTHER_CHANNEL_ID) and fake.threads() == []
        assert any("Create Public Threads" in r.getMessage() for r in caplog.records)


async def test_a_mention_works_like_omost_and_survives_a_gateway_reconnect(
    tmp_path: Path, fake: FakeDiscord
) -> None:
    async with running_bot(tmp_path, fake) as app:
        await fake.say("<@900000000000000001> a lighthouse in a storm", mention_bot=True)
        await settle(app, fake, 1)
        thread = thread_of(fake)
        assert (await app.store.get_turn(1)).user_text == "a lighthouse in a storm"
        # Discord moves the session; a message sent meanwhile is replayed on resume, once
        await fake.reconnect()
        await fake.say("make it night", channel_id=thread)
        await settle(app, fake, 2)
        await fake.wait_for(lambda: fake.resumes >= 1)
        await asyncio.sleep(0.3)
        assert len(results(fake)) == 2 and fake.identifies == 1


def test_an_image_over_the_file_limit_goes_as_jpeg() -> None:
    noise = Image.effect_noise((256, 256), 100).convert("RGB")
    buffer = io.BytesIO()
    noise.save(buffer, format="PNG")
    png = OutFile("turn-1.png", buffer.getvalue(), "image/png")
    assert fit_image(png) is png  # small enough: untouched
    fitted = fit_image(png, limit=len(png.data) // 2)
    assert fitted.filename == "turn-1.jpg" and len(fitted.data) <= len(png.data) // 2
    assert Image.open(io.BytesIO(fitted.data)).format == "JPEG"


async def status_id(app: App, turn_id: int) -> int:
    [link] = await app.store.messages_for_turn(turn_id, LinkRole.STATUS)
    return int(link.message_id)


async def status_id_latest(app: App, turn_id: int) -> int:
    links = await app.store.messages_for_turn(turn_id, LinkRole.STATUS)
    return int(links[-1].message_id)


def patches(fake: FakeDiscord, message_id: int) -> list[Any]:
    return [c for c in fake.calls if c.method == "PATCH" and c.path.endswith(f"/messages/{message_id}")]


async def test_status_edits_are_paced_and_the_newest_state_lands(tmp_path: Path, fake: FakeDiscord) -> None:
    interval = 0.25
    config = make_config(tmp_path)
    adapter = make_adapter(config)
    adapter.min_edit_interval = interval
    # about 1.5 s of streaming: hundreds of text deltas and a dozen regions for one status message
    llm = FakeLLM(token_delay_s=0.0007)
    async with App(config, adapters=[adapter], llm=llm, renderer=FakeRenderer(step_delay_s=0.2)) as app:
        dm = int(fake.dm_channel(1001)["id"])
        started = time.monotonic()
        await fake.say("a lighthouse in a storm", channel_id=dm)
        await settle(app, fake, 1, dm)
        elapsed = time.monotonic() - started
        status = await status_id(app, 1)
        edits = patches(fake, status)
        assert len(edits) >= 4  # the user watched it progress
        assert len(edits) <= elapsed / interval + 2, (len(edits), elapsed)
        gaps = [b.at - a.at for a, b in itertools.pairwise(edits)]
        assert min(gaps) >= interval * 0.8, gaps
        shown = [c.json["content"] for c in edits]
        assert any("writing the canvas" in text and "\n" in text for text in shown)  # regions listed
        assert any("step" in text for text in shown)
        # the final state landed, on the status message itself
        assert fake.messages[status]["content"] == "Turn 1: done."
        assert shown[-1] == "Turn 1: done."


async def test_attach_files_refused_falls_back_to_text_and_nothing_is_lost(
    tmp_path: Path, fake: FakeDiscord, caplog: pytest.LogCaptureFixture
) -> None:
    await fake.deny(CHANNEL_ID, ATTACH_FILES)
    async with running_bot(tmp_path, fake) as app:
        await fake.slash("omost", {"prompt": "a lighthouse in a storm"})
        await fake.wait_for(lambda: any(m["content"].endswith("done.") for m in fake.sent()))
        await asyncio.wait_for(app.runner.drain(), 20)
        thread = thread_of(fake)
        in_thread = fake.sent(thread)
        assert all(not m["attachments"] for m in in_thread)
        [result] = [m for m in in_thread if m["components"] and "New picture" in m["content"]]
        assert "Attach Files" in result["content"]  # the user is told why there is no picture
        assert buttons(result) == ["omost:seed:1", "omost:rewrite:1", "omost:hires:1", "omost:vary:1", "omost:zoom:1"]
        turn = await app.store.get_turn(1)
        assert turn.status == TurnStatus.DONE and turn.image_path is not None
        assert (tmp_path / "data" / turn.image_path).exists()  # the picture is kept, not lost
        assert any("Attach Files" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)
        # the cache knew: no upload was tried and refused
        assert not [c for c in fake.calls if c.status == 403]
        # the buttons still work on the text result
        await fake.press("omost:seed:1", int(result["id"]))
        await fake.wait_for(lambda: [m for m in fake.sent(thread) if "drawn again" in m["content"]])
        await asyncio.wait_for(app.runner.drain(), 20)
        assert (await app.store.get_turn(2)).status == TurnStatus.DONE


async def test_a_refusal_the_cache_did_not_foresee_steps_down(
    tmp_path: Path, fake: FakeDiscord, caplog: pytest.LogCaptureFixture
) -> None:
    async with running_bot(tmp_path, fake) as app:
        await fake.slash("omost", {"prompt": "a lighthouse in a storm"})
        await settle(app, fake, 1)
        thread = thread_of(fake)
        # the admin takes Embed Links away, but the bot misses the update (no CHANNEL_UPDATE)
        fake._overwrite(CHANNEL_ID, EMBED_LINKS)
        await fake.say("make it night", channel_id=thread)
        found = await fake.wait_for(
            lambda: [m for m in fake.sent(thread) if fake.file(m, "turn-2.png") is not None]
        )
        await asyncio.wait_for(app.runner.drain(), 20)
        [second] = found
        assert second["embeds"] == [] and [a["filename"] for a in second["attachments"]] == [
            "turn-2.png",
            "turn-2-canvas.py",
        ]
        assert [c.status for c in fake.calls if c.status == 403] == [403]  # one refusal, then it adapted
        assert any("Embed Links" in r.getMessage() for r in caplog.records)


async def test_embed_links_refused_sends_the_picture_without_the_embed(
    tmp_path: Path, fake: FakeDiscord, caplog: pytest.LogCaptureFixture
) -> None:
    await fake.deny(CHANNEL_ID, EMBED_LINKS)
    async with running_bot(tmp_path, fake) as app:
        await fake.slash("omost", {"prompt": "a lighthouse in a storm"})
        found = await fake.wait_for(lambda: [m for m in fake.sent() if m["components"] and m["attachments"]])
        await asyncio.wait_for(app.runner.drain(), 20)
        [result] = found
        assert result["channel_id"] == str(thread_of(fake))
        assert result["embeds"] == []
        assert [a["filename"] for a in result["attachments"]] == ["turn-1.png", "turn-1-canvas.py"]
        assert result["content"].startswith("New picture")  # the summary the embed would have held
        assert buttons(result) == ["omost:seed:1", "omost:rewrite:1", "omost:hires:1", "omost:vary:1", "omost:zoom:1"]
        assert any("Embed Links" in r.getMessage() for r in caplog.records)
        assert not [c for c in fake.calls if c.status == 403]


@pytest.mark.parametrize("how", ["deleted", "forbidden"])
async def test_a_status_message_that_cannot_be_edited_is_replaced_and_relinked(
    tmp_path: Path, fake: FakeDiscord, how: str
) -> None:
    async with running_bot(tmp_path, fake, renderer=FakeRenderer(step_delay_s=0.2)) as app:
        dm = int(fake.dm_channel(1001)["id"])
        await fake.say("a lighthouse in a storm", channel_id=dm)
        old = await fake.wait_for(lambda: [m for m in fake.sent(dm) if m["content"].startswith("Turn 1:")])
        old_id = int(old[0]["id"])
        if how == "deleted":
            await fake.delete_message(old_id)  # a moderator removed it: edits get 404
        else:
            fake.fail("PATCH", rf"/messages/{old_id}$", 403)  # no longer editable
        await settle(app, fake, 1, dm)
        refused = [c.status for c in patches(fake, old_id) if c.status >= 400]
        assert refused == ([404] if how == "deleted" else [403])
        new_id = await status_id_latest(app, 1)
        assert new_id != old_id
        assert fake.messages[new_id]["content"] == "Turn 1: done."  # the final state shows
        assert len([m for m in fake.sent(dm) if m["content"] == "Turn 1: done."]) == 1
        await fake.say("add a moon", channel_id=dm)
        await settle(app, fake, 2, dm)
        # a reply to the new status message continues from its turn, not from the DM's latest
        await fake.say("make it night", channel_id=dm, reply_to=new_id)
        await settle(app, fake, 3, dm)
        assert (await app.store.get_turn(2)).parent_id == 1
        assert (await app.store.get_turn(3)).parent_id == 1


async def test_a_canvas_file_in_a_dm_is_drawn_without_the_model(tmp_path: Path, fake: FakeDiscord) -> None:
    llm = FakeLLM()
    async with running_bot(tmp_path, fake, llm=llm) as app:
        dm = int(fake.dm_channel(1001)["id"])
        code = to_answer(parse(seed_answers()[1]))
        await fake.say("", channel_id=dm, files=[("my-canvas.py", code.encode())])
        [result] = await settle(app, fake, 1, dm)
        assert llm.calls == []  # drawn directly
        turn = await app.store.get_turn(1)
        assert turn.kind == TurnKind.USER_CANVAS and turn.status == TurnStatus.DONE
        assert parse(turn.canvas_code or "") == parse(seed_answers()[1])
        assert buttons(result) == ["omost:seed:1", "omost:rewrite:1", "omost:hires:1", "omost:vary:1", "omost:zoom:1"]


async def test_a_picture_the_bot_made_uploaded_again_continues_from_it(
    tmp_path: Path, fake: FakeDiscord
) -> None:
    llm = FakeLLM()
    async with running_bot(tmp_path, fake, llm=llm) as app:
        await fake.slash("omost", {"prompt": "a lighthouse in a storm", "seed": 42})
        [first] = await settle(app, fake, 1)
        png = fake.file(first, ".png")
        assert png is not None
        # later, in a DM, the user uploads that picture with a change
        dm = int(fake.dm_channel(1001)["id"])
        await fake.say("make it night", channel_id=dm, files=[("turn-1.png", png)])
        await settle(app, fake, 1, dm)
        restored = await app.store.get_turn(2)
        assert restored.kind == TurnKind.USER_CANVAS and restored.seed == 42
        assert parse(restored.canvas_code or "") == parse(seed_answers()[0])
        changed = await app.store.get_turn(3)
        assert changed.parent_id == 2 and changed.user_text == "make it night"
        # the model saw the uploaded picture's canvas as the conversation so far
        history = [m.content for m in llm.calls[-1][0]]
        assert "make it night" in history[-1]
        assert any("Canvas()" in text for text in history[:-1])


async def test_an_oversize_attachment_is_ignored_with_a_clear_answer(
    tmp_path: Path, fake: FakeDiscord
) -> None:
    llm = FakeLLM()
    async with running_bot(tmp_path, fake, llm=llm) as app:
        dm = int(fake.dm_channel(1001)["id"])
        big = b"#" * (11 * 1024 * 1024)
        message = await fake.say("", channel_id=dm, files=[("huge.py", big)])
        [answer] = await fake.wait_for(lambda: fake.sent(dm))
        await asyncio.sleep(0.3)
        await asyncio.wait_for(app.runner.drain(), 20)
        assert fake.sent(dm) == [answer]  # one answer, nothing else
        assert "huge.py" in answer["content"] and "10 MiB" in answer["content"]
        assert answer["message_reference"]["message_id"] == message["id"]
        assert await app.store.find_turn(1) is None and llm.calls == []


async def test_a_failing_handler_tells_the_user_privately_and_logs_once(
    tmp_path: Path, fake: FakeDiscord, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*_: Any) -> None:
        raise RuntimeError("the store is on fire")

    def private_notes() -> list[dict[str, Any]]:
        return [m for m in fake.messages.values() if "went wrong" in m["content"]]

    async with running_bot(tmp_path, fake) as app:
        await fake.slash("omost", {"prompt": "a lighthouse in a storm"})
        [result] = await settle(app, fake, 1)
        caplog.clear()
        monkeypatch.setattr(app.handler, "on_message", broken)
        monkeypatch.setattr(app.handler, "on_button", broken)
        # /omost: its response is already the request, so the note is an ephemeral followup
        await fake.slash("omost", {"prompt": "a lighthouse at night"})
        [note] = await fake.wait_for(private_notes)
        assert note["flags"] & 64 and note["channel_id"] == str(CHANNEL_ID)
        # /help: the note is the interaction's own ephemeral response
        await fake.slash("help")
        notes = await fake.wait_for(lambda: len(private_notes()) >= 2 and private_notes())
        assert notes[1]["flags"] & 64 and "interaction_metadata" in notes[1]
        # a button: acknowledged, then an ephemeral followup
        await fake.press("omost:seed:1", int(result["id"]))
        notes = await fake.wait_for(lambda: len(private_notes()) >= 3 and private_notes())
        assert notes[2]["flags"] & 64 and notes[2]["channel_id"] == result["channel_id"]
        # a mention in the channel: the note goes to the user's DM, not to the channel
        await fake.say("<@900000000000000001> a lighthouse", mention_bot=True)
        notes = await fake.wait_for(lambda: len(private_notes()) >= 4 and private_notes())
        assert notes[3]["channel_id"] == fake.dm_channel(1001)["id"]
        await asyncio.sleep(0.2)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 4, [r.getMessage() for r in errors]  # once per failure, by the adapter
    assert all(
        r.name == "adapters.discord_bot" and "the store is on fire" in str(r.exc_info[1]) for r in errors
    )
    assert len(private_notes()) == 4 and all(len(n["content"]) < 100 for n in private_notes())
    caplog.clear()  # these errors were the point of the test


async def test_a_message_in_a_thread_the_bot_does_not_know_is_fetched_and_continues(
    tmp_path: Path, fake: FakeDiscord
) -> None:
    async with running_bot(tmp_path, fake) as app:
        await fake.slash("omost", {"prompt": "a lighthouse in a storm"})
        await settle(app, fake, 1)
    thread = thread_of(fake)
    fake.archive(thread)  # a day later: archived, so a new bot process does not have it cached
    async with running_bot(tmp_path, fake) as app:
        await fake.say("make it night", channel_id=thread)  # no mention, no reply: just the thread
        found = await settle(app, fake, 2)
        assert [c for c in fake.calls if c.method == "GET" and c.path == f"/channels/{thread}"]
        second = await app.store.get_turn(2)
        assert second.parent_id == 1 and second.user_text == "make it night"
        assert found[1]["channel_id"] == str(thread)
        # the thread is now known: its next message needs no fetch
        await fake.say("add a moon", channel_id=thread)
        await settle(app, fake, 3)
        assert (await app.store.get_turn(3)).parent_id == 2
        assert len([c for c in fake.calls if c.method == "GET" and c.path == f"/channels/{thread}"]) == 1


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from tests.tiny_llm import build_tiny_llm
    from tests.tiny_sdxl import build_tiny_sdxl

    root = tmp_path_factory.mktemp("models")
    return build_tiny_llm(root / "llm"), build_tiny_sdxl(root / "sdxl")


@pytest.mark.timeout(300)
async def test_tiny_real_models_through_discord(
    tmp_path: Path, fake: FakeDiscord, tiny_models: tuple[Path, Path]
) -> None:
    llm_dir, sdxl_dir = tiny_models
    config = make_config(tmp_path, **tiny_model_sections(llm_dir, sdxl_dir))
    async with App(config, adapters=[make_adapter(config)]) as app:
        # canvas code sent in a DM: the real regional SDXL pipeline draws it
        dm = int(fake.dm_channel(1001)["id"])
        await fake.say(to_answer(parse(seed_answers()[0])), channel_id=dm)
        [result] = await settle(app, fake, 1, dm)
        image = Image.open(io.BytesIO(fake.file(result, ".png") or b""))
        assert image.size == (64, 64)
        # a prompt: the random-weight model streams for real and cannot write a canvas; the user
        # sees why, with a Retry button, and nothing is drawn
        await fake.slash("omost", {"prompt": "a lighthouse in a storm"})
        status = await fake.wait_for(
            lambda: [m for m in fake.sent() if "did not parse" in m["content"]], timeout=240
        )
        await asyncio.wait_for(app.runner.drain(), 240)
        assert status[-1]["channel_id"] == str(thread_of(fake))
        assert buttons(status[-1]) == ["omost:retry:2"]
        assert (await app.store.get_turn(2)).status == TurnStatus.FAILED


async def test_the_cancel_button_answers_only_its_owner(tmp_path: Path, fake: FakeDiscord) -> None:
    from bot.turns.handler import NOT_YOURS

    async with running_bot(tmp_path, fake, renderer=FakeRenderer(step_delay_s=0.2)) as app:
        await fake.slash("omost", {"prompt": "a lighthouse in a storm"}, user_id=1001)
        for _ in range(200):  # until the status message is posted and linked
            if await app.store.messages_for_turn(1, LinkRole.STATUS):
                break
            await asyncio.sleep(0.02)
        status = await status_id(app, 1)
        await fake.wait_for(lambda: "step" in fake.messages[status]["content"])
        assert buttons(fake.messages[status]) == ["omost:cancel:1"]  # a Cancel button while it draws
        await fake.press("omost:cancel:1", status, user_id=1002)
        [refusal] = await fake.wait_for(
            lambda: [m for m in fake.messages.values() if NOT_YOURS in m["content"]]
        )
        assert refusal["flags"] & 64  # ephemeral: only bob sees it
        assert (await app.store.get_turn(1)).status == TurnStatus.RUNNING
        await fake.press("omost:cancel:1", status, user_id=1001)
        await asyncio.wait_for(app.runner.drain(), 20)
        assert (await app.store.get_turn(1)).status == TurnStatus.CANCELLED
        await fake.wait_for(lambda: "Cancelled" in fake.messages[status]["content"])
        assert buttons(fake.messages[status]) == ["omost:retry:1"]
        assert not results(fake)


async def test_corrections_are_shown_in_the_result(tmp_path: Path, fake: FakeDiscord) -> None:
    from tests.test_turn_results import misspelled_canvas

    code, location = misspelled_canvas()
    async with running_bot(tmp_path, fake) as app:
        dm = int(fake.dm_channel(1001)["id"])
        await fake.say(code, channel_id=dm)
        [result] = await settle(app, fake, 1, dm)
        assert f"“{location}x” → “{location}”" in result["embeds"][0]["description"]
