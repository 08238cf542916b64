"""The HTTP client of one Waldur site: offering-user GET, PATCH and paginated listing.

The ``streams.ports.OfferingUsers`` port over HTTP. One :class:`SiteClient` per site per
worker process carries the site's whole API budget: a token bucket
(``Rates.requests_per_second``, ``Rates.burst``) and a concurrency bound
(``Rates.concurrency``), shared by the correct stage, the lookups and the reconciler.
The configured rate is the site's budget for every worker together: each worker owns
the part of it the demand exchange gives it (``streams.adapters.kafka.budget``: split
among the workers that have work for the site); every call counts as work for its site
while it runs (:meth:`SiteClient.request`).

Retries follow the project's one policy (``streams.retry.Backoff``), honour
``Retry-After`` and are bounded per call (``max_attempts``): past them the call raises
:class:`streams.errors.GaveUp`, the caller records a gave-up outcome and the row is
raised again later. 401/403 pause the site: every call to it waits out the pause (a
gauge says so, the log says it once). A site whose calls fail (:class:`SiteHealth`) is
reported down once, up once, on ``/health`` and in ``usync_site_up``; while it is down
its calls' retry waits are shared (``streams.adapters.probe``: one probe every 2 s, all
of them go at its first answer). The token is only
ever in the Authorization header: never in logs, errors or outcomes; a body a site sends
back is scrubbed of it before it goes anywhere (:meth:`SiteClient.refusal_detail`).

The HTTP transport is injectable (``transport=``, any ``httpx.AsyncBaseTransport``:
``httpx.MockTransport`` in unit tests); by default the calls go to aiohttp's pool directly
(:class:`AiohttpExchange`), without httpx's request and response models.
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
from typing import Any, Protocol

import aiohttp
import httpx
import msgspec

from streams.adapters.budget import TokenBucket
from streams.adapters.probe import SiteBack
from streams.adapters.tls import site_api_context, tls_reason
from streams.contract.config import REGISTRATION_SHARE, Config, Rates, Secret
from streams.contract.schema import OfferingUserRecord
from streams.core import HttpClass, classify_http, parse_retry_after
from streams.errors import GaveUp, Refused
from streams.metrics import Metrics
from streams.retry import Backoff

log = logging.getLogger("usync.waldur")

PAGE_SIZE = 300
#: Bytes of a refusing answer kept in the outcome: Waldur's validation errors are a few
#: dozen bytes ({"username": ["This username is reserved and cannot be used."]}); an
#: HTML error page is not worth more than its start on a topic kept forever.
REFUSAL_DETAIL_MAX = 1024
GONE = frozenset({404, 410})
OFFERING_USERS = "marketplace-offering-users/"
_records = msgspec.json.Decoder(list[OfferingUserRecord])
_record = msgspec.json.Decoder(OfferingUserRecord)
_json = msgspec.json.Encoder()


#: Consecutive failed attempts (5xx, 429, timeout, refused or broken connection, with no
#: answer of the site in between) that make a site *down*. One is not enough: a single
#: 503 or 429 that the next attempt gets past is what the retries are for, and saying
#: "down" for it would flap. Three is reached within ~1.5 s by one call's own retries
#: (backoff base 0.5 s), at once when several calls are in flight, and never by a
#: throttled site that still serves (its 429s are broken by successes).
DOWN_AFTER = 3


class SiteHealth:
    """Whether one site answers: down after :data:`DOWN_AFTER` failed attempts in a row,
    up again at its first answer. Logged once per transition (WARNING down, INFO up),
    not per call; the gauge ``usync_site_up{site}`` and ``/health`` read it."""

    def __init__(self, site: str, metrics: Metrics, down_after: int = DOWN_AFTER,
                 clock: Any = time.time) -> None:
        self.site = site
        self.down_after = down_after
        self.clock = clock
        self.gauge = metrics.site_up.labels(site)
        self.gauge.set(1)
        self.up = True
        self.reason = ""
        self.since = clock()
        self.failures = 0
        self.back = SiteBack()

    def failed(self, reason: str) -> None:
        self.failures += 1
        self.reason = reason
        if self.up and self.failures >= self.down_after:
            self.up, self.since = False, self.clock()
            self.gauge.set(0)
            self.back.failing()
            log.warning("site %s is failing: %d calls in a row without an answer (last: %s); "
                        "retrying with backoff, no PATCH without a fresh read", self.site, self.failures, reason)

    def answered(self) -> None:
        self.failures = 0
        if not self.up:
            now = self.clock()
            log.info("site %s answers again after %.1f s (it failed with: %s)", self.site, now - self.since, self.reason)
            self.up, self.since, self.reason = True, now, ""
            self.gauge.set(1)
            self.back.answered()

    def report(self) -> dict[str, Any]:
        report: dict[str, Any] = {"up": self.up, "since": self.since}
        if not self.up:
            report["reason"] = self.reason
        return report


def _failure_label(exc: BaseException) -> str:
    """What a call that got no answer ran into, as the ``status`` label of ``usync_http_calls``.

    httpx-aiohttp maps a refused connection (aiohttp's ``ClientConnectorError``, a
    ``ClientConnectionError``) to ``httpx.ConnectTimeout``: its map keeps the first match,
    the broader class. That is why refusals were labelled ``timeout`` (issue 19); the
    original is the mapped exception's ``__cause__``, so the chain is read first."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, (aiohttp.ClientConnectorError, ConnectionRefusedError)):
            return "refused"
        cause = cause.__cause__
    if isinstance(exc, (httpx.TimeoutException, asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
        return "timeout"
    if isinstance(exc, (httpx.ConnectError, aiohttp.ClientConnectorError, ConnectionRefusedError)):
        return "refused"
    return "connection-error"


@dataclass(slots=True)
class Answer:
    """A final HTTP answer (success or a non-retryable status)."""

    status: int
    body: bytes
    headers: Mapping[str, str]  # case-insensitive: aiohttp's or httpx's
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
        self.health = SiteHealth(name, metrics)
        self._token = token
        #: Why the last handshake was refused (expired, unknown CA, wrong host); None once one succeeds.
        self.tls_refused: str | None = None
        self._pause = Backoff()
        self._rng = random.Random()
        self._base_text = str(httpx.URL(api_url if api_url.endswith("/") else api_url + "/"))
        headers = {"Authorization": f"Token {token.reveal()}", "Accept": "application/json"}
        self._headers = (headers, {**headers, "Content-Type": "application/json"})  # without, with a body
        # No cookies, no redirects, our own auth: requests go to the pool directly.
        self._exchange: Exchange = HttpxExchange(transport, rates.timeout) if transport is not None else \
            AiohttpExchange(self._base_text, rates, ssl_context)

    async def close(self) -> None:
        await self._exchange.aclose()

    async def _send(self, method: str, path: str, params: Any, json: Any) -> tuple[int, bytes, Mapping[str, str]]:
        """One HTTP exchange, read to the end. ``path`` is relative to the API root, or a
        whole URL (a ``Link: rel=next`` page)."""
        url = path if "://" in path else self._base_text + path
        body = None if json is None else _json.encode(json)
        return await self._exchange.send(method, url, params, body, self._headers[body is not None])

    # -- the one request loop -----------------------------------------------------------

    async def request(self, method: str, path: str, *, params: Any = None, json: Any = None) -> Answer:
        """Send until a final answer; raise :class:`GaveUp` after ``max_attempts`` transient
        failures. Work for the site's budget while it runs (retry waits included)."""
        with self.bucket.wanting():
            return await self._attempts(method, path, params, json)

    async def _attempts(self, method: str, path: str, params: Any, json: Any) -> Answer:
        backoff = Backoff(base=self.backoff_base, cap=30.0, rng=self._rng)
        status: int | None = None
        reason = ""
        attempt, own_retry = 0, None  # own_retry: when this call's own next attempt is due (monotonic)
        while attempt < self.max_attempts:
            attempt += 1
            await self._wait_unpaused()
            retry_after: float | None = None
            async with self.slots:
                await self.bucket.acquire()
                try:
                    status, body, headers = await self._send(method, path, params, json)
                except (httpx.TransportError, aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                    status = None
                    label, reason = self._connection_failed(exc)
                else:
                    label, retry_after = str(status), parse_retry_after(headers.get("Retry-After"))
            self.metrics.http_calls.labels(self.name, method, label).inc()
            verdict = classify_http(status)
            if verdict is HttpClass.SUCCESS or verdict is HttpClass.REJECT:
                self._resume()
                self.health.answered()
                self._tls_accepted()
                return Answer(status, body, headers, attempt)  # type: ignore[arg-type]
            if verdict is HttpClass.PAUSE_SITE:
                self._pause_site(status)  # type: ignore[arg-type]
                reason = f"HTTP {status}"
                continue
            reason = reason if status is None else f"HTTP {status}"
            self.health.failed(reason)
            if attempt < self.max_attempts:
                if retry_after:
                    self.health.back.asked_to_wait(retry_after)
                if own_retry is None:
                    own_retry = time.monotonic() + backoff.next_delay(retry_after)
                if await self.health.back.wait(max(0.0, own_retry - time.monotonic())):
                    attempt -= 1  # it goes as the down site's probe: the site's attempt, its own one stays due
                else:
                    own_retry = None
        raise GaveUp(self.name, status, self.max_attempts, f"{method} gave up after {self.max_attempts} attempts ({reason})")

    def _connection_failed(self, exc: BaseException) -> tuple[str, str]:
        """(``status`` label, the retry's reason) of a call that got no answer. A refused TLS
        handshake (checked first: aiohttp's certificate error is a connector error too) is
        said once per outage, as an ERROR naming the site and the handshake's reason (a
        configuration problem, not a blip)."""
        tls = tls_reason(exc)  # aiohttp's certificate error is a connector error (httpx-aiohttp's a ConnectTimeout)
        if tls is None:
            label = _failure_label(exc)
            return label, label if label == "timeout" else f"{label}: {type(exc).__name__}"
        if self.tls_refused != tls:
            log.error("site %s: TLS handshake with %s failed: %s; retrying with backoff",
                      self.name, self._base_text, tls)
        self.tls_refused = tls
        return "tls", f"TLS: {tls}"

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
        """The patched offering user; (404 or 410, None) when it is gone. Any other refusal
        raises :class:`Refused` carrying the site's answer (:meth:`refusal_detail`)."""
        answer = await self.request("PATCH", f"{OFFERING_USERS}{uuid}/", json={"username": username})
        if answer.ok:
            return answer.status, _record.decode(answer.body)
        if answer.status in GONE:
            return answer.status, None
        raise Refused(self.name, answer.status, self.refusal_detail(answer.body))

    def refusal_detail(self, body: bytes) -> str:
        """A refusing answer as text: the token masked first (a site may echo the request),
        then cut to :data:`REFUSAL_DETAIL_MAX` bytes (cutting first could leave half a token)."""
        text = self._token.scrub(body.decode("utf-8", errors="replace"))
        return text.encode()[:REFUSAL_DETAIL_MAX].decode("utf-8", errors="ignore")

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


class Exchange(Protocol):
    """One HTTP exchange read to the end: (status, body, headers). Raises what its library
    raises for an exchange with no answer (``SiteClient.request`` classifies it)."""

    async def send(self, method: str, url: str, params: Any, body: bytes | None,
                   headers: Mapping[str, str]) -> tuple[int, bytes, Mapping[str, str]]: ...

    async def aclose(self) -> None: ...


class AiohttpExchange:
    """Calls on aiohttp's connection pool, one pool per site, kept alive (``concurrency``
    connections at most).

    httpcore placed every request by scanning its whole pool (a syscall per connection):
    ~2,000-2,300 µs of CPU per call at 16 in flight; httpx's request and response models
    on aiohttp's pool (httpx-aiohttp) 252-342 µs; aiohttp alone 125-179 µs, the same GET
    against the simulator in one sitting (``bench/bench_http.py``). Errors are aiohttp's own
    (``aiohttp.ClientError``, ``asyncio.TimeoutError``), classified by ``_failure_label``
    and ``tls_reason``. The timeout bounds connecting (``connect`` includes waiting for
    a pooled connection) and each read, as httpx's did.
    """

    def __init__(self, base_url: str, rates: Rates, tls: ssl.SSLContext | None) -> None:
        self._tls = tls or ssl.create_default_context()
        self._limit = rates.concurrency
        self._timeout = aiohttp.ClientTimeout(connect=rates.timeout, sock_connect=rates.timeout,
                                              sock_read=rates.timeout)
        proxy = _env_proxy(base_url)
        self._proxy = str(proxy.url.copy_with(username=None, password=None)) if proxy else None
        self._proxy_auth = aiohttp.BasicAuth(*(part.decode() for part in proxy.raw_auth)) \
            if proxy and proxy.raw_auth else None
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        """The connection pool, made on first use (inside the event loop)."""
        connector = aiohttp.TCPConnector(limit=self._limit, ssl=self._tls)
        self._session = aiohttp.ClientSession(connector=connector, skip_auto_headers=("User-Agent",))
        return self._session

    async def send(self, method: str, url: str, params: Any, body: bytes | None,
                   headers: Mapping[str, str]) -> tuple[int, bytes, Mapping[str, str]]:
        session = self._session or self._open()
        async with session.request(method, url, params=params, data=body, headers=headers, allow_redirects=False,
                                   timeout=self._timeout, proxy=self._proxy, proxy_auth=self._proxy_auth) as response:
            return response.status, await response.read(), response.headers

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


class HttpxExchange:
    """Calls through an ``httpx.AsyncBaseTransport`` (``httpx.MockTransport`` in unit tests)."""

    def __init__(self, transport: httpx.AsyncBaseTransport, timeout: float) -> None:
        self._transport = transport
        self._extensions = {"timeout": httpx.Timeout(timeout).as_dict()}

    async def send(self, method: str, url: str, params: Any, body: bytes | None,
                   headers: Mapping[str, str]) -> tuple[int, bytes, Mapping[str, str]]:
        request = httpx.Request(method, url, params=params, content=body, headers=headers, extensions=self._extensions)
        response = await self._transport.handle_async_request(request)
        try:
            content = await response.aread()
        finally:
            await response.aclose()
        return response.status_code, content, response.headers

    async def aclose(self) -> None:
        await self._transport.aclose()


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
        #: The part of each site's budget the workers share (the bridges keep the rest).
        self.workers_part = {name: 1.0 - (REGISTRATION_SHARE if site.register else 0.0)
                             for name, site in config.sites.items()}

    def __getitem__(self, site: str) -> SiteClient:
        return self.by_site[site]

    def __iter__(self) -> Iterator[str]:
        return iter(self.by_site)

    def __len__(self) -> int:
        return len(self.by_site)

    def buckets(self) -> dict[str, TokenBucket]:
        """Each site's budget in this process (the demand exchange sets their shares; of a
        site with ``register = true`` the workers share what the bridges' registration
        calls leave, :attr:`workers_part`, ``streams.contract.config.REGISTRATION_SHARE``)."""
        return {name: client.bucket for name, client in self.by_site.items()}

    def want(self, site: str, delta: int) -> None:
        """``delta`` more (or fewer) pieces of work waiting for ``site`` (a lane's corrections)."""
        client = self.by_site.get(site)
        if client is not None:
            client.bucket.want(delta)

    def health(self) -> dict[str, dict[str, Any]]:
        """Each site's up/down, its reason and since when (``/health``)."""
        return {name: client.health.report() for name, client in self.by_site.items()}

    def paused(self) -> list[str]:
        """The sites whose calls wait out a credentials pause now."""
        return [name for name, client in self.by_site.items() if client.paused_until > time.monotonic()]

    def tls_refused(self) -> dict[str, str]:
        """Site -> why its API's TLS handshake is refused now (for ``/health``)."""
        return {name: client.tls_refused for name, client in self.by_site.items() if client.tls_refused}

    async def close(self) -> None:
        for client in self.by_site.values():
            await client.close()
