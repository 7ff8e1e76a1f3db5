"""Rendered HTML to a compact view: metadata, main content, and a list only where it is the content.

trafilatura finds the main content with its default settings (no header, footer, sidebars,
comments; plain text, since Markdown emphasis and escapes split sentences). A page whose content
*is* a list (an author's or a tag's articles, search results, an index) also gets a list
section: the largest group of repeated `<article>` or `<li>` elements whose links carry titles,
each kept with its numbers and its link. The group is shown only on evidence that it is the
page's content: trafilatura itself took the list's titles as main content, or the page is not
an article and its main content is short next to the list. Menus, related-article rails, tag
clouds, share bars and comment lists are not: they sit in page chrome (header, footer, nav,
aside, or a container named for them), their links are single words, or they sit beside an
article that is the content.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass, field
from urllib.parse import urljoin

import lxml.html
from lxml import etree
import trafilatura
from markdownify import markdownify

_SPACES = re.compile(r"[ \t\u3000]+")
_BLANK_LINES = re.compile(r"\n{3,}")
_MIN_LIST_ITEMS = 5
_MAX_ITEM_CHARS = 300
_MAX_METADATA_CHARS = {"author": 100, "date": 40, "sitename": 100, "description": 300}
_CHROME_TAGS = ("header", "footer", "nav", "aside")
_HTML_PARSER = lxml.html.HTMLParser(encoding="utf-8")
# Containers named for page chrome: their lists are never the page's content.
_CHROME_NAME = re.compile(
    r"(?:^|[\s_-])(?:related|recommend\w*|popular|trending|most|more|also|next|share|sharing|social"
    r"|comments?|discuss\w*|menu\w*|nav\w*|sidebar|side|widget\w*|footer|header|breadcrumbs?"
    r"|tagcloud|cloud|promo\w*|ads?|advert\w*|newsletter|banner)(?:$|[\s_-])",
    re.I)
# An entry's title: at least this many characters (half as many in scripts without spaces).
_MIN_TITLE_CHARS = 16
_TITLED_SHARE = 0.6  # of the entries
_IN_CONTENT_SHARE = 0.5  # of the titles found in trafilatura's main content: the list is the content
_LIST_SHARE_OF_CONTENT = 0.5  # a list with less text than this share of the main content is part of it
_SHORT_CONTENT_RATIO = 0.5  # main content shorter than this share of the list's text: the list is


@dataclass(frozen=True)
class Extracted:
    title: str
    metadata: dict[str, str]
    content: str
    items: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Entry:
    line: str  # "- text <url>"
    title: str  # the longest text in its main link
    href: str
    text_chars: int


_WARM_UP_PAGE = ("<html><head><title>Warm-up</title></head><body><main><h1>Articles</h1><ul>"
                 + "".join(f'<li><a href="/a/{n}">Article number {n}</a> 2ヶ月前 2025年1月{n}日</li>'
                           for n in range(1, 9))
                 + "</ul></main></body></html>")


@functools.cache
def warm_up() -> None:
    """Load once what the first extraction would otherwise load inside a page's deadline
    (justext's stop lists, the list of top-level domains): about 0.3 s of CPU, once per process
    (every page reader asks for it; a fork inherits it done)."""
    extract(_WARM_UP_PAGE, "https://example.com/")
    extract("<html><body><p>Short.</p></body></html>", "http://127.0.0.1/")  # justext, the TLD list


def extract(html: str, url: str, title: str = "") -> Extracted:
    """The page's title, short metadata lines, main content, and its list when the list is the
    content. Never raises on bad HTML: an unreadable page gives empty fields."""
    metadata: dict[str, str] = {}
    pagetype = ""
    # Dates from markup, structured data and the URL only: the extensive search runs dateparser
    # over free text in ~200 locales (2.7 CPU-s to load, once per process) and found no other
    # date on 249 of the 250 evaluation pages.
    doc = trafilatura.extract_metadata(html, default_url=url, extensive=False)
    if doc is not None:
        for key, limit in _MAX_METADATA_CHARS.items():
            value = clean_text(str(getattr(doc, key, None) or ""))
            if value:
                metadata[key] = value[:limit]
        title = title or (doc.title or "")
        pagetype = (doc.pagetype or "").lower()
    # No `deduplicate`: its cache is process-wide, so a second read of a page would lose text.
    content = trafilatura.extract(html, url=url, output_format="txt", include_comments=False,
                                  include_tables=True, include_links=False, include_images=False) or ""
    content = tidy(content)
    return Extracted(title=clean_text(title), metadata=metadata, content=content,
                     items=list_items(html, url, content, is_article=pagetype == "article"))


def page_view(found: Extracted, url: str, list_note: str = "") -> str:
    """The page as the agent reads it: title, URL, one line per metadata field, the main content,
    and the list section when there is one (`list_note` says how whole the list is)."""
    sections = [f"# {found.title or url}", f"URL: {url}"]
    sections += [f"{key}: {value}" for key, value in found.metadata.items()]
    if found.content:
        sections += ["", "## Main content", found.content]
    if found.items:
        sections += ["", f"## List items ({len(found.items)})", *([list_note] if list_note else []), *found.items]
    if not found.content and not found.items:
        sections += ["", "(the page has no readable text)"]
    return "\n".join(sections)


def list_items(html: str, base_url: str, content: str = "", is_article: bool = False) -> list[str]:
    """The lines of the page's main list ("- text <url>"), or [] when its largest list of
    titled links is not the page's content (see the module docstring)."""
    try:  # as bytes: lxml refuses a str that starts with an XML encoding declaration
        root = lxml.html.fromstring(html.encode("utf-8"), parser=_HTML_PARSER)
    except (etree.ParserError, ValueError):
        return []
    etree.strip_elements(root, "script", "style", "noscript", "template", with_tail=False)
    best: list[_Entry] = []
    for group in _candidate_groups(root):
        entries = [entry for entry in (_entry(el, base_url) for el in group) if entry]
        if len(entries) >= _MIN_LIST_ITEMS and _titled(entries) and len(entries) > len(best):
            best = entries
    if not best or not _is_the_content(best, content, is_article):
        return []
    return [entry.line for entry in best]


def _candidate_groups(root: lxml.html.HtmlElement) -> list[list[lxml.html.HtmlElement]]:
    groups = [[a for a in root.iter("article")
               if not _inside(a, ("article", *_CHROME_TAGS)) and not _in_chrome_container(a)]]
    for parent in root.iter("ul", "ol"):
        if not _inside(parent, _CHROME_TAGS) and not _in_chrome_container(parent):
            groups.append([li for li in parent if li.tag == "li"])
    return groups


def _entry(element: lxml.html.HtmlElement, base_url: str) -> _Entry | None:
    links = [a for a in element.iter("a") if a.get("href") and not a.get("href", "").startswith("#")]
    if not links:
        return None
    main = max(links, key=lambda a: len(clean_text(a.text_content())))
    text = clean_text(" ".join(element.itertext()))[:_MAX_ITEM_CHARS]
    if not text:
        return None
    pieces = [clean_text(piece) for piece in main.itertext()]
    title = max(pieces, key=len, default="")
    href = urljoin(base_url, main.get("href"))
    return _Entry(line=f"- {text} <{href}>", title=title, href=href, text_chars=len(text))


def _titled(entries: list[_Entry]) -> bool:
    """Most entries link with a title (not a menu's single words), each to its own page."""
    titled = sum(1 for e in entries if _title_weight(e.title) >= _MIN_TITLE_CHARS)
    distinct = len({e.href for e in entries})
    return titled >= _TITLED_SHARE * len(entries) and distinct >= _TITLED_SHARE * len(entries)


def _title_weight(text: str) -> int:
    """Length in characters, wide (CJK) characters counting twice: 16 Latin ≈ 8 Japanese."""
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def _is_the_content(entries: list[_Entry], content: str, is_article: bool) -> bool:
    list_chars = sum(e.text_chars for e in entries)
    if list_chars < _LIST_SHARE_OF_CONTENT * len(content):
        return False  # a list inside a longer text (references, bullet points) is in the content
    flat = _flat(content)
    found = sum(1 for e in entries if e.title and _flat(e.title) in flat)
    if found >= _IN_CONTENT_SHARE * len(entries):
        return True  # trafilatura itself took the list as the page's main content
    return not is_article and len(content) < _SHORT_CONTENT_RATIO * list_chars


def _flat(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _inside(element: lxml.html.HtmlElement, tags: tuple[str, ...]) -> bool:
    return any(parent.tag in tags for parent in element.iterancestors())


def _in_chrome_container(element: lxml.html.HtmlElement) -> bool:
    for node in (element, *element.iterancestors()):
        if node.tag in ("body", "main"):
            return False
        name = f"{node.get('class', '')} {node.get('id', '')} {node.get('role', '')}"
        if name.strip() and _CHROME_NAME.search(name):
            return True
    return False


def html_fragment_to_markdown(html: str) -> str:
    """An article body (trusted structure, untrusted text) as Markdown, without images."""
    return tidy(markdownify(html, heading_style="ATX", strip=["img", "script", "style", "iframe"]))


def clean_text(text: str) -> str:
    return _SPACES.sub(" ", " ".join(text.split("\n"))).strip()


def tidy(markdown: str) -> str:
    lines = [line.rstrip() for line in markdown.splitlines()]
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()
