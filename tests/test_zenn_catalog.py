"""The replica's made-up Zenn catalog answers in the research note's shapes."""

from __future__ import annotations

import httpx

from bench.replica import ReplicaServer
from bench.zenn_catalog import BOOK_USER, NEXTJS_TOP, PAID_BOOK, SCRAP_SLUG, TREND_TOP_TITLE

LIST_KEYS = {"id", "post_type", "title", "slug", "path", "emoji", "article_type", "liked_count", "comments_count",
             "body_letters_count", "published_at", "body_updated_at", "user", "publication"}


async def test_article_lists_page_by_48_and_hide_topics_and_bodies():
    async with ReplicaServer() as zenn, httpx.AsyncClient(base_url=zenn.url) as http:
        first = (await http.get("/api/articles", params={"topicname": "nextjs", "order": "latest"})).json()
        assert len(first["articles"]) == 48 and first["next_page"] == 2
        assert LIST_KEYS <= set(first["articles"][0]) and "topics" not in first["articles"][0]
        assert not any(k.startswith("_") for k in first["articles"][0])
        last = (await http.get("/api/articles", params={"topicname": "nextjs", "page": 7})).json()
        assert len(last["articles"]) == 300 - 6 * 48 and last["next_page"] is None
        liked = (await http.get("/api/articles", params={"topicname": "nextjs", "order": "liked_count"})).json()
        assert [a["title"] for a in liked["articles"][:3]] == [t for t, *_ in NEXTJS_TOP.values()]
        daily = (await http.get("/api/articles", params={"order": "daily", "article_type": "tech"})).json()
        assert daily["articles"][0]["title"] == TREND_TOP_TITLE
        likes = [a["liked_count"] for a in daily["articles"]]
        assert likes != sorted(likes, reverse=True)  # Zenn's trend, not the like count
        detail = (await http.get(f"/api/articles/{liked['articles'][0]['slug']}")).json()["article"]
        assert detail["body_html"] and detail["topics"][0]["name"] == "nextjs"
        seed = (await http.get("/api/articles", params={"username": "asap", "order": "latest"})).json()
        assert len(seed["articles"]) == 20  # the seed author is served as before


async def test_search_topics_users_books_chapters_scraps_and_feeds():
    async with ReplicaServer() as zenn, httpx.AsyncClient(base_url=zenn.url) as http:
        found = (await http.get("/api/search", params={"q": "pgvector", "source": "articles", "order": "latest"})).json()
        assert set(found) == {"articles", "next_page"} and len(found["articles"]) == 40
        assert (await http.get("/api/search", params={"q": "x" * 101})).status_code == 400
        assert (await http.get("/api/topics/nextjs")).json()["topic"]["display_name"] == "Next.js"
        assert (await http.get("/api/topics/nosuchtopic")).status_code == 404
        assert (await http.get(f"/api/users/{BOOK_USER}")).json()["user"]["books_count"] == 2
        books = (await http.get("/api/books", params={"username": BOOK_USER, "order": "latest"})).json()["books"]
        book = (await http.get(f"/api/books/{PAID_BOOK}")).json()["book"]
        assert PAID_BOOK in [b["slug"] for b in books] and book["price"] > 0
        assert [c["free"] for c in book["chapters"]] == [True, True, False, False, False]
        free = (await http.get(f"/api/chapters/{book['chapters'][1]['id']}")).json()["chapter"]
        paid = (await http.get(f"/api/chapters/{book['chapters'][2]['id']}")).json()["chapter"]
        assert free["body_html"] and paid["body_html"] is None
        scrap = (await http.get(f"/api/scraps/{SCRAP_SLUG}")).json()["scrap"]
        assert max(len(c["children"]) for c in scrap["comments"]) == 7
        feed = await http.get(f"/{BOOK_USER}/feed")
        assert feed.headers["content-type"].startswith("application/rss+xml") and "<dc:creator>" in feed.text
        topic_feed = await http.get("/topics/nextjs/feed")
        assert topic_feed.text.count("<item>") == 20
        again = await http.get("/topics/nextjs/feed", headers={"If-None-Match": topic_feed.headers["ETag"]})
        assert again.status_code == 304
        assert (await http.get("/p/team_alpha/feed")).status_code == 200
        page = await http.get("/topics/nextjs", params={"order": "alltime"})
        assert NEXTJS_TOP[170][0] in page.text and 'rel="next"' in page.text
