"""The LangGraph graph: model ⇄ tools, then a compaction step that keeps the thread small.

    START → model ─(tool calls)→ tools → model …
                  └(answer)──→ compact → END

`compact` replaces the turn's tool results (page text) with the one-line notes the tools left as
artifacts, so the checkpointed history holds what was read and where, not the pages themselves.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import aiohttp
import httpx
from langchain_core.exceptions import (ModelAPIError, ModelConnectionError, ModelRateLimitError,
                                       ModelTimeoutError)
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition

from agent.pages import PageReader, Source
from agent.prompts import SYSTEM_PROMPT
from agent.tools import ProgressCallback, RunContext, build_tools, current_run

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


@dataclass(frozen=True)
class AgentReply:
    text: str
    sources: list[Source]


def message_text(message: AIMessage) -> str:
    """The text of a model message, whichever content shape the provider used."""
    if isinstance(message.content, str):
        return message.content.strip()
    parts = [p.get("text", "") if isinstance(p, dict) else str(p) for p in message.content]
    return "".join(parts).strip()


def recent_turns(messages: list[BaseMessage], budget: int) -> list[BaseMessage]:
    """The current turn, and as many whole earlier turns as fit in `budget` characters, so a
    thread of hundreds of turns still fits the model. The stored history keeps everything."""
    starts = [i for i, m in enumerate(messages) if isinstance(m, HumanMessage)]
    if not starts:
        return messages
    keep = starts[-1]
    used = sum(len(str(m.content)) for m in messages[keep:])
    for start, end in zip(reversed(starts[:-1]), reversed(starts[1:]), strict=True):
        size = sum(len(str(m.content)) for m in messages[start:end])
        if used + size > budget:
            break
        keep, used = start, used + size
    return messages[keep:]


def build_graph(model: BaseChatModel, tools: list, checkpointer: BaseCheckpointSaver | None,
                retry: RetryPolicy = RetryPolicy(), history_budget: int = 40_000):
    bound = model.bind_tools(tools).with_retry(
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
        notes = [
            ToolMessage(content=m.artifact, tool_call_id=m.tool_call_id, name=m.name, id=m.id)
            for m in state["messages"]
            if isinstance(m, ToolMessage) and isinstance(m.artifact, str) and m.content != m.artifact
        ]
        return {"messages": notes}

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
    """Runs one turn of a thread: the user's message in, the answer out."""

    def __init__(self, model: BaseChatModel, reader: PageReader, checkpointer: BaseCheckpointSaver | None,
                 *, max_urls: int = 5, max_steps: int = 24, retry: RetryPolicy = RetryPolicy()) -> None:
        self.reader = reader
        self.max_urls = max_urls
        self.max_steps = max_steps
        self.tools = build_tools(reader)
        self.graph = build_graph(model, self.tools, checkpointer, retry)

    async def run(self, thread_id: str, text: str, on_progress: ProgressCallback | None = None) -> AgentReply:
        run = RunContext(on_progress=on_progress, max_urls=self.max_urls)
        token = current_run.set(run)
        try:
            state = await self.graph.ainvoke(
                {"messages": [HumanMessage(text)]},
                {"configurable": {"thread_id": thread_id}, "recursion_limit": self.max_steps},
            )
        finally:
            current_run.reset(token)
        final = state["messages"][-1]
        answer = message_text(final) if isinstance(final, AIMessage) else ""
        if not answer:
            answer = " ".join(run.errors) or "I could not find an answer to that."
        return AgentReply(text=answer, sources=list(run.sources))

    async def history(self, thread_id: str) -> list:
        state = await self.graph.aget_state({"configurable": {"thread_id": thread_id}})
        return list(state.values.get("messages", [])) if state and state.values else []
