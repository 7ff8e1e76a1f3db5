"""URLs from pages, made safe to show in a chat message.

A URL comes from a page or from the model; it may hold what a chat platform reads as markup:
`<…>` (Slack mentions and links, Discord's preview-suppressing brackets), `@everyone`, spaces
that end a Markdown link. `display_url` percent-encodes all of it, so a URL stays one link and
says nothing to the platform; the platforms' neutralisation then runs over the whole message.
"""

from __future__ import annotations

import re
from urllib.parse import quote

# What RFC 3986 allows unencoded, except "@" (a mention) and "(" ")" (they end a Markdown link);
# everything else ("<", ">", "|", "`", spaces, controls, non-ASCII) is encoded.
_SAFE_AFTER_HOST = "/?#[]!$&'+,;=%:-."
_AUTHORITY = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*://[^/?#\s<>@]*)(.*)$", re.S)


def display_url(url: str) -> str:
    """`url` with every character that is not plainly part of a URL percent-encoded (after the
    host; a host with anything odd is encoded whole). Non-ASCII text is encoded as UTF-8."""
    match = _AUTHORITY.match(url)
    head, rest = (match.group(1), match.group(2)) if match else ("", url)
    return head + quote(rest, safe=_SAFE_AFTER_HOST + "~_*")  # "~_*" kept: common in real paths
