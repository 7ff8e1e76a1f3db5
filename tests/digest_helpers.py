"""Building blocks for the digest tests: a clock the test moves, a recording platform, the
fake Zenn feeds, the real Gemini client against the stub writing summaries."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
from contextlib import asynccontextmanager

import httpx
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage

from agent.zenn_client import ZennHttp, ZennLimits
from agent.zenn_feeds import ZennFollowing
from bot.digest.builder import Digest, DigestBuilder
from bot.digest.commands import FollowCommands, FollowLimits
from bot.digest.feeds import FeedPoller
from bot.digest.runner import DigestRunner, PostedDigest
from bot.runtime import model_from
from bot.store import open_store

JST = dt.timezone(dt.timedelta(hours=9))


def jst(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=JST)


class Clock:
    """Epoch seconds that move only when the test says so."""

    def __init__(self, start: dt.datetime) -> None:
        self.now = start.timestamp()

    def __call__(self) -> float:
        return self.now

    def set(self, when: dt.datetime) -> None:
        assert when.timestamp() >= self.now, "time only moves forward"
        self.now = when.timestamp()

    def advance(self, **delta: float) -> None:
        self.now += dt.timedelta(**delta).total_seconds()


class RecordingPlatform:
    """A chat platform that keeps what is posted; `gate` holds posts until it is set (a post in
    flight when the process dies)."""

    platform = "slack"

    def __init__(self) -> None:
        self.posted: list[Digest] = []
        self.lines: list[str] = []
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()

    async def post(self, digest: Digest, nonce: str, again: bool = False) -> PostedDigest:
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        self.posted.append(digest)
        return PostedDigest(json.dumps({"n": len(self.posted)}), "")

    async def post_line(self, digest: Digest, text: str) -> None:
        self.lines.append(text)


def summary_policy(messages: list[BaseMessage]) -> AIMessage:
    """The model writing a digest summary: two lines naming the article's title."""
    human = next(m for m in reversed(messages) if isinstance(m, HumanMessage))
    title = re.search(r"^# (.+)$", str(human.content), re.M)
    name = title[1] if title else "?"
    return AIMessage(content=f"{name} の要点をまとめた記事。\n読むと {name} の使い方がわかる。")


class DigestParts:
    """A runner, its builder and follow commands over one store connection: one replica."""

    def __init__(self, store, zenn: ZennHttp, model, clock: Clock, platform: RecordingPlatform, **options) -> None:
        following = ZennFollowing(zenn)
        self.store = store
        self.zenn = zenn
        self.platform = platform
        self.builder = DigestBuilder(store, following, model, clock, token_budget=options.get("budget", 0),
                                     max_items=options.get("max_items", 10))
        self.runner = DigestRunner(store, self.builder, FeedPoller(store, following, clock), {"slack": platform},
                                   None, clock, weekly_empty_note=options.get("weekly_note", False))
        self.commands = FollowCommands(store, following, clock, FollowLimits(**options.get("limits", {})))

    async def follow(self, target: str, channel: str = "C1", **schedule) -> str:
        return await self.commands.follow("slack", "T1", channel, "slack:UALICE", target,
                                          schedule.get("every"), schedule.get("at"), schedule.get("tz"))


@asynccontextmanager
async def replica(settings, zenn_url: str, gemini_url: str | None, clock: Clock, platform=None, **options):
    """One replica's digest parts on the settings' store, with its own Zenn client and model."""
    store = await open_store(settings)
    http = httpx.AsyncClient()
    zenn = ZennHttp(zenn_url, http, limits=ZennLimits(rate=200, in_flight=4))
    model = model_from(settings.model_copy(update={"google_gemini_base_url": gemini_url})) if gemini_url else None
    try:
        yield DigestParts(store, zenn, model, clock, platform or RecordingPlatform(), **options)
    finally:
        await http.aclose()
        await store.close()
