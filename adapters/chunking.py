"""Split an answer into messages no longer than a platform's limit.

Fills each message with whole lines (a line longer than a message is cut at a space, else
anywhere); a cut inside a fenced code block closes the fence at the end of the piece and reopens
it, with its language, in the next.
"""

from __future__ import annotations

import re

_FENCE = re.compile(r"^\s*(```+|~~~+)(.*)$")


def split_message(text: str, limit: int) -> list[str]:
    if limit < 40:
        raise ValueError("limit too small to split sensibly")
    chunks: list[str] = []
    fence: str | None = None  # the opening fence line while inside a code block
    current = ""
    for line in text.split("\n"):
        for piece in _hard_wrap(line, limit - 20):
            closing = "\n```" if fence else ""
            candidate = f"{current}\n{piece}" if current else piece
            if len(candidate) + len(closing) > limit and current:
                chunks.append(current + closing)
                current = f"{fence}\n{piece}" if fence else piece
            else:
                current = candidate
        match = _FENCE.match(line)
        if match:
            fence = None if fence else line.strip()
    if current.strip():
        chunks.append(current + ("\n```" if fence else ""))
    return [c.strip("\n") for c in chunks if c.strip()] or [""]


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
