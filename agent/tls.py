"""The process's one TLS context. Building a context reads the whole CA bundle (about 0.1 CPU-s
here) and every HTTP client would otherwise build its own: five per runtime (the page reader's
client and its proxy transport; the Gemini client's httpx, aiohttp and websocket sessions)."""

from __future__ import annotations

import functools
import os
import ssl

import certifi


@functools.cache
def tls_context() -> ssl.SSLContext:
    """Verifying, with the CA bundle the libraries use by default (certifi's), or the one an
    operator names in SSL_CERT_FILE / SSL_CERT_DIR. Shared: clients only read it."""
    return ssl.create_default_context(cafile=os.environ.get("SSL_CERT_FILE", certifi.where()),
                                      capath=os.environ.get("SSL_CERT_DIR"))
