"""`zennbot bench reads`: how long the bot's reader takes to read a page, beside a bare Playwright
`goto` + `content()` in the same run, on the same pages, through the same kind of proxy.

(a) Local pages on 127.0.0.1: three real-size Zenn article pages (static HTML), a static article,
    an article that JavaScript draws into an empty root after a fetch, and the Zenn replica's
    author page, whose list a timer and a fetch draw late (its JSON endpoints refuse the bot, so
    the bot reads it in the browser, as when Zenn's endpoints fail).
(b) A slice of the extraction corpus (saved real pages: news, blogs, shops; from
    `bench/fixtures/extraction/pages/` when present, else `../shared/extraction-eval/pages/`)
    served on 127.0.0.1. Their scripts, styles, trackers and ads name other hosts. Both readers
    reach the network only through a guard proxy whose name resolution is a dead end: any host
    name waits `--dead-host-delay` seconds and then fails, as a tracker or ad host that does not
    answer does in production; only 127.0.0.1 is served. Nothing leaves the machine.

Each page is read once per round by each reader, with an empty cache for the bot (a new URL),
after both browsers are up. It prints per-page times, medians, p95 and the bot/bare ratios, and
the time of a cached read. The bare read does not wait for late content: the "bare saw" column
says whether its HTML held the text the page is read for.
"""

from __future__ import annotations

import asyncio
import gzip
import ipaddress
import json
import statistics
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from aiohttp import web
from playwright.async_api import async_playwright

from agent.browser import LAUNCH_ARGS, PageLoadError, find_chromium
from agent.proxy import GuardProxy
from agent.urlguard import BlockedUrl, UrlPolicy
from bench.local_server import LocalServer
from bench.replica import ReplicaOptions, ReplicaServer
from bot.runtime import open_browsing
from bot.settings import Settings

REPO_CORPUS = Path(__file__).parent / "fixtures" / "extraction" / "pages"
# ../shared next to the repository (or next to the directory that holds the worktrees)
SHARED_CORPUS = [parent / "shared" / "extraction-eval" / "pages" for parent in Path(__file__).resolve().parents[2:4]]
TARGET_LOCAL = 1.5  # bot median at most 1.5 × the bare browser's on (a)
TARGET_CORPUS = 0.5  # and at most half of it on (b)

_PARAGRAPHS = "".join(f"<p>Paragraph {n} of the static article explains one more step of the method, with "
                      f"enough words to be a real paragraph of text for the reader.</p>" for n in range(1, 16))
STATIC_PAGE = (f"<html><head><title>A static article</title></head><body><main><article><h1>A static article"
               f"</h1>{_PARAGRAPHS}</article></main></body></html>")
DRAWN_PAGE = """<html><head><title>A drawn article</title></head><body><div id="root"></div>
<script>fetch('/bench/drawn.json').then((r) => r.json()).then((data) => {
  document.getElementById('root').innerHTML = '<main><article><h1>A drawn article</h1>' +
    data.paragraphs.map((p) => `<p>${p}</p>`).join('') + '</article></main>';
});</script></body></html>"""
DRAWN_PARAGRAPHS = [f"Drawn paragraph {n}: the browser wrote this text after fetching it." for n in range(1, 12)]


@dataclass(frozen=True)
class LocalPage:
    path: str
    marker: str  # text the page is read for


LOCAL_PAGES = [
    LocalPage("/asap/articles/34237ad87f8511", "タイトル通りDeepSeek-R1の論文を読んだ"),
    LocalPage("/asap/articles/6caa9043276424", "満を持してVAE"),
    LocalPage("/asap/articles/4368fd306b592a", "3点追記させてください"),
    LocalPage("/bench/static", "Paragraph 15 of the static article"),
    LocalPage("/bench/drawn", "Drawn paragraph 11"),
    LocalPage("/asap", "DeepSeek-R1の論文読んだ"),
]


@dataclass(frozen=True)
class Read:
    set: str  # "local" or "corpus"
    page: str
    source: str  # the bot's path: server-html, browser
    bot_ms: float
    bare_ms: float
    bot_saw: bool | None  # whether the text the page is read for was there (None: not checked)
    bare_saw: bool | None


def bench_routes() -> list[web.RouteDef]:
    async def static(request: web.Request) -> web.Response:
        return web.Response(text=STATIC_PAGE, content_type="text/html")

    async def drawn(request: web.Request) -> web.Response:
        return web.Response(text=DRAWN_PAGE, content_type="text/html")

    async def drawn_json(request: web.Request) -> web.Response:
        return web.json_response({"paragraphs": DRAWN_PARAGRAPHS})

    return [web.get("/bench/static", static), web.get("/bench/drawn", drawn),
            web.get("/bench/drawn.json", drawn_json)]


def corpus_dir() -> Path | None:
    for directory in (REPO_CORPUS, *SHARED_CORPUS):
        if directory.is_dir() and any(directory.glob("*.html.gz")):
            return directory
    return None


class CorpusServer(LocalServer):
    """The saved pages at `/corpus/NAME`, as their server sent them (no charset in the header)."""

    def __init__(self, directory: Path) -> None:
        async def page(request: web.Request) -> web.Response:
            path = directory / (request.match_info["name"] + ".html.gz")
            if not path.is_file():
                raise web.HTTPNotFound()
            return web.Response(body=gzip.decompress(path.read_bytes()), content_type="text/html")

        app = web.Application()
        app.router.add_get("/corpus/{name}", page)
        super().__init__(app)


def dead_end_policy(delay: float) -> UrlPolicy:
    """127.0.0.1 is served; every host name waits `delay` seconds and is then not found."""

    async def resolver(host: str, port: int) -> list[str]:
        await asyncio.sleep(delay)
        raise OSError(f"{host}: a dead end (the benchmark serves only 127.0.0.1)")

    return UrlPolicy(trusted_addresses=frozenset({ipaddress.ip_address("127.0.0.1")}), resolver=resolver)


class BareBrowser:
    """Playwright as a script would use it: one Chromium, a context per read, `goto` until
    DOMContentLoaded, `content()`. Its traffic goes through its own guard proxy with the same
    dead-end policy as the bot's."""

    def __init__(self, policy: UrlPolicy, timeout: float) -> None:
        self.proxy = GuardProxy(policy)
        self.timeout = timeout

    async def __aenter__(self) -> BareBrowser:
        await self.proxy.start()
        self._playwright = await async_playwright().start()
        self._browser = await self._playwright.chromium.launch(
            executable_path=find_chromium(), headless=True, chromium_sandbox=False, args=LAUNCH_ARGS,
            proxy={"server": self.proxy.url, "username": self.proxy.username, "password": self.proxy.password})
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._browser.close()
        await self._playwright.stop()
        await self.proxy.close()

    async def read(self, url: str) -> str:
        context = await self._browser.new_context()
        try:
            page = await context.new_page()
            try:
                await page.goto(url, wait_until="domcontentloaded", timeout=self.timeout * 1000)
            except Exception:  # a timeout: read what is there, as a script would after catching it
                pass
            return await page.content()
        finally:
            await context.close()


async def _timed(coroutine) -> tuple[float, object]:
    """Milliseconds and the result; a failed read's result is its exception."""
    started = time.perf_counter()
    try:
        result = await coroutine
    except (BlockedUrl, PageLoadError) as exc:
        result = exc
    return (time.perf_counter() - started) * 1000, result


async def run_reads(corpus_pages: int = 20, rounds: int = 3, dead_host_delay: float = 3.0) -> dict:
    policy = dead_end_policy(dead_host_delay)
    corpus = corpus_dir()
    names = sorted(p.name.removesuffix(".html.gz") for p in corpus.glob("*.html.gz")) if corpus else []
    if names and corpus_pages:
        step = max(len(names) // corpus_pages, 1)
        names = names[::step][:corpus_pages]
    else:
        names = []
    reads: list[Read] = []
    cached_us: list[float] = []
    async with ReplicaServer(ReplicaOptions(api_broken=True, extra_routes=bench_routes())) as site, \
            CorpusServer(corpus or Path(".")) as corpus_site:
        with tempfile.TemporaryDirectory() as tmp:
            settings = Settings(_env_file=None, zennbot_db=str(Path(tmp) / "reads.db"), zenn_base_url=site.url)
            browsing = await open_browsing(settings, policy)
            try:
                async with BareBrowser(policy, settings.zennbot_page_timeout) as bare:
                    # Both browsers up, and the extractor's one-time set-up (htmldate/dateparser
                    # compile their patterns on the first page with dates: seconds) done.
                    await bare.read(site.url + "/bench/static?warm-up")
                    await browsing.browser.render(site.url + "/bench/static?warm-up")
                    await browsing.reader.read(site.url + LOCAL_PAGES[0].path + "?warm-up")
                    jobs = [("local", p.path, site.url + p.path, p.marker) for _ in range(rounds) for p in LOCAL_PAGES]
                    jobs += [("corpus", name, f"{corpus_site.url}/corpus/{name}", None) for name in names]
                    for index, (kind, label, url, marker) in enumerate(jobs):
                        fresh = f"{url}{'&' if '?' in url else '?'}run={index}"
                        if index % 2:  # alternate which reader goes first
                            bare_ms, html = await _timed(bare.read(fresh))
                            bot_ms, page = await _timed(browsing.reader.read(fresh))
                        else:
                            bot_ms, page = await _timed(browsing.reader.read(fresh))
                            bare_ms, html = await _timed(bare.read(fresh))
                        failed = isinstance(page, Exception)
                        reads.append(Read(kind, label, f"FAILED: {page.reason}" if failed else page.source,
                                          round(bot_ms, 1), round(bare_ms, 1),
                                          None if not marker else (not failed and marker in page.text),
                                          marker in html if marker else None))
                        if not failed:
                            started = time.perf_counter()
                            await browsing.reader.read(fresh)
                            cached_us.append((time.perf_counter() - started) * 1e6)
            finally:
                await browsing.close()
    result: dict = {"corpus_dir": str(corpus) if corpus else None, "dead_host_delay_s": dead_host_delay,
                    "rounds_local": rounds, "reads": [asdict(r) for r in reads],
                    "cached_read_us": {"median": round(statistics.median(cached_us), 1),
                                       "max": round(max(cached_us), 1)}}
    for kind, target in (("local", TARGET_LOCAL), ("corpus", TARGET_CORPUS)):
        rows = [r for r in reads if r.set == kind]
        if not rows:
            continue
        bot = [r.bot_ms for r in rows]
        bare = [r.bare_ms for r in rows]
        result[kind] = {
            "pages": len(rows),
            "bot_median_ms": round(statistics.median(bot), 1), "bot_p95_ms": round(_p95(bot), 1),
            "bare_median_ms": round(statistics.median(bare), 1), "bare_p95_ms": round(_p95(bare), 1),
            "ratio_median": round(statistics.median(bot) / statistics.median(bare), 2),
            "ratio_p95": round(_p95(bot) / _p95(bare), 2),
            "target_ratio": target,
            "bot_paths": dict(Counter("failed" if r.source.startswith("FAILED") else r.source for r in rows)),
            "bot_missed": sum(1 for r in rows if r.bot_saw is False),
            "bare_missed": sum(1 for r in rows if r.bare_saw is False),
        }
    return result


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def format_report(result: dict) -> str:
    lines = [f"{'set':6} {'page':48} {'bot path':11} {'bot ms':>8} {'bare ms':>8} {'bot saw':>7} {'bare saw':>8}"]
    for r in result["reads"]:
        saw = {None: "", True: "yes", False: "NO"}
        lines.append(f"{r['set']:6} {r['page'][:48]:48} {r['source']:11} {r['bot_ms']:8.0f} {r['bare_ms']:8.0f} "
                     f"{saw[r['bot_saw']]:>7} {saw[r['bare_saw']]:>8}")
    lines.append("")
    for kind, title in (("local", "(a) local static and JS-drawn pages"),
                        ("corpus", f"(b) corpus slice, other hosts a dead end of {result['dead_host_delay_s']:g} s")):
        s = result.get(kind)
        if s is None:
            lines.append(f"{title}: no pages (corpus not found)")
            continue
        verdict = "ok" if s["ratio_median"] <= s["target_ratio"] else "OVER TARGET"
        lines.append(f"{title}: {s['pages']} reads; bot median {s['bot_median_ms']:.0f} ms, p95 {s['bot_p95_ms']:.0f} ms;"
                     f" bare median {s['bare_median_ms']:.0f} ms, p95 {s['bare_p95_ms']:.0f} ms;"
                     f" ratio median {s['ratio_median']:.2f} (target ≤ {s['target_ratio']}: {verdict}),"
                     f" p95 {s['ratio_p95']:.2f}; bot paths {s['bot_paths']}; text missed: bot {s['bot_missed']},"
                     f" bare {s['bare_missed']}")
    lines.append(f"cached read: median {result['cached_read_us']['median']:.0f} µs, max {result['cached_read_us']['max']:.0f} µs")
    lines.append(f"corpus: {result['corpus_dir'] or 'not found'}")
    return "\n".join(lines)


def main(as_json: bool = False, corpus_pages: int = 20, rounds: int = 3, dead_host_delay: float = 3.0) -> int:
    result = asyncio.run(run_reads(corpus_pages, rounds, dead_host_delay))
    print(json.dumps(result, ensure_ascii=False) if as_json else format_report(result))
    passed = all(result[k]["ratio_median"] <= result[k]["target_ratio"] for k in ("local", "corpus") if k in result)
    return 0 if passed else 1
