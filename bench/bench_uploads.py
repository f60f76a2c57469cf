"""What a document larger than it declares costs the bot, and what a failed result post costs.

Measures, in one run, against the fake Telegram Bot API on loopback (tests/fakes/telegram_server.py):
- a 64 MiB document that declares 1 KB, under the bot's 20 MiB limit: the bytes the server sent
  and the bot's peak Python memory, reading it whole (httpx GET, what `File.download_as_bytearray`
  does) against the adapter's streamed, capped read (`adapters.telegram_bot._download_capped`);
- a turn whose result photo Telegram answers 500 six times (the adapter's own tries), through the
  real python-telegram-bot and the bot's delivery retry: the time from the render's end to the
  photo in the chat, against a turn with no failures.
Prints ratios measured in one run.

    python bench/bench_uploads.py
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from adapters.telegram_bot import DOWNLOAD_LIMIT, TelegramAdapter, _download_capped  # noqa: E402
from bot.app import App  # noqa: E402
from tests.bot_config import bot_config  # noqa: E402
from tests.fakes.fake_backends import FakeLLM, FakeRenderer  # noqa: E402
from tests.fakes.telegram_server import TOKEN, FakeTelegram  # noqa: E402
from tests.seed import seed_messages  # noqa: E402

FIRST = next(m["content"] for m in seed_messages() if m["role"] == "user")
SIZE = 64 * 2**20


async def _whole(url: str) -> int:
    async with httpx.AsyncClient() as client:
        response = await client.get(url)
        return len(response.content)


async def _measure(tg: FakeTelegram, read: object) -> tuple[int, int]:
    """(bytes served, peak traced bytes) for one download of the big file."""
    url = f"{tg.base_url}/file/bot{TOKEN}/documents/big.py"
    tracemalloc.start()
    await read(url)  # type: ignore[operator]
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    await asyncio.sleep(0.3)  # what the server still pushed after the client hung up
    return tg.bytes_served["documents/big.py"], peak


async def downloads() -> None:
    async with FakeTelegram() as tg:
        tg.user_message(1001, "", document=("big.py", b"#" * SIZE, "text/x-python"), declared_size=1000)
        whole_served, whole_peak = await _measure(tg, _whole)
        capped_served, capped_peak = await _measure(tg, lambda url: _download_capped(url, DOWNLOAD_LIMIT))
    mib = 2**20
    print(f"document of {SIZE // mib} MiB declaring 1 KB, limit {DOWNLOAD_LIMIT // mib} MiB")
    print(f"  read whole : served {whole_served / mib:6.1f} MiB, peak memory {whole_peak / mib:6.1f} MiB")
    print(f"  streamed   : served {capped_served / mib:6.1f} MiB, peak memory {capped_peak / mib:6.1f} MiB")
    print(
        f"  ratio streamed/whole: served {capped_served / whole_served:.2f}, "
        f"peak memory {capped_peak / whole_peak:.2f}"
    )


async def _one_turn(tmp: Path, failures: int) -> float:
    """Seconds from the render's end to the result photo in the chat."""
    async with FakeTelegram() as tg:
        section = f'[telegram]\nenabled = true\ntoken_env = "BENCH_TG_TOKEN"\nbase_url = "{tg.base_url}"'
        config = bot_config(tmp, platform=section)
        adapter = TelegramAdapter(TOKEN, base_url=tg.base_url, retry_delay=0.05)
        renderer = FakeRenderer()
        async with App(config, adapters=[adapter], llm=FakeLLM(), renderer=renderer) as app:
            app.runner.delivery_delays_s = (0.5,)
            tg.fail("sendPhoto", "500", times=failures, with_keyboard=True)
            tg.user_message(1001, FIRST)
            await tg.wait_for(lambda: bool(renderer.calls))
            start = time.perf_counter()
            await tg.wait_for(lambda: any(m.kind == "photo" and m.keyboard for m in tg.bot_messages(1001)))
            took = time.perf_counter() - start
            await asyncio.wait_for(app.runner.drain(), 30)
        return took


async def delivery() -> None:
    os.environ["BENCH_TG_TOKEN"] = TOKEN
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        clean = await _one_turn(Path(a), 0)
        refused = await _one_turn(Path(b), 6)
    print("result photo refused six times (500), retried after 0.5 s, adapter retry delay 0.05 s")
    print(f"  no failures : photo {clean * 1000:7.0f} ms after the render")
    print(f"  six 500s    : photo {refused * 1000:7.0f} ms after the render ({refused / clean:.1f}x)")


async def main() -> None:
    await downloads()
    await delivery()


if __name__ == "__main__":
    asyncio.run(main())
