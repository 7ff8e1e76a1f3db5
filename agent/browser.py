"""Chromium through Playwright: render a page, wait for what it draws after load, return HTML.

One browser is shared; every read gets its own browser context, closed after it. The browser is
a local Chromium, or a remote one: Playwright's browser server (`ws_endpoint`) or a Chromium with
remote debugging (`cdp_url`). All traffic of every context goes through `GuardProxy` (the proxy
is set per context, so a remote browser reaches the web only through the bot's guard too). A
browser that crashed, was killed or whose connection dropped is replaced on the next read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from playwright.async_api import Browser, BrowserContext, Error as PlaywrightError, Page, Playwright, Route
from playwright._impl._errors import TargetClosedError  # not exported by playwright.async_api
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
    # Playwright's timeouts run where the browser runs: a browser service that stops answering
    # (frozen, network cut) would hang a read without this deadline on the bot's side.
    read_deadline: float = 60.0


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
    """Renders pages in a local Chromium, or in a remote one when `ws_endpoint` (Playwright's
    browser server) or `cdp_url` (Chromium's remote debugging) is given. `proxy` defaults to a
    `GuardProxy` on 127.0.0.1; a remote browser on another machine needs one it can reach."""

    def __init__(self, policy: UrlPolicy, limits: BrowserLimits = BrowserLimits(),
                 executable: str | None = None, *, ws_endpoint: str | None = None,
                 cdp_url: str | None = None, proxy: GuardProxy | None = None) -> None:
        if ws_endpoint and cdp_url:
            raise ValueError("give a browser server endpoint or a CDP URL, not both")
        self.policy = policy
        self.limits = limits
        self.executable = find_chromium(executable)
        self.ws_endpoint = ws_endpoint
        self.cdp_url = cdp_url
        self.proxy = proxy or GuardProxy(policy, max_response_bytes=limits.max_bytes)
        self._playwright: Playwright | None = None
        self._browser: Browser | None = None
        self._lock = asyncio.Lock()
        self._abandoned: set[asyncio.Task] = set()

    @property
    def remote(self) -> bool:
        return bool(self.ws_endpoint or self.cdp_url)

    async def check(self) -> None:
        """Connect (or launch) if needed. Raises `PageLoadError` when no browser can be had."""
        await self._ensure_browser()

    async def start(self) -> None:
        await self.proxy.start()

    async def close(self) -> None:
        await asyncio.gather(*self._abandoned, return_exceptions=True)
        async with self._lock:
            if self._browser is not None:
                await _close_quietly(self._browser)
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
                log.warning("browser is gone (crashed, killed or disconnected); %s",
                            "reconnecting" if self.remote else "launching a new one")
            if self._playwright is None:
                self._playwright = await async_playwright().start()
            self._browser = await (self._connect() if self.remote else self._launch())
            return self._browser

    async def _connect(self) -> Browser:
        assert self._playwright is not None
        chromium = self._playwright.chromium
        timeout = self.limits.navigation_timeout * 1000
        try:
            if self.ws_endpoint:
                # Client and server Playwright must share major.minor, or the server answers 428.
                return await chromium.connect(self.ws_endpoint, timeout=timeout)
            return await chromium.connect_over_cdp(self.cdp_url, timeout=timeout)
        except PlaywrightError as exc:
            detail = str(exc).splitlines()[0]
            log.error("browser service: could not connect: %s", detail)
            raise PageLoadError("the browser service cannot be reached; please try again later", detail) from exc

    async def _launch(self) -> Browser:
        assert self._playwright is not None
        if self.executable and not Path(self.executable).exists():
            raise PageLoadError("the bot's browser is not installed", self.executable)
        try:
            return await self._playwright.chromium.launch(
                executable_path=self.executable,
                headless=True,
                # Playwright's default, no Chromium sandbox: it cannot run as root or in most
                # containers. The boundary is the filtering proxy and a fresh context per read.
                chromium_sandbox=False,
                # Also at launch, for the browser's own requests outside any context.
                proxy=self._proxy_settings(),
                args=LAUNCH_ARGS,
                # The browser gets no tokens or keys: only what it needs of the environment.
                env={name: os.environ[name] for name in ("PATH", "HOME", "TZ", "LANG") if name in os.environ},
            )
        except PlaywrightError as exc:
            raise PageLoadError("the bot's browser could not start", str(exc).splitlines()[0]) from exc

    def _proxy_settings(self) -> dict[str, str]:
        # Chromium sends loopback addresses around any proxy unless the bypass list says
        # <-loopback>. Playwright adds it by default, but not where the process that creates the
        # contexts (a browser service's) sets PLAYWRIGHT_DISABLE_FORCED_CHROMIUM_PROXIED_LOOPBACK:
        # so the bot asks for it itself.
        url = self.proxy.url if self.remote else self.proxy.local_url
        return {"server": url, "bypass": "<-loopback>", "username": self.proxy.username,
                "password": self.proxy.password}

    def _abandon(self, browser: Browser) -> None:
        """Drop a browser that stopped answering; the next read gets a new one."""
        if self._browser is browser:
            self._browser = None
        task = asyncio.create_task(_close_quietly(browser))
        self._abandoned.add(task)
        task.add_done_callback(self._abandoned.discard)

    async def render(self, url: str) -> RenderedPage:
        """Open `url`, wait for its content to settle and return the final HTML.

        Raises `BlockedUrl` when the URL, a redirect or the download is refused, `PageLoadError`
        when it does not load.
        """
        self.policy.check_url(url)
        deadline = asyncio.timeout(self.limits.read_deadline)
        try:
            async with deadline:
                return await self._read(url)
        except TimeoutError:
            if not deadline.expired():
                raise
            log.error("the browser did not answer within %g s; dropping it", self.limits.read_deadline)
            if self._browser is not None:
                self._abandon(self._browser)
            raise PageLoadError("the browser did not answer in time; please try again", url) from None

    async def _read(self, url: str) -> RenderedPage:
        browser, context = await self._new_context()
        try:
            return await self._render_in(context, url)
        except PlaywrightError as exc:
            # A dropped connection shows as TargetClosedError before is_connected() turns False.
            reason = ("the browser stopped while reading the page; please try again"
                      if isinstance(exc, TargetClosedError) or not browser.is_connected()
                      else "the page could not be read")
            raise PageLoadError(reason, str(exc).splitlines()[0]) from exc
        finally:
            await _close_quietly(context)

    async def _new_context(self) -> tuple[Browser, BrowserContext]:
        """A fresh context whose traffic all goes through the guard proxy. A browser found closed
        (is_connected() turns False only a moment after a connection drops) is replaced once."""
        for attempt in (1, 2):
            browser = await self._ensure_browser()
            try:
                return browser, await browser.new_context(
                    accept_downloads=False, java_script_enabled=True, service_workers="block",
                    locale="ja-JP", proxy=self._proxy_settings())
            except TargetClosedError as exc:
                if attempt == 2:
                    raise PageLoadError("the browser stopped; please try again", str(exc)) from exc
                self._abandon(browser)
            except PlaywrightError as exc:
                raise PageLoadError("the browser failed; please try again", str(exc)) from exc
        raise AssertionError("the loop returns or raises")

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
        if "has been closed" in message:  # the browser crashed, or the browser service dropped
            return PageLoadError("the browser stopped while reading the page; please try again",
                                 message.splitlines()[0])
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


async def _close_quietly(closable: Browser | BrowserContext) -> None:
    """Close, ignoring errors, and not waiting long on a browser that stopped answering."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(5):
            await closable.close()


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
