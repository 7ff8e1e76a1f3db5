"""Reading pages with real Chromium from the Zenn replica, and the guard inside the browser."""

from __future__ import annotations

import asyncio
import re
from contextlib import asynccontextmanager

import pytest
import pytest_asyncio
from aiohttp import web
from langchain_core.messages import AIMessage, ToolMessage
from playwright.async_api import async_playwright

import agent.browser
from agent.browser import PageLoadError
from agent.tools import build_tools
from agent.urlguard import BlockedUrl
from bench.replica import LONG_AUTHOR, LONG_AUTHOR_COUNT, LONG_AUTHOR_TOP, ReplicaOptions, ReplicaServer
from bench.scripted_model import current_turn, tool_call
from bot.runtime import open_browsing
from tests.fakes.web import LIST_LENGTH, SENT, CountingServer, hostile_routes, paged_routes, reading_routes
from tests.helpers import TRUSTED_REPLICA, URL, make_settings, running

DEEPSEEK = "/asap/articles/34237ad87f8511"
pytestmark = pytest.mark.asyncio(loop_scope="module")


class _OneDriver:
    """`async_playwright()` for this module's pools: they share one Playwright driver (a node
    process, about 0.7 CPU-s to start) and each launches its own Chromium on it, as on a
    driver of its own; their `stop()` leaves it to the module."""

    def __init__(self, playwright) -> None:
        self.chromium = playwright.chromium

    async def start(self) -> _OneDriver:
        return self

    async def stop(self) -> None:
        return None


@pytest_asyncio.fixture(scope="module", loop_scope="module", autouse=True)
async def one_driver():
    async with async_playwright() as playwright:
        shared = _OneDriver(playwright)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(agent.browser, "async_playwright", lambda: shared)
            yield


@asynccontextmanager
async def reading(tmp_path, zenn, **settings):
    """The page reader (store, browser, proxy) over the replica, closed afterwards."""
    browsing = await open_browsing(make_settings(tmp_path, zenn.url, **settings), TRUSTED_REPLICA)
    try:
        yield browsing
    finally:
        await browsing.close()


@asynccontextmanager
async def hostile_site():
    """The replica with the hostile pages, and the "private" server they aim at."""
    async with CountingServer() as private, ReplicaServer(
            ReplicaOptions(extra_routes=hostile_routes(private.url))) as zenn:
        yield private, zenn


async def test_profile_from_the_api_ranks_all_72_articles(tmp_path):
    async with ReplicaServer() as zenn:
        async with reading(tmp_path, zenn) as browsing:
            page = await browsing.reader.read(zenn.url + "/asap")
    rows = re.findall(r"^(\d+) \| (\d+) \| (\d+) \| [\d-]+ \| (.+?) \| (\S+/asap/articles/\w+)$", page.text, re.M)
    assert len(rows) == 72 and "Articles: 72" in page.text
    assert [int(r[1]) for r in rows[:4]] == [921, 104, 87, 79]
    assert "DeepSeek-R1の論文読んだ？" in rows[0][3] and "VAEって結局何者なの？" in rows[1][3]
    assert page.source == "zenn-api"


async def test_profile_in_the_browser_waits_for_the_list(tmp_path):
    """The JSON endpoints fail for the bot, so the browser reads the page, whose list appears
    only after a timer and a fetch: every article must be there, with its likes."""
    async with ReplicaServer(ReplicaOptions(api_broken=True, list_delay_ms=1200)) as zenn:
        async with reading(tmp_path, zenn) as browsing:
            page = await browsing.reader.read(zenn.url + "/asap")
    assert page.source == "browser"
    items = [line for line in page.text.splitlines() if line.startswith("- ") and "/asap/articles/" in line]
    assert len(items) == 72
    deepseek = next(line for line in items if "DeepSeek-R1の論文読んだ" in line)
    assert re.search(r"\b921\b", deepseek) and deepseek.endswith(DEEPSEEK + ">")


async def test_article_in_the_browser_has_body_without_chrome_or_comments(tmp_path):
    async with ReplicaServer(ReplicaOptions(api_broken=True)) as zenn:
        async with reading(tmp_path, zenn) as browsing:
            page = await browsing.reader.read(zenn.url + DEEPSEEK)
    assert "DeepSeek-R1の論文読んだ？【勉強になるよ】" in page.text
    assert "タイトル通りDeepSeek-R1の論文を読んだ" in page.text
    assert "GRPO" in page.text
    for noise in ("利用規約", "プライバシーポリシー", "あなたへのおすすめ記事", "返信を追加", "バッジを贈る"):
        assert noise not in page.text, noise


async def test_article_from_the_api_has_counts_and_body(tmp_path):
    async with ReplicaServer() as zenn:
        async with reading(tmp_path, zenn) as browsing:
            page = await browsing.reader.read(zenn.url + DEEPSEEK)
            again = await browsing.reader.read(zenn.url + DEEPSEEK)
        api_hits = [h for h in zenn.hits if h.startswith("/api/articles/")]
    assert "likes: 921 · bookmarks: 344" in page.text
    assert "タイトル通りDeepSeek-R1の論文を読んだ" in page.text
    assert again == page and len(api_hits) == 1  # the second read came from the cache


async def test_parts_and_passages(tmp_path):
    async with ReplicaServer() as zenn:
        async with reading(tmp_path, zenn, zennbot_page_part_chars=3000) as browsing:
            [read_page] = build_tools(browsing.reader)
            first = await read_page.ainvoke({"url": zenn.url + DEEPSEEK})
            second = await read_page.ainvoke({"url": zenn.url + DEEPSEEK, "part": 2})
            found = await read_page.ainvoke({"url": zenn.url + DEEPSEEK,
                                             "question": "GRPO 状態価値モデル 計算量"})
    count = int(re.search(r"Part 1 of (\d+)", first)[1])
    assert count > 3 and "part=2" in first and "Part 2 of" in second
    assert "状態価値モデル" in found and len(found) < 4000


async def test_unknown_article_is_a_clear_error(tmp_path):
    async with ReplicaServer() as zenn:
        async with reading(tmp_path, zenn) as browsing:
            read_page = build_tools(browsing.reader)[0]
            result = await read_page.ainvoke({"url": zenn.url + "/asap/articles/doesnotexist"})
    assert "404" in result or "not found" in result.lower()


async def test_page_that_never_loads_times_out(tmp_path):
    async with hostile_site() as (private, zenn):
        async with reading(tmp_path, zenn, zennbot_page_timeout=2.0) as browsing:
            with pytest.raises(PageLoadError, match="did not load within 2 s"):
                await browsing.reader.read(zenn.url + "/hostile/never-loads")


@pytest.mark.parametrize("query", ["", "?tls=1"])
async def test_redirect_to_a_private_address_is_refused(tmp_path, query):
    async with hostile_site() as (private, zenn):
        async with reading(tmp_path, zenn) as browsing:
            with pytest.raises(BlockedUrl, match="refused address: that address points at the bot's own machine"):
                await browsing.reader.read(zenn.url + "/hostile/redirect" + query)
    assert private.hits == []


async def test_subresources_fetch_and_popups_to_private_addresses_are_refused(tmp_path):
    async with hostile_site() as (private, zenn):
        async with reading(tmp_path, zenn) as browsing:
            page = await browsing.reader.read(zenn.url + "/hostile/subresources")
    assert "Harmless page" in page.text
    assert "SECRET-INTERNAL-DATA" not in page.text
    assert private.hits == []


async def test_download_is_refused(tmp_path):
    async with hostile_site() as (private, zenn):
        async with reading(tmp_path, zenn) as browsing:
            with pytest.raises(BlockedUrl, match="download"):
                await browsing.reader.read(zenn.url + "/hostile/download")


async def test_browser_killed_mid_read_is_replaced(tmp_path):
    async with ReplicaServer() as zenn:
        async with reading(tmp_path, zenn) as browsing:
            first = await browsing.browser.render(zenn.url + DEEPSEEK)
            process = browsing.browser._browser  # noqa: SLF001  (the test kills the real process)
            await process.close()
            second = await browsing.browser.render(zenn.url + DEEPSEEK)
    assert first.title == second.title == "DeepSeek-R1の論文読んだ？【勉強になるよ】"


async def test_a_huge_page_is_cut_at_the_byte_limit(tmp_path):
    async with hostile_site() as (private, zenn):
        async with reading(tmp_path, zenn, zennbot_page_max_bytes=1_000_000, zennbot_page_max_chars=50_000) as browsing:
            try:
                page = await browsing.reader.read(zenn.url + "/hostile/huge")
            except PageLoadError as exc:  # Chromium may wait for the rest until the navigation timeout
                assert "did not load" in exc.reason or "could not" in exc.reason
                page = None
        sent = zenn.app[SENT]
    assert sent < 12_000_000  # the proxy cut the stream at 1 MB (plus socket buffers), not at 32 MiB
    assert page is None or len(page.text) <= 50_100


@asynccontextmanager
async def reading_site(**options):
    """The replica with the reading pages (tests/fakes/web.py) and their hit counts."""
    hits: dict[str, int] = {}
    async with ReplicaServer(ReplicaOptions(extra_routes=reading_routes(hits), **options)) as zenn:
        yield zenn, hits


def entries(text: str) -> list[int]:
    """The entry numbers in the view's list section."""
    section = text.split("\n## List items", 1)[1]
    return [int(n) for n in re.findall(r"^- Entry number (\d+) ", section, re.M)]


@pytest.mark.parametrize("path", ["/list/load-more", "/list/scroll"])
async def test_a_growing_list_is_read_to_its_end(tmp_path, path):
    async with reading_site() as (site, hits):
        async with reading(tmp_path, site) as browsing:
            page = await browsing.reader.read(site.url + path)
    assert page.source == "browser"
    assert entries(page.text) == list(range(1, LIST_LENGTH + 1))
    assert re.search(rf"## List items \({LIST_LENGTH}\)\n\({LIST_LENGTH} items: the whole list after \d+ loads?\)",
                     page.text)


async def test_an_endless_list_stops_at_a_bound_and_says_so(tmp_path):
    async with reading_site() as (site, hits):
        async with reading(tmp_path, site, zennbot_list_max_loads=3) as browsing:
            page = await browsing.reader.read(site.url + "/list/endless")
    assert entries(page.text) == list(range(1, 41))
    assert "(40 items; stopped at a bound (3 loads) after 3 loads: the list continues on the site)" in page.text


async def test_an_endless_list_stops_at_the_item_bound(tmp_path):
    async with reading_site() as (site, hits):
        async with reading(tmp_path, site, zennbot_list_max_items=25) as browsing:
            page = await browsing.reader.read(site.url + "/list/endless")
    assert entries(page.text) == list(range(1, 31))
    assert "stopped at a bound (25 items)" in page.text


async def test_long_author_with_a_load_more_button_is_read_whole(tmp_path):
    """Zenn's endpoints fail, the list is drawn late, 20 at a time behind 「もっと読み込む」, and
    the most liked articles are near its end: every one of the 130 must reach the view."""
    async with ReplicaServer(ReplicaOptions(api_broken=True, long_author=True, list_delay_ms=600)) as zenn:
        async with reading(tmp_path, zenn) as browsing:
            page = await browsing.reader.read(zenn.url + "/" + LONG_AUTHOR)
    assert page.source == "browser"
    lines = re.findall(rf"^- .*<{re.escape(zenn.url)}/{LONG_AUTHOR}/articles/\w+>$", page.text, re.M)
    assert len(lines) == len(set(lines)) == LONG_AUTHOR_COUNT
    for title, likes in LONG_AUTHOR_TOP.values():
        line = next(line for line in lines if title in line)
        assert re.search(rf"\b{likes}\b", line), line
    assert f"({LONG_AUTHOR_COUNT} items: the whole list after 6 loads)" in page.text


async def test_long_author_from_the_api_ranks_the_deep_articles_first(tmp_path):
    async with ReplicaServer(ReplicaOptions(long_author=True)) as zenn:
        async with reading(tmp_path, zenn) as browsing:
            page = await browsing.reader.read(zenn.url + "/" + LONG_AUTHOR)
    rows = re.findall(r"^(\d+) \| (\d+) \| \d+ \| [\d-]+ \| (.+?) \| ", page.text, re.M)
    assert len(rows) == LONG_AUTHOR_COUNT
    assert [(int(r[1]), r[2].split(" ", 1)[1]) for r in rows[:3]] == sorted(
        ((likes, title) for title, likes in LONG_AUTHOR_TOP.values()), reverse=True)


async def test_server_html_when_it_holds_the_text_else_the_browser(tmp_path):
    async with reading_site() as (site, hits):
        async with reading(tmp_path, site) as browsing:
            static = await browsing.reader.read(site.url + "/list/static")
            drawn = await browsing.reader.read(site.url + "/list/drawn")
    assert static.source == "server-html" and "Paragraph 15 of the static article" in static.text
    assert drawn.source == "browser" and "Drawn paragraph 11" in drawn.text
    assert hits == {"/list/static": 1, "/list/drawn": 1}  # the browser was given the HTML already fetched


async def test_concurrent_reads_share_one_fetch_and_cached_reads_come_from_memory(tmp_path):
    async with reading_site() as (site, hits):
        async with reading(tmp_path, site) as browsing:
            pages = await asyncio.gather(*(browsing.reader.read(site.url + "/list/load-more") for _ in range(30)))
            again = await browsing.reader.read(site.url + "/list/load-more")
    assert hits == {"/list/load-more": 1}
    assert all(p is pages[0] for p in pages) and again is pages[0]


async def test_a_burst_of_zenn_pages_waits_its_paced_turns_outside_the_page_deadline(tmp_path):
    """Zenn's own pages are read one paced request at a time; waiting for that turn is the bot's
    time, not the page's: the last of five pages, read a second apart, waits longer than the
    page timeout and is read all the same."""
    async with reading_site() as (site, hits):
        async with reading(tmp_path, site, zennbot_page_timeout=2.0, zenn_requests_per_second=1.0) as browsing:
            pages = await asyncio.gather(*(browsing.reader.read(f"{site.url}/list/static?n={n}") for n in range(5)))
    assert [p.source for p in pages] == ["server-html"] * 5 and hits == {"/list/static": 5}
    assert all(p.title == "A static article" for p in pages)


async def test_a_cancelled_reader_does_not_cancel_the_others(tmp_path):
    async with reading_site() as (site, hits):
        async with reading(tmp_path, site) as browsing:
            first = asyncio.create_task(browsing.reader.read(site.url + "/list/scroll"))
            second = asyncio.create_task(browsing.reader.read(site.url + "/list/scroll"))
            await asyncio.sleep(0.05)
            first.cancel()
            page = await second
    assert entries(page.text) == list(range(1, LIST_LENGTH + 1)) and hits == {"/list/scroll": 1}


async def test_a_burst_of_30_questions_fetches_the_page_once(tmp_path):
    """Thirty threads ask about one uncached page at the same moment, on one database."""
    async with reading_site() as (site, hits):
        settings = make_settings(tmp_path, site.url, zennbot_max_concurrent_runs=30,
                                 zennbot_user_rate_limit=1000, zennbot_thread_rate_limit=1000)
        async with running(settings) as (runtime, model):
            replies = await asyncio.gather(*(
                runtime.service.handle(f"burst:{n}", f"user{n}", f"{site.url}/list/load-more この一覧は何件？")
                for n in range(30)))
        page_hits = [h for h in site.hits if h.startswith("/list/load-more")]
    assert all(r.ok for r in replies), [r.text for r in replies if not r.ok]
    assert all("A load-more list" in r.text for r in replies)
    assert page_hits == ["/list/load-more"] and hits == {"/list/load-more": 1}


@pytest.mark.parametrize("path", ["/paged/rel", "/paged/numbered"])
async def test_a_list_continued_on_next_pages_is_read_to_its_end(tmp_path, path):
    async with ReplicaServer(ReplicaOptions(extra_routes=paged_routes())) as site:
        async with reading(tmp_path, site) as browsing:
            page = await browsing.reader.read(site.url + path)
        pages = [h for h in site.hits if h.startswith(path)]
    assert entries(page.text) == list(range(1, 51))
    assert "(50 items: the whole list after 4 loads)" in page.text
    assert pages == [path, f"{path}?page=2", f"{path}?page=3", f"{path}?page=4", f"{path}?page=5"]


async def test_next_pages_stop_at_the_load_bound(tmp_path):
    async with ReplicaServer(ReplicaOptions(extra_routes=paged_routes())) as site:
        async with reading(tmp_path, site, zennbot_list_max_loads=2) as browsing:
            page = await browsing.reader.read(site.url + "/paged/rel")
    assert entries(page.text) == list(range(1, 31))
    assert "(30 items; stopped at a bound (2 loads) after 2 loads: the list continues on the site)" in page.text


async def test_read_benchmark_times_both_readers_on_the_local_pages():
    from bench.reads import LOCAL_PAGES, run_reads

    result = await run_reads(corpus_pages=0, rounds=1, dead_host_delay=0.5)
    reads = {r["page"]: r for r in result["reads"]}
    assert set(reads) == {p.path for p in LOCAL_PAGES} and "corpus" not in result
    assert reads["/bench/static"]["source"] == "server-html" and reads["/bench/drawn"]["source"] == "browser"
    assert reads["/bench/drawn"]["bot_saw"] and reads["/asap"]["bot_saw"]
    assert reads["/asap"]["bare_saw"] is False  # a bare goto reads before the list is drawn
    assert all(r["bot_ms"] > 0 and r["bare_ms"] > 0 for r in reads.values())
    assert result["local"]["pages"] == len(LOCAL_PAGES) and result["cached_read_us"]["median"] > 0


def read_every_part(messages):
    """A model that reads the message's URL part by part to the end, then answers."""
    _, human, since = current_turn(messages)
    results = [m for m in since if isinstance(m, ToolMessage)]
    url = URL.findall(str(human.content))[0]
    if not results:
        return tool_call("read_page", url=url)
    part = re.search(r"Part (\d+) of (\d+)", str(results[-1].content))
    if part and int(part[1]) < int(part[2]):
        return tool_call("read_page", url=url, part=int(part[1]) + 1)
    return AIMessage(content=f"読みました ({len(results)} parts)")


async def test_a_conversation_about_a_long_author_gets_every_fact(tmp_path):
    """Zenn's endpoints fail; the author has 130 articles, the most liked deep in a list drawn
    late behind 「もっと読み込む」. Each question's facts (titles with their likes) reach the model."""
    async with ReplicaServer(ReplicaOptions(api_broken=True, long_author=True)) as zenn:
        async with running(make_settings(tmp_path, zenn.url), read_every_part) as (runtime, model):
            first = await runtime.service.handle("long:1", "u", f"{zenn.url}/{LONG_AUTHOR} 一番いいねが多い記事は？")
            prompt = model.records[-1].prompt
            second = await runtime.service.handle("long:1", "u", f"{zenn.url}/{LONG_AUTHOR} 3番目は？")
            again = model.records[-1].prompt
        page_hits = [h for h in zenn.hits if h == f"/{LONG_AUTHOR}"]
    assert first.ok and second.ok
    for text in (prompt, again):
        for title, likes in LONG_AUTHOR_TOP.values():
            assert re.search(rf"^- .*{title}.*\b{likes}\b.*<", text, re.M), title
        assert f"({LONG_AUTHOR_COUNT} items: the whole list after 6 loads)" in text
    assert page_hits == [f"/{LONG_AUTHOR}"]  # the second question read the page from the cache


async def test_the_browser_is_given_the_html_of_a_bare_host_url(tmp_path):
    """`http://host:port` (no path): the browser still gets the HTML already fetched."""
    hits: list[str] = []

    async def home(request):
        hits.append(request.path)
        return web.Response(text='<html><body><div id="root"></div><script>document.getElementById("root")'
                                 '.innerHTML = "<main><p>" + "Drawn home page text. ".repeat(60) + "</p></main>";'
                                 '</script></body></html>', content_type="text/html")

    async with ReplicaServer(ReplicaOptions(extra_routes=[web.get("/", home)])) as site:
        async with reading(tmp_path, site) as browsing:
            page = await browsing.reader.read(site.url)
    assert page.source == "browser" and "Drawn home page text." in page.text and hits == ["/"]


async def test_a_slow_script_does_not_hold_a_page_whose_html_has_the_text(tmp_path):
    """The HTML asks for JavaScript, so the browser is tried; a script that never arrives holds
    it at most BROWSER_PATIENCE, then the text the server sent is read."""
    script_asked = asyncio.Event()

    async def page(request):
        paragraphs = "".join(f"<p>Server paragraph {n} holds the article text, sent whole by the server.</p>"
                             for n in range(20))
        return web.Response(text=f"<html><head><title>Slow script</title><script src='/slow.js'></script></head>"
                                 f"<body><noscript>Please enable JavaScript to see comments.</noscript>"
                                 f"<main><article>{paragraphs}</article></main></body></html>", content_type="text/html")

    async def slow_script(request):
        script_asked.set()
        await asyncio.sleep(60)
        return web.Response(text="", content_type="application/javascript")

    routes = [web.get("/slow-script", page), web.get("/slow.js", slow_script)]
    async with ReplicaServer(ReplicaOptions(extra_routes=routes)) as site:
        async with reading(tmp_path, site) as browsing:
            result = await browsing.reader.read(site.url + "/slow-script")
    assert script_asked.is_set()  # the browser did try the page
    assert result.source == "server-html" and "Server paragraph 19" in result.text
