"""Zenn without a link: article lists (topic, user, publication, all of Zenn), keyword search,
topics, users with their books and scraps, and the details of books, chapters and scraps.

Everything comes from Zenn's JSON endpoints through the shared client, and is rendered as
compact Markdown for the model: ranked rows `rank | likes | bookmarks | comments | date |
author | title | url` whose order the code sets (by likes, date or comments; trends in Zenn's
own order). Fields that are missing or renamed are tolerated; an endpoint that no longer answers
in the expected shape raises `ZennUnavailable` (the caller reads the HTML page instead) and is
logged once. Paid book chapters are never fetched.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from urllib.parse import quote

from agent.extract import html_fragment_to_markdown
from agent.zenn_client import ZennHttp, ZennNotFound, ZennUnavailable

PAGE_ITEMS = 48
ORDERS = ("latest", "trend_today", "trend_week", "most_liked", "most_comments")
API_ORDER = {"latest": "latest", "trend_today": "daily", "trend_week": "weekly", "most_liked": "liked_count",
             "most_comments": "latest"}  # comments: no such order on Zenn; the code sorts
SEARCH_ORDER = {"latest": "latest", "most_liked": "alltime", "trend_today": "daily", "trend_week": "daily",
                "most_comments": "latest"}
ROWS_SHOWN = 10
COMMENT_CHARS = 240  # of each scrap comment: enough to know the point, not a repost


@dataclass(frozen=True)
class Row:
    """One ranked item of a list: an article, a book or a scrap."""

    title: str
    url: str
    author: str
    likes: int
    bookmarks: int | None
    comments: int | None
    date: str
    emoji: str = ""
    extra: str = ""  # e.g. "¥1,500" for a book, "closed" for a scrap

    def line(self, rank: int) -> str:
        bookmarks = "?" if self.bookmarks is None else str(self.bookmarks)
        comments = "?" if self.comments is None else str(self.comments)
        title = " ".join(f"{self.emoji} {self.title}{f' ({self.extra})' if self.extra else ''}".split())
        return (f"{rank} | {self.likes} | {bookmarks} | {comments} | {self.date} | "
                f"{_cell(self.author)} | {_cell(title)} | {self.url}")


HEADER = "rank | likes | bookmarks | comments | date | author | title | url"


@dataclass(frozen=True)
class Listing:
    heading: str
    rows: list[Row]
    total_note: str  # e.g. "300 articles in all; 48 fetched (1 page)"
    note: str = ""  # e.g. "No topic 「X」: search results instead"

    def markdown(self, shown: int = ROWS_SHOWN) -> str:
        lines = [f"# {self.heading}"]
        if self.note:
            lines.append(self.note)
        lines.append(f"{self.total_note}; {min(shown, len(self.rows))} shown, ranked by code from Zenn's data.")
        if self.rows:
            lines += [HEADER, *(row.line(rank) for rank, row in enumerate(self.rows[:shown], 1))]
        else:
            lines.append("(nothing found)")
        return "\n".join(lines)


def _cell(text: str) -> str:
    return " ".join(str(text).replace("|", "/").split())


def topic_slug(name: str) -> str:
    """Zenn's topic name for what a person calls it: 「Next.js」→ nextjs, 「生成AI」→ 生成ai,
    「Type Script」→ typescript (NFKC, lower case, only letters and digits)."""
    plain = unicodedata.normalize("NFKC", name).lower().lstrip("#")
    return "".join(ch for ch in plain if ch.isalnum())


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class ZennResearch:
    """Questions about Zenn answered from its JSON, through the shared client."""

    def __init__(self, http: ZennHttp) -> None:
        self.http = http

    @property
    def base_url(self) -> str:
        return self.http.base_url

    # Lists

    async def topic(self, name: str) -> tuple[str, str] | None:
        """(slug, display name) of the topic a name means, or None when Zenn has no such topic."""
        slug = topic_slug(name)
        if not slug:
            return None
        try:
            data = await self.http.get_json(f"/api/topics/{quote(slug)}", kind="meta")
        except ZennNotFound:
            return None
        topic = data.get("topic")
        if not isinstance(topic, dict):
            self.http.note_mismatch("/api/topics/{name}", "no 'topic' object")
            return slug, name  # the slug may still work for lists
        return str(topic.get("name") or slug), str(topic.get("display_name") or name)

    async def articles(self, params: dict, order: str, max_pages: int) -> tuple[list[Row], int, bool]:
        """Rows of `/api/articles` with `params`, ranked for `order`; the pages fetched, and
        whether the list goes on past them. One page answers every order Zenn sorts itself;
        `most_comments` reads up to `max_pages` and sorts by code."""
        pages = max_pages if order == "most_comments" else 1
        query = {**params, "order": API_ORDER[order]}
        items, fetched, more = await self._pages("/api/articles", "articles", query, pages)
        likes = [_int(i.get("liked_count")) or 0 for i in items]
        if order == "most_liked" and more and likes != sorted(likes, reverse=True):
            # Zenn ignored the order: rank what the page cap allows, by code
            self.http.note_mismatch("/api/articles", "order=liked_count was not applied")
            items, fetched, more = await self._pages("/api/articles", "articles", query, max_pages)
        rows = [r for r in map(self._article_row, items) if r is not None]
        return rank(rows, order), fetched, more

    async def search(self, query: str, source: str, order: str) -> tuple[list[Row], bool]:
        items, _, more = await self._pages("/api/search", source, {"q": query[:100], "source": source,
                                                                    "order": SEARCH_ORDER[order]}, 1)
        row = {"articles": self._article_row, "books": self._book_row, "scraps": self._scrap_row}[source]
        rows = [r for r in map(row, items) if r is not None]
        return (rows if order.startswith("trend") else rank(rows, order)), more

    async def user(self, username: str) -> dict:
        data = await self.http.get_json(f"/api/users/{quote(username)}", kind="meta")
        user = data.get("user")
        if not isinstance(user, dict):
            self.http.note_mismatch("/api/users/{name}", "no 'user' object")
            raise ZennUnavailable(f"no user object for {username}")
        return user

    async def books(self, username: str) -> list[Row]:
        """The user's books (their chapters: `book_markdown`)."""
        items, _, _ = await self._pages("/api/books", "books", {"username": username, "order": "latest"}, 1)
        return [r for r in map(self._book_row, items) if r is not None]

    async def scraps(self, username: str) -> list[Row]:
        items, _, _ = await self._pages("/api/scraps", "scraps", {"username": username, "order": "latest"}, 1)
        return [r for r in map(self._scrap_row, items) if r is not None]

    async def _pages(self, path: str, key: str, params: dict, pages: int) -> tuple[list[dict], int, bool]:
        items: list[dict] = []
        page, fetched = 1, 0
        while True:
            data = await self.http.get_json(path, {**params, "page": page}, kind="list")
            batch = data.get(key)
            if not isinstance(batch, list):
                self.http.note_mismatch(path, f"no '{key}' list")
                raise ZennUnavailable(f"{path}: no '{key}' list")
            items += [i for i in batch if isinstance(i, dict)]
            fetched += 1
            next_page = data.get("next_page")
            more = isinstance(next_page, int) and next_page > page
            if not more or fetched >= pages:
                return items, fetched, more
            page = next_page

    # Items as rows

    def _author(self, item: dict) -> str:
        user = item.get("user") if isinstance(item.get("user"), dict) else {}
        publication = item.get("publication") if isinstance(item.get("publication"), dict) else None
        name = str(user.get("username") or "?")
        return f"{name} ({publication['name']})" if publication and publication.get("name") else name

    def _url(self, item: dict, kind: str) -> str:
        path = item.get("path")
        if not isinstance(path, str) or not path.startswith("/"):
            user = (item.get("user") or {}).get("username", "") if isinstance(item.get("user"), dict) else ""
            path = f"/{user}/{kind}/{item.get('slug', '')}"
        return self.base_url + path

    def _article_row(self, item: dict) -> Row | None:
        if not item.get("title") or not item.get("slug"):
            self.http.note_mismatch("/api/articles", "an item without title or slug")
            return None
        if _int(item.get("liked_count")) is None:
            self.http.note_mismatch("/api/articles", "an item without 'liked_count'")
        return Row(str(item["title"]), self._url(item, "articles"), self._author(item),
                   _int(item.get("liked_count")) or 0, _int(item.get("bookmarked_count")),
                   _int(item.get("comments_count")), str(item.get("published_at") or "")[:10],
                   str(item.get("emoji") or ""), "idea" if item.get("article_type") == "idea" else "")

    def _book_row(self, item: dict) -> Row | None:
        if not item.get("title") or not item.get("slug"):
            self.http.note_mismatch("/api/books", "an item without title or slug")
            return None
        price = _int(item.get("price")) or 0
        return Row(str(item["title"]), self._url(item, "books"), self._author(item),
                   _int(item.get("liked_count")) or 0, None, None, str(item.get("published_at") or "")[:10],
                   "📘", f"¥{price:,}" if price else "free")

    def _scrap_row(self, item: dict) -> Row | None:
        if not item.get("title") or not item.get("slug"):
            self.http.note_mismatch("/api/scraps", "an item without title or slug")
            return None
        return Row(str(item["title"]), self._url(item, "scraps"), self._author(item),
                   _int(item.get("liked_count")) or 0, None, _int(item.get("comments_count")),
                   str(item.get("last_comment_created_at") or item.get("created_at") or "")[:10],
                   "📝", "closed" if item.get("closed") else "")


def rank(rows: list[Row], order: str) -> list[Row]:
    """Rows in the order asked for, set by code: likes (ties: bookmarks, then newer), comments,
    or date; trends keep Zenn's order (its trend score is its own)."""
    if order == "most_liked":
        return sorted(rows, key=lambda r: (-r.likes, -(r.bookmarks or 0), _newest(r)))
    if order == "most_comments":
        return sorted(rows, key=lambda r: (-(r.comments or 0), -r.likes))
    if order == "latest":
        return sorted(rows, key=lambda r: r.date, reverse=True)
    return rows


def _newest(row: Row) -> str:
    return "".join(chr(0x10FFFF - ord(c)) for c in row.date)


# Details (read through the page reader, which caches them)

_BOOK_PATH = re.compile(r"^/(?P<user>[A-Za-z0-9_-]{2,40})/books/(?P<slug>[A-Za-z0-9_-]{2,80})"
                        r"(?:/(?P<chapter>[A-Za-z0-9_-]{1,80}))?/?$")
_SCRAP_PATH = re.compile(r"^/(?P<user>[A-Za-z0-9_-]{2,40})/scraps/(?P<slug>[A-Za-z0-9_-]{4,80})/?$")


def detail_target(path: str) -> tuple[str, dict[str, str]] | None:
    """("book" | "chapter" | "scrap", the path's parts) for a Zenn detail path, else None."""
    if match := _SCRAP_PATH.match(path):
        return "scrap", match.groupdict()
    if match := _BOOK_PATH.match(path):
        return ("chapter" if match["chapter"] else "book"), {k: v for k, v in match.groupdict().items() if v}
    return None


def chapter_is_free(chapter: dict, book: dict) -> bool:
    """Only a chapter Zenn marks free, or any chapter of a free book. Unknown means paid."""
    if chapter.get("free") is True or chapter.get("is_free") is True:
        return True
    return _int(book.get("price")) == 0 or book.get("is_free") is True


async def book_markdown(research: ZennResearch, slug: str) -> tuple[str, str, str]:
    """(title, Markdown, summary) of a book: its counts and chapters, each free or paid, linked."""
    data = await research.http.get_json(f"/api/books/{quote(slug)}", kind="detail")
    book = data.get("book")
    if not isinstance(book, dict) or not isinstance(book.get("chapters"), list):
        research.http.note_mismatch("/api/books/{slug}", "no 'book.chapters' list")
        raise ZennUnavailable(f"no book {slug}")
    row = research._book_row(book)
    if row is None:
        raise ZennUnavailable(f"no title for book {slug}")
    lines = [f"# 📘 {row.title}", f"URL: {row.url}",
             f"by {row.author} · likes: {row.likes} · price: {row.extra} · published: {row.date}", "",
             "## Chapters (paid ones are not read)"]
    for number, chapter in enumerate((c for c in book["chapters"] if isinstance(c, dict)), 1):
        position = _int(chapter.get("position")) or number
        state = "free" if chapter_is_free(chapter, book) else "paid"
        lines.append(f"- 第{position}章 {_cell(chapter.get('title') or '?')} ({state}) <{row.url}/"
                     f"{chapter.get('slug') or chapter.get('id')}>")
    return row.title, "\n".join(lines), f"{row.likes:,} likes · {row.extra}"


async def chapter_markdown(research: ZennResearch, slug: str, chapter_slug: str, url: str) -> tuple[str, str, str]:
    """(title, Markdown, summary) of one chapter. A paid chapter is never fetched: the text says
    so and links it."""
    data = await research.http.get_json(f"/api/books/{quote(slug)}", kind="detail")
    book = data.get("book")
    chapters = book.get("chapters") if isinstance(book, dict) else None
    if not isinstance(chapters, list):
        research.http.note_mismatch("/api/books/{slug}", "no 'book.chapters' list")
        raise ZennUnavailable(f"no book {slug}")
    chapter = next((c for c in chapters if isinstance(c, dict)
                    and chapter_slug in (str(c.get("slug")), str(c.get("id")))), None)
    if chapter is None:
        raise ZennNotFound(f"no chapter {chapter_slug} in {slug}")
    title = str(chapter.get("title") or chapter_slug)
    book_title = str(book.get("title") or slug)
    position = _int(chapter.get("position"))
    heading = f"# {book_title} — {'第' + str(position) + '章 ' if position else ''}{title}"
    if not chapter_is_free(chapter, book):
        return title, (f"{heading}\nURL: {url}\nPAID CHAPTER: not read (the bot never reads paid content). "
                       f"Tell the user it is paid and link it."), "paid chapter"
    detail = await research.http.get_json(f"/api/chapters/{chapter.get('id')}", kind="detail")
    body = (detail.get("chapter") or {}).get("body_html") if isinstance(detail.get("chapter"), dict) else None
    if not isinstance(body, str) or not body:
        research.http.note_mismatch("/api/chapters/{id}", "no 'chapter.body_html'")
        raise ZennUnavailable(f"no body for chapter {chapter_slug}")
    return title, f"{heading}\nURL: {url}\n\n{html_fragment_to_markdown(body)}", "free chapter"


async def scrap_markdown(research: ZennResearch, slug: str) -> tuple[str, str, str]:
    """(title, Markdown, summary) of a scrap: its threads ranked by replies (the most discussed
    first, by code), each comment cut short."""
    data = await research.http.get_json(f"/api/scraps/{quote(slug)}", kind="detail")
    scrap = data.get("scrap")
    comments = scrap.get("comments") if isinstance(scrap, dict) else None
    if not isinstance(comments, list):
        research.http.note_mismatch("/api/scraps/{slug}", "no 'scrap.comments' list")
        raise ZennUnavailable(f"no scrap {slug}")
    row = research._scrap_row(scrap)
    if row is None:
        raise ZennUnavailable(f"no title for scrap {slug}")
    threads = [c for c in comments if isinstance(c, dict)]
    ranked = sorted(enumerate(threads, 1), key=lambda t: (-len(_children(t[1])), t[0]))
    lines = [f"# 📝 {row.title}", f"URL: {row.url}",
             f"by {row.author} · likes: {row.likes} · comments: {row.comments} · {row.extra or 'open'}", "",
             "## Threads, most replies first (sorted by code)"]
    for rank_number, (position, thread) in enumerate(ranked, 1):
        replies = _children(thread)
        lines.append(f"{rank_number}. thread #{position} · {len(replies)} replies · "
                     f"likes: {_int(thread.get('liked_count')) or 0}: {_comment(thread)}")
        lines += [f"   - reply: {_comment(reply)}" for reply in replies[:5]]
    return row.title, "\n".join(lines), f"{row.comments} comments"


def _children(comment: dict) -> list[dict]:
    children = comment.get("children")
    return [c for c in children if isinstance(c, dict)] if isinstance(children, list) else []


def _comment(comment: dict) -> str:
    body = comment.get("body_html")
    text = " ".join(html_fragment_to_markdown(body).split()) if isinstance(body, str) else ""
    return text[:COMMENT_CHARS] + ("…" if len(text) > COMMENT_CHARS else "")
