"""Slack shows the answer as it is made: the loading status while the bot reads, the answer
streamed with chat.startStream/appendStream/stopStream, feedback buttons under it. End to end:
signed requests to the real Bolt app, the real AsyncWebClient (and its chat_stream helper)
against the mock Web API, the real service and graph with the real ChatGoogleGenerativeAI
streaming from the Gemini stub, real Chromium reading the Zenn replica."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager

import aiohttp
import pytest
from langchain_core.messages import AIMessage
from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack import rules
from adapters.slack.app import SlackAdapter
from adapters.slack.stream import LoadingStatus, StreamPacer
from bench.gemini_stub import GeminiStub
from bench.replica import ReplicaServer
from bench.scripted_model import current_turn
from bot.runtime import model_from
from tests.fakes.slack import TEAM, MockSlackApi, action_body, event_body, eventually, signed_headers
from tests.helpers import make_settings, query_rows, running
from tests.test_slack import SECRET, mention
from tests.test_streaming import ANSWER, read_then_answer

THREAD = "800.000001"
THREAD_ID = rules.thread_id(TEAM, "C1", THREAD)


@asynccontextmanager
async def slack_bot(tmp_path, zenn, slack, gemini, **overrides):
    """The Slack adapter on the real runtime, its model Gemini (the stub); yields a function that
    posts signed requests, and the runtime."""
    values = dict(slack_bot_token="xoxb-test", slack_signing_secret=SECRET, slack_port=0,
                  slack_api_url=slack.url + "/api/", google_api_key="k", google_gemini_base_url=gemini.url,
                  zennbot_llm_max_retries=0, slack_stream_interval=0.05)
    settings = make_settings(tmp_path, zenn.url, **(values | overrides))
    async with running(settings, model=model_from(settings)) as (runtime, _):
        adapter = SlackAdapter(settings, runtime.service)
        task = asyncio.create_task(adapter.start())
        await eventually(lambda: adapter._runner is not None and adapter._runner.addresses)  # noqa: SLF001
        async with aiohttp.ClientSession() as http:
            async def post(body: str, content_type="application/json"):
                headers = signed_headers(SECRET, body, content_type)
                async with http.post(f"http://127.0.0.1:{adapter.port}/slack/events", data=body,
                                     headers=headers) as response:
                    return response.status
            try:
                yield post, runtime
            finally:
                await adapter.close()
                await task


async def ask(post, slack, question: str) -> None:
    """Mention the bot in channel C1 and wait until the run is over (✅ or ⚠️)."""
    assert await post(event_body(mention(question, THREAD), "Ev1")) == 200
    await eventually(lambda: len(slack.named("reactions.add")) == 2)


def stream_calls(slack: MockSlackApi) -> list[tuple[str, dict, float]]:
    return [(name, args, at) for (name, args), at in zip(slack.calls, slack.call_times, strict=True)
            if name.startswith(("chat.", "assistant."))]


async def test_mention_gets_status_then_a_stream_with_feedback_buttons(tmp_path):
    answer = ANSWER * 2
    async with ReplicaServer() as zenn, MockSlackApi() as slack, \
            GeminiStub(policy=answering(zenn.url, answer), chunk_chars=10, chunk_delay=0.1) as gemini:
        async with slack_bot(tmp_path, zenn, slack, gemini, slack_stream_interval=0.3) as (post, _):
            await ask(post, slack, f"{zenn.url}/asap 一番人気は？")
    names = [name for name, _, _ in stream_calls(slack)]
    first_stream = names.index("chat.startStream")
    assert names[0] == "assistant.threads.setStatus"
    assert names[first_stream:] == ["chat.startStream", *["chat.appendStream"] * (len(names) - first_stream - 2),
                                    "chat.stopStream"]
    assert names.count("chat.appendStream") >= 2
    assert set(names[:first_stream]) == {"assistant.threads.setStatus"}  # no ⏳ message any more
    statuses = slack.named("assistant.threads.setStatus")
    assert all(s["channel_id"] == "C1" and s["thread_ts"] == THREAD for s in statuses)
    assert any(s["status"].startswith("is reading") and "/asap" in s["loading_messages"][0] for s in statuses)
    start = slack.named("chat.startStream")[0]
    assert (start["channel"], start["thread_ts"]) == ("C1", THREAD)
    assert (start["recipient_team_id"], start["recipient_user_id"]) == (TEAM, "UALICE")
    assert slack.named("chat.stopStream")[0]["blocks"] == rules.feedback_blocks()
    # the thread holds the answer once, with its sources, in one finished message with the buttons
    [message] = slack.thread("C1", THREAD)
    assert message.text.count(answer) == 1 and message.text.startswith(answer)
    assert f"- [asap (Zenn)]({zenn.url}/asap)" in message.text
    assert not message.streaming and message.blocks == rules.feedback_blocks()
    # the pace: one stream call per interval at most (appendStream is Tier 4, 100+/min)
    times = [at for name, _, at in stream_calls(slack) if name in ("chat.startStream", "chat.appendStream")]
    assert min(b - a for a, b in zip(times, times[1:], strict=False)) >= 0.3
    assert [r["name"] for r in slack.named("reactions.add")] == ["eyes", "white_check_mark"]


@pytest.mark.parametrize("expiry", [{"expire_streams_after_appends": 1}, {"stream_lifetime": 0.4}])
async def test_a_stream_that_expires_half_way_still_leaves_the_whole_answer(tmp_path, expiry):
    answer = ANSWER * 2
    async with ReplicaServer() as zenn, MockSlackApi() as slack, \
            GeminiStub(policy=answering(zenn.url, answer), chunk_chars=10, chunk_delay=0.1) as gemini:
        for switch, value in expiry.items():
            setattr(slack, switch, value)
        async with slack_bot(tmp_path, zenn, slack, gemini) as (post, _):
            await ask(post, slack, "質問です")
    assert ("chat.appendStream", "message_not_in_streaming_state") in slack.errors  # expired half way
    [message] = slack.thread("C1", THREAD)
    assert message.text == answer and message.blocks == rules.feedback_blocks() and not message.streaming
    [update] = slack.named("chat.update")  # the streamed message itself was completed
    assert update["ts"] == message.ts and not slack.named("chat.postMessage")
    assert slack.named("reactions.add")[1]["name"] == "white_check_mark"


async def test_a_refused_stream_is_posted_instead(tmp_path):
    async with ReplicaServer() as zenn, MockSlackApi() as slack, \
            GeminiStub(policy=answering(zenn.url, ANSWER), chunk_chars=10, chunk_delay=0.05) as gemini:
        slack.fail["chat.startStream"] = ["channel_type_not_supported"]
        async with slack_bot(tmp_path, zenn, slack, gemini) as (post, _):
            await ask(post, slack, "質問です")
    [message] = slack.thread("C1", THREAD)
    assert message.text == ANSWER and message.blocks == rules.feedback_blocks()
    assert len(slack.named("chat.startStream")) == 1 and not slack.named("chat.appendStream")


async def test_a_channel_stream_needs_its_recipient(tmp_path):
    """The mock is as strict as Slack: without the recipient a channel stream is refused."""
    async with MockSlackApi() as slack:
        client = AsyncWebClient(token="xoxb-test", base_url=slack.url + "/api/")
        stream = await client.chat_stream(channel="C1", thread_ts="1.1", buffer_size=1)
        with pytest.raises(Exception, match="missing_recipient_team_id"):
            await stream.append(markdown_text="hello")
        stream = await client.chat_stream(channel="C1", thread_ts="1.1", recipient_team_id=TEAM,
                                          recipient_user_id="U1", buffer_size=1)
        await stream.append(markdown_text="a" * 100)
        with pytest.raises(Exception, match="msg_too_long"):
            await stream.append(markdown_text="a" * 12_001)
        await client.chat_stopStream(channel="C1", ts=stream.ts)  # (the helper would resend its failed buffer)
        with pytest.raises(Exception, match="message_not_in_streaming_state"):
            await client.chat_appendStream(channel="C1", ts=stream.ts, markdown_text="late")
    assert slack.thread("C1", "1.1")[0].text == "a" * 100


async def test_text_withdrawn_after_it_was_streamed_is_deleted(tmp_path):
    preamble = "まずページを読んで確かめます。" * 3
    async with ReplicaServer() as zenn, MockSlackApi() as slack, \
            GeminiStub(policy=read_then_answer(zenn.url, preamble), chunk_chars=5, chunk_delay=0.1) as gemini:
        async with slack_bot(tmp_path, zenn, slack, gemini) as (post, _):
            await ask(post, slack, f"{zenn.url}/asap 一番人気は？")
    starts = slack.named("chat.startStream")
    assert len(starts) == 2 and "まず" in starts[0]["chunks"][0]["text"]  # the preamble's stream, then the answer's
    [deleted] = slack.named("chat.delete")
    names = [name for name, _, _ in stream_calls(slack)]
    deleted_at = names.index("chat.delete")
    assert "assistant.threads.setStatus" in names[deleted_at:]  # the status is back while it reads
    [message] = slack.thread("C1", THREAD)
    assert message.ts != deleted["ts"] and message.text.startswith(ANSWER) and "まず" not in message.text


async def test_a_model_error_half_way_ends_with_the_error_and_no_history(tmp_path):
    async with ReplicaServer() as zenn, MockSlackApi() as slack, \
            GeminiStub(policy=answering(zenn.url, ANSWER), chunk_chars=10, chunk_delay=0.1,
                       fail_stream_after=5) as gemini:
        async with slack_bot(tmp_path, zenn, slack, gemini) as (post, runtime):
            await ask(post, slack, "質問です")
            history = await runtime.agent.history(THREAD_ID)
    assert slack.named("chat.startStream"), "the answer had started streaming"
    [message] = slack.thread("C1", THREAD)
    assert message.text.startswith(":warning:") and "language model" in message.text
    assert ANSWER[:10] not in message.text and not message.streaming and message.blocks == []
    assert slack.named("assistant.threads.setStatus")[-1]["status"] == ""  # cleared
    assert slack.named("reactions.add")[1]["name"] == "warning"
    assert history == []


async def test_a_long_answer_streams_then_splits(tmp_path):
    paragraphs = [f"段落 {i}: " + "とても長い説明が続きます。" * 40 for i in range(60)]
    answer = "\n\n".join(paragraphs)
    assert len(answer) > 2 * rules.MARKDOWN_LIMIT
    # 21 chunks at least 0.15 s apart: the answer is still being written more than a stream
    # interval (1 s) after its stream opened, whatever the machine's load, so it is appended to.
    async with ReplicaServer() as zenn, MockSlackApi() as slack, \
            GeminiStub(policy=answering(zenn.url, answer), chunk_chars=1500, chunk_delay=0.15) as gemini:
        async with slack_bot(tmp_path, zenn, slack, gemini) as (post, _):
            await ask(post, slack, "長く説明して")
    assert slack.named("chat.appendStream"), "the start of it was streamed"
    messages = slack.thread("C1", THREAD)
    assert len(messages) >= 3 and all(len(m.text) <= rules.MARKDOWN_LIMIT for m in messages)
    assert [m.text for m in messages] == rules.answer_messages(answer, [], True)
    whole = "\n".join(m.text for m in messages)
    assert all(whole.count(p) == 1 for p in paragraphs)
    assert messages[-1].blocks == rules.feedback_blocks() and all(not m.blocks for m in messages[:-1])


async def test_a_rate_limited_append_is_retried_without_doubling(tmp_path):
    async with ReplicaServer() as zenn, MockSlackApi() as slack, \
            GeminiStub(policy=answering(zenn.url, ANSWER), chunk_chars=10, chunk_delay=0.1) as gemini:
        slack.rate_limit["chat.appendStream"] = 1
        async with slack_bot(tmp_path, zenn, slack, gemini) as (post, _):
            await ask(post, slack, "質問です")
    assert slack.errors == [("chat.appendStream", "ratelimited")]  # one 429, then all went through
    refused, retried = slack.named("chat.appendStream")[:2]
    assert refused == retried  # the same piece again, after Retry-After
    [message] = slack.thread("C1", THREAD)
    assert message.text == ANSWER


async def test_a_feedback_click_is_stored_and_acknowledged(tmp_path):
    async with ReplicaServer() as zenn, MockSlackApi() as slack, \
            GeminiStub(policy=answering(zenn.url, "やあ"), chunk_chars=10) as gemini:
        async with slack_bot(tmp_path, zenn, slack, gemini) as (post, runtime):
            await ask(post, slack, "こんにちは")
            [answer] = slack.thread("C1", THREAD)
            assert await post(action_body(slack.feedback_click(answer, "good")),
                              "application/x-www-form-urlencoded") == 200
            await eventually(lambda: len(slack.named("chat.postEphemeral")) == 1)
            # the same user changes their mind; another user agrees with the first click
            await post(action_body(slack.feedback_click(answer, "bad")), "application/x-www-form-urlencoded")
            await post(action_body(slack.feedback_click(answer, "good", user="UBOB")),
                       "application/x-www-form-urlencoded")
            await eventually(lambda: len(slack.named("chat.postEphemeral")) == 3)
            rows = await query_rows(runtime.browsing.settings,
                              "SELECT thread_id, message_id, user_id, value FROM feedback ORDER BY user_id")
    assert rows == [(THREAD_ID, answer.ts, "slack:UALICE", "bad"), (THREAD_ID, answer.ts, "slack:UBOB", "good")]
    thanks = slack.named("chat.postEphemeral")[0]
    assert (thanks["channel"], thanks["user"], thanks["thread_ts"]) == ("C1", "UALICE", THREAD)
    assert "Thanks" in thanks["text"]


async def test_loading_status_is_refreshed_until_hidden_and_cleared(tmp_path):
    async with MockSlackApi() as slack:
        client = AsyncWebClient(token="xoxb-test", base_url=slack.url + "/api/")
        status = LoadingStatus(client, "C1", "1.1", refresh=0.05)
        await status.show("reading https://zenn.dev/asap")
        await eventually(lambda: len(slack.named("assistant.threads.setStatus")) >= 3)
        status.hide()
        await status.clear()
        await status.close()
    sent = slack.named("assistant.threads.setStatus")
    assert all(s["status"] == "is reading https://zenn.dev/asap…" for s in sent[:-1])
    assert sent[0]["loading_messages"] == ["Reading https://zenn.dev/asap…"]
    assert sent[-1]["status"] == "" and "loading_messages" not in sent[-1]


# The plain decisions


@pytest.mark.parametrize("raw, shown", [
    ("答えは 42 です", "答えは 42 です"),
    ("see <!chan", "see "),  # may become <!channel>: wait for the rest
    ("see <!channel> now", "see ＠channel now"),
    ("hi <@U1|bob sm", "hi "),
    ("a < b and <https://x.dev|x", "a < b and <https://x.dev|x"),  # links and comparisons are shown
    ("ping @her", "ping "),
    ("ping @here ok", "ping ＠here ok"),
    ("x" * (rules.STREAM_CAP + 50), "x" * rules.STREAM_CAP),
])
def test_streamable(raw, shown):
    assert rules.streamable(raw) == shown


def test_streamed_text_only_ever_grows_and_matches_the_whole():
    text = "<!here> 注意: <@U123|alice> と @everyone へ。<https://zenn.dev|Zenn> を見て。a < b。"
    shown = [rules.streamable(text[:n]) for n in range(len(text) + 1)]
    assert all(later.startswith(earlier) for earlier, later in zip(shown, shown[1:], strict=False))
    assert shown[-1] == rules.neutralize(text)


def test_continuation():
    assert rules.continuation("abc", "abcdef") == "def"
    assert rules.continuation("abc", "abc") == ""
    assert rules.continuation("abx", "abcdef") is None


@pytest.mark.parametrize("body, expected", [
    ({"actions": [{"value": "good"}], "user": {"id": "U1"}, "channel": {"id": "C1"}, "team": {"id": "T9"},
      "message": {"ts": "2.2", "thread_ts": "1.1"}}, rules.Feedback("slack:T9:C1:1.1", "C1", "1.1", "2.2", "U1", "good")),
    ({"actions": [{"value": "bad"}], "user": {"id": "U1"},
      "container": {"channel_id": "C1", "message_ts": "2.2"}}, rules.Feedback("slack:T1:C1:2.2", "C1", "2.2", "2.2", "U1", "bad")),
    ({"actions": [{"value": "meh"}], "user": {"id": "U1"}, "channel": {"id": "C1"}, "message": {"ts": "2.2"}}, None),
    ({"actions": [], "user": {"id": "U1"}, "channel": {"id": "C1"}}, None),
])
def test_feedback_from_action(body, expected):
    assert rules.feedback_from_action(body, "T1") == expected


def answering(zenn_url: str, text: str):
    """A model that answers `text` straight away (no page to read) unless asked about a page,
    which it reads first."""
    reads = read_then_answer(zenn_url)

    def policy(messages):
        _, human, since = current_turn(messages)
        if zenn_url in str(human.content):
            reply = reads(messages)
            return reply if reply.tool_calls else AIMessage(content=text)
        return AIMessage(content=text)
    return policy


def test_answers_in_one_workspace_share_the_stream_call_budget():
    now = [0.0]
    pacer = StreamPacer(0.7, clock=lambda: now[0])
    assert pacer.take("T1") and not pacer.take("T1")  # a second answer in T1 waits
    assert pacer.take("T2")  # another workspace has its own budget
    now[0] = 0.69
    assert not pacer.take("T1")
    now[0] = 0.7
    assert pacer.take("T1")
