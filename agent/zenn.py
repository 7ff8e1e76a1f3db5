"""Zenn's public JSON endpoints: an author's whole article list with exact counts, and an
article's body. An optimisation over the browser, which stays the fallback: the endpoints are
undocumented and may change.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

from agent.extract import html_fragment_to_markdown

_USERNAME = r"[A-Za-z0-9_-]{2,40}"
_AUTHOR_PATH = re.compile(rf"^/(?P<user>{_USERNAME})/?$")
_ARTICLE_PATH = re.compile(rf"^/(?P<user>{_USERNAME})/articles/(?P<slug>[A-Za-z0-9_-]{{4,80}})/?$")
_RESERVED = {"articles", "books", "scraps", "topics", "search", "about", "terms", "privacy", "faq",
             "manual", "events", "publications", "api", "tech-or-idea", "mediakit", "biz-lp",
             "dashboard", "settings", "enter", "login", "notifications", "trendingtopics"}
MAX_PAGES = 50


class ZennUnavailable(Exception):
    """The JSON endpoints did not give a usable answer; use the browser instead."""


@dataclass(frozen=True)
class ZennArticle:
    title: str
    slug: str
    url: str
    emoji: str
    liked_count: int
    bookmarked_count: int | None
    comments_count: int | None
    published_at: str
    article_type: str


@dataclass(frozen=True)
class ZennTarget:
    kind: str  # "author" or "article"
    username: str
    slug: str = ""


class ZennClient:
    def __init__(self, base_url: str, http: httpx.AsyncClient) -> None:
        self.base_url = base_url.rstrip("/")
        self.http = http

    def classify(self, url: str) -> ZennTarget | None:
        """What a URL under ZENN_BASE_URL points at, or None for anything else."""
        base = urlsplit(self.base_url)
        parts = urlsplit(url)
        if (parts.scheme, parts.netloc.lower()) != (base.scheme, base.netloc.lower()):
            return None
        if match := _ARTICLE_PATH.match(parts.path):
            return ZennTarget("article", match["user"], match["slug"])
        if (match := _AUTHOR_PATH.match(parts.path)) and match["user"].lower() not in _RESERVED:
            if "tab=" not in parts.query:
                return ZennTarget("author", match["user"])
        return None

    async def author_articles(self, username: str) -> list[ZennArticle]:
        articles: list[ZennArticle] = []
        page: int | None = 1
        while page is not None and page <= MAX_PAGES:
            data = await self._get_json("/api/articles", {"username": username, "order": "latest",
                                                          "page": page})
            batch = data.get("articles")
            if not isinstance(batch, list):
                raise ZennUnavailable("no 'articles' list in the answer")
            articles.extend(self._article(item) for item in batch)
            next_page = data.get("next_page")
            page = next_page if isinstance(next_page, int) and next_page > page else None
        if not articles:
            raise ZennUnavailable(f"no articles for {username}")
        return articles

    async def article(self, slug: str) -> tuple[ZennArticle, str, list[str]]:
        """The article's metadata, its body as Markdown, and its topics."""
        data = (await self._get_json(f"/api/articles/{slug}", {})).get("article")
        if not isinstance(data, dict) or not data.get("body_html"):
            raise ZennUnavailable(f"no body for {slug}")
        topics = [t.get("display_name") or t.get("name", "") for t in data.get("topics") or []
                  if isinstance(t, dict)]
        return self._article(data), html_fragment_to_markdown(data["body_html"]), [t for t in topics if t]

    async def _get_json(self, path: str, params: dict) -> dict:
        try:
            response = await self.http.get(self.base_url + path, params=params)
        except httpx.HTTPError as exc:
            raise ZennUnavailable(f"{path}: {exc!r}") from exc
        if response.status_code != 200:
            raise ZennUnavailable(f"{path}: HTTP {response.status_code}")
        try:
            data = response.json()
        except ValueError as exc:
            raise ZennUnavailable(f"{path}: not JSON") from exc
        if not isinstance(data, dict):
            raise ZennUnavailable(f"{path}: unexpected JSON")
        return data

    def _article(self, item: dict) -> ZennArticle:
        try:
            return ZennArticle(
                title=str(item["title"]),
                slug=str(item["slug"]),
                url=self.base_url + str(item.get("path") or f"/{item['user']['username']}/articles/{item['slug']}"),
                emoji=str(item.get("emoji") or ""),
                liked_count=int(item["liked_count"]),
                bookmarked_count=_int_or_none(item.get("bookmarked_count")),
                comments_count=_int_or_none(item.get("comments_count")),
                published_at=str(item.get("published_at") or "")[:10],
                article_type=str(item.get("article_type") or ""),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ZennUnavailable(f"unexpected article shape: {exc!r}") from exc


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) else None


def rank_by_likes(articles: list[ZennArticle]) -> list[ZennArticle]:
    """Most liked first; ties by bookmarks, then newest. The order ranking questions use."""
    return sorted(articles, key=lambda a: (-a.liked_count, -(a.bookmarked_count or 0), a.published_at))


TOP_ROWS = 10  # the first part of an author's list; the rest follows in later parts
PART_BREAK = "\f"  # where a page's first part ends (agent.pages.split_parts cuts there)


def author_markdown(username: str, base_url: str, articles: list[ZennArticle]) -> str:
    """The author's articles ranked by likes, one row each with its full URL. The top rows form
    the first part (most questions are about them); the rest come with part=2, 3…"""
    ranked = rank_by_likes(articles)
    total_likes = sum(a.liked_count for a in articles)
    header = "rank | likes | bookmarks | published | title | url"
    rows = []
    for rank, a in enumerate(ranked, 1):
        bookmarks = "?" if a.bookmarked_count is None else str(a.bookmarked_count)
        rows.append(f"{rank} | {a.liked_count} | {bookmarks} | {a.published_at} | {a.emoji} {a.title} | {a.url}")
    lines = [
        f"# Zenn author: {username}",
        f"URL: {base_url}/{username}",
        f"Articles: {len(articles)} · likes on these articles (sum): {total_likes:,}",
        "",
        "## Articles ranked by likes (sorted by code from Zenn's data: exact)",
        header,
        *rows[:TOP_ROWS],
    ]
    if len(rows) > TOP_ROWS:
        lines += [PART_BREAK, f"## Ranks {TOP_ROWS + 1}–{len(rows)}", header, *rows[TOP_ROWS:]]
    return "\n".join(lines)


def article_markdown(article: ZennArticle, body: str, topics: list[str]) -> str:
    facts = [f"likes: {article.liked_count}"]
    if article.bookmarked_count is not None:
        facts.append(f"bookmarks: {article.bookmarked_count}")
    if article.comments_count is not None:
        facts.append(f"comments: {article.comments_count}")
    if article.published_at:
        facts.append(f"published: {article.published_at}")
    emoji = f"{article.emoji} " if article.emoji else ""
    header = [f"# {emoji}{article.title}", f"URL: {article.url}", " · ".join(facts)]
    if topics:
        header.append("topics: " + ", ".join(topics))
    return "\n".join(header) + "\n\n" + body


def author_summary(articles: list[ZennArticle]) -> str:
    return f"{len(articles)} articles · {sum(a.liked_count for a in articles):,} likes"


def article_summary(article: ZennArticle) -> str:
    parts = [f"{article.liked_count:,} likes"]
    if article.bookmarked_count is not None:
        parts.append(f"{article.bookmarked_count:,} bookmarks")
    return " · ".join(parts)
