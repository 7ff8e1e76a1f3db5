"""The made-up rest of Zenn for the replica: topics, trends, search, users, books, scraps, feeds.

Served in the shapes of `../shared/research/zenn-endpoints.md` (48 items a page, `next_page`,
lists without `topics`, details with `body_html`), from data generated once with a fixed seed,
so every run sees the same articles, counts and rankings. Nothing here is Zenn's data. What the
tests and `zennbot bench research` rely on:

- topic `nextjs` (「Next.js」) has 300 articles; its three most liked lie deep in the `latest`
  order (positions 170, 233 and 281, newest first);
- `order=daily` and `order=weekly` follow a hidden trend score, not the like count (Zenn's trend
  is internal): the daily tech trend's first item is `TREND_TOP_TITLE`;
- `rust` has a weekly trend; `pgvector` articles are found by `/api/search?q=pgvector`;
- user `sorano` has two books (`nextjs-app-router-book` is paid: chapters 1–2 free, 3–5 paid)
  and scraps with comments; the scrap `SCRAP_SLUG` has one comment thread far more discussed
  than the others;
- publication `team_alpha`, and the seed authors' data stays as it was (see `replica.py`).

HTML pages for the browser fallback are rendered on the server (lists with `?page=N` links).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import html
import random
import unicodedata
from dataclasses import dataclass, field
from email.utils import format_datetime

from aiohttp import web

PAGE = 48
JST = dt.timezone(dt.timedelta(hours=9))
NOW = dt.datetime(2025, 4, 5, 12, 0, tzinfo=JST)  # the replica's "today" (the seed's date)
SEED = 16

TOPICS = {  # name -> (display_name, article count, title stems)
    "nextjs": ("Next.js", 300, ["App Routerでの{x}", "Next.jsの{x}を理解する", "Server Actionsで{x}", "Next.js 15の{x}"]),
    "生成ai": ("生成AI", 140, ["生成AIで{x}を自動化する", "LLMアプリの{x}", "生成AI時代の{x}"]),
    "rust": ("Rust", 110, ["Rustで{x}を書く", "所有権と{x}", "Rustの{x}入門"]),
    "pgvector": ("pgvector", 40, ["pgvectorで{x}", "PostgreSQLとpgvectorの{x}"]),
    "typescript": ("TypeScript", 90, ["TypeScriptの{x}", "型で守る{x}"]),
    "python": ("Python", 90, ["Pythonで{x}", "uvで始める{x}"]),
}
THEMES = ["キャッシュ戦略", "認証", "テスト", "パフォーマンス改善", "エラー処理", "デプロイ", "状態管理",
          "データ取得", "ストリーミング", "型安全", "ベクトル検索", "CI", "監視", "リファクタリング",
          "並行処理", "マイグレーション", "設計", "セキュリティ", "ベンチマーク", "ログ"]
EMOJIS = ["🚀", "🧪", "📝", "⚡", "🔍", "🛠", "📦", "🧠", "🦀", "🐘", "🌱", "🔥"]
USERS = [f"dev{n:02d}" for n in range(1, 41)]
NAMES = ["佐藤", "鈴木", "高橋", "田中", "伊藤", "渡辺", "山本", "中村", "小林", "加藤"]

# Fixed items the tests and the research bench ask about.
NEXTJS_TOP = {170: ("Next.jsのキャッシュを完全に理解する", 1480, 610, 38),
              233: ("App Routerへの移行で踏んだ地雷まとめ", 1210, 540, 25),
              281: ("Next.jsで作る爆速ブログ構成 2024", 990, 400, 12)}
TREND_TOP_TITLE = "LLMエージェントの評価を自動化したら開発が3倍速くなった話"
TREND_TOP_SLUG = "tr0d41y7e5tc0p"
PGVECTOR_NEWEST_TITLE = "pgvectorのHNSWインデックスを本番で使う前に知っておくこと"
BOOK_USER = "sorano"
PAID_BOOK = "nextjs-app-router-book"
FREE_BOOK = "rust-cli-book"
SCRAP_SLUG = "a1b2c3d4e5f60718"
PUBLICATION = "team_alpha"
PROLIFIC = "dev01"  # an author with a long list (about 190 articles) and long articles


@dataclass
class Catalog:
    users: dict[str, dict] = field(default_factory=dict)
    articles: list[dict] = field(default_factory=list)  # newest first; hidden keys start with "_"
    books: list[dict] = field(default_factory=list)
    chapters: dict[int, dict] = field(default_factory=dict)
    scraps: list[dict] = field(default_factory=list)
    topics: dict[str, dict] = field(default_factory=dict)
    publications: dict[str, dict] = field(default_factory=dict)

    def article(self, slug: str) -> dict | None:
        return next((a for a in self.articles if a["slug"] == slug), None)


def _iso(moment: dt.datetime) -> str:
    return moment.isoformat(timespec="milliseconds")


def _user_ref(user: dict) -> dict:
    return {"id": user["id"], "username": user["username"], "name": user["name"], "avatar_small_url": "data:,"}


def _body(rng: random.Random, title: str, topic: str, extra: str = "", sections: int = 3) -> str:
    parts = [f"<h2>はじめに</h2><p>この記事では「{html.escape(title)}」について、{topic}を使った実務での経験をもとに整理します。</p>"]
    for n in range(1, sections + 1):
        theme = rng.choice(THEMES)
        detail = "".join(f"<p>{topic}で{theme}を進めるとき、手順{k}では前提を確認し、"
                         f"小さな変更ごとに結果を記録しました。想定と違う挙動が出たら、その場で再現手順を残します。</p>"
                         for k in range(1, 1 + (4 if sections > 3 else 0)))
        parts.append(f"<h2>{n}. {theme}</h2><p>{topic}の{theme}では、まず小さく試し、計測してから広げるのが近道でした。"
                     f"設定は最小限から始め、問題が出たら原因を一つずつ切り分けます。</p>{detail}"
                     f"<pre><code>// {theme} の例\nconst step{n} = () => \"{theme}\";</code></pre>")
    if extra:
        parts.append(extra)
    parts.append("<h2>まとめ</h2><p>小さく始めて計測する。それだけで多くの問題は避けられます。</p>")
    return "".join(parts)


def build_catalog() -> Catalog:
    """The whole made-up catalog, the same on every call."""
    rng = random.Random(SEED)
    cat = Catalog()
    for index, username in enumerate([*USERS, BOOK_USER]):
        name = "空野" if username == BOOK_USER else f"{NAMES[index % len(NAMES)]}{index}"
        cat.users[username] = {"id": 2000 + index, "username": username, "name": name,
                               "bio": f"{name}です。Webとデータベースの記事を書いています。", "avatar_url": "data:,",
                               "github_username": username, "twitter_username": None, "website_url": None,
                               "total_liked_count": 0, "follower_count": rng.randint(10, 3000),
                               "following_count": rng.randint(0, 300), "articles_count": 0,
                               "books_count": 0, "scraps_count": 0}
    cat.publications[PUBLICATION] = {"id": 77, "name": PUBLICATION, "display_name": "Team Alpha",
                                     "avatar_small_url": "data:,"}
    for tid, (name, (display, _, _)) in enumerate(TOPICS.items()):
        cat.topics[name] = {"id": 900 + tid, "name": name, "display_name": display, "taggings_count": 0,
                            "image_url": "data:,"}

    article_id = 700000
    for name, (display, count, stems) in TOPICS.items():
        for position in range(count):  # 0 = newest of the topic
            article_id += 1
            # two years of articles, denser towards today (a topic's week holds several)
            minutes = int(60 * 24 * 730 * (position / count) ** 2) + rng.randint(0, 240)
            published = NOW - dt.timedelta(minutes=minutes + 30 + position)
            title = stems[position % len(stems)].format(x=THEMES[(position * 7 + len(name)) % len(THEMES)])
            title = f"{title}（その{position // len(stems) + 1}）" if position >= len(stems) else title
            likes = rng.randint(0, 120) if rng.random() < 0.9 else rng.randint(120, 400)
            comments = rng.randint(0, 6)
            if name == "nextjs" and position in NEXTJS_TOP:
                title, likes, bookmarks, comments = NEXTJS_TOP[position]
            else:
                bookmarks = likes // 2 + rng.randint(0, 10)
            if name == "pgvector" and position == 0:
                title = PGVECTOR_NEWEST_TITLE
            user = cat.users[USERS[rng.randrange(len(USERS))]]
            if position % 4 == 1:
                user = cat.users[PROLIFIC]
            if name == "nextjs" and position % 37 == 5:
                user = cat.users[BOOK_USER]
            publication = cat.publications[PUBLICATION] if position % 11 == 3 else None
            topics = [name] + ([rng.choice(["typescript", "python"])] if rng.random() < 0.3 else [])
            slug = hashlib.sha1(f"{name}{position}".encode()).hexdigest()[:14]
            age_days = (NOW - published).total_seconds() / 86400
            # The trend is Zenn's own score: fresh, read and liked, not the like count alone.
            trend = (rng.random() * 50 + likes) / (1 + age_days) if age_days < 3 else 0.0
            week = likes * (1 + rng.random()) if age_days < 7 else 0.0
            cat.articles.append({
                "id": article_id, "post_type": "Article", "title": title, "slug": slug,
                "comments_count": comments, "liked_count": likes, "bookmarked_count": bookmarks,
                "body_letters_count": 0, "article_type": "idea" if position % 9 == 4 else "tech",
                "emoji": EMOJIS[position % len(EMOJIS)], "is_suspending_private": False,
                "published_at": _iso(published), "body_updated_at": _iso(published),
                "source_repo_updated_at": None, "pinned": False,
                "path": f"/{user['username']}/articles/{slug}", "user": _user_ref(user),
                "publication": publication,
                "_topics": topics, "_trend": trend, "_week": week,
                "_body": _body(rng, title, display, sections=12 if user["username"] == PROLIFIC else 3),
            })
    top = {  # today's tech trend, first: two hours old, fewer likes than older articles
        "id": 799999, "post_type": "Article", "title": TREND_TOP_TITLE, "slug": TREND_TOP_SLUG,
        "comments_count": 9, "liked_count": 214, "bookmarked_count": 160, "body_letters_count": 0,
        "article_type": "tech", "emoji": "🤖", "is_suspending_private": False,
        "published_at": _iso(NOW - dt.timedelta(hours=20)), "body_updated_at": _iso(NOW - dt.timedelta(hours=20)),
        "source_repo_updated_at": None, "pinned": False, "path": f"/dev07/articles/{TREND_TOP_SLUG}",
        "user": _user_ref(cat.users["dev07"]), "publication": None, "_topics": ["生成ai", "python"],
        "_trend": 10_000.0, "_week": 900.0,
        "_body": _body(rng, TREND_TOP_TITLE, "生成AI", "<h2>なぜ速くなったか</h2><p>評価をCIで毎回回すことで、"
                       "プロンプト変更の良し悪しが数分で分かるようになり、手作業の確認が不要になりました。</p>"),
    }
    cat.articles.append(top)
    cat.articles.sort(key=lambda a: a["published_at"], reverse=True)
    for a in cat.articles:
        a["body_letters_count"] = len(a["_body"])
        user = cat.users[a["user"]["username"]]
        user["articles_count"] += 1
        user["total_liked_count"] += a["liked_count"]
        for t in a["_topics"]:
            cat.topics[t]["taggings_count"] += 1
    _books_and_scraps(cat, rng)
    return cat


def _books_and_scraps(cat: Catalog, rng: random.Random) -> None:
    author = cat.users[BOOK_USER]
    chapter_id = 40000
    specs = [(PAID_BOOK, "Next.js App Router 実践入門", 1500, 420,
              ["App Routerの全体像", "Server Componentsとデータ取得", "キャッシュと再検証", "認証とミドルウェア",
               "本番運用とデプロイ"], 2),
             (FREE_BOOK, "Rustで作るコマンドラインツール", 0, 180,
              ["はじめに", "clapで引数を読む", "エラー処理", "テストと配布"], 99)]
    for book_id, (slug, title, price, likes, chapter_titles, free_upto) in enumerate(specs, 1):
        published = NOW - dt.timedelta(days=40 * book_id)
        chapters = []
        for position, chapter_title in enumerate(chapter_titles, 1):
            chapter_id += 1
            free = position <= free_upto
            body = (f"<h1>{html.escape(chapter_title)}</h1><p>この章では{html.escape(chapter_title)}を扱います。"
                    f"第{position}章の要点は三つです。</p><ul><li>{chapter_title}の考え方</li><li>よくある落とし穴</li>"
                    f"<li>実装例と計測</li></ul><p>{'RSCはサーバーで描画され、fetchの結果はキャッシュされます。' if position == 2 else ''}</p>")
            chapters.append({"id": chapter_id, "slug": f"ch{position:02d}", "title": chapter_title,
                             "position": position, "free": free, "body_letters_count": len(body) * 3,
                             "_body": body})
            cat.chapters[chapter_id] = {"id": chapter_id, "slug": f"ch{position:02d}", "title": chapter_title,
                                        "position": position, "free": free, "_book": slug, "_body": body}
        cat.books.append({"id": 3000 + book_id, "post_type": "Book", "title": title, "slug": slug,
                          "path": f"/{BOOK_USER}/books/{slug}", "price": price, "is_free": price == 0,
                          "liked_count": likes, "summary": f"{title}の本です。", "published_at": _iso(published),
                          "body_updated_at": _iso(published), "cover_image_url": "data:,", "bestseller": price > 0,
                          "user": _user_ref(author), "_chapters": chapters, "_topics": ["nextjs" if price else "rust"]})
    author["books_count"] = len(cat.books)
    comment_id = 90000
    for index in range(6):
        slug = SCRAP_SLUG if index == 0 else hashlib.sha1(f"scrap{index}".encode()).hexdigest()[:16]
        title = "Next.js 15 のキャッシュ挙動を調べる" if index == 0 else f"{THEMES[index]}の調査メモ"
        created = NOW - dt.timedelta(days=3 * index + 1)
        comments = []
        threads = [("fetchのデフォルトがno-storeに変わった件", 7), ("revalidateTagの粒度", 2), ("Router Cacheの30秒", 1),
                   ("まとめ", 0)] if index == 0 else [(f"{THEMES[index]}のメモ{n}", rng.randint(0, 1)) for n in range(3)]
        for n, (point, replies) in enumerate(threads):
            comment_id += 1
            moment = created + dt.timedelta(hours=n)
            children = [{"id": comment_id * 100 + r, "body_html": f"<p>{point}について: 返信{r + 1}。"
                         f"{'互換性のため明示的にforce-cacheを書くべきでは？' if r == 0 else '同意です。'}</p>",
                         "created_at": _iso(moment + dt.timedelta(minutes=r + 1)),
                         "body_updated_at": _iso(moment + dt.timedelta(minutes=r + 1)),
                         "user": _user_ref(cat.users[USERS[r]])} for r in range(replies)]
            comments.append({"id": comment_id, "body_html": f"<p>{point}。ここで調べたことを書きます。</p>",
                             "created_at": _iso(moment), "body_updated_at": _iso(moment), "liked_count": replies,
                             "user": _user_ref(author), "children": children})
        cat.scraps.append({"id": 6000 + index, "post_type": "Scrap", "title": title, "slug": slug,
                           "path": f"/{BOOK_USER}/scraps/{slug}", "closed": index > 2,
                           "comments_count": sum(1 + len(c["children"]) for c in comments),
                           "liked_count": 30 - index * 4, "created_at": _iso(created),
                           "last_comment_created_at": comments[-1]["created_at"],
                           "topics": [{"id": cat.topics["nextjs"]["id"], "name": "nextjs", "display_name": "Next.js"}],
                           "user": _user_ref(author), "_comments": comments})
    author["scraps_count"] = len(cat.scraps)


def public(item: dict) -> dict:
    """An item as a list shows it: without the hidden keys (body, topics, trend scores)."""
    return {k: v for k, v in item.items() if not k.startswith("_")}


def _plain(text: str) -> str:
    return unicodedata.normalize("NFKC", text).lower()


def _page_of(items: list[dict], query, key: str) -> web.Response:
    try:
        page = max(int(query.get("page", "1") or 1), 1)
    except ValueError:
        page = 1
    chunk = items[(page - 1) * PAGE: page * PAGE]
    more = page * PAGE < len(items) and page < 100
    return web.json_response({key: [public(i) for i in chunk], "next_page": page + 1 if more else None})


def select_articles(cat: Catalog, query) -> list[dict]:
    """`/api/articles`: filtered by topic, user or publication and type, in the asked order.
    Unknown parameter names are ignored, as Zenn seems to do."""
    items = cat.articles
    if topic := query.get("topicname"):
        items = [a for a in items if topic in a["_topics"]]
    if user := query.get("username"):
        items = [a for a in items if a["user"]["username"] == user]
    if publication := query.get("publication_name"):
        items = [a for a in items if (a["publication"] or {}).get("name") == publication]
    if kind := query.get("article_type"):
        items = [a for a in items if a["article_type"] == kind]
    order = query.get("order", "latest")
    if order == "liked_count":
        items = sorted(items, key=lambda a: (-a["liked_count"], a["published_at"]))
    elif order == "daily":
        items = sorted((a for a in items if a["_trend"] > 0), key=lambda a: -a["_trend"])
    elif order == "weekly":
        items = sorted((a for a in items if a["_week"] > 0), key=lambda a: -a["_week"])
    return items


def search(cat: Catalog, q: str, source: str, order: str) -> list[dict]:
    words = _plain(q).split()
    pool = {"articles": cat.articles, "books": cat.books, "scraps": cat.scraps}[source]
    found = [i for i in pool if all(w in _plain(i["title"] + " " + " ".join(i.get("_topics", []))) for w in words)]
    stamp = "created_at" if source == "scraps" else "published_at"
    if order == "alltime":
        return sorted(found, key=lambda i: -i["liked_count"])
    if order == "daily":
        return sorted(found, key=lambda i: (-i.get("_trend", 0), -i["liked_count"]))
    return sorted(found, key=lambda i: i[stamp], reverse=True)


# HTML pages (the browser fallback reads them)

def _page_html(title: str, body: str) -> str:
    return (f"<!doctype html><html lang=\"ja\"><head><meta charset=\"utf-8\"><title>{html.escape(title)} | Zenn"
            f"</title></head><body><header><a href=\"/\">Zenn</a></header><main>{body}</main>"
            f"<footer><a href=\"/terms\">利用規約</a></footer></body></html>")


def _article_rows(items: list[dict]) -> str:
    return "\n".join(
        f"<article><a href=\"{a['path']}\">{a['emoji']} <h3>{html.escape(a['title'])}</h3></a>"
        f"<a href=\"/{a['user']['username']}\">{html.escape(a['user']['name'])}</a>"
        f"<time>{a['published_at'][:10]}</time><span aria-label=\"いいね\">{a['liked_count']}</span></article>"
        for a in items)


def list_html(title: str, items: list[dict], path: str, query) -> str:
    try:
        page = max(int(query.get("page", "1") or 1), 1)
    except ValueError:
        page = 1
    chunk = items[(page - 1) * PAGE: page * PAGE]
    order = query.get("order", "")
    keep = f"order={order}&" if order else ""
    more = f"<a rel=\"next\" href=\"{path}?{keep}page={page + 1}\">次のページ</a>" if page * PAGE < len(items) else ""
    return _page_html(title, f"<h1>{html.escape(title)}</h1><div>{_article_rows(chunk)}</div><nav>{more}</nav>")


def feed_xml(base: str, title: str, link: str, items: list[dict]) -> str:
    def item(a: dict) -> str:
        when = dt.datetime.fromisoformat(a.get("published_at") or a["created_at"])
        return (f"<item><title><![CDATA[{a['title']}]]></title><description><![CDATA[{a['title']}の紹介]]></description>"
                f"<link>{base}{a['path']}</link><guid isPermaLink=\"true\">{base}{a['path']}</guid>"
                f"<pubDate>{format_datetime(when.astimezone(dt.timezone.utc), usegmt=True)}</pubDate>"
                f"<dc:creator>{html.escape(a['user']['name'])}</dc:creator></item>")
    return ("<?xml version=\"1.0\" encoding=\"UTF-8\"?><rss version=\"2.0\" xmlns:dc=\"http://purl.org/dc/elements/1.1/\">"
            f"<channel><title><![CDATA[{title}]]></title><link>{base}{link}</link><description><![CDATA[{title}]]>"
            f"</description><language>ja</language>{''.join(map(item, items))}</channel></rss>")


def catalog_routes(cat: Catalog, refused) -> list[web.RouteDef]:
    """The catalog's routes. `refused(request)` says when the JSON must fail (the replica's
    `api_broken`): then the endpoints answer 500 and only the HTML pages work."""

    def guard(request: web.Request) -> None:
        if refused(request):
            raise web.HTTPInternalServerError(text="maintenance")

    def not_found() -> web.Response:
        return web.json_response({"message": "見つかりませんでした"}, status=404)

    async def api_search(request: web.Request) -> web.Response:
        guard(request)
        q = request.query.get("q", "")
        source = request.query.get("source", "articles")
        if not q or len(q) > 100 or source not in ("articles", "books", "scraps"):
            return web.json_response({"message": "不正なリクエストです"}, status=400)
        items = search(cat, q, source, request.query.get("order", "latest"))
        return _page_of(items, request.query, source)

    async def api_topic(request: web.Request) -> web.Response:
        guard(request)
        topic = cat.topics.get(request.match_info["name"].lower())
        return web.json_response({"topic": topic}) if topic else not_found()

    async def api_user(request: web.Request) -> web.Response:
        guard(request)
        user = cat.users.get(request.match_info["name"])
        return web.json_response({"user": user}) if user else not_found()

    async def api_books(request: web.Request) -> web.Response:
        guard(request)
        items = [b for b in cat.books if b["user"]["username"] == request.query.get("username", b["user"]["username"])]
        if topic := request.query.get("topicname"):
            items = [b for b in items if topic in b["_topics"]]
        return _page_of(items, request.query, "books")

    async def api_book(request: web.Request) -> web.Response:
        guard(request)
        book = next((b for b in cat.books if b["slug"] == request.match_info["slug"]), None)
        if book is None:
            return not_found()
        return web.json_response({"book": {**public(book), "chapters": [public(c) for c in book["_chapters"]]}})

    async def api_chapter(request: web.Request) -> web.Response:
        guard(request)
        chapter = cat.chapters.get(int(request.match_info["id"])) if request.match_info["id"].isdigit() else None
        if chapter is None:
            return not_found()
        body = chapter["_body"] if chapter["free"] else None  # a paid chapter shows nothing unbought
        return web.json_response({"chapter": {**public(chapter), "body_html": body,
                                              "body_updated_at": _iso(NOW - dt.timedelta(days=30))}})

    async def api_scraps(request: web.Request) -> web.Response:
        guard(request)
        items = [s for s in cat.scraps if s["user"]["username"] == request.query.get("username", s["user"]["username"])]
        return _page_of(items, request.query, "scraps")

    async def api_scrap(request: web.Request) -> web.Response:
        guard(request)
        scrap = next((s for s in cat.scraps if s["slug"] == request.match_info["slug"]), None)
        if scrap is None:
            return not_found()
        return web.json_response({"scrap": {**public(scrap), "comments": scrap["_comments"]}})

    def base(request: web.Request) -> str:
        return f"{request.scheme}://{request.host}"

    def feed(request: web.Request, title: str, link: str, items: list[dict]) -> web.Response:
        items = items if request.query.get("all") == "1" else items[:20]
        body = feed_xml(base(request), title, link, items)
        etag = '"' + hashlib.sha1(body.encode()).hexdigest()[:16] + '"'
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers={"ETag": etag})
        return web.Response(text=body, content_type="application/rss+xml", headers={"ETag": etag})

    async def trending_feed(request: web.Request) -> web.Response:
        return feed(request, "Zennのトレンド", "/", select_articles(cat, {"order": "daily"}))

    async def topic_feed(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in cat.topics:
            raise web.HTTPNotFound()
        return feed(request, f"Zennの「{cat.topics[name]['display_name']}」のフィード", f"/topics/{name}",
                    select_articles(cat, {"topicname": name}))

    async def publication_feed(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in cat.publications:
            raise web.HTTPNotFound()
        return feed(request, cat.publications[name]["display_name"], f"/p/{name}",
                    select_articles(cat, {"publication_name": name}))

    async def topic_page(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in cat.topics:
            raise web.HTTPNotFound(text="Not Found")
        order = {"alltime": "liked_count", "daily": "daily", "latest": "latest"}.get(request.query.get("order", ""),
                                                                                     "daily")
        items = select_articles(cat, {"topicname": name, "order": order})
        return web.Response(text=list_html(cat.topics[name]["display_name"] + "の記事一覧", items,
                                           request.path, request.query), content_type="text/html")

    async def publication_page(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in cat.publications:
            raise web.HTTPNotFound(text="Not Found")
        items = select_articles(cat, {"publication_name": name})
        return web.Response(text=list_html(cat.publications[name]["display_name"], items, request.path,
                                           request.query), content_type="text/html")

    async def search_page(request: web.Request) -> web.Response:  # robots.txt: Disallow; for completeness
        items = search(cat, request.query.get("q", ""), "articles", "latest")
        return web.Response(text=list_html("検索結果", items, request.path, request.query), content_type="text/html")

    async def robots(request: web.Request) -> web.Response:
        return web.Response(text="User-agent: *\nDisallow: /search\n")

    return [
        web.get("/api/search", api_search), web.get("/api/topics/{name}", api_topic),
        web.get("/api/users/{name}", api_user), web.get("/api/books", api_books),
        web.get("/api/books/{slug}", api_book), web.get("/api/chapters/{id}", api_chapter),
        web.get("/api/scraps", api_scraps), web.get("/api/scraps/{slug}", api_scrap),
        web.get("/feed", trending_feed), web.get("/topics/{name}/feed", topic_feed),
        web.get("/p/{name}/feed", publication_feed), web.get("/topics/{name}", topic_page),
        web.get("/p/{name}", publication_page), web.get("/search", search_page), web.get("/robots.txt", robots),
    ]


# Pages under /{user}/… for the catalog's users (the replica routes them here)

def user_page(cat: Catalog, request: web.Request) -> web.Response | None:
    """`/{user}` (articles), `/{user}/feed`, `/{user}/articles/{slug}`, `/{user}/books/{slug}[/{chapter}]`,
    `/{user}/scraps/{slug}` of a catalog user; None when the user is not in the catalog."""
    user = cat.users.get(request.match_info.get("user", ""))
    if user is None:
        return None
    parts = [p for p in request.path.split("/") if p][1:]
    username = user["username"]
    items = [a for a in cat.articles if a["user"]["username"] == username]
    if not parts:
        return web.Response(text=list_html(f"{user['name']}さんの記事一覧", items, request.path, request.query),
                            content_type="text/html")
    if parts == ["feed"]:
        with_books = [*items, *(b for b in cat.books if b["user"]["username"] == username)]
        with_books.sort(key=lambda i: i["published_at"], reverse=True)
        if request.query.get("include_scraps") == "1":
            with_books += [s for s in cat.scraps if s["user"]["username"] == username]
        shown = with_books if request.query.get("all") == "1" else with_books[:20]
        body = feed_xml(f"{request.scheme}://{request.host}", f"{user['name']}さんのフィード", f"/{username}", shown)
        return web.Response(text=body, content_type="application/rss+xml")
    if len(parts) == 2 and parts[0] == "articles" and (article := cat.article(parts[1])):
        if article["user"]["username"] != username:
            return None
        body = (f"<article><h1>{html.escape(article['title'])}</h1><p>{article['published_at'][:10]}に公開</p>"
                f"{article['_body']}<p>いいね {article['liked_count']}</p></article>")
        return web.Response(text=_page_html(article["title"], body), content_type="text/html")
    if parts[0] == "books" and len(parts) in (2, 3):
        book = next((b for b in cat.books if b["slug"] == parts[1] and b["user"]["username"] == username), None)
        if book is None:
            return None
        if len(parts) == 2:
            toc = "".join(f"<li><a href=\"{book['path']}/{c['slug']}\">{c['position']}. {html.escape(c['title'])}"
                          f"{'' if c['free'] else '（有料）'}</a></li>" for c in book["_chapters"])
            return web.Response(text=_page_html(book["title"], f"<h1>{html.escape(book['title'])}</h1><ol>{toc}</ol>"),
                                content_type="text/html")
        chapter = next((c for c in book["_chapters"] if c["slug"] == parts[2]), None)
        if chapter is None:
            return None
        text = chapter["_body"] if chapter["free"] else "<p>このチャプターを読むには本を購入してください。</p>"
        return web.Response(text=_page_html(chapter["title"], f"<article>{text}</article>"), content_type="text/html")
    if len(parts) == 2 and parts[0] == "scraps":
        scrap = next((s for s in cat.scraps if s["slug"] == parts[1]), None)
        if scrap is None:
            return None
        thread = "".join(f"<section>{c['body_html']}{''.join(r['body_html'] for r in c['children'])}</section>"
                         for c in scrap["_comments"])
        return web.Response(text=_page_html(scrap["title"], f"<h1>{html.escape(scrap['title'])}</h1>{thread}"),
                            content_type="text/html")
    return None
