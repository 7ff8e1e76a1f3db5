"""Answers stream: the real ChatGoogleGenerativeAI inside the real graph, against the Gemini stub
streaming its answer in chunks (`streamGenerateContent`)."""

from __future__ import annotations

from langchain_core.messages import AIMessage

from bench.gemini_stub import GeminiStub
from bench.replica import ReplicaServer
from bench.scripted_model import current_turn, tool_call
from bot.runtime import model_from, open_runtime
from bot.messages import AnswerDelta, AnswerReset, Ask, Done, Progress, Started
from tests.helpers import TRUSTED_REPLICA, make_settings

ANSWER = "一番いいねが多いのは「DeepSeek-R1の論文読んだ？【勉強になるよ】」で、921 いいねです。" * 3


def read_then_answer(zenn_url: str, preamble: str = ""):
    def policy(messages):
        _, _, since = current_turn(messages)
        if not since:
            call = tool_call("read_page", url=zenn_url + "/asap")
            return AIMessage(content=preamble, tool_calls=call.tool_calls)
        return AIMessage(content=ANSWER)
    return policy


async def _events(tmp_path, zenn, gemini, text: str, thread="console:s"):
    settings = make_settings(tmp_path, zenn.url, google_api_key="k", google_gemini_base_url=gemini.url,
                             zennbot_llm_max_retries=2)
    async with await open_runtime(settings, model=model_from(settings), policy=TRUSTED_REPLICA) as rt:
        events = [e async for e in rt.service.stream(Ask(thread, "u", text))]
        history = await rt.agent.history(thread)
    return events, history


async def test_answer_streams_in_chunks_and_ends_with_the_whole_answer(tmp_path):
    async with ReplicaServer() as zenn, GeminiStub(policy=read_then_answer(zenn.url), chunk_chars=25,
                                                   chunk_delay=0.05) as gemini:
        events, history = await _events(tmp_path, zenn, gemini, zenn.url + "/asap 一番人気は？")
    assert isinstance(events[0], Started)
    assert any(isinstance(e, Progress) and "reading" in e.text for e in events)
    deltas = [e.text for e in events if isinstance(e, AnswerDelta)]
    assert len(deltas) >= 3 and "".join(deltas) == ANSWER
    done = events[-1]
    assert isinstance(done, Done) and done.reply.ok and done.reply.text == ANSWER
    assert done.reply.run_id == events[0].run_id
    assert [u.input_tokens > 0 and u.output_tokens > 0 for u in done.reply.usage] == [True]
    # the usage is the stub's own count, summed over the two calls (streamed: cumulative per chunk)
    assert done.reply.usage[0].input_tokens == sum(c.prompt_tokens for c in gemini.calls)
    assert done.reply.usage[0].output_tokens == sum(c.output_tokens for c in gemini.calls)
    assert all(c.streamed for c in gemini.calls)
    # progress before the answer: the page was read before any answer text
    first_delta = next(i for i, e in enumerate(events) if isinstance(e, AnswerDelta))
    assert any(isinstance(e, Progress) for e in events[:first_delta])
    assert history[-1].content == ANSWER


async def test_text_before_a_tool_call_is_not_the_answer(tmp_path):
    async with ReplicaServer() as zenn, GeminiStub(policy=read_then_answer(zenn.url, "ページを読みます。"),
                                                   chunk_chars=5) as gemini:
        events, _ = await _events(tmp_path, zenn, gemini, zenn.url + "/asap 一番人気は？")
    kinds = [type(e).__name__ for e in events]
    reset = kinds.index("AnswerReset")
    assert "AnswerDelta" in kinds[:reset]  # the preamble was shown, then withdrawn
    after = [e.text for e in events[reset:] if isinstance(e, AnswerDelta)]
    assert "".join(after) == ANSWER and events[-1].reply.text == ANSWER


async def test_a_stream_that_breaks_half_way_leaves_no_half_answer(tmp_path):
    async with ReplicaServer() as zenn, GeminiStub(policy=read_then_answer(zenn.url), chunk_chars=10,
                                                   fail_stream_after=2) as gemini:
        events, history = await _events(tmp_path, zenn, gemini, zenn.url + "/asap 一番人気は？")
    done = events[-1]
    assert isinstance(done, Done) and not done.reply.ok
    assert "Traceback" not in done.reply.text and len(done.reply.text) < 200
    assert any(isinstance(e, AnswerDelta) for e in events)  # it had started to answer
    # the broken call was retried (ZENNBOT_LLM_MAX_RETRIES=2): its partial text was withdrawn first
    assert len(gemini.calls) == 3
    second_try = [i for i, e in enumerate(events) if isinstance(e, AnswerDelta)][2]
    assert any(isinstance(e, AnswerReset) for e in events[:second_try])
    assert history == []  # nothing of the failed run in the thread


async def test_latency_benchmark_measures_a_streamed_answer():
    from bench.latency import run_latency

    result = await run_latency(questions=1)
    assert result["answer_chunks"] > 2 and result["first_word_ms_median"] >= 0
    assert result["shown_while_written"]  # the first words were on screen before the model's last chunk


async def test_a_stopped_run_leaves_nothing_and_the_thread_answers_the_next_question(tmp_path):
    async with ReplicaServer() as zenn, GeminiStub(policy=read_then_answer(zenn.url), chunk_chars=5,
                                                   chunk_delay=0.2) as gemini:
        settings = make_settings(tmp_path, zenn.url, google_api_key="k", google_gemini_base_url=gemini.url)
        async with await open_runtime(settings, model=model_from(settings), policy=TRUSTED_REPLICA) as rt:
            service = rt.service
            events = []
            async for event in service.stream(Ask("console:stop", "alice", zenn.url + "/asap 一番人気は？")):
                events.append(event)
                if isinstance(event, Started):
                    assert service.run_owner(event.run_id) == "alice"
                if isinstance(event, AnswerDelta) and not any(isinstance(e, AnswerDelta) for e in events[:-1]):
                    assert service.cancel(events[0].run_id)  # the asker presses Stop mid-answer
            done = events[-1]
            assert isinstance(done, Done) and done.reply.stopped and not done.reply.ok
            assert not service.cancel(done.reply.run_id) and service.run_owner(done.reply.run_id) is None
            assert await rt.agent.history("console:stop") == []
            gemini.chunk_delay = 0
            again = await service.handle("console:stop", "alice", zenn.url + "/asap 一番人気は？")
    assert again.ok and again.text == ANSWER
