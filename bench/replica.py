"""A Zenn replica on 127.0.0.1, built from the prototype's pages (`fixtures/zenn/`).

It behaves as the real site does where it matters to a reader:
- `/asap` renders its article list in the browser, from the JSON endpoint, after a timer
  (a reader that does not wait for the content sees no articles);
- `/asap/articles/{slug}`: the three article pages the prototype read, 404 for other slugs;
- `/api/articles?username=…&order=latest&page=N` (paginated) and `/api/articles/{slug}`;
- everything else of Zenn the bot asks about (topics, trends, search, users, books, chapters,
  scraps, feeds, and their HTML pages) from a made-up catalog, `zenn_catalog.py`.

With `ReplicaOptions(long_author=True)` it also serves a second author, `deepdive`, made up for
tests: 130 articles whose most liked lie deep in the list (newest first), and a profile page
that draws the first 20 late and the rest only as 「もっと読み込む」 is pressed, 20 at a time.

What the seed gives nothing for is derived, deterministically, and is not Zenn's data: for the
69 articles without a seed page, bookmarks = likes // 3, comments = 0, and the date from the
list's relative text ("6日前") counted back from SEED_DATE.
"""

from __future__ import annotations

import copy
import datetime as dt
import functools
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import lxml.html
from aiohttp import web

from bench.local_server import LocalServer
from bench.zenn_catalog import Catalog, build_catalog, catalog_routes, public, select_articles, user_page
from bench.zenn_catalog import _page_of as catalog_page

FIXTURES = Path(__file__).parent / "fixtures" / "zenn"
PAGE_SIZE = 20
SEED_DATE = dt.date(2025, 4, 5)  # about when the prototype ran (its comments say "2ヶ月前 2025年1月28日")
USERNAME = "asap"
HITS = web.AppKey("hits", list)
HIT_LOG = web.AppKey("hit_log", list)  # (time.monotonic(), path_qs, User-Agent) of each request

LIST_SCRIPT = """
<script>
setTimeout(async () => {
  const escape = (s) => String(s).replace(/[&<>"]/g, (c) => ({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;'})[c]);
  const items = [];
  for (let page = 1; page; ) {
    const response = await fetch(`/api/articles?username=%(user)s&order=latest&page=${page}`);
    const data = await response.json();
    items.push(...data.articles);
    page = data.next_page;
  }
  document.getElementById('articles').innerHTML = items.map((a) =>
    `<article><a href="/tech-or-idea">${a.article_type}</a><a href="${a.path}">${a.emoji} ` +
    `<h3>${escape(a.title)}</h3><time>${a.published_at.slice(0, 10)}</time>` +
    `<img alt="いいねされた数" src="data:,">${a.liked_count} </a></article>`).join('\\n');
}, %(delay)d);
</script>
"""


LONG_AUTHOR = "deepdive"
LONG_AUTHOR_COUNT = 130
# Latest-first positions (0 = newest) of the three most liked of the long author's articles.
LONG_AUTHOR_TOP = {96: ("Transformerの注意機構を一から実装する", 812),
                   117: ("拡散モデルのサンプラーを全部比べた", 530),
                   128: ("LoRAで日本語LLMを微調整した記録", 377)}
_LONG_TOPICS = ("PyTorch", "JAX", "RAG", "評価指標", "量子化", "分散学習", "データ前処理", "推論高速化")

LOAD_MORE_SCRIPT = """
<script>
let nextPage = 1;
async function loadMore() {
  const button = document.getElementById('load-more');
  if (button) button.disabled = true;
  const escape = (s) => String(s).replace(/[&<>"]/g, (c) => ({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;'})[c]);
  const response = await fetch(`/api/articles?username=%(user)s&order=latest&page=${nextPage}`);
  const data = await response.json();
  const list = document.getElementById('articles');
  if (nextPage === 1) list.innerHTML = '';
  list.insertAdjacentHTML('beforeend', data.articles.map((a) =>
    `<article><a href="${a.path}">${a.emoji} <h3>${escape(a.title)}</h3>` +
    `<time>${a.published_at.slice(0, 10)}</time><img alt="いいねされた数" src="data:,">${a.liked_count} </a></article>`
  ).join('\\n'));
  nextPage = data.next_page;
  document.getElementById('more').innerHTML = nextPage ? '<button type="button" id="load-more">もっと読み込む</button>' : '';
  if (nextPage) document.getElementById('load-more').addEventListener('click', loadMore);
}
setTimeout(loadMore, %(delay)d);
</script>
"""


def long_author_articles() -> list[dict]:
    """The made-up long author's articles, newest first."""
    articles = []
    for index in range(LONG_AUTHOR_COUNT):
        number = LONG_AUTHOR_COUNT - index
        title, likes = LONG_AUTHOR_TOP.get(
            index, (f"機械学習ノート{number:03d}: {_LONG_TOPICS[index % len(_LONG_TOPICS)]}の小ネタ", index * 7 % 40 + 1))
        published = SEED_DATE - dt.timedelta(days=3 * index)
        slug = f"dd{number:04d}a1b2c3"
        articles.append({
            "id": 500000 + index, "post_type": "Article", "title": title, "slug": slug,
            "comments_count": 0, "liked_count": likes, "bookmarked_count": likes // 4,
            "body_letters_count": 3000, "article_type": "tech", "emoji": "🧪",
            "published_at": f"{published.isoformat()}T09:00:00.000+09:00",
            "body_updated_at": f"{published.isoformat()}T09:00:00.000+09:00",
            "path": f"/{LONG_AUTHOR}/articles/{slug}",
            "user": {"id": 1001, "username": LONG_AUTHOR, "name": "深掘り太郎", "avatar_small_url": "data:,"},
        })
    return articles


def long_author_html(delay_ms: int) -> str:
    return (f"<!doctype html><html lang=\"ja\"><head><meta charset=\"utf-8\"><title>深掘り太郎さんの記事一覧 | Zenn</title>"
            f"</head><body><header><a href=\"/\">Zenn</a></header><main><h1>深掘り太郎</h1>"
            f"<p>機械学習の実装メモ。</p><a href=\"/{LONG_AUTHOR}\">Articles {LONG_AUTHOR_COUNT}</a>"
            f"<div id=\"articles\">Loading...</div><div id=\"more\"></div></main>"
            f"<footer><a href=\"/terms\">利用規約</a></footer>"
            + LOAD_MORE_SCRIPT % {"user": LONG_AUTHOR, "delay": delay_ms} + "</body></html>")


@dataclass
class ZennData:
    profile: dict
    articles: list[dict]
    pages: dict[str, str]  # slug -> full page HTML
    bodies: dict[str, str] = field(default_factory=dict)  # slug -> body_html


def load_data() -> ZennData:
    """The seed's data, parsed once per process (a copy each time: a replica may change its own)."""
    return copy.deepcopy(_parsed_seed())


@functools.cache
def _parsed_seed() -> ZennData:
    profile = json.loads((FIXTURES / "profile_asap.json").read_text("utf-8"))
    pages: dict[str, str] = {}
    facts: dict[str, SeedFacts] = {}
    bodies: dict[str, str] = {}
    for html_file in (FIXTURES / "pages").glob("asap_articles_*.html"):
        slug = html_file.stem.removeprefix("asap_articles_")
        pages[slug] = html_file.read_text("utf-8")
        bodies[slug], facts[slug] = _body_and_facts(pages[slug])
    articles = []
    for index, item in enumerate(profile["articles"]):
        seen = facts.get(item["slug"])
        likes = seen.likes if seen else item["liked_count"]
        bookmarks = seen.bookmarks if seen and seen.bookmarks is not None else likes // 3
        published = _published(seen.published if seen and seen.published else item["published_text"])
        articles.append({
            "id": 300000 + index,
            "post_type": "Article",
            "title": item["title"],
            "slug": item["slug"],
            "comments_count": seen.comments if seen and seen.comments is not None else 0,
            "liked_count": likes,
            "bookmarked_count": bookmarks,
            "body_letters_count": len(bodies.get(item["slug"], "")),
            "article_type": item["article_type"],
            "emoji": item["emoji"],
            "published_at": f"{published.isoformat()}T09:00:00.000+09:00",
            "body_updated_at": f"{published.isoformat()}T09:00:00.000+09:00",
            "path": item["path"],
            "user": {"id": 1000, "username": USERNAME, "name": profile["name"],
                     "avatar_small_url": "data:,"},
        })
    return ZennData(profile, articles, pages, bodies)


def _published(text: str) -> dt.date:
    if match := re.fullmatch(r"(\d+)日前", text):
        return SEED_DATE - dt.timedelta(days=int(match[1]))
    if match := re.fullmatch(r"(\d+)ヶ月前", text):
        return SEED_DATE - dt.timedelta(days=30 * int(match[1]))
    if match := re.fullmatch(r"(\d+)年前", text):
        return SEED_DATE - dt.timedelta(days=365 * int(match[1]))
    return dt.datetime.strptime(text, "%Y/%m/%d").date()


@dataclass(frozen=True)
class SeedFacts:
    likes: int
    bookmarks: int | None
    published: str | None  # YYYY/MM/DD
    comments: int | None


def _body_and_facts(html: str) -> tuple[str, SeedFacts]:
    """The article body (between the title block and the like button), and what the page says
    of its likes, bookmarks, publication date and comments."""
    children = list(lxml.html.fromstring(html).find(".//article"))
    start = 1  # after the title <h1>, skip its metadata line (dates, topic links)
    while start < len(children) and children[start].tag in ("span", "a", "img"):
        start += 1
    parts: list[str] = []
    for child in children[start:]:
        if child.tag == "button" and child.text_content().strip().startswith("いいね"):
            break
        if child.tag not in ("button", "img"):
            parts.append(lxml.html.tostring(copy.deepcopy(child), encoding="unicode"))
    counts = re.search(r"いいね<img[^>]*></button>(\d+)\s*<button>ブックマーク<img[^>]*></button>(\d*)", html)
    likes = int(counts[1]) if counts else 0
    bookmarks = int(counts[2]) if counts and counts[2] else None
    published = re.search(r"(\d{4}/\d{2}/\d{2})に公開", html)
    comments = re.search(r'<a href="#discuss">(?:<img[^>]*>)?(\d+)件', html)
    return "".join(parts), SeedFacts(likes, bookmarks, published[1] if published else None,
                                     int(comments[1]) if comments else None)


def profile_html(data: ZennData, delay_ms: int) -> str:
    html = (FIXTURES / "pages" / "asap.html").read_text("utf-8")
    html = re.sub(r"<article>.*?</article>\s*", "", html, flags=re.S)
    html = html.replace('<a href="/asap?tab=comments">Comments</a>',
                        '<a href="/asap?tab=comments">Comments</a><div id="articles">Loading...</div>', 1)
    script = LIST_SCRIPT % {"user": USERNAME, "delay": delay_ms}
    return html.replace("</body>", script + "</body>")


@dataclass
class ReplicaOptions:
    list_delay_ms: int = 800
    api_broken: bool = False  # the JSON endpoints fail for the bot's own client (not for the page)
    api_refusal: int | None = None  # the JSON endpoints answer this (429, 403) with Retry-After: 60
    api_reshaped: bool = False  # the JSON changes shape: lists under "items", "liked_count" renamed "likes"
    long_author: bool = False  # also serve `deepdive` (130 articles, a 「もっと読み込む」 list)
    extra_routes: list[web.RouteDef] = field(default_factory=list)


_CATALOG: Catalog | None = None


def catalog() -> Catalog:
    """The made-up catalog (topics, trends, books, scraps: `zenn_catalog.py`), built once."""
    global _CATALOG
    if _CATALOG is None:
        _CATALOG = build_catalog()
    return _CATALOG


def make_app(options: ReplicaOptions | None = None) -> web.Application:
    options = options or ReplicaOptions()
    data = load_data()
    cat = catalog()
    authors = {USERNAME: data.articles}
    if options.long_author:
        authors[LONG_AUTHOR] = long_author_articles()
    app = web.Application()
    app[HITS] = []
    app[HIT_LOG] = []

    @web.middleware
    async def record(request: web.Request, handler):
        app[HITS].append(request.path_qs)
        app[HIT_LOG].append((time.monotonic(), request.path_qs, request.headers.get("User-Agent", "")))
        if options.api_refusal and request.path.startswith("/api/"):
            return web.Response(status=options.api_refusal, text="Too Many Requests", headers={"Retry-After": "60"})
        response = await handler(request)
        if options.api_reshaped and request.path.startswith("/api/") and response.content_type == "application/json":
            return web.json_response(_reshaped(json.loads(response.body)), status=response.status)
        return response

    app.middlewares.append(record)

    def api_refused(request: web.Request) -> bool:
        return options.api_broken and request.headers.get("User-Agent", "").startswith("zennbot")

    async def profile(request: web.Request) -> web.Response:
        if options.long_author and request.match_info["user"] == LONG_AUTHOR:
            return web.Response(text=long_author_html(options.list_delay_ms), content_type="text/html")
        if request.match_info["user"] != USERNAME:
            return catalog_page_or_404(request)
        return web.Response(text=profile_html(data, options.list_delay_ms), content_type="text/html")

    async def article_page(request: web.Request) -> web.Response:
        page = data.pages.get(request.match_info["slug"])
        if page is None or request.match_info["user"] != USERNAME:
            return catalog_page_or_404(request)
        return web.Response(text=page, content_type="text/html")

    def catalog_page_or_404(request: web.Request) -> web.Response:
        page = user_page(cat, request)
        if page is None:
            raise web.HTTPNotFound(text="Not Found")
        return page

    async def user_subpage(request: web.Request) -> web.Response:
        return catalog_page_or_404(request)

    async def api_articles(request: web.Request) -> web.Response:
        if api_refused(request):
            raise web.HTTPInternalServerError(text="maintenance")
        articles = authors.get(request.query.get("username", ""))
        if articles is None:  # everyone else, and topics, publications, trends: the catalog (48 a page)
            return catalog_page(select_articles(cat, request.query), request.query, "articles")
        page = max(int(request.query.get("page", "1") or 1), 1)
        chunk = articles[(page - 1) * PAGE_SIZE: page * PAGE_SIZE]
        more = page * PAGE_SIZE < len(articles)
        return web.json_response({"articles": chunk, "next_page": page + 1 if more else None})

    async def api_article(request: web.Request) -> web.Response:
        if api_refused(request):
            raise web.HTTPInternalServerError(text="maintenance")
        slug = request.match_info["slug"]
        item = next((a for a in data.articles if a["slug"] == slug), None)
        if item is None and (made_up := cat.article(slug)) is not None:
            topics = [{"id": cat.topics[t]["id"], "name": t, "display_name": cat.topics[t]["display_name"],
                       "taggings_count": cat.topics[t]["taggings_count"], "image_url": "data:,"}
                      for t in made_up["_topics"]]
            return web.json_response({"article": {**public(made_up), "body_html": made_up["_body"], "topics": topics}})
        if item is None or slug not in data.bodies:
            return web.json_response({"message": "記事が見つかりませんでした"}, status=404)
        topics = [{"name": t, "display_name": t} for t in ("LLM", "生成AI")]
        return web.json_response({"article": {**item, "body_html": data.bodies[slug], "topics": topics}})

    app.router.add_routes(options.extra_routes)
    app.router.add_get("/api/articles", api_articles)
    app.router.add_get("/api/articles/{slug}", api_article)
    app.router.add_routes(catalog_routes(cat, api_refused))
    app.router.add_get("/{user}", profile)
    app.router.add_get("/{user}/articles/{slug}", article_page)
    app.router.add_get("/{user}/{tail:.+}", user_subpage)
    return app


def _reshaped(data: object) -> object:
    """Zenn's JSON as a redesign might change it: lists under "items", counts renamed, new fields."""
    if isinstance(data, dict):
        out = {("items" if k in ("articles", "books", "scraps") else "likes" if k == "liked_count" else k):
               _reshaped(v) for k, v in data.items()}
        return out | {"schema_version": 2}
    if isinstance(data, list):
        return [_reshaped(v) for v in data]
    return data


class ReplicaServer(LocalServer):
    """`async with ReplicaServer() as zenn:` then `zenn.url`; `zenn.hits` lists the requests."""

    def __init__(self, options: ReplicaOptions | None = None, host: str = "127.0.0.1") -> None:
        super().__init__(make_app(options), host)

    @property
    def hits(self) -> list[str]:
        return self.app[HITS]

    @property
    def hit_log(self) -> list[tuple[float, str, str]]:
        """(time.monotonic() on arrival, path and query, User-Agent) of every request."""
        return self.app[HIT_LOG]
