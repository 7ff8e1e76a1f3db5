"""Discord sharding: the real discord.py AutoShardedClient against the fake gateway, which
identifies each shard and sends each guild's events on its own shard's socket."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager

import discord
import pytest

from adapters.discord.bot import DiscordAdapter
from bench.replica import ReplicaServer
from tests.fakes.discord import BOT, BOT_ID, CHANNEL_ID, OTHER_CHANNEL_ID, FakeDiscord, user
from tests.fakes.slack import eventually
from tests.helpers import make_settings, running

ALICE = user(7, "alice")


@asynccontextmanager
async def replica(tmp_path, zenn, fake, **overrides):
    """One bot process (its own runtime and scripted model) connected to the fake Discord."""
    settings = make_settings(tmp_path, zenn.url, discord_token="test-token",
                             discord_api_base_url=fake.url + "/api/v10",
                             discord_gateway_url=fake.url.replace("http", "ws") + "/gateway", **overrides)
    saved = (discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY)
    async with running(settings) as (runtime, model):
        adapter = DiscordAdapter(settings, runtime.service)
        task = asyncio.create_task(adapter.start())
        try:
            # The second shard identifies 5 s after the first (discord.py's identify pacing).
            await eventually(lambda: adapter.client.is_ready(), 60)
            yield adapter, model
        finally:
            await adapter.close()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = saved


def mention(fake: FakeDiscord, channel_id: int, zenn) -> dict:
    return fake.message(channel_id, ALICE, f"<@{BOT_ID}> {zenn.url}/asap 一番人気の記事は？", [BOT])


async def test_two_shards_in_one_process_both_answer(tmp_path):
    async with ReplicaServer() as zenn, FakeDiscord() as fake:
        async with replica(tmp_path, zenn, fake, discord_shard_count=2, discord_shard_ids="0,1") as (adapter, model):
            assert isinstance(adapter.client, discord.AutoShardedClient)
            assert sorted(fake.identifies) == [[0, 2], [1, 2]]
            assert sorted(adapter.client.shards) == [0, 1]

            await fake.dispatch("MESSAGE_CREATE", mention(fake, CHANNEL_ID, zenn))
            await eventually(lambda: len(_answers(fake)) == 1)
            await fake.dispatch("MESSAGE_CREATE", mention(fake, OTHER_CHANNEL_ID, zenn))
            await eventually(lambda: len(_answers(fake)) == 2)
    # Each message came in on its own guild's shard, and each got its own thread and answer.
    assert [shard for event, shard in fake.dispatched if event == "MESSAGE_CREATE"] == [0, 1]
    assert _thread_parents(fake) == [str(CHANNEL_ID), str(OTHER_CHANNEL_ID)]
    assert len({channel for channel, _ in _answers(fake)}) == 2


async def test_replicas_split_the_shards(tmp_path):
    """Two processes (here two clients with their own runtimes), one shard each: each answers
    the guild on its shard, and only that one."""
    async with ReplicaServer() as zenn, FakeDiscord() as fake:
        async with replica(tmp_path / "a", zenn, fake, discord_shard_count=2, discord_shard_ids="0") as (a, model_a), \
                replica(tmp_path / "b", zenn, fake, discord_shard_count=2, discord_shard_ids="1") as (b, model_b):
            assert fake.identifies == [[0, 2], [1, 2]]
            await fake.dispatch("MESSAGE_CREATE", mention(fake, OTHER_CHANNEL_ID, zenn))
            await eventually(lambda: len(_answers(fake)) == 1)
            assert model_a.records == [] and model_b.records
            await fake.dispatch("MESSAGE_CREATE", mention(fake, CHANNEL_ID, zenn))
            await eventually(lambda: len(_answers(fake)) == 2)
            assert model_a.records
    assert _thread_parents(fake) == [str(OTHER_CHANNEL_ID), str(CHANNEL_ID)]


async def test_without_shard_settings_one_plain_client_runs_everything(tmp_path):
    async with ReplicaServer() as zenn, FakeDiscord() as fake:
        async with replica(tmp_path, zenn, fake) as (adapter, model):
            assert not isinstance(adapter.client, discord.AutoShardedClient)
            await fake.dispatch("MESSAGE_CREATE", mention(fake, OTHER_CHANNEL_ID, zenn))
            await eventually(lambda: len(_answers(fake)) == 1)
    assert fake.identifies == [None]  # no `shard` in IDENTIFY
    assert not any(path == "/gateway/bot" for _, path, _ in fake.calls)


@pytest.mark.parametrize("ids", ["0,1", "2"])
async def test_a_sharded_client_closed_before_login_and_bad_ids(tmp_path, ids):
    settings = dict(discord_token="t", discord_shard_count=2, discord_shard_ids=ids)
    if ids == "2":
        with pytest.raises(ValueError, match="DISCORD_SHARD_IDS must be distinct numbers from 0 to 1"):
            make_settings(tmp_path, **settings)
        return
    async with running(make_settings(tmp_path, **settings)) as (runtime, _):
        adapter = DiscordAdapter(runtime.browsing.settings, runtime.service)
        await adapter.close()  # discord.py itself would raise AttributeError here


def _answers(fake: FakeDiscord) -> list[tuple[str, str]]:
    """(channel, text) of each final answer posted (the status message edited into the answer)."""
    found: dict[str, tuple[str, str]] = {}  # one per message: an answer edited twice is one answer
    for method, path, body in fake.calls:
        if method == "PATCH" and "/messages/" in path and "921" in body.get("content", ""):
            found[path] = (path.split("/")[2], body["content"])
        elif method == "POST" and path.endswith("/messages") and "921" in body.get("content", ""):
            found[f"{path}#{len(found)}"] = (path.split("/")[2], body["content"])
    return list(found.values())


def _thread_parents(fake: FakeDiscord) -> list[str]:
    return [path.split("/")[2] for method, path, _ in fake.calls if method == "POST" and path.endswith("/threads")]
