"""What crosses between the conversation service and the adapters: the question (`Ask`), the
events of its run, and the `Reply`. Adapters import these from here, never from `agent/`; the
module has no heavy imports, so the adapters' pure rules load without a browser or a model."""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.events import AnswerDelta, AnswerReset, Progress
from agent.types import Source, TokenUsage

__all__ = ["Ask", "Reply", "Started", "Progress", "AnswerDelta", "AnswerReset", "Done", "Event", "Source",
           "TokenUsage"]


@dataclass(frozen=True)
class Ask:
    """One message to answer. `workspace` is the Discord server or Slack workspace (the key of
    the daily token budget); empty for the console and direct messages. `reply_to` is kept with
    the run until it ends, for `bot.recovery` (an adapter that later posts a better place, e.g.
    its status message, calls `ConversationService.update_reply_to(run_id, …)`)."""

    thread_id: str
    user_id: str
    text: str
    platform: str = "console"
    workspace: str = ""
    reply_to: str = ""  # where to tell the asker if the process dies mid-run (opaque to bot/)


@dataclass(frozen=True)
class Reply:
    text: str
    sources: list[Source] = field(default_factory=list)
    ok: bool = True
    usage: list[TokenUsage] = field(default_factory=list)
    run_id: str = ""
    stopped: bool = False  # ended by a Stop request


@dataclass(frozen=True)
class Started:
    """The run was accepted; `run_id` names it for `cancel`."""

    run_id: str


@dataclass(frozen=True)
class Done:
    reply: Reply


Event = Started | Progress | AnswerDelta | AnswerReset | Done
