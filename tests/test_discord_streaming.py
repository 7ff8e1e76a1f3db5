"""Discord streaming end to end: the real discord.py client against the fake Discord, the real
Gemini client against the Gemini stub (which streams its answers in chunks), the real service,
replica and Chromium. The answer is edited into a message as it is written, Stop and 👍/👎 are
buttons that work across a restart."""

from __future__ import annotations

import copy

from langchain_core.messages import AIMessage, HumanMessage

from adapters.discord import buttons
from adapters.discord import rules
from bench.gemini_stub import GeminiStub
from bench.replica import ReplicaServer
from bench.scripted_model import current_turn, tool_call
from tests.fakes.discord import BOT, BOT_ID, CHANNEL_ID, MANAGE_MESSAGES, FakeDiscord, user
from tests.fakes.slack import eventually
from tests.helpers import query_rows
from tests.test_discord import ALICE, discord_bot

BOB = user(11, "bob")
CAROL = user(12, "carol")  # a moderator: Manage Messages in the channel
ANSWER = "一番いいねが多いのは「DeepSeek-R1の論文読んだ？【勉強になるよ】」で、921 いいねです。" * 5
SHORT = "2番目は104 いいねの記事です。"


def read_then_answer(zenn_url: str, slow_answer: str = ANSWER):
    """Reads the page once per question, then answers: `slow_answer` to a question with "長く" or
    to the first question, `SHORT` to a question with "2番目"."""
    def policy(messages):
        _, human, since = current_turn(messages)
        if not since:
            return tool_call("read_page", url=zenn_url + "/asap")
        return AIMessage(content=SHORT if "2番目" in str(human.content) else slow_answer)
    return policy


def buttons_of(message: dict) -> list[str]:
    return [c["custom_id"] for row in message.get("components", []) for c in row["components"]]


def stop_id(message: dict) -> str | None:
    return next((c for c in buttons_of(message) if c.startswith("zennbot:stop:")), None)


def the_thread(fake: FakeDiscord) -> str:
    return next(iter(fake.threads))


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in zip(times, times[1:])]


async def test_answer_is_edited_in_as_it_is_written_then_feedback_and_restart(tmp_path):
    async with ReplicaServer() as zenn, FakeDiscord() as fake, GeminiStub(
            policy=read_then_answer(zenn.url), chunk_chars=15, chunk_delay=0.25) as gemini:
        question = f"<@{BOT_ID}> {zenn.url}/asap 一番人気は？"
        async with discord_bot(tmp_path, zenn, fake, gemini=gemini) as adapter:
            fake.rate_limit_next_edit = 1.5  # the first edit gets a 429 (with Via: retried, not a ban)
            await fake.dispatch("MESSAGE_CREATE", fake.message(CHANNEL_ID, ALICE, question, [BOT], mid=5001))
            await eventually(lambda: fake.threads and any(stop_id(m) for m in fake.thread_messages(the_thread(fake))))
            thread = the_thread(fake)
            running_message = copy.deepcopy(fake.thread_messages(thread)[0])  # the Stop button, for later
            await eventually(lambda: any(buttons_of(m) and not stop_id(m) for m in fake.thread_messages(thread)))
            # the same question, not streamed, for what the final messages must be
            reply = await adapter.service.handle("discord:elsewhere", "discord:99", question.split(" ", 1)[1])

            final = fake.thread_messages(thread)
            assert [m["content"] for m in final] == rules.answer_messages(reply.text, reply.sources, reply.ok)
            assert reply.text == ANSWER and len(final) == 1
            assert buttons_of(final[0]) == [f"zennbot:fb:good:{thread}", f"zennbot:fb:bad:{thread}"]
            assert final[0]["embeds"][0]["url"] == zenn.url + "/asap"  # the page card

            # one message, posted at once with a progress line and Stop, then edited as it grew
            writes = fake.writes_in(thread)
            assert writes[0].method == "POST" and writes[0].body["content"].startswith("⏳")
            assert stop_id(writes[0].body)
            typing = next(i for i, (_, p, _) in enumerate(fake.calls) if p == f"/channels/{thread}/typing")
            first_post = next(i for i, (m, p, _) in enumerate(fake.calls) if p == f"/channels/{thread}/messages")
            assert typing < first_post
            assert all(w.method == "PATCH" and w.message_id == final[0]["id"] for w in writes[1:])
            partial = [w.body["content"] for w in writes if w.status == 200 and
                       w.body["content"] != final[0]["content"] and w.body["content"][:10] == ANSWER[:10]]
            assert len(set(partial)) >= 2  # the answer grew in place ...
            # (the whole text may be shown once before the final edit adds the sources and buttons)
            assert all(ANSWER.startswith(p) for p in partial)
            assert [len(p) for p in partial] == sorted(len(p) for p in partial)  # ... and only grew
            assert all(stop_id(w.body) for w in writes if w.body.get("content") in partial)
            assert all(g >= 1.0 for g in gaps([w.at for w in writes]))  # at most one write a second
            limited = next(i for i, w in enumerate(writes) if w.status == 429)
            assert writes[limited + 1].body == writes[limited].body  # discord.py retried it ...
            assert writes[limited + 1].at - writes[limited].at >= 1.5  # ... after retry_after

            # 👍 then 👎 by Alice (the second replaces the first), 👍 by Bob
            for count, (presser, value) in enumerate(((ALICE, "good"), (ALICE, "bad"), (BOB, "good")), 1):
                await fake.dispatch("INTERACTION_CREATE", fake.button_press(
                    final[0], f"zennbot:fb:{value}:{thread}", presser))
                await eventually(lambda count=count: len(fake.callbacks()) == count)  # one click, then the next
            assert [(c["type"], c["data"]["flags"]) for c in fake.callbacks()] == [(4, 64)] * 3
            assert fake.callbacks()[0]["data"]["content"] == buttons.THANKS["good"]
            votes = await query_rows(adapter.settings, "SELECT platform, thread_id, message_id, user_id, value "
                                                 "FROM feedback ORDER BY user_id")
            assert votes == [("discord", f"discord:{thread}", final[0]["id"], "discord:11", "good"),
                             ("discord", f"discord:{thread}", final[0]["id"], "discord:7", "bad")]

        async with discord_bot(tmp_path, zenn, fake, gemini=gemini) as adapter:  # after a restart
            await fake.dispatch("INTERACTION_CREATE", fake.button_press(
                running_message, stop_id(running_message), ALICE))
            await fake.dispatch("INTERACTION_CREATE", fake.button_press(
                final[0], f"zennbot:fb:good:{thread}", ALICE))
            await eventually(lambda: len(fake.callbacks()) == 5)
            assert await query_rows(adapter.settings, "SELECT value FROM feedback WHERE user_id = 'discord:7'") == [
                ("good",)]
    stop_answer = next(c for c in fake.callbacks()[3:] if c["data"]["content"] == buttons.NOT_RUNNING)
    assert stop_answer["type"] == 4 and stop_answer["data"]["flags"] == 64


async def test_stop_button_asker_and_moderator_only_then_the_thread_goes_on(tmp_path):
    slow = ANSWER * 4
    async with ReplicaServer() as zenn, FakeDiscord() as fake, GeminiStub(
            policy=read_then_answer(zenn.url, slow), chunk_chars=10, chunk_delay=0.3) as gemini:
        async with discord_bot(tmp_path, zenn, fake, gemini=gemini) as adapter:
            await fake.dispatch("MESSAGE_CREATE", fake.message(
                CHANNEL_ID, ALICE, f"<@{BOT_ID}> {zenn.url}/asap 一番人気は？", [BOT]))
            await eventually(lambda: fake.threads and any(
                stop_id(m) and m["content"].startswith(ANSWER[:10]) for m in fake.thread_messages(the_thread(fake))))
            thread = the_thread(fake)
            message = fake.thread_messages(thread)[0]
            run_id = stop_id(message).rsplit(":", 1)[1]

            await fake.dispatch("INTERACTION_CREATE", fake.button_press(message, stop_id(message), BOB))
            await eventually(lambda: len(fake.callbacks()) == 1)
            refusal = fake.callbacks()[0]
            assert (refusal["type"], refusal["data"]["flags"], refusal["data"]["content"]) == (4, 64, buttons.NOT_YOURS)
            assert adapter.service.run_owner(run_id) == "discord:7"  # still running

            await fake.dispatch("INTERACTION_CREATE", fake.button_press(message, stop_id(message), ALICE))
            await eventually(lambda: fake.thread_messages(thread)[0]["content"].startswith("⏹️"))
            assert fake.callbacks()[1]["type"] == 6  # acknowledged; the message itself says it stopped
            stopped = fake.thread_messages(thread)
            assert len(stopped) == 1 and stopped[0]["components"] == [] and ANSWER[:10] not in stopped[0]["content"]
            # The run is forgotten once its reader is done, a moment after the message is edited.
            await eventually(lambda: adapter.service.run_owner(run_id) is None)

            # a moderator may stop someone else's run
            await fake.dispatch("MESSAGE_CREATE", fake.message(int(thread), ALICE, "もう一度長く教えて"))
            await eventually(lambda: len(fake.thread_messages(thread)) == 2 and
                             fake.thread_messages(thread)[1]["content"].startswith(ANSWER[:10]))
            second = fake.thread_messages(thread)[1]
            await fake.dispatch("INTERACTION_CREATE", fake.button_press(
                second, stop_id(second), CAROL, permissions=MANAGE_MESSAGES))
            await eventually(lambda: fake.thread_messages(thread)[1]["content"].startswith("⏹️"))

            # the thread answers the next question, and remembers nothing of the stopped runs
            await fake.dispatch("MESSAGE_CREATE", fake.message(int(thread), ALICE, "2番目は？"))
            await eventually(lambda: len(fake.thread_messages(thread)) == 3 and
                             buttons_of(fake.thread_messages(thread)[2])[:1] == [f"zennbot:fb:good:{thread}"])
            assert fake.thread_messages(thread)[2]["content"].startswith(SHORT)
            history = await adapter.service.agent.history(f"discord:{thread}")
            asked = [m.content for m in history if isinstance(m, HumanMessage)]
            assert asked == ["2番目は？"]
            assert not any(ANSWER[:10] in str(m.content) for m in history)


async def test_a_model_error_half_way_leaves_one_error_message_and_no_turn(tmp_path):
    async with ReplicaServer() as zenn, FakeDiscord() as fake, GeminiStub(
            policy=read_then_answer(zenn.url), chunk_chars=10, chunk_delay=0.5, fail_stream_after=6) as gemini:
        async with discord_bot(tmp_path, zenn, fake, gemini=gemini, zennbot_llm_max_retries=0) as adapter:
            await fake.dispatch("MESSAGE_CREATE", fake.message(
                CHANNEL_ID, ALICE, f"<@{BOT_ID}> {zenn.url}/asap 一番人気は？", [BOT]))
            await eventually(lambda: fake.threads and any(
                m["content"].startswith("⚠️") for m in fake.thread_messages(the_thread(fake))))
            thread = the_thread(fake)
            history = await adapter.service.agent.history(f"discord:{thread}")
    shown = [w.body.get("content", "") for w in fake.writes_in(thread)]
    assert any(s.startswith(ANSWER[:10]) for s in shown)  # it had started to show the answer
    [error] = fake.thread_messages(thread)
    assert error["content"].startswith("⚠️ ") and ANSWER[:10] not in error["content"]
    assert len(error["content"]) < 200 and "Traceback" not in error["content"]
    assert error["components"] == []  # no Stop left behind, no feedback on an error
    assert history == []


async def test_a_long_answer_streams_into_several_messages_with_fences_intact(tmp_path):
    code = "```python\n" + "\n".join(f"print({i})  # コメント" for i in range(200)) + "\n```"
    long_answer = "はじめに\n\n" + code + "\n\nおわり"

    def policy(messages):
        return AIMessage(content=long_answer)

    async with ReplicaServer() as zenn, FakeDiscord() as fake, GeminiStub(
            policy=policy, chunk_chars=300, chunk_delay=0.2) as gemini:
        async with discord_bot(tmp_path, zenn, fake, gemini=gemini):
            await fake.dispatch("MESSAGE_CREATE", fake.message(CHANNEL_ID, ALICE, f"<@{BOT_ID}> 長く", [BOT]))
            await eventually(lambda: fake.threads and any(
                buttons_of(m) and not stop_id(m) for m in fake.thread_messages(the_thread(fake))))
            thread = the_thread(fake)
    final = [m["content"] for m in fake.thread_messages(thread)]
    assert len(long_answer) > 3000 and final == rules.answer_messages(long_answer, [], True)
    assert len(final) >= 2
    writes = fake.writes_in(thread)
    assert all(w.status == 200 for w in writes)  # never over 2,000 characters (the fake says 400)
    assert all(w.body["content"].count("```") % 2 == 0 for w in writes if "content" in w.body)
    assert sum(w.method == "POST" for w in writes) == len(final)  # continued in new messages
    assert all(g >= 1.0 for g in gaps([w.at for w in writes]))


async def test_slash_command_without_thread_permission_streams_into_follow_ups(tmp_path):
    async with ReplicaServer() as zenn, FakeDiscord() as fake, GeminiStub(
            policy=read_then_answer(zenn.url), chunk_chars=15, chunk_delay=0.2) as gemini:
        fake.refuse_threads = True
        async with discord_bot(tmp_path, zenn, fake, gemini=gemini):
            await fake.dispatch("INTERACTION_CREATE", fake.slash_command(
                CHANNEL_ID, ALICE, "zenn", "ask", url=zenn.url + "/asap", question="一番人気は？"))
            await eventually(lambda: any(buttons_of(m) and not stop_id(m) for m in fake.stored.values()))
    [answer] = fake.thread_messages(CHANNEL_ID)  # in place, as the command's follow-up
    assert answer["content"].startswith(ANSWER) and "**Sources**" in answer["content"]
    assert buttons_of(answer) == [f"zennbot:fb:good:{CHANNEL_ID}", f"zennbot:fb:bad:{CHANNEL_ID}"]
    webhook_writes = [(m, p) for m, p, _ in fake.calls if p.startswith("/webhooks/") and m in ("POST", "PATCH")]
    assert webhook_writes[0][0] == "POST" and webhook_writes[-1] == ("PATCH", webhook_writes[-1][1])
    assert webhook_writes[-1][1].endswith(f"/messages/{answer['id']}")
    assert stop_id(fake.followups()[0])  # Stop from the start
    assert all(g >= 1.0 for g in gaps([w.at for w in fake.writes_in(CHANNEL_ID)]))
