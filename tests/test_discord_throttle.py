"""A Discord channel's writes take turns; an answer's first text goes before further edits of
answers already showing, and a writer cancelled while waiting leaves the line."""

from __future__ import annotations

import asyncio

from adapters.discord.stream import ChannelThrottle


async def test_first_text_goes_before_edits_that_came_earlier():
    throttle = ChannelThrottle(0.0)
    order: list[str] = []
    holding = asyncio.Event()
    release = asyncio.Event()

    async def writer(name: str, first: bool = False, hold: bool = False) -> None:
        async with throttle.turn(first=first):
            order.append(name)
            if hold:
                holding.set()
                await release.wait()

    a = asyncio.create_task(writer("edit A", hold=True))
    await holding.wait()
    waiting = [asyncio.create_task(writer("edit B")), asyncio.create_task(writer("edit C")),
               asyncio.create_task(writer("first text D", first=True))]
    gone = asyncio.create_task(writer("first text E (stopped)", first=True))
    await asyncio.sleep(0)  # let them all join the line
    gone.cancel()
    release.set()
    await asyncio.gather(a, *waiting)
    assert order == ["edit A", "first text D", "edit B", "edit C"]
    assert not throttle._busy  # noqa: SLF001  the turn is free again
