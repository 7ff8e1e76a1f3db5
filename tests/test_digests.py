"""Digests end to end below the chat platforms: the fake Zenn's feeds and article JSON through the
real shared client, the real Gemini client against the strict stub for summaries, the store on
SQLite or PostgreSQL, and a clock the tests move (days pass in milliseconds)."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager

from pydantic import SecretStr

from bot.store.base import DigestChannel
from tests.digest_helpers import Clock, RecordingPlatform, jst, replica, summary_policy
from tests.fakes.gemini import GeminiStub
from tests.fakes.zenn_feeds import FakeZennFeeds
from tests.helpers import make_settings
from tests.pg import both_stores


def settings_for(tmp_path):
    return make_settings(tmp_path, google_api_key=SecretStr("k"), zennbot_llm_max_retries=1)


@asynccontextmanager
async def two_replicas(tmp_path, zenn: FakeZennFeeds, gemini: GeminiStub, clock: Clock):
    """Two replicas' digest parts on one store."""
    settings = settings_for(tmp_path)
    async with replica(settings, zenn.url, gemini.url, clock) as one, \
            replica(settings, zenn.url, gemini.url, clock) as two:
        yield one, two


def titles(digest) -> list[str]:
    return [item.title for item in digest.items]


async def test_a_daily_digest_ranks_the_days_new_items_by_likes_with_two_line_summaries(tmp_path):
    clock = Clock(jst("2026-12-07T10:00"))
    async with FakeZennFeeds() as zenn, GeminiStub(policy=summary_policy) as gemini:
        async with replica(settings_for(tmp_path), zenn.url, gemini.url, clock) as bot:
            assert (await bot.follow("Next.js")).startswith("Following topic Next.js (nextjs).")
            assert "next on 2026-12-08 09:00" in await bot.follow(f"{zenn.url}/alice")
            zenn.add("old", "bob", jst("2026-12-06T12:00"), 999, topics=("nextjs",))  # before the follow's day
            zenn.add("few", "bob", jst("2026-12-07T12:00"), 5, topics=("nextjs",), bookmarked=1, comments=0)
            zenn.add("most", "alice", jst("2026-12-07T20:00"), 50, bookmarked=7, comments=3)
            zenn.add("mid", "carol", jst("2026-12-08T08:00"), 20, topics=("nextjs",))
            zenn.add("later", "alice", jst("2026-12-08T09:30"), 100)  # after the digest's time: the next one
            clock.set(jst("2026-12-08T08:59"))
            assert await bot.runner.tick() == {"slack:C1": "not due"}  # not 09:00 yet
            assert bot.platform.posted == []
            clock.set(jst("2026-12-08T09:00"))
            assert await bot.runner.tick() == {"slack:C1": "posted"}
            assert await bot.runner.tick() == {"slack:C1": "done"}
    [digest] = bot.platform.posted
    assert titles(digest) == ["Article most", "Article mid", "Article few"]  # not "old" (before), nor "later"
    most = digest.items[0]
    assert (most.liked_count, most.bookmarked_count, most.comments_count, most.author) == (50, 7, 3, "Alice")
    assert most.url == f"{zenn.url}/alice/articles/most"
    assert most.summary.splitlines() == ["Article most の要点をまとめた記事。", "読むと Article most の使い方がわかる。"]
    assert all(len(item.summary.splitlines()) == 2 for item in digest.items)
    assert digest.no_summaries == "" and "token budget" not in digest.as_text()
    assert len(gemini.calls) == 3  # one short call per item, no tools
    assert all("tools" not in call.body for call in gemini.calls)
    assert "「2つ目の記事をもっと詳しく」" in digest.as_text()


async def test_a_weekly_digest_covers_the_week_and_goes_out_on_monday(tmp_path):
    clock = Clock(jst("2026-11-30T19:00"))  # a Monday, after the week's digest time
    async with FakeZennFeeds() as zenn, GeminiStub(policy=summary_policy) as gemini:
        async with replica(settings_for(tmp_path), zenn.url, gemini.url, clock) as bot:
            reply = await bot.follow("https://zenn.dev/p/team_a", every="weekly", at="18:30")
            assert reply.startswith("Following publication Team A (team_a).") and "every Monday at 18:30" in reply
            for day, likes in ((1, 3), (3, 30), (5, 12), (6, 7)):
                zenn.add(f"w{day}", "bob", jst(f"2026-12-0{day}T10:00"), likes, publication="team_a")
            zenn.add("other", "bob", jst("2026-12-02T10:00"), 500)  # not the publication's
            for day in range(1, 7):  # the bot polls all week; no digest before Monday 18:30
                clock.set(jst(f"2026-12-0{day}T12:00"))
                assert await bot.runner.tick() == {"slack:C1": "not due"}
            clock.set(jst("2026-12-07T18:30"))
            assert await bot.runner.tick() == {"slack:C1": "posted"}
    [digest] = bot.platform.posted
    assert titles(digest) == ["Article w3", "Article w5", "Article w6", "Article w1"]
    assert [i.liked_count for i in digest.items] == [30, 12, 7, 3]
    assert digest.heading.startswith("Zenn weekly digest") and all(i.summary for i in digest.items)


async def test_nothing_new_posts_nothing_and_a_weekly_digest_may_say_so_in_one_line(tmp_path):
    clock = Clock(jst("2026-12-07T10:00"))
    async with FakeZennFeeds() as zenn, GeminiStub(policy=summary_policy) as gemini:
        async with replica(settings_for(tmp_path), zenn.url, gemini.url, clock, weekly_note=True) as bot:
            await bot.follow("rust")
            await bot.follow("bob", channel="C2", every="weekly")
            clock.set(jst("2026-12-14T09:00"))
            assert await bot.runner.tick() == {"slack:C1": "empty", "slack:C2": "empty"}
            clock.advance(days=1)
            assert (await bot.runner.tick())["slack:C1"] == "empty"
    assert bot.platform.posted == [] and gemini.calls == []
    assert bot.platform.lines == ["Nothing new this week from author Bob (bob)."]  # once, for the weekly one


async def test_an_article_in_several_followed_feeds_is_listed_once(tmp_path):
    clock = Clock(jst("2026-12-07T10:00"))
    async with FakeZennFeeds() as zenn, GeminiStub(policy=summary_policy) as gemini:
        async with replica(settings_for(tmp_path), zenn.url, gemini.url, clock) as bot:
            for target in ("nextjs", "alice", "https://zenn.dev/p/team_a", "trending"):
                assert (await bot.follow(target)).startswith("Following")
            zenn.add("everywhere", "alice", jst("2026-12-07T12:00"), 40, topics=("nextjs",), publication="team_a",
                     trending=True)
            zenn.add("alone", "bob", jst("2026-12-07T13:00"), 4, topics=("nextjs",))
            clock.set(jst("2026-12-08T09:00"))
            await bot.runner.tick()
    [digest] = bot.platform.posted
    assert titles(digest) == ["Article everywhere", "Article alone"]
    assert len(gemini.calls) == 2


async def test_one_catch_up_digest_after_three_missed_days(tmp_path):
    clock = Clock(jst("2026-12-07T10:00"))
    async with FakeZennFeeds() as zenn, GeminiStub(policy=summary_policy) as gemini:
        async with replica(settings_for(tmp_path), zenn.url, gemini.url, clock) as bot:
            await bot.follow("nextjs")
            zenn.add("d0", "bob", jst("2026-12-07T12:00"), 1, topics=("nextjs",))
            clock.set(jst("2026-12-08T09:00"))
            assert await bot.runner.tick() == {"slack:C1": "posted"}
            for day, likes in ((8, 10), (9, 30), (10, 20), (11, 5)):
                zenn.add(f"d{day}", "bob", jst(f"2026-12-{day:02}T12:00"), likes, topics=("nextjs",))
        # down from the 8th at noon until the 11th at 10:00: the digests of the 9th, 10th and 11th were missed
        clock.set(jst("2026-12-11T10:00"))
        async with replica(settings_for(tmp_path), zenn.url, gemini.url, clock) as restarted:
            assert await restarted.runner.tick() == {"slack:C1": "posted"}
            assert await restarted.runner.tick() == {"slack:C1": "done"}
    first, catch_up = bot.platform.posted + restarted.platform.posted
    assert titles(first) == ["Article d0"]
    assert titles(catch_up) == ["Article d9", "Article d10", "Article d8"]  # the 11th's is for tomorrow
    assert len(restarted.platform.posted) == 1


@both_stores
async def test_two_replicas_on_one_database_post_each_digest_once(tmp_path):
    clock = Clock(jst("2026-12-07T10:00"))
    async with FakeZennFeeds() as zenn, GeminiStub(policy=summary_policy) as gemini:
        async with two_replicas(tmp_path, zenn, gemini, clock) as (one, two):
            await one.follow("nextjs")
            await two.follow("alice", channel="C2")
            zenn.add("a1", "alice", jst("2026-12-07T12:00"), 3, topics=("nextjs",))
            for _ in range(3):
                clock.advance(hours=8)
                await asyncio.gather(one.runner.tick(), two.runner.tick())
    posted = one.platform.posted + two.platform.posted
    assert sorted((d.channel_id, d.period) for d in posted) == [("C1", "daily@2026-12-08T00:00Z"),
                                                                 ("C2", "daily@2026-12-08T00:00Z")]
    assert len(gemini.calls) == 2  # each digest built once
    feed_polls = [r for r in zenn.feed_requests() if r.status in (200, 304)]
    assert len(feed_polls) <= 2 * 3  # each feed at most once a poll interval, for both replicas together


async def test_a_digest_waits_for_the_poll_another_replica_has_under_way(tmp_path):
    """Replica one polls the feed (slowly); replica two, whose channel follows the same feed,
    finds the poll taken: it waits for it to be over rather than build an empty digest."""
    clock = Clock(jst("2026-12-07T10:00"))
    async with FakeZennFeeds() as zenn, GeminiStub(policy=summary_policy) as gemini:
        async with two_replicas(tmp_path, zenn, gemini, clock) as (one, two):
            await one.follow("nextjs")
            await two.follow("nextjs", channel="C2")
            zenn.add("w1", "alice", jst("2026-12-07T12:00"), 3, topics=("nextjs",))
            clock.set(jst("2026-12-08T09:00"))
            zenn.feed_gate = asyncio.Event()
            polling = asyncio.create_task(one.runner.poller.poll(["/topics/nextjs/feed"]))
            await asyncio.wait_for(zenn.feed_waiting.wait(), 30)
            building = asyncio.create_task(two.runner.tick())
            await asyncio.sleep(0.5)
            assert not building.done()
            zenn.feed_gate.set()
            await asyncio.wait_for(polling, 30)
            assert await asyncio.wait_for(building, 30) == {"slack:C1": "posted", "slack:C2": "posted"}
    assert [titles(d) for d in two.platform.posted] == [["Article w1"], ["Article w1"]]
    assert len(zenn.feed_requests()) == 1  # polled once, by replica one


async def test_a_digest_cut_off_while_posting_is_completed_once_after_restart(tmp_path):
    clock = Clock(jst("2026-12-07T10:00"))
    async with FakeZennFeeds() as zenn, GeminiStub(policy=summary_policy) as gemini:
        stuck = RecordingPlatform()
        stuck.gate = asyncio.Event()  # never set: the process dies while posting
        async with replica(settings_for(tmp_path), zenn.url, gemini.url, clock, stuck) as dying:
            await dying.follow("nextjs")
            zenn.add("k1", "bob", jst("2026-12-07T12:00"), 8, topics=("nextjs",))
            zenn.add("k2", "bob", jst("2026-12-07T13:00"), 9, topics=("nextjs",))
            clock.set(jst("2026-12-08T09:00"))
            tick = asyncio.create_task(dying.runner.tick())
            await asyncio.wait_for(stuck.entered.wait(), 30)
            tick.cancel()  # killed mid-digest: built, claimed, nothing shown
            await asyncio.gather(tick, return_exceptions=True)
        assert stuck.posted == [] and len(gemini.calls) == 2
        async with replica(settings_for(tmp_path), zenn.url, gemini.url, clock) as restarted:
            assert await restarted.runner.tick() == {"slack:C1": "held"}  # its lease still runs
            clock.advance(minutes=3)
            assert await restarted.runner.tick() == {"slack:C1": "posted"}
            assert await restarted.runner.tick() == {"slack:C1": "done"}
    [digest] = restarted.platform.posted
    assert titles(digest) == ["Article k2", "Article k1"] and all(i.summary for i in digest.items)
    assert len(gemini.calls) == 2  # posted as it was built: no second round of summaries


async def test_feeds_are_polled_conditionally_at_most_every_15_minutes_however_many_channels_follow(tmp_path):
    clock = Clock(jst("2026-12-07T10:00"))
    async with FakeZennFeeds() as zenn:
        async with replica(settings_for(tmp_path), zenn.url, None, clock) as bot:
            for channel in ("C1", "C2", "C3"):
                await bot.follow("nextjs", channel=channel)
            zenn.add("p1", "bob", jst("2026-12-07T09:00"), 1, topics=("nextjs",))
            for minute in range(0, 65, 5):  # a tick every 5 minutes for an hour
                clock.set(jst(f"2026-12-07T{10 + minute // 60}:{minute % 60:02}"))
                if minute == 35:
                    zenn.add("p2", "bob", jst("2026-12-07T10:35"), 2, topics=("nextjs",))
                await bot.runner.tick()
    polls = zenn.feed_requests("/topics/nextjs/feed")
    assert [r.status for r in polls] == [200, 304, 304, 200, 304]  # at :00, :15, :30, :45 (new item), 11:00
    assert polls[0].if_none_match == "" and all(r.if_none_match.startswith('"') for r in polls[1:])
    assert polls[3].if_none_match == polls[2].if_none_match and polls[4].if_none_match != polls[3].if_none_match
    assert all(r.if_modified_since for r in polls[1:])


async def test_past_the_token_budget_the_digest_goes_out_without_summaries_and_says_so(tmp_path):
    clock = Clock(jst("2026-12-07T10:00"))
    async with FakeZennFeeds() as zenn, GeminiStub(policy=summary_policy) as gemini:
        async with replica(settings_for(tmp_path), zenn.url, gemini.url, clock, budget=1) as bot:
            await bot.follow("nextjs")
            for n, likes in enumerate((5, 9, 7)):
                zenn.add(f"b{n}", "bob", jst(f"2026-12-07T1{n}:00"), likes, topics=("nextjs",))
            clock.set(jst("2026-12-08T09:00"))
            await bot.runner.tick()
            used = await bot.store.tokens_today("slack", "T1")
    [digest] = bot.platform.posted
    assert titles(digest) == ["Article b1", "Article b2", "Article b0"]
    assert [bool(i.summary) for i in digest.items] == [True, False, False]  # the first call used the budget
    assert len(gemini.calls) == 1 and used > 1
    assert "Today's token budget is used up, so some items have no summary." in digest.as_text()


async def test_an_unknown_target_gets_one_helpful_sentence_and_follows_have_limits(tmp_path):
    clock = Clock(jst("2026-12-07T10:00"))
    async with FakeZennFeeds() as zenn:
        async with replica(settings_for(tmp_path), zenn.url, None, clock,
                           limits={"per_channel": 2, "per_workspace": 3}) as bot:
            assert await bot.follow("no such thing here") == (
                "I found no Zenn topic, author or publication called “no such thing here”; give a Zenn URL such as "
                "https://zenn.dev/catnose99, https://zenn.dev/topics/nextjs or https://zenn.dev/p/NAME.")
            assert "Zenn has no topic nosuch" in await bot.follow("https://zenn.dev/topics/nosuch")
            assert "I can follow a Zenn author" in await bot.follow("https://example.com/a")
            assert "not a time zone" in await bot.follow("rust", tz="Mars/Base")
            assert (await bot.follow("rust")).startswith("Following topic Rust (rust).")
            assert (await bot.follow("Rust")).startswith("This channel already follows topic Rust")
            assert (await bot.follow("alice")).startswith("Following author Alice (alice).")
            assert "already follows 2 things" in await bot.follow("bob")
            assert (await bot.follow("bob", channel="C2")).startswith("Following")
            assert "already has 3 follows" in await bot.follow("nextjs", channel="C3")
            listing = await bot.commands.following("slack", "C1")
            assert listing.splitlines() == ["This channel follows (every day at 09:00 (Asia/Tokyo); "
                                            "next digest 2026-12-08 09:00):", "• topic Rust (rust)",
                                            "• author Alice (alice)"]
            assert await bot.commands.unfollow("slack", "C1", "Rust") == "Unfollowed topic Rust (rust)."
            assert "doesn't follow" in await bot.commands.unfollow("slack", "C1", "rust")
            assert (await bot.commands.following("slack", "C3")).startswith("This channel follows nothing yet")
            channels = await bot.store.digest_channels()
    assert {c.channel_id for c in channels} == {"C1", "C2"}
    assert all(isinstance(c, DigestChannel) for c in channels)


async def test_a_digest_from_the_replicas_catalog_feeds_ranks_its_articles_by_their_json_likes(tmp_path):
    """The research replica's catalog (a static Zenn whose "today" is 2025-04-05 12:00 JST): a
    channel following topic 生成AI gets the topic's articles of the day before the digest,
    ranked by the exact likes of the article JSON; the feed is polled again 15 minutes on, not before."""
    import datetime as dt

    from bench.replica import ReplicaServer, catalog
    from bench.zenn_catalog import NOW

    cat = catalog()
    since, until = NOW - dt.timedelta(days=1, hours=3), NOW - dt.timedelta(hours=3)  # 04-04 09:00 .. 04-05 09:00
    expected = sorted((a for a in cat.articles if "生成ai" in a["_topics"]
                       and since < dt.datetime.fromisoformat(a["published_at"]) <= until),
                      key=lambda a: (-a["liked_count"], a["published_at"]))
    clock = Clock(NOW - dt.timedelta(days=1))
    async with ReplicaServer() as zenn, GeminiStub(policy=summary_policy) as gemini:
        async with replica(settings_for(tmp_path), zenn.url, gemini.url, clock) as bot:
            assert (await bot.follow("生成AI")).startswith("Following topic 生成AI (生成ai).")
            clock.set(until)
            assert await bot.runner.tick() == {"slack:C1": "posted" if expected else "empty"}
            clock.advance(minutes=14)
            await bot.runner.tick()
            clock.advance(minutes=1)
            await bot.runner.tick()
    assert expected, "the catalog has articles of that day"
    [digest] = bot.platform.posted
    assert [(i.title, i.liked_count) for i in digest.items] == [(a["title"], a["liked_count"])
                                                                for a in expected][:10]
    feed_hits = [h for h in zenn.hits if "/feed" in h]
    assert len(feed_hits) == 2


async def test_a_refused_feed_poll_stops_the_round_and_is_not_retried_in_a_loop(tmp_path):
    clock = Clock(jst("2026-12-07T10:00"))
    async with FakeZennFeeds() as zenn:
        async with replica(settings_for(tmp_path), zenn.url, None, clock) as bot:
            for target in ("nextjs", "rust", "alice"):
                await bot.follow(target)
            zenn.refuse_next = 1
            await bot.runner.tick()
            assert [(r.path, r.status) for r in zenn.feed_requests()] == [("/topics/nextjs/feed", 429)]
            for _ in range(3):  # within Retry-After (30 s) nothing more reaches Zenn, whatever is due
                clock.advance(minutes=20)
                await bot.runner.tick()
    assert len(zenn.feed_requests()) == 1
