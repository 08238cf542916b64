"""Client options from the config (TLS/SASL included), how Kafka failures are classified,
and why a cluster refuses us (:func:`diagnose`: aiokafka's bootstrap says only "Unable to
bootstrap from ..." and drops the SASL or TLS error of each server)."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiokafka.conn import create_conn
from aiokafka.errors import (AuthenticationFailedError, AuthenticationMethodNotSupported, IllegalSaslStateError,
                             KafkaConnectionError, KafkaError, SaslAuthenticationFailed, UnsupportedSaslMechanismError)

from streams.adapters.tls import client_context, tls_reason
from streams.contract.config import Config
from streams.errors import KafkaRefused, KafkaUnavailable
from streams.retry import is_transient

log = logging.getLogger("usync.kafka")

T = TypeVar("T")

#: The fetch wait of every worker consumer (faust's, the route and correct stages'):
#: why 100 ms and not faust's 1,500, see ``streams.adapters.faust.app``.
FETCH_MAX_WAIT_MS = 100


def kafka_transient(exc: BaseException) -> bool:
    """Every aiokafka failure counts as transient, like Kafka being away: a broker that
    refuses our SASL credentials or a topic it has not elected a leader for yet is fixed
    on Kafka's side, and the process must still be running when it is."""
    return isinstance(exc, (KafkaError, KafkaUnavailable, OSError)) or is_transient(exc)


def client_options(config: Config) -> dict[str, Any]:
    """Connection options for any aiokafka client, secrets resolved from the environment."""
    kafka = config.kafka
    options: dict[str, Any] = {
        "bootstrap_servers": kafka.bootstrap_servers,
        "security_protocol": kafka.security_protocol,
    }
    if kafka.security_protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = ssl_context(config)
    if kafka.sasl_mechanism:
        options["sasl_mechanism"] = kafka.sasl_mechanism
        options["sasl_plain_username"] = kafka.sasl_username
        if kafka.sasl_password_env:
            options["sasl_plain_password"] = config.secret(kafka.sasl_password_env).reveal()
    return options


def ssl_context(config: Config) -> ssl.SSLContext:
    """TLS to Kafka: the configured CA (or the system's), a client certificate for mutual TLS."""
    kafka = config.kafka
    return client_context(kafka.ssl_cafile, kafka.ssl_certfile, kafka.ssl_keyfile, kafka.ssl_check_hostname)


async def close_quietly(client: Any, what: str) -> None:
    """Stop an aiokafka client whose broker may be gone already: nothing left to close cleanly."""
    try:
        await client.stop()
    except Exception as exc:
        log.debug("%s: closing: %s", what, exc)


#: How long the probe of :func:`diagnose` may take (connect, TLS, SASL).
PROBE_TIMEOUT = 10.0

_SASL_REFUSED = (SaslAuthenticationFailed, AuthenticationFailedError)
_SASL_UNSUPPORTED = (UnsupportedSaslMechanismError, AuthenticationMethodNotSupported, IllegalSaslStateError)


def first_server(bootstrap_servers: str) -> tuple[str, int]:
    """(host, port) of the first of ``host:port,host:port`` (``[v6]:port`` too; port 9092 if none)."""
    server = bootstrap_servers.split(",")[0].strip()
    if server.startswith("["):
        host, _, rest = server[1:].partition("]")
        return host, int(rest.lstrip(":") or 9092)
    host, _, port = server.rpartition(":") if ":" in server else (server, "", "")
    return host, int(port or 9092)


def refusal_reason(exc: BaseException, secret: str | None = None) -> str | None:
    """Why a connection attempt was refused, from its exception: the broker's SASL answer or
    the TLS handshake's reason; None when Kafka is only away (refused port, timeout, reset).
    ``secret`` (the password) is masked should a library ever echo it."""
    if isinstance(exc, _SASL_REFUSED):
        reason = f"SASL authentication refused: {_message(exc)}"
    elif isinstance(exc, _SASL_UNSUPPORTED):
        reason = f"SASL mechanism refused: {_message(exc)}"
    else:
        tls = tls_reason(exc)
        reason = f"TLS handshake refused: {tls}" if tls else None
    if reason and secret:
        reason = reason.replace(secret, "***")
    return reason


def _message(exc: BaseException) -> str:
    """The broker's own words: aiokafka's broker errors print ``[Error 58] Name: words``."""
    text = str(exc)
    return text.split(": ", 1)[1] if text.startswith("[Error ") and ": " in text else text or type(exc).__name__


async def probe(options: dict[str, Any], timeout: float = PROBE_TIMEOUT) -> str | None:
    """Open one connection, as ``options`` say (:func:`client_options`), to the first bootstrap
    server with aiokafka's own ``create_conn``; the reason it is refused, None if it is not."""
    host, port = first_server(options["bootstrap_servers"])
    try:
        async with asyncio.timeout(timeout):
            conn = await create_conn(
                host, port, client_id="usync-probe", request_timeout_ms=int(timeout * 1000),
                ssl_context=options.get("ssl_context"), security_protocol=options.get("security_protocol", "PLAINTEXT"),
                sasl_mechanism=options.get("sasl_mechanism"), sasl_plain_username=options.get("sasl_plain_username"),
                sasl_plain_password=options.get("sasl_plain_password"),
            )
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        return refusal_reason(exc, options.get("sasl_plain_password"))
    conn.close()
    return None


async def diagnose(config: Config) -> str | None:
    """Why the configured Kafka cluster refuses us (no secret in it), or None."""
    return await probe(client_options(config))


class KafkaAccess:
    """Whether this process's Kafka cluster lets it in, for ``/health``: one ERROR per distinct
    refusal (not one per retry), one INFO once it is connected again."""

    def __init__(self, options: dict[str, Any], logger: logging.Logger = log) -> None:
        self.options = options
        self.servers = str(options["bootstrap_servers"])
        self.reason: str | None = None
        self.connected_once = False
        self._log = logger

    async def classify(self, exc: BaseException) -> BaseException:
        """``exc``, or :class:`KafkaRefused` naming the servers and why, when the failure is
        (or a probe finds behind aiokafka's "Unable to bootstrap") a refusal."""
        if isinstance(exc, KafkaRefused):
            return exc
        reason = refusal_reason(exc, self.options.get("sasl_plain_password"))
        if reason is None and isinstance(exc, KafkaConnectionError):
            reason = await probe(self.options)
        if reason is None:
            return exc
        self.refused(reason)
        return KafkaRefused(self.servers, reason)

    async def attempt(self, start: Callable[[], Awaitable[T]]) -> T:
        """``await start()`` (a client's start, a topic creation); a refusal comes out as
        :class:`KafkaRefused`, and success counts as connected."""
        try:
            result = await start()
        except Exception as exc:
            refused = await self.classify(exc)
            if refused is exc:
                raise
            raise refused from exc
        self.connected()
        return result

    def refused(self, reason: str) -> None:
        if reason != self.reason:
            self._log.error("Kafka %s: connection refused: %s; retrying with backoff", self.servers, reason)
        self.reason = reason

    def connected(self) -> None:
        if self.reason is not None:
            self._log.info("Kafka %s: connected again", self.servers)
        self.reason = None
        self.connected_once = True

    def report(self) -> dict[str, Any]:
        """``{"servers", "state": connected | refused | connecting, "reason"}`` for ``/health``."""
        state = "refused" if self.reason else "connected" if self.connected_once else "connecting"
        return {"servers": self.servers, "state": state, "reason": self.reason or ""}
