"""The page reader behind the agent's tools: URL → compact Markdown, cached, in parts, searchable.

Zenn URLs are read from Zenn's JSON endpoints when they answer, other pages (and Zenn when the
endpoints fail) with the browser. Every read is stored in the page cache shared by all threads,
so later turns fetch a page again from the cache rather than carrying it in the conversation.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections import Counter
from dataclasses import dataclass
from typing import Protocol

from agent.browser import BrowserPool
from agent.extract import extract
from agent.urlguard import UrlPolicy
from agent.zenn import (ZennClient, ZennUnavailable, article_markdown, article_summary, author_markdown,
                        author_summary)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Source:
    """A page an answer rests on, as chat messages list it."""

    url: str
    title: str
    summary: str  # e.g. "921 likes · 344 bookmarks"; may be empty


@dataclass(frozen=True)
class CachedPage:
    url: str
    title: str
    text: str
    source: str  # "zenn-api" or "browser"
    summary: str
    fetched_at: float

    def as_source(self) -> Source:
        return Source(self.url, self.title, self.summary)


class PageCache(Protocol):
    async def get_page(self, url: str, max_age: float) -> CachedPage | None: ...

    async def put_page(self, page: CachedPage) -> None: ...


@dataclass(frozen=True)
class PageLimits:
    part_chars: int = 8_000
    max_chars: int = 200_000
    cache_ttl: float = 3600.0
    passage_chars: int = 700
    passages: int = 4


class PageReader:
    def __init__(self, browser: BrowserPool, zenn: ZennClient, cache: PageCache, policy: UrlPolicy,
                 limits: PageLimits = PageLimits()) -> None:
        self.browser = browser
        self.zenn = zenn
        self.cache = cache
        self.policy = policy
        self.limits = limits

    async def read(self, url: str) -> CachedPage:
        """The page at `url`, from the cache when fresh. Raises `BlockedUrl` or `PageLoadError`."""
        url = url.strip()
        self.policy.check_url(url)  # the URL's form and the allowlist, even for a cached page
        cached = await self.cache.get_page(url, self.limits.cache_ttl)
        if cached is not None:
            return cached
        await self.policy.check(url)  # names resolved only before a fetch (the proxy checks again)
        page = await self._read_zenn(url) or await self._read_browser(url)
        await self.cache.put_page(page)
        return page

    async def _read_zenn(self, url: str) -> CachedPage | None:
        target = self.zenn.classify(url)
        if target is None:
            return None
        try:
            if target.kind == "author":
                articles = await self.zenn.author_articles(target.username)
                text = author_markdown(target.username, self.zenn.base_url, articles)
                return self._page(url, f"{target.username} (Zenn)", text, "zenn-api", author_summary(articles))
            article, body, topics = await self.zenn.article(target.slug)
            text = article_markdown(article, body, topics)
            return self._page(url, article.title, text, "zenn-api", article_summary(article))
        except ZennUnavailable as exc:
            log.info("Zenn JSON endpoints unavailable for %s (%s); using the browser", url, exc)
            return None

    async def _read_browser(self, url: str) -> CachedPage:
        rendered = await self.browser.render(url)
        found = extract(rendered.html, rendered.url, rendered.title)
        sections = [f"# {found.title or rendered.url}", f"URL: {rendered.url}"]
        sections += [f"{key}: {value}" for key, value in found.metadata.items()]
        if found.content:
            sections += ["", "## Main content", found.content]
        if found.items:
            sections += ["", f"## List items ({len(found.items)})", *found.items]
        if not found.content and not found.items:
            sections += ["", "(the page has no readable text)"]
        # Cached under the URL asked for (the final URL after redirects is in the text).
        return self._page(url, found.title or rendered.url, "\n".join(sections), "browser")

    def _page(self, url: str, title: str, text: str, source: str, summary: str = "") -> CachedPage:
        if len(text) > self.limits.max_chars:
            text = text[: self.limits.max_chars] + "\n\n(cut: the page is longer than the bot reads)"
        return CachedPage(url=url, title=title, text=text, source=source, summary=summary, fetched_at=time.time())

    def part(self, page: CachedPage, number: int) -> tuple[str, int]:
        """Part `number` (from 1) of the page, and how many parts there are."""
        parts = split_parts(page.text, self.limits.part_chars)
        number = min(max(number, 1), len(parts))
        return parts[number - 1], len(parts)

    def find(self, page: CachedPage, question: str) -> list[str]:
        """The passages of `page` that best match `question`, in page order."""
        passages = split_parts(page.text, self.limits.passage_chars)
        return best_passages(passages, question, self.limits.passages)


def split_parts(text: str, size: int) -> list[str]:
    """Cut text into pieces of at most `size` characters, at a paragraph end where one lies in
    the second half of the piece, else at a line end; always at a form feed (a page's own part
    break, e.g. after the top rows of an author's list)."""
    parts = [part for section in text.split("\f") for part in _split(section, size)]
    return [p for p in parts if p.strip()] or [""]


def _split(text: str, size: int) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    length = 0

    def flush() -> None:
        nonlocal current, length
        blank = max((i for i, line in enumerate(current) if not line.strip()), default=0)
        keep = current[blank:] if blank > len(current) // 2 else []
        head = current[:blank] if keep else current
        if "\n".join(head).strip():
            parts.append("\n".join(head).strip("\n"))
        current, length = keep, sum(len(line) + 1 for line in keep)

    for line in text.split("\n"):
        while len(line) > size:
            flush()
            parts.append(line[:size])
            line = line[size:]
        if length + len(line) + 1 > size and current:
            flush()
            if length + len(line) + 1 > size:
                flush()
        current.append(line)
        length += len(line) + 1
    rest = "\n".join(current).strip("\n")
    if rest.strip():
        parts.append(rest)
    return parts


_WORD = re.compile(r"[A-Za-z0-9_]+|[^\sA-Za-z0-9_]")
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uf900-\ufaff]")


def terms(text: str) -> list[str]:
    """Search terms: lower-cased words, and character bigrams for Japanese and Chinese."""
    tokens = _WORD.findall(text.lower())
    out = [t for t in tokens if len(t) > 1 or _CJK.match(t)]
    cjk = [t for t in tokens if _CJK.match(t)]
    out += [a + b for a, b in zip(cjk, cjk[1:], strict=False)]
    return out


def best_passages(passages: list[str], question: str, k: int) -> list[str]:
    query = set(terms(question))
    if not query:
        return passages[:k]
    counted = [Counter(terms(p)) for p in passages]
    document_frequency = Counter(t for c in counted for t in query if c[t])
    n = len(passages)
    scores = []
    for index, counts in enumerate(counted):
        score = sum((1 + math.log(counts[t])) * math.log(1 + n / document_frequency[t])
                    for t in query if counts[t])
        scores.append((score, index))
    best = sorted(i for score, i in sorted(scores, reverse=True)[:k] if score > 0)
    return [passages[i] for i in best]
