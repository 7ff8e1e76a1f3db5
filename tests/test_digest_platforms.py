"""Follows and digests on the platforms: the real Slack and Discord adapters against the mock
Slack Web API and the fake Discord, the real service (scripted model, real Chromium), the fake
Zenn whose articles appear over time, and a clock the test moves."""

from __future__ import annotations

import asyncio
import re
from contextlib import asynccontextmanager
from urllib.parse import urlencode

import discord
from langchain_core.messages import AIMessage, BaseMessage, ToolMessage

from adapters.discord.bot import DiscordAdapter
from adapters.slack.app import SlackAdapter
from agent.zenn_client import ZennHttp, ZennLimits
from bench.scripted_model import ScriptedChatModel, current_turn, tool_call
from bot.digest.setup import open_digests
from tests.digest_helpers import Clock, jst, summary_policy
from tests.fakes.discord import CHANNEL_ID, FakeDiscord, user
from tests.fakes.slack import MockSlackApi, event_body, eventually, signed_headers
from tests.fakes.zenn_feeds import FakeZennFeeds
from tests.helpers import make_settings, running

SECRET = "signing-secret-for-tests"
ALICE = user(7, "alice")
MANAGE_CHANNELS = 1 << 4
ITEM = re.compile(r"^(\d+)\. \[(.+?)\]\((\S+?)\)", re.M)


def digest_thread_policy(messages: list[BaseMessage]) -> AIMessage:
    """Answers 「N つ目の記事」 from the digest at the start of the thread: opens item N, then says
    what it read."""
    _, human, since = current_turn(messages)
    digest = next((str(m.content) for m in messages if isinstance(m, AIMessage) and ITEM.search(str(m.content))), "")
    items = {int(n): (title, url) for n, title, url in ITEM.findall(digest)}
    wanted = re.search(r"(\d)つ目", str(human.content))
    if not wanted or int(wanted[1]) not in items:
        return AIMessage(content="(no digest in view)")
    title, url = items[int(wanted[1])]
    results = [m for m in since if isinstance(m, ToolMessage)]
    if not results:
        return tool_call("read_page", url=url)
    body = "本文あり" if "について詳しく説明します" in str(results[-1].content) else "本文なし"
    return AIMessage(content=f"{wanted[1]}つ目は「{title}」です（{body}）。")


@asynccontextmanager
async def digest_bot(tmp_path, zenn, clock, **overrides):
    settings = make_settings(tmp_path, zenn.url, **overrides)
    async with running(settings, digest_thread_policy) as (runtime, _):
        http_zenn = ZennHttp(zenn.url, runtime.browsing.http, limits=ZennLimits(rate=200, in_flight=4))
        digests = open_digests(settings, runtime, model=ScriptedChatModel(policy=summary_policy), clock=clock,
                               zenn=http_zenn)
        yield settings, runtime, digests


@asynccontextmanager
async def slack_digest_bot(tmp_path, zenn, slack, clock, **overrides):
    async with digest_bot(tmp_path, zenn, clock, slack_bot_token="xoxb-test", slack_signing_secret=SECRET,
                          slack_port=0, slack_api_url=slack.url + "/api/", zennbot_allow_private_network=True,
                          **overrides) as (settings, runtime, digests):
        adapter = SlackAdapter(settings, runtime.service, digests.commands)
        digests.runner.posters["slack"] = adapter.digest_poster()
        task = asyncio.create_task(adapter.start())
        await eventually(lambda: adapter._runner is not None and adapter._runner.addresses)  # noqa: SLF001
        import aiohttp

        async with aiohttp.ClientSession() as http:
            async def post(body: str, content_type="application/json"):
                async with http.post(f"http://127.0.0.1:{adapter.port}/slack/events", data=body,
                                     headers=signed_headers(SECRET, body, content_type)) as r:
                    return r.status

            async def command(text: str, user_id="UALICE") -> dict:
                before = len(slack.responses)
                await post(urlencode({"command": "/zenn", "text": text, "user_id": user_id, "channel_id": "C1",
                                      "team_id": "T1", "response_url": slack.url + "/respond/x",
                                      "trigger_id": "1.1"}), "application/x-www-form-urlencoded")
                await eventually(lambda: len(slack.responses) > before)
                return slack.responses[-1]
            try:
                yield digests, post, command
            finally:
                await adapter.close()
                await task


async def test_slack_follow_unfollow_and_list_with_an_admin_list(tmp_path):
    clock = Clock(jst("2026-12-07T10:00"))
    async with FakeZennFeeds() as zenn, MockSlackApi() as slack:
        async with slack_digest_bot(tmp_path, zenn, slack, clock, slack_follow_admins="UADMIN") as (_, _, command):
            refused = await command("follow https://zenn.dev/topics/nextjs")
            assert refused["response_type"] == "ephemeral" and "SLACK_FOLLOW_ADMINS" in refused["text"]
            added = await command("follow Next.js weekly 08:30 UTC", "UADMIN")
            assert added["response_type"] == "in_channel"
            assert added["text"] == ("Following topic Next.js (nextjs). The digest comes every Monday at 08:30 (UTC); "
                                     "next on 2026-12-07 08:30.")  # 10:00 in Tokyo is 01:00 UTC
            assert (await command(f"follow <{zenn.url}/alice|alice>", "UADMIN"))["text"].startswith(
                "Following author Alice (alice).")
            unknown = await command("follow zzznope", "UADMIN")
            assert "found no Zenn topic, author or publication called “zzznope”" in unknown["text"]
            listing = await command("following")  # anyone may look
            assert listing["response_type"] == "ephemeral"
            assert listing["text"].splitlines()[1:] == ["• topic Next.js (nextjs)", "• author Alice (alice)"]
            assert (await command("unfollow nextjs", "UADMIN"))["text"] == "Unfollowed topic Next.js (nextjs)."
            assert (await command("following"))["text"].splitlines()[1:] == ["• author Alice (alice)"]
            usage = await command("follow", "UADMIN")
            assert usage["text"].startswith("Usage: `/zenn follow")
    assert slack.named("chat.postMessage") == []  # no question was started by a follow command


async def test_slack_digest_is_blocks_and_its_thread_answers_about_its_items(tmp_path):
    clock = Clock(jst("2026-12-07T10:00"))
    async with FakeZennFeeds() as zenn, MockSlackApi() as slack:
        async with slack_digest_bot(tmp_path, zenn, slack, clock) as (digests, post, command):
            await command("follow nextjs")
            zenn.add("first", "alice", jst("2026-12-07T12:00"), 30, topics=("nextjs",), title="App Router 入門")
            zenn.add("second", "bob", jst("2026-12-07T13:00"), 12, topics=("nextjs",), title="Server Actions <深掘り>")
            clock.set(jst("2026-12-08T09:00"))
            assert await digests.runner.tick() == {"slack:C1": "posted"}
            [message] = [m for m in slack.messages.values() if m.thread_ts is None]
            sections = [b["text"]["text"] for b in message.blocks if b["type"] == "section"]
            assert message.blocks[0]["type"] == "header" and "Zenn daily digest" in message.blocks[0]["text"]["text"]
            assert sections[0].splitlines()[:2] == [f"*<{zenn.url}/alice/articles/first|1. App Router 入門>*",
                                                    "Alice · ♥ 30 · 🔖 0 · 💬 0"]
            assert "Server Actions &lt;深掘り&gt;" in sections[1] and len(sections[1].splitlines()) == 4
            await post(event_body({"type": "message", "channel_type": "channel", "user": "UBOB",
                                   "text": "2つ目の記事をもっと詳しく", "ts": "900.1", "thread_ts": message.ts,
                                   "channel": "C1", "event_ts": "900.1"}, "Ev1"))
            await eventually(lambda: any("2つ目は" in m.text for m in slack.messages.values() if m.thread_ts))
    answer = next(m.text for m in slack.messages.values() if m.thread_ts == message.ts and "2つ目は" in m.text)
    assert answer.startswith("2つ目は「Server Actions <深掘り>」です（本文あり）。")
    assert any(r.path == "/api/articles/second" for r in zenn.requests)  # it opened the second item


async def test_a_slack_digest_posted_by_a_process_that_died_before_recording_it_is_not_posted_again(tmp_path):
    """Slack accepted the digest, then the process died before the database said so: the run that
    takes the digest over finds the message by its metadata and posts no second one."""
    clock = Clock(jst("2026-12-07T10:00"))
    async with FakeZennFeeds() as zenn, MockSlackApi() as slack:
        async with slack_digest_bot(tmp_path, zenn, slack, clock) as (digests, _, command):
            await command("follow nextjs")
            zenn.add("first", "alice", jst("2026-12-07T12:00"), 30, topics=("nextjs",))
            clock.set(jst("2026-12-08T09:00"))
            store, recorded, dead = digests.runner.store, asyncio.Event(), asyncio.Event()
            update = store.update_digest

            async def dies_before_recording(record, **changes):
                if changes.get("state") == "posted":
                    recorded.set()
                    await dead.wait()  # never set: the process is gone
                return await update(record, **changes)
            store.update_digest = dies_before_recording
            tick = asyncio.create_task(digests.runner.tick())
            await asyncio.wait_for(recorded.wait(), 30)
            tick.cancel()
            await asyncio.gather(tick, return_exceptions=True)
            store.update_digest = update
            clock.advance(minutes=3)  # the dead holder's lease lapses
            assert await digests.runner.tick() == {"slack:C1": "posted"}
            assert await digests.runner.tick() == {"slack:C1": "done"}
    digests_posted = [args for args in slack.named("chat.postMessage") if args.get("metadata")]
    assert len(digests_posted) == 1
    [history] = slack.named("conversations.history")  # looked up once, by the run that took it over
    assert history["channel"] == "C1"


@asynccontextmanager
async def discord_digest_bot(tmp_path, zenn, fake, clock, **overrides):
    async with digest_bot(tmp_path, zenn, clock, discord_token="test-token",
                          discord_api_base_url=fake.url + "/api/v10",
                          discord_gateway_url=fake.url.replace("http", "ws") + "/gateway",
                          zennbot_allow_private_network=True, **overrides) as (settings, runtime, digests):
        saved = (discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY)
        adapter = DiscordAdapter(settings, runtime.service, digests.commands)
        digests.runner.posters["discord"] = adapter.digest_poster()
        task = asyncio.create_task(adapter.start())
        try:
            await asyncio.wait_for(fake.identified.wait(), 20)
            await eventually(lambda: adapter.client.is_ready())
            yield digests
        finally:
            await adapter.close()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            fake.identified.clear()
            discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = saved


async def test_discord_follow_needs_manage_channels_or_a_follow_role(tmp_path):
    clock = Clock(jst("2026-12-07T10:00"))
    async with FakeZennFeeds() as zenn, FakeDiscord() as fake:
        fake.guild_roles = [555]
        async with discord_digest_bot(tmp_path, zenn, fake, clock, discord_follow_roles="555"):
            async def follow_command(sub: str, permissions=0, roles=(), **options) -> str:
                before = len(fake.callbacks()) + len(fake.followups())
                await fake.dispatch("INTERACTION_CREATE", fake.slash_command(
                    CHANNEL_ID, ALICE, "zenn", sub, permissions=permissions, roles=roles, **options))
                await eventually(lambda: len(fake.callbacks()) + len(fake.followups()) >= before + (
                    1 if fake.callbacks() and fake.callbacks()[-1].get("type") == 4 else 2))
                last = fake.callbacks()[-1]
                if last.get("type") == 4:  # answered at once (only they see it)
                    return "ephemeral: " + last["data"]["content"]
                await eventually(lambda: len(fake.followups()) > 0)
                return fake.followups()[-1]["content"]

            refused = await follow_command("follow", target="https://zenn.dev/topics/nextjs")
            assert refused.startswith("ephemeral: Only members who can manage this channel")
            reply = await follow_command("follow", MANAGE_CHANNELS, target="https://zenn.dev/topics/nextjs",
                                         every="weekly", at="07:00")
            assert reply == ("Following topic Next.js (nextjs). The digest comes every Monday at 07:00 (Asia/Tokyo); "
                             "next on 2026-12-14 07:00.")
            assert (await follow_command("follow", 0, (555,), target="Rust")).startswith("Following topic Rust (rust).")
            listing = await follow_command("following")
            assert listing.splitlines()[1:] == ["• topic Next.js (nextjs)", "• topic Rust (rust)"]
            assert await follow_command("unfollow", MANAGE_CHANNELS, target="Next.js") == \
                "Unfollowed topic Next.js (nextjs)."
            assert "found no Zenn topic" in await follow_command("follow", MANAGE_CHANNELS, target="nope nope")
    assert all(f.get("allowed_mentions") == {"parse": []} for f in fake.followups())


async def test_discord_digest_is_embeds_with_a_thread_that_answers_about_it(tmp_path):
    clock = Clock(jst("2026-12-07T10:00"))
    async with FakeZennFeeds() as zenn, FakeDiscord() as fake:
        async with discord_digest_bot(tmp_path, zenn, fake, clock) as digests:
            await digests.commands.follow("discord", "9000", str(CHANNEL_ID), "discord:7", "alice")
            zenn.add("typepuzzle01", "alice", jst("2026-12-07T12:00"), 3, title="型パズル入門")
            zenn.add("rustcli02", "alice", jst("2026-12-07T15:00"), 40, title="Rust で CLI")
            clock.set(jst("2026-12-08T09:00"))
            assert await digests.runner.tick() == {f"discord:{CHANNEL_ID}": "posted"}
            [message] = fake.thread_messages(CHANNEL_ID)
            assert [e["title"] for e in message["embeds"]] == ["1. Rust で CLI", "2. 型パズル入門"]
            assert message["embeds"][0]["url"] == f"{zenn.url}/alice/articles/rustcli02"
            assert message["embeds"][0]["description"].startswith("Alice · ♥ 40")
            assert "2つ目の記事をもっと詳しく" in message["embeds"][-1]["footer"]["text"]
            thread_id = message["id"]
            assert thread_id in fake.threads  # opened under the digest
            await fake.dispatch("MESSAGE_CREATE", fake.message(int(thread_id), ALICE, "2つ目の記事をもっと詳しく"))
            await eventually(lambda: any("2つ目は" in m["content"] for m in fake.thread_messages(thread_id)))
            # a second post of the same digest (a restart after posting, before it was recorded) is the same message
            record = await digests.runner.store.last_digest("discord", str(CHANNEL_ID))
            from bot.digest.builder import Digest
            from bot.digest.runner import nonce

            again = await digests.runner.posters["discord"].post(Digest.from_json(record.content), nonce(record))
    answer = next(m["content"] for m in fake.thread_messages(thread_id) if "2つ目は" in m["content"])
    assert answer.startswith("2つ目は「型パズル入門」です（本文あり）。")
    assert len(fake.thread_messages(CHANNEL_ID)) == 1 and str(thread_id) in again.message_ref
