"""The page reader behind the agent's tools: URL → compact Markdown, cached, in parts, searchable.

Zenn URLs are read from Zenn's JSON endpoints when they answer. Other pages (and Zenn when the
endpoints fail) are read from the HTML the server sends when that HTML already holds the
content, else with the browser, which also presses "load more" and scrolls lists to their end.
Every read is stored in the page cache shared by all threads (and kept in memory, so a cached
read costs microseconds); concurrent reads of one URL share one fetch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import threading
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, replace
from typing import Protocol
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx
import lxml.html
from lxml import etree

from agent.browser import BrowserPool, Document, PageLoadError, RenderedPage
from agent.charset import decode_html
from agent.deadline import GRACE, Deadline
from agent.extract import Extracted, extract, page_view, warm_up
from agent.limits import Limit
from agent.proxy import BLOCKED_HEADER
from agent.types import CachedPage
from agent.urlguard import BlockedUrl, UrlPolicy, escape_url
from agent.zenn import (ZennClient, ZennUnavailable, article_markdown, article_summary, author_markdown,
                        author_summary)
from agent.zenn_research import ZennResearch, book_markdown, chapter_markdown, scrap_markdown

log = logging.getLogger(__name__)


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
    memory_pages: int = 128  # pages also kept in memory (the SQLite cache keeps them all)
    max_bytes: int = 8_000_000  # of the HTML a server sends
    timeout: float = 20.0  # seconds for the whole read (JSON, server HTML, browser, lists); see agent.deadline


HTML_HEADERS = {"Accept": "text/html,application/xhtml+xml;q=0.9,*/*;q=0.5",
                "Accept-Language": "ja,en;q=0.8",
                "User-Agent": "Mozilla/5.0 (compatible; zennbot/0.1)"}
MAX_REDIRECTS = 5
PROXY_OVERHEAD = 65_536  # bytes of a response's head and chunk framing, at most, that the proxy's byte limit counts
MIN_SERVER_TEXT = 800  # characters of main text for the server's HTML to count as holding the page
MIN_PARTIAL_TEXT = 200  # characters of main text for a page cut short to be worth reading
LONG_SERVER_TEXT = 3000  # past this much text, a placeholder or <noscript> is for an embed or widget
BROWSER_PATIENCE = 5.0  # seconds the browser may take to load a page whose server HTML has text or a list
_LOADING = re.compile(r">\s*(?:loading|読み込み中|ロード中|now loading)\s*[.…]*\s*<", re.I)
_APP_ROOT = re.compile(r"<div[^>]+id=[\"']?(?:root|app|__next|__nuxt|___gatsby|svelte)[\"']?[^>]*>\s*</div>", re.I)
_NOSCRIPT_JS = re.compile(r"<noscript[^>]*>(?:(?!</noscript>).){0,500}?(?:enable javascript|javascript is "
                          r"(?:required|disabled)|requires javascript|javascriptを有効|javascriptが無効)", re.I | re.S)
_LOAD_MORE = re.compile(r">\s*(?:load more|show more|see more|view more|もっと見る|もっと読み込む|もっと表示|"
                        r"さらに表示|さらに読み込む|続きを読み込む)\s*[.…▼]*\s*<", re.I)


def is_list_page(found: Extracted) -> bool:
    """Whether the page is a list (its items hold more text than its main content)."""
    return len(found.items) >= 5 and sum(map(len, found.items)) > len(found.content)


def browser_needed(html: str, found: Extracted) -> str | None:
    """Why the server's HTML may not hold the page a browser shows (None: it does). Evidence from
    the HTML: a "load more" control, a list longer than the text that scripts may grow, little
    main text, or, unless the text is long (then they belong to embeds and widgets), a loading
    placeholder, an empty app root or a <noscript> asking for JavaScript."""
    text = len(found.content)
    if _LOAD_MORE.search(html):
        return "a 'load more' control"
    if is_list_page(found) and "<script" in html.lower():
        return "a list that scripts may grow"
    if text < MIN_SERVER_TEXT and len(found.items) < 5:
        return f"only {text} characters of text"
    if text < LONG_SERVER_TEXT:
        for pattern, what in ((_LOADING, "a loading placeholder"), (_APP_ROOT, "an empty app root"),
                              (_NOSCRIPT_JS, "a <noscript> asking for JavaScript")):
            if pattern.search(html):
                return what
    return None


class PageReader:
    def __init__(self, browser: BrowserPool, zenn: ZennClient, cache: PageCache, policy: UrlPolicy,
                 limits: PageLimits = PageLimits(), http: httpx.AsyncClient | None = None,
                 fetches: Limit | None = None) -> None:
        """`http` fetches the server's HTML (through the guard proxy); None: the browser only.
        `fetches` bounds those fetches at once."""
        self.browser = browser
        self.zenn = zenn
        self.cache = cache
        self.policy = policy
        self.limits = limits
        self.http = http
        self.fetches = fetches or Limit("page fetches", 16)
        self._memory: OrderedDict[str, CachedPage] = OrderedDict()
        self._loading: dict[str, asyncio.Future[CachedPage]] = {}
        self._warming: asyncio.Future[None] | None = None

    def start_warm_up(self) -> None:
        """Run the extractor's one-time start-up (`agent.extract.warm_up`) in a thread now. A
        read waits for what is left of it before its deadline starts: like starting the browser,
        it is the bot's time, not the page's. The thread is a daemon: a process that is done
        (`zennbot ask` without a page to read) exits without waiting for it."""
        loop = asyncio.get_running_loop()
        warming: asyncio.Future[None] = loop.create_future()

        def ended() -> None:
            if not warming.done():
                warming.set_result(None)

        def work() -> None:
            try:
                warm_up()
            except Exception:  # a failed warm-up only costs the first read its time
                log.exception("the extractor's warm-up failed")
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(ended)

        threading.Thread(target=work, name="extractor warm-up", daemon=True).start()
        self._warming = warming

    def close(self) -> None:
        """Stop waiting for the warm-up (its thread ends by itself)."""
        if self._warming is not None:
            self._warming.cancel()

    async def _extract(self, html: str, url: str, deadline: Deadline, title: str = "") -> Extracted:
        """`extract` in a worker thread (parsing a big page takes long enough to stall other
        chats), given until `GRACE` after the deadline."""
        try:
            async with asyncio.timeout(deadline.left() + GRACE):
                return await asyncio.to_thread(extract, html, url, title)
        except TimeoutError:
            raise PageLoadError(f"the page is too large to read within {deadline.seconds:g} s", url) from None

    async def read(self, url: str) -> CachedPage:
        """The page at `url`, from the cache when fresh. Raises `BlockedUrl` or `PageLoadError`.

        Concurrent reads of one URL share one fetch; a caller that is cancelled does not cancel
        the fetch the others wait for."""
        url = url.strip()
        self.policy.check_url(url)  # the URL's form and the allowlist, even for a cached page
        page = self._memory.get(url)
        if page is not None and time.time() - page.fetched_at <= self.limits.cache_ttl:
            self._memory.move_to_end(url)
            return page
        loading = self._loading.get(url)
        if loading is None:
            loading = asyncio.ensure_future(self._load(url))
            self._loading[url] = loading
            loading.add_done_callback(lambda done: self._loaded(url, done))
        return await asyncio.shield(loading)

    def _loaded(self, url: str, done: asyncio.Future[CachedPage]) -> None:
        self._loading.pop(url, None)
        if not done.cancelled() and done.exception() is None:  # also marks the error as seen
            self._remember(done.result())

    def _remember(self, page: CachedPage) -> None:
        self._memory[page.url] = page
        self._memory.move_to_end(page.url)
        while len(self._memory) > self.limits.memory_pages:
            self._memory.popitem(last=False)

    async def _load(self, url: str) -> CachedPage:
        cached = await self.cache.get_page(url, self.limits.cache_ttl)
        if cached is not None:
            return cached
        if self._warming is not None:
            await asyncio.wait([self._warming])  # shielded; a failed warm-up only costs time
        deadline = Deadline.after(self.limits.timeout)
        resolving = deadline.timeout()
        try:
            async with resolving:
                await self.policy.check(url)  # names resolved only before a fetch (the proxy checks again)
        except TimeoutError:
            if not resolving.expired():
                raise
            raise PageLoadError(deadline.missed, url) from None
        page = await self._read_zenn(url, deadline) or await self._read_page(url, deadline)
        await self.cache.put_page(page)
        return page

    async def _read_zenn(self, url: str, deadline: Deadline) -> CachedPage | None:
        target = self.zenn.classify(url)
        if target is None:
            return None
        limit = deadline.timeout()
        try:
            async with limit:
                if target.kind == "author":
                    articles = await self.zenn.author_articles(target.username)
                    text = author_markdown(target.username, self.zenn.base_url, articles)
                    return self._page(url, f"{target.username} (Zenn)", text, "zenn-api", author_summary(articles))
                if target.kind in ("book", "chapter", "scrap"):
                    research = ZennResearch(self.zenn.http)
                    if target.kind == "book":
                        title, text, summary = await book_markdown(research, target.slug)
                    elif target.kind == "chapter":  # a paid one is never fetched: the text says so
                        title, text, summary = await chapter_markdown(research, target.slug, target.chapter, url)
                    else:
                        title, text, summary = await scrap_markdown(research, target.slug)
                    return self._page(url, title, text, "zenn-api", summary)
                article, body, topics = await self.zenn.article(target.slug)
                text = article_markdown(article, body, topics)
                return self._page(url, article.title, text, "zenn-api", article_summary(article))
        except ZennUnavailable as exc:
            log.info("Zenn JSON endpoints unavailable for %s (%s); using the browser", url, exc)
            return None
        except TimeoutError:
            if not limit.expired():
                raise
            raise PageLoadError(deadline.missed, url) from None

    async def _read_page(self, url: str, deadline: Deadline) -> CachedPage:
        if self.zenn.is_zenn(url):  # Zenn's own pages wait their turn with its JSON requests
            waiting = time.monotonic()
            async with self.zenn.http.turn():  # bounded by the client's own `max_wait`
                deadline = deadline.later(time.monotonic() - waiting)  # the bot's time, not the page's
                rendered, found, source = await self._render(url, deadline)
        else:
            rendered, found, source = await self._render(url, deadline)
        if is_list_page(found) and not rendered.bound and not rendered.cut:
            rendered, found = await self._follow_next_pages(rendered, found, deadline)
        return self._view(url, rendered, found, source)

    async def _render(self, url: str, deadline: Deadline) -> tuple[RenderedPage, Extracted, str]:
        """The page from the HTML its server sends when that holds the content (see
        `browser_needed`), else from the browser (given that HTML, so it is fetched once).
        A body cut short (by the deadline or the byte limit) is read as far as it came.
        Raises `BlockedUrl` or `PageLoadError`."""
        document = None
        if self.http is not None:
            async with self.fetches.hold():
                document = await self._fetch_html(url, deadline)
        if document is None:
            rendered = await self.browser.render(url, deadline=deadline)
            return rendered, await self._extract(rendered.html, rendered.url, deadline, rendered.title), "browser"
        html = decode_html(document.body, document.content_type)
        found = await self._extract(html, document.url, deadline)
        if document.cut:
            if len(found.content) < MIN_PARTIAL_TEXT and len(found.items) < 5:
                raise PageLoadError(deadline.missed if deadline.expired else f"the page {document.cut}", url)
            log.info("reading %s as far as it came: it %s", url, document.cut)
            return RenderedPage(document.url, found.title, html, cut=document.cut), found, "server-html"
        reason = browser_needed(html, found)
        if reason is None:
            return RenderedPage(document.url, found.title, html), found, "server-html"
        log.info("reading %s with the browser: its HTML has %s", url, reason)
        # When the server's HTML has text or a list, scripts from slow hosts may hold the browser
        # only so long.
        patience = BROWSER_PATIENCE if len(found.content) >= MIN_SERVER_TEXT or len(found.items) >= 5 else None
        # The browser decodes the text as the reader did: re-encoded as UTF-8, and told so.
        kind = document.content_type.split(";")[0].strip()
        given = Document(document.url, html.encode("utf-8"), f"{kind}; charset=utf-8")
        try:
            rendered = await self.browser.render(document.url, given, timeout=patience, deadline=deadline)
        except PageLoadError as exc:
            if not found.content and not found.items:
                raise
            # The server's HTML has text, and is better than nothing.
            log.info("the browser could not read %s (%s); using its server's HTML", url, exc)
            return RenderedPage(document.url, found.title, html), found, "server-html"
        return rendered, await self._extract(rendered.html, rendered.url, deadline, rendered.title), "browser"

    async def _follow_next_pages(self, first: RenderedPage, found: Extracted,
                                 deadline: Deadline) -> tuple[RenderedPage, Extracted]:
        """A list continued on further pages (rel=next, or ?page=N+1 on the same path): their
        items appended, within the list bounds and the read's deadline. Returns the page with its
        count of loads and the bound that stopped it, and the extraction with every item."""
        bounds = self.browser.limits.lists
        stop_at = min(time.monotonic() + bounds.max_seconds, deadline.at)
        seconds = bounds.max_seconds if stop_at < deadline.at else deadline.seconds
        items, seen = list(found.items), set(found.items)
        loads, bound = first.loads, ""
        current = first
        visited = {first.url}
        while (following := next_page_url(current.html, current.url)) and following not in visited:
            if len(items) >= bounds.max_items:
                bound = f"{bounds.max_items} items"
                break
            if loads >= bounds.max_loads or time.monotonic() >= stop_at:
                bound = f"{bounds.max_loads} loads" if loads >= bounds.max_loads else f"{seconds:g} s"
                break
            visited.add(following)
            try:
                self.policy.check_url(following)
                current, more, _ = await self._render(following, deadline)
            except (BlockedUrl, PageLoadError) as exc:
                log.info("the list's next page %s was not read: %s", following, exc)
                if deadline.expired:
                    bound = f"{deadline.seconds:g} s"
                break
            new = [item for item in more.items if item not in seen]
            if not new:
                break
            items += new
            seen.update(new)
            loads += 1
        return replace(first, loads=loads, bound=bound), replace(found, items=items)

    async def _fetch_html(self, url: str, deadline: Deadline) -> Document | None:
        """A 200 text/html answer for `url`, following redirects (each hop checked here for its
        form, by the proxy for its address); None for anything else. A body still arriving at the
        deadline, or past the byte limit, is returned as far as it came (`Document.cut` says so).
        Raises `BlockedUrl`, or `PageLoadError` when the redirects go in circles or nothing came
        in time."""
        assert self.http is not None
        current, visited = url, {url}
        arrived: tuple[str, str] | None = None  # the URL and Content-Type of a body arriving
        body = bytearray()
        limit = deadline.timeout()
        try:
            async with limit:
                for _ in range(MAX_REDIRECTS + 1):
                    async with self.http.stream("GET", current, headers=HTML_HEADERS) as response:
                        blocked = response.headers.get(BLOCKED_HEADER)
                        if blocked:
                            raise BlockedUrl(f"the page led to a refused address: {blocked}", current)
                        if response.is_redirect:
                            current = self._redirect(current, response.headers["location"], visited, url)
                            continue
                        kind = response.headers.get("content-type", "").split(";")[0].strip().lower()
                        if (response.status_code != 200 or kind not in ("text/html", "application/xhtml+xml")
                                or "attachment" in response.headers.get("content-disposition", "").lower()):
                            return None
                        arrived = (current, response.headers["content-type"])
                        async for chunk in response.aiter_bytes():
                            body += chunk
                            if len(body) > self.limits.max_bytes:
                                return Document(current, bytes(body[:self.limits.max_bytes]), arrived[1],
                                                self._dropped(self.limits.max_bytes))
                        return Document(current, bytes(body), arrived[1])
                raise PageLoadError(f"the page redirects more than {MAX_REDIRECTS} times", url)
        except (TimeoutError, httpx.TimeoutException) as exc:  # httpx's own timeouts are the page timeout too
            if isinstance(exc, TimeoutError) and not limit.expired():
                raise
            if arrived is None or not body:
                raise PageLoadError(deadline.missed, url) from None
            return Document(arrived[0], bytes(body), arrived[1],
                            f"did not finish loading within {deadline.seconds:g} s")
        except httpx.ProxyError as exc:  # a refused HTTPS tunnel
            refused = self.browser.proxy.refusal_for({urlsplit(current).hostname or ""})
            if refused:
                raise BlockedUrl(f"the page led to a refused address: {refused}", current) from exc
            return None
        except (httpx.HTTPError, KeyError) as exc:
            if arrived is not None and body:  # the connection dropped during the body
                return Document(arrived[0], bytes(body), arrived[1], self._dropped(len(body)))
            log.info("server HTML of %s not read (%r); using the browser", url, exc)
            return None

    def _dropped(self, received: int) -> str:
        """Why a body ended early: the guard proxy cuts a response at the byte limit (counting its
        head and chunk framing too, so a little before the body reaches it), or the server."""
        if received >= self.limits.max_bytes - PROXY_OVERHEAD:
            return f"is larger than the {self.limits.max_bytes:,} bytes the bot reads"
        return f"was cut off by its server after {received:,} bytes"

    def _redirect(self, current: str, location: str, visited: set[str], url: str) -> str:
        """The next hop of a redirect (encoded as a browser would), checked for its form."""
        following = escape_url(urljoin(current, location.strip()))
        if following in visited:
            raise PageLoadError("the page redirects in a loop", url)
        visited.add(following)
        try:
            self.policy.check_url(following)
        except BlockedUrl as exc:
            raise BlockedUrl(f"the page led to a refused address: {exc.reason}", following) from None
        return following

    def _view(self, url: str, rendered: RenderedPage, found: Extracted, source: str) -> CachedPage:
        text = page_view(found, rendered.url, list_note(len(found.items), rendered) if found.items else "")
        if rendered.cut:
            text += f"\n\n(cut: the page {rendered.cut}; this is what arrived)"
        # Cached under the URL asked for (the final URL after redirects is in the text).
        return self._page(url, found.title or rendered.url, text, source)

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


def list_note(count: int, rendered: RenderedPage) -> str:
    """One line on how complete the list is: read to its end, or stopped at a bound."""
    loads = {0: "", 1: " after 1 load"}.get(rendered.loads, f" after {rendered.loads} loads")
    if rendered.bound:
        return (f"({count} items; stopped at a bound ({rendered.bound}){loads}: the list continues "
                f"on the site)")
    return f"({count} items: the whole list{loads})"


_PAGE_PARAM = ("page", "p", "pg")


def next_page_url(html: str, base_url: str) -> str | None:
    """Where a list continues: a rel=next link, else a link to the same path whose `page`
    parameter is one more than this page's (1 when absent). Only on the same host."""
    try:
        root = lxml.html.fromstring(html)
    except (etree.ParserError, ValueError):
        return None
    here = urlsplit(base_url)
    candidates = [el.get("href") for el in root.iter("link", "a")
                  if "next" in (el.get("rel") or "").lower().split() and el.get("href")]
    query = parse_qs(here.query)
    param = next((name for name in _PAGE_PARAM if name in query), "page")
    try:
        wanted = str(int(query.get(param, ["1"])[0]) + 1)
    except ValueError:
        wanted = None
    if wanted:
        for anchor in root.iter("a"):
            href = anchor.get("href")
            if href:
                target = urlsplit(urljoin(base_url, href))
                if target.path == here.path and parse_qs(target.query).get(param) == [wanted]:
                    candidates.append(href)
    for href in candidates:
        target = urljoin(base_url, href.strip())
        parts = urlsplit(target)
        if (parts.scheme, parts.netloc) == (here.scheme, here.netloc) and target.split("#")[0] != base_url:
            return escape_url(target.split("#")[0])  # as a browser requests a link written with spaces
    return None


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
