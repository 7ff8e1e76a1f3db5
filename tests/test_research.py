"""Zenn questions without a link, through the real service, graph, tools, Zenn client and
replica (a scripted model that picks tools and answers from what they returned; one test with
the real Gemini client against the strict stub)."""

from __future__ import annotations

import logging
import re

from langchain_core.messages import AIMessage, BaseMessage, ToolMessage

from bench.gemini_stub import GeminiStub
from bench.replica import ReplicaOptions, ReplicaServer, catalog
from bench.research import Turn, first_row, page_text, policy_for, research_policy, research_turns, rows
from bench.scripted_model import current_turn, tool_call
from bench.zenn_catalog import BOOK_USER, NEXTJS_TOP, PAID_BOOK, select_articles
from bot.runtime import model_from
from tests.helpers import make_settings, running

TOP = NEXTJS_TOP[170][0]


def api_hits(zenn: ReplicaServer) -> list[str]:
    return [h for h in zenn.hits if h.startswith("/api/")]


def chapter_ids() -> dict[int, int]:
    book = next(b for b in catalog().books if b["slug"] == PAID_BOOK)
    return {c["position"]: c["id"] for c in book["_chapters"]}


async def ask_all(tmp_path, zenn, policy, questions, **settings):
    async with running(make_settings(tmp_path, zenn.url, zenn_requests_per_second=50.0, **settings),
                       policy) as (runtime, _):
        return [await runtime.service.handle("console:research", "u", q) for q in questions]


async def test_each_example_question_is_answered_with_the_right_items(tmp_path):
    async with ReplicaServer() as zenn:
        turns = research_turns(zenn.url)
        replies = await ask_all(tmp_path, zenn, research_policy(zenn.url), [t.question for t in turns])
        hits = api_hits(zenn)
    for turn, reply in zip(turns, replies, strict=True):
        assert reply.ok and all(e in reply.text for e in turn.expect), (turn.question, reply.text)
    top = next(a for a in catalog().articles if a["title"] == TOP)
    assert top["path"] in replies[0].text and "1480いいね・610ブックマーク" in replies[0].text
    # 「Next.js」 became the topic nextjs; one page of the likes order answered the ranking
    assert "/api/topics/nextjs" in hits
    assert [h for h in hits if "topicname=nextjs" in h] == [
        "/api/articles?topicname=nextjs&order=liked_count&page=1"]
    assert f"/api/chapters/{chapter_ids()[2]}" in hits  # the free chapter 2 was read
    assert not any(h.startswith(f"/api/chapters/{chapter_ids()[3]}") for h in hits)
    assert f"/api/articles/{top['slug']}" in hits  # the follow-up opened the article the first answer named
    assert not any(h.startswith("/search") for h in zenn.hits)  # robots.txt: never the search page


def trend_three_policy(messages: list[BaseMessage]) -> AIMessage:
    _, _, since = current_turn(messages)
    results = [str(m.content) for m in since if isinstance(m, ToolMessage)]
    if not results:
        return tool_call("zenn", list="topic", name_or_words="Rust", order="trend_week")
    return AIMessage("今週のRustのトレンド:\n" + "\n".join(
        f"{r['rank']}. {r['title']} ({r['likes']}いいね) {r['url']}" for r in rows(results[0])[:3]))


async def test_this_weeks_rust_trend_in_zenns_order_through_the_real_gemini_client(tmp_path):
    expected = [a["title"] for a in select_articles(catalog(), {"topicname": "rust", "order": "weekly"})[:3]]
    async with ReplicaServer() as zenn, GeminiStub(policy=trend_three_policy) as gemini:
        settings = make_settings(tmp_path, zenn.url, google_api_key="k", google_gemini_base_url=gemini.url)
        async with running(settings, model=model_from(settings)) as (runtime, _):
            reply = await runtime.service.handle("console:rust", "u", "今週のRustのトレンドを3本紹介して")
        declared = {d["name"]: d for tool in gemini.calls[0].body["tools"] for d in tool["functionDeclarations"]}
    assert reply.ok
    lines = reply.text.splitlines()[1:]
    assert len(lines) == 3 and all(f" {title} (" in line for title, line in zip(expected, lines, strict=True))
    assert declared["zenn"]["parameters"]["properties"]["order"]["enum"] == [
        "latest", "trend_today", "trend_week", "most_liked", "most_comments"]
    assert any(s.url.endswith("/topics/rust") for s in reply.sources)


def chapter_policy(chapter: int):
    def policy(messages: list[BaseMessage]) -> AIMessage:
        _, _, since = current_turn(messages)
        results = [str(m.content) for m in since if isinstance(m, ToolMessage)]
        if not results:
            return tool_call("read_page", url=re.search(r"https?://\S+/books/\S+", str(messages[-1].content))[0])
        if len(results) == 1:
            link = re.search(rf"^- 第{chapter}章 .*<(\S+)>$", page_text(results[0]), re.M)[1]
            return tool_call("read_page", url=link)
        return AIMessage(page_text(results[1])[:300])
    return policy


async def test_a_paid_chapter_is_never_fetched_the_answer_says_paid_and_links_it(tmp_path):
    async with ReplicaServer() as zenn:
        book_url = f"{zenn.url}/{BOOK_USER}/books/{PAID_BOOK}"
        (reply,) = await ask_all(tmp_path, zenn, chapter_policy(3), [f"{book_url} この本の第3章は何について？"])
        hits = api_hits(zenn)
    assert "PAID CHAPTER: not read" in reply.text and f"{book_url}/ch03" in reply.text
    assert not any(h.startswith("/api/chapters/") for h in hits)


def one_call_policy(**args):
    def policy(messages: list[BaseMessage]) -> AIMessage:
        _, _, since = current_turn(messages)
        results = [str(m.content) for m in since if isinstance(m, ToolMessage)]
        return tool_call("zenn", **args) if not results else AIMessage(results[0])
    return policy


async def test_an_unknown_topic_falls_back_to_search_and_says_so(tmp_path):
    async with ReplicaServer() as zenn:
        (reply,) = await ask_all(tmp_path, zenn, one_call_policy(list="topic", name_or_words="pgvector検索ライブラリX"),
                                 ["pgvector検索ライブラリXの記事は？"])
        hits = api_hits(zenn)
    assert "No Zenn topic 「pgvector検索ライブラリX」: these are keyword search results instead" in reply.text
    assert hits[0] == "/api/topics/pgvector%E6%A4%9C%E7%B4%A2%E3%83%A9%E3%82%A4%E3%83%96%E3%83%A9%E3%83%AAx"
    assert hits[1].startswith("/api/search?q=")


async def test_broken_json_falls_back_to_the_topic_page_and_search_says_it_failed(tmp_path):
    async with ReplicaServer(ReplicaOptions(api_broken=True)) as zenn:
        listing, search = await ask_all(
            tmp_path, zenn,
            policy_for([Turn("a", [lambda r: tool_call("zenn", list="topic", name_or_words="Next.js",
                                                       order="most_liked")], lambda r, m: r[0]),
                        Turn("b", [lambda r: tool_call("zenn", list="search_articles", name_or_words="pgvector")],
                             lambda r, m: r[0])]),
            ["Next.jsで一番いいねが多い記事は？", "pgvectorを検索して"])
    assert f"its page {zenn.url}/topics/nextjs?order=alltime instead" in listing.text
    assert TOP in listing.text.split("\n", 3)[3][:3000]  # the page's first rows: the most liked first
    assert "Zenn's search is not answering" in search.text
    assert not any(h.startswith("/search") for h in zenn.hits)


async def test_a_json_shape_change_is_tolerated_and_logged_once(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    ask = Turn("q", [lambda r: tool_call("zenn", list="topic", name_or_words="Rust", order="latest")],
               lambda r, m: r[0])
    async with ReplicaServer(ReplicaOptions(api_reshaped=True)) as zenn:
        first, second = await ask_all(tmp_path, zenn, policy_for([ask, ask]), ["Rustの新着は？", "もう一度"])
    assert "its page" in first.text and "its page" in second.text  # read from the HTML page instead
    changed = [r.getMessage() for r in caplog.records if "changed shape" in r.getMessage()]
    assert changed == ["Zenn endpoint /api/articles changed shape: no 'articles' list"]


async def test_lists_stop_at_the_per_question_page_cap_unless_all_is_asked(tmp_path):
    most = Turn("q", [lambda r: tool_call("zenn", list="topic", name_or_words="nextjs", order="most_comments")],
                lambda r, m: r[0])
    every = Turn("q", [lambda r: tool_call("zenn", list="topic", name_or_words="nextjs", order="most_comments",
                                           all_pages=True)], lambda r, m: r[0])
    async with ReplicaServer() as zenn:
        capped, everything = await ask_all(tmp_path, zenn, policy_for([most, every]), ["q1", "q2 全部"])
        pages = [h for h in api_hits(zenn) if "topicname=nextjs" in h]
    assert len(pages) == 7  # 5 for the first question; the second read pages 6 and 7 (1–5 were cached)
    assert "240 fetched (5 pages, the list goes on)" in capped.text
    assert "300 fetched (7 pages)" in everything.text
    comments = [int(r["comments"]) for r in rows(capped.text)]
    assert comments == sorted(comments, reverse=True)  # ranked by code


async def test_a_follow_up_opens_the_article_the_ranking_named(tmp_path):
    def policy(messages: list[BaseMessage]) -> AIMessage:
        index, _, since = current_turn(messages)
        results = [str(m.content) for m in since if isinstance(m, ToolMessage)]
        if index == 0:
            if not results:
                return tool_call("zenn", list="topic", name_or_words="Next.js", order="most_liked")
            r = first_row(results)
            return AIMessage(f"一番は「{r['title']}」です。")
        if not results:
            note = next(str(m.content) for m in messages if isinstance(m, ToolMessage))
            return tool_call("read_page", url=re.search(r"\| (https?://\S+?)\]", note)[1])
        return AIMessage(page_text(results[0]).splitlines()[0])

    async with ReplicaServer() as zenn:
        _, followup = await ask_all(tmp_path, zenn, policy, ["Zennで Next.js の記事で一番いいねが多いのは？",
                                                              "その記事の要点は？"])
    assert followup.text.endswith(TOP)


def ranking_policy(messages: list[BaseMessage]) -> AIMessage:
    """Answers 「一番いいね」 about Next.js from the zenn tool's first row."""
    _, _, since = current_turn(messages)
    results = [str(m.content) for m in since if isinstance(m, ToolMessage)]
    if not results:
        return tool_call("zenn", list="topic", name_or_words="Next.js", order="most_liked")
    r = first_row(results)
    return AIMessage(f"一番いいねが多いのは「{r['title']}」（{r['likes']}いいね）です。")


async def test_discord_slash_command_without_a_link(tmp_path):
    from tests.fakes.discord import CHANNEL_ID, FakeDiscord, user
    from tests.fakes.slack import eventually
    from tests.test_discord import discord_bot

    async with ReplicaServer() as zenn, FakeDiscord() as fake:
        async with discord_bot(tmp_path, zenn, fake, policy=ranking_policy):
            synced = next(b for m, p, b in fake.calls if m == "PUT" and p.startswith("/applications/"))
            await fake.dispatch("INTERACTION_CREATE", fake.slash_command(
                CHANNEL_ID, user(7, "alice"), "zenn", "ask", question="Zennで Next.js の記事で一番いいねが多いのは？"))
            await eventually(lambda: any(TOP in m["content"] for m in fake.stored.values()))
    ask = next(o for o in synced[0]["options"] if o["name"] == "ask")  # /zenn ask, beside /zenn follow…
    options = {o["name"]: o for o in ask["options"]}
    assert not options["url"].get("required", False)  # the link is optional
    assert any("1480いいね" in m["content"] for m in fake.stored.values())


async def test_slack_slash_command_with_free_text(tmp_path):
    from urllib.parse import urlencode

    from tests.fakes.slack import MockSlackApi, eventually
    from tests.test_slack import answers, slack_bot

    async with ReplicaServer() as zenn, MockSlackApi() as slack:
        async with slack_bot(tmp_path, zenn, slack, policy=ranking_policy) as (post, _):
            form = urlencode({"command": "/zenn", "text": "Zennで Next.js の記事で一番いいねが多いのは？",
                              "user_id": "UALICE", "channel_id": "C1", "team_id": "T1",
                              "response_url": slack.url + "/respond/abc", "trigger_id": "1.2"})
            status, _ = await post(form, "application/x-www-form-urlencoded")
            assert status == 200
            await eventually(lambda: len(answers(slack)) == 1)
    assert TOP in answers(slack)[0] and "1480いいね" in answers(slack)[0]


def test_topic_names_as_people_write_them():
    from agent.zenn_research import topic_slug

    assert [topic_slug(n) for n in ("Next.js", "生成AI", "ＴｙｐｅＳｃｒｉｐｔ", "#Rust", "Type Script")] == [
        "nextjs", "生成ai", "typescript", "rust", "typescript"]


async def test_a_user_profile_and_a_publication_list_with_counts(tmp_path):
    user = Turn("q", [lambda r: tool_call("zenn", list="user", name_or_words=BOOK_USER, order="most_liked")],
                lambda r, m: r[0])
    publication = Turn("q", [lambda r: tool_call("zenn", list="publication", name_or_words="team_alpha",
                                                 type="idea")], lambda r, m: r[0])
    async with ReplicaServer() as zenn:
        profile, listing = await ask_all(tmp_path, zenn, policy_for([user, publication]), ["a", "b"])
    made_up = catalog()
    mine = sorted((a for a in made_up.articles if a["user"]["username"] == BOOK_USER), key=lambda a: -a["liked_count"])
    assert f"articles: {len(mine)}, books: 2, scraps: 6" in profile.text
    assert [r["title"].split(" ", 1)[1] for r in rows(profile.text)] == [a["title"] for a in mine][:10]
    ideas = [a for a in made_up.articles if (a["publication"] or {}).get("name") == "team_alpha"
             and a["article_type"] == "idea"]
    assert len(rows(listing.text)) == min(10, len(ideas)) and all("(idea)" in r["title"] for r in rows(listing.text))
