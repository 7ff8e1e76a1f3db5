"""The Gemini stub is as strict as Gemini: unpaired function calls are refused with 400."""

from __future__ import annotations

import aiohttp

from bench.gemini_stub import PAIRING_ERROR, GeminiStub, pairing_problem, text_reply

CALL = {"role": "model", "parts": [{"functionCall": {"name": "read_page", "args": {"url": "x"}}}]}
RESPONSE = {"role": "user", "parts": [{"functionResponse": {"name": "read_page", "response": {"output": "ok"}}}]}
QUESTION = {"role": "user", "parts": [{"text": "次は？"}]}


def test_pairing_rules():
    assert pairing_problem({"contents": [QUESTION, CALL, RESPONSE]}) is None
    # a crash between the call and its result, then the next question: Gemini's 400
    assert pairing_problem({"contents": [QUESTION, CALL, QUESTION]}) == PAIRING_ERROR
    assert pairing_problem({"contents": [QUESTION, RESPONSE]}) == PAIRING_ERROR
    assert pairing_problem({"contents": [QUESTION, CALL]}) is not None
    two_calls = {"role": "model", "parts": CALL["parts"] * 2}
    assert pairing_problem({"contents": [QUESTION, two_calls, RESPONSE]}) == PAIRING_ERROR


async def test_unpaired_request_gets_400_and_streamed_text_comes_in_chunks():
    async with GeminiStub(lambda body, n: (200, text_reply("0123456789" * 5)), chunk_chars=20) as gemini:
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{gemini.url}/v1beta/models/m:generateContent",
                                 json={"contents": [QUESTION, CALL, QUESTION]}) as r:
                assert r.status == 400 and "function response parts" in (await r.json())["error"]["message"]
            async with http.post(f"{gemini.url}/v1beta/models/m:streamGenerateContent?alt=sse",
                                 json={"contents": [QUESTION]}) as r:
                events = [line for line in (await r.text()).splitlines() if line.startswith("data: ")]
    assert len(events) == 3  # 50 characters in chunks of 20
    assert gemini.calls[1].streamed and gemini.calls[1].prompt_tokens > 0
