"""Plain records that cross layers: what an answer rests on, what a run cost, a cached page.
No heavy imports here, so the bot's and the adapters' pure modules can use them without
pulling in a browser or a model client."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Source:
    """A page an answer rests on, as chat messages list it."""

    url: str
    title: str
    summary: str  # e.g. "921 likes · 344 bookmarks"; may be empty


@dataclass(frozen=True)
class CachedPage:
    url: str
    title: str
    text: str
    source: str  # "zenn-api" or "browser"
    summary: str
    fetched_at: float

    def as_source(self) -> Source:
        return Source(self.url, self.title, self.summary)


@dataclass(frozen=True)
class TokenUsage:
    """Tokens one model used in a run, as the model reported them (`usage_metadata`); `estimated`
    when a call was cut off before it reported them all (see `agent.usage`)."""

    model: str
    input_tokens: int
    output_tokens: int
    estimated: bool = False
