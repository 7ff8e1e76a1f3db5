"""Start Playwright's browser server (one shared Chromium) from server.json.

The WebSocket path is a secret shared with the bots: it comes from BROWSER_WS_PATH. The
listening address, port and Chromium can be overridden with BROWSER_SERVER_HOST,
BROWSER_SERVER_PORT and CHROMIUM_PATH. Prints the endpoint (ws://HOST:PORT/PATH) when ready.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path


def main() -> None:
    secret = os.environ.get("BROWSER_WS_PATH", "").strip("/")
    if len(secret) < 16:
        sys.exit("set BROWSER_WS_PATH to a long random string (e.g. `openssl rand -hex 24`)")
    config = json.loads(Path(__file__).with_name("server.json").read_text("utf-8"))
    config["wsPath"] = "/" + secret
    for key, name, kind in (("host", "BROWSER_SERVER_HOST", str), ("port", "BROWSER_SERVER_PORT", int),
                            ("executablePath", "CHROMIUM_PATH", str)):
        if os.environ.get(name):
            config[key] = kind(os.environ[name])
    fd, path = tempfile.mkstemp(prefix="browser-server-", suffix=".json")
    with os.fdopen(fd, "w") as file:  # readable by this user only: it holds the secret path
        json.dump(config, file)
    sys.stdout.flush()
    os.execv(sys.executable, [sys.executable, "-m", "playwright", "launch-server", "--browser", "chromium",
                              "--config", path])


if __name__ == "__main__":
    main()
