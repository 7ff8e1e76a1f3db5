"""Discord answers that outlive what Discord lets a bot edit: a stream whose message passes the
edit window (error 30046, messages older than an hour, under the fake's clock) goes on in a new
message, and a final write that fails is tried again, then posted as a new message. The real
discord.py client against the fake Discord, the Gemini stub streaming the answer."""

from __future__ import annotations

from bench.gemini_stub import GeminiStub
from bench.replica import ReplicaServer
from tests.fakes.discord import BOT, BOT_ID, CHANNEL_ID, FakeDiscord
from tests.fakes.slack import eventually
from tests.test_discord import ALICE, discord_bot
from tests.test_discord_streaming import ANSWER, buttons_of, read_then_answer, stop_id, the_thread


def finished(fake: FakeDiscord) -> bool:
    return bool(fake.threads) and any(buttons_of(m)[:1] == [f"zennbot:fb:good:{the_thread(fake)}"]
                                      for m in fake.thread_messages(the_thread(fake)))


async def test_a_stream_past_the_edit_window_goes_on_in_a_new_message(tmp_path):
    async with ReplicaServer() as zenn, FakeDiscord() as fake, GeminiStub(
            policy=read_then_answer(zenn.url), chunk_chars=10, chunk_delay=0.3) as gemini:
        async with discord_bot(tmp_path, zenn, fake, gemini=gemini):
            await fake.dispatch("MESSAGE_CREATE", fake.message(
                CHANNEL_ID, ALICE, f"<@{BOT_ID}> {zenn.url}/asap 一番人気は？", [BOT]))
            await eventually(lambda: fake.threads and any(
                stop_id(m) and m["content"].startswith(ANSWER[:10]) for m in fake.thread_messages(the_thread(fake))))
            thread = the_thread(fake)
            [old] = fake.thread_messages(thread)
            fake.advance(3601)  # the message the answer is streamed into is now more than an hour old
            await eventually(lambda: finished(fake), 60)
            final = fake.thread_messages(thread)
    refused = [w for w in fake.writes_in(thread) if w.status == 400]
    assert refused and all(w.message_id == old["id"] for w in refused)
    assert old["id"] not in [m["id"] for m in final]  # left behind, and deleted
    assert len(final) == 1 and final[0]["content"].startswith(ANSWER)  # the whole answer, once
    assert not any(stop_id(m) for m in final)


async def test_a_failed_final_write_is_tried_again_then_posted_as_a_new_message(tmp_path):
    async with ReplicaServer() as zenn, FakeDiscord() as fake, GeminiStub(
            policy=read_then_answer(zenn.url), chunk_chars=10, chunk_delay=0.3) as gemini:
        async with discord_bot(tmp_path, zenn, fake, gemini=gemini):
            await fake.dispatch("MESSAGE_CREATE", fake.message(
                CHANNEL_ID, ALICE, f"<@{BOT_ID}> {zenn.url}/asap 一番人気は？", [BOT]))
            await eventually(lambda: fake.threads and fake.thread_messages(the_thread(fake)))
            thread = the_thread(fake)
            [old] = fake.thread_messages(thread)
            fake.fail_next_edits = 10**6  # from now on no edit gets through
            await eventually(lambda: finished(fake), 60)
            final = fake.thread_messages(thread)
            fake.fail_next_edits = 0
    writes = fake.writes_in(thread)
    failed = [w for w in writes if w.status == 400]
    assert len(failed) >= 2 and failed[-1].body == failed[-2].body  # the final write, tried twice
    assert [m["id"] for m in final] != [old["id"]] and len(final) == 1  # then posted anew
    assert final[0]["content"].startswith(ANSWER) and not stop_id(final[0])
    assert old["id"] not in fake.stored  # the message it could not edit is gone
