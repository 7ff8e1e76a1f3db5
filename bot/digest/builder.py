"""The digest of one channel for one period: the items its follows published in (since,
until], de-duplicated by URL, ranked by likes (exact counts from Zenn's JSON), the top ones
summarised in two lines by the model while the day's token budget lasts."""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from urllib.parse import urlsplit, urlunsplit
from zoneinfo import ZoneInfo

from langchain_core.language_models import BaseChatModel

from agent.summaries import summarize
from agent.zenn_client import ZennRefused
from bot.digest.feeds import ZennFeeds
from bot.digest.targets import Target
from bot.store.base import BudgetClaim, DigestChannel, DigestStore, Follow, StoreUnavailable

log = logging.getLogger(__name__)
NO_SUMMARIES_BUDGET = "budget"  # the day's token budget was used up: the rest goes without summaries
NO_SUMMARIES_ERROR = "error"  # the model failed
SUMMARY_ESTIMATE = 2_000  # tokens a summary sets aside from the daily budget before it is written


@dataclass(frozen=True)
class DigestItem:
    url: str
    title: str
    author: str
    published_at: float
    liked_count: int | None = None  # None: not an article with JSON counts (a book, a scrap)
    bookmarked_count: int | None = None
    comments_count: int | None = None
    summary: str = ""


@dataclass(frozen=True)
class Digest:
    platform: str
    workspace: str
    channel_id: str
    period: str
    since: float
    until: float
    every: str
    items: list[DigestItem] = field(default_factory=list)
    more: int = 0  # new items beyond the ones shown
    follows: list[str] = field(default_factory=list)  # the targets' labels
    no_summaries: str = ""  # "", NO_SUMMARIES_BUDGET or NO_SUMMARIES_ERROR: why some items have none
    tz: str = "UTC"  # the channel's time zone: the heading's date is local

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> Digest:
        data = json.loads(text)
        data["items"] = [DigestItem(**item) for item in data.get("items", [])]
        return cls(**data)

    @property
    def heading(self) -> str:
        day = dt.datetime.fromtimestamp(self.until, ZoneInfo(self.tz)).strftime("%Y-%m-%d")
        kind = "weekly" if self.every == "weekly" else "daily"
        return f"Zenn {kind} digest · {day} · {len(self.items) + self.more} new"

    @property
    def note(self) -> str:
        """The line under the items: why summaries are missing, how many items were left out."""
        notes = []
        if self.no_summaries == NO_SUMMARIES_BUDGET:
            notes.append("Today's token budget is used up, so some items have no summary.")
        elif self.no_summaries == NO_SUMMARIES_ERROR:
            notes.append("The model could not summarise some items right now.")
        if self.more:
            notes.append(f"{self.more} more new item{'s' if self.more > 1 else ''} not shown.")
        notes.append("Ask about any of these in the thread (e.g. 「2つ目の記事をもっと詳しく」).")
        return " ".join(notes)

    def as_text(self) -> str:
        """The digest as Markdown: the thread's first answer, and the dry run's output."""
        lines = [f"**{self.heading}**", f"Following: {', '.join(self.follows)}", ""]
        for number, item in enumerate(self.items, 1):
            lines.append(f"{number}. [{item.title}]({item.url}) — {item.author} · {counts(item)}")
            lines += [f"    {line}" for line in item.summary.splitlines()]
        lines += ["", self.note]
        return "\n".join(lines)


def counts(item: DigestItem) -> str:
    if item.liked_count is None:
        return "no counts"
    parts = [f"♥ {item.liked_count:,}"]
    if item.bookmarked_count is not None:
        parts.append(f"🔖 {item.bookmarked_count:,}")
    if item.comments_count is not None:
        parts.append(f"💬 {item.comments_count:,}")
    return " · ".join(parts)


def canonical(url: str) -> str:
    """One spelling per item: no query, fragment or trailing slash (feeds add `?utm…`)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc.lower(), parts.path.rstrip("/"), "", ""))


class DigestBuilder:
    def __init__(self, store: DigestStore, zenn: ZennFeeds, model: BaseChatModel | None,
                 clock: Callable[[], float], *, token_budget: int = 0, max_items: int = 10) -> None:
        """`model` None: no summaries. `token_budget`: the workspace's tokens a UTC day (0: no limit),
        shared with the answers."""
        self.store = store
        self.zenn = zenn
        self.model = model
        self.clock = clock
        self.token_budget = token_budget
        self.max_items = max_items

    async def build(self, channel: DigestChannel, follows: list[Follow], period: str, since: float,
                    until: float) -> Digest:
        """The digest; its `items` are empty when nothing is new. Raises `StoreUnavailable`."""
        targets = [Target.from_key(f.target) for f in follows]
        entries = await self.store.feed_entries([t.feed_path for t in targets], since, until)
        unique: dict[str, DigestItem] = {}
        for entry in entries:
            unique.setdefault(canonical(entry.url),
                              DigestItem(canonical(entry.url), entry.title, entry.author, entry.published_at))
        texts: dict[str, str] = {}  # article bodies, to summarise; never kept in the digest
        items = [await self._with_counts(item, texts) for item in unique.values()]
        items.sort(key=lambda i: (-(i.liked_count or 0), -i.published_at, i.url))
        shown, more = items[:self.max_items], max(len(items) - self.max_items, 0)
        digest = Digest(channel.platform, channel.workspace, channel.channel_id, period, since, until, channel.every,
                        shown, more, [Target.from_key(f.target).label(f.display) for f in follows], tz=channel.tz)
        if shown and self.model is not None:
            digest = await self._summarised(digest, texts)
        return digest

    async def _with_counts(self, item: DigestItem, texts: dict[str, str]) -> DigestItem:
        try:
            facts = await self.zenn.article_facts(item.url)
        except ZennRefused as exc:
            log.warning("no counts for %s: %s", item.url, exc.reason)
            return item
        if facts is None:
            return item
        texts[item.url] = facts.text
        return DigestItem(item.url, facts.title or item.title, facts.author or item.author, item.published_at,
                          facts.liked_count, facts.bookmarked_count, facts.comments_count)

    async def _summarised(self, digest: Digest, texts: dict[str, str]) -> Digest:
        """Each shown item with two lines from the model, in rank order, while the budget lasts."""
        done: list[DigestItem] = []
        stop = ""
        for number, item in enumerate(digest.items):
            text = texts.get(item.url, "")
            run_id = f"digest:{digest.platform}:{digest.channel_id}:{digest.period}:{number}"
            if not stop and text and self.token_budget and not await self._reserve(digest, run_id):
                stop = NO_SUMMARIES_BUDGET
            if not stop and text:
                try:
                    summary, usage = await summarize(self.model, item.title, text)
                except Exception as exc:  # the digest goes out all the same, and says so
                    log.warning("could not summarise %s: %s", item.url, exc)
                    stop = NO_SUMMARIES_ERROR
                    usage = []
                else:
                    item = _replace(item, summary=summary)
                await self._spent(digest, run_id, usage)
            done.append(item)
        return Digest(**(asdict(digest) | {"items": done, "no_summaries": stop}))


    async def _reserve(self, digest: Digest, run_id: str) -> bool:
        """Set a summary's tokens aside from the workspace's daily budget, shared with the answers
        (the same buckets as `ConversationService`); False when the budget is used up."""
        claim = BudgetClaim(run_id, digest.platform, digest.workspace or f"channel:{digest.channel_id}", "digest",
                            SUMMARY_ESTIMATE)
        try:
            return await self.store.reserve_tokens(claim, self.token_budget) is None
        except StoreUnavailable as exc:
            log.warning("could not check the token budget: %s", exc)
            return False  # cannot tell: stay within it

    async def _spent(self, digest: Digest, run_id: str, usage: list) -> None:
        try:
            if usage:
                await self.store.record_usage(run_id, digest.platform, digest.workspace,
                                              f"digest:{digest.channel_id}", usage)
            if self.token_budget:
                await self.store.settle_tokens(run_id, sum(u.input_tokens + u.output_tokens for u in usage))
        except StoreUnavailable as exc:
            log.warning("could not record a digest summary's tokens: %s", exc)


def _replace(item: DigestItem, **changes: object) -> DigestItem:
    return DigestItem(**(asdict(item) | changes))
