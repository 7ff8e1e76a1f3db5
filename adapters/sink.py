"""The one way an adapter consumes the service's events: it implements `AnswerSink` for its
platform, and `deliver` drives it.

`deliver` calls `started` (the run's id, for a Stop button), then `progress`, `delta` and `reset`
as the run reports them, then `done` with the `Reply` exactly once, and `finish` always, last,
even when the sink or the run failed or the caller was cancelled (the place to take a typing
indicator, a loading status or a Stop button away). The events are closed after `done` returns
(the service then forgets the run: a crash before that, and the asker is told at the restart);
closing them when `deliver` ends early stops the run.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Protocol

from bot.messages import AnswerDelta, AnswerReset, Done, Event, Progress, Reply, Started


class AnswerSink(Protocol):
    """A platform's view of one answer being written."""

    async def started(self, run_id: str) -> None: ...

    async def progress(self, text: str) -> None: ...

    async def delta(self, text: str) -> None: ...

    async def reset(self) -> None:
        """The text so far was not the answer (the model went on to call a tool): take it back."""

    async def done(self, reply: Reply) -> None:
        """Show the end: the answer, or its one sentence. Called once, after every other event."""

    async def finish(self) -> None:
        """Always called, last (after `done`, or instead of it when something failed)."""


async def deliver(events: AsyncGenerator[Event, None], sink: AnswerSink) -> Reply:
    """Show the run whose `events` these are (`ConversationService.stream`) through `sink`;
    returns its `Reply`. Raises what the sink raised."""
    reply: Reply | None = None
    try:
        async with aclosing(events):
            async for event in events:
                if isinstance(event, Started):
                    await sink.started(event.run_id)
                elif isinstance(event, Progress):
                    await sink.progress(event.text)
                elif isinstance(event, AnswerDelta):
                    await sink.delta(event.text)
                elif isinstance(event, AnswerReset):
                    await sink.reset()
                elif isinstance(event, Done):
                    reply = event.reply
                    await sink.done(reply)  # before the events close: the run is finished once it is shown
                    break
        if reply is None:  # the service always ends with Done; this is a bug of ours
            raise RuntimeError("the answer's events ended without Done")
        return reply
    finally:
        await sink.finish()
