"""The agent's `zenn` tool: Zenn questions without a link (lists, trends, search, users' books
and scraps), answered as ranked rows from Zenn's JSON. Details (an article, book, chapter or
scrap) are then read with `read_page` on a row's URL.

One tool with enums rather than several: its schema is sent with every model call. Its output
is page data (titles are written by Zenn's users), so it reaches the model fenced, and leaves a
one-line note in the thread; the rows the answer named stay in that note (see `agent.tools`).
A per-question cap bounds the list pages fetched; when the JSON fails, the topic, user or
publication page is read in the browser instead (never the search page: robots.txt).
"""

from __future__ import annotations

import logging
from typing import Literal
from urllib.parse import quote

from langchain_core.tools import BaseTool, StructuredTool
from pydantic import BaseModel

from agent.browser import PageLoadError
from agent.pages import PageReader
from agent.types import Source
from agent.tools import RunContext, _one_line, current_run, fence
from agent.urlguard import BlockedUrl
from agent.zenn_client import ZennUnavailable
from agent.zenn_research import ROWS_SHOWN, Listing, Row, ZennResearch, rank, topic_slug

log = logging.getLogger(__name__)

ALL_PAGES = 50  # list pages a question that asks for "all" may fetch (48 items each)
ALL_ROWS = 100  # rows shown then

Kind = Literal["topic", "user", "publication", "all_zenn", "search_articles", "search_books", "search_scraps",
               "user_books", "user_scraps"]
Order = Literal["latest", "trend_today", "trend_week", "most_liked", "most_comments"]


class ZennArgs(BaseModel):
    list: Kind
    name_or_words: str = ""
    order: Order = "latest"
    type: Literal["all", "tech", "idea"] = "all"
    all_pages: bool = False


DESCRIPTION = ("Zenn without a link: ranked rows with exact counts and URLs. name_or_words: a topic, user or "
               "publication as written, or search words. search_* and all_pages only if the user asks.")


def build_zenn_tool(reader: PageReader, max_pages: int = 5) -> BaseTool:
    research = ZennResearch(reader.zenn.http)

    async def zenn(list: str, name_or_words: str = "", order: str = "latest", type: str = "all",
                   all_pages: bool = False) -> tuple[str, str]:
        run = current_run.get(None) or RunContext()
        name, every_page = name_or_words.strip(), all_pages
        note = f"[zenn {list} “{_one_line(name, 60)}” {order}"
        await run.progress(f"asking Zenn: {list.replace('_', ' ')} {name} ({order})".strip())
        budget = (ALL_PAGES if every_page else max_pages) - run.zenn_pages
        if budget <= 0:
            return (f"ERROR: this question already fetched {run.zenn_pages} Zenn list pages, the limit. "
                    "Answer from what you have and say the list was cut.", note + ": page limit]")
        try:
            listing, page_url = await _listing(research, list, name, order, type, budget, run)
        except ValueError:
            return ("ERROR: this list needs `name_or_words` (a topic, user or publication, or search words).",
                    note + ": no name]")
        except ZennUnavailable as exc:
            return await _fallback(reader, research, run, list, name, order, note, exc)
        if page_url:
            run.sources.append(Source(page_url, listing.heading, ""))
        shown = ALL_ROWS if every_page else ROWS_SHOWN
        return fence(listing.markdown(shown)), f"{note}: {len(listing.rows)} rows]"

    return StructuredTool.from_function(coroutine=zenn, name="zenn", description=DESCRIPTION,
                                        args_schema=ZennArgs, response_format="content_and_artifact")


async def _listing(research: ZennResearch, kind: str, name: str, order: str, article_type: str,
                   budget: int, run: RunContext) -> tuple[Listing, str]:
    """The listing, and the Zenn page it stands for (a source for the answer), or ""."""
    base = research.base_url
    filters = {} if article_type == "all" else {"article_type": article_type}
    what = {"latest": "latest", "trend_today": "today's trend", "trend_week": "this week's trend",
            "most_liked": "most liked", "most_comments": "most comments"}[order]
    if kind in ("search_articles", "search_books", "search_scraps") or (kind == "topic" and not name):
        source = kind.removeprefix("search_") if kind.startswith("search_") else "articles"
        return await _search(research, name, source, order, run), ""
    if kind == "topic":
        topic = await research.topic(name)
        if topic is None:
            found = await _search(research, name, "articles", order, run)
            return Listing(found.heading, found.rows, found.total_note,
                           f"No Zenn topic 「{_one_line(name, 40)}」: these are keyword search results instead "
                           f"(tell the user)."), ""
        slug, display = topic
        rows, pages, more = await research.articles({"topicname": slug, **filters}, order, budget)
        run.zenn_pages += pages
        return (Listing(f"Zenn topic {display} ({slug}): {what}", rows, _total(rows, pages, more)),
                f"{base}/topics/{quote(slug)}")
    if kind in ("user", "publication", "all_zenn"):
        if kind != "all_zenn" and not name:
            raise ValueError("name")
        params = ({"username": name} if kind == "user" else {"publication_name": name} if kind == "publication"
                  else {})
        heading = {"user": f"Zenn user {name}", "publication": f"Zenn publication {name}",
                   "all_zenn": "All of Zenn"}[kind]
        if kind == "user":
            heading = _profile(await research.user(name), heading)
        rows, pages, more = await research.articles({**params, **filters}, order, budget)
        run.zenn_pages += pages
        page = {"user": f"{base}/{quote(name)}", "publication": f"{base}/p/{quote(name)}", "all_zenn": base}[kind]
        return Listing(f"{heading}: articles, {what}", rows, _total(rows, pages, more)), page
    if kind == "user_books":
        rows = await research.books(name)
        run.zenn_pages += 1
        return Listing(f"Zenn user {name}: books (read_page on a book URL lists its chapters)", rows,
                       f"{len(rows)} books"), f"{base}/{quote(name)}?tab=books"
    if kind == "user_scraps":
        rows = await research.scraps(name)
        run.zenn_pages += 1
        return Listing(f"Zenn user {name}: scraps", rank_scraps(rows, order), f"{len(rows)} scraps"), \
            f"{base}/{quote(name)}?tab=scraps"
    raise ValueError(kind)


def rank_scraps(rows: list[Row], order: str) -> list[Row]:
    """Scraps have no trend: a trend order lists them newest first."""
    return rank(rows, order if order in ("most_liked", "most_comments", "latest") else "latest")


async def _search(research: ZennResearch, query: str, source: str, order: str, run: RunContext) -> Listing:
    if not query:
        raise ValueError("name")
    rows, more = await research.search(query, source, order)
    run.zenn_pages += 1
    return Listing(f"Zenn search “{_one_line(query, 60)}” in {source} ({order})", rows,
                   f"{len(rows)}{'+' if more else ''} hits on the first page")


def _total(rows: list[Row], pages: int, more: bool) -> str:
    return f"{len(rows)} fetched ({pages} page{'s' if pages > 1 else ''}{', the list goes on' if more else ''})"


def _profile(user: dict, heading: str) -> str:
    counts = [f"{key.removesuffix('_count').replace('_', ' ')}: {user[key]}" for key in
              ("articles_count", "books_count", "scraps_count", "total_liked_count", "follower_count")
              if isinstance(user.get(key), int)]
    name = _one_line(str(user.get("name") or ""), 40)
    return f"{heading} ({name}; {', '.join(counts)})" if counts else heading


async def _fallback(reader: PageReader, research: ZennResearch, run: RunContext, kind: str, name: str,
                    order: str, note: str, exc: ZennUnavailable) -> tuple[str, str]:
    """The HTML page of the list, read in the browser, when the JSON fails. Search has none."""
    base = research.base_url
    page_order = {"most_liked": "alltime", "latest": "latest"}.get(order, "daily")
    url = {"topic": f"{base}/topics/{quote(topic_slug(name))}?order={page_order}", "user": f"{base}/{quote(name)}",
           "publication": f"{base}/p/{quote(name)}", "all_zenn": f"{base}/",
           "user_books": f"{base}/{quote(name)}?tab=books", "user_scraps": f"{base}/{quote(name)}?tab=scraps"}.get(kind)
    log.info("Zenn JSON failed for %s %s (%s)", kind, name, exc)
    if url is None:
        return ("ERROR: Zenn's search is not answering, and its search page may not be read by bots "
                "(robots.txt). Tell the user the search failed.", note + ": search failed]")
    if url not in run.urls_opened:
        if len(run.urls_opened) >= run.max_urls:
            return f"ERROR: this question already read {run.max_urls} pages.", note + ": page limit]"
        run.urls_opened.append(url)
    await run.progress(f"reading {url}")
    try:
        page = await reader.read(url)
    except (BlockedUrl, PageLoadError) as exc2:
        return f"ERROR: Zenn is not answering ({exc2}). Tell the user.", note + ": failed]"
    run.sources.append(page.as_source())
    text, _ = reader.part(page, 1)
    return (f"Zenn's data is not answering; its page {url} instead (counts may be rough):\n" + fence(text),
            f"{note}: read {url}]")
