"""Showing an answer in a Slack thread while it is made: the native loading status while the bot
reads, then the answer streamed into one message (`chat.startStream`/`appendStream`/`stopStream`
through slack_sdk's `chat_stream()` helper), completed with `chat.update` and further posts when
streaming fails.

Slack calls here never raise into the answer flow for a streaming problem: a failed stream call
only means the message is completed another way. Posting the final text can raise
`SlackApiError` (the caller reports it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import aiohttp
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.web.async_chat_stream import AsyncChatStream
from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack import rules
from adapters.slack.pacing import StreamPacer
from adapters.chunking import split_message

log = logging.getLogger(__name__)
STREAM_ERRORS = (SlackClientError, aiohttp.ClientError, TimeoutError)
TOO_LONG = ("msg_too_long", "invalid_blocks", "markdown_text_conflict")


class LoadingStatus:
    """`assistant.threads.setStatus` in the thread: "is thinking…", then the newest progress line,
    sent again every `refresh` s while nothing is posted (Slack drops it after two minutes).
    A posted message clears it on Slack's side; `clear()` clears it explicitly."""

    def __init__(self, client: AsyncWebClient, channel: str, thread_ts: str,
                 refresh: float = rules.STATUS_REFRESH) -> None:
        self._client = client
        self._channel = channel
        self._thread_ts = thread_ts
        self._refresh = refresh
        self._line: str | None = None
        self._shown = False
        self._ever_shown = False
        self._works = True  # False once Slack refused it (an old workspace, a missing scope)
        self._refresher: asyncio.Task | None = None

    async def show(self, line: str | None = None) -> None:
        """Show `line` (a progress line), or the last one, and keep it alive."""
        if line is not None:
            self._line = line
        self._shown = self._ever_shown = True
        await self._send(*rules.status_args(self._line))
        if self._refresher is None and self._works:
            self._refresher = asyncio.create_task(self._keep_alive())

    def hide(self) -> None:
        """A message is being posted (which clears the status): stop refreshing it."""
        self._shown = False

    async def clear(self) -> None:
        """Take the status away (an error, a stop); nothing to do when it was never shown."""
        self._shown = False
        if self._ever_shown:
            await self._send("", None)

    async def close(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            await asyncio.gather(self._refresher, return_exceptions=True)

    async def _keep_alive(self) -> None:
        while self._works:
            await asyncio.sleep(self._refresh)
            if self._shown:
                await self._send(*rules.status_args(self._line))

    async def _send(self, status: str, loading: list[str] | None) -> None:
        if not self._works:
            return
        try:
            await self._client.assistant_threads_setStatus(channel_id=self._channel, thread_ts=self._thread_ts,
                                                           status=status, loading_messages=loading)
        except STREAM_ERRORS as exc:
            self._works = False
            log.info("Slack: no loading status in %s: %s", self._channel, _error(exc))


class AnswerStream:
    """One answer into one thread. `add()` the text as it is written, `reset()` when it was not
    the answer after all, then exactly one of `finish()` or `fail()`.

    The stream opens `rules.FIRST_TEXT_HOLD` s after the answer starts (a short preamble before a
    tool call is usually withdrawn before anything is shown), before appends of other answers
    (`pacer`), then gets at most one call per `interval` s, and fewer when other answers in the
    workspace stream at the same time. What
    was streamed but withdrawn is deleted; a stream that breaks (expired, refused, rate-limited
    beyond the retries) is completed with `chat.update` and further posts, so the thread ends with
    the answer exactly once.
    """

    def __init__(self, client: AsyncWebClient, turn: rules.SlackTurn, interval: float = rules.STREAM_INTERVAL,
                 pacer: StreamPacer | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self._client = client
        self._turn = turn
        self._interval = interval
        self._pacer = pacer or StreamPacer(interval, clock)
        self._clock = clock
        self._raw = ""  # answer text since the last reset
        self._sent = ""  # what the streamed message shows
        self._stream: AsyncChatStream | None = None
        self._broken = False  # a stream call failed: no more stream calls, complete it by chat.update
        self._stopped = False  # chat.stopStream was sent (or tried)
        self._last_call = 0.0
        self._opening = False  # registered with the pacer as waiting to open the stream

    @property
    def streaming(self) -> bool:
        """A stream message is in the thread (the loading status is gone)."""
        return self._stream is not None and self._stream.ts is not None

    @property
    def ts(self) -> str | None:
        """The streamed message, once there is one."""
        return self._stream.ts if self._stream is not None else None

    async def add(self, text: str) -> None:
        if not self._raw:
            self._last_call = self._clock()
        self._raw += text
        if self._broken:
            return
        first = self._stream is None
        self._wait_to_open(first)
        hold = min(self._interval, rules.FIRST_TEXT_HOLD) if first else self._interval
        if self._clock() - self._last_call >= hold and self._pacer.take(self._turn.team, first=first):
            await self._flush()

    def expect(self) -> None:
        """A run started that will write this answer: from now until its stream opens, appends of
        the workspace's other answers leave it a call (its first text goes first, even in a burst
        whose other answers are already showing)."""
        if self._stream is None and not self._broken:
            self._wait_to_open(True)

    def close(self) -> None:
        """The answer is over, however it ended: it no longer waits to open a stream."""
        self._wait_to_open(False)

    def _wait_to_open(self, opening: bool) -> None:
        """Tell the pacer whether this answer waits to open its stream (first text goes first)."""
        if opening != self._opening:
            self._opening = opening
            self._pacer.waiting(self._turn.team, opening)

    async def reset(self) -> None:
        """The text so far was not the answer: take back what was shown of it."""
        self._raw = ""
        if self._stream is None:
            return
        ts = self._stream.ts
        if ts is not None:
            await self._stop_quietly(ts)
            try:
                await self._client.chat_delete(channel=self._turn.channel, ts=ts)
            except STREAM_ERRORS as exc:
                log.warning("Slack: could not delete a withdrawn draft (%s); marking it", _error(exc))
                try:
                    await self._client.chat_update(channel=self._turn.channel, ts=ts,
                                                   markdown_text="~(draft withdrawn)~")
                except STREAM_ERRORS as again:
                    log.warning("Slack: could not mark the withdrawn draft either: %s", _error(again))
        self._stream, self._sent, self._broken, self._stopped = None, "", False, False
        self.expect()  # the answer itself is still to come

    async def finish(self, messages: list[str], blocks: list[dict]) -> str:
        """End with the answer: `messages` (from `slack_rules.answer_messages`), `blocks` under
        the last one. Returns the ts of that last message. Raises `SlackApiError` when the text
        cannot be posted."""
        self._wait_to_open(False)
        first, rest = messages[0], messages[1:]
        last_blocks = blocks if not rest else []
        if self._stream is None and not self._broken:  # a short answer, done before the first flush
            try:
                self._stream = await self._open()
            except STREAM_ERRORS as exc:
                log.info("Slack: no stream in %s (%s); posting the answer", self._turn.thread_id, _error(exc))
                self._broken = True
        if self._stream is not None and not self._broken:
            tail = rules.continuation(self._sent, first)
            if tail is not None:
                try:
                    self._stopped = True
                    await self._stream.stop(markdown_text=tail or None, blocks=last_blocks or None)
                    return await self._put(rest, blocks) if rest else self._stream.ts
                except STREAM_ERRORS as exc:
                    log.info("Slack: stream in %s ended early (%s); completing it by chat.update",
                             self._turn.thread_id, _error(exc))
                    self._broken = True
        ts = self._stream.ts if self._stream is not None else None
        if ts is not None:
            await self._stop_quietly(ts)
        return await self._put(messages, blocks, ts)

    async def fail(self, message: str) -> None:
        """End with an error sentence instead of the answer, replacing anything streamed."""
        self._wait_to_open(False)
        ts = self._stream.ts if self._stream is not None else None
        if ts is not None:
            await self._stop_quietly(ts)
        await self._put([message], [], ts)

    async def _flush(self) -> None:
        shown = rules.streamable(self._raw)
        piece = rules.continuation(self._sent, shown)
        if not piece:
            return
        try:
            if self._stream is None:
                self._stream = await self._open()
            self._wait_to_open(False)
            await self._stream.append(markdown_text=piece)
        except STREAM_ERRORS as exc:
            log.info("Slack: streaming into %s failed (%s); the answer will be posted whole",
                     self._turn.thread_id, _error(exc))
            self._broken = True
            return
        finally:
            self._last_call = self._clock()
        self._sent = shown

    async def _open(self) -> AsyncChatStream:
        """The helper; its first flush (`chat.startStream`) posts the message. Our own pacing
        decides when to flush, so its buffer only ever holds one piece."""
        return await self._client.chat_stream(
            buffer_size=1, channel=self._turn.channel, thread_ts=self._turn.thread_ts,
            recipient_team_id=self._turn.team or None, recipient_user_id=self._turn.user)

    async def _stop_quietly(self, ts: str) -> None:
        """End the stream so it does not stay "being written"; it may be over already."""
        if self._stopped:
            return
        self._stopped = True
        try:
            await self._client.chat_stopStream(channel=self._turn.channel, ts=ts)
        except STREAM_ERRORS as exc:
            log.info("Slack: stopping stream %s: %s", ts, _error(exc))

    async def _put(self, messages: list[str], blocks: list[dict], replacing: str | None = None) -> str:
        """Write `messages` into the thread, the first over message `replacing` when given,
        `blocks` under the last; a message Slack finds too long goes in smaller parts. Returns
        the ts of the last. Raises `SlackApiError` when Slack refuses otherwise."""
        ts = ""
        for index, markdown in enumerate(messages):
            last = index == len(messages) - 1
            target = replacing if index == 0 else None
            try:
                ts = await self._write(markdown, blocks if last else [], target)
            except SlackApiError as exc:
                if exc.response.get("error") not in TOO_LONG:
                    raise
                log.info("Slack: %s; posting smaller parts", exc.response.get("error"))
                parts = split_message(markdown, rules.FALLBACK_LIMIT)
                for n, part in enumerate(parts):
                    ts = await self._write(part, blocks if last and n == len(parts) - 1 else [],
                                           target if n == 0 else None)
        return ts

    async def _write(self, markdown: str, blocks: list[dict], replacing: str | None) -> str:
        if replacing is not None:
            await self._client.chat_update(channel=self._turn.channel, ts=replacing, **_message_args(markdown, blocks))
            return replacing
        response = await self._client.chat_postMessage(channel=self._turn.channel, thread_ts=self._turn.thread_ts,
                                                       unfurl_links=False, unfurl_media=False,
                                                       **_message_args(markdown, blocks))
        return response["ts"]


def _message_args(markdown: str, blocks: list[dict]) -> dict:
    """`markdown_text` alone, or (with buttons, which `markdown_text` cannot carry) the same text
    as a `markdown` block above them."""
    if not blocks:
        return {"markdown_text": markdown}
    return {"text": markdown[:200], "blocks": [{"type": "markdown", "text": markdown}, *blocks]}


def _error(exc: Exception) -> str:
    if isinstance(exc, SlackApiError):
        return str(exc.response.get("error"))
    return type(exc).__name__
