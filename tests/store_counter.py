"""Counting the bot's store round trips: every awaited call of a Store method is one.

`count_store_calls(store)` wraps the instance's coroutine methods (not the class: other stores in
the same test are untouched) and returns the list the calls are appended to, by method name.
Private helpers called by a public method are not counted twice: only the outermost call counts.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
from typing import Any

from bot.store import Store


def count_store_calls(store: Store) -> list[str]:
    calls: list[str] = []
    inside = contextvars.ContextVar("inside_a_store_call", default=False)  # per task

    def wrap(name: str, method: Any) -> Any:
        @functools.wraps(method)
        async def counted(*args: Any, **kwargs: Any) -> Any:
            if inside.get():
                return await method(*args, **kwargs)
            calls.append(name)
            token = inside.set(True)
            try:
                return await method(*args, **kwargs)
            finally:
                inside.reset(token)

        return counted

    for name, method in inspect.getmembers(store, inspect.iscoroutinefunction):
        if not name.startswith("__"):
            setattr(store, name, wrap(name, method))
    return calls
