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
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from playwright.async_api import Browser, BrowserContext, Error as PlaywrightError, Page, Playwright, Route
from playwright._impl._errors import TargetClosedError  # not exported by playwright.async_api
from playwright.async_api import TimeoutError as PlaywrightTimeout
from playwright.async_api import async_playwright

from agent.deadline import GRACE, Deadline
from agent.limits import Limit, cpu_count
from agent.proxy import BLOCKED_HEADER, GuardProxy
from agent.urlguard import BlockedUrl, UrlPolicy

log = logging.getLogger(__name__)

CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
# Chromium honours only the last --disable-features switch, and Playwright puts its own before
# ours: ours carries Playwright's list too (tests/test_chromium_flags.py checks it against the
# installed Playwright).
PLAYWRIGHT_DISABLED_FEATURES = (
    "AvoidUnnecessaryBeforeUnloadCheckSync", "DestroyProfileOnBrowserClose", "HttpsUpgrades",
    "HttpsFirstBalancedModeAutoEnable", "LensOverlay", "MediaRouter", "PaintHolding",
    "ThirdPartyStoragePartitioning", "AvoidCorsURLLoaderRestartOnRedirect", "TcpPortRandomizationWin",
    "OptimizationHints", "NetworkTimeServiceQuerying", "AimEnabled", "PreconnectToSearch",
    "msForceBrowserSignIn", "msEdgeUpdateLaunchServicesPreferredVersion",
)
# Browser UI a headless reader never shows: Chromium (156) loads the address bar's popup, a
# WebUI page of ~400 modules, in a renderer of its own for every new window, i.e. for every read:
# about 1 CPU-s each, three times what a small page itself costs (measured with a trace).
HEADLESS_DISABLED_FEATURES = ("WebUIOmniboxPopup", "WebUIOmniboxFullPopup", "WebUIOmniboxAimPopup",
                              "PreloadTopChromeWebUI")
DISABLED_FEATURES = (*PLAYWRIGHT_DISABLED_FEATURES, *HEADLESS_DISABLED_FEATURES)
LAUNCH_ARGS = [
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
    "--force-webrtc-ip-handling-policy=disable_non_proxied_udp",
    "--disable-features=" + ",".join(DISABLED_FEATURES),
]
# Nothing the text needs: heavy resources, and style sheets (a slow one holds the scripts after it).
SKIPPED_RESOURCES = {"image", "media", "font", "stylesheet"}

# Counts fetch/XHR in flight (and fetched bodies being read) and short timers not yet fired, so that waiting for the page to
# settle also covers a list that a timer starts loading (see WAIT_SETTLED_SCRIPT). Records the
# time of the last activity (a DOM change, or pending work ending) from the start of the
# document, so that a page quiet since it loaded is read without waiting for quiet again.
PENDING_WORK_SCRIPT = """
(() => {
  let pending = 0;
  let lastActivity = Date.now();
  const touch = () => { lastActivity = Date.now(); };
  const done = () => { pending--; touch(); };
  Object.defineProperty(window, '__zennbotPending', { get: () => pending });
  Object.defineProperty(window, '__zennbotLastActivity', { get: () => lastActivity });
  Object.defineProperty(window, '__zennbotTouch', { value: touch });
  new MutationObserver(touch).observe(document, { subtree: true, childList: true, characterData: true });
  const origFetch = window.fetch;
  window.fetch = function (...args) {
    pending++;
    return origFetch.apply(this, args).finally(done);
  };
  for (const name of ['json', 'text', 'arrayBuffer', 'blob']) {  // reading a body is work too
    const orig = Response.prototype[name];
    Response.prototype[name] = function (...args) {
      pending++;
      return orig.apply(this, args).finally(done);
    };
  }
  const origSend = XMLHttpRequest.prototype.send;
  XMLHttpRequest.prototype.send = function (...args) {
    pending++;
    this.addEventListener('loadend', done, { once: true });
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
      if (shortTimers.delete(id)) done();
      fn(...a);
    }, delay, ...rest);
    shortTimers.add(id);
    return id;
  };
  window.clearTimeout = function (id) {
    if (shortTimers.delete(id)) done();
    return origClearTimeout.call(this, id);
  };
})();
"""

# Settled: nothing pending and no activity for `quietMs` (counted from the last activity, not
# from the start of the wait). After an action (`sinceAction`: a click, a scroll) a page where
# nothing at all happened within `graceMs` is settled too: there was nothing to wait for.
WAIT_SETTLED_SCRIPT = """
async ({ quietMs, maxMs, graceMs, sinceAction }) => {
  const start = Date.now();
  const sleep = window.__zennbotSleep || ((ms) => new Promise((r) => setTimeout(r, ms)));
  const last = () => window.__zennbotLastActivity || 0;
  const actionAt = sinceAction ? start : 0;
  while (Date.now() - start < maxMs) {
    const idle = (window.__zennbotPending || 0) === 0;
    const now = Date.now();
    if (idle && now - last() >= quietMs) break;
    if (idle && sinceAction && now - start >= graceMs && last() <= actionAt) break;
    await sleep(sinceAction && now - start < graceMs ? graceMs - (now - start) : 50);
  }
  return Date.now() - start;
}
"""

# The size of the page's largest list: top-level <article>s, or the <li>s of one <ul>/<ol>,
# outside header/footer/nav/aside (as agent.extract counts list items).
COUNT_ITEMS_SCRIPT = """
() => {
  const chrome = (el) => el.closest('header, footer, nav, aside');
  let best = 0;
  for (const a of document.querySelectorAll('article')) {
    if (!chrome(a) && !(a.parentElement && a.parentElement.closest('article'))) best++;
  }
  for (const list of document.querySelectorAll('ul, ol')) {
    if (chrome(list)) continue;
    let n = 0;
    for (const child of list.children) if (child.tagName === 'LI') n++;
    if (n > best) best = n;
  }
  return { items: best, height: document.documentElement.scrollHeight };
}
"""

# One step of growing a list: click a visible "load more" control (a button, or a link that
# does not navigate), else, when the page has a list and is taller than the window, scroll to
# its end. Returns "button", "scroll" or null (nothing left to try); `dryRun` only says which.
LOAD_MORE_SCRIPT = """
({ minItems, items, dryRun }) => {
  const pattern = /^(load more|show more|see more|view more|more (results|articles|posts|items|stories|entries)|もっと見る|もっと読み込む|もっと表示|もっと見る（\\d+件）|さらに表示|さらに読み込む|さらに見る|続きを読み込む|続きを表示|次の\\d+件(を表示)?)$/i;
  const label = (el) => (el.innerText || el.value || el.getAttribute('aria-label') || '')
    .replace(/[\\s\\u3000]+/g, ' ').replace(/[\\s.…▼▽↓+›»>]+$/u, '').trim();
  const candidates = document.querySelectorAll('button, a, [role="button"], input[type="button"]');
  for (const el of candidates) {
    if (el.closest('nav, header')) continue;
    if (el.disabled || el.getAttribute('aria-disabled') === 'true') continue;
    if (el.tagName === 'A') {
      const href = (el.getAttribute('href') || '').trim();
      if (href && !href.startsWith('#') && !href.toLowerCase().startsWith('javascript:')) continue;
    }
    if (el.tagName === 'BUTTON' && el.form && el.type === 'submit') continue;
    if (!el.getClientRects().length) continue;
    const text = label(el);
    if (text.length > 40 || !pattern.test(text)) continue;
    if (dryRun) return 'button';
    el.scrollIntoView({ block: 'center' });
    window.__zennbotTouch && window.__zennbotTouch();
    el.click();
    return 'button';
  }
  const root = document.scrollingElement || document.documentElement;
  if (items >= minItems && root.scrollHeight > window.innerHeight * 1.5
      && window.scrollY + window.innerHeight < root.scrollHeight - 2) {
    if (dryRun) return 'scroll';
    window.__zennbotTouch && window.__zennbotTouch();
    window.scrollTo(0, root.scrollHeight);
    return 'scroll';
  }
  return null;
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
    loads: int = 0  # how many times a "load more" control was pressed or the list scrolled on
    bound: str = ""  # the bound that stopped the list growing ("500 items"), "" if it ended
    cut: str = ""  # why the page is incomplete ("did not finish loading within 20 s"), "" if it is not


@dataclass(frozen=True)
class Document:
    """A page's HTML already fetched through the guard proxy (with its redirects followed): the
    browser is given it for its first navigation to `url` instead of fetching it again."""

    url: str
    body: bytes
    content_type: str
    cut: str = ""  # why the body is incomplete (see RenderedPage.cut)


@dataclass(frozen=True)
class ListBounds:
    """How far a list that grows ("load more", scrolling) is followed."""

    max_items: int = 500
    max_loads: int = 10
    max_seconds: float = 15.0  # and within the read's deadline (the page timeout)
    min_items: int = 5  # a page scrolls on only when it has a list of at least this many items


@dataclass(frozen=True)
class BrowserLimits:
    navigation_timeout: float = 20.0
    settle_quiet: float = 0.3
    settle_max: float = 8.0
    action_grace: float = 0.15  # after a click or scroll, how long a page may take to react
    max_requests: int = 200
    max_bytes: int = 8_000_000
    lists: ListBounds = ListBounds()


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
    `GuardProxy` on 127.0.0.1; a remote browser on another machine needs one it can reach.
    `renders` bounds the pages rendered at once (default: one per CPU core). After `idle` s
    without a render the browser and Playwright's driver are closed (their memory comes back);
    the next read starts them again. None: kept until `close()`."""

    def __init__(self, policy: UrlPolicy, limits: BrowserLimits = BrowserLimits(),
                 executable: str | None = None, *, ws_endpoint: str | None = None,
                 cdp_url: str | None = None, proxy: GuardProxy | None = None,
                 renders: Limit | None = None, idle: float | None = None) -> None:
        if ws_endpoint and cdp_url:
            raise ValueError("give a browser server endpoint or a CDP URL, not both")
        self.policy = policy
        self.limits = limits
        self.executable = find_chromium(executable)
        self.ws_endpoint = ws_endpoint
        self.cdp_url = cdp_url
        self.proxy = proxy or GuardProxy(policy, max_response_bytes=limits.max_bytes)
        self.renders = renders or Limit("browser renders", cpu_count())
        self.idle = idle
        self._playwright: Playwright | None = None
        self._browser: Browser | None = None
        self._lock = asyncio.Lock()
        self._abandoned: set[asyncio.Task] = set()
        self._busy = 0  # renders in progress or waiting for a free render
        self._rest_timer: asyncio.TimerHandle | None = None
        self._rested = False  # closed for want of work: a health check need not start it again

    @property
    def remote(self) -> bool:
        return bool(self.ws_endpoint or self.cdp_url)

    async def check(self) -> None:
        """Connect (or launch) if needed; a local browser closed for want of work is not started
        again, only its executable looked for. Raises `PageLoadError` when no browser can be had."""
        if self._rested and not self.remote:
            if self.executable and not Path(self.executable).exists():
                raise PageLoadError("the bot's browser is not installed", self.executable)
            return
        await self._ensure_browser()
        self._rest_later()

    async def start(self) -> None:
        await self.proxy.start()

    async def close(self) -> None:
        if self._rest_timer is not None:
            self._rest_timer.cancel()
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
            self._rested = False
            return self._browser

    def _rest_later(self) -> None:
        """Close the browser once nothing has rendered for `idle` s (timer restarted by each render)."""
        if self._rest_timer is not None:
            self._rest_timer.cancel()
            self._rest_timer = None
        if self.idle is None or self._busy:
            return
        self._rest_timer = asyncio.get_running_loop().call_later(self.idle, self._rest_soon)

    def _rest_soon(self) -> None:
        self._rest_timer = None
        task = asyncio.create_task(self._rest())
        self._abandoned.add(task)
        task.add_done_callback(self._abandoned.discard)

    async def _rest(self) -> None:
        """Close the browser and Playwright's driver, unless a render came meanwhile."""
        async with self._lock:
            if self._busy or (self._browser is None and self._playwright is None):
                return
            self._rested = True
            if self._browser is not None:
                await _close_quietly(self._browser)
                self._browser = None
            if self._playwright is not None:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(5):
                        await self._playwright.stop()
                self._playwright = None
            log.info("browser closed after %g s without reads; the next read starts it again", self.idle)

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
        self._in_background(_close_quietly(browser))

    async def render(self, url: str, document: Document | None = None, timeout: float | None = None,
                     deadline: Deadline | None = None) -> RenderedPage:
        """Open `url`, wait for its content to settle and return the final HTML. With `document`,
        `url` is `document.url` and its HTML is taken from there. `timeout` is how long the page
        may take to load; everything (loading, settling, growing its list) ends by `deadline`
        (default: the navigation timeout from now), reading the result within `GRACE` after it.

        Raises `BlockedUrl` when the URL, a redirect or the download is refused, `PageLoadError`
        when it does not load. Waits for a free render first (`renders`): the deadline counts from
        when the render starts.
        """
        self.policy.check_url(url)
        deadline = deadline or Deadline.after(self.limits.navigation_timeout)
        started = time.monotonic()
        self._busy += 1
        self._rest_later()  # no rest while busy
        try:
            async with self.renders.hold():
                # Waiting for a free render, like starting the browser, is not the page's time.
                return await self._render_now(url, document, timeout, deadline.later(time.monotonic() - started))
        finally:
            self._busy -= 1
            self._rest_later()

    async def _render_now(self, url: str, document: Document | None, timeout: float | None,
                          deadline: Deadline) -> RenderedPage:
        started = time.monotonic()
        await self._ensure_browser()  # bounded by Playwright's launch and connect timeouts
        deadline = deadline.later(time.monotonic() - started)  # starting the browser is not the page's time
        # Playwright's timeouts run where the browser runs: a browser (service) that stops
        # answering, or a page whose scripts never yield, would hang a read without this backstop.
        backstop = deadline.timeout(GRACE)
        browser: Browser | None = None
        context: BrowserContext | None = None
        try:
            async with backstop:
                browser, context = await self._new_context()
                return await self._read(browser, context, url, document, timeout, deadline)
        except TimeoutError:
            if not backstop.expired():
                raise
            log.error("the browser did not answer within %g s of the page's deadline", GRACE)
            if context is None and self._browser is not None:
                self._abandon(self._browser)  # it did not even open a page in time
            raise PageLoadError("the browser did not answer in time; please try again", url) from None
        finally:
            if context is not None:
                assert browser is not None
                closing = self._in_background(self._close_context(browser, context))
                task = asyncio.current_task()
                if not backstop.expired() and not (task and task.cancelling()):
                    await asyncio.shield(closing)

    def _in_background(self, work) -> asyncio.Task:
        """A task `close()` waits for."""
        task = asyncio.ensure_future(work)
        self._abandoned.add(task)
        task.add_done_callback(self._abandoned.discard)
        return task

    async def _close_context(self, browser: Browser, context: BrowserContext) -> None:
        """Close a read's context; a browser that cannot even do that in time is dropped."""
        if not await _close_quietly(context):
            log.error("the browser did not close a page in time; dropping it")
            self._abandon(browser)

    async def _read(self, browser: Browser, context: BrowserContext, url: str, document: Document | None,
                    timeout: float | None, deadline: Deadline) -> RenderedPage:
        try:
            return await self._render_in(context, url, document, timeout, deadline)
        except PlaywrightError as exc:
            # A dropped connection shows as TargetClosedError before is_connected() turns False.
            reason = ("the browser stopped while reading the page; please try again"
                      if isinstance(exc, TargetClosedError) or not browser.is_connected()
                      else "the page could not be read")
            raise PageLoadError(reason, str(exc).splitlines()[0]) from exc

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

    async def _render_in(self, context: BrowserContext, url: str, document: Document | None,
                         timeout: float | None, deadline: Deadline) -> RenderedPage:
        budget = _Budget(self.limits, document)
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
        page.set_default_timeout(_ms(deadline.left()))
        patience = min(timeout or self.limits.navigation_timeout, self.limits.navigation_timeout)
        try:
            response = await page.goto(url, wait_until="domcontentloaded", timeout=_ms(min(patience, deadline.left())))
        except PlaywrightTimeout:
            missed = deadline.missed if deadline.left() < 0.5 else f"the page did not load within {patience:g} s"
            raise PageLoadError(missed, url) from None
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
        await self._settle(page, url, max_seconds=min(self.limits.settle_max, deadline.left()))
        loads, bound = await self._grow_list(page, url, deadline)
        html = await page.content()
        return RenderedPage(url=page.url, title=await page.title(), html=html, loads=loads, bound=bound)

    async def _settle(self, page: Page, url: str, max_seconds: float, after_action: bool = False) -> None:
        """Wait until nothing is pending and the DOM is quiet (see WAIT_SETTLED_SCRIPT)."""
        try:
            await page.evaluate(WAIT_SETTLED_SCRIPT, {
                "quietMs": self.limits.settle_quiet * 1000, "maxMs": max(max_seconds, 0.0) * 1000,
                "graceMs": self.limits.action_grace * 1000, "sinceAction": after_action})
        except PlaywrightError as exc:  # navigated away while waiting: read what is there
            log.info("settle wait interrupted on %s: %s", url, exc)

    async def _grow_list(self, page: Page, url: str, read_deadline: Deadline) -> tuple[int, str]:
        """Press "load more" / scroll on until the list stops growing or a bound is reached (the
        list bounds, or the read's deadline). Returns how many loads it took and the bound that
        stopped it ("" when the list ended)."""
        bounds = self.limits.lists
        deadline = min(time.monotonic() + bounds.max_seconds, read_deadline.at)
        seconds = bounds.max_seconds if deadline < read_deadline.at else read_deadline.seconds
        loads = 0
        try:
            size = await page.evaluate(COUNT_ITEMS_SCRIPT)
            while True:
                if size["items"] >= bounds.max_items:
                    return loads, f"{bounds.max_items} items"
                if loads >= bounds.max_loads or time.monotonic() >= deadline:
                    more = await page.evaluate(LOAD_MORE_SCRIPT, {"minItems": bounds.min_items,
                                                                  "items": size["items"], "dryRun": True})
                    if more is None:
                        return loads, ""
                    return loads, (f"{bounds.max_loads} loads" if loads >= bounds.max_loads
                                   else f"{seconds:g} s")
                address = page.url
                action = await page.evaluate(LOAD_MORE_SCRIPT, {"minItems": bounds.min_items,
                                                                "items": size["items"], "dryRun": False})
                if action is None:
                    return loads, ""
                await self._settle(page, url, min(self.limits.settle_max, deadline - time.monotonic()),
                                   after_action=True)
                if page.url != address:  # the control navigated: stop here
                    return loads, ""
                grown = await page.evaluate(COUNT_ITEMS_SCRIPT)
                if grown["items"] <= size["items"] and grown["height"] <= size["height"]:
                    return loads, ""  # nothing new came
                size = grown
                loads += 1
        except PlaywrightError as exc:
            log.info("growing the list stopped on %s: %s", url, exc)
            return loads, ""

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


def _same_address(a: str, b: str) -> bool:
    """Whether two URLs name one document (as browsers and httpx write them: no fragment, "/"
    for an empty path)."""
    def key(url: str) -> tuple[str, str, str, str]:
        parts = urlsplit(url)
        return parts.scheme.lower(), parts.netloc.lower(), parts.path or "/", parts.query
    return key(a) == key(b)


async def _close_quietly(closable: Browser | BrowserContext) -> bool:
    """Close, ignoring errors, and not waiting long on a browser that stopped answering. Returns
    whether it closed in time."""
    try:
        async with asyncio.timeout(5):
            await closable.close()
    except TimeoutError:
        return False
    except Exception:  # noqa: BLE001  (already closed, or the connection dropped: gone either way)
        pass
    return True


def _ms(seconds: float) -> float:
    """A Playwright timeout: milliseconds, never 0 (which Playwright reads as "no timeout")."""
    return max(seconds, 0.001) * 1000


async def _close_popup(page: Page) -> None:
    if await page.opener() is not None:
        await page.close()


class _Budget:
    """Per-page limits: skipped heavy resources, a cap on requests and on bytes."""

    def __init__(self, limits: BrowserLimits, document: Document | None = None) -> None:
        self.limits = limits
        self.document = document
        self.requests = 0
        self.bytes = 0

    async def route(self, route: Route) -> None:
        request = route.request
        self.requests += 1
        document = self.document
        if document is not None and request.is_navigation_request() and _same_address(request.url, document.url):
            self.document = None  # only the first navigation: a reload or a later visit fetches
            await route.fulfill(status=200, body=document.body, headers={"Content-Type": document.content_type})
        elif request.resource_type in SKIPPED_RESOURCES:
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
