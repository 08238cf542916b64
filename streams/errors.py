"""usync's one rooted exception tree (httpx style: a root, subtrees, mapped at each adapter).

Every adapter turns the failures of its library into one of these, so a loop decides
what to do from the class alone:

    UsyncError
    ├── ConfigError               the configuration cannot be used (contract.config)
    ├── TransientError            a dependency is away or slow: retried with backoff, forever
    │   ├── KafkaUnavailable      Kafka did not answer or refused a request it may take later
    │   │   └── KafkaRefused      the cluster refuses the connection (SASL credentials, TLS): names servers and reason
    │   └── SiteUnavailable       a Waldur API answered 5xx/429, timed out or refused the connection
    │       └── GaveUp            one call's attempts ran out (its caller records gave-up)
    └── PermanentError            retrying cannot help: recorded, never retried
        ├── Refused               a site answered a request 4xx as wrong (400, 409, 422 ...)
        └── Undecodable           a record on a topic that is not what its schema says

Anything that is not a :class:`TransientError` (or one of the library failures an
adapter classifies as transient, see :func:`streams.retry.is_transient`) is a bug or a
permanent failure and goes up loudly.
"""

from __future__ import annotations


class UsyncError(Exception):
    """The root of every error usync raises on purpose."""


class ConfigError(UsyncError, ValueError):
    """The configuration cannot be used; the message says which field and why."""


class TransientError(UsyncError):
    """A dependency is away or slow; the same request may succeed later."""


class KafkaUnavailable(TransientError):
    """Kafka did not take or give records; the caller starts over from what Kafka has."""


class KafkaRefused(KafkaUnavailable):
    """The Kafka cluster refuses our connection (SASL credentials, TLS handshake): still
    transient, since a wrong password is fixed on Kafka's side or by a restart with a new
    secret. ``reason`` never holds a secret."""

    def __init__(self, servers: str, reason: str) -> None:
        super().__init__(f"Kafka {servers}: connection refused: {reason}")
        self.servers = servers
        self.reason = reason


class SiteUnavailable(TransientError):
    """A Waldur site did not give a final answer (5xx, 429, timeout, connection refused)."""

    def __init__(self, site: str, status: int | None, reason: str) -> None:
        super().__init__(f"{site}: {reason}")
        self.site = site
        self.status = status
        self.reason = reason


class GaveUp(SiteUnavailable):
    """Retryable failures exhausted one call's attempts; ``status`` is the last one (None: no answer)."""

    def __init__(self, site: str, status: int | None, attempts: int, reason: str) -> None:
        super().__init__(site, status, reason)
        self.attempts = attempts


class PermanentError(UsyncError):
    """Retrying the same input cannot help: the failure is recorded, never retried."""


class Refused(PermanentError):
    """A site refused a request as wrong (a 4xx that is not about credentials or a missing
    object): sending it again cannot help. ``detail`` is the site's answer, capped and
    scrubbed of the token by the adapter."""

    def __init__(self, site: str, status: int, detail: str) -> None:
        super().__init__(f"{site} answered HTTP {status}")
        self.site = site
        self.status = status
        self.detail = detail


class Undecodable(PermanentError):
    """A record whose bytes are not what its topic's schema says."""
