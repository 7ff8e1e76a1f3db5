"""Junk at the Slack HTTP endpoint: whatever the Content-Type, charset, length or body, the
answer is a 4xx and the log gets one line (never a traceback, never a 500). Raw requests over a
socket, to the real adapter (Bolt on aiohttp)."""

from __future__ import annotations

import asyncio
import logging

from contextlib import asynccontextmanager

import pytest

from adapters.slack.app import SlackAdapter
from tests.fakes.slack import MockSlackApi, event_body, eventually, signed_headers
from tests.helpers import make_settings, running
from tests.test_slack import SECRET, mention

BODY = event_body(mention("hello", "300.1"), "Ev1")


def signed(body: str, content_type: str) -> dict:
    return signed_headers(SECRET, body, content_type)


JUNK = {  # name: (headers, raw body)
    "unknown charset, unsigned": ({"Content-Type": "application/json; charset=klingon"}, BODY.encode()),
    "unknown charset, signed": (signed(BODY, "application/json; charset=klingon"), BODY.encode()),
    "utf-16 charset, signed": (signed(BODY, "application/json; charset=utf-16"), BODY.encode()),
    "latin-1 form, signed": (signed("payload=%7B%7D", "application/x-www-form-urlencoded; charset=latin-1"),
                             b"payload=%7B%7D"),
    "empty charset": ({"Content-Type": "application/json; charset="}, BODY.encode()),
    "garbage content type": ({"Content-Type": ";;;=\"\\"}, BODY.encode()),
    "binary body": ({"Content-Type": "application/octet-stream"}, bytes(range(256)) * 4),
    "binary json, signed header": (signed(BODY, "application/json"), b"\xff\xfe{\x00}\x00"),
    "not json, signed": (signed("{not json", "application/json"), b"{not json"),
    "json array, signed": (signed("[1, 2]", "application/json"), b"[1, 2]"),
    "negative length": ({"Content-Type": "application/json", "Content-Length": "-5"}, b"{}"),
    "length not a number": ({"Content-Type": "application/json", "Content-Length": "many"}, b"{}"),
    "length beyond the limit": ({"Content-Type": "application/json", "Content-Length": str(50 * 2**20)}, b"{}"),
    "no body": ({"Content-Type": "application/json"}, b""),
}


async def raw_request(port: int, headers: dict, body: bytes) -> int:
    """POST /slack/events with exactly these headers and body; the response's status code."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        lines = ["POST /slack/events HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
        if not any(k.lower() == "content-length" for k in headers):
            lines.append(f"Content-Length: {len(body)}")
        lines += [f"{k}: {v}" for k, v in headers.items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 30)  # a hang guard
        return int(status_line.split()[1])
    finally:
        writer.close()


@asynccontextmanager
async def slack_endpoint(tmp_path, slack):
    """The Slack adapter in HTTP mode on the real runtime (scripted model); yields its port and
    the model (whose records show whether anything reached it)."""
    settings = make_settings(tmp_path, slack_bot_token="xoxb-test", slack_signing_secret=SECRET, slack_port=0,
                             slack_api_url=slack.url + "/api/")
    async with running(settings) as (runtime, model):
        adapter = SlackAdapter(settings, runtime.service)
        task = asyncio.create_task(adapter.start())
        try:
            await eventually(lambda: adapter._runner is not None and adapter._runner.addresses)  # noqa: SLF001
            yield adapter.port, model
        finally:
            await adapter.close()
            await task


@pytest.mark.parametrize("name", list(JUNK))
async def test_junk_gets_a_4xx_and_one_log_line(tmp_path, caplog, name):
    headers, body = JUNK[name]
    async with MockSlackApi() as slack, slack_endpoint(tmp_path, slack) as (port, model):
        caplog.clear()
        caplog.set_level(logging.DEBUG)
        before = len(slack.calls)  # auth.test at start-up
        status = await raw_request(port, headers, body)
        await asyncio.sleep(0.1)  # the handler's log line lands after the response is sent
        lines = [r for r in caplog.records if r.levelno >= logging.INFO]
        calls = slack.calls[before:]
    assert 400 <= status < 500, status
    assert len(lines) == 1, [f"{r.name}: {r.getMessage()}" for r in lines]
    assert not any(r.exc_info for r in caplog.records), "no traceback"
    assert model.records == [] and calls == []
