"""The bridge process: every configured site's subscriptions relayed into Kafka."""

from __future__ import annotations

import asyncio
import logging
import random
import signal
from collections.abc import Awaitable, Callable

from aiohttp import web

from streams.adapters.budget import TokenBucket, registration_bucket
from streams.adapters.tls import site_broker_context
from streams.contract.config import Config, Secret
from streams.errors import UsyncError
from streams.retry import Backoff, retry_forever

from bridges.health import Health, health_app
from bridges.outlet import KafkaOutlet
from bridges.metrics import BridgeMetrics
from bridges.registration import register
from bridges.relay import Credential, SubscriptionRelay

log = logging.getLogger("usync.bridge")


def site_offerings(config: Config, site: str) -> list[str]:
    """Every offering of ``site`` that some link reads or writes, in link order."""
    offerings: list[str] = []
    for link in config.links:
        for endpoint in (link.source, link.target):
            if endpoint.site == site and endpoint.offering not in offerings:
                offerings.append(endpoint.offering)
    return offerings


def configured_credentials(config: Config, site_name: str) -> list[Credential]:
    site = config.sites[site_name]
    token = config.site_token(site_name)
    return [
        Credential(
            login=sub.login,
            passcode=config.secret(sub.passcode_env) if sub.passcode_env else token,
            vhost=sub.vhost,
            queues=list(sub.queues),
        )
        for sub in site.subscriptions
    ]


#: ``on_resubscribed(site, offerings)``: called (as a task) once a relay consumes again after
#: a missing queue; the offerings are those whose queues the relay consumes.
Resubscribed = Callable[[str, list[str]], Awaitable[object]]


class Bridge:
    """Every site's relays, the Kafka outlet and the health server.

    ``on_resubscribed`` repairs what a missing queue lost (events published while it was
    gone were unroutable at Waldur): ``usync bridge`` passes one reconcile pass of the
    links touching those offerings (streams/cli.py); bridges/ itself knows no stage."""

    def __init__(self, config: Config, health_port: int | None = None, rng: random.Random | None = None,
                 on_resubscribed: Resubscribed | None = None) -> None:
        self.config = config
        self.on_resubscribed = on_resubscribed
        self._repairs: set[asyncio.Task] = set()
        self._bug: BaseException | None = None
        self.health_port = config.web_port if health_port is None else health_port
        self.rng = rng or random.Random()
        self.health = Health()
        self.metrics = BridgeMetrics()
        self.outlet = KafkaOutlet(config, self.health, self.metrics, self.rng)
        self.relays: list[SubscriptionRelay] = []
        self._stopping = asyncio.Event()
        self.registration_buckets: dict[str, TokenBucket] = {}  # a site's, across re-registrations
        self._runner: web.AppRunner | None = None

    async def _credentials(self, site_name: str) -> list[Credential]:
        """Registered (retrying until the API answers) or configured credentials."""
        site = self.config.sites[site_name]
        if not site.register:
            return configured_credentials(self.config, site_name)
        token: Secret = self.config.site_token(site_name)
        name = f"{site_name}/registration"
        bucket = self.registration_buckets.setdefault(site_name, registration_bucket(site.rates))
        self.health.set(name, "starting")
        credentials = await retry_forever(  # API down, refusing, timing out: all retried
            lambda: register(site_name, site, token, site_offerings(self.config, site_name), bucket),
            f"{site_name}: registration", backoff=Backoff(rng=self.rng), logger=log,
            on_retry=lambda exc, _delay: self.health.set(name, "disconnected", str(exc)),
        )
        self.health.components.pop(name, None)
        return credentials

    async def _run_site(self, site_name: str) -> None:
        self.metrics.for_site(site_name)
        site = self.config.sites[site_name]
        credentials = await self._credentials(site_name)

        async def refresh() -> Credential:
            fresh = await self._credentials(site_name)
            return fresh[0]

        relays = [
            SubscriptionRelay(
                site=site_name, broker_url=site.broker_url, credential=credential,
                outlet=self.outlet, health=self.health, metrics=self.metrics,
                prefetch=self.config.rabbitmq.prefetch, heartbeat=self.config.rabbitmq.heartbeat,
                refresh_credential=refresh if site.register and len(credentials) == 1 else None,
                on_resubscribed=lambda credential: self._repair(site_name, credential),
                rng=random.Random(self.rng.random()), ssl_context=site_broker_context(site),
            )
            for credential in credentials
        ]
        self.relays.extend(relays)
        await asyncio.gather(*(relay.run() for relay in relays))

    def _repair(self, site_name: str, credential: Credential) -> None:
        if self.on_resubscribed is None or self._stopping.is_set():
            return
        offerings = credential.offerings or site_offerings(self.config, site_name)
        log.info("%s: repairing the window a queue was missing: offerings %s", site_name, ", ".join(offerings))
        task = asyncio.create_task(self.on_resubscribed(site_name, offerings), name=f"repair {site_name}")
        self._repairs.add(task)
        task.add_done_callback(self._repaired)

    def _repaired(self, task: asyncio.Task) -> None:
        """A site or Kafka failing the repair is logged (the periodic reconcile still repairs);
        anything else is a bug: it stops the bridge loudly, like a failed site task."""
        self._repairs.discard(task)
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        if isinstance(exc, UsyncError):
            log.warning("%s failed: %s: %s; the periodic reconcile repairs it", task.get_name(), type(exc).__name__, exc)
            return
        log.critical("%s failed: %r; stopping the bridge", task.get_name(), exc)
        self._bug = exc
        self.stop()

    async def _serve_health(self) -> None:
        self._runner = web.AppRunner(health_app(self.health, self.metrics.registry), access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.config.web_host, self.health_port).start()

    def stop(self) -> None:
        """Drain: stop reading, let Kafka confirm what is in flight, ack it, exit."""
        log.info("stopping: draining in-flight messages")
        self._stopping.set()
        for relay in self.relays:
            relay.stop()

    async def _until_stopped(self, tasks: list[asyncio.Task]) -> None:
        """Until :meth:`stop`; a site task that raises (only a bug does) stops the bridge
        loudly: the others drain, and the exception ends the process for its supervisor."""
        stopping = asyncio.create_task(self._stopping.wait())
        pending: set[asyncio.Future] = {stopping, *tasks}
        while not self._stopping.is_set():
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not stopping and not task.cancelled() and task.exception() is not None:
                    log.critical("%s failed: %r; stopping the bridge", task.get_name(), task.exception())
                    self.stop()
                    await asyncio.gather(*(relay_stop_wait(t) for t in tasks if t is not task))
                    await self.outlet.stop()
                    raise task.exception()  # type: ignore[misc]
        stopping.cancel()

    async def run(self, install_signal_handlers: bool = True) -> None:
        await self._serve_health()
        if install_signal_handlers:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.stop)
        sites = [name for name, site in self.config.sites.items() if site.broker_url]
        log.info("bridge starting for sites %s", ", ".join(sites))
        tasks = [asyncio.create_task(self._run_site(name), name=f"site {name}") for name in sites]
        await self._until_stopped(tasks)
        await asyncio.gather(*(relay_stop_wait(t) for t in tasks))
        repairs = list(self._repairs)
        for repair in repairs:
            repair.cancel()
        await asyncio.gather(*repairs, return_exceptions=True)
        await self.outlet.stop()
        if self._runner is not None:
            await self._runner.cleanup()
        log.info("bridge stopped")
        if self._bug is not None:
            raise self._bug


async def relay_stop_wait(task: asyncio.Task) -> None:
    # A site still registering has no relays to drain: cancel it.
    try:
        await asyncio.wait_for(task, timeout=35)
    except (TimeoutError, asyncio.CancelledError):
        task.cancel()
