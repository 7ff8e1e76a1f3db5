"""A Gemini API stub on 127.0.0.1: answers `models/{model}:generateContent` from a script and
records every request, so the real google-genai client (under langchain-google-genai) is tested
end to end."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from bot.bench.local_server import LocalServer

Responder = Callable[[dict, int], tuple[int, dict]]


def text_reply(text: str) -> dict:
    return _candidate({"text": text})


def call_reply(name: str, args: dict) -> dict:
    return _candidate({"functionCall": {"name": name, "args": args}})


def error_reply(code: int, status: str, message: str) -> dict:
    return {"error": {"code": code, "status": status, "message": message}}


def _candidate(part: dict) -> dict:
    return {
        "candidates": [{"content": {"role": "model", "parts": [part]}, "finishReason": "STOP", "index": 0}],
        "usageMetadata": {"promptTokenCount": 100, "candidatesTokenCount": 10, "totalTokenCount": 110},
        "modelVersion": "gemini-stub",
    }


class GeminiStub(LocalServer):
    def __init__(self, responder: Responder) -> None:
        self.responder = responder
        self.requests: list[dict] = []
        self.headers: list[dict] = []

        async def generate(request: web.Request) -> web.Response:
            body = await request.json()
            self.requests.append(body)
            self.headers.append(dict(request.headers))
            status, payload = self.responder(body, len(self.requests))
            return web.json_response(payload, status=status)

        app = web.Application()
        app.router.add_post("/{version}/models/{action}", generate)
        super().__init__(app)
