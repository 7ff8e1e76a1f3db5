"""Digests go out exactly once, across restarts and replicas.

Each due digest is claimed in the store (one row per channel and period) before it is built:
whoever claims it builds and posts it, everyone else skips it. The claim is a lease, renewed
while the holder works; a holder that dies (or a replica that stops) leaves a row that another
process, or the restarted one, takes over once the lease lapses. The built digest is kept in the
row before it is posted, so a digest taken over is posted as it was built (no second round of
summaries); Discord's `nonce` makes a repeated post of the same digest return the first message.
Only the latest due period of a channel is ever claimed, and it covers everything since the last
digest: a bot that was down for three periods posts one catch-up digest, not three.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import os
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from bot.digest.builder import Digest, DigestBuilder
from bot.digest.feeds import FeedPoller
from bot.digest.schedule import Schedule
from bot.digest.targets import Target
from bot.store.base import DIGEST_DONE, DigestChannel, DigestRecord, DigestStore, Follow, StoreUnavailable

log = logging.getLogger(__name__)
DIGEST_LEASE = 120.0  # s a claim lasts without renewal; a dead holder's digest is taken over after it
RETRY_AFTER = 15 * 60.0  # s before a digest that could not be posted is tried again
TICK = 60.0  # s between looks at the schedule
OPENING = "Post this channel's Zenn digest."


@dataclass(frozen=True)
class PostedDigest:
    message_ref: str  # where the digest is (the adapter's JSON)
    thread_id: str  # the conversation under it (the service's thread id), "" when none


class DigestPoster(Protocol):
    """How one platform shows a digest (adapters/discord/digest.py, adapters/slack/digest.py)."""

    platform: str

    async def post(self, digest: Digest, nonce: str, again: bool = False) -> PostedDigest:
        """One message in the channel with the thread under it. `again`: an earlier attempt (of a
        process that died, or that failed) may have posted it; a message carrying the same `nonce`
        is then returned instead of a second one. Raises on failure."""

    async def post_line(self, digest: Digest, text: str) -> None:
        """One plain line in the channel (a weekly digest with nothing new)."""


class ThreadSeeder(Protocol):
    async def seed_thread(self, thread_id: str, opening: str, text: str) -> None: ...


class DigestRunner:
    def __init__(self, store: DigestStore, builder: DigestBuilder, poller: FeedPoller,
                 posters: dict[str, DigestPoster], seeder: ThreadSeeder | None, clock: Callable[[], float], *,
                 lease: float = DIGEST_LEASE, weekly_empty_note: bool = False) -> None:
        self.store = store
        self.builder = builder
        self.poller = poller
        self.posters = posters
        self.seeder = seeder
        self.clock = clock
        self.lease = lease
        self.weekly_empty_note = weekly_empty_note
        self.holder = f"{HOST}|{os.getpid()}|{uuid.uuid4().hex}"  # this runner, in the claims it holds

    async def run_forever(self, interval: float = TICK) -> None:
        """Tick until cancelled; the first tick at once (a digest missed while down goes out now)."""
        while True:
            try:
                await self.tick()
            except StoreUnavailable as exc:
                log.warning("digests: %s", exc)
            except Exception:
                log.exception("digests: a tick failed")
            await asyncio.sleep(interval)

    async def tick(self) -> dict[str, str]:
        """Poll the feeds that are due, then post every due digest of the platforms served here.
        Returns each channel's outcome ("posted", "empty", "done", "held", "not due", "failed")."""
        channels = [c for c in await self.store.digest_channels() if c.platform in self.posters]
        follows = await self.store.list_follows()
        await self.poller.poll([Target.from_key(f.target).feed_path for f in follows if f.platform in self.posters])
        outcomes = {}
        for channel in channels:
            mine = [f for f in follows if (f.platform, f.channel_id) == (channel.platform, channel.channel_id)]
            outcomes[f"{channel.platform}:{channel.channel_id}"] = await self.run_due(channel, mine)
        return outcomes

    async def run_due(self, channel: DigestChannel, follows: list[Follow]) -> str:
        """The channel's digest of its latest due period, if it is not done yet."""
        now = self.clock()
        schedule = Schedule(channel.every, channel.at, channel.tz)
        slot = schedule.due_slot(dt.datetime.fromtimestamp(now, dt.UTC)).timestamp()
        last = await self.store.last_digest(channel.platform, channel.channel_id)
        if last is None and slot <= channel.created_at:
            return "not due"  # the first digest is at the first slot after the first follow
        if last is not None and last.until >= slot:
            return "done"
        since = last.until if last else min(channel.created_at, slot - schedule.length.total_seconds())
        return await self._run(channel, follows, schedule.period(dt.datetime.fromtimestamp(slot, dt.UTC)),
                               since, slot)

    async def run_now(self, channel: DigestChannel, follows: list[Follow]) -> str:
        """A digest on demand (`zennbot digest --now`): everything since the last digest, now."""
        now = self.clock()
        last = await self.store.last_digest(channel.platform, channel.channel_id)
        since = last.until if last else now - Schedule(channel.every, channel.at, channel.tz).length.total_seconds()
        period = "now@" + dt.datetime.fromtimestamp(now, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return await self._run(channel, follows, period, since, now)

    async def _run(self, channel: DigestChannel, follows: list[Follow], period: str, since: float,
                   until: float) -> str:
        record = await self.store.claim_digest(channel.platform, channel.channel_id, period, self.holder,
                                               self.clock(), self.lease, since, until)
        if record is None:  # held: taken over at once when its holder was a process here that died
            held = await self.store.digest_record(channel.platform, channel.channel_id, period)
            if held is None or held.state in DIGEST_DONE or not holder_died(held.holder):
                return "held"
            record = await self.store.claim_digest(channel.platform, channel.channel_id, period, self.holder,
                                                   self.clock(), self.lease, since, until, take_from=held.holder)
            if record is None:
                return "held"
            log.info("digest %s of %s:%s taken over from a process that died", period, channel.platform,
                     channel.channel_id)
        state = [record.state]
        renewer = asyncio.create_task(self._renew(record, state))
        try:
            return await self._complete(channel, follows, record, state)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error("digest %s of %s:%s failed: %s", period, channel.platform, channel.channel_id, exc,
                      exc_info=not isinstance(exc, StoreUnavailable))
            renewer.cancel()
            try:
                await self.store.update_digest(record, state=state[0], lease_until=self.clock() + RETRY_AFTER)
            except StoreUnavailable:
                pass  # the lease lapses by itself
            return "failed"
        finally:
            renewer.cancel()
            await asyncio.gather(renewer, return_exceptions=True)

    async def _complete(self, channel: DigestChannel, follows: list[Follow], record: DigestRecord,
                        state: list[str]) -> str:
        poster = self.posters[channel.platform]
        if record.content:  # taken over after its holder built it: post it as built
            digest = Digest.from_json(record.content)
        else:
            digest = await self.builder.build(channel, follows, record.period, record.since, record.until)
            if not digest.items:
                if self.weekly_empty_note and channel.every == "weekly":
                    await poster.post_line(digest, f"Nothing new this week from {', '.join(digest.follows)}.")
                await self._move(record, state, "empty")
                return "empty"
            await self._move(record, state, "posting", content=digest.to_json())
        posted = await poster.post(digest, nonce(record), again=bool(record.content))
        await self._move(record, state, "posted", message_ref=posted.message_ref)
        log.info("digest %s posted in %s:%s (%d items)", record.period, channel.platform, channel.channel_id,
                 len(digest.items))
        if posted.thread_id and self.seeder is not None:
            try:  # the thread answers questions about the digest with its items in view
                await self.seeder.seed_thread(posted.thread_id, OPENING, digest.as_text())
            except Exception as exc:
                log.warning("could not open the digest's thread %s: %s", posted.thread_id, exc)
        return "posted"

    async def _move(self, record: DigestRecord, state: list[str], to: str, **changes: str) -> None:
        if not await self.store.update_digest(record, state=to, lease_until=self.clock() + self.lease, **changes):
            raise RuntimeError(f"the claim on digest {record.period} was lost")
        state[0] = to

    async def _renew(self, record: DigestRecord, state: list[str]) -> None:
        while True:
            await asyncio.sleep(self.lease / 3)
            try:
                await self.store.update_digest(record, state=state[0], lease_until=self.clock() + self.lease)
            except StoreUnavailable as exc:
                log.warning("could not renew the claim on digest %s: %s", record.period, exc)


def holder_died(holder: str) -> bool:
    """Whether the process that holds a claim is known to be gone: it ran on this host (and pid
    namespace) and its pid is not alive. A holder elsewhere is only ever known by its lease."""
    host, _, rest = holder.partition("|")
    pid = rest.partition("|")[0]
    if host != HOST or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _host() -> str:
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = ""
    return f"{socket.gethostname()}/{namespace}"


HOST = _host()


def nonce(record: DigestRecord) -> str:
    """The same short token for every attempt at posting one digest (Discord allows 25 characters)."""
    key = f"{record.platform}:{record.channel_id}:{record.period}"
    return hashlib.sha256(key.encode()).hexdigest()[:25]


def next_run(channel: DigestChannel, now: float) -> dt.datetime:
    """When the channel's next digest goes out (UTC)."""
    schedule = Schedule(channel.every, channel.at, channel.tz)
    return schedule.next_slot(dt.datetime.fromtimestamp(now, dt.UTC))
