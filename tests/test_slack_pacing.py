"""The stream calls of a Slack workspace: a burst at once, then a steady pace within Slack's
limit per minute, and a new answer's first text before the appends of answers already showing.
The pacer is tested on a clock of the test's own; the burst end to end through the real adapter."""

from __future__ import annotations

import asyncio

from langchain_core.messages import AIMessage, ToolMessage

from adapters.slack import rules
from adapters.slack.pacing import StreamPacer
from bench.gemini_stub import GeminiStub
from bench.replica import ReplicaServer
from bench.scripted_model import current_turn, tool_call
from tests.fakes.slack import MockSlackApi, event_body, eventually
from tests.test_slack import mention
from tests.test_slack_streaming import slack_bot


def test_a_workspace_may_burst_then_keeps_a_steady_pace():
    now = [0.0]
    pacer = StreamPacer(1.0, clock=lambda: now[0], burst=3)
    assert [pacer.take("T1") for _ in range(4)] == [True, True, True, False]
    assert pacer.take("T2")  # another workspace has its own bucket
    now[0] = 0.99
    assert not pacer.take("T1")
    now[0] = 1.0
    assert pacer.take("T1") and not pacer.take("T1")


def test_no_minute_holds_more_than_slacks_limit_with_the_defaults():
    now = [0.0]
    pacer = StreamPacer(rules.WORKSPACE_STREAM_GAP, clock=lambda: now[0], burst=rules.WORKSPACE_STREAM_BURST)
    calls = []
    for step in range(30_000):  # every 10 ms for five minutes, a call whenever one may go
        now[0] = step / 100
        if pacer.take("T1", first=step % 2 == 0):
            calls.append(now[0])
    most = max(sum(1 for b in calls if a <= b < a + 60) for a in calls)
    assert 95 <= most <= 100  # the limit is used, never passed


def test_first_text_goes_before_appends_of_answers_already_showing():
    now = [0.0]
    pacer = StreamPacer(1.0, clock=lambda: now[0], burst=1)
    assert pacer.take("T1")  # an answer showing takes the bucket's call
    pacer.waiting("T1", True)  # a new answer has text to show
    now[0] = 1.0
    assert not pacer.take("T1")  # the next call is not an append of the answer showing...
    assert pacer.take("T1", first=True)  # ...but the new answer's first text
    pacer.waiting("T1", False)
    now[0] = 2.0
    assert pacer.take("T1")  # appends go again once no answer waits to open


async def test_a_run_keeps_a_call_for_its_first_text_from_its_start_until_its_answer_ends():
    """An answer whose run started (still reading) already has a call kept for its first text;
    an answer that ends without ever streaming (its first text held back, then the whole answer
    posted) gives its claim back: it once kept it, and appends in that workspace starved."""
    from adapters.slack.stream import AnswerStream
    from slack_sdk.web.async_client import AsyncWebClient

    now = [0.0]
    pacer = StreamPacer(1.0, clock=lambda: now[0], burst=1)
    async with MockSlackApi() as slack:
        client = AsyncWebClient(token="xoxb-test", base_url=slack.url + "/api/")

        def answer(n: int) -> AnswerStream:
            turn = rules.SlackTurn(f"slack:T1:C1:{n}.0", "C1", f"{n}.0", f"{n}.1", "U1", "q", "T1")
            return AnswerStream(client, turn, 1.0, pacer, clock=lambda: now[0])

        reading, writing = answer(1), answer(2)
        reading.expect()
        writing.expect()
        now[0] = 1.0
        await writing.add("最初の文。")  # held for FIRST_TEXT_HOLD, then
        now[0] = 1.5
        await writing.add("次の文。")  # opens its stream: the bucket's one call
        assert writing.streaming
        now[0] = 2.5
        assert not pacer.take("T1")  # the next call is kept for the answer still reading...
        assert pacer.take("T1", first=True)  # ...and goes to its first text

        held = answer(3)
        held.expect()
        now[0] = 3.5
        await held.add("短い答え。")  # too early to show (FIRST_TEXT_HOLD): held back
        await held.finish(["短い答え。"], [])
        reading.close()  # its run failed before writing anything
        now[0] = 4.5
        assert pacer.take("T1")  # nobody waits to open a stream: appends go again
    assert [m.text for m in slack.thread("C1", "3.0")] == ["短い答え。"]


async def test_every_answer_of_a_burst_in_one_workspace_shows_text_while_the_model_writes(tmp_path):
    """Twelve questions at once in one workspace, the model writing each answer for about 3 s:
    every answer's first text reaches the thread before the model's last chunk of it (with one
    stream call per 0.7 s for the workspace, the last would wait 8 s)."""
    questions = 12
    answer = "一番いいねが多い記事は「DeepSeek-R1の論文読んだ？」で、論文の要点が順に説明されています。" * 3

    def policy(messages):
        _, human, since = current_turn(messages)
        if not any(isinstance(m, ToolMessage) for m in since):
            return tool_call("read_page", url=str(human.content).split()[-2])
        return AIMessage(content=answer)

    async with ReplicaServer() as zenn, MockSlackApi() as slack, \
            GeminiStub(policy=policy, chunk_chars=4, chunk_delay=0.1) as gemini:
        async with slack_bot(tmp_path, zenn, slack, gemini, slack_stream_interval=1.0,
                             zennbot_user_rate_limit=1000, zennbot_thread_rate_limit=1000) as (post, _):
            threads = [f"900.{n:06d}" for n in range(questions)]
            statuses = await asyncio.gather(*(post(event_body(mention(f"{zenn.url}/asap 一番人気は？", ts), f"Ev{ts}"))
                                              for ts in threads))
            assert statuses == [200] * questions
            await eventually(lambda: len(slack.named("reactions.add")) == 2 * questions, timeout=120)
    assert [r["name"] for r in slack.named("reactions.add")].count("white_check_mark") == questions
    first_text: dict[str, float] = {}
    for (method, args), at in zip(slack.calls, slack.call_times, strict=True):
        if method == "chat.startStream" and any(c.get("text") for c in args.get("chunks") or []):
            first_text.setdefault(args["thread_ts"], at)
    answer_calls = [c for c in gemini.calls if c.sent_at and len(c.sent_at) > 10]
    assert len(answer_calls) == questions and set(first_text) == set(threads)
    # time.monotonic() (the mock) and time.perf_counter() (the stub) are one clock on Linux.
    # The n-th first text to show came before the n-th answer the model finished: no answer
    # waited for its first text until the model was done with it.
    last_chunks = sorted(c.sent_at[-1] for c in answer_calls)
    shown = sorted(first_text.values())
    assert all(first < last for first, last in zip(shown, last_chunks, strict=True))
    for thread in threads:
        [message] = slack.thread("C1", thread)
        assert message.text.startswith(answer) and not message.streaming
