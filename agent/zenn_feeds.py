"""Zenn's RSS feeds and article counts for follows, through the shared client (`ZennHttp`).

Feeds say what is new; they carry no counts, so the likes that rank a digest come from the
article's JSON. A feed is fetched with a conditional request (If-None-Match / If-Modified-Since):
an unchanged feed costs Zenn a 304 and no body.
"""

from __future__ import annotations

import email.utils
import logging
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from urllib.parse import urlsplit

from agent.extract import html_fragment_to_markdown
from agent.zenn_client import ZennHttp, ZennNotFound, ZennUnavailable

log = logging.getLogger(__name__)
DC_CREATOR = "{http://purl.org/dc/elements/1.1/}creator"
_ARTICLE_PATH = re.compile(r"^/(?P<user>[A-Za-z0-9_-]+)/articles/(?P<slug>[A-Za-z0-9_-]+)/?$")


@dataclass(frozen=True)
class FeedItem:
    url: str
    title: str
    author: str
    published_at: float  # epoch seconds


@dataclass(frozen=True)
class FeedFetch:
    """A feed fetched conditionally: `changed` False means 304 (nothing new, no items)."""

    changed: bool
    items: list[FeedItem]
    etag: str
    last_modified: str


@dataclass(frozen=True)
class ArticleFacts:
    """What a digest shows of an article, from its JSON: exact counts and a short text to summarise."""

    url: str
    title: str
    author: str
    liked_count: int
    bookmarked_count: int | None
    comments_count: int | None
    text: str  # the body as Markdown, cut to a few thousand characters


async def fetch_feed(zenn: ZennHttp, path: str, etag: str = "", last_modified: str = "") -> FeedFetch:
    """GET a feed with the validators of the last poll. Raises as `ZennHttp.request`
    (`ZennRefused`, `ZennNotFound`, `ZennUnavailable`), and `ZennUnavailable` for a body that is
    not RSS."""
    response = await zenn.get_if_changed(path, etag, last_modified)
    if response.status_code == 304:
        return FeedFetch(False, [], etag, last_modified)
    try:
        items = parse_rss(response.text)
    except ET.ParseError as exc:
        zenn.note_mismatch(path, "the feed is not RSS")
        raise ZennUnavailable(f"{path}: not RSS") from exc
    return FeedFetch(True, items, response.headers.get("ETag", ""), response.headers.get("Last-Modified", ""))


def parse_rss(xml: str) -> list[FeedItem]:
    """The items of an RSS 2.0 feed; items without a link or a readable date are skipped."""
    root = ET.fromstring(xml)
    items = []
    for item in root.iter("item"):
        link = (item.findtext("link") or "").strip()
        when = _date(item.findtext("pubDate"))
        if not link or when is None:
            continue
        items.append(FeedItem(link, (item.findtext("title") or "").strip(),
                              (item.findtext(DC_CREATOR) or "").strip(), when))
    return items


def _date(value: str | None) -> float | None:
    try:
        parsed = email.utils.parsedate_to_datetime((value or "").strip())
    except (TypeError, ValueError):
        return None
    return parsed.timestamp() if parsed is not None and parsed.tzinfo is not None else None


async def article_facts(zenn: ZennHttp, url: str, max_chars: int = 4_000) -> ArticleFacts | None:
    """Counts and text of the article at `url` (a Zenn article URL), None when it is not an
    article (a book, a scrap) or Zenn has no JSON for it. Raises `ZennRefused`."""
    match = _ARTICLE_PATH.match(urlsplit(url).path)
    if match is None:
        return None
    try:
        data = (await zenn.get_json(f"/api/articles/{match['slug']}", kind="detail")).get("article")
    except (ZennNotFound, ZennUnavailable) as exc:
        log.info("no JSON for %s: %s", url, exc)
        return None
    if not isinstance(data, dict) or not isinstance(data.get("liked_count"), int):
        zenn.note_mismatch("/api/articles/{slug}", "no article.liked_count")
        return None
    user = data.get("user") if isinstance(data.get("user"), dict) else {}
    body = html_fragment_to_markdown(str(data.get("body_html") or ""))
    return ArticleFacts(url, str(data.get("title") or ""), str(user.get("name") or user.get("username") or ""),
                        data["liked_count"], _int(data.get("bookmarked_count")), _int(data.get("comments_count")),
                        body[:max_chars])


async def target_exists(zenn: ZennHttp, kind: str, name: str) -> str | None:
    """The display name of a user, topic or publication on Zenn, None when there is none.
    Raises `ZennRefused`, and `ZennUnavailable` when Zenn cannot tell."""
    path = {"user": f"/api/users/{name}", "topic": f"/api/topics/{name}",
            "publication": f"/api/publications/{name}"}[kind]
    try:
        data = await zenn.get_json(path, kind="meta")
    except ZennNotFound:
        return None
    inner = data.get(kind)
    if not isinstance(inner, dict):
        return name
    return str(inner.get("display_name") or inner.get("name") or inner.get("username") or name)


def _int(value: object) -> int | None:
    return value if isinstance(value, int) else None


class ZennFollowing:
    """What follows and digests need of Zenn, over the shared client: `bot.digest.feeds.ZennFeeds`."""

    def __init__(self, zenn: ZennHttp) -> None:
        self.zenn = zenn

    @property
    def base_url(self) -> str:
        return self.zenn.base_url

    @property
    def requests_sent(self) -> int:
        return self.zenn.sent

    async def fetch_feed(self, path: str, etag: str = "", last_modified: str = "") -> FeedFetch:
        return await fetch_feed(self.zenn, path, etag, last_modified)

    async def article_facts(self, url: str) -> ArticleFacts | None:
        return await article_facts(self.zenn, url)

    async def target_exists(self, kind: str, name: str) -> str | None:
        return await target_exists(self.zenn, kind, name)
