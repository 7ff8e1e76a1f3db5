#!/bin/sh
# Make sure a Chromium the bot can drive is installed: a configured or system Chromium/Chrome,
# else Debian's package (as root with apt), else Playwright's own download.
set -e
PY="${1:-python3}"
if [ -n "$BROWSER_EXECUTABLE" ] && [ -x "$BROWSER_EXECUTABLE" ]; then exit 0; fi
for name in chromium chromium-browser google-chrome google-chrome-stable chrome; do
  if command -v "$name" >/dev/null 2>&1; then echo "browser: $(command -v "$name")"; exit 0; fi
done
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
  echo "installing Debian's chromium package"
  if apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
      && command -v chromium >/dev/null 2>&1; then
    exit 0
  fi
  echo "Debian's chromium could not be installed; trying Playwright's"
fi
echo "installing Playwright's Chromium"
"$PY" -m playwright install chromium
