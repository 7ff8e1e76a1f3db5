"""The LangGraph graph: model ⇄ tools, then a compaction step that keeps the thread small.

    START → model ─(tool calls)→ tools → model …
                  └(answer)──→ compact → END

`compact` replaces the turn's tool results (page text) with the one-line notes the tools left as
artifacts, so the checkpointed history holds what was read and where, not the pages themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import httpx
from langchain_core.exceptions import (ModelAPIError, ModelConnectionError, ModelRateLimitError,
                                       ModelTimeoutError)
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.runnables import Runnable, RunnableConfig, RunnableLambda
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition

from agent.events import AgentEvent, AgentReply, AnswerDelta, AnswerReset, Progress
from agent.limits import Limit
from agent.usage import UsageCollector
from agent.pages import PageReader
from agent.prompts import SYSTEM_PROMPT
from agent.tools import RunContext, build_tools, current_run, named_links, remember_named
from agent.zenn_tools import build_zenn_tool

log = logging.getLogger(__name__)

# The endpoint cannot be reached at all (DNS, refused, reset, TLS): google-genai raises aiohttp's
# errors, other providers httpx's. Retried like a 5xx.
UNREACHABLE_ERRORS = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, httpx.TransportError,
                      ConnectionError)
TRANSIENT_LLM_ERRORS = (ModelRateLimitError, ModelAPIError, ModelConnectionError, ModelTimeoutError,
                        asyncio.TimeoutError, *UNREACHABLE_ERRORS)


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 4
    initial_delay: float = 1.0
    max_delay: float = 20.0


def message_text(message: AIMessage) -> str:
    """The text of a model message, whichever content shape the provider used."""
    if isinstance(message.content, str):
        return message.content.strip()
    parts = [p.get("text", "") if isinstance(p, dict) else str(p) for p in message.content]
    return "".join(parts).strip()


def recent_turns(messages: list[BaseMessage], budget: int, *, full_turns: int = 1,
                 old_answer_chars: int = 160, last_answer_chars: int = 600) -> list[BaseMessage]:
    """What the model is sent of a thread: the current turn, and as many whole earlier turns as
    fit in `budget` characters, so a thread of hundreds of turns still fits the model. The last
    `full_turns` earlier turns go with their answers cut to `last_answer_chars`; answers of older
    turns are cut to their opening `old_answer_chars` (what they named stays in the notes). In the current turn, a list the
    model has followed a link from goes as its note and the rows followed. The stored history
    keeps everything."""
    starts = [i for i, m in enumerate(messages) if isinstance(m, HumanMessage)]
    if not starts:
        return messages
    turns = [messages[start:end] for start, end in zip(starts, [*starts[1:], len(messages)], strict=True)]
    kept = _followed_lists_noted(turns[-1])
    used = sum(len(str(m.content)) for m in kept)
    for age, turn in enumerate(reversed(turns[:-1]), 1):
        turn = [_shortened(m, old_answer_chars if age > full_turns else last_answer_chars) for m in turn]
        size = sum(len(str(m.content)) for m in turn)
        if used + size > budget:
            break
        kept, used = [*turn, *kept], used + size
    return kept


def _followed_lists_noted(turn: list[BaseMessage]) -> list[BaseMessage]:
    """The current turn, with each tool result that the model has since followed a link from
    (an author list it picked an article from) replaced by its note and the rows it followed:
    the list was needed once, to choose. Another part of the same page is not a link followed."""
    urls = {call["id"]: str(call["args"].get("url", "")) for m in turn if isinstance(m, AIMessage)
            for call in m.tool_calls}
    out: list[BaseMessage] = []
    for index, message in enumerate(turn):
        if isinstance(message, ToolMessage) and isinstance(message.artifact, str):
            own = urls.get(message.tool_call_id)
            opened = " ".join(str(call["args"].get("url", "")) for later in turn[index + 1:]
                              if isinstance(later, AIMessage) for call in later.tool_calls
                              if call["args"].get("url") != own)
            if named_links(str(message.content), opened):
                message = message.model_copy(
                    update={"content": remember_named(message.artifact, str(message.content), opened,
                                                      "Opened from it")})
        out.append(message)
    return out


def _shortened(message: BaseMessage, limit: int) -> BaseMessage:
    """An old answer cut to its opening; tool calls and their results are never changed."""
    if not isinstance(message, AIMessage) or message.tool_calls:
        return message
    text = message_text(message)
    if len(text) <= limit:
        return message
    return message.model_copy(update={"content": text[:limit] + " …(shortened)"})


def compacted_notes(messages: list[BaseMessage]) -> list[ToolMessage]:
    """Replacements for the turn's tool results: each one's note (its artifact), with the links
    of the result that the turn's answer named, so a follow-up can open them directly."""
    final = messages[-1] if messages else None
    answer = message_text(final) if isinstance(final, AIMessage) else ""
    return [
        ToolMessage(content=remember_named(m.artifact, str(m.content), answer), tool_call_id=m.tool_call_id,
                    name=m.name, id=m.id)
        for m in messages
        if isinstance(m, ToolMessage) and isinstance(m.artifact, str) and m.content != m.artifact
    ]


def limited(model: Runnable, calls: Limit) -> Runnable:
    """`model`, each call holding one of `calls` (the provider's rate limit) only while it runs:
    a retry's backoff waits outside the limit."""

    async def call(messages: list[BaseMessage], config: RunnableConfig) -> AIMessage:
        async with calls.hold():
            return await model.ainvoke(messages, config)

    return RunnableLambda(call, name="limited model call")


def build_graph(model: BaseChatModel, tools: list, checkpointer: BaseCheckpointSaver | None,
                retry: RetryPolicy = RetryPolicy(), history_budget: int = 40_000,
                model_calls: Limit | None = None):
    with_tools: Runnable = model.bind_tools(tools)
    if model_calls is not None:
        with_tools = limited(with_tools, model_calls)
    bound = with_tools.with_retry(
        retry_if_exception_type=TRANSIENT_LLM_ERRORS,
        wait_exponential_jitter=True,
        stop_after_attempt=max(retry.attempts, 1),
        exponential_jitter_params={"initial": retry.initial_delay, "max": retry.max_delay},
    )

    async def call_model(state: MessagesState) -> dict:
        history = recent_turns(state["messages"], history_budget)
        response = await bound.ainvoke([SystemMessage(SYSTEM_PROMPT), *history])
        return {"messages": [response]}

    async def compact(state: MessagesState) -> dict:
        return {"messages": compacted_notes(state["messages"])}

    graph = StateGraph(MessagesState)
    graph.add_node("model", call_model)
    graph.add_node("tools", ToolNode(tools))
    graph.add_node("compact", compact)
    graph.add_edge(START, "model")
    graph.add_conditional_edges("model", tools_condition, {"tools": "tools", END: "compact"})
    graph.add_edge("tools", "model")
    graph.add_edge("compact", END)
    return graph.compile(checkpointer=checkpointer)


class ResearchAgent:
    """Runs one turn of a thread: the user's message in, events and the answer out."""

    def __init__(self, model: BaseChatModel, reader: PageReader, checkpointer: BaseCheckpointSaver | None,
                 *, max_urls: int = 5, max_steps: int = 24, retry: RetryPolicy = RetryPolicy(),
                 model_calls: Limit | None = None, max_zenn_pages: int = 5) -> None:
        """`model_calls` bounds the model calls at once (None: no bound)."""
        self.reader = reader
        self.max_urls = max_urls
        self.max_steps = max_steps
        self.model_calls = model_calls
        self.tools = [*build_tools(reader), build_zenn_tool(reader, max_zenn_pages)]
        self.graph = build_graph(model, self.tools, checkpointer, retry, model_calls=model_calls)

    async def stream(self, thread_id: str, text: str,
                     usage: UsageCollector | None = None) -> AsyncIterator[AgentEvent | AgentReply]:
        """Run one turn: `Progress`, `AnswerDelta` and `AnswerReset` events as they happen, then
        the `AgentReply`. Raises what the run raised; closing the iterator cancels the run."""
        queue: asyncio.Queue = asyncio.Queue()
        worker = asyncio.create_task(self._produce(thread_id, text, usage or UsageCollector(), queue.put_nowait))
        try:
            while True:
                item = await queue.get()
                if item is _END:
                    break
                yield item
            yield await worker  # the reply, or the run's exception
        finally:
            if not worker.done():
                worker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await worker

    async def _produce(self, thread_id: str, text: str, usage: UsageCollector, emit) -> AgentReply:
        async def on_progress(line: str) -> None:
            emit(Progress(line))

        # Set inside this task, so the tools of this run (and only they) see it.
        run = RunContext(on_progress=on_progress, max_urls=self.max_urls)
        current_run.set(run)
        config = {"configurable": {"thread_id": thread_id}, "recursion_limit": self.max_steps,
                  "callbacks": [usage]}
        answer_id: str | None = None  # the model call whose text is being shown as the answer
        try:
            # Progress comes from the tools through `run.on_progress`; answer text from here.
            # Saved once, at the end: a turn cut short is rolled back whole anyway (bot.recovery),
            # so the steps in between would be database writes nobody reads.
            async for chunk, meta in self.graph.astream({"messages": [HumanMessage(text)]}, config,
                                                        stream_mode="messages", durability="exit"):
                if meta.get("langgraph_node") != "model" or not isinstance(chunk, AIMessage):
                    continue
                if chunk.tool_calls or getattr(chunk, "tool_call_chunks", None):
                    if answer_id == chunk.id:  # that text led to a tool call: not the answer
                        emit(AnswerReset())
                    answer_id = None
                    continue
                delta = _chunk_text(chunk)
                if not delta:
                    continue
                if answer_id is not None and answer_id != chunk.id:  # a retried or later call
                    emit(AnswerReset())
                answer_id = chunk.id
                emit(AnswerDelta(delta))
            state = await self.graph.aget_state({"configurable": {"thread_id": thread_id}})
        finally:
            emit(_END)
        final = state.values["messages"][-1]
        answer = message_text(final) if isinstance(final, AIMessage) else ""
        if not answer:
            answer = " ".join(run.errors) or "I could not find an answer to that."
        return AgentReply(text=answer, sources=list(run.sources), usage=usage.usage())

    async def seed(self, thread_id: str, opening: str, text: str) -> None:
        """Begin a thread's history with a turn the bot wrote itself (`opening` asked, `text`
        answered; e.g. a digest), as if the graph had run it: the next turn sees it like any other."""
        await self.graph.aupdate_state({"configurable": {"thread_id": thread_id}},
                                       {"messages": [HumanMessage(opening), AIMessage(text)]}, as_node="compact")

    async def history(self, thread_id: str) -> list:
        state = await self.graph.aget_state({"configurable": {"thread_id": thread_id}})
        return list(state.values.get("messages", [])) if state and state.values else []


_END = object()


def _chunk_text(chunk: AIMessage) -> str:
    if isinstance(chunk.content, str):
        return chunk.content
    return "".join(p.get("text", "") for p in chunk.content
                   if isinstance(p, dict) and p.get("type", "text") == "text")
