"""Text as written, in every encoding: the charset is decided once (BOM, header, <meta>, else
detected) and the browser path gets the same decision. Japanese pages read through the real
reader (guard proxy, real Chromium)."""

from __future__ import annotations

import codecs
from contextlib import asynccontextmanager

import pytest
import pytest_asyncio
from aiohttp import web

from agent.charset import decide_charset, decode_html
from bench.replica import ReplicaOptions, ReplicaServer
from bot.runtime import open_browsing
from tests.helpers import TRUSTED_REPLICA, make_settings

SENTENCE = "日本語の文章を正しく読めるかを確かめる段落です。全角の「かっこ」も含みます。"
# Past 800 characters, the server's HTML holds the page; with too little text, the browser reads it.
LONG = "".join(f"<p>第{n}段落：{SENTENCE}</p>" for n in range(1, 31))
SHORT = f"<p>{SENTENCE}</p>"
DRAWN_SCRIPT = (f"document.getElementById('root').innerHTML = '<main><article><h1>描かれた記事</h1>' + "
                f"Array.from({{length: 30}}, (_, i) => '<p>第' + (i + 1) + '段落：{SENTENCE}</p>').join('') + "
                f"'</article></main>';")


def page(body: str, head: str = "") -> str:
    return f"<html><head>{head}<title>日本語のページ</title></head><body>{body}</body></html>"


def drawn(head: str = "", external: bool = False) -> str:
    script = '<script src="/enc/app.js"></script>' if external else f"<script>{DRAWN_SCRIPT}</script>"
    return page(f'<div id="root"></div>{script}', head)


META_SJIS = '<meta charset="Shift_JIS">'
HTTP_EQUIV_SJIS = '<meta http-equiv="Content-Type" content="text/html; charset=Shift_JIS">'
# path: (HTML, encoding of its bytes, Content-Type header, the reader that reads it)
PAGES = {
    "utf8-undeclared-static": (page(f"<main><article>{LONG}</article></main>"), "utf-8", "text/html", "server-html"),
    "utf8-undeclared-short": (page(f"<main><article>{SHORT}</article></main>"), "utf-8", "text/html", "browser"),
    "utf8-undeclared-drawn": (drawn(), "utf-8", "text/html", "browser"),
    "utf8-undeclared-drawn-by-a-script-file": (drawn(external=True), "utf-8", "text/html", "browser"),
    "shift_jis-meta-static": (page(f"<main><article>{LONG}</article></main>", META_SJIS), "cp932", "text/html",
                              "server-html"),
    "shift_jis-meta-drawn": (drawn(META_SJIS), "cp932", "text/html", "browser"),
    "shift_jis-http-equiv-short": (page(f"<main><article>{SHORT}</article></main>", HTTP_EQUIV_SJIS), "cp932",
                                   "text/html", "browser"),
    "shift_jis-undeclared-static": (page(f"<main><article>{LONG}</article></main>"), "cp932", "text/html",
                                    "server-html"),
    "euc-jp-header-static": (page(f"<main><article>{LONG}</article></main>"), "euc_jp",
                             "text/html; charset=EUC-JP", "server-html"),
    "euc-jp-header-drawn": (drawn(), "euc_jp", "text/html; charset=EUC-JP", "browser"),
    "utf8-labelled-latin1-static": (page(f"<main><article>{LONG}</article></main>"), "utf-8",
                                    "text/html; charset=ISO-8859-1", "server-html"),
}


@asynccontextmanager
async def encoded_site():
    async def serve(request: web.Request) -> web.Response:
        html, encoding, content_type, _ = PAGES[request.match_info["name"]]
        return web.Response(body=html.encode(encoding), headers={"Content-Type": content_type})

    async def script(request: web.Request) -> web.Response:  # no charset: the document's applies
        return web.Response(body=DRAWN_SCRIPT.encode("utf-8"), headers={"Content-Type": "application/javascript"})

    routes = [web.get("/enc/app.js", script), web.get("/enc/{name}", serve)]
    async with ReplicaServer(ReplicaOptions(extra_routes=routes)) as site:
        yield site


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def reader(tmp_path_factory):
    """One reader (one Chromium) for the pages of this module: each read has a context of its own."""
    async with encoded_site() as site:
        browsing = await open_browsing(make_settings(tmp_path_factory.mktemp("charset"), site.url), TRUSTED_REPLICA)
        try:
            yield site, browsing.reader
        finally:
            await browsing.close()


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("name", list(PAGES))
async def test_japanese_pages_read_as_written(reader, name):
    site, page_reader = reader
    read = await page_reader.read(f"{site.url}/enc/{name}")
    assert read.source == PAGES[name][3]
    assert SENTENCE in read.text
    assert "日本語のページ" in read.text or "描かれた記事" in read.text
    for mojibake in ("æ", "ã", "\ufffd", "�"):
        assert mojibake not in read.text


@pytest.mark.parametrize("body, content_type, expected", [
    (SENTENCE.encode("utf-8"), "text/html", "utf-8"),
    (SENTENCE.encode("utf-8"), "text/html; charset=iso-8859-1", "utf-8"),  # UTF-8 beats a Latin-1 label
    ("丸数字①と～".encode("cp932"), "text/html; charset=Shift_JIS", "cp932"),  # as wide as browsers' Shift_JIS
    (f"<meta charset='shift_jis'>{SENTENCE}".encode("cp932"), "text/html", "cp932"),
    (f'<meta http-equiv="content-type" content="text/html; charset=euc-jp">{SENTENCE}'.encode("euc_jp"),
     "text/html", "euc_jp"),
    (SENTENCE.encode("euc_jp"), "text/html; charset=EUC-JP", "euc_jp"),
    (codecs.BOM_UTF8 + SENTENCE.encode("utf-8"), "text/html; charset=Shift_JIS", "utf-8"),  # the BOM wins
    (f"<meta charset='utf-16'>{SENTENCE}".encode("utf-8"), "text/html", "utf-8"),  # read as ASCII: not UTF-16
    (b"plain ascii", "text/html; charset=no-such-charset", "utf-8"),
    ("Le café crème est très apprécié à Paris, où l'on sert des crêpes.".encode("cp1252"), "text/html",
     "cp1252"),
    ("Привет! Это страница на русском языке, в кодировке Windows-1251.".encode("cp1251"), "text/html", "cp1251"),
])
def test_charset_decisions(body, content_type, expected):
    assert decide_charset(body, content_type) == expected


def test_a_body_cut_in_the_middle_of_a_character_keeps_its_encoding():
    body = SENTENCE.encode("utf-8")[:-1]
    assert decide_charset(body, "text/html") == "utf-8"
    assert decode_html(body, "text/html").startswith(SENTENCE[:-1])


def test_undeclared_shift_jis_and_euc_jp_are_detected():
    text = "".join(f"第{n}段落：{SENTENCE}" for n in range(10))
    assert decode_html(text.encode("cp932")) == text
    assert decode_html(text.encode("euc_jp")) == text
