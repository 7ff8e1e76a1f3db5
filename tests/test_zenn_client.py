"""The shared Zenn client against the replica: pacing (measured where the requests arrive), the
in-flight bound, caches, refusals (429, 403, Cloudflare challenges) and timeouts."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from aiohttp import web

from agent.zenn import ZennClient
from agent.zenn_client import ZennHttp, ZennLimits, ZennNotFound, ZennRefused, ZennUnavailable, retry_after, \
    user_agent
from bench.replica import ReplicaOptions, ReplicaServer
from bot.store import open_store
from tests.helpers import make_settings


class Clock:
    """A clock the test moves (cache ages and refusals; pacing keeps real time)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def client(zenn: ReplicaServer, http: httpx.AsyncClient, **limits) -> ZennHttp:
    return ZennHttp(zenn.url, http, user_agent=user_agent("0.1", "https://example.org/zennbot"),
                    limits=ZennLimits(**limits))


async def test_requests_are_paced_to_the_configured_rate_and_name_the_bot():
    async with ReplicaServer() as zenn, httpx.AsyncClient() as http:
        zenn_http = client(zenn, http, rate=5.0, in_flight=2)
        began = time.monotonic()
        await asyncio.gather(*(zenn_http.get_json("/api/articles", {"username": "asap", "page": p}, kind="list")
                               for p in range(1, 11)))
        times = [t for t, path, _ in zenn.hit_log if path.startswith("/api/articles")]
        assert len(times) == 10
        # 5 a second: the 10th start comes at least 9 intervals after the first (a busy machine
        # only delays arrivals, so this holds however loaded it is; a burst would break it)
        assert max(times) - began >= 9 * 0.2 - 0.01
        assert {ua for _, _, ua in zenn.hit_log} == {"zennbot/0.1 (+https://example.org/zennbot)"}


async def test_at_most_the_configured_requests_are_in_flight():
    in_flight, most = 0, 0

    async def slow(request: web.Request) -> web.Response:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.2)
        in_flight -= 1
        return web.json_response({"articles": [], "next_page": None})

    options = ReplicaOptions(extra_routes=[web.get("/api/slow", slow)])
    async with ReplicaServer(options) as zenn, httpx.AsyncClient() as http:
        zenn_http = client(zenn, http, rate=1000.0, in_flight=2)
        await asyncio.gather(*(zenn_http.get_json("/api/slow", {"page": p}) for p in range(6)))
    assert most == 2


async def test_replicas_share_one_pace_through_the_store(tmp_path):
    store = await open_store(make_settings(tmp_path))
    permits: list[tuple[float, float]] = []  # each permit was counted at a moment inside (before, after)

    async def counted(key: str, limit: int, window: float) -> float:
        before = time.time()
        wait = await store.rate_wait(key, limit, window)
        if wait == 0.0:
            permits.append((before, time.time()))
        return wait

    try:
        async with ReplicaServer() as zenn, httpx.AsyncClient() as http:
            replicas = [ZennHttp(zenn.url, http, limits=ZennLimits(rate=4.0), shared_rate=counted)
                        for _ in range(2)]
            await asyncio.gather(*(r.get_json("/api/articles", {"username": "asap", "page": p, "r": n})
                                   for n, r in enumerate(replicas) for p in range(1, 5)))
    finally:
        await store.close()
    assert len([path for _, path, _ in zenn.hit_log if path.startswith("/api/articles")]) == 8 == len(permits)
    # each replica alone may send 4 a second; together they get at most 4 permits in any second
    # (checked on the permits, not on arrival times, which a busy machine delays unevenly)
    for start, _ in permits:
        assert sum(1 for before, after in permits if start <= before and after < start + 1.0) <= 4


async def test_answers_are_cached_by_kind_and_concurrent_callers_share_one_request():
    clock = Clock()
    async with ReplicaServer() as zenn, httpx.AsyncClient() as http:
        zenn_http = ZennHttp(zenn.url, http, limits=ZennLimits(rate=1000.0), clock=clock)
        params = {"username": "asap", "order": "latest", "page": 1}
        first, second = await asyncio.gather(zenn_http.get_json("/api/articles", params, kind="list"),
                                             zenn_http.get_json("/api/articles", params, kind="list"))
        assert first is second and len(first["articles"]) == 20
        clock.now += 14 * 60
        await zenn_http.get_json("/api/articles", params, kind="list")
        assert len(zenn.hits) == 1  # a list is fresh for 15 minutes
        clock.now += 2 * 60
        await zenn_http.get_json("/api/articles", params, kind="list")
        assert len(zenn.hits) == 2
        await zenn_http.get_json("/api/articles/34237ad87f8511", kind="detail")
        clock.now += 59 * 60
        await zenn_http.get_json("/api/articles/34237ad87f8511", kind="detail")
        assert len(zenn.hits) == 3  # a detail for an hour
        clock.now += 2 * 60
        await zenn_http.get_json("/api/articles/34237ad87f8511", kind="detail")
        assert len(zenn.hits) == 4
        assert zenn_http.sent == 4


def refusing(status: int, headers: dict[str, str], body: str = "slow down", content_type: str = "text/plain"):
    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=status, headers=headers, text=body, content_type=content_type)
    return ReplicaOptions(extra_routes=[web.get("/api/refusing", handler)])


async def test_a_429_stops_every_request_until_retry_after_without_retrying():
    clock = Clock()
    async with ReplicaServer(refusing(429, {"Retry-After": "120"})) as zenn, httpx.AsyncClient() as http:
        zenn_http = ZennHttp(zenn.url, http, limits=ZennLimits(rate=1000.0), clock=clock)
        with pytest.raises(ZennRefused) as refused:
            await zenn_http.get_json("/api/refusing", {"page": 1})
        assert refused.value.retry_after == 120
        assert refused.value.reason == ("Zenn is limiting the bot's requests right now, so I stopped; "
                                        "please try again in about 2 minutes.")
        with pytest.raises(ZennRefused):  # another endpoint, still cooling down: nothing is sent
            await zenn_http.get_json("/api/articles/34237ad87f8511")
        assert len(zenn.hits) == 1
        clock.now += 121
        assert (await zenn_http.get_json("/api/articles/34237ad87f8511"))["article"]["slug"] == "34237ad87f8511"
        assert len(zenn.hits) == 2


@pytest.mark.parametrize("status, headers, body, content_type", [
    (403, {"cf-mitigated": "challenge"}, "<html>Just a moment...</html>", "text/html"),
    (403, {}, "Forbidden", "text/plain"),
    (503, {}, "<html><title>Just a moment...</title><script src='/cdn-cgi/challenge-platform/x'></script></html>",
     "text/html"),
    (200, {}, "<html><title>Just a moment...</title><script src='/cdn-cgi/challenge-platform/x'></script></html>",
     "text/html"),
])
async def test_a_forbidden_answer_or_a_cloudflare_challenge_is_a_refusal(status, headers, body, content_type):
    clock = Clock()
    async with ReplicaServer(refusing(status, headers, body, content_type)) as zenn, httpx.AsyncClient() as http:
        zenn_http = ZennHttp(zenn.url, http, limits=ZennLimits(rate=1000.0, default_cooldown=60), clock=clock)
        with pytest.raises(ZennRefused) as refused:
            await zenn_http.get_json("/api/refusing")
        assert refused.value.retry_after == 60
        with pytest.raises(ZennRefused):
            await zenn_http.get_json("/api/articles", {"page": 2})
        assert len(zenn.hits) == 1


async def test_errors_timeouts_and_odd_answers_mean_use_the_browser(caplog):
    async def never(request: web.Request) -> web.Response:
        await asyncio.sleep(30)
        return web.json_response({})

    async def listed(request: web.Request) -> web.Response:
        return web.json_response([1, 2])

    options = ReplicaOptions(extra_routes=[web.get("/api/slow", never), web.get("/api/list", listed)])
    async with ReplicaServer(options) as zenn, httpx.AsyncClient() as http:
        zenn_http = ZennHttp(zenn.url, http, limits=ZennLimits(rate=1000.0, timeout=0.3))
        with pytest.raises(ZennUnavailable, match="no answer within 0.3 s"):
            await zenn_http.get_json("/api/slow")
        with pytest.raises(ZennNotFound):
            await zenn_http.get_json("/api/articles/nosuchslug")
        for _ in range(2):
            with pytest.raises(ZennUnavailable, match="unexpected JSON"):
                await zenn_http.get_json("/api/list", {"n": _})
        assert [r.getMessage() for r in caplog.records if "changed shape" in r.getMessage()] == [
            "Zenn endpoint /api/list changed shape: a JSON list, not an object"]


async def test_the_author_list_and_article_go_through_the_shared_client():
    async with ReplicaServer() as zenn, httpx.AsyncClient() as http:
        zenn_http = client(zenn, http, rate=1000.0)
        authors = ZennClient(zenn_http)
        articles = await authors.author_articles("asap")
        article, body, topics = await authors.article("34237ad87f8511")
        assert len(articles) == 72 and article.slug == "34237ad87f8511" and body
        assert zenn_http.sent == len(zenn.hits) == 5  # 4 list pages of 20 + the article
        assert {ua for _, _, ua in zenn.hit_log} == {"zennbot/0.1 (+https://example.org/zennbot)"}


def test_retry_after_reads_seconds_and_dates():
    assert retry_after("30") == 30
    assert retry_after(None) is None and retry_after("soon") is None
    assert 0 < retry_after("Wed, 21 Oct 2099 07:28:00 GMT")


async def test_a_refusal_ends_the_answer_in_one_sentence_and_the_browser_is_not_tried(tmp_path):
    from tests.helpers import running

    async with ReplicaServer(ReplicaOptions(api_refusal=429)) as zenn:
        async with running(make_settings(tmp_path, zenn.url)) as (runtime, _):
            reply = await runtime.service.handle("console:z", "u", zenn.url + "/asap 一番人気は？")
    assert not reply.ok
    assert reply.text == ("Zenn is limiting the bot's requests right now, so I stopped; please try again in "
                          "about 1 minute.")
    assert zenn.hits == ["/api/articles?username=asap&order=latest&page=1"]  # no page load, no retry


async def test_a_list_whose_order_zenn_ignores_is_ranked_by_code_within_the_page_cap(caplog):
    """A Zenn that ignores order=liked_count (sends latest first): the ranking still holds the
    most liked of the pages read, and the log says so once."""
    import httpx as _httpx

    from agent.zenn_research import ZennResearch
    from bench.local_server import LocalServer

    likes = [5, 1, 9, 3, 700, 2, 8, 4] * 13  # 104 articles, newest first; the most liked is the fifth

    async def articles(request: web.Request) -> web.Response:
        page = int(request.query.get("page", "1"))
        chunk = [{"title": f"t{i}", "slug": f"s{i:04d}", "liked_count": n, "path": f"/u/articles/s{i:04d}",
                  "user": {"username": "u"}} for i, n in enumerate(likes)][(page - 1) * 48: page * 48]
        return web.json_response({"articles": chunk, "next_page": page + 1 if page * 48 < len(likes) else None})

    app = web.Application()
    app.router.add_get("/api/articles", articles)
    async with LocalServer(app) as server, _httpx.AsyncClient() as http:
        research = ZennResearch(ZennHttp(server.url, http, limits=ZennLimits(rate=1000.0)))
        rows, pages, more = await research.articles({"username": "u"}, "most_liked", max_pages=2)
    assert (pages, more) == (2, True) and [r.likes for r in rows[:13]] == [700] * 12 + [9]  # 96 read
    assert [r.getMessage() for r in caplog.records if "changed shape" in r.getMessage()] == [
        "Zenn endpoint /api/articles changed shape: order=liked_count was not applied"]
