"""What a run of the agent tells the world while it works, in order.

`Progress` lines say what it is doing ("reading https://…"). `AnswerDelta` is answer text as the
model writes it; `AnswerReset` says that the text since the last reset was not the answer after
all (the model call went on to call a tool, or was retried), so a chat shows it no longer. The
run ends with an `AgentReply`, whose text is the whole answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.types import Source, TokenUsage


@dataclass(frozen=True)
class Progress:
    text: str


@dataclass(frozen=True)
class AnswerDelta:
    text: str


@dataclass(frozen=True)
class AnswerReset:
    pass


@dataclass(frozen=True)
class AgentReply:
    text: str
    sources: list[Source]
    usage: list[TokenUsage] = field(default_factory=list)


AgentEvent = Progress | AnswerDelta | AnswerReset
