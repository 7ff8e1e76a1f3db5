"""One deadline per page read. Every step of the read (name resolution, Zenn's JSON, the
server's HTML, the browser, list loading, next pages) takes its time from it, so that together
they end by the page timeout whatever the server does; reading the browser's DOM and extracting
the text get `GRACE` more each, and backstops at `GRACE` past the deadline cut what did not end
by itself. Starting the bot's own browser is not the page's time: it moves the deadline on.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

GRACE = 2.0  # seconds past the deadline for reading the DOM, extracting and closing


@dataclass(frozen=True)
class Deadline:
    at: float  # time.monotonic() at which loading stops
    seconds: float  # the timeout it was made with, for messages

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        return cls(time.monotonic() + seconds, seconds)

    def later(self, seconds: float) -> Deadline:
        """The same deadline, `seconds` later (for time the page did not cause)."""
        return Deadline(self.at + seconds, self.seconds)

    def left(self) -> float:
        """Seconds left, never below 0."""
        return max(0.0, self.at - time.monotonic())

    @property
    def expired(self) -> bool:
        return time.monotonic() >= self.at

    def timeout(self, grace: float = 0.0) -> asyncio.Timeout:
        """`asyncio.timeout` at the deadline plus `grace`."""
        return asyncio.timeout_at(asyncio.get_running_loop().time() + self.at + grace - time.monotonic())

    @property
    def missed(self) -> str:
        """What the user is told when nothing useful arrived in time."""
        return f"the page did not load within {self.seconds:g} s"
