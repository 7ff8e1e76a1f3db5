"""The daily token budget under concurrency and across replicas: admission reserves an estimate in
the store, the end of the run settles it. Direct messages have a bucket per user. The burst and
the reservations run on both stores."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from bench.gemini_stub import GeminiStub
from bench.replica import ReplicaServer
from bot.messages import Ask
from bot.runtime import model_from, open_runtime
from bot.store import open_store
from bot.store.base import BudgetClaim, BudgetRefusal
from tests.helpers import TRUSTED_REPLICA, make_settings, query_rows
from tests.pg import both_stores
from tests.test_streaming import read_then_answer


async def _answer(service, ask: Ask):
    return [e async for e in service.stream(ask)][-1].reply


async def spent(settings, platform: str, workspace: str) -> int:
    rows = await query_rows(settings, "SELECT COALESCE(SUM(input_tokens + output_tokens), 0) FROM run_usage "
                                      "WHERE platform = ? AND workspace = ?", (platform, workspace))
    return rows[0][0]


@both_stores
async def test_a_burst_on_two_replicas_spends_at_most_the_budget_plus_one_run(tmp_path):
    async with ReplicaServer() as zenn, GeminiStub(policy=read_then_answer(zenn.url)) as gemini:
        settings = make_settings(tmp_path, zenn.url, google_api_key="k", google_gemini_base_url=gemini.url)
        question = zenn.url + "/asap 一番人気は？"
        async with await open_runtime(settings, model=model_from(settings), policy=TRUSTED_REPLICA) as a, \
                await open_runtime(settings, model=model_from(settings), policy=TRUSTED_REPLICA) as b:
            warm_up = await _answer(a.service, Ask("discord:0", "u0", question, "discord", "G0"))
            run = sum(u.input_tokens + u.output_tokens for u in warm_up.usage)  # what one question costs
            budget = run * 3 // 2
            for replica in (a, b):  # 1.5 runs' worth, each run setting aside what one costs
                replica.service.limits = replace(replica.service.limits, daily_token_budget=budget,
                                                 run_token_estimate=run)
            replies = await asyncio.gather(*(
                _answer(replica.service, Ask(f"discord:{n}", f"u{n}", question, "discord", "G1"))
                for n, replica in enumerate([a, b] * 4, 1)))
            later = await _answer(b.service, Ask("discord:20", "u20", question, "discord", "G1"))
            elsewhere = await _answer(a.service, Ask("discord:21", "u21", question, "discord", "G2"))
    assert warm_up.ok and run > 0
    admitted = [r for r in replies if r.ok]
    refused = [r for r in replies if not r.ok]
    assert len(admitted) == 2  # 0 and then 1 run's worth were below 1.5 runs; 2 were not
    assert all("budget" in r.text and "00:00 UTC" in r.text for r in refused)
    assert await spent(settings, "discord", "G1") <= budget + run
    assert not later.ok and "budget" in later.text  # settled, the day's spending still counts
    assert elsewhere.ok  # other servers are not touched


async def test_direct_messages_have_a_bucket_per_user_and_no_way_around_a_spent_server(tmp_path):
    async with ReplicaServer() as zenn, GeminiStub(policy=read_then_answer(zenn.url)) as gemini:
        settings = make_settings(tmp_path, zenn.url, google_api_key="k", google_gemini_base_url=gemini.url,
                                 zennbot_daily_token_budget=10, zennbot_run_token_estimate=5)
        question = zenn.url + "/asap 一番人気は？"
        async with await open_runtime(settings, model=model_from(settings), policy=TRUSTED_REPLICA) as rt:
            service = rt.service
            alice_dm = await _answer(service, Ask("discord:100", "discord:alice", question, "discord", ""))
            alice_again = await _answer(service, Ask("discord:100", "discord:alice", question, "discord", ""))
            bob_dm = await _answer(service, Ask("discord:101", "discord:bob", question, "discord", ""))
            carol_server = await _answer(service, Ask("discord:102", "discord:carol", question, "discord", "G1"))
            carol_dm = await _answer(service, Ask("discord:103", "discord:carol", question, "discord", ""))
            dave_server = await _answer(service, Ask("discord:104", "discord:dave", question, "discord", "G2"))
    assert alice_dm.ok and not alice_again.ok and "your direct messages" in alice_again.text
    assert bob_dm.ok  # Alice's DMs spent nothing of Bob's
    assert carol_server.ok and not carol_dm.ok and "a server you asked me in" in carol_dm.text
    assert dave_server.ok  # DMs count towards no server
    assert await spent(settings, "discord", "") > 0


@both_stores
async def test_reservations_are_atomic_across_connections_and_settle_to_what_was_used(tmp_path):
    settings = make_settings(tmp_path)
    a, b = await open_store(settings), await open_store(settings)
    try:
        results = await asyncio.gather(*(
            store.reserve_tokens(BudgetClaim(f"r{n}", "slack", "T1", f"u{n}", 100), 450)
            for n, store in enumerate([a, b] * 10)))
        assert sum(r is None for r in results) == 5  # 0, 100, 200, 300 and 400 were below 450
        assert {r for r in results if r is not None} == {BudgetRefusal("T1", 500)}
        admitted = [f"r{n}" for n, r in enumerate(results) if r is None]
        await a.settle_tokens(admitted[0], 0)  # it never ran
        await b.settle_tokens(admitted[1], 30)
        assert await b.reserve_tokens(BudgetClaim("r20", "slack", "T1", "u", 100), 450) is None  # 330 -> 430
        assert await a.reserve_tokens(BudgetClaim("r21", "slack", "T1", "u", 100), 450) is None  # 430 -> 530
        assert await a.reserve_tokens(BudgetClaim("r23", "slack", "T1", "u", 100), 450) == BudgetRefusal("T1", 530)
        assert await a.reserve_tokens(BudgetClaim("r22", "slack", "T2", "u", 100), 450) is None  # its own bucket
    finally:
        await a.close()
        await b.close()
