"""The real ChatGoogleGenerativeAI, through the real graph, against a Gemini stub on 127.0.0.1."""

from __future__ import annotations

import json
import logging

from bench.replica import ReplicaServer
from tests.fakes.gemini import GeminiStub, call_reply, error_reply, text_reply
from tests.helpers import TRUSTED_REPLICA, make_settings
from bot.runtime import model_from, open_runtime

SECRET = "AIza-test-key-never-shown"


def _settings(tmp_path, zenn, gemini):
    return make_settings(tmp_path, zenn.url, google_api_key=SECRET, google_gemini_base_url=gemini.url,
                         zennbot_llm_max_retries=3)


async def test_tool_call_round_trip(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    async with ReplicaServer() as zenn:
        def responder(body: dict, n: int):
            if n == 1:
                return 200, call_reply("read_page", {"url": zenn.url + "/asap"})
            return 200, text_reply("asap の一番人気は DeepSeek-R1 の記事 (921 いいね) です。")

        async with GeminiStub(responder) as gemini:
            settings = _settings(tmp_path, zenn, gemini)
            async with await open_runtime(settings, model=model_from(settings), policy=TRUSTED_REPLICA) as rt:
                reply = await rt.service.handle("console:t", "u", zenn.url + "/asap 一番人気は？")
    assert reply.ok and "921" in reply.text
    assert [(s.url, s.summary) for s in reply.sources] == [(zenn.url + "/asap", "72 articles · 2,205 likes")]
    first, second = gemini.requests
    declared = {f["name"] for t in first["tools"] for f in t.get("functionDeclarations", [])}
    assert declared == {"read_page", "zenn"}
    assert "zennbot" in json.dumps(first["systemInstruction"], ensure_ascii=False)
    response_parts = [p["functionResponse"] for c in second["contents"] for p in c["parts"] if "functionResponse" in p]
    assert response_parts and "921" in json.dumps(response_parts, ensure_ascii=False)
    assert gemini.headers[0].get("x-goog-api-key") == SECRET  # sent to the API, nowhere else
    assert all(SECRET not in json.dumps(r) for r in gemini.requests)
    assert caplog.records and SECRET not in caplog.text  # never logged, even at DEBUG


async def _hello(tmp_path, responder) -> tuple:
    """Ask "こんにちは" once through the real Gemini client; (reply, thread history, stub)."""
    async with ReplicaServer() as zenn, GeminiStub(responder) as gemini:
        settings = _settings(tmp_path, zenn, gemini)
        async with await open_runtime(settings, model=model_from(settings), policy=TRUSTED_REPLICA) as rt:
            reply = await rt.service.handle("console:t", "u", "こんにちは")
            history = await rt.agent.history("console:t")
    return reply, history, gemini


async def test_rate_limited_twice_then_answers(tmp_path):
    def responder(body: dict, n: int):
        if n <= 2:
            return 429, error_reply(429, "RESOURCE_EXHAUSTED", "Quota exceeded")
        return 200, text_reply("こんにちは")

    reply, _, gemini = await _hello(tmp_path, responder)
    assert reply.ok and reply.text == "こんにちは" and len(gemini.requests) == 3


async def test_llm_failing_for_good_gives_a_clear_message(tmp_path):
    reply, history, gemini = await _hello(
        tmp_path, lambda body, n: (429, error_reply(429, "RESOURCE_EXHAUSTED", "Quota exceeded")))
    assert not reply.ok and "rate limit or quota" in reply.text
    assert "Traceback" not in reply.text and SECRET not in reply.text
    assert len(gemini.requests) == 3  # ZENNBOT_LLM_MAX_RETRIES attempts, then the message
    assert history == []  # the failed turn left nothing half-done in the thread


async def test_server_errors_for_good(tmp_path):
    reply, _, _ = await _hello(tmp_path, lambda body, n: (503, error_reply(503, "UNAVAILABLE", "overloaded")))
    assert not reply.ok and "not answering" in reply.text
