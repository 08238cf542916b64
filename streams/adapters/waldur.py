"""The HTTP client of one Waldur site: offering-user GET, PATCH and paginated listing.

The ``streams.ports.OfferingUsers`` port over HTTP. One :class:`SiteClient` per site per
worker process carries the site's whole API budget: a token bucket
(``Rates.requests_per_second``, ``Rates.burst``) and a concurrency bound
(``Rates.concurrency``), shared by the correct stage, the lookups and the reconciler.
The rate is therefore **per worker process**: N workers may together send N times the
configured rate (configure ``rates`` as the site's budget / N).

Retries follow the project's one policy (``streams.retry.Backoff``), honour
``Retry-After`` and are bounded per call (``max_attempts``): past them the call raises
:class:`streams.errors.GaveUp`, the caller records a gave-up outcome and the row is
raised again later. 401/403 pause the site: every call to it waits out the pause (a
gauge says so, the log says it once). The token is only ever in the Authorization
header: never in logs, errors or outcomes.

The HTTP transport is injectable (``transport=``, any ``httpx.AsyncBaseTransport``:
``httpx.MockTransport`` in unit tests); by default it is aiohttp's pool (below).
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import time
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import httpx
import msgspec
from httpx_aiohttp import AiohttpTransport

from streams.adapters.tls import site_api_context, tls_reason
from streams.contract.config import Config, Rates, Secret
from streams.contract.schema import OfferingUserRecord
from streams.core import HttpClass, classify_http, parse_retry_after
from streams.errors import GaveUp
from streams.metrics import Metrics
from streams.retry import Backoff

log = logging.getLogger("usync.waldur")

PAGE_SIZE = 300
OFFERING_USERS = "marketplace-offering-users/"
_records = msgspec.json.Decoder(list[OfferingUserRecord])
_record = msgspec.json.Decoder(OfferingUserRecord)


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` banked; ``acquire`` waits for one."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = time.monotonic()
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        async with self._lock:  # FIFO: one waiter refills at a time
            while True:
                now = time.monotonic()
                self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
                self.stamp = now
                if self.tokens >= 1.0:
                    self.tokens -= 1.0
                    return
                await asyncio.sleep((1.0 - self.tokens) / self.rate)


@dataclass(slots=True)
class Answer:
    """A final HTTP answer (success or a non-retryable status)."""

    status: int
    body: bytes
    headers: httpx.Headers
    attempts: int

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


class SiteClient:
    def __init__(
        self, name: str, api_url: str, token: Secret, rates: Rates, metrics: Metrics,
        max_attempts: int = 8, backoff_base: float = 0.5, transport: httpx.AsyncBaseTransport | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.name = name
        self.rates = rates
        self.metrics = metrics
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base
        self.bucket = TokenBucket(rates.requests_per_second, rates.burst)
        self.slots = asyncio.Semaphore(rates.concurrency)
        self.paused_until = 0.0
        #: Why the last handshake was refused (expired, unknown CA, wrong host); None once one succeeds.
        self.tls_refused: str | None = None
        self._pause = Backoff()
        self._rng = random.Random()
        self._base = httpx.URL(api_url if api_url.endswith("/") else api_url + "/")
        self._base_text = str(self._base)
        self._headers = httpx.Headers({"Authorization": f"Token {token.reveal()}", "Accept": "application/json"})
        self._extensions = {"timeout": httpx.Timeout(rates.timeout).as_dict()}
        # httpx's types on aiohttp's connection pool: httpcore placed every request by
        # scanning its whole pool (a syscall per connection) and spent ~0.5 ms of CPU per
        # call; this path costs ~0.13 ms, which is what lets one sink reach 1,000 PATCH/s.
        # Requests go to the transport directly: no cookies, no redirects, our own auth.
        self._transport = transport or _aiohttp_transport(self._base_text, rates, ssl_context)

    async def close(self) -> None:
        await self._transport.aclose()

    async def _send(self, method: str, path: str, params: Any, json: Any) -> tuple[int, bytes, httpx.Headers]:
        """One HTTP exchange, read to the end. ``path`` is relative to the API root, or a
        whole URL (a ``Link: rel=next`` page)."""
        url = httpx.URL(path) if "://" in path else httpx.URL(self._base_text + path)
        request = httpx.Request(method, url, params=params, json=json, headers=self._headers, extensions=self._extensions)
        response = await self._transport.handle_async_request(request)
        try:
            body = await response.aread()
        finally:
            await response.aclose()
        return response.status_code, body, response.headers

    # -- the one request loop -----------------------------------------------------------

    async def request(self, method: str, path: str, *, params: Any = None, json: Any = None) -> Answer:
        """Send until a final answer; raise :class:`GaveUp` after ``max_attempts`` transient failures."""
        backoff = Backoff(base=self.backoff_base, cap=30.0, rng=self._rng)
        status: int | None = None
        reason = ""
        for attempt in range(1, self.max_attempts + 1):
            await self._wait_unpaused()
            retry_after: float | None = None
            async with self.slots:
                await self.bucket.acquire()
                try:
                    status, body, headers = await self._send(method, path, params, json)
                except (httpx.TransportError, aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
                    status, reason = None, self._connection_failed(exc)
                else:
                    retry_after = parse_retry_after(headers.get("Retry-After"))
            label = str(status) if status else ("tls" if reason.startswith("TLS") else "timeout")
            self.metrics.http_calls.labels(self.name, method, label).inc()
            verdict = classify_http(status)
            if verdict is HttpClass.SUCCESS or verdict is HttpClass.REJECT:
                self._resume()
                self._tls_accepted()
                return Answer(status, body, headers, attempt)  # type: ignore[arg-type]
            if verdict is HttpClass.PAUSE_SITE:
                self._pause_site(status)  # type: ignore[arg-type]
                reason = f"HTTP {status}"
                continue
            reason = reason if status is None else f"HTTP {status}"
            if attempt < self.max_attempts:
                await asyncio.sleep(backoff.next_delay(retry_after))
        raise GaveUp(self.name, status, self.max_attempts, f"{method} gave up after {self.max_attempts} attempts ({reason})")

    def _connection_failed(self, exc: BaseException) -> str:
        """The retry's reason; a refused TLS handshake is said once per outage, as an ERROR
        naming the site and the handshake's reason (a configuration problem, not a blip)."""
        tls = tls_reason(exc)  # httpx_aiohttp raises a refused handshake as ConnectTimeout
        if tls is None:
            timeout = isinstance(exc, (httpx.TimeoutException, asyncio.TimeoutError))
            return "timeout" if timeout else f"connection error: {type(exc).__name__}"
        if self.tls_refused != tls:
            log.error("site %s: TLS handshake with %s failed: %s; retrying with backoff",
                      self.name, self._base_text, tls)
        self.tls_refused = tls
        return f"TLS: {tls}"

    def _tls_accepted(self) -> None:
        if self.tls_refused is not None:
            log.warning("site %s: TLS handshake accepted again", self.name)
            self.tls_refused = None

    async def _wait_unpaused(self) -> None:
        delay = self.paused_until - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)

    def _pause_site(self, status: int) -> None:
        if self.paused_until <= time.monotonic():
            delay = self._pause.next_delay()
            if self._pause.attempt == 1:  # say it once per outage, not per call
                log.error("site %s answers %d: credentials refused; pausing calls to it (retrying with backoff)", self.name, status)
            self.paused_until = time.monotonic() + delay
        self.metrics.site_paused.labels(self.name).set(1)

    def _resume(self) -> None:
        if self._pause.attempt:
            log.warning("site %s accepts our credentials again", self.name)
            self._pause.reset()
            self.metrics.site_paused.labels(self.name).set(0)

    # -- offering users -----------------------------------------------------------------

    async def get_offering_user(self, uuid: str) -> tuple[int, OfferingUserRecord | None]:
        answer = await self.request("GET", f"{OFFERING_USERS}{uuid}/")
        return answer.status, _record.decode(answer.body) if answer.ok else None

    async def find_offering_user(self, offering_uuid: str, user_username: str) -> tuple[int, OfferingUserRecord | None]:
        """The offering user of ``user_username`` on ``offering_uuid``; 404 when there is none."""
        answer = await self.request(
            "GET", OFFERING_USERS, params={"offering_uuid": offering_uuid, "user_username": user_username},
        )
        if not answer.ok:
            return answer.status, None
        found = [r for r in _records.decode(answer.body) if r.user_username == user_username]
        return (200, found[0]) if found else (404, None)

    async def patch_username(self, uuid: str, username: str) -> tuple[int, OfferingUserRecord | None]:
        answer = await self.request("PATCH", f"{OFFERING_USERS}{uuid}/", json={"username": username})
        return answer.status, _record.decode(answer.body) if answer.ok else None

    async def list_offering_users(
        self, offering_uuid: str, states: list[str], page_size: int = PAGE_SIZE,
    ) -> AsyncIterator[tuple[int, int, list[OfferingUserRecord], bool]]:
        """Yield (page, total, records, last) through every page (``Link rel=next``)."""
        params: Any = [("offering_uuid", offering_uuid), ("page_size", str(page_size))] + [("state", s) for s in states]
        path: str = OFFERING_USERS
        page = 1
        while True:
            answer = await self.request("GET", path, params=params)
            if not answer.ok:
                raise GaveUp(self.name, answer.status, answer.attempts, f"listing answered HTTP {answer.status}")
            total = int(answer.headers.get("X-Result-Count", "0") or 0)
            next_url = _next_link(answer.headers.get("Link", ""))
            yield page, total, _records.decode(answer.body), next_url is None
            if next_url is None:
                return
            path, params, page = next_url, None, page + 1


def _aiohttp_transport(base_url: str, rates: Rates, tls: ssl.SSLContext | None) -> httpx.AsyncBaseTransport:
    tls = tls or ssl.create_default_context()
    limits = httpx.Limits(max_connections=rates.concurrency, max_keepalive_connections=rates.concurrency)
    return AiohttpTransport(verify=tls, limits=limits, proxy=_env_proxy(base_url), client=lambda: _session(tls, limits))


def _session(tls: ssl.SSLContext, limits: httpx.Limits) -> aiohttp.ClientSession:
    """The connection pool, made on first use (inside the event loop)."""
    connector = aiohttp.TCPConnector(limit=limits.max_connections or 0, keepalive_timeout=limits.keepalive_expiry, ssl=tls)
    return aiohttp.ClientSession(connector=connector)


def _env_proxy(url: str) -> httpx.Proxy | None:
    """The proxy HTTPS_PROXY / HTTP_PROXY / NO_PROXY name for ``url``, read once at start
    (aiohttp's ``trust_env`` would re-read them, and ~/.netrc, in a thread on every call)."""
    parts = urllib.parse.urlsplit(url)
    if parts.hostname is None or urllib.request.proxy_bypass(parts.hostname):
        return None
    proxy = urllib.request.getproxies().get(parts.scheme)
    return httpx.Proxy(proxy) if proxy else None


def _next_link(header: str) -> str | None:
    for part in header.split(","):
        if 'rel="next"' in part:
            start, end = part.find("<"), part.find(">")
            if 0 <= start < end:
                return part[start + 1:end]
    return None


class Clients(Mapping[str, SiteClient]):
    """Every site's client of one worker process (site name -> ``OfferingUsers``)."""

    def __init__(self, config: Config, metrics: Metrics, max_attempts: int = 8,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.by_site = {
            name: SiteClient(name, site.api_url, config.site_token(name), site.rates, metrics, max_attempts,
                             transport=transport, ssl_context=site_api_context(site))
            for name, site in config.sites.items()
        }

    def __getitem__(self, site: str) -> SiteClient:
        return self.by_site[site]

    def __iter__(self) -> Iterator[str]:
        return iter(self.by_site)

    def __len__(self) -> int:
        return len(self.by_site)

    def paused(self) -> list[str]:
        """The sites whose calls wait out a credentials pause now."""
        return [name for name, client in self.by_site.items() if client.paused_until > time.monotonic()]

    def tls_refused(self) -> dict[str, str]:
        """Site -> why its API's TLS handshake is refused now (for ``/health``)."""
        return {name: client.tls_refused for name, client in self.by_site.items() if client.tls_refused}

    async def close(self) -> None:
        for client in self.by_site.values():
            await client.close()
