"""What a run's model calls cost: `UsageCollector` adds up the tokens each call reported, also
for calls of a run that later fails or is stopped (they were spent all the same).

A call cut off before it ended (a Stop, a timeout, a shutdown mid-stream) reported nothing or
only part of its usage: it counts with what it reported so far, or else with an estimate from
the characters it was sent and wrote (about `CHARS_PER_TOKEN` a token), and either way as
`TokenUsage(estimated=True)`. A call the model refused (an HTTP error before any output) costs
nothing.
"""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.outputs import LLMResult

from agent.types import TokenUsage

CHARS_PER_TOKEN = 4  # a rough, deliberately generous figure: Japanese text has fewer characters a token


class UsageCollector(BaseCallbackHandler):
    """Collects the usage of one run's model calls (a LangChain callback).

    It runs inline, in the event loop: a plain handler would be called in a worker thread for
    every event of every run (each chunk, each step), and in a burst those thread hops starve
    the loop. Only the model's events reach it."""

    run_inline = True
    ignore_chain = True
    ignore_agent = True
    ignore_retriever = True
    ignore_retry = True
    ignore_custom_event = True

    def __init__(self) -> None:
        self.by_model: dict[str, list[int]] = {}  # reported: model -> [input, output]
        self.estimated: dict[str, list[int]] = {}  # cut off: model -> [input, output]
        self._open: dict[UUID, _Call] = {}  # calls started and not ended yet

    def on_chat_model_start(self, serialized: dict[str, Any], messages: list[list[Any]], *, run_id: UUID,
                            metadata: dict[str, Any] | None = None, **kwargs: Any) -> None:
        chars = sum(len(str(getattr(m, "content", m))) for batch in messages for m in batch)
        model = (metadata or {}).get("ls_model_name") or "unknown"
        self._open[run_id] = _Call(model, chars)

    def on_llm_new_token(self, token: str, *, run_id: UUID, **kwargs: Any) -> None:
        if (call := self._open.get(run_id)) is not None:
            call.output_chars += len(token)

    def on_llm_end(self, response: LLMResult, *, run_id: UUID | None = None, **kwargs: Any) -> None:
        self._open.pop(run_id, None)
        for model, i, o in _reported(response):
            _add(self.by_model, model, i, o)

    def on_llm_error(self, error: BaseException, *, run_id: UUID | None = None,
                     response: LLMResult | None = None, **kwargs: Any) -> None:
        call = self._open.pop(run_id, None)
        reported = _reported(response) if response is not None else []
        cut_off = isinstance(error, (asyncio.CancelledError, TimeoutError)) or (call and call.output_chars)
        if reported:
            for model, i, o in reported:
                _add(self.estimated if cut_off else self.by_model, model, i, o)
        elif cut_off and call is not None:
            self._estimate(call)

    def usage(self) -> list[TokenUsage]:
        """The run's usage so far: reported figures, then estimates (calls cut off, or still open)."""
        for call in self._open.values():
            self._estimate(call)
        self._open.clear()
        return ([TokenUsage(model, i, o) for model, (i, o) in self.by_model.items()]
                + [TokenUsage(model, i, o, estimated=True) for model, (i, o) in self.estimated.items()])

    def _estimate(self, call: _Call) -> None:
        _add(self.estimated, call.model, -(-call.input_chars // CHARS_PER_TOKEN),
             -(-call.output_chars // CHARS_PER_TOKEN))


class _Call:
    def __init__(self, model: str, input_chars: int) -> None:
        self.model = model
        self.input_chars = input_chars
        self.output_chars = 0


def _reported(response: LLMResult) -> list[tuple[str, int, int]]:
    found = []
    for generations in response.generations:
        for generation in generations:
            message = getattr(generation, "message", None)
            usage = getattr(message, "usage_metadata", None)
            if not usage:
                continue
            model = (message.response_metadata or {}).get("model_name") or "unknown"
            found.append((model, usage.get("input_tokens", 0), usage.get("output_tokens", 0)))
    return found


def _add(totals: dict[str, list[int]], model: str, input_tokens: int, output_tokens: int) -> None:
    row = totals.setdefault(model, [0, 0])
    row[0] += input_tokens
    row[1] += output_tokens
