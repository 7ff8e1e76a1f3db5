"""The Slack adapter: slack-bolt `AsyncApp` in Socket Mode or HTTP mode, over the service.

Listeners only translate: `slack_rules` decides, `ConversationService` answers, and this module
makes the Web API calls (reaction, status message, answer in the thread).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import OrderedDict
from urllib.parse import parse_qs

from aiohttp import web
from slack_bolt.async_app import AsyncApp
from slack_sdk.errors import SlackApiError
from slack_sdk.signature import SignatureVerifier
from slack_sdk.http_retry.builtin_async_handlers import (AsyncRateLimitErrorRetryHandler,
                                                          AsyncServerErrorRetryHandler)
from slack_sdk.web.async_client import AsyncWebClient

from adapters import slack_rules as rules
from adapters.errors import AdapterError
from adapters.status import StatusMessage
from bot.recovery import RunTicket, short_question
from bot.service import ConversationService, Reply, friendly_error
from bot.settings import Settings
from bot.store import RunRecord, Store, StoreUnavailable

log = logging.getLogger(__name__)
USAGE = "Usage: `/zenn <URL> <question>` — e.g. `/zenn https://zenn.dev/asap 一番いいねが多い記事は？`"


class SlackAdapter:
    platform = "slack"

    def __init__(self, settings: Settings, service: ConversationService, store: Store) -> None:
        self.settings = settings
        self.service = service
        self.store = store
        token = settings.slack_bot_token.get_secret_value() if settings.slack_bot_token else None
        self.client = AsyncWebClient(token=token, base_url=settings.slack_api_url)
        self.client.retry_handlers.append(AsyncRateLimitErrorRetryHandler(max_retry_count=3))
        self.client.retry_handlers.append(AsyncServerErrorRetryHandler(max_retry_count=2))
        secret = settings.slack_signing_secret.get_secret_value() if settings.slack_signing_secret else None
        self.app = AsyncApp(client=self.client, signing_secret=secret,
                            request_verification_enabled=settings.slack_mode == "http")
        self.bot_user_id = ""
        self.team_id = ""
        self._runner: web.AppRunner | None = None
        self._socket = None
        self._stopped = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()
        self._seen_here: OrderedDict[str, None] = OrderedDict()  # event keys, when the database cannot tell
        self._threads_here: set[str] = set()  # threads claimed by this process, likewise
        self.app.event("app_mention")(self._on_mention)
        self.app.event("message")(self._on_message)
        self.app.command("/zenn")(self._on_command)

    async def start(self) -> None:
        """Connect and serve until `close()`. Raises `AdapterError` with what to fix when Slack
        refuses the bot."""
        try:
            auth = await self.client.auth_test()
        except SlackApiError as exc:
            raise AdapterError(f"Slack rejected SLACK_BOT_TOKEN ({exc.response.get('error')}): "
                               "copy the Bot User OAuth Token (xoxb-…) again.") from None
        self.bot_user_id, self.team_id = auth["user_id"], auth.get("team_id", "")
        if self.settings.slack_mode == "socket":
            from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler

            self._socket = AsyncSocketModeHandler(self.app, self.settings.slack_app_token.get_secret_value())
            await self._socket.connect_async()
            log.info("Slack: connected in Socket Mode as %s", self.bot_user_id)
        else:
            web_app = self.app.web_app(path="/slack/events")
            web_app.middlewares.append(refuse_junk(self.settings.slack_signing_secret.get_secret_value()))
            self._runner = web.AppRunner(web_app, access_log=None)
            await self._runner.setup()
            await web.TCPSite(self._runner, "0.0.0.0", self.settings.slack_port).start()
            log.info("Slack: listening on port %s at /slack/events", self.settings.slack_port)
        await self._stopped.wait()

    @property
    def port(self) -> int:
        assert self._runner is not None
        return self._runner.addresses[0][1]

    async def close(self) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=self.settings.zennbot_shutdown_grace)
        if self._socket is not None:
            await self._socket.close_async()
        if self._runner is not None:
            await self._runner.cleanup()
        self._stopped.set()

    # Listeners: acknowledged by Bolt; the work runs in a task of our own so that shutdown can
    # wait for it.

    async def _on_mention(self, event: dict, body: dict) -> None:
        await self._dispatch(event, body, is_mention=True)

    async def _on_message(self, event: dict, body: dict) -> None:
        await self._dispatch(event, body, is_mention=False)

    async def _dispatch(self, event: dict, body: dict, *, is_mention: bool) -> None:
        team = body.get("team_id") or self.team_id
        thread_ts = event.get("thread_ts")
        owns = bool(thread_ts) and await self._owns_thread(rules.thread_id(team, event.get("channel", ""), thread_ts))
        turn = rules.turn_from_event(event, team, self.bot_user_id, is_mention=is_mention, bot_owns_thread=owns)
        if turn is None:
            return
        # A message arrives once per listener and again on Slack's retries: answer it once.
        if not await self._first_sighting(f"slack:{turn.channel}:{turn.message_ts}"):
            return
        self._spawn(self._answer(turn))

    # When the database fails, this process's memory decides, and the answer path says what
    # happened in the thread (never a silent drop).

    async def _owns_thread(self, thread_id: str) -> bool:
        try:
            return await self.store.owns_thread(thread_id)
        except StoreUnavailable as exc:
            log.warning("Slack: %s; thread ownership from memory", exc)
            return thread_id in self._threads_here

    async def _first_sighting(self, key: str) -> bool:
        try:
            fresh = await self.store.first_sighting(key)
        except StoreUnavailable as exc:
            log.warning("Slack: %s; duplicate events detected from memory", exc)
            fresh = key not in self._seen_here
        self._seen_here[key] = None
        while len(self._seen_here) > 10_000:
            self._seen_here.popitem(last=False)
        return fresh

    async def _on_command(self, ack, command: dict, respond) -> None:
        await ack()
        question = rules.parse_command(command.get("text", ""))
        user, channel = command.get("user_id", ""), command.get("channel_id", "")
        if question is None:
            await respond(text=USAGE, response_type="ephemeral")
            return
        if not rules.allowed(channel, user, self.settings.slack_allowed_channels, self.settings.slack_allowed_users):
            await respond(text="This bot is not enabled here.", response_type="ephemeral")
            return
        try:
            parent = await self.client.chat_postMessage(
                channel=channel, text=f"<@{user}> asked: {rules.neutralize(question)}",
                unfurl_links=False, unfurl_media=False)
        except SlackApiError as exc:
            log.warning("Slack: could not post the /zenn parent message: %s", exc.response.get("error"))
            await respond(text=":warning: I can't post in this channel; please invite me first.",
                          response_type="ephemeral")
            return
        ts = parent["ts"]
        team = command.get("team_id") or self.team_id
        self._spawn(self._answer(rules.SlackTurn(rules.thread_id(team, channel, ts), channel, ts, ts, user, question)))

    def _spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, turn: rules.SlackTurn) -> None:
        try:
            if not rules.allowed(turn.channel, turn.user, self.settings.slack_allowed_channels,
                                 self.settings.slack_allowed_users):
                return
            self._threads_here.add(turn.thread_id)
            await self.store.claim_thread(turn.thread_id)
            await self._react(turn, "eyes")
            ticket = RunTicket(self.platform, _reply_to(turn))
            status = StatusMessage(lambda line: self._post_status(turn, ticket, line),
                                   lambda ts, line: self.client.chat_update(channel=turn.channel, ts=ts,
                                                                            text=rules.neutralize(line)),
                                   ":hourglass_flowing_sand:")
            reply = await self.service.handle(turn.thread_id, f"slack:{turn.user}", turn.text, status.show, ticket)
            await self._post_reply(turn, reply, status.handle)
            await self._react(turn, "white_check_mark" if reply.ok else "warning", replacing="eyes")
        except Exception as exc:  # one failed answer must not take the listener down
            expected = isinstance(exc, (StoreUnavailable, SlackApiError))
            log.error("Slack: answering %s failed: %s", turn.thread_id, exc, exc_info=not expected)
            try:
                await self.client.chat_postMessage(channel=turn.channel, thread_ts=turn.thread_ts,
                                                   text=":warning: " + friendly_error(exc, self.service.limits))
                await self._react(turn, "warning", replacing="eyes")
            except SlackApiError:
                log.warning("Slack: could not post the error message either")

    async def _post_status(self, turn: rules.SlackTurn, ticket: RunTicket, line: str) -> str:
        response = await self.client.chat_postMessage(channel=turn.channel, thread_ts=turn.thread_ts,
                                                      text=rules.neutralize(line), unfurl_links=False,
                                                      unfurl_media=False)
        # If the bot dies now, the status message is what recovery ends.
        ticket.reply_to = _reply_to(turn, response["ts"])
        try:
            await self.store.update_reply_to(ticket.run_id, ticket.reply_to)
        except StoreUnavailable as exc:
            log.warning("Slack: could not record the status message: %s", exc)
        return response["ts"]

    async def acknowledge_lost_run(self, run: RunRecord) -> None:
        """After a restart: tell the asker of a lost run so in the thread (ending the "⏳" status
        message when there is one) and replace 👀 with ⚠️."""
        where = json.loads(run.reply_to or "{}")
        if not where.get("channel"):
            return
        text = (f":warning: I was restarted while answering “{rules.neutralize(short_question(run))}”, so that "
                "answer was lost. Please ask again.")
        if where.get("status_ts"):
            await self.client.chat_update(channel=where["channel"], ts=where["status_ts"], text=text)
        else:
            await self.client.chat_postMessage(channel=where["channel"], thread_ts=where["thread_ts"], text=text)
        turn = rules.SlackTurn(run.thread_id, where["channel"], where["thread_ts"], where["message_ts"], "", "")
        await self._react(turn, "warning", replacing="eyes")

    async def _react(self, turn: rules.SlackTurn, name: str, replacing: str | None = None) -> None:
        try:
            if replacing:
                await self.client.reactions_remove(channel=turn.channel, timestamp=turn.message_ts, name=replacing)
            await self.client.reactions_add(channel=turn.channel, timestamp=turn.message_ts, name=name)
        except SlackApiError as exc:  # already reacted, or no reactions:write: not worth failing
            log.info("Slack: no reaction: %s", exc.response.get("error"))

    async def _post_reply(self, turn: rules.SlackTurn, reply: Reply, status_ts: str | None) -> None:
        messages = rules.answer_messages(reply.text, reply.sources, reply.ok)
        try:
            await self._post_all(turn, messages, status_ts)
        except SlackApiError as exc:
            if exc.response.get("error") not in ("msg_too_long", "invalid_blocks", "markdown_text_conflict"):
                raise
            log.info("Slack: %s; posting smaller parts", exc.response.get("error"))
            smaller = rules.answer_messages(reply.text, reply.sources, reply.ok, rules.FALLBACK_LIMIT)
            await self._post_all(turn, smaller, None)

    async def _post_all(self, turn: rules.SlackTurn, messages: list[str], status_ts: str | None) -> None:
        for index, markdown in enumerate(messages):
            if index == 0 and status_ts:
                await self.client.chat_update(channel=turn.channel, ts=status_ts, markdown_text=markdown)
            else:
                await self.client.chat_postMessage(channel=turn.channel, thread_ts=turn.thread_ts,
                                                   markdown_text=markdown, unfurl_links=False,
                                                   unfurl_media=False)


def _reply_to(turn: rules.SlackTurn, status_ts: str | None = None) -> str:
    """Where a lost run of `turn` is acknowledged (see `acknowledge_lost_run`)."""
    where = {"channel": turn.channel, "thread_ts": turn.thread_ts, "message_ts": turn.message_ts}
    return json.dumps(where | ({"status_ts": status_ts} if status_ts else {}))


def refuse_junk(signing_secret: str):
    """aiohttp middleware for the HTTP endpoint: an unsigned request gets 401, an unparsable one
    400, each with one log line and before Bolt sees it (Bolt would answer 500 with a traceback)."""
    verifier = SignatureVerifier(signing_secret)

    @web.middleware
    async def middleware(request: web.Request, handler):
        if request.method != "POST":
            return await handler(request)
        try:
            body = await request.text()
        except (UnicodeDecodeError, ValueError):
            log.info("Slack: refused a request from %s: the body is not text", request.remote)
            return web.Response(status=400, text="bad request")
        if not _signed(verifier, body, request.headers):
            log.info("Slack: refused an unsigned or wrongly signed request from %s", request.remote)
            return web.Response(status=401, text="invalid signature")
        if not _parsable(body, request.content_type):
            log.info("Slack: refused an unparsable request from %s (%s)", request.remote, request.content_type)
            return web.Response(status=400, text="bad request")
        return await handler(request)

    return middleware


def _signed(verifier: SignatureVerifier, body: str, headers) -> bool:
    try:
        return verifier.is_valid(body, headers.get("X-Slack-Request-Timestamp"), headers.get("X-Slack-Signature"))
    except ValueError:  # a timestamp that is not a number
        return False


def _parsable(body: str, content_type: str) -> bool:
    """Whether Bolt can read the body: a JSON object, or a form whose `payload` is a JSON object."""
    try:
        if content_type == "application/json" or body.startswith("{"):
            data = json.loads(body)
            return isinstance(data, dict) and isinstance(data.get("event", {}), dict)
        form = parse_qs(body)
        return "payload" not in form or isinstance(json.loads(form["payload"][0]), dict)
    except (ValueError, IndexError):
        return False
