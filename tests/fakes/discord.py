"""A fake Discord on 127.0.0.1: the REST routes and gateway events discord.py needs, recording
every REST call. Shapes follow discord/types/*.py.

As strict as Discord where the bot could get it wrong: content over 2,000 characters is refused
with Discord's 400 (50035), editing or deleting a message that does not exist is a 404 (10008),
editing one older than an hour by the fake's clock (`advance`) is a 400 (30046), and a 429 with
`Via` and `X-RateLimit-*` headers can be asked for. The bot's messages are kept
(`stored`, with their components), every message write is recorded with its time (`writes`),
and `button_press` makes the INTERACTION_CREATE of a user clicking a button.

Sharding as Discord does it: an IDENTIFY with `shard: [id, count]` gets READY and GUILD_CREATE
for the guilds of that shard only (`(guild_id >> 22) % count`), and each guild's events go to
its shard's socket; direct messages go to shard 0. An IDENTIFY without `shard` gets everything."""

from __future__ import annotations

import asyncio
import copy
import itertools
import json
import time
from dataclasses import dataclass

from aiohttp import WSMsgType, web

from bench.local_server import LocalServer

BOT_ID, APP_ID, GUILD_ID, CHANNEL_ID = 4200, 4300, 9000, 9100
OTHER_GUILD_ID, OTHER_CHANNEL_ID = (1 << 22) + 9000, 9200  # on shard 1 of 2 (GUILD_ID is on shard 0)
CHANNELS = {GUILD_ID: CHANNEL_ID, OTHER_GUILD_ID: OTHER_CHANNEL_ID}
TIMESTAMP = "2026-11-28T00:00:00.000000+00:00"


def user(uid: int, name: str, bot: bool = False) -> dict:
    return {"id": str(uid), "username": name, "discriminator": "0", "global_name": None, "avatar": None, "bot": bot}


BOT = user(BOT_ID, "zennbot", bot=True)
MESSAGE_LIMIT = 2_000
MANAGE_MESSAGES = 1 << 13


EDIT_WINDOW = 3600.0  # s after which Discord refuses edits of a message (error 30046)


@dataclass(frozen=True)
class Write:
    """A message POST, PATCH or DELETE as the fake received it (`at` is time.monotonic())."""

    at: float
    method: str
    channel: str
    message_id: str  # "" for a POST
    body: dict
    status: int


class FakeDiscord(LocalServer):
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict]] = []
        self._ids = itertools.count(100_000)
        self._seq = itertools.count(1)
        self._sockets: list[tuple[web.WebSocketResponse, list[int] | None]] = []
        self._interaction_types: dict[str, int] = {}
        self.identified = asyncio.Event()
        self.identifies: list[list[int] | None] = []  # the `shard` of each IDENTIFY
        self.dispatched: list[tuple[str, int | None]] = []  # (event, shard id of the socket it went to)
        self._channel_guild = {str(c): g for g, c in CHANNELS.items()}
        self.fail_next_send_with_429 = 0
        self.reject_token = False
        self.original: dict = {}
        self.stored: dict[str, dict] = {}  # the bot's messages by id, as they are now
        self.writes: list[Write] = []
        self.threads: dict[str, dict] = {}
        self.rate_limit_next_edit: float | None = None  # retry_after of a 429 for the next PATCH
        self.refuse_threads = False  # the bot lacks Create Public Threads
        self.guild_roles: list[int] = []  # role ids the guilds have besides @everyone
        self.nonces: dict[tuple[str, str], str] = {}  # (channel, nonce) -> message id, for enforce_nonce
        self.now = 0.0  # Discord's clock in seconds, for the edit window: move it with `advance`
        self._posted_at: dict[str, float] = {}  # message id -> `now` when it was posted
        self.fail_next_edits = 0  # PATCHes to refuse with a 400 (an error discord.py does not retry)
        app = web.Application()
        app.router.add_get("/gateway", self._gateway)
        app.router.add_get("/api/v10/gateway/bot", self._gateway_bot)
        app.router.add_route("*", "/api/v10/{path:.*}", self._rest)
        super().__init__(app)

    def advance(self, seconds: float) -> None:
        """Move Discord's clock on: messages older than an hour can no longer be edited (30046)."""
        self.now += seconds

    def sent(self) -> list[dict]:
        return [body | {"channel": path.split("/")[2]} for method, path, body in self.calls
                if method == "POST" and path.endswith("/messages") and path.startswith("/channels/")]

    def edits(self) -> list[dict]:
        return [body for method, path, body in self.calls if method == "PATCH" and "/messages/" in path]

    def message(self, channel_id: int, author: dict, content: str, mentions: list[dict] = (), mid=None) -> dict:
        guild_id = self._channel_guild.get(str(channel_id), GUILD_ID)
        return {"id": str(mid or next(self._ids)), "channel_id": str(channel_id), "guild_id": str(guild_id),
                "author": author, "member": {"roles": [], "joined_at": TIMESTAMP, "deaf": False, "mute": False,
                                             "flags": 0},
                "content": content, "timestamp": TIMESTAMP, "edited_timestamp": None, "tts": False,
                "mention_everyone": "@everyone" in content, "mentions": list(mentions), "mention_roles": [],
                "attachments": [], "embeds": [], "pinned": False, "type": 0}

    def slash_command(self, channel_id: int, author: dict, name: str, subcommand: str | None = None,
                      permissions: int | None = None, roles: tuple[int, ...] = (), **options: str) -> dict:
        """An INTERACTION_CREATE payload for a slash command typed by `author` (`/name subcommand
        option:value…`), who has `permissions` in the channel and `roles`."""
        channel = {"id": str(channel_id), "type": 0, "guild_id": str(GUILD_ID), "name": "general", "position": 0,
                   "permission_overwrites": [], "nsfw": False, "parent_id": None}
        interaction_id = str(next(self._ids))
        self._interaction_types[interaction_id] = 2
        return {"id": interaction_id, "application_id": str(APP_ID), "type": 2, "token": "itoken",
                "version": 1, "guild_id": str(GUILD_ID), "channel_id": str(channel_id), "channel": channel,
                "member": {"user": author, "roles": [str(r) for r in roles], "joined_at": TIMESTAMP, "deaf": False,
                           "mute": False, "flags": 0,
                           "permissions": str(559623605571137 if permissions is None else permissions)},
                "data": {"id": "777", "name": name, "type": 1, "options": (
                    [{"name": k, "type": 3, "value": v} for k, v in options.items()] if subcommand is None else
                    [{"name": subcommand, "type": 1,
                      "options": [{"name": k, "type": 3, "value": v} for k, v in options.items()]}])},
                "app_permissions": "559623605571137", "locale": "ja", "guild_locale": "ja", "entitlements": [],
                "authorizing_integration_owners": {"0": str(GUILD_ID)}, "context": 0,
                "attachment_size_limit": 8_388_608}

    def thread_messages(self, channel_id: int | str) -> list[dict]:
        """The bot's messages in a channel now, oldest first."""
        return [m for m in self.stored.values() if m["channel_id"] == str(channel_id)]

    def writes_in(self, channel_id: int | str) -> list[Write]:
        return [w for w in self.writes if w.channel == str(channel_id)]

    def callbacks(self) -> list[dict]:
        """The bodies of the interaction responses, in order."""
        return [b for m, p, b in self.calls if p.startswith("/interactions/")]

    def button_press(self, message: dict, custom_id: str, presser: dict, permissions: int = 0) -> dict:
        """An INTERACTION_CREATE payload for `presser` clicking the button `custom_id` on
        `message` (a stored message, or a copy kept from before an edit), with `permissions` in
        that channel."""
        channel_id = message["channel_id"]
        channel = self.threads.get(channel_id) or {
            "id": channel_id, "type": 0, "guild_id": str(GUILD_ID), "name": "general", "position": 0,
            "permission_overwrites": [], "nsfw": False, "parent_id": None}
        interaction_id = str(next(self._ids))
        self._interaction_types[interaction_id] = 3
        return {"id": interaction_id, "application_id": str(APP_ID), "type": 3, "token": "btoken",
                "version": 1, "guild_id": str(GUILD_ID), "channel_id": channel_id, "channel": channel,
                "member": {"user": presser, "roles": [], "joined_at": TIMESTAMP, "deaf": False, "mute": False,
                           "flags": 0, "permissions": str(permissions)},
                "message": copy.deepcopy(message), "data": {"custom_id": custom_id, "component_type": 2},
                "app_permissions": "559623605571137", "locale": "ja", "guild_locale": "ja", "entitlements": [],
                "authorizing_integration_owners": {"0": str(GUILD_ID)}, "context": 0,
                "attachment_size_limit": 8_388_608}

    def followups(self) -> list[dict]:
        return [body for method, path, body in self.calls if method == "POST" and path.startswith("/webhooks/")]

    async def dispatch(self, event: str, data: dict) -> None:
        """Send an event on the socket of the shard its guild belongs to (every socket that
        identified without a shard gets it too)."""
        guild_id = int(data.get("guild_id") or 0)
        for ws, shard in self._sockets:
            if not ws.closed and (shard is None or _shard_of(guild_id, shard[1]) == shard[0]):
                self.dispatched.append((event, shard[0] if shard else None))
                await ws.send_json({"op": 0, "t": event, "s": next(self._seq), "d": data})

    async def __aexit__(self, *exc: object) -> None:
        for ws, _ in self._sockets:
            await ws.close()
        await super().__aexit__(*exc)

    async def _gateway_bot(self, request: web.Request) -> web.Response:
        self.calls.append((request.method, "/gateway/bot", {}))
        return _json({"url": f"ws://{request.host}/gateway", "shards": 2, "session_start_limit": {
            "total": 1000, "remaining": 1000, "reset_after": 0, "max_concurrency": 1}})

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_json({"op": 10, "d": {"heartbeat_interval": 45000}, "s": None, "t": None})
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            payload = json.loads(msg.data)
            if payload["op"] == 1:
                await ws.send_json({"op": 11, "d": None, "s": None, "t": None})
            elif payload["op"] == 2:
                shard = payload["d"].get("shard")
                self.identifies.append(shard)
                self._sockets.append((ws, shard))
                guilds = [g for g in CHANNELS if shard is None or _shard_of(g, shard[1]) == shard[0]]
                ready = {"v": 10, "user": BOT, "guilds": [{"id": str(g), "unavailable": True} for g in guilds],
                         "session_id": f"s{len(self.identifies)}", "resume_gateway_url": "ws://127.0.0.1/gateway",
                         "application": {"id": str(APP_ID), "flags": 0}, "private_channels": [],
                         "relationships": [], "_trace": []}
                if shard is not None:
                    ready["shard"] = shard
                await ws.send_json({"op": 0, "t": "READY", "s": next(self._seq), "d": ready})
                for guild_id in guilds:
                    await ws.send_json({"op": 0, "t": "GUILD_CREATE", "s": next(self._seq),
                                        "d": self._guild(guild_id)})
                self.identified.set()
        return ws

    def _guild(self, guild_id: int) -> dict:
        channel_id = CHANNELS[guild_id]
        return {"id": str(guild_id), "name": "test", "owner_id": "1", "icon": None, "splash": None,
                "discovery_splash": None, "afk_channel_id": None, "afk_timeout": 300, "verification_level": 0,
                "default_message_notifications": 0, "explicit_content_filter": 0, "mfa_level": 0,
                "application_id": None, "system_channel_id": None, "system_channel_flags": 0,
                "rules_channel_id": None, "vanity_url_code": None, "description": None, "banner": None,
                "premium_tier": 0, "preferred_locale": "ja", "public_updates_channel_id": None,
                "nsfw_level": 0, "premium_progress_bar_enabled": False, "features": [], "emojis": [],
                "stickers": [], "roles": [{"id": str(guild_id), "name": "@everyone", "permissions": "559623605571137",
                                           "position": 0, "color": 0, "hoist": False, "managed": False,
                                           "mentionable": False, "flags": 0}] + [
                    {"id": str(r), "name": f"role{r}", "permissions": "0", "position": 1, "color": 0, "hoist": False,
                     "managed": False, "mentionable": False, "flags": 0} for r in self.guild_roles],
                "channels": [{"id": str(channel_id), "type": 0, "name": "general", "guild_id": str(guild_id),
                              "position": 0, "permission_overwrites": [], "nsfw": False, "parent_id": None}],
                "threads": [], "members": [{"user": BOT, "roles": [], "joined_at": TIMESTAMP, "deaf": False,
                                            "mute": False, "flags": 0}],
                "member_count": 2, "voice_states": [], "presences": [], "large": False, "unavailable": False,
                "joined_at": TIMESTAMP, "stage_instances": [], "guild_scheduled_events": []}

    async def _rest(self, request: web.Request) -> web.Response:
        path = "/" + request.match_info["path"]
        body = await request.json() if request.can_read_body and request.content_type == "application/json" else {}
        self.calls.append((request.method, path, body))
        parts = path.strip("/").split("/")
        if path == "/users/@me":
            return _json({"message": "401: Unauthorized", "code": 0}, 401) if self.reject_token else _json(BOT)
        if path == "/oauth2/applications/@me":
            return _json({"id": str(APP_ID), "name": "zennbot", "description": "", "icon": None, "bot_public": True,
                          "bot_require_code_grant": False, "owner": user(1, "owner"), "verify_key": "k", "flags": 0})
        if parts[0] == "applications" and request.method == "PUT":
            return _json([])
        if parts[0] == "interactions":
            answer = {"id": parts[1], "type": self._interaction_types.get(parts[1], 2),
                      "response_message_loading": body.get("type") == 5,
                      "response_message_ephemeral": bool(body.get("data", {}).get("flags", 0) & 64)}
            if body.get("type") == 5:  # a deferred command: the "thinking" message appears
                self.original = self.message(CHANNEL_ID, BOT, "", mid=next(self._ids))
                answer["response_message_id"] = self.original["id"]
            return _json({"interaction": answer})
        if parts[0] == "webhooks" and parts[-1] == "@original":
            return _json(self.original)
        if parts[0] == "webhooks" and "messages" in parts:  # a follow-up message edited or deleted
            return self._write_message(request.method, str(CHANNEL_ID), parts[-1], body)
        if parts[0] == "webhooks" and request.method == "POST":
            return self._write_message("POST", str(CHANNEL_ID), "", body)
        if parts[0] == "channels" and parts[-1] == "typing":
            return web.Response(status=204)
        if parts[0] == "channels" and parts[-1] == "threads" and self.refuse_threads:
            return _json({"message": "Missing Permissions", "code": 50013}, 403)
        if parts[0] == "channels" and parts[-1] == "threads":
            if len(parts) == 5 and parts[3] in self.threads:  # a message starts at most one thread
                return _json({"message": "A thread has already been created for this message", "code": 160004}, 400)
            thread_id = parts[3] if len(parts) == 5 else str(next(self._ids))  # a message's thread has its id
            self._channel_guild[thread_id] = self._channel_guild.get(parts[1], GUILD_ID)
            thread = {"id": thread_id, "type": 11, "guild_id": str(self._channel_guild[thread_id]),
                      "parent_id": parts[1],
                      "name": body.get("name"), "owner_id": str(BOT_ID), "rate_limit_per_user": 0,
                      "message_count": 0, "member_count": 1, "flags": 0, "last_message_id": None,
                      "thread_metadata": {"archived": False, "auto_archive_duration": 1440,
                                          "archive_timestamp": TIMESTAMP, "locked": False}}
            self.threads[thread["id"]] = thread
            await self.dispatch("THREAD_CREATE", thread | {"newly_created": True})
            return _json(thread)
        if parts[0] == "channels" and parts[-1] == "messages" and request.method == "POST":
            if self.fail_next_send_with_429:
                self.fail_next_send_with_429 -= 1
                response = _json({"message": "You are being rate limited.", "retry_after": 0.05, "global": False}, 429)
                response.headers.update({"Via": "1.1 google", "X-RateLimit-Scope": "user"})
                return response
            if body.get("enforce_nonce") and (parts[1], str(body.get("nonce"))) in self.nonces:
                return _json(self.stored[self.nonces[parts[1], str(body["nonce"])]])  # Discord: the same message
            response = self._write_message("POST", parts[1], "", body)
            if body.get("nonce") and response.status == 200:
                self.nonces[parts[1], str(body["nonce"])] = json.loads(response.body)["id"]
            return response
        if parts[0] == "channels" and "messages" in parts and request.method in ("PATCH", "DELETE"):
            return self._write_message(request.method, parts[1], parts[3], body)
        return _json({"message": "unknown route", "code": 0}, 404)

    def _write_message(self, method: str, channel: str, message_id: str, body: dict) -> web.Response:
        """POST, PATCH or DELETE one of the bot's messages, as Discord would."""
        if method == "PATCH" and self.rate_limit_next_edit is not None:
            retry_after, self.rate_limit_next_edit = self.rate_limit_next_edit, None
            self.writes.append(Write(time.monotonic(), method, channel, message_id, body, 429))
            response = _json({"message": "You are being rate limited.", "retry_after": retry_after,
                              "global": False}, 429)
            response.headers.update({"Via": "1.1 google", "X-RateLimit-Limit": "5", "X-RateLimit-Remaining": "0",
                                     "X-RateLimit-Reset-After": str(retry_after), "X-RateLimit-Bucket": "edits",
                                     "X-RateLimit-Scope": "user", "Retry-After": str(retry_after)})
            return response
        status, response = self._message_write_result(method, channel, message_id, body)
        self.writes.append(Write(time.monotonic(), method, channel, message_id, body, status))
        return response

    def _message_write_result(self, method: str, channel: str, message_id: str, body: dict):
        if method != "POST" and message_id not in self.stored:
            return 404, _json({"message": "Unknown Message", "code": 10008}, 404)
        if method == "PATCH" and self.now - self._posted_at.get(message_id, self.now) > EDIT_WINDOW:
            return 400, _json({"message": "Maximum number of edits to messages older than 1 hour reached. "
                                          "Try again later", "code": 30046}, 400)
        if method == "PATCH" and self.fail_next_edits:
            self.fail_next_edits -= 1
            return 400, _json({"message": "Something went wrong", "code": 0}, 400)
        if len(body.get("content") or "") > MESSAGE_LIMIT:
            return 400, _json({"message": "Invalid Form Body", "code": 50035, "errors": {"content": {"_errors": [
                {"code": "BASE_TYPE_MAX_LENGTH", "message": f"Must be {MESSAGE_LIMIT} or fewer in length."}]}}}, 400)
        if method == "DELETE":
            del self.stored[message_id]
            return 204, web.Response(status=204)
        if method == "POST":
            stored = self.message(int(channel), BOT, "") | {"components": [], "embeds": []}
        else:
            stored = copy.deepcopy(self.stored[message_id])
        for key in ("content", "components", "embeds"):
            if key in body:
                stored[key] = body[key]
        embeds = stored.get("embeds") or []
        if len(embeds) > 10 or sum(len(e.get("title", "")) + len(e.get("description", "")) + len(
                (e.get("footer") or {}).get("text", "")) for e in embeds) > 6000 or any(
                len(e.get("title", "")) > 256 or len(e.get("description", "")) > 4096 for e in embeds):
            return 400, _json({"message": "Invalid Form Body", "code": 50035, "errors": {"embeds": {"_errors": [
                {"code": "BASE_TYPE_MAX_LENGTH", "message": "Embed size exceeds maximum size of 6000"}]}}}, 400)
        if not stored["content"] and not stored["embeds"] and not stored["components"]:
            return 400, _json({"message": "Cannot send an empty message", "code": 50006}, 400)
        if method == "PATCH":
            stored["edited_timestamp"] = TIMESTAMP
        else:
            self._posted_at[stored["id"]] = self.now
        self.stored[stored["id"]] = stored
        return 200, _json(stored)


def _shard_of(guild_id: int, shard_count: int) -> int:
    return (guild_id >> 22) % shard_count  # Discord's routing; direct messages (no guild) go to shard 0


def _json(data, status: int = 200) -> web.Response:
    # discord.py parses JSON only for exactly "application/json" (no charset)
    return web.Response(body=json.dumps(data).encode(), status=status, content_type="application/json")
