"""An answer streamed into Discord by editing messages.

`LiveAnswer` keeps the messages a run should show (`discord_rules.live_parts` while it works,
`final_parts` when it is done) and brings the posted messages to that state one write at a time
(edit, post or delete the first message that differs), each write waiting for the channel's
`ChannelThrottle`, so every run in a channel together writes at most about once a second. The
events are read in their own loop: a slow write never holds the run, and the text shown simply
jumps to whatever has been written by then. 429s are discord.py's to honour (it waits for the
`retry_after` and retries); the throttle only keeps us from asking for them.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import discord

from adapters.discord import rules
from bot.messages import AnswerDelta, AnswerReset, Done, Event, Progress, Reply, Started

log = logging.getLogger(__name__)

EDIT_INTERVAL = 1.0  # seconds between two writes in one channel (Discord publishes no number)
FIRST_PROGRESS = "working on it"


class ChannelThrottle:
    """Spaces the message writes of one channel `interval` seconds apart, from the end of one
    write to the start of the next; writers take turns in arrival order."""

    def __init__(self, interval: float = EDIT_INTERVAL) -> None:
        self.interval = interval
        self._lock = asyncio.Lock()
        self._last = -math.inf  # time.monotonic() at the end of the last write

    @asynccontextmanager
    async def turn(self):
        async with self._lock:
            wait = self._last + self.interval - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)  # the rate limit itself, not a wait for something to happen
            try:
                yield
            finally:
                self._last = time.monotonic()

    def idle(self) -> bool:
        return not self._lock.locked() and time.monotonic() - self._last > self.interval


class Throttles:
    """One `ChannelThrottle` per channel, shared by every run writing there."""

    def __init__(self, interval: float = EDIT_INTERVAL) -> None:
        self.interval = interval
        self._by_channel: dict[int, ChannelThrottle] = {}

    def for_channel(self, channel_id: int) -> ChannelThrottle:
        if len(self._by_channel) > 512:  # forget channels with nothing to space any more
            self._by_channel = {k: t for k, t in self._by_channel.items() if not t.idle()}
        return self._by_channel.setdefault(channel_id, ChannelThrottle(self.interval))


class Editable(Protocol):
    async def edit(self, **fields: Any) -> Any: ...

    async def delete(self) -> None: ...


Send = Callable[..., Awaitable[Editable]]  # a channel's `send` or an interaction's `followup.send`
Render = Callable[[rules.Part, str], dict]  # a part and the run id -> send/edit keyword arguments


@dataclass
class _Posted:
    message: Editable
    part: rules.Part


class LiveAnswer:
    """The messages of one run in one channel. `await live.show(events)` returns the `Reply`.

    Raises nothing for a Discord error while the answer is written (it is logged, live updates
    pause and the final state is tried once more); raises `discord.HTTPException` when even the
    final messages cannot be written."""

    def __init__(self, send: Send, throttle: ChannelThrottle, render: Render,
                 on_first_message: Callable[[str, Editable], Awaitable[None]] | None = None) -> None:
        self._send = send
        self._on_first_message = on_first_message  # (run id, message): where a lost run is told
        self._throttle = throttle
        self._render = render
        self._posted: list[_Posted] = []
        self._make: Callable[[], list[rules.Part]] = list
        self._made: list[rules.Part] | None = None
        self._final = False
        self._paused = False  # a live write failed: wait for the final state
        self._changed = asyncio.Event()
        self.run_id = ""

    async def show(self, events: AsyncGenerator[Event, None]) -> Reply:
        """Show the run whose `events` these are (`ConversationService.stream`); closes `events`
        when done or cancelled, which stops the run if it still works."""
        progress, answer = FIRST_PROGRESS, ""
        reply: Reply | None = None
        writer = asyncio.create_task(self._write())
        try:
            async with aclosing(events):
                async for event in events:
                    if isinstance(event, Started):
                        self.run_id = event.run_id
                    elif isinstance(event, Progress):
                        progress = event.text
                    elif isinstance(event, AnswerDelta):
                        answer += event.text
                    elif isinstance(event, AnswerReset):
                        answer = ""
                    elif isinstance(event, Done):
                        reply = r = event.reply
                        self._want(lambda: rules.final_parts(r.text, r.sources, r.ok, r.stopped), final=True)
                        break
                    self._want(lambda p=progress, a=answer: rules.live_parts(p, a))
            if reply is None:  # the service always ends with Done; this is a bug of ours
                raise RuntimeError("the answer's events ended without Done")
            await writer
            return reply
        finally:
            if not writer.done():
                writer.cancel()
                await asyncio.gather(writer, return_exceptions=True)

    def _want(self, make: Callable[[], list[rules.Part]], final: bool = False) -> None:
        """`make` gives the wanted messages; it runs only when the writer looks (splitting a long
        answer at every delta would be wasted work)."""
        self._make, self._made, self._final = make, None, final
        self._changed.set()

    @property
    def _wanted(self) -> list[rules.Part]:
        if self._made is None:
            self._made = self._make()
        return self._made

    async def _write(self) -> None:
        while True:
            await self._changed.wait()
            self._changed.clear()
            if self._paused and not self._final:
                continue
            final = self._final
            while self._next_step() is not None:
                async with self._throttle.turn():
                    step = self._next_step()  # the text grew while we waited our turn
                    if step is None:
                        break
                    try:
                        await self._apply(step)
                    except discord.NotFound:
                        if step >= len(self._posted):
                            raise  # the channel is gone
                        del self._posted[step]  # someone deleted the message: post it again
                    except discord.HTTPException as exc:
                        if self._final:
                            raise
                        log.warning("Discord: could not update a streamed answer: %s", exc)
                        self._paused = True
                        break
            if final:
                return

    def _next_step(self) -> int | None:
        """The index of the first message that differs from what is wanted, if any."""
        for index in range(max(len(self._wanted), len(self._posted))):
            if (index >= len(self._posted) or index >= len(self._wanted)
                    or self._posted[index].part != self._wanted[index]):
                return index
        return None

    async def _apply(self, index: int) -> None:
        if index >= len(self._wanted):
            await self._posted[index].message.delete()
            del self._posted[index]
            return
        part = self._wanted[index]
        fields = self._render(part, self.run_id)
        if index < len(self._posted):
            await self._posted[index].message.edit(**fields)
            self._posted[index].part = part
        else:
            fields = {k: v for k, v in fields.items() if v is not None}  # a new message has no view to remove
            self._posted.append(_Posted(await self._send(**fields), part))
            if len(self._posted) == 1 and self._on_first_message is not None and self.run_id:
                first, self._on_first_message = self._on_first_message, None
                await first(self.run_id, self._posted[0].message)
