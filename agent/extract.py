"""Rendered HTML to a compact Markdown view: metadata, main content, and list items.

trafilatura finds the main content (no header, footer, sidebars, comments). A page whose main
content is a list (an author's articles, search results) loses its items in that step, so list
items are found separately: the largest group of repeated `<article>` or `<li>` elements that
carry links, outside header/footer/nav/aside, each kept with its numbers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urljoin

import lxml.html
from lxml import etree
import trafilatura
from markdownify import markdownify

_SPACES = re.compile(r"[ \t\u3000]+")
_BLANK_LINES = re.compile(r"\n{3,}")
_MIN_LIST_ITEMS = 5
_MAX_ITEM_CHARS = 300
_CHROME_TAGS = ("header", "footer", "nav", "aside")


@dataclass(frozen=True)
class Extracted:
    title: str
    metadata: dict[str, str]
    content: str
    items: list[str]


def extract(html: str, url: str, title: str = "") -> Extracted:
    metadata: dict[str, str] = {}
    doc = trafilatura.extract_metadata(html, default_url=url)
    if doc is not None:
        for key in ("author", "date", "sitename", "description"):
            value = getattr(doc, key, None)
            if value:
                metadata[key] = str(value)[:300]
        title = title or (doc.title or "")
    content = trafilatura.extract(html, url=url, output_format="markdown", include_links=False,
                                  include_images=False, include_comments=False, include_tables=True,
                                  favor_recall=True, deduplicate=True) or ""
    return Extracted(title=clean_text(title), metadata=metadata, content=tidy(content),
                     items=list_items(html, url))


def list_items(html: str, base_url: str) -> list[str]:
    try:
        root = lxml.html.fromstring(html)
    except (etree.ParserError, ValueError):
        return []
    groups: list[list[lxml.html.HtmlElement]] = [
        [a for a in root.iter("article") if not _inside(a, ("article", *_CHROME_TAGS))],
    ]
    for parent in root.iter("ul", "ol"):
        if not _inside(parent, _CHROME_TAGS):
            groups.append([li for li in parent if li.tag == "li"])
    best: list[str] = []
    for group in groups:
        items = [line for line in (_item_line(el, base_url) for el in group) if line]
        if len(items) >= _MIN_LIST_ITEMS and len(items) > len(best):
            best = items
    return best


def _item_line(element: lxml.html.HtmlElement, base_url: str) -> str | None:
    links = [a for a in element.iter("a") if a.get("href")]
    if not links:
        return None
    main = max(links, key=lambda a: len(a.text_content()))
    text = clean_text(" ".join(element.itertext()))[:_MAX_ITEM_CHARS]
    if not text:
        return None
    return f"- {text} <{urljoin(base_url, main.get('href'))}>"


def _inside(element: lxml.html.HtmlElement, tags: tuple[str, ...]) -> bool:
    return any(parent.tag in tags for parent in element.iterancestors())


def html_fragment_to_markdown(html: str) -> str:
    """An article body (trusted structure, untrusted text) as Markdown, without images."""
    return tidy(markdownify(html, heading_style="ATX", strip=["img", "script", "style", "iframe"]))


def clean_text(text: str) -> str:
    return _SPACES.sub(" ", " ".join(text.split("\n"))).strip()


def tidy(markdown: str) -> str:
    lines = [line.rstrip() for line in markdown.splitlines()]
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()
