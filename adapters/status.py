"""A "working on it" message, posted on the first progress event and then edited, at most once
a second (chat platforms rate-limit edits). Its handle lets the answer replace it."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

Handle = TypeVar("Handle")


class StatusMessage(Generic[Handle]):
    def __init__(self, post: Callable[[str], Awaitable[Handle]], edit: Callable[[Handle, str], Awaitable[object]],
                 prefix: str, interval: float = 1.0) -> None:
        self._post = post
        self._edit = edit
        self._prefix = prefix
        self._interval = interval
        self._last = 0.0
        self.handle: Handle | None = None  # the posted message, once there is one

    async def show(self, text: str) -> None:
        now = time.monotonic()
        line = f"{self._prefix} {text} …"
        if self.handle is None:
            self.handle = await self._post(line)
        elif now - self._last >= self._interval:
            await self._edit(self.handle, line)
        else:
            return
        self._last = now
