"""`zennbot bench research`: Zenn questions without a link, replayed for cost; and
`zennbot bench other-author`: the seed's seven turns about another author (a longer list, longer
articles), to show the seed bench's figure is not tuned to one author.

Both go through the real ChatGoogleGenerativeAI against the Gemini stub, the Zenn replica (its
made-up catalog), the real graph, tools, Zenn client, guard proxy and SQLite, like `zennbot
bench`. The stub's policy plays a model that picks tools as a good model would and answers from
what the tools returned (rows parsed by code here, so every answer names the right items); each
turn's answer must name what the question asks for (`expect`), else the run fails.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from langchain_core.messages import AIMessage, BaseMessage, SystemMessage, ToolMessage

from agent.urlguard import UrlPolicy
from bench.conversation import load_seed, prototype_answers
from bench.gemini_stub import GeminiStub
from bench.replica import ReplicaOptions, ReplicaServer
from bench.scripted_model import current_turn, prompt_text, tool_call
from bench.zenn_catalog import (BOOK_USER, NEXTJS_TOP, PGVECTOR_NEWEST_TITLE, PROLIFIC, SCRAP_SLUG,
                                    TREND_TOP_TITLE)
from bot.runtime import model_from, open_runtime
from bot.settings import Settings

MESSAGE_TARGET = 40_000  # message characters over the six research turns

# A Zenn list row: rank | likes | bookmarks | comments | date | author | title | url
ZENN_ROW = re.compile(r"^(?P<rank>\d+) \| (?P<likes>\d+) \| (?P<bookmarks>[^|]*) \| (?P<comments>[^|]*) \| "
                      r"(?P<date>[^|]*) \| (?P<author>[^|]*) \| (?P<title>[^|\n]+?) \| (?P<url>\S+)$", re.M)
# An author list row: rank | likes | bookmarks | published | title | url
AUTHOR_ROW = re.compile(r"^(?P<rank>\d+) \| (?P<likes>\d+) \| (?P<bookmarks>[^|]*) \| (?P<date>[^|]*) \| "
                        r"(?P<title>[^|\n]+?) \| (?P<url>\S+)$", re.M)
LINKED_ITEM = re.compile(r"^- (?P<text>.+?) <(?P<url>https?://[^>\s]+)>$", re.M)
URL = re.compile(r"https?://[^\s\]\)」”>|]+")


def rows(text: str) -> list[dict]:
    """The rows of a list, or of its note once the model followed a link from it."""
    text = re.sub(r"(?:Opened from it|The answer named): ", "\n", text).replace(" ; ", "\n").replace("]\n", "\n")
    text = re.sub(r"\]$", "", text, flags=re.M)
    return [m.groupdict() for m in ZENN_ROW.finditer(text)] or [m.groupdict() for m in AUTHOR_ROW.finditer(text)]


def page_text(result: str) -> str:
    """The page data of a tool result, without the fence lines."""
    return "\n".join(line for line in result.splitlines()
                     if "UNTRUSTED_PAGE_CONTENT" not in line and not line.startswith(("(Page data", "Source:")))


def gist(result: str, chars: int) -> str:
    """What a model would retell of a page: its prose lines, cut to `chars`."""
    lines = [line.strip("#*- ") for line in page_text(result).splitlines()
             if line.strip() and not line.startswith(("URL:", "likes:", "topics:", "outline:", "```", "by "))]
    return " ".join(lines)[:chars]


# A step: given the turn's tool results so far, the next tool call (None: answer now).
Step = Callable[[list[str]], AIMessage | None]


@dataclass
class Turn:
    question: str
    steps: list[Callable[[list[str]], AIMessage]]
    answer: Callable[[list[str], list[BaseMessage]], str]
    expect: list[str] = field(default_factory=list)  # the answer must hold each


def policy_for(turns: list[Turn]) -> Callable[[list[BaseMessage]], AIMessage]:
    def policy(messages: list[BaseMessage]) -> AIMessage:
        index, _, since = current_turn(messages)
        turn = turns[index]
        results = [str(m.content) for m in since if isinstance(m, ToolMessage)]
        if len(results) < len(turn.steps):
            return turn.steps[len(results)](results)
        return AIMessage(content=turn.answer(results, messages))
    return policy


def first_row(results: list[str], n: int = 1) -> dict:
    found = rows(results[-1])
    return found[n - 1]


def linked(result: str, starts: str) -> str:
    return next(m["url"] for m in LINKED_ITEM.finditer(result) if m["text"].startswith(starts))


def earlier_url(messages: list[BaseMessage], title_part: str) -> str:
    """A URL the thread's notes kept for an item whose title holds `title_part`."""
    for message in reversed(messages):
        if isinstance(message, ToolMessage) and title_part in str(message.content):
            for line in str(message.content).split(" ; "):
                if title_part in line:
                    return URL.findall(line)[-1]
    raise LookupError(f"no note names {title_part!r}")


def research_turns(base: str) -> list[Turn]:
    top_title = NEXTJS_TOP[170][0]

    def ranking_answer(results, _):
        r = first_row(results)
        return (f"Zennの「Next.js」トピックで一番いいねが多い記事は「{r['title']}」（{r['author']}さん、"
                f"{r['likes']}いいね・{r['bookmarks']}ブックマーク、{r['date']}公開）です。{r['url']}\n"
                "2位以下との差も大きく、長く読まれ続けている定番記事です。")

    def trend_answer(results, _):
        r = rows(results[0])[0]
        why = re.search(r"^#+ なぜ[^\n]*\n+([^\n]+)", page_text(results[1]), re.M)
        return (f"今日の技術トレンド1位は「{r['title']}」（{r['likes']}いいね）です。{r['url']}\n"
                f"伸びている理由: {why[1] if why else gist(results[1], 200)}")

    def search_answer(results, _):
        r = rows(results[0])[0]
        return f"pgvectorの一番新しい記事は「{r['title']}」（{r['date']}）です。{r['url']}\n要約: {gist(results[1], 360)}"

    def chapter_answer(results, _):
        return f"{BOOK_USER}さんの本の第2章は次の内容です: {gist(results[2], 300)} {URL.findall(results[2])[0]}"

    def scrap_answer(results, _):
        text = page_text(results[0])
        first = re.search(r"^1\. thread #\d+ · (\d+) replies · likes: \d+: (.+)$", text, re.M)
        return (f"一番議論されているのは「{first[2][:60]}」のスレッド（返信{first[1]}件）です。"
                f"返信では互換性のために明示的な指定を求める声が多く出ています。")

    def followup_answer(results, _):
        return f"「{top_title}」の要点: {gist(results[0], 400)}"

    return [
        Turn("Zennで Next.js の記事で一番いいねが多いのは？",
             [lambda r: tool_call("zenn", list="topic", name_or_words="Next.js", order="most_liked")],
             ranking_answer, [top_title, "1480"]),
        Turn("今日のZennのトレンド（技術）の1位は何の記事で、なぜ伸びている？",
             [lambda r: tool_call("zenn", list="all_zenn", order="trend_today", type="tech"),
              lambda r: tool_call("read_page", url=first_row(r)["url"])],
             trend_answer, [TREND_TOP_TITLE, "評価をCI"]),
        Turn("Zennで pgvector を検索して一番新しい記事を要約して",
             [lambda r: tool_call("zenn", list="search_articles", name_or_words="pgvector", order="latest"),
              lambda r: tool_call("read_page", url=first_row(r)["url"])],
             search_answer, [PGVECTOR_NEWEST_TITLE]),
        Turn(f"{BOOK_USER} さんの本の第2章は何について？",
             [lambda r: tool_call("zenn", list="user_books", name_or_words=BOOK_USER),
              lambda r: tool_call("read_page", url=first_row(r)["url"]),
              lambda r: tool_call("read_page", url=linked(r[-1], "第2章"))],
             chapter_answer, ["Server Componentsとデータ取得"]),
        Turn(f"{base}/{BOOK_USER}/scraps/{SCRAP_SLUG} このスクラップで一番議論されている点は？",
             [lambda r: tool_call("read_page", url=f"{base}/{BOOK_USER}/scraps/{SCRAP_SLUG}")],
             scrap_answer, ["fetchのデフォルトがno-storeに変わった件", "返信7件"]),
        Turn("最初に教えてくれた Next.js の記事の要点は？",
             [],  # set below: the URL comes from the thread's notes
             followup_answer, [top_title]),
    ]


class FollowUp:
    """The follow-up's step: open the article the first answer named, found in the notes."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.messages: list[BaseMessage] = []


def research_policy(base: str) -> Callable[[list[BaseMessage]], AIMessage]:
    turns = research_turns(base)
    top_title = NEXTJS_TOP[170][0]
    inner = policy_for(turns)

    def policy(messages: list[BaseMessage]) -> AIMessage:
        index, _, since = current_turn(messages)
        if index == len(turns) - 1 and not any(isinstance(m, ToolMessage) for m in since):
            return tool_call("read_page", url=earlier_url(messages[:-1], top_title[:12]))
        if index == len(turns) - 1:
            results = [str(m.content) for m in since if isinstance(m, ToolMessage)]
            return AIMessage(content=turns[index].answer(results, messages))
        return inner(messages)

    return policy


# The seed's seven turns, about another author

def other_author_turns(base: str, author: str) -> list[Turn]:
    """The seed's questions and path (read the author, open the Nth most liked, find passages),
    each answer as long as the prototype's answer to that turn."""
    seed = load_seed()
    prototype = prototype_answers(seed)
    lengths = [len(a) for a in prototype]
    questions = [q.replace("https://zenn.dev/asap", f"{base}/{author}") for q in seed["user_turns"]]
    profile = f"{base}/{author}"

    def row_of(results: list[str], n: int) -> dict:
        return next(r for result in results for r in rows(result) if r["rank"] == str(n))

    def answer(turn: int, n: int | None):
        def write(results, messages):
            head = ""
            if n is not None:
                r = row_of(results, n) if results and rows(results[0]) else _noted_row(messages, n)
                head = f"{n}番目にいいねが多い記事は「{r['title']}」（{r['likes']}いいね）です。{r['url']}\n"
            body = gist(results[-1], lengths[turn]) if results else ""
            text = head + body  # as long as the prototype's answer, its words filling what is missing
            return (text + prototype[turn][len(text):])[:max(lengths[turn], len(head))]
        return write

    read_profile = lambda r: tool_call("read_page", url=profile)  # noqa: E731
    return [
        Turn(questions[0], [read_profile, lambda r: tool_call("read_page", url=row_of(r, 1)["url"])], answer(0, 1)),
        Turn(questions[1], [], answer(1, None)),
        Turn(questions[2], [read_profile], answer(2, 2)),
        Turn(questions[3], [lambda r: tool_call("read_page", url=_note_url(r, 2))], answer(3, None)),
        Turn(questions[4], [read_profile], answer(4, 3)),
        Turn(questions[5], [read_profile, lambda r: tool_call("read_page", url=row_of(r, 4)["url"])], answer(5, 4)),
        Turn(questions[6], [lambda r: tool_call("read_page", url=_note_url(r, 1),
                                                question="要点 理由 計測")], answer(6, None)),
    ]


_NOTES: dict[str, list[BaseMessage]] = {}


def _noted_row(messages: list[BaseMessage], n: int) -> dict:
    for message in reversed(messages):
        for line in str(message.content).split(" ; "):
            match = re.search(rf"(?:^|: ){n} \| (\d+) \| [^|]* \| [^|]* \| (.+?) \| (\S+?)\]?$", line)
            if match:
                return {"likes": match[1], "title": match[2], "url": match[3]}
    raise LookupError(f"no note names rank {n}")


def _note_url(results: list[str], n: int) -> str:
    return _noted_row(_NOTES["messages"], n)["url"]


def other_author_policy(base: str, author: str) -> Callable[[list[BaseMessage]], AIMessage]:
    inner = policy_for(other_author_turns(base, author))

    def policy(messages: list[BaseMessage]) -> AIMessage:
        _NOTES["messages"] = messages
        return inner(messages)

    return policy


# Replay and measure

@dataclass
class Call:
    turn: int
    action: str
    prompt_chars: int
    message_chars: int  # the messages' text, without the system prompt and the tool declarations


async def replay(questions_for: Callable[[str], list[str]], policy_for_base, thread: str) -> dict:
    calls: list[Call] = []
    answers: list[str] = []
    async with ReplicaServer(ReplicaOptions()) as zenn:
        policy = policy_for_base(zenn.url)
        turn_number = [0]

        def recording(messages: list[BaseMessage]) -> AIMessage:
            reply = policy(messages)
            contents = sum(len(str(m.content)) for m in messages if not isinstance(m, SystemMessage))
            action = ", ".join(f"{c['name']}({_short(c['args'], zenn.url)})" for c in reply.tool_calls) or "answer"
            calls.append(Call(turn_number[0], action, len(prompt_text(messages, gemini.calls[-1].body.get("tools"))),
                              contents))
            return reply

        async with GeminiStub(policy=recording) as gemini:
            with tempfile.TemporaryDirectory() as tmp:
                settings = Settings(_env_file=None, zennbot_db=str(Path(tmp) / "bench.db"), zenn_base_url=zenn.url,
                                    google_api_key="bench", google_gemini_base_url=gemini.url,
                                    zennbot_user_rate_limit=1000, zennbot_thread_rate_limit=1000,
                                    zenn_requests_per_second=20.0, zennbot_contact_url="https://example.org/bench")
                model = model_from(settings)
                url_policy = UrlPolicy(trusted_addresses=frozenset({ipaddress.ip_address("127.0.0.1")}))
                async with await open_runtime(settings, model=model, policy=url_policy) as runtime:
                    for number, question in enumerate(questions_for(zenn.url), 1):
                        turn_number[0] = number
                        reply = await runtime.service.handle(thread, "bench", question)
                        answers.append(reply.text if reply.ok else "FAILED: " + reply.text)
        zenn_requests = len([h for h in zenn.hits if h.startswith("/api/")])
    return {"calls": [c.__dict__ for c in calls], "answers": answers, "zenn_api_requests": zenn_requests,
            "llm_calls": len(calls), "total_prompt_chars": sum(c.prompt_chars for c in calls),
            "total_message_chars": sum(c.message_chars for c in calls)}


def _short(args: dict, base: str) -> str:
    return " ".join(f"{k}={str(v).replace(base, '')}" for k, v in args.items())[:60]


async def run_research() -> dict:
    result = await replay(lambda base: [t.question for t in research_turns(base)], research_policy, "bench:research")
    expected = [t.expect for t in research_turns("")]
    result["checks"] = [{"turn": n, "ok": all(e in a for e in expect), "missing": [e for e in expect if e not in a]}
                        for n, (a, expect) in enumerate(zip(result["answers"], expected, strict=True), 1)]
    result["target_message_chars"] = MESSAGE_TARGET
    return result


async def run_other_author(author: str = PROLIFIC) -> dict:
    seed = load_seed()
    result = await replay(lambda base: [q.replace("https://zenn.dev/asap", f"{base}/{author}") for q in seed["user_turns"]],
                          lambda base: other_author_policy(base, author), "bench:other")
    result["author"] = author
    result["seed_prompt_chars"] = seed["totals"]["prompt_chars"]
    result["checks"] = [{"turn": n, "ok": not a.startswith("FAILED"), "missing": []}
                        for n, a in enumerate(result["answers"], 1)]
    return result


def format_report(result: dict, title: str) -> str:
    lines = [title, f"{'turn':>4}  {'action':<62} {'prompt chars':>12} {'message chars':>13}"]
    for c in result["calls"]:
        lines.append(f"{c['turn']:>4}  {c['action'][:62]:<62} {c['prompt_chars']:>12,} {c['message_chars']:>13,}")
    lines += ["", f"{result['llm_calls']} LLM calls, {result['total_message_chars']:,} message characters, "
                  f"{result['total_prompt_chars']:,} prompt characters with the system prompt and tool declarations; "
                  f"{result['zenn_api_requests']} Zenn API requests",
              "answers: " + ", ".join(f"turn {c['turn']} {'ok' if c['ok'] else 'MISSING ' + repr(c['missing'])}"
                                      for c in result["checks"])]
    return "\n".join(lines)


def main(which: str = "research", as_json: bool = False) -> int:
    started = time.perf_counter()
    if which == "research":
        result = asyncio.run(run_research())
        passed = result["total_message_chars"] <= MESSAGE_TARGET
        title = f"Six Zenn questions without a link (target ≤ {MESSAGE_TARGET:,} message characters)"
    else:
        result = asyncio.run(run_other_author())
        passed = True
        title = (f"The seed's seven turns about {result['author']} (a longer list, longer articles); the seed's "
                 f"prototype sent {result['seed_prompt_chars']:,} prompt characters for its author")
    passed = passed and all(c["ok"] for c in result["checks"])
    result["wall_seconds"] = round(time.perf_counter() - started, 2)
    if as_json:
        print(json.dumps(result, ensure_ascii=False))
    else:
        print(format_report(result, title))
        if which != "research":
            print(f"ratio: {result['total_prompt_chars'] / result['seed_prompt_chars']:.1%} of the seed prototype's "
                  "prompt characters (a different author: a yardstick, not a target)")
    return 0 if passed else 1
