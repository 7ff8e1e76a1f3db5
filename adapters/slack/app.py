"""The Slack adapter: slack-bolt `AsyncApp` in Socket Mode or HTTP mode, over the service.

Listeners only translate: `slack_rules` decides, `ConversationService` answers, `slack_stream`
shows the loading status and streams the answer, and this module makes the other Web API calls
(reactions, the /zenn parent message, feedback acknowledgements).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from urllib.parse import parse_qs

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from slack_bolt.async_app import AsyncApp
from slack_sdk.errors import SlackApiError
from slack_sdk.signature import SignatureVerifier
from slack_sdk.http_retry.builtin_async_handlers import (AsyncRateLimitErrorRetryHandler,
                                                          AsyncServerErrorRetryHandler)
from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack import digest, rules
from adapters.errors import AdapterError
from adapters.sink import deliver
from adapters.slack.pacing import StreamPacer
from adapters.slack.stream import AnswerStream, LoadingStatus
from bot.digest.commands import FollowCommands
from bot.recovery import short_question
from bot.messages import Ask, Reply
from bot.service import ConversationService, friendly_error
from bot.settings import Settings
from bot.store import RunRecord, StoreUnavailable

log = logging.getLogger(__name__)
# chat.update errors that mean the message is no longer there to be edited.
GONE_MESSAGE_ERRORS = {"message_not_found", "cant_update_message", "edit_window_closed"}
USAGE = ("Usage: `/zenn <question>`, with a link if it is about a page — e.g. `/zenn 今週のRustのトレンドを3本紹介して` "
         "or `/zenn https://zenn.dev/asap 一番いいねが多い記事は？`")


class SlackAdapter:
    platform = "slack"

    def __init__(self, settings: Settings, service: ConversationService, follows: FollowCommands | None = None) -> None:
        self.settings = settings
        self.service = service
        self.follows = follows  # /zenn follow|unfollow|following (None: not enabled)
        token = settings.slack_bot_token.get_secret_value() if settings.slack_bot_token else None
        self.client = AsyncWebClient(token=token, base_url=settings.slack_api_url)
        self.client.retry_handlers.append(AsyncRateLimitErrorRetryHandler(max_retry_count=3))
        self.client.retry_handlers.append(AsyncServerErrorRetryHandler(max_retry_count=2))
        secret = settings.slack_signing_secret.get_secret_value() if settings.slack_signing_secret else None
        # Named: without a name, Bolt reads it off `inspect.stack()`, which reads the source file
        # of every frame on the stack (about 0.2 CPU-s a start).
        self.app = AsyncApp(name="zennbot", client=self.client, signing_secret=secret,
                            request_verification_enabled=settings.slack_mode == "http")
        self.bot_user_id = ""
        self.team_id = ""
        self._runner: web.AppRunner | None = None
        self._socket = None
        self._stopped = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()
        self._pacer = StreamPacer(min(rules.WORKSPACE_STREAM_GAP, settings.slack_stream_interval),
                                  burst=rules.WORKSPACE_STREAM_BURST)
        self.app.event("app_mention")(self._on_mention)
        self.app.event("message")(self._on_message)
        self.app.command("/zenn")(self._on_command)
        self.app.action(rules.FEEDBACK_ACTION)(self._on_feedback)

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
            self._runner = web.AppRunner(web_app, access_log=None, logger=UnparsableRequests(log))
            await self._runner.setup()
            await web.TCPSite(self._runner, "0.0.0.0", self.settings.slack_port).start()
            log.info("Slack: listening on port %s at /slack/events", self.port)
        await self._stopped.wait()

    def digest_poster(self) -> digest.SlackDigestPoster:
        return digest.SlackDigestPoster(self.client)

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
        owns = bool(thread_ts) and await self.service.owns_thread(rules.thread_id(team, event.get("channel", ""), thread_ts))
        turn = rules.turn_from_event(event, team, self.bot_user_id, is_mention=is_mention, bot_owns_thread=owns)
        if turn is None:
            return
        # A message arrives once per listener and again on Slack's retries: answer it once.
        if not await self.service.first_sighting(f"slack:{turn.channel}:{turn.message_ts}"):
            return
        self._spawn(self._answer(turn))

    async def _on_command(self, ack, command: dict, respond) -> None:
        await ack()
        if (follow := digest.parse_follow_command(command.get("text", ""))) is not None:
            self._spawn(digest.on_follow_command(self, follow, command, respond))
            return
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
        self._spawn(self._answer(rules.SlackTurn(rules.thread_id(team, channel, ts), channel, ts, ts, user, question,
                                                 team)))

    def _spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, turn: rules.SlackTurn) -> None:
        try:
            if not rules.allowed(turn.channel, turn.user, self.settings.slack_allowed_channels,
                                 self.settings.slack_allowed_users):
                return
            await self.service.claim_thread(turn.thread_id)
            await self._react(turn, "eyes")
            await self._stream_reply(turn)  # which leaves ✅ or ⚠️ in place of 👀
        except Exception as exc:  # one failed answer must not take the listener down
            expected = isinstance(exc, (StoreUnavailable, SlackApiError))
            log.error("Slack: answering %s failed: %s", turn.thread_id, exc, exc_info=not expected)
            try:
                await self.client.chat_postMessage(channel=turn.channel, thread_ts=turn.thread_ts,
                                                   text=rules.neutralize(":warning: " + friendly_error(
                                                       exc, self.service.limits)))
                await self._react(turn, "warning", replacing="eyes")
            except SlackApiError:
                log.warning("Slack: could not post the error message either")

    # The answer flow: loading status while the bot reads, the answer streamed into the thread.

    async def _stream_reply(self, turn: rules.SlackTurn) -> Reply:
        """Answer `turn` in its thread as the service writes it; returns the service's reply.
        Raises `SlackApiError` when Slack refuses the final text."""
        ask = Ask(turn.thread_id, f"slack:{turn.user}", turn.text, platform=self.platform, workspace=turn.team,
                  reply_to=_reply_to(turn))
        return await deliver(self.service.stream(ask), SlackAnswer(self, turn))

    async def _on_feedback(self, ack, body: dict) -> None:
        """👍/👎 under an answer: stored with the thread and message; the clicker is thanked
        (only they see it)."""
        await ack()
        feedback = rules.feedback_from_action(body, self.team_id)
        if feedback is None:
            log.info("Slack: ignored a feedback click without a message or value")
            return
        try:
            await self.service.record_feedback("slack", feedback.thread_id, feedback.message_ts,
                                               f"slack:{feedback.user}", feedback.value)
            text = "Thanks for the feedback!" if feedback.value == "good" else \
                "Thanks for telling me; I'll use it to do better."
        except StoreUnavailable as exc:
            log.error("Slack: could not store feedback on %s: %s", feedback.message_ts, exc)
            text = ":warning: I couldn't save your feedback right now; please try again later."
        try:
            await self.client.chat_postEphemeral(channel=feedback.channel, user=feedback.user,
                                                 thread_ts=feedback.thread_ts, text=text)
        except SlackApiError as exc:
            log.info("Slack: could not acknowledge feedback: %s", exc.response.get("error"))

    async def _record_reply_to(self, run_id: str, reply_to: str) -> None:
        """If the bot dies now, this is where recovery tells the asker (see `acknowledge_lost_run`)."""
        try:
            await self.service.update_reply_to(run_id, reply_to)
        except StoreUnavailable as exc:
            log.warning("Slack: could not record where the answer is: %s", exc)

    async def acknowledge_lost_run(self, run: RunRecord) -> None:
        """After a restart: tell the asker of a lost run so in the thread (ending the half-written
        answer when one was streamed), clear the loading status and replace 👀 with ⚠️."""
        where = json.loads(run.reply_to or "{}")
        if not where.get("channel"):
            return
        text = rules.neutralize(f":warning: I was restarted while answering “{short_question(run)}”, so that "
                                "answer was lost. Please ask again.")
        with contextlib.suppress(SlackApiError):  # it lapses by itself within two minutes anyway
            await self.client.assistant_threads_setStatus(channel_id=where["channel"], thread_ts=where["thread_ts"],
                                                          status="")
        if not (where.get("status_ts") and await self._replace(where["channel"], where["status_ts"], text)):
            await self.client.chat_postMessage(channel=where["channel"], thread_ts=where["thread_ts"], text=text)
        turn = rules.SlackTurn(run.thread_id, where["channel"], where["thread_ts"], where["message_ts"], "", "")
        await self._react(turn, "warning", replacing="eyes")

    async def _replace(self, channel: str, ts: str, text: str) -> bool:
        """End the message a lost run was streaming with `text`; False when it is gone (the bot
        died between deleting a withdrawn draft and recording that) or can no longer be edited."""
        with contextlib.suppress(SlackApiError):  # a stream Slack already closed
            await self.client.chat_stopStream(channel=channel, ts=ts)
        try:
            await self.client.chat_update(channel=channel, ts=ts, text=text)
        except SlackApiError as exc:
            if exc.response.get("error") not in GONE_MESSAGE_ERRORS:
                raise
            log.info("Slack: the lost run's message is gone (%s); telling the asker in a new one",
                     exc.response.get("error"))
            return False
        return True

    async def _react(self, turn: rules.SlackTurn, name: str, replacing: str | None = None) -> None:
        try:
            if replacing:
                await self.client.reactions_remove(channel=turn.channel, timestamp=turn.message_ts, name=replacing)
            await self.client.reactions_add(channel=turn.channel, timestamp=turn.message_ts, name=name)
        except SlackApiError as exc:  # already reacted, or no reactions:write: not worth failing
            log.info("Slack: no reaction: %s", exc.response.get("error"))


class SlackAnswer:
    """One answer in a Slack thread (an `AnswerSink`): the loading status while the bot reads,
    the answer streamed into the thread, the final text; the status never stays up."""

    def __init__(self, adapter: SlackAdapter, turn: rules.SlackTurn) -> None:
        self._adapter = adapter
        self._turn = turn
        self._status = LoadingStatus(adapter.client, turn.channel, turn.thread_ts)
        self._answer = AnswerStream(adapter.client, turn, adapter.settings.slack_stream_interval, adapter._pacer)
        self._run_id = ""
        self._recorded_ts: str | None = None  # the streamed message that recovery would end, once recorded
        self._ended = False  # the final text is in the thread

    async def started(self, run_id: str) -> None:
        self._run_id = run_id
        self._answer.expect()
        await self._status.show()

    async def progress(self, text: str) -> None:
        await self._status.show(text)

    async def delta(self, text: str) -> None:
        await self._answer.add(text)
        if self._answer.streaming:
            self._status.hide()
            if self._answer.ts != self._recorded_ts:
                self._recorded_ts = self._answer.ts
                await self._adapter._record_reply_to(self._run_id, _reply_to(self._turn, self._recorded_ts))

    async def reset(self) -> None:
        streamed = self._answer.streaming
        await self._answer.reset()
        if streamed:  # the draft is gone, and the status went with it
            await self._status.show()
            self._recorded_ts = None  # a lost run is told in the thread again
            await self._adapter._record_reply_to(self._run_id, _reply_to(self._turn))

    async def done(self, reply: Reply) -> None:
        if reply.ok:
            self._status.hide()
            await self._answer.finish(rules.answer_messages(reply.text, reply.sources, True), rules.feedback_blocks())
        else:
            await self._status.clear()
            await self._answer.fail(rules.answer_messages(reply.text, reply.sources, False)[0])
        self._ended = True
        await self._adapter._react(self._turn, "white_check_mark" if reply.ok else "warning", replacing="eyes")

    async def finish(self) -> None:
        self._answer.close()
        if not self._ended:
            await self._status.clear()  # the caller posts the error; no status may be left spinning
        await self._status.close()


def _reply_to(turn: rules.SlackTurn, status_ts: str | None = None) -> str:
    """Where a lost run of `turn` is acknowledged (see `acknowledge_lost_run`)."""
    where = {"channel": turn.channel, "thread_ts": turn.thread_ts, "message_ts": turn.message_ts}
    return json.dumps(where | ({"status_ts": status_ts} if status_ts else {}))


TEXT_CHARSETS = {None, "", "utf-8", "utf8", "us-ascii", "ascii"}  # what Slack sends (UTF-8), and its subset


def refuse_junk(signing_secret: str):
    """aiohttp middleware for the HTTP endpoint: an unsigned request gets 401, a body that is not
    UTF-8 text (whatever its declared charset), too long or unparsable 400 or 413, each with one
    log line and before Bolt sees it (Bolt would answer 500 with a traceback)."""
    verifier = SignatureVerifier(signing_secret)

    @web.middleware
    async def middleware(request: web.Request, handler):
        if request.method != "POST":
            return await handler(request)
        if (request.content_length or 0) > request.client_max_size:  # refused before waiting for it
            log.info("Slack: refused a request from %s: %d bytes", request.remote, request.content_length)
            return web.Response(status=413, text="too long")
        try:
            raw = await request.read()
        except web.HTTPException as exc:  # too long (client_max_size)
            log.info("Slack: refused a request from %s: %s", request.remote, exc.reason)
            return web.Response(status=exc.status, text="bad request")
        try:
            body = raw.decode("utf-8")
            charset = (request.charset or "").lower()
        except (UnicodeDecodeError, ValueError):
            log.info("Slack: refused a request from %s: the body is not UTF-8 text", request.remote)
            return web.Response(status=400, text="bad request")
        if not _signed(verifier, body, request.headers):
            log.info("Slack: refused an unsigned or wrongly signed request from %s", request.remote)
            return web.Response(status=401, text="invalid signature")
        if charset not in TEXT_CHARSETS:  # Bolt would decode the body by it, or fail on an unknown one
            log.info("Slack: refused a request from %s: charset %r", request.remote, charset[:40])
            return web.Response(status=400, text="bad request")
        if not _parsable(body, request.content_type):
            log.info("Slack: refused an unparsable request from %s (%s)", request.remote, request.content_type)
            return web.Response(status=400, text="bad request")
        return await handler(request)

    return middleware


class UnparsableRequests(logging.LoggerAdapter):
    """aiohttp's server log for the endpoint: a request it cannot even parse (a bad
    Content-Length, a broken header line), which it answers 400, is one line, not a traceback.
    Anything else (a bug in a handler) is logged with its traceback as usual."""

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__(logger, {})

    def exception(self, msg, *args, exc_info=True, **kwargs) -> None:
        if isinstance(exc_info, HttpProcessingError):
            self.logger.info("Slack: refused a request that is not valid HTTP: %s", exc_info.message)
            return
        self.logger.error(msg, *args, exc_info=exc_info, **kwargs)


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
