"""The pure parts of follows and digests: targets from URLs and names, schedules across time
zones and DST, and the digest store contract on the test's backend (SQLite or PostgreSQL)."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from agent.zenn_feeds import parse_rss
from bot.digest.schedule import BadSchedule, Schedule
from bot.digest.targets import Target, parse_target, topic_slug
from bot.store import open_store
from bot.store.base import CHANNEL_FULL, FOLLOW_ADDED, FOLLOW_EXISTS, WORKSPACE_FULL, FeedEntry, Follow
from tests.helpers import make_settings
from tests.pg import both_stores

UTC = dt.UTC


def at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).astimezone(UTC)


@pytest.mark.parametrize(("text", "expected"), [
    ("https://zenn.dev/catnose99", Target("user", "catnose99")),
    ("https://zenn.dev/topics/nextjs", Target("topic", "nextjs")),
    ("https://zenn.dev/topics/NextJS/feed", Target("topic", "nextjs")),
    ("https://zenn.dev/p/team_a", Target("publication", "team_a")),
    ("<https://zenn.dev/p/team_a>", Target("publication", "team_a")),
    ("https://zenn.dev/", Target("trending", "")),
    ("trending", Target("trending", "")),
    ("topic:LangGraph", Target("topic", "langgraph")),
    ("/topics/rust", Target("topic", "rust")),
    ("Next.js", "Next.js"),
    ("https://example.com/topics/nextjs", None),
    ("https://zenn.dev/catnose99/articles/abc123", None),
    ("", None),
])
def test_targets_are_read_from_urls_kinds_and_names(text, expected):
    assert parse_target(text) == expected


def test_topic_slugs_follow_zenns_spelling():
    assert topic_slug("Next.js") == "nextjs"
    assert topic_slug("生成AI") == "生成ai"
    assert topic_slug("Claude Code") == "claudecode"
    assert Target("topic", "nextjs").feed_path == "/topics/nextjs/feed"
    assert Target("publication", "x").feed_path == "/p/x/feed"
    assert Target.from_key(Target("user", "a").key) == Target("user", "a")


def test_daily_slots_are_local_times_in_the_channels_zone():
    tokyo = Schedule("daily", "09:00", "Asia/Tokyo")
    assert tokyo.due_slot(at("2026-12-07T23:59:00+09:00")) == at("2026-12-07T09:00:00+09:00")
    assert tokyo.due_slot(at("2026-12-08T08:59:00+09:00")) == at("2026-12-07T09:00:00+09:00")
    assert tokyo.due_slot(at("2026-12-08T09:00:00+09:00")) == at("2026-12-08T09:00:00+09:00")
    assert tokyo.next_slot(at("2026-12-08T09:00:00+09:00")) == at("2026-12-09T09:00:00+09:00")
    assert tokyo.period(at("2026-12-08T09:00:00+09:00")) == "daily@2026-12-08T00:00Z"


def test_weekly_slots_are_mondays_and_dst_keeps_the_local_time():
    weekly = Schedule("weekly", "18:30", "Asia/Tokyo")
    assert weekly.due_slot(at("2026-12-10T12:00:00+09:00")) == at("2026-12-07T18:30:00+09:00")
    assert weekly.due_slot(at("2026-12-07T18:00:00+09:00")) == at("2026-11-30T18:30:00+09:00")
    berlin = Schedule("daily", "09:00", "Europe/Berlin")
    # the night the clocks go back (2026-10-25): 09:00 local is 07:00 UTC before, 08:00 UTC after
    assert berlin.due_slot(at("2026-10-24T12:00:00+00:00")) == at("2026-10-24T07:00:00+00:00")
    assert berlin.due_slot(at("2026-10-25T12:00:00+00:00")) == at("2026-10-25T08:00:00+00:00")


@pytest.mark.parametrize(("every", "at_", "tz", "words"), [
    ("hourly", "09:00", "UTC", "daily or weekly"), ("daily", "25:00", "UTC", "HH:MM"),
    ("daily", "09:00", "Mars/Olympus", "time zone")])
def test_a_wrong_schedule_is_one_sentence(every, at_, tz, words):
    with pytest.raises(BadSchedule, match=words):
        Schedule(every, at_, tz)


def test_rss_items_are_read_with_their_dates_and_authors():
    xml = """<?xml version="1.0"?><rss version="2.0" xmlns:dc="http://purl.org/dc/elements/1.1/"><channel>
      <item><title>A</title><link>https://zenn.dev/a/articles/x1</link>
        <pubDate>Mon, 07 Dec 2026 01:00:00 GMT</pubDate><dc:creator>alice</dc:creator></item>
      <item><title>no date</title><link>https://zenn.dev/a/articles/x2</link></item></channel></rss>"""
    items = parse_rss(xml)
    assert [(i.title, i.author, i.published_at) for i in items] == [
        ("A", "alice", at("2026-12-07T01:00:00+00:00").timestamp())]


async def test_follow_limits_hold_per_channel_and_per_workspace(tmp_path):
    store = await open_store(make_settings(tmp_path))
    try:
        def follow(channel: str, target: str, workspace: str = "W") -> Follow:
            return Follow("slack", workspace, channel, target, "", "U", 100.0)
        assert await store.add_follow(follow("C1", "topic:a"), None, 2, 3) == FOLLOW_ADDED
        assert await store.add_follow(follow("C1", "topic:a"), None, 2, 3) == FOLLOW_EXISTS
        assert await store.add_follow(follow("C1", "topic:b"), ("weekly", "10:00", "UTC"), 2, 3) == FOLLOW_ADDED
        assert await store.add_follow(follow("C1", "topic:c"), None, 2, 3) == CHANNEL_FULL
        assert await store.add_follow(follow("C2", "topic:c"), None, 2, 3) == FOLLOW_ADDED
        assert await store.add_follow(follow("C3", "topic:d"), None, 2, 3) == WORKSPACE_FULL
        assert await store.add_follow(follow("C3", "topic:d", "OTHER"), None, 2, 3) == FOLLOW_ADDED
        channels = {c.channel_id: c for c in await store.digest_channels()}
        assert (channels["C1"].every, channels["C1"].at, channels["C1"].tz) == ("weekly", "10:00", "UTC")
        assert (channels["C2"].every, channels["C2"].tz) == ("daily", "Asia/Tokyo")
        assert [f.target for f in await store.list_follows("slack", "C1")] == ["topic:a", "topic:b"]
        assert await store.remove_follow("slack", "C2", "topic:c") is True
        assert await store.remove_follow("slack", "C2", "topic:c") is False
        assert "C2" not in {c.channel_id for c in await store.digest_channels()}  # no follows, no digests
        # concurrent follows never pass the limit
        results = await asyncio.gather(*(store.add_follow(follow("C9", f"topic:t{n}", "W9"), None, 3, 10)
                                         for n in range(8)))
        assert results.count(FOLLOW_ADDED) == 3 and results.count(CHANNEL_FULL) == 5
    finally:
        await store.close()


async def test_a_digest_is_claimed_once_and_taken_over_only_after_its_lease(tmp_path):
    settings = make_settings(tmp_path)
    first, second = await open_store(settings), await open_store(settings)
    try:
        args = ("slack", "C1", "daily@2026-12-08T00:00Z")
        claims = await asyncio.gather(first.claim_digest(*args, "a", 1000.0, 120.0, 0.0, 900.0),
                                      second.claim_digest(*args, "b", 1000.0, 120.0, 0.0, 900.0))
        record = next(c for c in claims if c is not None)
        assert sum(c is None for c in claims) == 1
        assert await second.claim_digest(*args, "c", 1100.0, 120.0, 0.0, 900.0) is None  # lease still runs
        assert await first.update_digest(record, state="posting", lease_until=1200.0, content='{"x": 1}')
        taken = await second.claim_digest(*args, "c", 1300.0, 120.0, 0.0, 900.0)  # the holder died
        assert taken is not None and taken.state == "posting" and taken.content == '{"x": 1}'
        assert not await first.update_digest(record, state="posted", lease_until=0.0)  # no longer its claim
        assert await second.update_digest(taken, state="posted", lease_until=0.0, message_ref="m1")
        assert await second.claim_digest(*args, "d", 9999.0, 120.0, 0.0, 900.0) is None  # done
        last = await first.last_digest("slack", "C1")
        assert (last.period, last.until, last.message_ref) == (args[2], 900.0, "m1")
    finally:
        await first.close()
        await second.close()


@both_stores
async def test_feed_polls_are_shared_and_spaced(tmp_path):
    settings = make_settings(tmp_path)
    first, second = await open_store(settings), await open_store(settings)
    try:
        polls = await asyncio.gather(first.claim_feed_poll("/feed", 1000.0, 900.0, 60.0),
                                     second.claim_feed_poll("/feed", 1000.0, 900.0, 60.0))
        assert sorted(polls, key=str) == [("", ""), None]
        assert await second.polls_under_way(["/feed", "/other"], 1000.0) == ["/feed"]  # until it is recorded
        await first.record_feed_poll("/feed", '"e1"', "Mon, 07 Dec 2026 00:00:00 GMT", [
            FeedEntry("/feed", "https://zenn.dev/a/articles/1", "one", "a", 500.0),
            FeedEntry("/feed", "https://zenn.dev/a/articles/2", "two", "a", 800.0)])
        assert await second.polls_under_way(["/feed", "/other"], 1000.0) == []
        assert await second.claim_feed_poll("/feed", 1899.0, 900.0, 60.0) is None
        assert await second.claim_feed_poll("/feed", 1900.0, 900.0, 60.0) == ('"e1"', "Mon, 07 Dec 2026 00:00:00 GMT")
        # a poll never recorded (its process died) is over after `busy_for`
        assert await first.polls_under_way(["/feed"], 1959.0) == ["/feed"]
        assert await first.polls_under_way(["/feed"], 1960.0) == []
        await first.record_feed_poll("/feed", '"e1"', "", [
            FeedEntry("/feed", "https://zenn.dev/a/articles/2", "two again", "a", 800.0)])
        entries = await second.feed_entries(["/feed", "/other"], 500.0, 800.0)
        assert [(e.title, e.published_at) for e in entries] == [("two", 800.0)]
        later = 800.0 + 36 * 86400  # a poll five weeks on: entries older than 35 days before it are gone
        await first.record_feed_poll("/feed", '"e2"', "", [FeedEntry("/feed", "https://zenn.dev/a/articles/3",
                                                                     "three", "a", later)])
        assert [e.title for e in await first.feed_entries(["/feed"], 0.0, later)] == ["three"]
    finally:
        await first.close()
        await second.close()
