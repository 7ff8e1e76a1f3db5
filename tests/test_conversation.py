"""The seven turns of the prototype's conversation through the real graph, tools, browser and
store (SQLite, or PostgreSQL), with a restart in the middle."""

from __future__ import annotations

from langchain_core.messages import ToolMessage

from bench.conversation import load_seed, run_benchmark
from bench.replica import ReplicaServer
from tests.helpers import count_rows, make_settings, running

THREAD = "console:seed"


async def test_seven_turns_survive_a_restart(tmp_path):
    turns = load_seed()["user_turns"]
    async with ReplicaServer() as zenn:
        settings = make_settings(tmp_path, zenn.url)
        turns = [t.replace("https://zenn.dev", zenn.url) for t in turns]
        answers = []
        async with running(settings) as (runtime, _):
            for text in turns[:3]:
                answers.append(await runtime.service.handle(THREAD, "alice", text))
        async with running(settings) as (runtime, model):  # a new process on the same file
            for text in turns[3:]:
                answers.append(await runtime.service.handle(THREAD, "alice", text))
            history = await runtime.agent.history(THREAD)
            first_prompt_after_restart = model.records[0].prompt
    assert all(a.ok for a in answers), [a.text for a in answers]
    assert "DeepSeek-R1の論文読んだ？【勉強になるよ】" in answers[0].text and "921" in answers[0].text
    assert "VAEって結局何者なの？" in answers[2].text and "104" in answers[2].text
    assert "拡散モデルの理論って面白いよね" in answers[4].text and "87" in answers[4].text  # after the restart
    assert "Open AI Realtime API" in answers[5].text and "79" in answers[5].text
    assert turns[0] in first_prompt_after_restart  # the thread came back from the store
    assert sum(1 for m in history if m.type == "human") == 7
    tool_results = [m for m in history if isinstance(m, ToolMessage)]
    assert tool_results and all(len(str(m.content)) < 400 for m in tool_results)  # notes, not pages

    assert await count_rows(settings, "checkpoints", THREAD) == 1 and await count_rows(settings, "page_cache") >= 1


async def test_threads_are_separate(tmp_path):
    async with ReplicaServer() as zenn:
        async with running(make_settings(tmp_path, zenn.url)) as (runtime, _):
            await runtime.service.handle("discord:1", "u", zenn.url + "/asap 一番人気は？")
            other = await runtime.service.handle("slack:T1:C1:1.0", "u", "2番目は？")
    assert other.text.startswith("(no page)")  # nothing of discord:1 leaked into this thread


async def test_benchmark_is_under_target_with_every_fact():
    result = await run_benchmark()
    assert result["facts_ok"], result["facts"]
    assert result["total_prompt_chars"] <= 0.05 * result["seed_prompt_chars"]
    assert result["llm_calls"] == 15
    # the client's own token counts (usage_metadata from the Gemini stub), per call and in total
    assert all(c["input_tokens"] and c["output_tokens"] for c in result["calls"])
    assert result["total_input_tokens"] == sum(c["input_tokens"] for c in result["calls"]) > 0


def test_long_threads_send_only_recent_whole_turns():
    from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

    from agent.graph import recent_turns

    messages = []
    for turn in range(50):
        messages += [HumanMessage(f"question {turn}"), AIMessage("", tool_calls=[
            {"name": "read_page", "args": {"url": "u"}, "id": f"c{turn}", "type": "tool_call"}]),
            ToolMessage("note " * 20, tool_call_id=f"c{turn}"), AIMessage("answer " * 40)]
    kept = recent_turns(messages, 2_000)
    assert isinstance(kept[0], HumanMessage) and kept[-1] is messages[-1]
    assert 3 <= sum(isinstance(m, HumanMessage) for m in kept) < 10
    assert recent_turns(messages[-4:], 10) == messages[-4:]  # the current turn always goes
