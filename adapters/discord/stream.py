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
import heapq
import itertools
import logging
import math
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import discord

from adapters.discord import rules
from adapters.sink import deliver
from bot.messages import Event, Reply

log = logging.getLogger(__name__)

EDIT_WINDOW_PASSED = 30046  # Discord: "maximum number of edits to messages older than 1 hour reached"
MOVE_ON_AFTER = 50 * 60.0  # s after which a message is left for a new one, before Discord's hour is up
EDIT_INTERVAL = 1.0  # seconds between two writes in one channel (Discord publishes no number)
FIRST_PROGRESS = "working on it"


class ChannelThrottle:
    """Spaces the message writes of one channel `interval` seconds apart, from the end of one
    write to the start of the next. Writers take turns in arrival order, except that an
    answer's first text (`turn(first=True)`) goes before further edits of answers already
    showing."""

    def __init__(self, interval: float = EDIT_INTERVAL) -> None:
        self.interval = interval
        self._busy = False  # a writer has the turn
        self._line: list[tuple[int, int, asyncio.Future]] = []  # (0 first text / 1 other, arrival, waiter)
        self._arrivals = itertools.count()
        self._last = -math.inf  # time.monotonic() at the end of the last write

    @asynccontextmanager
    async def turn(self, first: bool = False):
        if self._busy:
            waiter = asyncio.get_running_loop().create_future()
            heapq.heappush(self._line, (0 if first else 1, next(self._arrivals), waiter))
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._hand_on()  # the turn came as we were cancelled: pass it on
                raise
        self._busy = True
        try:
            wait = self._last + self.interval - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)  # the rate limit itself, not a wait for something to happen
            yield
        finally:
            self._last = time.monotonic()
            self._hand_on()

    def _hand_on(self) -> None:
        """Give the turn to the next writer in line (first texts first), or free it."""
        while self._line:
            _, _, waiter = heapq.heappop(self._line)
            if not waiter.done():  # a cancelled waiter is skipped
                waiter.set_result(None)
                return
        self._busy = False

    def idle(self) -> bool:
        return not self._busy and time.monotonic() - self._last > self.interval


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
    posted_at: float  # the answer's clock


class LiveAnswer:
    """The messages of one run in one channel: an `AnswerSink` (`adapters.sink`);
    `await live.show(events)` returns the `Reply`.

    Raises nothing for a Discord error while the answer is written (it is logged, live updates
    pause and the final state is tried once more); raises `discord.HTTPException` when even the
    final messages cannot be written. A message about to leave Discord's edit window (an hour:
    `MOVE_ON_AFTER`), one Discord no longer lets us edit (error 30046) or whose final edit fails
    twice is deleted if it can be and the answer goes on in a new message."""

    def __init__(self, send: Send, throttle: ChannelThrottle, render: Render,
                 on_first_message: Callable[[str, Editable], Awaitable[None]] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._send = send
        self._clock = clock
        self._on_first_message = on_first_message  # (run id, message): where a lost run is told
        self._throttle = throttle
        self._render = render
        self._posted: list[_Posted] = []
        self._make: Callable[[], list[rules.Part]] = list
        self._made: list[rules.Part] | None = None
        self._final = False
        self._paused = False  # a live write failed: wait for the final state
        self._has_text = False  # the wanted messages hold answer text (or the final answer)
        self._text_shown = False  # a write with answer text was made
        self._changed = asyncio.Event()
        self._writer: asyncio.Task | None = None
        self._progress, self._answer = FIRST_PROGRESS, ""
        self.run_id = ""

    async def show(self, events: AsyncGenerator[Event, None]) -> Reply:
        """Show the run whose `events` these are (`ConversationService.stream`); closes `events`
        when done or cancelled, which stops the run if it still works."""
        return await deliver(events, self)

    # AnswerSink

    async def started(self, run_id: str) -> None:
        self.run_id = run_id
        self._live()

    async def progress(self, text: str) -> None:
        self._progress = text
        self._live()

    async def delta(self, text: str) -> None:
        self._answer += text
        self._live()

    async def reset(self) -> None:
        self._answer = ""
        self._live()

    async def done(self, reply: Reply) -> None:
        self._want(lambda: rules.final_parts(reply.text, reply.sources, reply.ok, reply.stopped), final=True)
        await self._writing()

    async def finish(self) -> None:
        if self._writer is not None and not self._writer.done():
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)

    def _live(self) -> None:
        self._has_text = bool(self._answer)
        self._want(lambda p=self._progress, a=self._answer: rules.live_parts(p, a))
        self._writing()

    def _writing(self) -> asyncio.Task:
        if self._writer is None:
            self._writer = asyncio.create_task(self._write())
        return self._writer

    def _want(self, make: Callable[[], list[rules.Part]], final: bool = False) -> None:
        """`make` gives the wanted messages; it runs only when the writer looks (splitting a long
        answer at every delta would be wasted work)."""
        self._make, self._made, self._final = make, None, final
        self._has_text = self._has_text or final
        self._changed.set()

    @property
    def _wanted(self) -> list[rules.Part]:
        if self._made is None:
            self._made = self._make()
        return self._made

    async def _write(self) -> None:
        failed: set[int] = set()  # final writes that failed once (retried, then done another way)
        while True:
            await self._changed.wait()
            self._changed.clear()
            if self._paused and not self._final:
                continue
            final = self._final
            while self._next_step() is not None:
                async with self._throttle.turn(first=self._has_text and not self._text_shown):
                    step = self._next_step()  # the text grew while we waited our turn
                    if step is None:
                        break
                    try:
                        shows_text = self._has_text
                        await self._apply(step)
                        self._text_shown = self._text_shown or shows_text
                    except discord.NotFound:
                        if step >= len(self._posted):
                            raise  # the channel is gone
                        del self._posted[step]  # someone deleted the message: post it again
                    except discord.HTTPException as exc:
                        editing = step < len(self._posted) and step < len(self._wanted)
                        if editing and (exc.code == EDIT_WINDOW_PASSED or (self._final and step in failed)):
                            log.info("Discord: cannot edit a message of the answer (%s); going on in a new one", exc)
                            await self._abandon(step)
                            continue
                        if self._final and step not in failed:
                            log.warning("Discord: could not write the answer (%s); trying again", exc)
                            failed.add(step)
                            continue
                        if self._final:
                            raise
                        log.warning("Discord: could not update a streamed answer: %s", exc)
                        self._paused = True
                        break
            if final:
                return

    async def _abandon(self, index: int) -> None:
        """Leave the message at `index` behind (deleted if Discord lets us): what it should show
        is posted again as a new message."""
        posted = self._posted.pop(index)
        try:
            await posted.message.delete()
        except discord.HTTPException as exc:
            log.info("Discord: could not delete a message left behind: %s", exc)

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
        if index < len(self._posted) and self._clock() - self._posted[index].posted_at > MOVE_ON_AFTER:
            log.info("Discord: a message of the answer is about to pass the edit window; going on in a new one")
            await self._abandon(index)
            return
        if index < len(self._posted):
            await self._posted[index].message.edit(**fields)
            self._posted[index].part = part
        else:
            fields = {k: v for k, v in fields.items() if v is not None}  # a new message has no view to remove
            self._posted.append(_Posted(await self._send(**fields), part, self._clock()))
            if len(self._posted) == 1 and self._on_first_message is not None and self.run_id:
                first, self._on_first_message = self._on_first_message, None
                await first(self.run_id, self._posted[0].message)
