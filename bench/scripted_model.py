"""A chat model that follows a script instead of calling an LLM, and measures every prompt.

Used by `zennbot bench` (the prototype's path) and by the tests. It is a real LangChain chat
model: tools are bound with `bind_tools`, the graph calls it as it would call Gemini, and each
call's prompt (system prompt, tool schemas, history, tool results) is recorded.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import Field

Policy = Callable[[list[BaseMessage]], AIMessage]


@dataclass(frozen=True)
class PromptRecord:
    prompt: str  # everything sent, as text
    reply: AIMessage
    started: float
    finished: float

    @property
    def chars(self) -> int:
        return len(self.prompt)


def prompt_text(messages: list[BaseMessage], tools: list[dict] | None) -> str:
    """What a provider receives, as text: tool schemas, then each message with its tool calls."""
    parts = [json.dumps(tools, ensure_ascii=False)] if tools else []
    for message in messages:
        content = message.content if isinstance(message.content, str) else json.dumps(message.content,
                                                                                     ensure_ascii=False)
        parts.append(content)
        calls = getattr(message, "tool_calls", None)
        if calls:
            parts.append(json.dumps([{"name": c["name"], "args": c["args"]} for c in calls], ensure_ascii=False))
    return "\n".join(parts)


class ScriptedChatModel(BaseChatModel):
    policy: Policy
    records: list[PromptRecord] = Field(default_factory=list)

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def bind_tools(self, tools: list, **kwargs: Any):
        return self.bind(tools=[convert_to_openai_tool(t) for t in tools], **kwargs)

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: Any = None, **kwargs: Any) -> ChatResult:
        started = time.perf_counter()
        reply = self.policy(messages)
        self.records.append(PromptRecord(prompt_text(messages, kwargs.get("tools")), reply, started,
                                         time.perf_counter()))
        return ChatResult(generations=[ChatGeneration(message=reply)])


def current_turn(messages: list[BaseMessage]) -> tuple[int, HumanMessage, list[BaseMessage]]:
    """(index of the turn from 0, its user message, what the model and tools did since)."""
    humans = [i for i, m in enumerate(messages) if isinstance(m, HumanMessage)]
    last = humans[-1]
    return len(humans) - 1, messages[last], messages[last + 1:]


def tool_call(name: str, **args: Any) -> AIMessage:
    return AIMessage(content="", tool_calls=[{"name": name, "args": args,
                                              "id": f"call_{time.perf_counter_ns()}", "type": "tool_call"}])
