"""A mock Slack Web API on 127.0.0.1 (after bolt-python's tests/mock_web_api_server): records
every call and answers as Slack does; plus helpers that sign requests as Slack signs them.
Used by the tests (as `tests.fakes.slack`) and by `zennbot bench load`."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import time
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlencode

from aiohttp import WSMsgType, web

from bench.local_server import LocalServer

BOT_USER = "UBOT"
TEAM = "T1"


MARKDOWN_TEXT_LIMIT = 12_000  # markdown_text per call, and all markdown blocks of one payload
CHANNEL_PREFIXES = ("C", "G")  # streams into channels need the recipient's team and user


@dataclass
class Message:
    """A message as the fake workspace holds it: its Markdown text, its other blocks, and whether
    it is a stream still open for appends."""

    channel: str
    ts: str
    thread_ts: str | None
    text: str
    blocks: list[dict] = field(default_factory=list)
    streaming: bool = False
    appends: int = 0
    started: float = 0.0
    metadata: dict | None = None  # what chat.postMessage's `metadata` carried


class MockSlackApi(LocalServer):
    """The Web API (`POST /api/{method}`), a `response_url` endpoint, and a Socket Mode
    WebSocket (`apps.connections.open` hands out its URL).

    It keeps the workspace's messages (`thread()`), streams included, and answers like Slack:
    `chat.startStream` in a channel without `recipient_team_id`/`recipient_user_id` →
    `missing_recipient_*`; more than 12,000 characters of Markdown in one call → `msg_too_long`;
    appending to or stopping a stream that is over → `message_not_in_streaming_state`. Switches:
    `expire_streams_after_appends` / `stream_lifetime` end streams the way Slack's expiry does,
    `rate_limit[method] = n` answers the next n calls of a method with HTTP 429 and Retry-After,
    `fail[method] = [error, ...]` answers the next calls with those errors, `hold_next[method] = n`
    holds the next n calls until `release` is set and then drops them (never acted on).
    """

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []
        self.call_times: list[float] = []  # time.monotonic() of each call, parallel to `calls`
        self.errors: list[tuple[str, str]] = []  # (method, error) of each refused call
        self.responses: list[dict] = []  # what response_url received
        self.acks: list[dict] = []  # what Socket Mode clients sent back
        self.messages: dict[tuple[str, str], Message] = {}
        self.stream_threads: dict[str, str] = {}  # a streamed message's ts -> its thread's ts (kept after a delete)
        self.too_long_over: int | None = None  # answer msg_too_long for longer messages
        self.reject_token = False
        self.rate_limit: dict[str, int] = {}
        self.fail: dict[str, list[str]] = {}
        self.expire_streams_after_appends: int | None = None
        self.stream_lifetime: float | None = None
        self.hold_next: dict[str, int] = {}  # method -> calls held until `release` is set, then dropped
        self.release = asyncio.Event()
        self._ts = itertools.count(1)
        self._sockets: list[web.WebSocketResponse] = []
        app = web.Application()
        app.router.add_route("*", "/api/{method}", self._api)  # Slack takes GET and POST alike
        app.router.add_post("/respond/{token}", self._respond)
        app.router.add_get("/link", self._socket_mode)
        super().__init__(app)

    def named(self, method: str) -> list[dict]:
        return [args for name, args in self.calls if name == method]

    def thread(self, channel: str, thread_ts: str) -> list[Message]:
        """The bot's messages in a thread, oldest first (deleted ones are gone)."""
        found = [m for m in self.messages.values() if m.channel == channel and m.thread_ts == thread_ts]
        return sorted(found, key=lambda m: m.ts)

    def thread_text(self, channel: str, thread_ts: str) -> str:
        return "\n".join(m.text for m in self.thread(channel, thread_ts))

    def feedback_click(self, message: Message, value: str, user: str = "UALICE") -> dict:
        """The `block_actions` payload Slack sends when `user` clicks 👍 ("good") or 👎 ("bad")
        under `message`. Raises `AssertionError` when the message has no feedback buttons."""
        for block in message.blocks:
            for element in block.get("elements", []) if block.get("type") == "context_actions" else []:
                if element.get("type") == "feedback_buttons":
                    button = element["positive_button" if value == "good" else "negative_button"]
                    action = {"type": "feedback_buttons", "action_id": element["action_id"],
                              "block_id": block.get("block_id", "b1"), "value": button["value"],
                              "action_ts": f"{time.time():.6f}"}
                    return {"type": "block_actions", "user": {"id": user, "team_id": TEAM},
                            "api_app_id": "A1", "token": "legacy", "trigger_id": "t1",
                            "team": {"id": TEAM, "domain": "test"},
                            "container": {"type": "message", "message_ts": message.ts, "channel_id": message.channel,
                                          "is_ephemeral": False, "thread_ts": message.thread_ts},
                            "channel": {"id": message.channel, "name": "general"},
                            "message": {"type": "message", "ts": message.ts, "thread_ts": message.thread_ts,
                                        "text": message.text, "blocks": message.blocks, "user": BOT_USER},
                            "actions": [action]}
        raise AssertionError(f"message {message.ts} has no feedback buttons")

    @property
    def socket_clients(self) -> int:
        return sum(1 for ws in self._sockets if not ws.closed)

    async def push(self, kind: str, payload: dict) -> str:
        """Send a Socket Mode envelope (e.g. "events_api", "slash_commands"); returns its id."""
        envelope_id = f"env-{next(self._ts)}"
        for ws in self._sockets:
            if not ws.closed:
                await ws.send_json({"envelope_id": envelope_id, "type": kind, "payload": payload,
                                    "accepts_response_payload": kind != "events_api", "retry_attempt": 0})
        return envelope_id

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        raw = await request.text()
        args = json.loads(raw or "{}") if request.content_type == "application/json" else dict(parse_qsl(raw))
        args = {**dict(request.query), **args}
        for key in ("blocks", "chunks", "loading_messages", "metadata"):
            if isinstance(args.get(key), str):  # form-encoded JSON
                args[key] = json.loads(args[key])
        self.calls.append((method, args))
        self.call_times.append(time.monotonic())
        if self.rate_limit.get(method):
            self.rate_limit[method] -= 1
            self.errors.append((method, "ratelimited"))
            return web.json_response({"ok": False, "error": "ratelimited"}, status=429, headers={"Retry-After": "1"})
        if self.hold_next.get(method):  # a call in flight when its caller dies: Slack never acts on it
            self.hold_next[method] -= 1
            await self.release.wait()
            return _error("request_timeout")
        if self.fail.get(method):
            self.errors.append((method, self.fail[method][0]))
            return _error(self.fail[method].pop(0))
        if method == "auth.test" and self.reject_token:
            return _error("invalid_auth")
        if method == "auth.test":
            return web.json_response({"ok": True, "user_id": BOT_USER, "bot_id": "BBOT", "team_id": TEAM,
                                      "user": "zennbot", "team": "Test"})
        if method == "apps.connections.open":
            return web.json_response({"ok": True, "url": self.url.replace("http://", "ws://") + "/link"})
        handler = getattr(self, "_" + method.replace(".", "_"), None)
        response = handler(args) if handler is not None else web.json_response({"ok": True})
        if b'"ok": false' in response.body:
            self.errors.append((method, json.loads(response.body)["error"]))
        return response

    # The methods the bot uses, as Slack answers them.

    def _chat_postMessage(self, args: dict) -> web.Response:
        text, problem = self._content(args)
        if problem:
            return _error(problem)
        message = Message(args.get("channel", ""), self._next_ts(), args.get("thread_ts"), text,
                          _other_blocks(args), metadata=args.get("metadata"))
        self.messages[(message.channel, message.ts)] = message
        return web.json_response({"ok": True, "channel": message.channel, "ts": message.ts})

    def _conversations_history(self, args: dict) -> web.Response:
        """The channel's messages (not thread replies), newest first; their `metadata` only with
        `include_all_metadata`, as Slack does."""
        channel = args.get("channel", "")
        if not channel:
            return _error("channel_not_found")
        found = sorted((m for m in self.messages.values() if m.channel == channel and m.thread_ts in (None, m.ts)),
                       key=lambda m: float(m.ts), reverse=True)
        limit = int(args.get("limit") or 100)
        with_metadata = str(args.get("include_all_metadata", "")).lower() in ("1", "true")
        messages = [{"type": "message", "user": BOT_USER, "ts": m.ts, "text": m.text}
                    | ({"metadata": m.metadata} if with_metadata and m.metadata else {}) for m in found[:limit]]
        return web.json_response({"ok": True, "messages": messages, "has_more": len(found) > limit})

    def _chat_update(self, args: dict) -> web.Response:
        message = self.messages.get((args.get("channel", ""), args.get("ts", "")))
        if message is None:
            return _error("message_not_found")
        text, problem = self._content(args)
        if problem:
            return _error(problem)
        message.text, message.blocks, message.streaming = text, _other_blocks(args), False
        return web.json_response({"ok": True, "channel": message.channel, "ts": message.ts})

    def _chat_delete(self, args: dict) -> web.Response:
        if self.messages.pop((args.get("channel", ""), args.get("ts", "")), None) is None:
            return _error("message_not_found")
        return web.json_response({"ok": True, "channel": args.get("channel"), "ts": args.get("ts")})

    def _chat_postEphemeral(self, args: dict) -> web.Response:
        if not args.get("user") or not args.get("channel"):
            return _error("user_not_in_channel")
        return web.json_response({"ok": True, "message_ts": self._next_ts()})

    def _chat_startStream(self, args: dict) -> web.Response:
        channel = args.get("channel", "")
        if not channel or not args.get("thread_ts"):
            return _error("invalid_arguments")
        if channel.startswith(CHANNEL_PREFIXES):
            for key in ("recipient_team_id", "recipient_user_id"):
                if not args.get(key):
                    return _error(f"missing_{key}")
        text, problem = self._stream_text(args, "")
        if problem:
            return _error(problem)
        message = Message(channel, self._next_ts(), args["thread_ts"], text, streaming=True,
                          started=time.monotonic())
        self.messages[(channel, message.ts)] = message
        self.stream_threads[message.ts] = message.thread_ts
        return web.json_response({"ok": True, "channel": channel, "ts": message.ts})

    def _chat_appendStream(self, args: dict) -> web.Response:
        message, problem = self._add_to_stream(args)
        if problem:
            return _error(problem)
        message.appends += 1
        return web.json_response({"ok": True, "channel": message.channel, "ts": message.ts})

    def _chat_stopStream(self, args: dict) -> web.Response:
        message, problem = self._add_to_stream(args)
        if problem:
            return _error(problem)
        message.blocks = list(args.get("blocks") or [])
        message.streaming = False
        return web.json_response({"ok": True, "channel": message.channel, "ts": message.ts,
                                  "message": {"ts": message.ts, "text": message.text, "blocks": message.blocks}})

    def _add_to_stream(self, args: dict) -> tuple[Message | None, str | None]:
        """Append the call's text to its open stream: (the message, None), or (None, Slack's error)."""
        message, problem = self._open_stream(args)
        if problem:
            return None, problem
        text, problem = self._stream_text(args, message.text)
        if problem:
            return None, problem
        message.text += text
        return message, None

    def _assistant_threads_setStatus(self, args: dict) -> web.Response:
        if not args.get("channel_id") or not args.get("thread_ts") or "status" not in args:
            return _error("invalid_arguments")
        return web.json_response({"ok": True})

    def _open_stream(self, args: dict) -> tuple[Message, str | None]:
        message = self.messages.get((args.get("channel", ""), args.get("ts", "")))
        if message is None:
            return Message("", "", None, ""), "message_not_found"
        expired = ((self.expire_streams_after_appends is not None
                    and message.appends >= self.expire_streams_after_appends)
                   or (self.stream_lifetime is not None and time.monotonic() - message.started > self.stream_lifetime))
        if not message.streaming or expired:
            message.streaming = False
            return message, "message_not_in_streaming_state"
        return message, None

    def _content(self, args: dict) -> tuple[str, str | None]:
        """The Markdown text of a posted or updated message (markdown_text, markdown blocks, or
        text), or the error Slack gives."""
        markdown = [b.get("text", "") for b in args.get("blocks") or [] if b.get("type") == "markdown"]
        if args.get("markdown_text") and (args.get("blocks") or args.get("text")):
            return "", "markdown_text_conflict"
        text = args.get("markdown_text") or "\n".join(markdown) or args.get("text") or ""
        if sum(len(m) for m in markdown) > MARKDOWN_TEXT_LIMIT or len(args.get("markdown_text") or "") > MARKDOWN_TEXT_LIMIT:
            return "", "msg_too_long"
        if self.too_long_over is not None and len(text) > self.too_long_over:
            return "", "msg_too_long"
        return text, None

    def _stream_text(self, args: dict, so_far: str) -> tuple[str, str | None]:
        """The Markdown a stream call adds (markdown_text and markdown_text chunks), or its error."""
        chunks = args.get("chunks") or []
        if any(c.get("type") not in ("markdown_text", "task_update", "plan_update", "blocks") for c in chunks):
            return "", "invalid_chunks"
        text = (args.get("markdown_text") or "") + "".join(c.get("text", "") for c in chunks
                                                             if c.get("type") == "markdown_text")
        if len(text) > MARKDOWN_TEXT_LIMIT:
            return "", "msg_too_long"
        if self.too_long_over is not None and len(so_far) + len(text) > self.too_long_over:
            return "", "msg_too_long"
        return text, None

    def _next_ts(self) -> str:
        return f"1700000000.{next(self._ts):06d}"

    async def _respond(self, request: web.Request) -> web.Response:
        self.responses.append(await request.json())
        return web.Response(text="ok")

    async def _socket_mode(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self._sockets.append(ws)
        await ws.send_json({"type": "hello", "num_connections": 1, "connection_info": {"app_id": "A1"},
                            "debug_info": {"host": "fake", "approximate_connection_time": 3600}})
        async for message in ws:
            if message.type == WSMsgType.TEXT:
                self.acks.append(json.loads(message.data))
        return ws


def _error(error: str) -> web.Response:
    return web.json_response({"ok": False, "error": error})


def _other_blocks(args: dict) -> list[dict]:
    return [b for b in args.get("blocks") or [] if b.get("type") != "markdown"]


def signed_headers(secret: str, body: str, content_type: str, timestamp: int | None = None) -> dict:
    ts = str(timestamp or int(time.time()))
    digest = hmac.new(secret.encode(), f"v0:{ts}:{body}".encode(), hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": f"v0={digest}", "Content-Type": content_type}


def action_body(payload: dict) -> str:
    """An interactivity request as Slack posts it (form-encoded `payload=`)."""
    return urlencode({"payload": json.dumps(payload)})


def event_body(event: dict, event_id: str, team: str = TEAM) -> str:
    return json.dumps({"type": "event_callback", "team_id": team, "api_app_id": "A1", "event_id": event_id,
                       "event_time": int(time.time()), "event": event, "token": "legacy"})


async def eventually(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)
