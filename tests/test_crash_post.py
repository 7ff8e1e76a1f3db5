"""Killed between the end of a run and its post: the real `zennbot run` process is SIGKILLed as
it posts a finished answer (Slack: the answer's first write; Discord: the final edit), then
restarted on the same database. The asker is told, 👀 does not stay, the thread goes on."""

from __future__ import annotations

import asyncio

from aiohttp import web

from bench.gemini_stub import GeminiStub, messages_from, text_reply
from bench.replica import ReplicaOptions, ReplicaServer
from tests.fakes.discord import BOT, BOT_ID, CHANNEL_ID, FakeDiscord, user
from tests.fakes.slack import MockSlackApi, event_body, eventually
from tests.helpers import make_settings, query_rows, reported_port
from tests.test_crash import (Victim, _unfinished_runs, bot_env, crash_routes, discord_connected, discord_env,
                              model, serving, slack_post)
from tests.test_discord_streaming import stop_id

POSTED = "FINISHED-ANSWER"


def answering_then_dying(victim: Victim):
    """The crash tests' model; a question with "KILL-POST" gets a short answer holding `POSTED`
    (the chat fakes kill the bot when it writes it)."""
    base = model(victim)

    def respond(body: dict, n: int) -> tuple[int, dict]:
        question = str([m for m in messages_from(body) if m.type == "human"][-1].content)
        if "KILL-POST" in question:
            return 200, text_reply(f"{POSTED} 短い答え")
        return base(body, n)
    return respond


class KillingSlack(MockSlackApi):
    """Slack, where the bot dies as it writes the finished answer (which never arrives)."""

    def __init__(self, victim: Victim) -> None:
        super().__init__()
        self.victim = victim

    def __getattribute__(self, name: str):
        """Every chat.* method handler: the bot dies as it writes `POSTED`."""
        handler = super().__getattribute__(name)
        if not name.startswith("_chat_"):
            return handler

        def dying(args: dict) -> web.Response:
            if POSTED in str(args):
                self.victim.kill()
                return web.json_response({"ok": False, "error": "internal_error"}, status=500)
            return handler(args)
        return dying


async def test_slack_kill_between_the_answer_and_its_post_is_acknowledged_at_restart(tmp_path):
    from tests.test_slack import answers, mention, message

    victim = Victim()
    async with ReplicaServer(ReplicaOptions(extra_routes=crash_routes(victim))) as zenn, \
            GeminiStub(answering_then_dying(victim)) as gemini, KillingSlack(victim) as slack:
        env = bot_env(tmp_path, zenn, gemini) | {
            "SLACK_BOT_TOKEN": "xoxb-t", "SLACK_SIGNING_SECRET": "s", "SLACK_PORT": "0",
            "SLACK_API_URL": slack.url + "/api/"}
        async with serving(tmp_path, env, victim) as process:
            port = await reported_port(process.log_path)
            first = event_body(mention(f"{zenn.url}/plain/page 最初の質問", "10.1"), "Ev1")
            assert await slack_post(port, first) == 200
            await eventually(lambda: len(answers(slack)) == 1, 60)
            await slack_post(port, event_body(message("KILL-POST 答えて", "10.2", "10.1"), "Ev2"))
            await asyncio.wait_for(process.wait(), 60)
        assert victim.killed.is_set() and await _unfinished_runs(tmp_path) == 1
        assert [r["name"] for r in slack.named("reactions.add") if r.get("timestamp") == "10.2"] == ["eyes"]

        def told() -> list:
            return [m for m in slack.thread("C1", "10.1") if "was lost" in m.text]

        async with serving(tmp_path, env) as process:
            port = await reported_port(process.log_path)
            await eventually(lambda: len(told()) == 1, 60)
            await eventually(lambda: any(r.get("timestamp") == "10.2" and r["name"] == "warning"
                                         for r in slack.named("reactions.add")))
            assert any(r.get("timestamp") == "10.2" and r["name"] == "eyes" for r in slack.named("reactions.remove"))
            await slack_post(port, event_body(message("次の質問", "10.3", "10.1"), "Ev3"))
            await eventually(lambda: len(answers(slack)) == 3, 60)
        assert "次の質問" in answers(slack)[2]
        assert process.returncode == 0 and "Traceback" not in process.log
    assert await _unfinished_runs(tmp_path) == 0


class KillingDiscord(FakeDiscord):
    """Discord, where the bot dies as it writes the finished answer (which never arrives)."""

    def __init__(self, victim: Victim) -> None:
        super().__init__()
        self.victim = victim

    def _write_message(self, method: str, channel: str, message_id: str, body: dict) -> web.Response:
        if POSTED in (body.get("content") or "") and not stop_id(body):
            self.victim.kill()
            return web.json_response({"message": "500: Internal Server Error", "code": 0}, status=500)
        return super()._write_message(method, channel, message_id, body)


async def test_discord_kill_between_the_answer_and_its_post_is_acknowledged_at_restart(tmp_path):
    alice = user(7, "alice")
    victim = Victim()
    async with ReplicaServer(ReplicaOptions(extra_routes=crash_routes(victim))) as zenn, \
            GeminiStub(answering_then_dying(victim)) as gemini, KillingDiscord(victim) as fake:
        env = bot_env(tmp_path, zenn, gemini) | discord_env(fake)

        def said(text: str) -> list[dict]:
            return [m for m in fake.thread_messages(thread) if text in m["content"]]

        async with serving(tmp_path, env, victim) as process:
            await discord_connected(fake)
            await fake.dispatch("MESSAGE_CREATE", fake.message(
                CHANNEL_ID, alice, f"<@{BOT_ID}> {zenn.url}/plain/page 最初の質問", [BOT], mid=5001))
            await eventually(lambda: fake.threads, 60)
            thread = next(iter(fake.threads))
            await eventually(lambda: said("answer #1 (page read)") and not stop_id(said("answer #1")[0]), 60)
            await fake.dispatch("MESSAGE_CREATE", fake.message(int(thread), alice, "KILL-POST 答えて"))
            await asyncio.wait_for(process.wait(), 60)
        assert victim.killed.is_set() and await _unfinished_runs(tmp_path) == 1
        fake.identified.clear()
        running = [m for m in fake.thread_messages(thread) if stop_id(m)]  # its progress line, if posted
        assert len(running) <= 1 and not said(POSTED)

        async with serving(tmp_path, env) as process:
            await asyncio.wait_for(fake.identified.wait(), 60)
            await eventually(lambda: said("was lost"), 60)
            [told] = said("was lost")
            assert told["components"] == [] and not any(stop_id(m) for m in fake.thread_messages(thread))
            assert [m["id"] for m in running] in ([], [told["id"]])  # the progress line now says so
        assert process.returncode == 0 and "Traceback" not in process.log
    assert await _unfinished_runs(tmp_path) == 0


async def test_discord_kill_while_a_run_waits_for_its_turn_tells_both_askers_at_restart(tmp_path):
    """The bot dies while one run answers and the thread's next message waits its turn, its
    "yours is next" line (with Stop) posted: at restart both messages say their question was
    lost, and no Stop button is left behind."""
    alice = user(7, "alice")
    victim = Victim()
    settings = make_settings(tmp_path, zennbot_db=str(tmp_path / "z.db"))

    def slow_answer(body: dict, n: int) -> tuple[int, dict]:
        return 200, text_reply("HOLD " + "まだ書いています。" * 30)

    async def waiting_message_recorded() -> None:
        while not any("status_id" in row[0] for row in await query_rows(settings, "SELECT reply_to FROM waiting_runs")):
            await asyncio.sleep(0.1)

    async with GeminiStub(slow_answer, chunk_chars=10, chunk_delay=0.5) as gemini, FakeDiscord() as fake:
        env = {"ZENNBOT_DB": str(tmp_path / "z.db"), "GOOGLE_API_KEY": "k", "GOOGLE_GEMINI_BASE_URL": gemini.url,
               **discord_env(fake)}

        def said(text: str) -> list[dict]:
            return [m for m in fake.thread_messages(thread) if text in m["content"]]

        async with serving(tmp_path, env, victim) as process:
            await discord_connected(fake)
            await fake.dispatch("MESSAGE_CREATE", fake.message(CHANNEL_ID, alice, f"<@{BOT_ID}> 長い質問", [BOT], mid=5001))
            await eventually(lambda: fake.threads, 60)
            thread = next(iter(fake.threads))
            await eventually(lambda: said("HOLD"), 60)
            await fake.dispatch("MESSAGE_CREATE", fake.message(int(thread), alice, "次の質問"))
            await eventually(lambda: said("yours is next"), 60)
            await asyncio.wait_for(waiting_message_recorded(), 60)
            victim.kill()
            await asyncio.wait_for(process.wait(), 60)
        fake.identified.clear()
        [answering] = said("HOLD")
        [waiting] = said("yours is next")
        assert stop_id(answering) and stop_id(waiting)

        async with serving(tmp_path, env) as process:
            await asyncio.wait_for(fake.identified.wait(), 60)
            await eventually(lambda: len(said("was lost")) == 2, 60)
        assert process.returncode == 0 and "Traceback" not in process.log
    told = said("was lost")
    assert sorted(m["id"] for m in told) == sorted([answering["id"], waiting["id"]])  # each edited in place
    assert any("“次の質問”" in m["content"] for m in told)
    assert not any(stop_id(m) for m in fake.thread_messages(thread))
    assert await query_rows(settings, "SELECT count(*) FROM waiting_runs") == [(0,)]
    assert await _unfinished_runs(tmp_path) == 0
