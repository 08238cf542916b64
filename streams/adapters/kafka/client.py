"""Client options from the config (TLS/SASL included) and how Kafka failures are classified."""

from __future__ import annotations

import logging
import ssl
from typing import Any

from aiokafka.errors import KafkaError

from streams.adapters.tls import client_context
from streams.contract.config import Config
from streams.errors import KafkaUnavailable
from streams.retry import is_transient

log = logging.getLogger("usync.kafka")

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
