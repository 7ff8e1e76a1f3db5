"""Zenn's public JSON endpoints: an author's whole article list with exact counts, and an
article's body. An optimisation over the browser, which stays the fallback: the endpoints are
undocumented and may change. Every request goes through the shared, paced client
(`agent.zenn_client.ZennHttp`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from agent.extract import html_fragment_to_markdown
from agent.zenn_client import ZennHttp, ZennNotFound, ZennRefused, ZennUnavailable
from agent.zenn_research import detail_target

__all__ = ["ZennArticle", "ZennClient", "ZennHttp", "ZennNotFound", "ZennRefused", "ZennTarget",
           "ZennUnavailable", "article_markdown", "article_summary", "author_markdown", "author_summary",
           "rank_by_likes"]

_USERNAME = r"[A-Za-z0-9_-]{2,40}"
_AUTHOR_PATH = re.compile(rf"^/(?P<user>{_USERNAME})/?$")
_ARTICLE_PATH = re.compile(rf"^/(?P<user>{_USERNAME})/articles/(?P<slug>[A-Za-z0-9_-]{{4,80}})/?$")
_RESERVED = {"articles", "books", "scraps", "topics", "search", "about", "terms", "privacy", "faq",
             "manual", "events", "publications", "api", "tech-or-idea", "mediakit", "biz-lp",
             "dashboard", "settings", "enter", "login", "notifications", "trendingtopics"}
MAX_PAGES = 50


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
    kind: str  # "author", "article", "book", "chapter" or "scrap"
    username: str
    slug: str = ""
    chapter: str = ""


class ZennClient:
    """What the page reader asks of Zenn: which URLs are Zenn's, an author's list, an article."""

    def __init__(self, http: ZennHttp) -> None:
        self.http = http

    @property
    def base_url(self) -> str:
        return self.http.base_url

    def is_zenn(self, url: str) -> bool:
        base, parts = urlsplit(self.base_url), urlsplit(url)
        return (parts.scheme, parts.netloc.lower()) == (base.scheme, base.netloc.lower())

    def classify(self, url: str) -> ZennTarget | None:
        """What a URL under ZENN_BASE_URL points at, or None for anything else."""
        if not self.is_zenn(url):
            return None
        parts = urlsplit(url)
        if match := _ARTICLE_PATH.match(parts.path):
            return ZennTarget("article", match["user"], match["slug"])
        if found := detail_target(parts.path):
            kind, found_parts = found
            return ZennTarget(kind, found_parts["user"], found_parts["slug"], found_parts.get("chapter", ""))
        if (match := _AUTHOR_PATH.match(parts.path)) and match["user"].lower() not in _RESERVED:
            if "tab=" not in parts.query:
                return ZennTarget("author", match["user"])
        return None

    async def author_articles(self, username: str) -> list[ZennArticle]:
        articles: list[ZennArticle] = []
        page: int | None = 1
        while page is not None and page <= MAX_PAGES:
            data = await self.http.get_json("/api/articles", {"username": username, "order": "latest",
                                                              "page": page}, kind="list")
            batch = data.get("articles")
            if not isinstance(batch, list):
                self.http.note_mismatch("/api/articles", "no 'articles' list")
                raise ZennUnavailable("no 'articles' list in the answer")
            articles.extend(a for a in map(self._article, batch) if a is not None)
            next_page = data.get("next_page")
            page = next_page if isinstance(next_page, int) and next_page > page else None
        if not articles:
            raise ZennUnavailable(f"no articles for {username}")
        return articles

    async def article(self, slug: str) -> tuple[ZennArticle, str, list[str]]:
        """The article's metadata, its body as Markdown, and its topics."""
        data = (await self.http.get_json(f"/api/articles/{slug}", kind="detail")).get("article")
        if not isinstance(data, dict) or not isinstance(data.get("body_html"), str) or not data["body_html"]:
            self.http.note_mismatch("/api/articles/{slug}", "no 'article.body_html'")
            raise ZennUnavailable(f"no body for {slug}")
        article = self._article(data)
        if article is None:
            raise ZennUnavailable(f"unexpected article shape for {slug}")
        topics = [t.get("display_name") or t.get("name", "") for t in data.get("topics") or []
                  if isinstance(t, dict)]
        return article, html_fragment_to_markdown(data["body_html"]), [t for t in topics if t]

    def _article(self, item: object) -> ZennArticle | None:
        """An article list item or detail; None (and the mismatch logged once) when it lacks a
        title or slug. Counts that are missing are 0 (likes) or unknown (the others)."""
        if not isinstance(item, dict):
            self.http.note_mismatch("/api/articles", "an item that is not an object")
            return None
        if not isinstance(item.get("liked_count"), int):
            self.http.note_mismatch("/api/articles", "no 'liked_count'")
        try:
            return ZennArticle(
                title=str(item["title"]),
                slug=str(item["slug"]),
                url=self.base_url + str(item.get("path") or f"/{item['user']['username']}/articles/{item['slug']}"),
                emoji=str(item.get("emoji") or ""),
                liked_count=_int_or_none(item.get("liked_count")) or 0,
                bookmarked_count=_int_or_none(item.get("bookmarked_count")),
                comments_count=_int_or_none(item.get("comments_count")),
                published_at=str(item.get("published_at") or "")[:10],
                article_type=str(item.get("article_type") or ""),
            )
        except (KeyError, TypeError, ValueError) as exc:
            self.http.note_mismatch("/api/articles", f"an item without {exc}")
            return None


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


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


OPENING_CHARS = 3_000  # of an article's body in its first part; the rest comes with part=2, 3…
_CODE_TOOLBAR = re.compile(r"^\s*クリップボードにコピー\s*右端で折り返す\s*$\n?", re.M)  # code-block buttons


def article_markdown(article: ZennArticle, body: str, topics: list[str]) -> str:
    """The article's counts, the outline of its headings, then its body; the first part holds
    the opening (`OPENING_CHARS`), enough to say what it is about, and the outline says where
    the rest goes (part=2…, or a question to find the passages)."""
    body = _CODE_TOOLBAR.sub("", body)
    headings = [line.lstrip("#").strip() for line in body.splitlines() if re.match(r"#{1,3} \S", line)]
    if len(body) > OPENING_CHARS:
        cut = body.rfind("\n\n", OPENING_CHARS // 2, OPENING_CHARS)
        cut = cut if cut > 0 else OPENING_CHARS
        body = body[:cut] + "\n" + PART_BREAK + body[cut:]
    outline = ("outline: " + " / ".join(h[:40] for h in headings[:30])) if len(headings) > 1 else ""
    return _article_header(article, topics, outline) + "\n\n" + body


def _article_header(article: ZennArticle, topics: list[str], outline: str) -> str:
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
    if outline:
        header.append(outline)
    return "\n".join(header)


def author_summary(articles: list[ZennArticle]) -> str:
    return f"{len(articles)} articles · {sum(a.liked_count for a in articles):,} likes"


def article_summary(article: ZennArticle) -> str:
    parts = [f"{article.liked_count:,} likes"]
    if article.bookmarked_count is not None:
        parts.append(f"{article.bookmarked_count:,} bookmarks")
    return " · ".join(parts)
