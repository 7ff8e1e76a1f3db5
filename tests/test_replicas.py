"""Two `zennbot run` replicas on one PostgreSQL database, Slack in HTTP mode (as behind a load
balancer): signed events go to either replica, and they answer as one bot."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal

import aiohttp

from tests.fakes.gemini import GeminiStub, text_reply
from tests.fakes.slack import MockSlackApi, event_body, eventually, signed_headers
from tests.forkserver import start_zennbot
from tests.helpers import reported_port
from tests.pg import shared_server
from tests.test_slack import answers as thread_messages

SECRET = "replica-signing-secret"
TOKEN = re.compile(r"\bQ\d+[a-z]?\b")


def seen(body: dict, n: int) -> tuple[int, dict]:
    """The model: answers with the question tokens (Q1, Q2a, …) of every user turn it was sent,
    in order, so each answer shows the history the replica had."""
    tokens: list[str] = []
    for content in body["contents"]:
        if content.get("role") == "user":
            for part in content.get("parts", []):
                tokens += [t for t in TOKEN.findall(part.get("text", "")) if t not in tokens]
    return 200, text_reply("seen " + " ".join(tokens))


def mention(text: str, ts: str) -> dict:
    return {"type": "app_mention", "user": "UALICE", "text": f"<@UBOT> {text}", "ts": ts, "channel": "C1",
            "event_ts": ts}


def reply_in_thread(text: str, ts: str) -> dict:
    return {"type": "message", "channel_type": "channel", "user": "UALICE", "text": text, "ts": ts,
            "thread_ts": "1.1", "channel": "C1", "event_ts": ts}


def answers(slack: MockSlackApi) -> list[str]:
    """The answers in the workspace's threads, as it now shows them (streamed ones included)."""
    return [text for text in thread_messages(slack) if text.startswith("seen")]


def answer_to(slack: MockSlackApi, token: str) -> list[str]:
    """Answers whose newest question is `token`."""
    return [a for a in answers(slack) if a.split("\n")[0].split()[-1] == token]


async def start_replicas(tmp_path, slack: MockSlackApi, gemini: GeminiStub, envs: list[dict]):
    """`zennbot run` processes, started at once on one empty PostgreSQL database."""
    database_url = shared_server().new_database()
    return [await start_zennbot(
        "run", stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env={
            **os.environ, "ZENNBOT_DATABASE_URL": database_url, "ZENNBOT_DB": str(tmp_path / f"unused{i}.db"),
            "GOOGLE_API_KEY": "k", "GOOGLE_GEMINI_BASE_URL": gemini.url, "SLACK_BOT_TOKEN": "xoxb-t",
            "SLACK_API_URL": slack.url + "/api/", **env})
        for i, env in enumerate(envs)]


async def stop_replicas(replicas, tmp_path) -> None:
    """SIGTERM each; asserts they stop cleanly and never touched a SQLite file."""
    for replica in replicas:
        if replica.returncode is None:
            replica.send_signal(signal.SIGTERM)
    codes = [await asyncio.wait_for(r.wait(), 60) for r in replicas]
    logs = [(await r.stderr.read()).decode() for r in replicas]
    assert codes == [0] * len(replicas), logs
    assert all("Traceback" not in log for log in logs), logs
    assert not any((tmp_path / f"unused{i}.db").exists() for i in range(len(replicas)))


async def test_two_replicas_answer_as_one_bot(tmp_path):
    """Slack HTTP mode, as behind a load balancer: each request goes to one replica."""
    async with MockSlackApi() as slack, GeminiStub(seen) as gemini, aiohttp.ClientSession() as http:
        replicas = await start_replicas(tmp_path, slack, gemini, [
            {"SLACK_SIGNING_SECRET": SECRET, "SLACK_PORT": "0"} for _ in range(2)])
        ports = [await reported_port(replica.stderr) for replica in replicas]

        async def post(replica: int, event: dict, event_id: str, retry: bool = False) -> None:
            body = event_body(event, event_id)
            headers = signed_headers(SECRET, body, "application/json") | ({"X-Slack-Retry-Num": "1"} if retry else {})
            async with http.post(f"http://127.0.0.1:{ports[replica]}/slack/events", data=body,
                                 headers=headers) as response:
                assert response.status == 200

        try:
            for port in ports:  # both replicas come up and serve
                async def serving(port=port) -> bool:
                    try:
                        async with http.post(f"http://127.0.0.1:{port}/slack/events", data="{}") as response:
                            return response.status == 401  # unsigned: refused, but served
                    except aiohttp.ClientConnectionError:
                        return False
                for _ in range(600):
                    if await serving():
                        break
                    assert all(r.returncode is None for r in replicas), "a replica exited"
                    await asyncio.sleep(0.1)
                else:
                    raise AssertionError(f"replica on {port} never served")

            # One event delivered to each replica (a retry landing elsewhere) is answered once.
            await asyncio.gather(post(0, mention("Q1 hello", "1.1"), "Ev1"),
                                 post(1, mention("Q1 hello", "1.1"), "Ev1", retry=True))
            await eventually(lambda: answer_to(slack, "Q1"), timeout=60)

            # The thread, started on replica 0, continues on replica 1 with its history.
            await post(1, reply_in_thread("Q2 and then?", "1.2"), "Ev2")
            await eventually(lambda: answer_to(slack, "Q2"), timeout=60)
            assert answer_to(slack, "Q2") == ["seen Q1 Q2"]

            # Two messages of the thread at the same moment, one to each replica: answered one
            # after the other, the second with the first in its history; neither is lost.
            await asyncio.gather(post(0, reply_in_thread("Q3a first?", "1.3"), "Ev3"),
                                 post(1, reply_in_thread("Q3b second?", "1.4"), "Ev4"))
            await eventually(lambda: answer_to(slack, "Q3a") and answer_to(slack, "Q3b"), timeout=90)
            pair = {answer_to(slack, "Q3a")[0], answer_to(slack, "Q3b")[0]}
            assert pair in ({"seen Q1 Q2 Q3a", "seen Q1 Q2 Q3a Q3b"}, {"seen Q1 Q2 Q3b", "seen Q1 Q2 Q3b Q3a"})

            await post(0, reply_in_thread("Q4 last", "1.5"), "Ev5")
            await eventually(lambda: answer_to(slack, "Q4"), timeout=60)
            assert answer_to(slack, "Q4")[0] in ("seen Q1 Q2 Q3a Q3b Q4", "seen Q1 Q2 Q3b Q3a Q4")
        finally:
            await stop_replicas(replicas, tmp_path)
    # Every question answered exactly once: one model call and one answer each, Q1 included.
    assert len(gemini.calls) == 5 and len(answers(slack)) == 5, answers(slack)
    eyes = [r["timestamp"] for r in slack.named("reactions.add") if r.get("name") == "eyes"]
    assert sorted(eyes) == ["1.1", "1.2", "1.3", "1.4", "1.5"]


async def test_socket_mode_replicas_on_one_app_token_answer_once(tmp_path):
    """Slack sends each event to one of the app's connections and retries to any; the mock
    sends every envelope to every connection, the hardest case for the shared dedupe."""
    async with MockSlackApi() as slack, GeminiStub(seen) as gemini:
        replicas = await start_replicas(tmp_path, slack, gemini, [{"SLACK_APP_TOKEN": "xapp-t"}] * 2)
        try:
            await eventually(lambda: slack.socket_clients == 2, timeout=120)
            first = await slack.push("events_api", json.loads(event_body(mention("Q1 hello", "1.1"), "Ev1")))
            await eventually(lambda: answer_to(slack, "Q1"), timeout=60)
            second = await slack.push("events_api", json.loads(event_body(reply_in_thread("Q2 more", "1.2"), "Ev2")))
            await eventually(lambda: answer_to(slack, "Q2"), timeout=60)
            for envelope in (first, second):  # both replicas acknowledged both envelopes
                await eventually(lambda: sum(a.get("envelope_id") == envelope for a in slack.acks) == 2)
        finally:
            await stop_replicas(replicas, tmp_path)
    assert answers(slack) == ["seen Q1", "seen Q1 Q2"] and len(gemini.calls) == 2
