"""The followed feeds, polled politely: each feed at most once every `min_interval` (15 min)
across every process on the database, however many channels follow it, with the validators
of the last poll (ETag / Last-Modified), so an unchanged feed costs a 304."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

from agent.zenn_client import ZennRefused, ZennUnavailable
from agent.zenn_feeds import ArticleFacts, FeedFetch
from bot.store.base import DigestStore, FeedEntry, StoreUnavailable

log = logging.getLogger(__name__)
MIN_POLL_INTERVAL = 15 * 60.0
POLL_BUSY_FOR = 60.0  # a poll's longest time: the Zenn client's wait for its turn (30 s) + its request (15 s)
POLL_CHECK_EVERY = 0.2


class ZennFeeds(Protocol):
    """Zenn as follows and digests see it (`agent.zenn_feeds.ZennFollowing`)."""

    base_url: str

    async def fetch_feed(self, path: str, etag: str = "", last_modified: str = "") -> FeedFetch: ...

    async def article_facts(self, url: str) -> ArticleFacts | None: ...

    async def target_exists(self, kind: str, name: str) -> str | None: ...


class FeedPoller:
    def __init__(self, store: DigestStore, zenn: ZennFeeds, clock: Callable[[], float],
                 min_interval: float = MIN_POLL_INTERVAL) -> None:
        self.store = store
        self.zenn = zenn
        self.clock = clock
        self.min_interval = min_interval

    async def poll(self, feeds: list[str]) -> int:
        """Poll each feed that is due; returns how many were fetched. A refusal from Zenn ends
        the round (nothing more is sent until it has passed); other failures skip that feed
        until its next turn. Returns once the polls of those feeds that other processes have
        under way are over too: a digest built meanwhile would miss what they bring."""
        fetched, elsewhere = 0, []
        for feed in dict.fromkeys(feeds):
            validators = await self.store.claim_feed_poll(feed, self.clock(), self.min_interval, POLL_BUSY_FOR)
            if validators is None:
                elsewhere.append(feed)  # polled within the interval, here or by another process
                continue
            etag, last_modified, entries = *validators, []
            try:
                result = await self.zenn.fetch_feed(feed, *validators)
            except ZennRefused as exc:
                log.warning("Zenn refused the feed %s; polling paused: %s", feed, exc.reason)
                await self._end(feed, etag, last_modified, entries)
                break
            except ZennUnavailable as exc:
                log.warning("could not poll %s: %s", feed, exc)
            else:
                fetched += 1
                if result.changed:
                    etag, last_modified = result.etag, result.last_modified
                    entries = [FeedEntry(feed, i.url, i.title, i.author, i.published_at) for i in result.items]
            await self._end(feed, etag, last_modified, entries)
        await self._wait_for(elsewhere)
        return fetched

    async def _end(self, feed: str, etag: str, last_modified: str, entries: list[FeedEntry]) -> None:
        try:
            await self.store.record_feed_poll(feed, etag, last_modified, entries)
        except StoreUnavailable as exc:  # the poll stays under way until POLL_BUSY_FOR is over
            log.warning("could not keep the poll of %s: %s", feed, exc)

    async def _wait_for(self, feeds: list[str]) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + POLL_BUSY_FOR
        while feeds and (feeds := await self.store.polls_under_way(feeds, self.clock())):
            if loop.time() >= deadline:
                log.warning("polls of %s still under way elsewhere; going on without them", ", ".join(feeds))
                return
            await asyncio.sleep(POLL_CHECK_EVERY)
