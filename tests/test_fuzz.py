"""Fuzzing the adapters' message parsing: nothing a user types raises out of the handlers."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters import discord_rules, slack_rules
from adapters.chunking import split_message
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
    for part in slack_rules.answer_messages(text, [], True):
        assert len(part) <= slack_rules.MARKDOWN_LIMIT


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(texts)
def test_discord_parsing_never_raises(text):
    question = discord_rules.question_text(text, 42)
    assert len(discord_rules.thread_name(question)) <= 100
    for part in discord_rules.answer_messages(text, ["https://zenn.dev/asap"], True):
        assert len(part) <= 2000
    find_urls(text)
    split_message(text, 100)
