"""The encoding of a page's bytes, decided once for both readers (the server's HTML and the
browser, which is given the text re-encoded as UTF-8 with that said in its Content-Type).

As browsers decide (WHATWG encoding sniffing): a byte-order mark, else the Content-Type's
charset, else a `<meta charset>` or `http-equiv` in the first 4 KB. Where browsers show mojibake,
the text as written instead: an undeclared encoding is UTF-8 when the bytes are valid UTF-8,
else charset-normalizer's guess (browsers use their locale's default, usually Windows-1252); a
declared encoding the bytes are not in (a Latin-1 label on UTF-8 text) is replaced the same way.
"""

from __future__ import annotations

import codecs
import re

from charset_normalizer import from_bytes

_BOMS = ((codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"))
_HEADER = re.compile(r"charset\s*=\s*[\"']?([A-Za-z0-9_.:-]+)", re.I)
_META = re.compile(rb"<meta[^>]+charset\s*=\s*[\"']?([A-Za-z0-9_.:-]+)", re.I)
# Labels whose browser decoder is wider than Python's codec of the same name (WHATWG Encoding).
_BROWSER_CODEC = {"shift_jis": "cp932", "iso8859_1": "cp1252", "ascii": "cp1252", "gb2312": "gb18030",
                  "gbk": "gb18030", "big5": "big5hkscs", "euc_kr": "cp949"}
_LABELS = {"windows-31j": "cp932", "x-sjis": "cp932", "csshiftjis": "cp932", "x-euc-jp": "euc_jp",
           "cseucpkdfmtjapanese": "euc_jp", "x-gbk": "gbk"}  # WHATWG labels Python does not know
_SINGLE_BYTE_LATIN = {"cp1252"}
DETECT_BYTES = 200_000  # of the page given to the detector
# The detector's candidates: encodings browsers decode (WHATWG Encoding), not every Python codec.
_WEB_ENCODINGS = ("cp1252", "cp1250", "cp1251", "cp1253", "cp1254", "cp1255", "cp1256", "cp1257", "cp1258",
                  "iso8859_2", "iso8859_4", "iso8859_5", "iso8859_7", "iso8859_8", "iso8859_13", "iso8859_15",
                  "koi8_r", "koi8_u", "cp866", "cp874", "mac_cyrillic", "gb18030", "big5", "euc_jp",
                  "iso2022_jp", "cp932", "shift_jis", "euc_kr", "cp949")


def decode_html(body: bytes, content_type: str = "") -> str:
    """The page's text (undecodable bytes replaced, never an error)."""
    text = body.decode(decide_charset(body, content_type), errors="replace")
    return text.removeprefix("\ufeff")


def decide_charset(body: bytes, content_type: str = "") -> str:
    """The Python codec to decode `body` with (see the module docstring for the order)."""
    for bom, encoding in _BOMS:
        if body.startswith(bom):
            return encoding
    header = _HEADER.search(content_type)
    meta = _META.search(body[:4096])
    declared = _codec(header[1]) if header else None
    if declared is None and meta is not None:
        declared = _codec(meta[1].decode("ascii"))
        if declared is not None and declared.startswith("utf_16"):  # a meta read as ASCII is not UTF-16
            declared = "utf-8"
    if declared is not None and not (declared in _SINGLE_BYTE_LATIN and not body.isascii() and _fits(body, "utf-8")):
        if _fits(body, declared):
            return declared
        return _undeclared(body) or declared
    return _undeclared(body) or "cp1252"


def _undeclared(body: bytes) -> str | None:
    if _fits(body, "utf-8"):
        return "utf-8"
    guesses = from_bytes(body[:DETECT_BYTES], cp_isolation=list(_WEB_ENCODINGS))
    best = guesses.best()
    if best is None:
        return None
    # Between equally good guesses, what browsers assume of an undeclared page: Windows-1252.
    default = next((g for g in guesses if g.encoding == "cp1252"
                    and (g.chaos, g.coherence) == (best.chaos, best.coherence)), None)
    return _codec((default or best).encoding)


def _codec(label: str) -> str | None:
    """Python's codec for a charset label, as wide as a browser's decoder; None if unknown."""
    try:
        label = label.strip().lower()
        name = codecs.lookup(_LABELS.get(label, label)).name.replace("-", "_")
    except LookupError:
        return None
    if name == "utf_8":
        return "utf-8"
    return _BROWSER_CODEC.get(name, name)


def _fits(body: bytes, encoding: str) -> bool:
    """Whether `body` is text in `encoding`; a character cut at the end (a body cut at a byte
    limit or a deadline) does not count against it."""
    try:
        codecs.getincrementaldecoder(encoding)().decode(body, final=False)
    except (UnicodeDecodeError, LookupError):
        return False
    return True
