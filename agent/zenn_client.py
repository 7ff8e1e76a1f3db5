"""The one way zennbot talks to Zenn's servers: polite, paced, cached, and quick to stop.

Every Zenn request (JSON endpoints, feeds) goes through `ZennHttp.request`:
- an honest User-Agent naming the bot and a contact URL;
- pacing: at most `rate` requests a second and `in_flight` at once in this process, and, when a
  shared backend is given (the store's `rate_wait`), at most that rate across every replica;
- an explicit timeout on every request, and a deadline on every wait for a turn;
- on 429, 403 or a Cloudflare challenge it stops: `ZennRefused` (one sentence for the user),
  and every request until `Retry-After` has passed fails the same way without being sent. Nothing
  is retried in a loop.

`get_json` adds a cache (lists 15 min, details 1 h, users and topics 24 h) and shares one fetch
between concurrent callers of the same URL. `get_if_changed` is the conditional GET (ETag /
If-Modified-Since) that feed polling uses; `request` returns 200 and 304 answers and raises for
the rest.

The undocumented endpoints may change shape: `ZennUnavailable` means "use the browser instead",
and `note_mismatch` logs each endpoint's shape change once per process.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlencode

import httpx

log = logging.getLogger(__name__)

# (key, limit, window) -> seconds to wait, 0.0 when the event was counted (as `Store.rate_wait`).
SharedRate = Callable[[str, int, float], Awaitable[float]]

CHALLENGE_MARKERS = ("challenge-platform", "cf-chl", "Just a moment...", "cf_chl_opt")


class ZennUnavailable(Exception):
    """Zenn's JSON did not give a usable answer (error, not JSON, unexpected shape): use the
    browser instead."""


class ZennNotFound(ZennUnavailable):
    """Zenn answered 404: no such user, topic, article, book or scrap."""


class ZennRefused(Exception):
    """Zenn refused the bot (429, 403, a Cloudflare challenge) or the bot's own pacing could not
    give a turn in time. `reason` is one sentence for the user; `retry_after` the seconds to wait.
    Never answered by reading the same site another way: that would ignore the refusal."""

    def __init__(self, reason: str, retry_after: float = 0.0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


@dataclass(frozen=True)
class ZennLimits:
    rate: float = 1.0  # requests a second (this process; and all replicas, with a shared backend)
    in_flight: int = 2  # requests at once in this process
    timeout: float = 15.0  # seconds per request
    max_wait: float = 30.0  # seconds a request may wait for its turn before giving up
    default_cooldown: float = 60.0  # seconds to stop after a refusal without Retry-After
    max_cooldown: float = 3600.0
    list_ttl: float = 15 * 60
    detail_ttl: float = 60 * 60
    meta_ttl: float = 24 * 60 * 60
    cache_entries: int = 512


TTL_KINDS = ("list", "detail", "meta")  # get_json's `kind`: which cache lifetime applies


def user_agent(version: str, contact_url: str) -> str:
    """`zennbot/0.1 (+https://…)`: who is asking, and where to complain."""
    return f"zennbot/{version} (+{contact_url})" if contact_url else f"zennbot/{version}"


class ZennHttp:
    """The shared Zenn client. One per process; `http` is the bot's httpx client (through the
    guard proxy), `shared_rate` the store's cross-replica limiter or None."""

    def __init__(self, base_url: str, http: httpx.AsyncClient, *, user_agent: str = "zennbot/0.1",
                 limits: ZennLimits = ZennLimits(), shared_rate: SharedRate | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """`clock` dates cache entries and refusals (tests move it); pacing uses real time."""
        self.base_url = base_url.rstrip("/")
        self.http = http
        self.user_agent = user_agent
        self.limits = limits
        self.shared_rate = shared_rate
        self._clock = clock
        self._gate = asyncio.Semaphore(max(limits.in_flight, 1))
        self._turns = asyncio.Lock()
        self._next_start = 0.0  # time.monotonic() before which no request may start
        self._refused_until = 0.0
        self._refusal: ZennRefused | None = None
        self._cache: OrderedDict[str, tuple[float, dict]] = OrderedDict()
        self._loading: dict[str, asyncio.Future[dict]] = {}
        self._mismatches: set[tuple[str, str]] = set()
        self.sent = 0  # requests that reached the network

    # The single request path

    async def request(self, path: str, params: dict | None = None, *,
                      headers: dict[str, str] | None = None) -> httpx.Response:
        """GET `path` (under the base URL) in its turn. Returns a 200 or 304 answer. Raises
        `ZennRefused` (429, 403, a challenge, or still cooling down from one; no turn in time),
        `ZennNotFound` (404) or `ZennUnavailable` (anything else)."""
        self._check_cooldown()
        url = self.base_url + path
        async with self.turn():
            self._check_cooldown()  # a refusal may have come while this one waited
            try:
                response = await self.http.get(url, params=params or None, timeout=self.limits.timeout,
                                               headers={"User-Agent": self.user_agent, **(headers or {})})
            except httpx.TimeoutException as exc:
                raise ZennUnavailable(f"{path}: no answer within {self.limits.timeout:g} s") from exc
            except httpx.HTTPError as exc:
                raise ZennUnavailable(f"{path}: {exc!r}") from exc
            finally:
                self.sent += 1
        self._refuse_if_blocked(path, response)
        if response.status_code in (200, 304):
            return response
        if response.status_code == 404:
            raise ZennNotFound(f"{path}: HTTP 404")
        raise ZennUnavailable(f"{path}: HTTP {response.status_code}")

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        """A turn to send one request to Zenn: in-flight bound, then pacing (here and, with a
        shared backend, across replicas). Raises `ZennRefused` when no turn comes within
        `max_wait`. Also for Zenn reads that are not JSON (a page's HTML)."""
        busy = ZennRefused("Zenn is busy with the bot's other questions right now; please ask again in a "
                           "minute.", self.limits.max_wait)
        deadline = time.monotonic() + self.limits.max_wait
        try:
            async with asyncio.timeout(self.limits.max_wait):
                await self._gate.acquire()
        except TimeoutError:
            raise busy from None
        try:
            try:
                async with asyncio.timeout(max(deadline - time.monotonic(), 0.001)):
                    await self._paced(deadline)
            except TimeoutError:
                raise busy from None
            yield
        finally:
            self._gate.release()

    async def _paced(self, deadline: float) -> None:
        """Wait for this process's next start time, then for a slot of the shared backend."""
        interval = 1.0 / self.limits.rate if self.limits.rate > 0 else 0.0
        async with self._turns:  # one waiter at a time: starts are `interval` apart
            wait = self._next_start - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            self._next_start = max(self._next_start, time.monotonic()) + interval
        if self.shared_rate is None or interval == 0:
            return
        window = max(1.0, interval)
        limit = max(1, round(window / interval))
        while (wait := await self.shared_rate("zenn:requests", limit, window)) > 0:
            if time.monotonic() + wait > deadline:
                raise TimeoutError
            await asyncio.sleep(wait)

    def _check_cooldown(self) -> None:
        if self._refusal is not None and self._clock() < self._refused_until:
            left = self._refused_until - self._clock()
            raise ZennRefused(self._refusal.reason, left)

    def _refuse_if_blocked(self, path: str, response: httpx.Response) -> None:
        status = response.status_code
        challenge = (response.headers.get("cf-mitigated", "").lower() == "challenge"
                     or (status in (403, 429, 503) or "html" in response.headers.get("content-type", ""))
                     and _has_challenge(response))
        if status not in (403, 429) and not challenge:
            return
        wait = min(retry_after(response.headers.get("retry-after")) or self.limits.default_cooldown,
                   self.limits.max_cooldown)
        what = "a bot check" if challenge else f"HTTP {status}"
        log.warning("Zenn refused %s (%s); no Zenn requests for %.0f s", path, what, wait)
        minutes = max(1, round(wait / 60))
        self._refusal = ZennRefused(
            f"Zenn is limiting the bot's requests right now, so I stopped; please try again in about "
            f"{minutes} minute{'s' if minutes > 1 else ''}.", wait)
        self._refused_until = self._clock() + wait
        raise ZennRefused(self._refusal.reason, wait)

    async def get_if_changed(self, path: str, etag: str = "", last_modified: str = "", *,
                             accept: str = "application/rss+xml, application/xml") -> httpx.Response:
        """A conditional GET (feeds): with the validators of the last answer, an unchanged
        resource costs Zenn a 304 and no body. Raises as `request`."""
        headers = {"Accept": accept}
        if etag:
            headers["If-None-Match"] = etag
        if last_modified:
            headers["If-Modified-Since"] = last_modified
        return await self.request(path, headers=headers)

    # JSON, cached

    async def get_json(self, path: str, params: dict | None = None, *, kind: str = "detail") -> dict:
        """The JSON object at `path`, from the cache while fresh (`kind`: "list" 15 min, "detail"
        1 h, "meta" 24 h). Concurrent calls for one URL share one request; a caller that is
        cancelled does not cancel it for the others. Raises as `request`, and `ZennUnavailable`
        when the answer is not a JSON object."""
        key = path + ("?" + urlencode(sorted((params or {}).items())) if params else "")
        ttl = {"list": self.limits.list_ttl, "detail": self.limits.detail_ttl, "meta": self.limits.meta_ttl}[kind]
        cached = self._cache.get(key)
        if cached is not None and self._clock() - cached[0] <= ttl:
            self._cache.move_to_end(key)
            return cached[1]
        loading = self._loading.get(key)
        if loading is None:
            loading = asyncio.ensure_future(self._fetch_json(path, params))
            self._loading[key] = loading
            loading.add_done_callback(lambda done: self._fetched(key, done))
        return await asyncio.shield(loading)

    async def _fetch_json(self, path: str, params: dict | None) -> dict:
        response = await self.request(path, params, headers={"Accept": "application/json"})
        try:
            data = response.json()
        except ValueError as exc:
            self.note_mismatch(path, "the answer is not JSON")
            raise ZennUnavailable(f"{path}: not JSON") from exc
        if not isinstance(data, dict):
            self.note_mismatch(path, f"a JSON {type(data).__name__}, not an object")
            raise ZennUnavailable(f"{path}: unexpected JSON")
        return data

    def _fetched(self, key: str, done: asyncio.Future[dict]) -> None:
        self._loading.pop(key, None)
        if done.cancelled() or done.exception() is not None:  # also marks the error as seen
            return
        self._cache[key] = (self._clock(), done.result())
        self._cache.move_to_end(key)
        while len(self._cache) > self.limits.cache_entries:
            self._cache.popitem(last=False)

    def note_mismatch(self, endpoint: str, what: str) -> None:
        """Log once per process that `endpoint` (a path without its variable part, e.g.
        "/api/articles") answered in a shape the bot does not expect."""
        if (endpoint, what) not in self._mismatches:
            self._mismatches.add((endpoint, what))
            log.warning("Zenn endpoint %s changed shape: %s", endpoint, what)


def _has_challenge(response: httpx.Response) -> bool:
    try:
        head = response.text[:20_000]
    except (UnicodeDecodeError, httpx.ResponseNotRead):
        return False
    return any(marker in head for marker in CHALLENGE_MARKERS)


def retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (seconds or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(when.timestamp() - time.time(), 0.0) or None
