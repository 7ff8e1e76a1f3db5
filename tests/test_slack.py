"""Slack end to end in HTTP mode: signed requests to the real Bolt app, the real AsyncWebClient
talking to a mock Web API, the real service (scripted model, Zenn replica, real Chromium)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from contextlib import asynccontextmanager
from urllib.parse import urlencode

import aiohttp
import pytest
from langchain_core.messages import AIMessage

from adapters.slack import rules
from adapters.slack.app import SlackAdapter
from bench.replica import ReplicaServer
from tests.fakes.slack import BOT_USER, MockSlackApi, event_body, eventually, signed_headers
from tests.helpers import make_settings, reading_policy, running

SECRET = "signing-secret-for-tests"


@asynccontextmanager
async def slack_bot(tmp_path, zenn, slack, policy=reading_policy, **overrides):
    settings = make_settings(tmp_path, zenn.url, slack_bot_token="xoxb-test", slack_signing_secret=SECRET,
                             slack_port=0, slack_api_url=slack.url + "/api/", **overrides)
    async with running(settings, policy) as (runtime, model):
        adapter = SlackAdapter(settings, runtime.service)
        task = asyncio.create_task(adapter.start())
        await eventually(lambda: adapter._runner is not None and adapter._runner.addresses)  # noqa: SLF001
        async with aiohttp.ClientSession() as http:
            async def post(body: str, content_type="application/json", headers=None, secret=SECRET):
                h = signed_headers(secret, body, content_type) | (headers or {})
                async with http.post(f"http://127.0.0.1:{adapter.port}/slack/events", data=body, headers=h) as r:
                    return r.status, await r.text()
            try:
                yield post, model
            finally:
                await adapter.close()
                await task


def mention(text: str, ts: str, thread_ts: str | None = None, user="UALICE") -> dict:
    event = {"type": "app_mention", "user": user, "text": f"<@{BOT_USER}> {text}", "ts": ts, "channel": "C1",
             "event_ts": ts}
    if thread_ts:
        event["thread_ts"] = thread_ts
    return event


def message(text: str, ts: str, thread_ts: str, user="UALICE") -> dict:
    return {"type": "message", "channel_type": "channel", "user": user, "text": text, "ts": ts,
            "thread_ts": thread_ts, "channel": "C1", "event_ts": ts}


def answers(slack: MockSlackApi) -> list[str]:
    """The bot's messages in threads, as the workspace now shows them."""
    return [m.text for m in sorted(slack.messages.values(), key=lambda m: m.ts) if m.thread_ts and not m.streaming]


async def test_mention_then_thread_reply_then_restart(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    async with ReplicaServer() as zenn, MockSlackApi() as slack:
        async with slack_bot(tmp_path, zenn, slack) as (post, _):
            status, _ = await post(event_body(mention(f"<{zenn.url}/asap|zenn.dev/asap> の一番いいねが多い記事は？",
                                                      "100.000001"), "Ev1"))
            assert status == 200
            await eventually(lambda: len(answers(slack)) == 1)
            assert slack.named("reactions.add")[0]["name"] == "eyes"
            await eventually(lambda: len(slack.named("reactions.add")) == 2)
            assert slack.named("reactions.add")[1]["name"] == "white_check_mark"
            assert slack.named("reactions.remove")[0]["name"] == "eyes"
            first = answers(slack)[0]
            assert "921" in first
            assert f"- [asap (Zenn)]({zenn.url}/asap) · 72 articles · 2,205 likes" in first
            statuses = [s for s in slack.named("assistant.threads.setStatus") if "reading" in s["status"]]
            assert statuses and statuses[0]["thread_ts"] == "100.000001" and statuses[0]["channel_id"] == "C1"
            assert "reading" in statuses[0]["loading_messages"][0].lower()
            assert not [p for p in slack.named("chat.postMessage") if "⏳" in p.get("text", "")]

            # A reply in the thread, no mention: the same conversation.
            await post(event_body(message("2番目は？", "100.000002", "100.000001"), "Ev2"))
            await eventually(lambda: len(answers(slack)) == 2)
            assert "104" in answers(slack)[1]

            # Slack retries the same event: still one answer.
            await post(event_body(message("2番目は？", "100.000002", "100.000001"), "Ev2"),
                       headers={"X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_timeout"})
            await asyncio.sleep(1.0)
            assert len(answers(slack)) == 2

        # The bot restarts: a thread reply is still answered, with the thread in mind.
        async with slack_bot(tmp_path, zenn, slack) as (post, _):
            await post(event_body(message("3番目は？", "100.000003", "100.000001"), "Ev3"))
            await eventually(lambda: len(answers(slack)) == 3)
            assert "87" in answers(slack)[2]
    assert caplog.records and "xoxb-test" not in caplog.text and SECRET not in caplog.text


async def test_reply_with_mention_is_answered_once(tmp_path):
    async with ReplicaServer() as zenn, MockSlackApi() as slack:
        async with slack_bot(tmp_path, zenn, slack) as (post, _):
            await post(event_body(mention(f"{zenn.url}/asap 一番は？", "200.000001"), "Ev1"))
            await eventually(lambda: len(answers(slack)) == 1)
            text = f"<@{BOT_USER}> 2番目は？"
            await post(event_body({**message(text, "200.000002", "200.000001")}, "Ev2"))
            await post(event_body(mention("2番目は？", "200.000002", "200.000001"), "Ev3"))
            await eventually(lambda: len(answers(slack)) == 2)
            await asyncio.sleep(1.0)
            assert len(answers(slack)) == 2


async def test_bad_signature_is_refused(tmp_path):
    async with ReplicaServer() as zenn, MockSlackApi() as slack:
        async with slack_bot(tmp_path, zenn, slack) as (post, model):
            status, _ = await post(event_body(mention("hello", "300.1"), "Ev1"), secret="wrong")
            await asyncio.sleep(0.5)
    assert status == 401 and model.records == [] and answers(slack) == []


async def test_slash_command(tmp_path):
    async with ReplicaServer() as zenn, MockSlackApi() as slack:
        async with slack_bot(tmp_path, zenn, slack) as (post, _):
            form = urlencode({"command": "/zenn", "text": f"{zenn.url}/asap 一番いいねが多い記事は？", "user_id": "UALICE",
                              "channel_id": "C1", "team_id": "T1", "response_url": slack.url + "/respond/abc",
                              "trigger_id": "1.2"})
            started = time.monotonic()
            status, _ = await post(form, "application/x-www-form-urlencoded")
            assert status == 200 and time.monotonic() - started < 3
            await eventually(lambda: len(answers(slack)) == 1)
            parent = slack.named("chat.postMessage")[0]
            assert parent["text"].startswith("<@UALICE> asked:") and "thread_ts" not in parent
            assert "921" in answers(slack)[0]
            parent_ts = next(m.ts for m in slack.messages.values() if m.thread_ts is None)
            assert "921" in slack.thread_text("C1", parent_ts)
            assert slack.named("chat.startStream")[0]["thread_ts"] == parent_ts
            assert slack.named("chat.startStream")[0]["recipient_user_id"] == "UALICE"

            empty = urlencode({"command": "/zenn", "text": "", "user_id": "UALICE", "channel_id": "C1",
                               "team_id": "T1", "response_url": slack.url + "/respond/def", "trigger_id": "1.3"})
            await post(empty, "application/x-www-form-urlencoded")
            await eventually(lambda: len(slack.responses) == 1)
    assert slack.responses[0]["response_type"] == "ephemeral" and "Usage" in slack.responses[0]["text"]


async def test_long_answer_in_parts_and_no_broadcast_pings(tmp_path):
    def long_policy(messages):
        return AIMessage(content="<!channel> <!here|here> @everyone 注意\n\n" + "\n".join(
            f"行 {i}: " + "あ" * 60 for i in range(400)))

    async with ReplicaServer() as zenn, MockSlackApi() as slack:
        slack.too_long_over = 4000  # this workspace refuses long messages: fall back to parts
        async with slack_bot(tmp_path, zenn, slack, long_policy) as (post, _):
            await post(event_body(mention("長い答えを", "400.1"), "Ev1"))
            await eventually(lambda: len(slack.named("reactions.add")) == 2)
    posted = answers(slack)
    assert len(posted) >= 8 and all(len(p) <= 4000 for p in posted)
    assert "行 399" in posted[-1] and all(p.count("<!") == 0 for p in posted)
    assert "\n".join(posted).count("行 200: ") == 1  # nothing doubled
    assert slack.thread("C1", "400.1")[-1].blocks == rules.feedback_blocks()  # the buttons under the last part
    assert all("@everyone" not in p and "<!channel>" not in p for p in posted)
    assert all(a.get("unfurl_links") in (False, "0", "false", None) for a in slack.named("chat.postMessage"))


@pytest.mark.parametrize("text, expected", [
    ("<@UBOT> <https://zenn.dev/asap|zenn.dev/asap> を見て", "https://zenn.dev/asap を見て"),
    ("<https://zenn.dev/a?x=1&amp;y=2>", "https://zenn.dev/a?x=1&y=2"),
    ("&lt;b&gt; &amp; <!here>", "<b> & @here"),
    ("<@UOTHER|bob> 見て", "@UOTHER 見て"),
])
def test_plain_text(text, expected):
    assert rules.plain_text(text, "UBOT") == expected


@pytest.mark.parametrize("event, mention_, owns, answered", [
    ({"user": "U1", "channel": "C", "ts": "1", "text": "<@UBOT> hi"}, True, False, True),
    ({"user": "U1", "channel": "C", "ts": "2", "thread_ts": "1", "text": "hi"}, False, True, True),
    ({"user": "U1", "channel": "C", "ts": "2", "thread_ts": "1", "text": "hi"}, False, False, False),
    ({"user": "U1", "channel": "C", "ts": "2", "text": "hi"}, False, True, False),
    ({"user": "U1", "channel": "C", "ts": "2", "thread_ts": "1", "text": "<@UBOT> hi"}, False, True, False),
    ({"user": "UBOT", "channel": "C", "ts": "2", "thread_ts": "1", "text": "hi"}, False, True, False),
    ({"bot_id": "B2", "user": "U2", "channel": "C", "ts": "2", "thread_ts": "1", "text": "hi"}, False, True, False),
    ({"subtype": "message_changed", "channel": "C", "ts": "2", "thread_ts": "1"}, False, True, False),
    ({"subtype": "message_deleted", "channel": "C", "ts": "2", "thread_ts": "1"}, False, True, False),
    ({"user": "U1", "channel": "C", "ts": "2", "text": "hi", "channel_type": "im"}, False, False, True),
    ({"bot_id": "B2", "user": "U2", "channel": "C", "ts": "2", "text": "hi", "channel_type": "im"}, False, False, False),
])
def test_which_events_are_for_us(event, mention_, owns, answered):
    turn = rules.turn_from_event(event, "T1", "UBOT", is_mention=mention_, bot_owns_thread=owns)
    assert (turn is not None) == answered
    if turn:
        assert turn.thread_id == f"slack:T1:C:{event.get('thread_ts') or event['ts']}"


def test_neutralize():
    assert rules.neutralize("<!channel> <!here> <!everyone> <!subteam^S1|@devs> <@U1> @here") == \
        "＠channel ＠here ＠everyone ＠subteam ＠U1 ＠here"


async def test_socket_mode_mention_is_acked_and_answered(tmp_path):
    async with ReplicaServer() as zenn, MockSlackApi() as slack:
        settings = make_settings(tmp_path, zenn.url, slack_bot_token="xoxb-test", slack_app_token="xapp-test",
                                 slack_api_url=slack.url + "/api/")
        assert settings.slack_mode == "socket"
        async with running(settings) as (runtime, _):
            adapter = SlackAdapter(settings, runtime.service)
            task = asyncio.create_task(adapter.start())
            try:
                await eventually(lambda: slack.socket_clients == 1)
                body = json.loads(event_body(mention(f"{zenn.url}/asap 一番は？", "500.1"), "Ev1"))
                envelope = await slack.push("events_api", body)
                await eventually(lambda: len(answers(slack)) == 1)
                await eventually(lambda: any(a.get("envelope_id") == envelope for a in slack.acks))
                # a click on 👍 arrives over the socket too
                click = await slack.push("interactive", slack.feedback_click(slack.thread("C1", "500.1")[0], "good"))
                await eventually(lambda: len(slack.named("chat.postEphemeral")) == 1)
                assert any(a.get("envelope_id") == click for a in slack.acks)
                assert await runtime.store.feedback_counts() == {("slack", "good"): 1}
            finally:
                await adapter.close()
                await task
    assert "921" in answers(slack)[0] and slack.thread("C1", "500.1")


async def test_allowlists_keep_the_bot_quiet_elsewhere(tmp_path):
    async with ReplicaServer() as zenn, MockSlackApi() as slack:
        async with slack_bot(tmp_path, zenn, slack, slack_allowed_channels="COTHER") as (post, model):
            await post(event_body(mention(f"{zenn.url}/asap 一番は？", "600.1"), "Ev1"))
            form = urlencode({"command": "/zenn", "text": "hello", "user_id": "UALICE", "channel_id": "C1",
                              "team_id": "T1", "response_url": slack.url + "/respond/x", "trigger_id": "1"})
            await post(form, "application/x-www-form-urlencoded")
            await eventually(lambda: len(slack.responses) == 1)
            await asyncio.sleep(0.5)
    assert "not enabled" in slack.responses[0]["text"] and slack.responses[0]["response_type"] == "ephemeral"
    assert model.records == [] and answers(slack) == [] and slack.named("reactions.add") == []


async def test_rate_limited_post_is_retried(tmp_path):
    async with ReplicaServer() as zenn, MockSlackApi() as slack:
        slack.rate_limit["chat.startStream"] = 1
        async with slack_bot(tmp_path, zenn, slack, lambda messages: AIMessage(content="やあ")) as (post, _):
            await post(event_body(mention("こんにちは", "700.1"), "Ev1"))
            await eventually(lambda: len(answers(slack)) == 1)
    starts = [name for name, _ in slack.calls if name == "chat.startStream"]
    assert len(starts) == 2 and answers(slack) == ["やあ"]  # the 429, then the retry


async def test_a_lost_run_whose_message_is_gone_is_told_in_a_new_message(tmp_path):
    """The bot died after deleting a withdrawn draft but before recording that: recovery finds
    the recorded message gone and tells the asker in a new one (it once gave up)."""
    from bot.store import RunRecord

    async with MockSlackApi() as slack:
        settings = make_settings(tmp_path, slack_bot_token="xoxb-test", slack_signing_secret=SECRET,
                                 slack_api_url=slack.url + "/api/")
        adapter = SlackAdapter(settings, service=None)
        where = {"channel": "C1", "thread_ts": "800.1", "message_ts": "800.2", "status_ts": "800.9"}
        run = RunRecord("slack:T1:C1:800.1", "slack", "slack:UALICE", "消えた下書きの質問", None, json.dumps(where))
        await adapter.acknowledge_lost_run(run)
    [told] = slack.thread("C1", "800.1")
    assert "was lost" in told.text and "消えた下書きの質問" in told.text
    assert [n for n, a in slack.calls if n.startswith("chat.")] == ["chat.stopStream", "chat.update", "chat.postMessage"]
    assert slack.named("reactions.add")[-1] == {"channel": "C1", "timestamp": "800.2", "name": "warning"}
