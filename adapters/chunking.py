"""Split an answer into messages no longer than a platform's limit.

Fills each message with whole lines and, outside code, ends it at a paragraph break when one
lies in its second half. A line longer than a message is cut at a space, else anywhere. A cut
inside a fenced code block closes the fence at the end of the piece and reopens it, with its
language, in the next.
"""

from __future__ import annotations

import re

_FENCE = re.compile(r"^\s*(```+|~~~+)")
_CLOSE = "```"


def split_message(text: str, limit: int) -> list[str]:
    if limit < 40:
        raise ValueError("limit too small to split sensibly")
    chunks: list[str] = []
    lines: list[str] = []  # the message being filled
    fence: str | None = None  # the opening fence line while inside a code block

    for line in text.split("\n"):
        toggles = bool(_FENCE.match(line))
        open_after = (fence is None) if toggles else (fence is not None)
        for piece in _hard_wrap(line, limit - 2 * len(_CLOSE) - 20):
            closing = len(_CLOSE) + 1 if open_after else 0
            if lines and len("\n".join([*lines, piece])) + closing > limit:
                carry = _paragraph_tail(lines, limit) if fence is None else []
                if len("\n".join([*carry, piece])) + closing > limit:
                    carry = []  # the tail and the next piece would not fit together either
                kept = lines[: len(lines) - len(carry)] if carry else lines
                chunks.append("\n".join(kept).strip("\n") + (f"\n{_CLOSE}" if fence else ""))
                lines = [fence] if fence else carry
            lines.append(piece)
        if toggles:
            fence = None if fence else line.strip()
    if "\n".join(lines).strip():
        chunks.append("\n".join(lines).strip("\n") + (f"\n{_CLOSE}" if fence else ""))
    return [c for c in chunks if c.strip()] or [""]


def _paragraph_tail(lines: list[str], limit: int) -> list[str]:
    """The lines after the last paragraph break in the second half of the message, when that
    tail holds no code fence; else [] (cut at the line end)."""
    length = 0
    breaks = []
    for index, line in enumerate(lines):
        if not line.strip() and length >= limit // 2:
            breaks.append(index)
        length += len(line) + 1
    for index in reversed(breaks):
        tail = lines[index + 1:]
        if not any(_FENCE.match(line) for line in tail):
            return tail
    return []


def _hard_wrap(line: str, size: int) -> list[str]:
    if len(line) <= size:
        return [line]
    pieces = []
    while len(line) > size:
        cut = line.rfind(" ", size // 2, size)
        cut = cut if cut > 0 else size
        pieces.append(line[:cut])
        line = line[cut:].lstrip(" ")
    return pieces + [line]
