"""A Gemini API stub on 127.0.0.1, as strict as the real service where it matters to us.

It serves `POST /{v1,v1beta}/models/{model}:generateContent` (JSON) and
`:streamGenerateContent?alt=sse` (text in several `data:` chunks with pauses, usage on each
chunk, cumulative, as Gemini sends it), so the real google-genai client under
langchain-google-genai is exercised end to end. Like Gemini it answers 400 INVALID_ARGUMENT when
a `functionCall` turn is not followed by exactly its `functionResponse` parts.

What it answers comes from a `responder(body, n) -> (status, payload)` (raw control, for fault
tests) or from a `policy(messages) -> AIMessage` over LangChain messages, the same kind of policy
`ScriptedChatModel` takes. `promptTokenCount` is an estimate computed from the request (about
four characters a token for Latin text, one for CJK): a stub cannot know Gemini's tokenizer.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
import time
from dataclasses import dataclass, field

from aiohttp import web
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage

from bench.local_server import LocalServer

Responder = Callable[[dict, int], tuple[int, dict]]
Policy = Callable[[list[BaseMessage]], AIMessage]

PAIRING_ERROR = ("Please ensure that the number of function response parts is equal to the number of "
                 "function call parts of the function call turn.")
_CJK = re.compile(r"[\u3000-\u30ff\u3400-\u9fff\uf900-\uffef]")


def estimate_tokens(text: str) -> int:
    cjk = len(_CJK.findall(text))
    return cjk + (len(text) - cjk + 3) // 4


def text_reply(text: str) -> dict:
    return _candidate([{"text": text}])


def call_reply(name: str, args: dict) -> dict:
    return _candidate([{"functionCall": {"name": name, "args": args}}])


def error_reply(code: int, status: str, message: str) -> dict:
    return {"error": {"code": code, "status": status, "message": message}}


def _candidate(parts: list[dict]) -> dict:
    return {"candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": "STOP", "index": 0}],
            "modelVersion": "gemini-stub"}


def pairing_problem(body: dict) -> str | None:
    """Why Gemini would refuse these `contents`, or None: every model turn with function calls
    must be followed by one turn holding exactly as many function responses, for those names."""
    contents = body.get("contents") or []
    for index, content in enumerate(contents):
        calls = [p["functionCall"]["name"] for p in content.get("parts", []) if "functionCall" in p]
        responses_here = [p for p in content.get("parts", []) if "functionResponse" in p]
        if responses_here:
            previous = contents[index - 1] if index else {}
            expected = [p["functionCall"]["name"] for p in previous.get("parts", []) if "functionCall" in p]
            got = [p["functionResponse"]["name"] for p in responses_here]
            if sorted(expected) != sorted(got):
                return PAIRING_ERROR
        if calls:
            following = contents[index + 1] if index + 1 < len(contents) else None
            if following is None:
                return "Function call turn is the last turn: the request must end with a user turn."
            got = [p["functionResponse"]["name"] for p in following.get("parts", []) if "functionResponse" in p]
            if sorted(got) != sorted(calls):
                return PAIRING_ERROR
    return None


def messages_from(body: dict) -> list[BaseMessage]:
    """The request as LangChain messages, for a policy."""
    messages: list[BaseMessage] = []
    system = body.get("systemInstruction") or body.get("system_instruction")
    if system:
        messages.append(SystemMessage("".join(p.get("text", "") for p in system.get("parts", []))))
    call_ids: dict[str, list[str]] = {}
    for index, content in enumerate(body.get("contents") or []):
        parts = content.get("parts", [])
        if content.get("role") == "model":
            calls = []
            for n, part in enumerate(parts):
                if "functionCall" in part:
                    call = part["functionCall"]
                    call_id = f"call_{index}_{n}"
                    call_ids.setdefault(call["name"], []).append(call_id)
                    calls.append({"name": call["name"], "args": call.get("args") or {}, "id": call_id,
                                  "type": "tool_call"})
            text = "".join(p.get("text", "") for p in parts if "text" in p and not p.get("thought"))
            messages.append(AIMessage(content=text, tool_calls=calls))
            continue
        for part in parts:
            if "functionResponse" in part:
                response = part["functionResponse"]
                ids = call_ids.get(response["name"]) or ["call_unknown"]
                payload = response.get("response") or {}
                result = payload.get("output", payload.get("result", payload))
                messages.append(ToolMessage(content=result if isinstance(result, str) else json.dumps(
                    result, ensure_ascii=False), tool_call_id=ids.pop(0), name=response["name"]))
        text = "".join(p.get("text", "") for p in parts if "text" in p)
        if text:
            messages.append(HumanMessage(text))
    return messages


def parts_from(message: AIMessage) -> list[dict]:
    parts: list[dict] = []
    text = message.content if isinstance(message.content, str) else "".join(
        p.get("text", "") if isinstance(p, dict) else str(p) for p in message.content)
    if text:
        parts.append({"text": text})
    parts += [{"functionCall": {"name": c["name"], "args": c["args"]}} for c in message.tool_calls]
    return parts


@dataclass
class StubCall:
    """One request as the stub saw it."""

    body: dict
    streamed: bool
    prompt_tokens: int
    output_tokens: int
    sent_at: list[float] = field(default_factory=list)  # time.perf_counter() of each chunk written
    received_at: float = 0.0  # time.perf_counter() when the request arrived


class GeminiStub(LocalServer):
    """`async with GeminiStub(policy=...) as gemini:` then `base_url=gemini.url`.

    `chunk_chars` and `chunk_delay` shape streamed text answers; `call_delay` is how long the
    model thinks before its first chunk (or its JSON answer); `fail_stream_after` makes a
    streamed text answer break off (connection dropped) after that many chunks, as a failing
    network or server would.
    """

    def __init__(self, responder: Responder | None = None, *, policy: Policy | None = None,
                 chunk_chars: int = 40, chunk_delay: float = 0.0, fail_stream_after: int | None = None,
                 call_delay: float = 0.0) -> None:
        if (responder is None) == (policy is None):
            raise ValueError("give either a responder or a policy")
        self.responder = responder
        self.policy = policy
        self.chunk_chars = chunk_chars
        self.chunk_delay = chunk_delay
        self.fail_stream_after = fail_stream_after
        self.call_delay = call_delay
        self.calls: list[StubCall] = []
        self.headers: list[dict] = []
        app = web.Application()
        app.router.add_post("/{version}/models/{action}", self._handle)
        super().__init__(app)

    @property
    def requests(self) -> list[dict]:
        return [c.body for c in self.calls]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        received_at = time.perf_counter()
        body = await request.json()
        streamed = request.match_info["action"].endswith(":streamGenerateContent")
        self.headers.append(dict(request.headers))
        prompt_tokens = estimate_tokens(json.dumps(
            [body.get("systemInstruction"), body.get("contents"), body.get("tools")], ensure_ascii=False))
        call = StubCall(body, streamed, prompt_tokens, 0, received_at=received_at)
        self.calls.append(call)
        problem = pairing_problem(body)
        if problem:
            return web.json_response(error_reply(400, "INVALID_ARGUMENT", problem), status=400)
        if self.call_delay:
            await asyncio.sleep(self.call_delay)
        if self.responder is not None:
            status, payload = self.responder(body, len(self.calls))
        else:
            status, payload = 200, _candidate(parts_from(self.policy(messages_from(body))))
        if status != 200 or "error" in payload:
            return web.json_response(payload, status=status)
        parts = payload["candidates"][0]["content"]["parts"]
        call.output_tokens = estimate_tokens(json.dumps(parts, ensure_ascii=False))
        if not streamed:
            return web.json_response(payload | {"usageMetadata": _usage(prompt_tokens, call.output_tokens)})
        return await self._stream(request, payload, parts, call)

    async def _stream(self, request: web.Request, payload: dict, parts: list[dict], call: StubCall) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        chunks = _chunked(parts, self.chunk_chars)
        sizes = [len(json.dumps(c, ensure_ascii=False)) for c in chunks]
        sent_chars = 0
        for index, chunk_parts in enumerate(chunks):
            if index and self.chunk_delay:
                await asyncio.sleep(self.chunk_delay)
            if self.fail_stream_after is not None and index >= self.fail_stream_after:
                request.transport.close()  # the connection drops mid-answer
                return response
            sent_chars += sizes[index]
            last = index == len(chunks) - 1
            candidate = {"content": {"role": "model", "parts": chunk_parts}, "index": 0}
            if last:
                candidate["finishReason"] = "STOP"
            data = {"candidates": [candidate], "modelVersion": payload.get("modelVersion", "gemini-stub"),
                    # cumulative, as Gemini reports it, reaching the call's total on the last chunk
                    "usageMetadata": _usage(call.prompt_tokens, call.output_tokens * sent_chars // sum(sizes))}
            await response.write(f"data: {json.dumps(data, ensure_ascii=False)}\r\n\r\n".encode())
            call.sent_at.append(time.perf_counter())
        await response.write_eof()
        return response


def _chunked(parts: list[dict], size: int) -> list[list[dict]]:
    """Text in pieces of `size` characters; a function call whole, in one chunk, as Gemini sends it."""
    chunks: list[list[dict]] = []
    for part in parts:
        if "text" in part and size > 0:
            text = part["text"]
            chunks += [[{"text": text[i:i + size]}] for i in range(0, len(text), size)] or [[part]]
        else:
            chunks.append([part])
    return chunks or [[{"text": ""}]]


def _usage(prompt: int, output: int) -> dict:
    return {"promptTokenCount": prompt, "candidatesTokenCount": output, "totalTokenCount": prompt + output}
