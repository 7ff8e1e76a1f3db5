"""`zennbot bench`: the prototype's seven-turn conversation, replayed for cost.

The real ChatGoogleGenerativeAI talks to the Gemini stub, whose policy follows the prototype's
path (which pages it opened, in which turn) and gives the prototype's answers, against the Zenn
replica, through the real graph, tools, guard proxy and SQLite (Zenn pages come from the
replica's JSON endpoints, as in production). Every prompt is measured as text (`prompt_text` of
what the client sent), with the client's `usage_metadata` beside it, and each turn's last prompt
must hold the facts that the prototype's answer for that turn rests on.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from typing import Any

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, BaseMessage, SystemMessage
from langchain_core.outputs import LLMResult

from agent.urlguard import UrlPolicy
from bench.gemini_stub import GeminiStub
from bench.replica import FIXTURES, ReplicaOptions, ReplicaServer
from bench.scripted_model import current_turn, prompt_text, tool_call
from bot.runtime import model_from, open_runtime
from bot.settings import Settings

DEEPSEEK = "/asap/articles/34237ad87f8511"
VAE = "/asap/articles/6caa9043276424"
REALTIME = "/asap/articles/4368fd306b592a"
PROFILE = "/asap"
TARGET_RATIO = 0.04  # of the prototype's prompt characters

# Per turn: the pages the prototype opened (as our tools are called for them), and the facts
# the prototype's answer needs, each a regular expression over that turn's last prompt.
PATH: list[list[tuple[str, dict]]] = [
    [("read_page", {"url": PROFILE}), ("read_page", {"url": DEEPSEEK})],
    [],
    [("read_page", {"url": PROFILE})],
    [("read_page", {"url": VAE})],
    [("read_page", {"url": PROFILE})],
    [("read_page", {"url": PROFILE}), ("read_page", {"url": REALTIME})],
    [("read_page", {"url": DEEPSEEK, "question": "GRPOを導入した目的 状態価値モデル 計算量"})],
]
FACTS: list[list[str]] = [
    ["DeepSeek-R1の論文読んだ？【勉強になるよ】", r"likes: 921", "タイトル通りDeepSeek-R1の論文を読んだ"],
    ["DeepSeek-R1", "GRPO"],
    [r"2 \| 104 \| .*VAEって結局何者なの？"],
    ["VAEって結局何者なの？", r"likes: 104", "満を持してVAE"],
    [r"3 \| 87 \| .*拡散モデルの理論って面白いよね"],
    [r"4 \| 79 \| .*Open AI Realtime APIのPythonサンプルコードを作成", r"likes: 79", "3点追記させてください"],
    ["状態価値モデル（Value model）なしに", "計算量"],
]


@dataclass(frozen=True)
class CallRow:
    turn: int
    call: int
    action: str
    prompt_chars: int
    est_tokens: int  # prompt_chars at the prototype's tokens per character
    input_tokens: int | None  # the model's own count (usage_metadata)
    output_tokens: int | None
    tool_ms: float | None


@dataclass(frozen=True)
class ModelCall:
    """One request to the Gemini stub, as the policy saw it."""

    prompt: str  # what was sent, as text (`prompt_text`)
    content_chars: int  # the messages' text only, as the prototype's figure counted
    reply: AIMessage
    started: float
    finished: float


class UsagePerCall(BaseCallbackHandler):
    """The `usage_metadata` of each model call, in order, as the client reported it."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def on_llm_end(self, response: LLMResult, **kwargs: Any) -> None:
        for generations in response.generations:
            for generation in generations:
                usage = getattr(getattr(generation, "message", None), "usage_metadata", None)
                self.calls.append(dict(usage) if usage else {})


def load_seed() -> dict:
    return json.loads((FIXTURES / "seed_conversation.json").read_text("utf-8"))


def prototype_answers(seed: dict) -> list[str]:
    answers: list[str] = [""] * len(seed["user_turns"])
    turn = -1
    for message in seed["messages"]:
        if message["type"] == "human":
            turn += 1
        elif message["type"] == "ai" and message["content"] and not message.get("tool_call"):
            answers[turn] = message["content"]
    return answers


def prototype_policy(base_url: str, answers: list[str]):
    def policy(messages: list[BaseMessage]) -> AIMessage:
        turn, _, since = current_turn(messages)
        steps = PATH[turn]
        done = sum(1 for m in since if isinstance(m, AIMessage))
        if done < len(steps):
            name, args = steps[done]
            return tool_call(name, **{k: base_url + v if k == "url" else v for k, v in args.items()})
        return AIMessage(content=answers[turn])

    return policy


async def run_benchmark() -> dict:
    """The seven turns through the real ChatGoogleGenerativeAI against the Gemini stub (which
    answers with the prototype's path and reports usage), the graph, tools, proxy and SQLite."""
    seed = load_seed()
    ratio = seed["totals"]["input_tokens"] / seed["totals"]["prompt_chars"]
    calls: list[ModelCall] = []
    usage = UsagePerCall()
    async with ReplicaServer(ReplicaOptions()) as zenn:
        policy_fn = prototype_policy(zenn.url, prototype_answers(seed))

        def recording_policy(messages: list[BaseMessage]) -> AIMessage:
            started = time.perf_counter()
            reply = policy_fn(messages)
            # The stub noted the request before asking the policy: count the tools as they were sent.
            contents = sum(len(str(m.content)) for m in messages if not isinstance(m, SystemMessage))
            calls.append(ModelCall(prompt_text(messages, gemini.calls[-1].body.get("tools")), contents, reply,
                                   started, time.perf_counter()))
            return reply

        async with GeminiStub(policy=recording_policy) as gemini:
            with tempfile.TemporaryDirectory() as tmp:
                settings = Settings(_env_file=None, zennbot_db=str(Path(tmp) / "bench.db"), zenn_base_url=zenn.url,
                                    google_api_key="bench", google_gemini_base_url=gemini.url,
                                    zennbot_user_rate_limit=1000, zennbot_thread_rate_limit=1000)
                model = model_from(settings)
                model.callbacks = [usage]
                url_policy = UrlPolicy(trusted_addresses=frozenset({ipaddress.ip_address("127.0.0.1")}))
                async with await open_runtime(settings, model=model, policy=url_policy) as runtime:
                    turn_calls: list[int] = []
                    replies = []
                    for text in seed["user_turns"]:
                        before = len(calls)
                        text = text.replace("https://zenn.dev", zenn.url)  # the replica stands in for Zenn
                        reply = await runtime.service.handle("bench:seed", "bench", text)
                        replies.append(reply)
                        turn_calls.append(len(calls) - before)
            # When each answer was written out, as the stub streamed it.
            finished = [c.sent_at[-1] if c.sent_at else call.finished for c, call in zip(gemini.calls, calls)]
    if len(gemini.calls) != len(calls) or len(usage.calls) != len(calls):
        raise RuntimeError(f"{len(gemini.calls)} requests, {len(calls)} answered, {len(usage.calls)} usage reports: "
                           "a model call failed")

    rows: list[CallRow] = []
    facts: list[dict] = []
    index = 0
    for turn, count in enumerate(turn_calls):
        for n in range(index, index + count):
            call = calls[n]
            tool_ms = (call.started - finished[n - 1]) * 1000 if n > index else None
            action = (", ".join(f"{c['name']}({c['args'].get('url', '').replace(zenn.url, '')})"
                                for c in call.reply.tool_calls) or "answer")
            chars = len(call.prompt)
            rows.append(CallRow(turn + 1, n - index + 1, action, chars, round(chars * ratio),
                                usage.calls[n].get("input_tokens"), usage.calls[n].get("output_tokens"), tool_ms))
        last_prompt = calls[index + count - 1].prompt if count else ""
        missing = [f for f in FACTS[turn] if not re.search(f, last_prompt)]
        facts.append({"turn": turn + 1, "ok": not missing and replies[turn].ok, "missing": missing})
        index += count

    total = sum(r.prompt_chars for r in rows)
    return {
        "model": f"{settings.zennbot_model} via ChatGoogleGenerativeAI, answered by the Gemini stub",
        "llm_calls": len(rows),
        "total_prompt_chars": total,
        "total_est_tokens": round(total * ratio),
        "total_content_chars": sum(c.content_chars for c in calls),  # without system prompt and tools
        "total_input_tokens": sum(r.input_tokens or 0 for r in rows),
        "total_output_tokens": sum(r.output_tokens or 0 for r in rows),
        "seed_llm_calls": seed["totals"]["llm_calls"],
        "seed_prompt_chars": seed["totals"]["prompt_chars"],
        "seed_input_tokens": seed["totals"]["input_tokens"],
        "ratio_of_seed": total / seed["totals"]["prompt_chars"],
        "token_ratio_of_seed": sum(r.input_tokens or 0 for r in rows) / seed["totals"]["input_tokens"],
        "target_ratio": TARGET_RATIO,
        "facts_ok": all(f["ok"] for f in facts),
        "facts": facts,
        "calls": [r.__dict__ for r in rows],
    }


def format_report(result: dict) -> str:
    lines = [f"{'turn':>4} {'call':>4}  {'action':<50} {'prompt chars':>12} {'~tokens':>8} {'in tok':>8} "
             f"{'out tok':>7} {'tool ms':>8}"]
    for r in result["calls"]:
        tool = "" if r["tool_ms"] is None else f"{r['tool_ms']:.0f}"
        lines.append(f"{r['turn']:>4} {r['call']:>4}  {r['action'][:50]:<50} {r['prompt_chars']:>12,} "
                     f"{r['est_tokens']:>8,} {r['input_tokens'] or 0:>8,} {r['output_tokens'] or 0:>7,} {tool:>8}")
    lines += [
        "",
        f"zennbot:   {result['llm_calls']:>3} LLM calls, {result['total_prompt_chars']:>10,} prompt characters, "
        f"~{result['total_est_tokens']:,} input tokens at the prototype's tokens per character; "
        f"usage_metadata: {result['total_input_tokens']:,} in, {result['total_output_tokens']:,} out "
        f"(the Gemini stub's estimate from each request)",
        f"                          {result['total_content_chars']:>10,} of them message text (the prototype's figure counted only that)",
        f"prototype: {result['seed_llm_calls']:>3} LLM calls, {result['seed_prompt_chars']:>10,} prompt characters, "
        f"{result['seed_input_tokens']:,} input tokens (Gemini's count)",
        f"ratio: {result['ratio_of_seed']:.1%} of the prototype's prompt characters (target ≤ {result['target_ratio']:.0%}); "
        f"input tokens {result['token_ratio_of_seed']:.1%} of the prototype's (stub estimate against Gemini's count)",
        "facts: " + ", ".join(f"turn {f['turn']} {'ok' if f['ok'] else 'MISSING ' + repr(f['missing'])}"
                              for f in result["facts"]),
    ]
    return "\n".join(lines)


def main(as_json: bool = False) -> int:
    started = time.perf_counter()
    result = asyncio.run(run_benchmark())
    result["wall_seconds"] = round(time.perf_counter() - started, 2)
    print(json.dumps(result, ensure_ascii=False) if as_json else format_report(result))
    passed = result["facts_ok"] and result["ratio_of_seed"] <= result["target_ratio"]
    return 0 if passed else 1
