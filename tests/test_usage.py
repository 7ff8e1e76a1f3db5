"""What answers cost: the model's usage_metadata stored per run, `zennbot stats`, the daily budget."""

from __future__ import annotations

import json

from bench.gemini_stub import GeminiStub
from bench.replica import ReplicaServer
from bot.runtime import model_from, open_runtime
from bot.messages import Ask
from tests.helpers import TRUSTED_REPLICA, make_settings, store_env
from tests.test_cli import _zennbot
from tests.test_streaming import read_then_answer


async def _ask(runtime, zenn, platform="discord", workspace="G1", thread="discord:1"):
    events = [e async for e in runtime.service.stream(Ask(thread, "u1", zenn.url + "/asap 一番人気は？",
                                                          platform, workspace))]
    return events[-1].reply


async def test_usage_is_stored_and_shown_by_zennbot_stats(tmp_path):
    async with ReplicaServer() as zenn, GeminiStub(policy=read_then_answer(zenn.url)) as gemini:
        settings = make_settings(tmp_path, zenn.url, google_api_key="k", google_gemini_base_url=gemini.url)
        async with await open_runtime(settings, model=model_from(settings), policy=TRUSTED_REPLICA) as rt:
            reply = await _ask(rt, zenn)
            await rt.service.record_feedback("discord", "discord:1", "m1", "u1", "good")
            await rt.service.record_feedback("discord", "discord:1", "m1", "u2", "bad")
            await rt.service.record_feedback("discord", "discord:1", "m1", "u2", "good")  # changed their mind
    assert reply.ok
    stub_input = sum(c.prompt_tokens for c in gemini.calls)
    stub_output = sum(c.output_tokens for c in gemini.calls)
    assert [(u.input_tokens, u.output_tokens) for u in reply.usage] == [(stub_input, stub_output)]
    env = store_env(tmp_path, "zennbot.db")  # the store `make_settings` gave this test
    code, out, err = await _zennbot("stats", "--json", env=env)
    assert code == 0, err
    stats = json.loads(out)
    assert stats["by_platform"] == [{"key": "discord", "runs": 1, "input_tokens": stub_input,
                                     "output_tokens": stub_output}]
    assert stats["by_thread"][0]["key"] == "discord:1"
    assert stats["feedback"] == {"discord": {"good": 2, "bad": 0}}
    code, text, _ = await _zennbot("stats", env=env)
    assert code == 0 and f"{stub_input:,}" in text and "👍 2" in text


async def test_daily_budget_stops_new_runs_in_that_workspace_only(tmp_path):
    async with ReplicaServer() as zenn, GeminiStub(policy=read_then_answer(zenn.url)) as gemini:
        settings = make_settings(tmp_path, zenn.url, google_api_key="k", google_gemini_base_url=gemini.url,
                                 zennbot_daily_token_budget=10)
        async with await open_runtime(settings, model=model_from(settings), policy=TRUSTED_REPLICA) as rt:
            first = await _ask(rt, zenn)
            calls = len(gemini.calls)
            second = await _ask(rt, zenn, thread="discord:2")
            assert len(gemini.calls) == calls  # refused before the model was asked
            elsewhere = await _ask(rt, zenn, workspace="G2", thread="discord:3")
    assert first.ok and not second.ok and "budget" in second.text and "00:00 UTC" in second.text
    assert elsewhere.ok
