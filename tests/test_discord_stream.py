"""`LiveAnswer` over a channel kept in memory: what the messages show as the events of a run come
in (the end-to-end tests with discord.py are in test_discord_streaming.py), and the throttle
shared by the runs of one channel."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import discord

from adapters.discord import rules
from adapters.discord.stream import ChannelThrottle, LiveAnswer, Throttles
from bot.messages import AnswerDelta, AnswerReset, Done, Progress, Reply, Started
from tests.fakes.slack import eventually


@dataclass
class Message:
    channel: Channel
    content: str
    view: str | None

    async def edit(self, **fields) -> Message:
        self.channel.record("edit", fields)
        if self.channel.fail_edits:
            self.channel.fail_edits -= 1
            raise discord.HTTPException(_Response(500), "Discord is having a bad day")
        self.content, self.view = fields["content"], fields["view"]
        return self

    async def delete(self) -> None:
        self.channel.record("delete", {})
        self.channel.messages.remove(self)


@dataclass
class Channel:
    messages: list[Message] = field(default_factory=list)
    writes: list[tuple[float, str]] = field(default_factory=list)
    fail_edits: int = 0

    def record(self, kind: str, fields: dict) -> None:
        assert len(fields.get("content", "")) <= rules.MESSAGE_LIMIT
        self.writes.append((time.monotonic(), kind))

    async def send(self, **fields) -> Message:
        self.record("send", fields)
        message = Message(self, fields["content"], fields.get("view"))
        self.messages.append(message)
        return message

    def shown(self) -> list[tuple[str, str | None]]:
        return [(m.content, m.view) for m in self.messages]


@dataclass
class _Response:
    status: int
    reason: str = "error"


def render(part: rules.Part, run_id: str) -> dict:
    view = None if part.buttons is rules.Buttons.NONE else f"{part.buttons.value}:{run_id}"
    return {"content": part.content, "view": view, "embeds": []}


def live(channel: Channel, throttle: ChannelThrottle | None = None) -> LiveAnswer:
    return LiveAnswer(channel.send, throttle or ChannelThrottle(0.0), render)


async def test_text_before_a_tool_call_is_withdrawn_and_the_progress_line_comes_back():
    channel = Channel()

    async def events():
        yield Started("ab12")
        await eventually(lambda: channel.shown() == [("⏳ working on it …", "stop:ab12")])
        yield AnswerDelta("ページを")
        yield AnswerDelta("読みます。")
        await eventually(lambda: channel.shown() == [("ページを読みます。", "stop:ab12")])
        yield AnswerReset()
        yield Progress("reading https://zenn.dev/asap")
        await eventually(lambda: channel.shown() == [("⏳ reading https://zenn.dev/asap …", "stop:ab12")])
        yield AnswerDelta("答えです。")
        yield Done(Reply("答えです。", run_id="ab12"))

    reply = await live(channel).show(events())
    assert reply.text == "答えです。" and channel.shown() == [("答えです。", "feedback:ab12")]


async def test_a_stream_about_to_pass_discords_edit_window_goes_on_in_a_new_message():
    """Before Discord's hour is up (not only once it refuses an edit), the answer leaves its old
    message for a new one: the old one is deleted, and the answer is shown once."""
    channel, now = Channel(), [0.0]
    answer = LiveAnswer(channel.send, ChannelThrottle(0.0), render, clock=lambda: now[0])

    async def events():
        yield Started("ef56")
        yield AnswerDelta("前半。")
        await eventually(lambda: channel.shown() == [("前半。", "stop:ef56")])
        first = channel.messages[0]
        now[0] += 49 * 60  # still inside the window: edited in place
        yield AnswerDelta("中盤。")
        await eventually(lambda: channel.shown() == [("前半。中盤。", "stop:ef56")])
        assert channel.messages == [first]
        now[0] += 2 * 60  # 51 minutes old
        yield AnswerDelta("後半。")
        await eventually(lambda: channel.shown() == [("前半。中盤。後半。", "stop:ef56")])
        assert channel.messages[0] is not first
        yield Done(Reply("前半。中盤。後半。", run_id="ef56"))

    await answer.show(events())
    assert channel.shown() == [("前半。中盤。後半。", "feedback:ef56")]
    assert [kind for _, kind in channel.writes] == ["send", "edit", "delete", "send", "edit"]


async def test_a_failure_after_two_messages_leaves_only_the_error():
    channel = Channel()
    long_text = ("あ" * 80 + "\n") * 40  # over 3,000 characters: two messages

    async def events():
        yield Started("cd34")
        yield AnswerDelta(long_text)
        await eventually(lambda: len(channel.messages) == 2)
        yield Done(Reply("The language model is not answering right now.", ok=False, run_id="cd34"))

    await live(channel).show(events())
    assert channel.shown() == [("⚠️ The language model is not answering right now.", None)]
    assert [kind for _, kind in channel.writes].count("delete") == 1


async def test_stop_moves_to_the_newest_message_and_stopping_says_so():
    channel = Channel()

    async def events():
        yield Started("ef56")
        yield AnswerDelta(("い" * 80 + "\n") * 30)
        await eventually(lambda: len(channel.messages) == 2 and channel.messages[0].view is None)
        assert [m.view for m in channel.messages] == [None, "stop:ef56"]
        yield Done(Reply("Stopped. Nothing of that answer was kept; ask again any time.", ok=False,
                         run_id="ef56", stopped=True))

    await live(channel).show(events())
    assert channel.shown() == [("⏹️ Stopped. Nothing of that answer was kept; ask again any time.", None)]


async def test_a_failed_live_edit_pauses_updates_and_the_final_answer_still_lands():
    channel = Channel(fail_edits=1)

    async def events():
        yield Started("aa11")
        await eventually(lambda: len(channel.messages) == 1)
        yield AnswerDelta("途中")
        await eventually(lambda: len(channel.writes) == 2)  # the edit that failed
        yield AnswerDelta("まで")
        yield Done(Reply("途中まで", run_id="aa11"))

    await live(channel).show(events())
    assert channel.shown() == [("途中まで", "feedback:aa11")]
    assert [kind for _, kind in channel.writes] == ["send", "edit", "edit"]


async def test_runs_in_one_channel_share_its_throttle():
    channel, other = Channel(), Channel()
    throttles = Throttles(interval=0.2)

    async def events(text: str):
        yield Started("bb22")
        for piece in text:
            yield AnswerDelta(piece)
            await asyncio.sleep(0.05)
        yield Done(Reply(text, run_id="bb22"))

    await asyncio.gather(live(channel, throttles.for_channel(1)).show(events("一二三四五六")),
                         live(channel, throttles.for_channel(1)).show(events("七八九十")),
                         live(other, throttles.for_channel(2)).show(events("別のチャンネル")))
    times = [at for at, _ in channel.writes]
    assert len(times) >= 4 and all(b - a >= 0.2 for a, b in zip(times, times[1:]))
    assert sorted(m.content for m in channel.messages) == ["一二三四五六", "七八九十"]
    assert other.shown() == [("別のチャンネル", "feedback:bb22")]
    assert throttles.for_channel(1) is throttles.for_channel(1)


async def test_cancelling_the_answer_closes_the_run_s_events():
    channel, closed = Channel(), asyncio.Event()

    async def events():
        try:
            yield Started("cc33")
            await asyncio.Event().wait()  # a run that never ends by itself
        finally:
            closed.set()  # ConversationService.stream cancels its run here

    task = asyncio.create_task(live(channel).show(events()))
    await eventually(lambda: len(channel.messages) == 1)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert closed.is_set()


async def test_the_run_s_events_are_closed_as_soon_as_it_is_done():
    channel, closed = Channel(), asyncio.Event()

    async def events():
        try:
            yield Started("dd44")
            yield Done(Reply("答え", run_id="dd44"))
            await asyncio.Event().wait()  # never reached: nothing reads past Done
        finally:
            closed.set()  # ConversationService.stream forgets the run here

    await live(channel).show(events())
    assert closed.is_set()
