"""What a channel can follow: a Zenn author, a topic, a publication, or the trend.

A target is written as a Zenn URL (`https://zenn.dev/catnose99`, `/topics/nextjs`, `/p/NAME`,
`/feed`), as `kind:name` (`topic:nextjs`), as the word `trending`, or as a plain name that is
resolved against Zenn (「Next.js」→ topic `nextjs`, `catnose99` → author).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from urllib.parse import urlsplit

KINDS = ("user", "topic", "publication", "trending")
_NAME = re.compile(r"^[\w.-]{1,60}$")
_RESERVED = {"articles", "books", "scraps", "topics", "search", "about", "terms", "privacy", "faq", "p",
             "manual", "events", "publications", "api", "tech-or-idea", "mediakit", "dashboard", "settings",
             "enter", "login", "notifications", "trendingtopics", "feed"}
_TRENDING_WORDS = {"trending", "trend", "トレンド", "zenn"}


@dataclass(frozen=True)
class Target:
    kind: str  # one of KINDS
    name: str  # the slug ("" for trending)

    @property
    def key(self) -> str:
        """One string per target: `topic:nextjs`, `user:catnose99`, `trending`."""
        return self.kind if self.kind == "trending" else f"{self.kind}:{self.name}"

    @property
    def feed_path(self) -> str:
        """The RSS feed of the target, under the Zenn base URL."""
        return {"user": f"/{self.name}/feed", "topic": f"/topics/{self.name}/feed",
                "publication": f"/p/{self.name}/feed", "trending": "/feed"}[self.kind]

    def page_url(self, base_url: str) -> str:
        base = base_url.rstrip("/")
        return {"user": f"{base}/{self.name}", "topic": f"{base}/topics/{self.name}",
                "publication": f"{base}/p/{self.name}", "trending": base}[self.kind]

    def label(self, display: str = "") -> str:
        """How the target is named in chat: 「トピック Next.js (nextjs)」 style, in English."""
        shown = f"{display} ({self.name})" if display and display != self.name else self.name
        return {"user": f"author {shown}", "topic": f"topic {shown}", "publication": f"publication {shown}",
                "trending": "Zenn's trending articles"}[self.kind]

    @classmethod
    def from_key(cls, key: str) -> Target:
        kind, _, name = key.partition(":")
        return cls(kind, name)


def parse_target(text: str, base_url: str = "https://zenn.dev") -> Target | str | None:
    """A target the text names for sure (a URL, `kind:name`, `trending`), a plain name to resolve
    (str), or None when the text cannot name a target (another site, an empty string)."""
    text = unicodedata.normalize("NFKC", (text or "").strip()).strip("<>")
    if not text:
        return None
    if text.lower() in _TRENDING_WORDS:
        return Target("trending", "")
    if re.match(r"^https?://", text, re.I):
        return _from_url(text, base_url)
    if text.startswith("/"):
        return _from_path(text)
    kind, sep, name = text.partition(":")
    if sep and kind.lower() in ("user", "author", "topic", "publication", "p") and _NAME.match(name.strip()):
        kind = {"author": "user", "p": "publication"}.get(kind.lower(), kind.lower())
        return Target(kind, name.strip().lower() if kind == "topic" else name.strip())
    return text.lstrip("@#")


def _from_url(url: str, base_url: str) -> Target | None:
    parts, base = urlsplit(url), urlsplit(base_url)
    if parts.netloc.lower() not in (base.netloc.lower(), "zenn.dev", "www.zenn.dev"):
        return None
    return _from_path(parts.path)


def _from_path(path: str) -> Target | None:
    segments = [s for s in path.split("/") if s]
    if segments and segments[-1] == "feed":
        segments = segments[:-1]
    if not segments:
        return Target("trending", "")
    if segments[0] == "topics" and len(segments) == 2:
        return Target("topic", segments[1].lower())
    if segments[0] == "p" and len(segments) >= 2:
        return Target("publication", segments[1])
    if len(segments) == 1 and segments[0].lower() not in _RESERVED and _NAME.match(segments[0]):
        return Target("user", segments[0])
    return None


def topic_slug(name: str) -> str:
    """Zenn's topic slug for a display name: lower case, no spaces or dots (「Next.js」→ `nextjs`,
    「生成AI」→ `生成ai`)."""
    return re.sub(r"[\s.・]+", "", unicodedata.normalize("NFKC", name)).lower()
