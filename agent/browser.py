"""Chromium through Playwright: render a page, wait for what it draws after load, return HTML.

One browser process is shared; every read gets its own browser context, closed after it. All
traffic goes through `GuardProxy`. A browser that crashed or was killed is replaced on the next
read.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from playwright.async_api import Browser, BrowserContext, Error as PlaywrightError, Page, Playwright, Route
from playwright.async_api import TimeoutError as PlaywrightTimeout
from playwright.async_api import async_playwright

from agent.proxy import BLOCKED_HEADER, GuardProxy
from agent.urlguard import BlockedUrl, UrlPolicy

log = logging.getLogger(__name__)

CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
LAUNCH_ARGS = [
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
    "--force-webrtc-ip-handling-policy=disable_non_proxied_udp",
]
SKIPPED_RESOURCES = {"image", "media", "font"}

# Counts fetch/XHR in flight and short timers not yet fired, so that waiting for the page to
# settle also covers a list that a timer starts loading (see wait_for_settled).
PENDING_WORK_SCRIPT = """
(() => {
  let pending = 0;
  Object.defineProperty(window, '__zennbotPending', { get: () => pending });
  const origFetch = window.fetch;
  window.fetch = function (...args) {
    pending++;
    return origFetch.apply(this, args).finally(() => { pending--; });
  };
  const origSend = XMLHttpRequest.prototype.send;
  XMLHttpRequest.prototype.send = function (...args) {
    pending++;
    this.addEventListener('loadend', () => { pending--; }, { once: true });
    return origSend.apply(this, args);
  };
  const origSetTimeout = window.setTimeout;
  const origClearTimeout = window.clearTimeout;
  Object.defineProperty(window, '__zennbotSleep', {
    value: (ms) => new Promise((resolve) => origSetTimeout.call(window, resolve, ms)),
  });
  const shortTimers = new Set();
  window.setTimeout = function (fn, delay, ...rest) {
    if (typeof fn !== 'function' || !(delay >= 50 && delay <= 5000)) {
      return origSetTimeout.call(this, fn, delay, ...rest);
    }
    pending++;
    const id = origSetTimeout.call(this, (...a) => {
      if (shortTimers.delete(id)) pending--;
      fn(...a);
    }, delay, ...rest);
    shortTimers.add(id);
    return id;
  };
  window.clearTimeout = function (id) {
    if (shortTimers.delete(id)) pending--;
    return origClearTimeout.call(this, id);
  };
})();
"""

WAIT_SETTLED_SCRIPT = """
async ({ quietMs, maxMs }) => {
  let last = Date.now();
  const observer = new MutationObserver(() => { last = Date.now(); });
  observer.observe(document, { subtree: true, childList: true, characterData: true });
  const start = Date.now();
  const sleep = window.__zennbotSleep || ((ms) => new Promise((r) => setTimeout(r, ms)));
  while (Date.now() - start < maxMs) {
    await sleep(100);
    if ((window.__zennbotPending || 0) === 0 && Date.now() - last >= quietMs) break;
  }
  observer.disconnect();
  return Date.now() - start;
}
"""


class PageLoadError(Exception):
    """A page that could not be read. `reason` is safe to show to users."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason} ({detail})" if detail else reason)
        self.reason = reason


@dataclass(frozen=True)
class RenderedPage:
    url: str
    title: str
    html: str


@dataclass(frozen=True)
class BrowserLimits:
    navigation_timeout: float = 20.0
    settle_quiet: float = 0.5
    settle_max: float = 8.0
    max_requests: int = 200
    max_bytes: int = 8_000_000


def find_chromium(configured: str | None = None) -> str | None:
    """The browser to launch: the configured one, a system Chromium/Chrome, else None
    (Playwright's own download)."""
    if configured:
        return configured
    for name in CHROMIUM_CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


class BrowserPool:
    def __init__(self, policy: UrlPolicy, limits: BrowserLimits = BrowserLimits(),
                 executable: str | None = None) -> None:
        self.policy = policy
        self.limits = limits
        self.executable = find_chromium(executable)
        self.proxy = GuardProxy(policy, max_response_bytes=limits.max_bytes)
        self._playwright: Playwright | None = None
        self._browser: Browser | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        await self.proxy.start()

    async def close(self) -> None:
        async with self._lock:
            if self._browser is not None:
                try:
                    await self._browser.close()
                except PlaywrightError:
                    pass
                self._browser = None
            if self._playwright is not None:
                await self._playwright.stop()
                self._playwright = None
        await self.proxy.close()

    async def _ensure_browser(self) -> Browser:
        async with self._lock:
            if self._browser is not None and self._browser.is_connected():
                return self._browser
            if self._browser is not None:
                log.warning("browser is gone (crashed or killed); launching a new one")
            if self._playwright is None:
                self._playwright = await async_playwright().start()
            if self.executable and not Path(self.executable).exists():
                raise PageLoadError("the bot's browser is not installed", self.executable)
            try:
                self._browser = await self._playwright.chromium.launch(
                    executable_path=self.executable,
                    headless=True,
                    # Playwright's default, no Chromium sandbox: it cannot run as root or in most
                    # containers. The boundary is the filtering proxy and a fresh context per read.
                    chromium_sandbox=False,
                    # Playwright adds <-loopback> to the bypass list: loopback goes through the proxy too.
                    proxy={"server": self.proxy.url, "username": self.proxy.username,
                           "password": self.proxy.password},
                    args=LAUNCH_ARGS,
                    # The browser gets no tokens or keys: only what it needs of the environment.
                    env={name: os.environ[name] for name in ("PATH", "HOME", "TZ", "LANG") if name in os.environ},
                )
            except PlaywrightError as exc:
                raise PageLoadError("the bot's browser could not start", str(exc).splitlines()[0]) from exc
            return self._browser

    async def render(self, url: str) -> RenderedPage:
        """Open `url`, wait for its content to settle and return the final HTML.

        Raises `BlockedUrl` when the URL, a redirect or the download is refused, `PageLoadError`
        when it does not load.
        """
        self.policy.check_url(url)
        browser = await self._ensure_browser()
        try:
            context = await browser.new_context(accept_downloads=False, java_script_enabled=True,
                                                service_workers="block", locale="ja-JP")
        except PlaywrightError as exc:
            raise PageLoadError("the browser failed; please try again", str(exc)) from exc
        try:
            return await self._render_in(context, url)
        except PlaywrightError as exc:
            reason = ("the browser stopped while reading the page; please try again"
                      if not browser.is_connected() else "the page could not be read")
            raise PageLoadError(reason, str(exc).splitlines()[0]) from exc
        finally:
            try:
                await context.close()
            except PlaywrightError:
                pass

    async def _render_in(self, context: BrowserContext, url: str) -> RenderedPage:
        budget = _Budget(self.limits)
        await context.route("**/*", budget.route)
        context.on("page", _close_popup)
        await context.add_init_script(PENDING_WORK_SCRIPT)
        page = await context.new_page()
        page.on("response", budget.count_response)
        navigated_hosts: set[str] = set()  # the page and each redirect hop

        def note_navigation(request) -> None:
            if request.is_navigation_request():
                navigated_hosts.add(urlsplit(request.url).hostname or "")

        page.on("request", note_navigation)
        page.set_default_timeout(self.limits.navigation_timeout * 1000)
        try:
            response = await page.goto(url, wait_until="domcontentloaded",
                                       timeout=self.limits.navigation_timeout * 1000)
        except PlaywrightTimeout:
            raise PageLoadError(f"the page did not load within {self.limits.navigation_timeout:g} s", url) from None
        except PlaywrightError as exc:
            raise self._navigation_error(url, str(exc), navigated_hosts) from None
        if response is not None:
            blocked = response.headers.get(BLOCKED_HEADER.lower())
            if blocked:
                raise BlockedUrl(f"the page led to a refused address: {blocked}", response.url)
            if response.status in (404, 410):
                raise PageLoadError(f"that page does not exist (HTTP {response.status})", url)
            if response.status >= 400:
                raise PageLoadError(f"the site answered with an error (HTTP {response.status})", url)
        try:
            await page.evaluate(WAIT_SETTLED_SCRIPT, {"quietMs": self.limits.settle_quiet * 1000,
                                                      "maxMs": self.limits.settle_max * 1000})
        except PlaywrightError as exc:  # navigated away while waiting: read what is there
            log.info("settle wait interrupted on %s: %s", url, exc)
        html = await page.content()
        return RenderedPage(url=page.url, title=await page.title(), html=html)

    def _navigation_error(self, url: str, message: str, hosts: set[str]) -> Exception:
        if "Download is starting" in message:
            return BlockedUrl("that link is a file download, which the bot does not fetch", url)
        refused = self.proxy.refusal_for(hosts)
        if refused:
            return BlockedUrl(f"the page led to a refused address: {refused}", url)
        if "ERR_BLOCKED" in message or "ERR_UNSAFE_REDIRECT" in message:
            return BlockedUrl("the page led to an address the bot does not read", url)
        if "ERR_NAME_NOT_RESOLVED" in message:
            return PageLoadError("that host name could not be found", url)
        if any(code in message for code in ("ERR_CONNECTION", "ERR_EMPTY_RESPONSE", "ERR_TUNNEL_CONNECTION")):
            return PageLoadError("the site could not be reached", message.splitlines()[0])
        return PageLoadError("the page could not be loaded", message.splitlines()[0])


async def _close_popup(page: Page) -> None:
    if await page.opener() is not None:
        await page.close()


class _Budget:
    """Per-page limits: skipped heavy resources, a cap on requests and on bytes."""

    def __init__(self, limits: BrowserLimits) -> None:
        self.limits = limits
        self.requests = 0
        self.bytes = 0

    async def route(self, route: Route) -> None:
        request = route.request
        self.requests += 1
        if request.resource_type in SKIPPED_RESOURCES:
            await route.abort("blockedbyclient")
        elif self.requests > self.limits.max_requests or self.bytes > self.limits.max_bytes:
            await route.abort("blockedbyclient")
        elif not request.url.startswith(("http://", "https://")):
            await route.abort("blockedbyclient")
        else:
            await route.continue_()

    def count_response(self, response) -> None:
        try:
            self.bytes += int(response.headers.get("content-length", "0"))
        except ValueError:
            pass
