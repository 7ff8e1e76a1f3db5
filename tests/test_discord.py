"""Discord end to end: the real discord.py client against a fake Discord on 127.0.0.1, with the
real service (scripted model, Zenn replica, real Chromium)."""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager

import discord
from langchain_core.messages import AIMessage

from adapters.discord.bot import DiscordAdapter
from bench.replica import ReplicaServer
from bot.runtime import model_from
from tests.fakes.discord import BOT, BOT_ID, CHANNEL_ID, FakeDiscord, user
from tests.fakes.slack import eventually
from tests.helpers import make_settings, reading_policy, running

ALICE = user(7, "alice")
OTHER_BOT = user(8, "otherbot", bot=True)


@asynccontextmanager
async def discord_bot(tmp_path, zenn, fake, policy=reading_policy, gemini=None, **overrides):
    """The bot on the fake Discord; its model is the scripted `policy`, or the real Gemini client
    against `gemini` (a GeminiStub, which streams its answers)."""
    if gemini is not None:
        overrides = dict(google_api_key="k", google_gemini_base_url=gemini.url) | overrides
    settings = make_settings(tmp_path, zenn.url, discord_token="test-token",
                             discord_api_base_url=fake.url + "/api/v10",
                             discord_gateway_url=fake.url.replace("http", "ws") + "/gateway", **overrides)
    saved = (discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY)
    model = model_from(settings) if gemini is not None else None
    async with running(settings, policy, model=model) as (runtime, model):
        adapter = DiscordAdapter(settings, runtime.service)
        task = asyncio.create_task(adapter.start())
        try:
            await asyncio.wait_for(fake.identified.wait(), 20)
            await eventually(lambda: adapter.client.is_ready())
            yield adapter
        finally:
            await adapter.close()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            fake.identified.clear()
            discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = saved


async def test_mention_opens_a_thread_then_follow_ups_and_restart(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    async with ReplicaServer() as zenn, FakeDiscord() as fake:
        async with discord_bot(tmp_path, zenn, fake):
            await fake.dispatch("MESSAGE_CREATE", fake.message(
                CHANNEL_ID, ALICE, f"<@{BOT_ID}> {zenn.url}/asap この人の一番人気の記事を分析して", [BOT], mid=5001))
            await eventually(lambda: any("921" in e.get("content", "") for e in fake.edits() + fake.sent()))
            threads = [(m, p, b) for m, p, b in fake.calls if p.endswith("/threads")]
            assert threads and threads[0][1] == f"/channels/{CHANNEL_ID}/messages/5001/threads"
            assert len(threads[0][2]["name"]) <= 100
            thread_id = int([p for _, p, _ in fake.calls if p.endswith("/typing")][0].split("/")[2])
            assert all(s.get("allowed_mentions") == {"parse": []} for s in fake.sent())

            await fake.dispatch("MESSAGE_CREATE", fake.message(thread_id, ALICE, "2番目は？"))
            await eventually(lambda: any("104" in e.get("content", "") for e in fake.edits() + fake.sent()))

            await fake.dispatch("MESSAGE_CREATE", fake.message(thread_id, OTHER_BOT, "3番目は？"))
            await asyncio.sleep(0.5)
            assert not any("87" in e.get("content", "") for e in fake.edits() + fake.sent())

        async with discord_bot(tmp_path, zenn, fake):
            await fake.dispatch("MESSAGE_CREATE", fake.message(thread_id, ALICE, "3番目は？"))
            await eventually(lambda: any("87" in e.get("content", "") for e in fake.edits() + fake.sent()))
    assert caplog.records and "test-token" not in caplog.text


async def test_long_answer_in_parts_and_429_retried(tmp_path):
    def long_policy(messages):
        code = "```python\n" + "\n".join(f"print({i})  # コメント" for i in range(300)) + "\n```"
        return AIMessage(content="@everyone はじめに\n\n" + code + "\n\nおわり")

    async with ReplicaServer() as zenn, FakeDiscord() as fake:
        async with discord_bot(tmp_path, zenn, fake, long_policy):
            fake.fail_next_send_with_429 = 1
            await fake.dispatch("MESSAGE_CREATE", fake.message(CHANNEL_ID, ALICE, f"<@{BOT_ID}> 長く", [BOT]))
            await eventually(lambda: any("おわり" in s.get("content", "") for s in fake.sent()))
    parts = [s["content"] for s in fake.sent()]
    assert len(parts) >= 3 and all(len(p) <= 2000 for p in parts)
    assert all(p.count("```") % 2 == 0 for p in parts)
    assert all(s.get("allowed_mentions") == {"parse": []} for s in fake.sent())


async def test_slash_command_defers_then_answers_in_a_thread(tmp_path):
    async with ReplicaServer() as zenn, FakeDiscord() as fake:
        async with discord_bot(tmp_path, zenn, fake):
            synced = [p for m, p, _ in fake.calls if m == "PUT" and p.startswith("/applications/")]
            assert synced  # /zenn was registered at start-up
            await fake.dispatch("INTERACTION_CREATE", fake.slash_command(
                CHANNEL_ID, ALICE, "zenn", "ask", url=zenn.url + "/asap", question="一番人気の記事は？"))
            await eventually(lambda: any("921" in m["content"] and not _has_stop(m) for m in fake.stored.values()))
    callbacks = [b for _, p, b in fake.calls if p.startswith("/interactions/")]
    assert callbacks[0]["type"] == 5  # deferred: "zennbot is thinking…"
    threads = [p for _, p, _ in fake.calls if p.endswith("/threads")]
    assert threads == [f"/channels/{CHANNEL_ID}/messages/{fake.original['id']}/threads"]
    assert "Answering in" in fake.followups()[0]["content"]
    answer = next(m for m in fake.stored.values() if "921" in m["content"])
    assert answer["channel_id"] != str(CHANNEL_ID)  # in the thread, not the channel
    assert all(w.body.get("allowed_mentions") == {"parse": []} for w in fake.writes if w.method != "DELETE")
    card = answer["embeds"][0]  # the page card
    assert (card["title"], card["url"], card["description"]) == (
        "asap (Zenn)", zenn.url + "/asap", "72 articles · 2,205 likes")


async def test_allowlist_keeps_the_bot_quiet_elsewhere(tmp_path):
    async with ReplicaServer() as zenn, FakeDiscord() as fake:
        async with discord_bot(tmp_path, zenn, fake, discord_allowed_channels="1234"):
            await fake.dispatch("MESSAGE_CREATE", fake.message(CHANNEL_ID, ALICE, f"<@{BOT_ID}> {zenn.url}/asap", [BOT]))
            await fake.dispatch("INTERACTION_CREATE", fake.slash_command(CHANNEL_ID, ALICE, "zenn", "ask", url=zenn.url + "/asap"))
            await eventually(lambda: any(p.startswith("/interactions/") for _, p, _ in fake.calls))
            await asyncio.sleep(0.5)
    refusal = next(b for _, p, b in fake.calls if p.startswith("/interactions/"))
    assert refusal["type"] == 4 and refusal["data"]["flags"] == 64  # an ephemeral message, no thinking
    assert "not enabled" in refusal["data"]["content"]
    assert fake.sent() == [] and not any(p.endswith("/threads") for _, p, _ in fake.calls)


def _has_stop(message: dict) -> bool:
    return any(c.get("custom_id", "").startswith("zennbot:stop:")
               for row in message["components"] for c in row["components"])


async def test_a_lost_run_whose_message_is_gone_is_told_in_a_new_message(tmp_path):
    """The bot died after deleting the message an answer moved on from, before recording the new
    one: recovery finds the recorded message gone (404, 10008) and tells the asker anew."""
    import json

    from bot.store import RunRecord

    async with ReplicaServer() as zenn, FakeDiscord() as fake, discord_bot(tmp_path, zenn, fake) as adapter:
        where = {"channel_id": CHANNEL_ID, "status_id": 987654321}
        run = RunRecord(f"discord:{CHANNEL_ID}", "discord", "discord:7", "消えた回答の質問", None, json.dumps(where))
        await adapter.acknowledge_lost_run(run)
        told = [w for w in fake.writes if w.channel == str(CHANNEL_ID)]
    assert [(w.method, w.status) for w in told] == [("PATCH", 404), ("POST", 200)]
    assert "was lost" in told[-1].body["content"] and "消えた回答の質問" in told[-1].body["content"]
