"""Fuzzing the adapters' message parsing: nothing a user types raises out of the handlers."""

from __future__ import annotations

import asyncio

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from adapters.discord import rules as discord_rules
from adapters.slack import rules as slack_rules
from adapters.chunking import split_message
from agent.types import Source
from agent.urlguard import BlockedUrl, UrlPolicy, refusal_reason
from bot.service import find_urls

texts = st.one_of(
    st.text(max_size=2000),
    st.text(alphabet="<>@!|&;:/.?#=%[]()「」 hzt" + "abc０１２あ", max_size=500),
    st.builds(lambda n: " ".join(f"https://zenn.dev/u{i}?q=<{i}>" for i in range(n)), st.integers(0, 120)),
    st.just("あ" * 40_000),
    st.just("<@UBOT" * 1000),
    st.just("<<@>><!here|<!channel>>" * 200),
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(texts)
def test_slack_parsing_never_raises(text):
    slack_rules.plain_text(text, "UBOT")
    slack_rules.parse_command(text)
    out = slack_rules.neutralize(text)
    assert "<!channel>" not in out and "<!here>" not in out
    event = {"user": "U1", "channel": "C1", "ts": "1.0", "thread_ts": "0.5", "text": text}
    for mention in (True, False):
        slack_rules.turn_from_event(event, "T1", "UBOT", is_mention=mention, bot_owns_thread=True)
    for part in slack_rules.answer_messages(text, [Source("https://zenn.dev/a", text[:300], text[:50])], True):
        assert len(part) <= slack_rules.MARKDOWN_LIMIT


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(texts)
def test_discord_parsing_never_raises(text):
    question = discord_rules.question_text(text, 42)
    assert len(discord_rules.thread_name(question)) <= 100
    for part in discord_rules.answer_messages(text, [Source("https://zenn.dev/asap", text[:300], "")], True):
        assert len(part) <= 2000
    find_urls(text)
    split_message(text, 100)


async def _no_dns(host: str, port: int) -> list[str]:
    raise OSError("no DNS in this test")


urlish = st.one_of(
    st.builds(lambda scheme, host, rest: f"{scheme}://{host}{rest}",
              st.sampled_from(["http", "https", "HTTP", "file", "ftp", "javascript", ""]),
              st.text(alphabet="0123456789abcdefx.:[]%@-_ｘ１２７．", max_size=40),
              st.text(alphabet="/?#=&%:@[]abc", max_size=20)),
    st.text(max_size=120),
)


@settings(max_examples=500, deadline=None)
@given(urlish)
def test_the_guard_refuses_or_accepts_only_public_literals(url):
    """Whatever the string, the guard answers with a refusal or, since it can resolve no name
    here, accepts only a URL whose host is a public IP literal; it never crashes."""
    try:
        target = asyncio.run(UrlPolicy(resolver=_no_dns).check(url))
    except BlockedUrl as refused:
        assert refused.reason
    else:
        assert target.literal_ip is not None and refusal_reason(target.literal_ip) is None, url


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["```python", "```", "print('x')", "", "段落のテキスト " * 30, "x" * 700]),
                max_size=80), st.integers(100, 2000))
# Found by this test: a paragraph's tail carried into the next message, then a long line after it.
@example(["段落のテキスト " * 30] * 2 + ["", "段落のテキスト " * 30, "x" * 700], 723)
def test_split_keeps_every_code_fence_closed(lines, limit):
    parts = split_message("\n".join(lines), limit)
    assert all(len(p) <= limit for p in parts)
    for part in parts:
        assert sum(1 for line in part.split("\n") if line.strip().startswith("```")) % 2 == 0, part
