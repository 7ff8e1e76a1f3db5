"""A Zenn whose articles appear over time, for follows and digests: the RSS feeds (trending,
user, topic, publication; 20 newest items, `dc:creator`) with ETag and Last-Modified and 304
answers to conditional requests, the article JSON with exact counts, and the user, topic and
publication JSON (404 for unknown names), in the shapes of shared/research/zenn-endpoints.md.
Every request is recorded (`requests`); `refuse_next` answers 429 with Retry-After."""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import hashlib
from dataclasses import dataclass, field
from xml.sax.saxutils import escape

from aiohttp import web

from bench.local_server import LocalServer

FEED_ITEMS = 20


@dataclass
class Article:
    slug: str
    user: str
    title: str
    published_at: dt.datetime
    liked: int = 0
    bookmarked: int = 0
    comments: int = 0
    topics: tuple[str, ...] = ()
    publication: str | None = None
    trending: bool = False
    body: str = ""


@dataclass(frozen=True)
class Request:
    path: str
    if_none_match: str
    if_modified_since: str
    status: int


@dataclass
class FakeZennFeeds(LocalServer):
    users: dict[str, str] = field(default_factory=lambda: {"alice": "Alice", "bob": "Bob"})
    topics: dict[str, str] = field(default_factory=lambda: {"nextjs": "Next.js", "rust": "Rust"})
    publications: dict[str, str] = field(default_factory=lambda: {"team_a": "Team A"})
    articles: list[Article] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    refuse_next: int = 0
    feed_gate: asyncio.Event | None = None  # when set to an unset event, feeds are answered once it is set
    feed_waiting: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        app = web.Application()
        app.router.add_get("/feed", lambda r: self._feed(r, lambda a: a.trending))
        app.router.add_get("/topics/{name}/feed", self._topic_feed)
        app.router.add_get("/p/{name}/feed", self._publication_feed)
        app.router.add_get("/api/articles/{slug}", self._article)
        app.router.add_get("/api/users/{name}", lambda r: self._meta(r, "user", self.users))
        app.router.add_get("/api/topics/{name}", lambda r: self._meta(r, "topic", self.topics))
        app.router.add_get("/api/publications/{name}", lambda r: self._meta(r, "publication", self.publications))
        app.router.add_get("/{user}/feed", self._user_feed)
        super().__init__(app)

    def add(self, slug: str, user: str, published_at: dt.datetime, liked: int, **kwargs) -> Article:
        article = Article(slug, user, kwargs.pop("title", f"Article {slug}"), published_at, liked, **kwargs)
        article.body = article.body or f"<p>{article.title} の本文。{slug} について詳しく説明します。</p>"
        self.articles.append(article)
        return article

    def feed_requests(self, path: str | None = None) -> list[Request]:
        return [r for r in self.requests if r.path.endswith("/feed") and (path is None or r.path == path)]

    def article_url(self, article: Article) -> str:
        return f"{self.url}/{article.user}/articles/{article.slug}"

    def _log(self, request: web.Request, status: int) -> None:
        self.requests.append(Request(request.path, request.headers.get("If-None-Match", ""),
                                     request.headers.get("If-Modified-Since", ""), status))

    def _refused(self, request: web.Request) -> web.Response | None:
        if self.refuse_next <= 0:
            return None
        self.refuse_next -= 1
        self._log(request, 429)
        return web.Response(status=429, text="Too Many Requests", headers={"Retry-After": "30"})

    async def _topic_feed(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in self.topics:
            self._log(request, 404)
            return web.Response(status=404)
        return await self._feed(request, lambda a: name in a.topics)

    async def _publication_feed(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        return await self._feed(request, lambda a: a.publication == name)

    async def _user_feed(self, request: web.Request) -> web.Response:
        name = request.match_info["user"]
        if name not in self.users:
            self._log(request, 404)
            return web.Response(status=404)
        return await self._feed(request, lambda a: a.user == name)

    async def _feed(self, request: web.Request, chosen) -> web.Response:
        if refused := self._refused(request):
            return refused
        if self.feed_gate is not None:
            self.feed_waiting.set()
            await self.feed_gate.wait()
        items = sorted((a for a in self.articles if chosen(a)), key=lambda a: a.published_at, reverse=True)
        items = items[:FEED_ITEMS]
        base = f"{request.scheme}://{request.host}"
        body = "".join(
            f"<item><title>{escape(a.title)}</title><link>{base}/{a.user}/articles/{a.slug}</link>"
            f"<guid isPermaLink=\"true\">{base}/{a.user}/articles/{a.slug}</guid>"
            f"<description>{escape(a.title)}</description>"
            f"<pubDate>{email.utils.format_datetime(a.published_at.astimezone(dt.UTC), usegmt=True)}</pubDate>"
            f"<dc:creator>{escape(self.users.get(a.user, a.user))}</dc:creator></item>" for a in items)
        xml = ('<?xml version="1.0" encoding="UTF-8"?><rss version="2.0" '
               'xmlns:dc="http://purl.org/dc/elements/1.1/"><channel><title>Zenn</title>'
               f"<link>{base}{request.path}</link><description>feed</description>{body}</channel></rss>")
        etag = '"' + hashlib.sha1(xml.encode()).hexdigest()[:16] + '"'
        modified = email.utils.format_datetime(max((a.published_at for a in items),
                                                   default=dt.datetime(2026, 1, 1, tzinfo=dt.UTC)).astimezone(dt.UTC),
                                               usegmt=True)
        if request.headers.get("If-None-Match") == etag:
            self._log(request, 304)
            return web.Response(status=304, headers={"ETag": etag, "Last-Modified": modified})
        self._log(request, 200)
        return web.Response(text=xml, content_type="application/rss+xml",
                            headers={"ETag": etag, "Last-Modified": modified})

    async def _article(self, request: web.Request) -> web.Response:
        if refused := self._refused(request):
            return refused
        article = next((a for a in self.articles if a.slug == request.match_info["slug"]), None)
        self._log(request, 200 if article else 404)
        if article is None:
            return web.json_response({"message": "not found"}, status=404)
        publication = ({"id": 1, "name": article.publication, "display_name": self.publications[article.publication],
                        "avatar_small_url": ""} if article.publication else None)
        return web.json_response({"article": {
            "id": hash(article.slug) % 100_000, "post_type": "Article", "title": article.title, "slug": article.slug,
            "path": f"/{article.user}/articles/{article.slug}", "emoji": "📝", "article_type": "tech",
            "liked_count": article.liked, "bookmarked_count": article.bookmarked,
            "comments_count": article.comments, "body_letters_count": len(article.body),
            "published_at": article.published_at.isoformat(), "body_updated_at": article.published_at.isoformat(),
            "user": {"id": 1, "username": article.user, "name": self.users.get(article.user, article.user),
                     "avatar_small_url": ""},
            "publication": publication, "body_html": article.body,
            "topics": [{"id": 1, "name": t, "display_name": self.topics.get(t, t), "taggings_count": 10,
                        "image_url": ""} for t in article.topics]}})

    async def _meta(self, request: web.Request, kind: str, known: dict[str, str]) -> web.Response:
        name = request.match_info["name"]
        self._log(request, 200 if name in known else 404)
        if name not in known:
            return web.json_response({"message": "not found"}, status=404)
        key = "username" if kind == "user" else "name"
        return web.json_response({kind: {key: name, "name": known[name] if kind == "user" else name,
                                         "display_name": known[name]}})
