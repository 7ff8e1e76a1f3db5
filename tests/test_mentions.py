"""Nothing a page says can ping anyone: a page whose title, text and URL hold Slack and Discord
mentions, read by the real adapters (fake Discord, mock Slack Web API, Gemini stub); and the
answer's sources with URLs that try to break out of their link, on both platforms."""

from __future__ import annotations

import json
import re

import pytest
from aiohttp import web

from adapters.discord import rules as discord_rules
from adapters.links import display_url
from adapters.slack import rules as slack_rules
from bench.gemini_stub import GeminiStub
from bench.replica import ReplicaOptions, ReplicaServer
from bot.messages import Source
from tests.fakes.discord import BOT, BOT_ID, CHANNEL_ID, FakeDiscord
from tests.fakes.slack import MockSlackApi, event_body, eventually
from tests.helpers import reading_policy
from tests.test_discord import ALICE, discord_bot
from tests.test_discord_streaming import buttons_of, the_thread
from tests.test_slack import mention
from tests.test_slack_streaming import THREAD, slack_bot

PINGS = "@everyone <!channel> <@U0ADMIN> <@123456789> <@&42> @here"
PAGE_PATH = "/hostile/mentions"
QUERY = "?to=@everyone&who=%3C@U0ADMIN%3E"
HOSTILE_URLS = ["https://host/p?<!channel>&<@U0ADMIN>", "https://host/a> @everyone <https://evil",
                "https://host/x y)](https://evil) <@123456789>"]


def mentions_page() -> web.RouteDef:
    async def page(request: web.Request) -> web.Response:
        return web.Response(content_type="text/html", text=f"""<html><head><title>{PINGS} release notes</title>
        </head><body><main><article><h1>{PINGS} release notes</h1>
        <p>Version 2 is out. {PINGS} please read this carefully and tell everyone in your team.</p>
        <p>Another paragraph long enough to count as the article's text, about tools and agents.</p>
        </article></main></body></html>""")
    return web.get(PAGE_PATH, page)


def strings(value) -> list[str]:
    """Every string in a JSON-like value."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in strings(v)]
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in strings(v)]
    return []


def slack_pings(text: str) -> list[str]:
    """What Slack reads as a mention: <@U…>, <!channel>/<!here>/<!everyone>/<!subteam^…>, and a
    bare @channel/@here/@everyone."""
    return re.findall(r"<@[A-Z0-9]+(?:\|[^>]*)?>|<!(?:channel|here|everyone|subteam\^)[^>]*>"
                      r"|(?<![\w＠])@(?:everyone|channel|here)\b", text, flags=re.IGNORECASE)


def discord_pings(text: str) -> list[str]:
    return re.findall(r"@(?:everyone|here)\b|<@[!&]?\d+>", text)


async def test_a_page_full_of_mentions_pings_nobody_on_discord(tmp_path):
    async with ReplicaServer(ReplicaOptions(extra_routes=[mentions_page()])) as zenn, FakeDiscord() as fake, \
            GeminiStub(policy=reading_policy) as gemini:
        async with discord_bot(tmp_path, zenn, fake, gemini=gemini):
            await fake.dispatch("MESSAGE_CREATE", fake.message(
                CHANNEL_ID, ALICE, f"<@{BOT_ID}> {zenn.url}{PAGE_PATH}{QUERY} 読んで", [BOT]))
            await eventually(lambda: fake.threads and any(buttons_of(m) and "zennbot:fb" in buttons_of(m)[0]
                                                          for m in fake.thread_messages(the_thread(fake))))
            thread = the_thread(fake)
    [answer] = fake.thread_messages(thread)
    assert "release notes" in answer["content"]  # the page's title made it into the answer ...
    written = [w for w in fake.writes_in(thread) if w.method != "DELETE"]
    assert written and all(w.body.get("allowed_mentions") == {"parse": []} for w in written)
    for w in written:  # ... and not one write could be read as a mention
        assert [p for s in strings(w.body) for p in discord_pings(s)] == []
    for link in re.findall(r"<(https?://[^>]*)>", answer["content"]):
        assert not re.search(r"[\s<>@]", link)  # a source URL stays inside its <>


async def test_a_page_full_of_mentions_pings_nobody_on_slack(tmp_path):
    async with ReplicaServer(ReplicaOptions(extra_routes=[mentions_page()])) as zenn, MockSlackApi() as slack, \
            GeminiStub(policy=reading_policy) as gemini:
        async with slack_bot(tmp_path, zenn, slack, gemini) as (post, _):
            assert await post(event_body(mention(f"{zenn.url}{PAGE_PATH}{QUERY} 読んで", THREAD), "Ev1")) == 200
            await eventually(lambda: len(slack.named("reactions.add")) == 2)
    [answer] = slack.thread("C1", THREAD)
    assert "release notes" in answer.text and slack.named("reactions.add")[1]["name"] == "white_check_mark"
    for name, args in slack.calls:
        if name.startswith(("chat.", "assistant.")):
            assert [p for s in strings(args) for p in slack_pings(s)] == [], name


@pytest.mark.parametrize("url", HOSTILE_URLS)
def test_a_source_url_cannot_break_out_of_its_link_or_ping(url):
    sources = [Source(url, f"{PINGS} title", f"{PINGS} summary")]
    for text in slack_rules.answer_messages(f"answer {PINGS}", sources, True):
        assert slack_pings(text) == []
        assert re.search(r"\]\((https?://[^)\s]*)\)", text).group(1) == display_url(url)  # one link, whole
    for part in discord_rules.final_parts(f"answer {PINGS}", sources, True):
        assert discord_pings(part.content) == []
        links = re.findall(r"<(https?://[^>]*)>", part.content)
        assert links == [display_url(url)] and not re.search(r"[\s<>@]", links[0])
        assert [discord_pings(s) for c in part.cards for s in (c.title, c.description)] == [[], []]
    assert discord_pings(json.dumps([p.content for p in discord_rules.live_parts(PINGS, PINGS)])) == []
