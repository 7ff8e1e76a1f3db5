"""Discord decisions and message splitting, table-driven."""

from __future__ import annotations

import re

import pytest

from adapters.discord import rules
from adapters.chunking import split_message
from agent.types import Source

BOT = 42


def msg(**kw) -> rules.Incoming:
    base = dict(author_id=7, author_is_bot=False, content="hi", mentioned_ids=frozenset(), channel_id=100,
                channel_kind="text", guild_id=1)
    return rules.Incoming(**(base | kw))


@pytest.mark.parametrize("message, owns, require, expected", [
    (msg(mentioned_ids=frozenset({BOT})), False, False, rules.Where.NEW_THREAD),
    (msg(), False, False, None),  # plain channel chatter
    (msg(content="@everyone look"), False, False, None),  # @everyone is not a mention of the bot
    (msg(author_is_bot=True, mentioned_ids=frozenset({BOT})), False, False, None),
    (msg(author_id=BOT, channel_kind="thread"), True, False, None),  # its own messages
    (msg(channel_kind="thread"), True, False, rules.Where.IN_PLACE),  # its thread, no mention
    (msg(channel_kind="thread"), True, True, None),  # ...unless mentions are required
    (msg(channel_kind="thread", mentioned_ids=frozenset({BOT})), True, True, rules.Where.IN_PLACE),
    (msg(channel_kind="thread"), False, False, None),  # someone else's thread
    (msg(channel_kind="thread", mentioned_ids=frozenset({BOT})), False, False, rules.Where.IN_PLACE),
    (msg(channel_kind="forum_thread", mentioned_ids=frozenset({BOT})), False, False, rules.Where.IN_PLACE),
    (msg(channel_kind="dm", guild_id=None), False, False, rules.Where.IN_PLACE),
])
def test_where_to_answer(message, owns, require, expected):
    assert rules.where_to_answer(message, BOT, bot_owns_channel=owns, require_mention_in_threads=require) == expected


def test_allowlists():
    access = rules.Access(guilds=frozenset({"1"}), channels=frozenset({"100"}), roles=frozenset({"9"}))
    ok = msg(mentioned_ids=frozenset({BOT}), role_ids=frozenset({9}))
    assert rules.where_to_answer(ok, BOT, bot_owns_channel=False, require_mention_in_threads=False, access=access)
    for bad in (msg(mentioned_ids=frozenset({BOT}), role_ids=frozenset({8})),
                msg(mentioned_ids=frozenset({BOT}), role_ids=frozenset({9}), guild_id=2),
                msg(mentioned_ids=frozenset({BOT}), role_ids=frozenset({9}), channel_id=101)):
        assert rules.where_to_answer(bad, BOT, bot_owns_channel=False, require_mention_in_threads=False,
                                     access=access) is None


@pytest.mark.parametrize("question, name", [
    ("https://zenn.dev/asap この人の一番人気の記事を分析して", "zenn.dev/asap この人の一番人気の記事を分析して"),
    ("", "zennbot"),
    ("あ" * 150, "あ" * 99 + "…"),
    ("line one\nline two", "line one line two"),
])
def test_thread_name(question, name):
    assert rules.thread_name(question) == name and len(rules.thread_name(question)) <= 100


def test_question_text_strips_the_bot_mention():
    assert rules.question_text(f"<@{BOT}> https://zenn.dev/asap 分析して", BOT) == "https://zenn.dev/asap 分析して"
    assert rules.question_text(f"<@!{BOT}>分析", BOT) == "分析"


def test_split_5000_characters_keeps_code_blocks_intact():
    text = "はじめに\n\n```python\n" + "\n".join(f"print({i})  # 日本語のコメント" for i in range(250)) + "\n```\n\n終わり"
    assert len(text) > 5000
    parts = rules.answer_messages(text, [Source("https://zenn.dev/asap", "asap (Zenn)", "72 articles")], True)
    assert len(parts) >= 3 and all(len(p) <= 2000 for p in parts)
    for part in parts:
        assert part.count("```") % 2 == 0  # every part opens and closes its fences
    joined = "\n".join(parts)
    assert "print(249)" in joined and "終わり" in joined and "- asap (Zenn) <https://zenn.dev/asap>" in parts[-1]


def test_page_cards_only_for_pages_with_a_summary():
    sources = [Source("https://a.example/", "A", ""), Source("https://zenn.dev/x/articles/1", "T" * 300, "921 likes")]
    assert rules.page_cards(sources) == [rules.Card("T" * 256, "https://zenn.dev/x/articles/1", "921 likes")]


@pytest.mark.parametrize("limit", [50, 200, 2000])
def test_split_never_exceeds_the_limit(limit):
    text = ("長い日本語の文章です。" * 40 + "\n") * 10 + "x" * 5000
    assert all(len(p) <= limit for p in split_message(text, limit))


def test_split_prefers_paragraph_ends_outside_code():
    paragraphs = [f"段落{i}: " + "あ" * 300 for i in range(10)]
    parts = split_message("\n\n".join(paragraphs), 1000)
    assert all(len(p) <= 1000 for p in parts)
    for part in parts:  # every part is whole paragraphs
        assert all(line.startswith("段落") for line in part.split("\n") if line)
    assert sum(p.count("段落") for p in parts) == 10


@pytest.mark.parametrize("presser, asker, manages, allowed", [
    ("discord:7", "discord:7", False, True),  # the asker
    ("discord:8", "discord:7", False, False),  # someone else
    ("discord:8", "discord:7", True, True),  # a moderator
    ("discord:7", None, True, False),  # the run is over
])
def test_who_may_stop_a_run(presser, asker, manages, allowed):
    assert rules.may_stop(presser, asker, manages) is allowed


def test_button_ids_match_their_templates_and_fit_discord():
    stop = rules.stop_custom_id("0123456789abcdef")
    good = rules.feedback_custom_id("good", 1234567890123456789)
    assert re.fullmatch(rules.STOP_TEMPLATE, stop)["run_id"] == "0123456789abcdef"
    match = re.fullmatch(rules.FEEDBACK_TEMPLATE, good)
    assert (match["value"], match["channel_id"]) == ("good", "1234567890123456789")
    assert not re.fullmatch(rules.FEEDBACK_TEMPLATE, "zennbot:fb:meh:1")
    assert max(len(stop), len(good)) <= 100  # Discord's custom_id limit


def test_live_parts_progress_then_the_answer_with_stop_on_the_last():
    assert rules.live_parts("reading https://zenn.dev/asap", "") == [
        rules.Part("⏳ reading https://zenn.dev/asap …", rules.Buttons.STOP)]
    text = "はじめに\n\n```python\n" + "\n".join(f"print({i})" for i in range(400))  # the fence is still open
    parts = rules.live_parts("x", text)
    assert len(parts) >= 2 and all(len(p.content) <= 2000 and p.content.count("```") % 2 == 0 for p in parts)
    assert [p.buttons for p in parts] == [rules.Buttons.NONE] * (len(parts) - 1) + [rules.Buttons.STOP]


def test_final_parts_are_exactly_the_answer_messages():
    sources = [Source("https://zenn.dev/asap", "asap (Zenn)", "72 articles")]
    text = "答え\n\n" + "長い段落。" * 600
    parts = rules.final_parts(text, sources, True)
    assert [p.content for p in parts] == rules.answer_messages(text, sources, True)
    assert [p.buttons for p in parts][-1] is rules.Buttons.FEEDBACK and parts[-1].cards == tuple(rules.page_cards(sources))
    assert all(p.buttons is rules.Buttons.NONE and not p.cards for p in parts[:-1])
    assert rules.final_parts("Stopped.", [], False, stopped=True) == [rules.Part("⏹️ Stopped.")]
    assert rules.final_parts("The model failed.", sources, False) == [rules.Part("⚠️ The model failed.")]
