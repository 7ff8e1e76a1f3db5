"""`zennbot follows` and `zennbot digest` as an operator runs them: real processes on one
database (SQLite file or PostgreSQL), the fake Zenn, the mock Slack Web API, the Gemini stub."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import time

from bot.digest.schedule import Schedule
from bot.store import open_store
from bot.store.base import Follow
from tests.digest_helpers import summary_policy
from tests.fakes.gemini import GeminiStub
from tests.fakes.slack import MockSlackApi
from tests.fakes.zenn_feeds import FakeZennFeeds
from tests.forkserver import start_zennbot
from tests.helpers import make_settings, store_env
from tests.pg import both_stores


async def zennbot(*args: str, env: dict) -> tuple[int, str, str]:
    process = await start_zennbot(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **env})
    out, err = await process.communicate()
    return process.returncode, out.decode(), err.decode()


def last_slot() -> dt.datetime:
    """Today's (or yesterday's) 09:00 in Tokyo: the digest due now, in real time."""
    return Schedule().due_slot(dt.datetime.now(dt.UTC))


async def followed_channel(tmp_path, zenn: FakeZennFeeds, around: dt.datetime | None = None) -> None:
    """Slack channel C1 follows topic nextjs since three days ago; two articles came out before
    the due digest (or `around`), one after it."""
    store = await open_store(make_settings(tmp_path))
    try:
        await store.add_follow(Follow("slack", "T1", "C1", "topic:nextjs", "Next.js", "slack:U1",
                                      time.time() - 3 * 86400), None, 10, 50)
    finally:
        await store.close()
    slot = around or last_slot()
    zenn.add("cliarticle01", "alice", slot - dt.timedelta(hours=5), 7, topics=("nextjs",), title="CLI one")
    zenn.add("cliarticle02", "bob", slot - dt.timedelta(hours=2), 70, topics=("nextjs",), title="CLI two")
    zenn.add("cliarticle03", "bob", slot + dt.timedelta(seconds=1), 700, topics=("nextjs",), title="CLI after")


def env_for(tmp_path, zenn, slack, gemini) -> dict:
    return store_env(tmp_path, "zennbot.db") | {
        "ZENN_BASE_URL": zenn.url, "ZENNBOT_ALLOW_PRIVATE_NETWORK": "true", "SLACK_BOT_TOKEN": "xoxb-test",
        "SLACK_API_URL": slack.url + "/api/", "GOOGLE_API_KEY": "k", "GOOGLE_GEMINI_BASE_URL": gemini.url}


@both_stores
async def test_two_processes_on_one_database_post_the_due_digest_once(tmp_path):
    async with FakeZennFeeds() as zenn, MockSlackApi() as slack, GeminiStub(policy=summary_policy) as gemini:
        await followed_channel(tmp_path, zenn)
        env = env_for(tmp_path, zenn, slack, gemini)
        results = await asyncio.gather(zennbot("digest", "--channel", "C1", env=env),
                                       zennbot("digest", "--channel", "C1", env=env))
        again = await zennbot("digest", "--channel", "C1", env=env)
    outs = sorted(out.strip() for _, out, _ in results)
    assert all(code == 0 for code, _, _ in results), [err for _, _, err in results]
    assert outs[0] in ("Already posted.", "Another process is posting it.") and outs[1] == "Posted."
    assert again[1].strip() == "Already posted."
    [posted] = slack.named("chat.postMessage")
    assert posted["channel"] == "C1" and posted["text"].startswith("Zenn daily digest")
    sections = [b["text"]["text"] for b in posted["blocks"] if b["type"] == "section"]
    assert [s.splitlines()[0].split("|")[1] for s in sections] == ["1. CLI two>*", "2. CLI one>*"]
    assert len(gemini.calls) == 2
    polls = zenn.feed_requests("/topics/nextjs/feed")
    assert 1 <= len(polls) <= 2  # at most once per process (15 min apart across them)


async def test_follows_lists_every_follow_and_its_next_digest(tmp_path):
    async with FakeZennFeeds() as zenn:
        await followed_channel(tmp_path, zenn)
        code, out, err = await zennbot("follows", env=store_env(tmp_path, "zennbot.db"))
    next_run = Schedule().next_slot(dt.datetime.now(dt.UTC)).astimezone(dt.timezone(dt.timedelta(hours=9)))
    assert code == 0, err
    assert out.splitlines() == [
        f"slack C1 (T1): daily at 09:00 Asia/Tokyo; next digest {next_run:%Y-%m-%d %H:%M}",
        "  topic Next.js (nextjs)  [topic:nextjs]"]


async def test_digest_dry_run_prints_it_and_now_posts_one_on_demand(tmp_path):
    """With no digest before, a dry run and one on demand cover the last 24 hours: here all three
    articles, one to six hours old (placed around the due slot, the first one is more than 24
    hours old from 19:00 UTC on)."""
    async with FakeZennFeeds() as zenn, MockSlackApi() as slack, GeminiStub(policy=summary_policy) as gemini:
        await followed_channel(tmp_path, zenn, around=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1))
        env = env_for(tmp_path, zenn, slack, gemini)
        code, out, err = await zennbot("digest", "--channel", "C1", "--dry-run", env=env)
        assert code == 0, err
        assert slack.named("chat.postMessage") == []
        lines = out.splitlines()
        assert lines[0].startswith("**Zenn daily digest") and "3 new" in lines[0]  # until now: "after" too
        assert [line.split("](")[0] for line in lines if line[:2] in ("1.", "2.", "3.")] == [
            "1. [CLI after", "2. [CLI two", "3. [CLI one"]
        assert "    CLI two の要点をまとめた記事。" in lines
        code, out, err = await zennbot("digest", "--channel", "C1", "--now", env=env)
        assert (code, out.strip()) == (0, "Posted."), err
        code, out, err = await zennbot("digest", "--channel", "C1", "--now", env=env)
        assert (code, out.strip()) == (0, "Nothing new: nothing posted."), err
        code, out, err = await zennbot("digest", "--channel", "C9", env=env)
    assert (code, out.strip()) == (2, "No channel C9 follows anything.")
    [posted] = slack.named("chat.postMessage")
    assert len([b for b in posted["blocks"] if b["type"] == "section"]) == 3


async def test_a_process_killed_while_posting_a_digest_leaves_nothing_and_the_restart_posts_it_once(tmp_path):
    async with FakeZennFeeds() as zenn, MockSlackApi() as slack, GeminiStub(policy=summary_policy) as gemini:
        await followed_channel(tmp_path, zenn)
        env = env_for(tmp_path, zenn, slack, gemini)
        slack.hold_next["chat.postMessage"] = 1
        process = await start_zennbot(
            "digest", "--channel", "C1", stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env={**os.environ, **env})
        try:
            async def posting() -> None:
                while not slack.named("chat.postMessage"):
                    await asyncio.sleep(0.05)
            await asyncio.wait_for(posting(), 120)  # built, claimed, its message on the way
        finally:
            process.kill()  # SIGKILL: no clean-up of any kind
            await process.wait()
        slack.release.set()
        assert [m for m in slack.messages.values()] == [] and len(gemini.calls) == 2
        code, out, err = await zennbot("digest", "--channel", "C1", env=env)
        assert (code, out.strip()) == (0, "Posted."), err
        code, out, err = await zennbot("digest", "--channel", "C1", env=env)
        assert out.strip() == "Already posted."
    [message] = slack.messages.values()
    assert message.blocks[0]["text"]["text"].startswith("Zenn daily digest")
    assert len(gemini.calls) == 2  # the restart posted the digest as it was built


async def test_zennbot_run_posts_the_digest_missed_while_it_was_down_once_at_start_up(tmp_path):
    async with FakeZennFeeds() as zenn, MockSlackApi() as slack, GeminiStub(policy=summary_policy) as gemini:
        await followed_channel(tmp_path, zenn)  # followed three days ago: the last three digests were missed
        env = env_for(tmp_path, zenn, slack, gemini) | {"SLACK_SIGNING_SECRET": "s", "SLACK_PORT": "0"}
        process = await start_zennbot(
            "run", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, **env})
        try:
            async def posted() -> None:
                while not slack.messages:
                    await asyncio.sleep(0.05)
            await asyncio.wait_for(posted(), 120)
        finally:
            process.terminate()
            _, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()[-2000:]
    [message] = slack.messages.values()
    assert message.channel == "C1" and message.blocks[0]["text"]["text"].startswith("Zenn daily digest · ")
    sections = [b["text"]["text"] for b in message.blocks if b["type"] == "section"]
    assert len(sections) == 2  # the items up to the latest due time, once
