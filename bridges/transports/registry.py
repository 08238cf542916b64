"""The broker transports by URL scheme: which connection class opens a ``broker_url``, and
the origin its facts carry. The schemes themselves are listed once, in
``streams.contract.config.BROKER_SCHEMES``; this module gives each protocol family
its factory. Adding a transport: a scheme there, a factory here.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit

from streams.contract.config import BROKER_SCHEMES
from streams.contract.schema import Origin

from bridges.transports.base import BrokerConnection


def _stomp(*args: object, **options: object) -> BrokerConnection:
    from bridges.transports.stomp import StompConnection

    return StompConnection(*args, **options)  # type: ignore[arg-type]


def _amqp(*args: object, **options: object) -> BrokerConnection:
    from bridges.transports.amqp import AmqpConnection

    return AmqpConnection(*args, **options)  # type: ignore[arg-type]


#: Protocol family -> connection factory (imported lazily: a STOMP-only bridge never loads pika).
FACTORIES: dict[str, Callable[..., BrokerConnection]] = {"stomp": _stomp, "amqp": _amqp}


def scheme_of(url: str) -> str:
    scheme = urlsplit(url).scheme.lower()
    if scheme not in BROKER_SCHEMES:
        raise ValueError(f"unsupported broker URL scheme {scheme!r} (expected one of {', '.join(BROKER_SCHEMES)})")
    return scheme


def origin_of(url: str) -> Origin:
    """The envelope origin of the facts a ``broker_url`` carries."""
    return BROKER_SCHEMES[scheme_of(url)][1]


def open_connection(url: str, login: str, passcode: str, vhost: str = "/", heartbeat: float = 10.0,
                    **options: object) -> BrokerConnection:
    """A connection for ``url``, the transport chosen by its scheme (not connected yet).

    ``ws://``/``wss://`` web-STOMP, ``stomp://``/``stomp+ssl://`` plain STOMP,
    ``amqp://``/``amqps://`` AMQP 0-9-1. ``options`` go to the transport
    (e.g. ``ssl_context``, ``connect_timeout``).
    """
    family = BROKER_SCHEMES[scheme_of(url)][0]
    return FACTORIES[family](url, login, passcode, vhost, heartbeat=heartbeat, **options)
