"""How fast the answers of one Slack workspace may stream, together.

Slack counts Web API calls per method, app and workspace per minute; `chat.appendStream` is
Tier 4 (100+ a minute, with generous bursts). The stream calls of a workspace (start and append
together, so each method on its own stays within it too) share one token bucket: `burst` calls
at once, then one per `gap` s; with the defaults (`rules.WORKSPACE_STREAM_BURST`,
`rules.WORKSPACE_STREAM_GAP`) no minute holds more than 100. A new answer's first text goes
before further appends of answers already showing: while an answer waits to open its stream,
the appends of the others leave it the next token.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class StreamPacer:
    def __init__(self, gap: float, clock: Callable[[], float] = time.monotonic, *, burst: int = 1) -> None:
        if gap <= 0 or burst < 1:
            raise ValueError("a stream pacer needs a gap above 0 and a burst of at least 1")
        self._gap = gap
        self._burst = burst
        self._clock = clock
        self._tokens: dict[str, float] = {}
        self._filled_at: dict[str, float] = {}
        self._opening: dict[str, int] = {}  # answers with text that wait for their first call

    def take(self, workspace: str, *, first: bool = False) -> bool:
        """True (and the call counted) when a stream call may go now; False: keep the text for
        later. `first`: the call opens an answer's stream (it goes before appends)."""
        tokens = self._fill(workspace)
        reserved = 0 if first else self._opening.get(workspace, 0)
        if tokens - reserved < 1:
            return False
        self._tokens[workspace] = tokens - 1
        return True

    def waiting(self, workspace: str, opening: bool) -> None:
        """An answer of `workspace` has text to open its stream with (`opening`), or no longer."""
        count = self._opening.get(workspace, 0) + (1 if opening else -1)
        if count > 0:
            self._opening[workspace] = count
        else:
            self._opening.pop(workspace, None)

    def _fill(self, workspace: str) -> float:
        now = self._clock()
        if workspace not in self._tokens:
            if len(self._tokens) >= 1024:  # forget workspaces whose bucket is full again
                self._forget_full(now)
            self._tokens[workspace], self._filled_at[workspace] = float(self._burst), now
        tokens = min(self._burst, self._tokens[workspace] + (now - self._filled_at[workspace]) / self._gap)
        self._tokens[workspace], self._filled_at[workspace] = tokens, now
        return tokens

    def _forget_full(self, now: float) -> None:
        for workspace in list(self._tokens):
            full = self._tokens[workspace] + (now - self._filled_at[workspace]) / self._gap >= self._burst
            if full and workspace not in self._opening:
                del self._tokens[workspace], self._filled_at[workspace]
