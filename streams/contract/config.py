"""usync's configuration: one TOML file decoded into msgspec Structs, secrets from the environment.

A bad file gives one :class:`ConfigError` whose message names the field (``$.sites.a.api_url``)
and, for cross-field problems (a link naming an unknown site, say), lists every problem at once.
Secret values never live in the file: a field ending in ``_env`` names the environment
variable that holds them, and the value is wrapped in :class:`Secret` so it cannot leak
through ``repr``, logs or error messages.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Final, Literal

import msgspec

from streams.contract.schema import Origin, state_display
from streams.errors import ConfigError

DEFAULT_STATES: Final = ("OK", "Creating", "Requested")

Positive = Annotated[float, msgspec.Meta(gt=0)]
PositiveInt = Annotated[int, msgspec.Meta(gt=0)]
NonNegative = Annotated[float, msgspec.Meta(ge=0)]
Name = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=64)]


class Secret:
    """A secret value that never shows itself in repr or str."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def scrub(self, text: str) -> str:
        """``text`` with the secret masked (servers may echo what they were sent)."""
        return text.replace(self._value, "***") if self._value else text

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other.reveal() == self._value

    def __hash__(self) -> int:
        return hash(self._value)


#: The part of a registering site's ``rates`` (``register = true``) kept for the bridges'
#: registration calls (identity, subscription and queue: 3-4 calls per offering, at start
#: and when a queue is re-created); the workers share the rest. Each bridge process paces
#: its calls at its part of it, for at most ``BRIDGES_PER_SITE`` bridges (the pair of
#: docs/operator-guide.md): 2 calls/s, 2 banked, of the default 20/s and 20.
REGISTRATION_SHARE: Final = 0.2
BRIDGES_PER_SITE: Final = 2


class Rates(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """API budget for one Waldur site, for every process together: the workers' calls
    (correct stage, lookups, reconciler) and the bridges' registration calls."""

    requests_per_second: Positive = 20.0
    burst: PositiveInt = 20
    concurrency: PositiveInt = 8
    timeout: Positive = 10.0


class Subscription(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Broker credentials and queues for one Waldur event subscription (``register = false``)."""

    login: str  # the subscription uuid
    vhost: str  # the subscriber's user uuid
    queues: list[str]
    passcode_env: str | None = None  # defaults to the site's token


class Site(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    api_url: str
    token_env: str
    broker_url: str = ""
    register: bool = False
    agent_name: str = "usync"
    queue_style: str = "subscription"  # or "consumer"
    subscriptions: list[Subscription] = []
    rates: Rates = msgspec.field(default_factory=Rates)
    # TLS trust per site (PEM files; default: the system's CA bundle or SSL_CERT_FILE).
    ca_file: str | None = None  # CA bundle that signed the API's certificate
    broker_ca_file: str | None = None  # CA bundle that signed the broker's (wss, stomp+ssl, amqps)
    client_cert_file: str | None = None  # client certificate (mutual TLS), to the API and the broker
    client_key_file: str | None = None


class Endpoint(msgspec.Struct, forbid_unknown_fields=True):
    site: Name
    offering: Annotated[str, msgspec.Meta(pattern=r"^[0-9a-fA-F-]{32,36}$")]


class Link(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Target (site A, offering A) takes usernames from source (site B, offering B)."""

    name: Name
    target: Endpoint
    source: Endpoint
    reconcile: bool = True
    target_states: list[str] = msgspec.field(default_factory=lambda: list(DEFAULT_STATES))


#: Kafka's record-batch codecs (aiokafka's; lz4 and zstd through cramjam).
Codec = Literal["none", "gzip", "lz4", "zstd"]


class Compression(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The codec of each topic usync writes: set on the topic (``compression.type``) and by
    usync's producers. zstd by default: ``bench/bench_history.py`` measured it smallest on
    the real record mix at a producer and consumer CPU per record close to lz4's (the
    figures are in docs/capacity.md). ``internal``: the worker's repartition and
    corrections topics and faust's changelogs."""

    events: Codec = "zstd"
    outcomes: Codec = "zstd"
    dlq: Codec = "zstd"
    listings: Codec = "zstd"
    checkpoints: Codec = "zstd"
    internal: Codec = "zstd"


def _beside(events_topic: str, what: str) -> str:
    """A topic named after the events topic: its trailing "events" made ``what``, else ``.what`` added."""
    return events_topic[: -len("events")] + what if events_topic.endswith("events") else f"{events_topic}.{what}"


class Kafka(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    bootstrap_servers: str = "127.0.0.1:9092"
    events_topic: str = "waldur.offering-users.events"
    dlq_topic: str = "waldur.offering-users.dlq"
    outcomes_topic: str = "waldur.username-sync.outcomes"
    # A reconcile pass's listings, page by page (the events topic keeps only what they
    # changed); kept ``listings_retention`` seconds (default: 3 reconcile intervals, at
    # least an hour): long enough for a worker down for a while to compare them.
    # Unset: the events topic's name with "events" at its end made "listings"
    # (waldur.offering-users.listings), else with ".listings" added.
    listings_topic: str | None = None
    listings_retention: Positive | None = None
    # Table checkpoints, kept as long as the events topic (replay starts from them).
    # Unset: named after the events topic as above ("checkpoints").
    checkpoints_topic: str | None = None
    # Where each user's facts are (`usync index` writes it, `usync history` reads it), keyed
    # by user; a reader reads one of its partitions. Unset: named after the events topic.
    user_index_topic: str | None = None
    index_partitions: PositiveInt = 64
    compression: Compression = msgspec.field(default_factory=Compression)
    partitions: PositiveInt = 8
    # Replicas of every topic usync creates (its own, faust's changelogs and internal
    # topics) and the in-sync replicas a write needs. Unset: 3 and 2 when
    # bootstrap_servers lists more than one broker (one broker may die, nothing written
    # is lost and nothing stops), else 1 and the broker's default.
    replication_factor: PositiveInt | None = None
    min_insync_replicas: PositiveInt | None = None
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password_env: str | None = None
    ssl_cafile: str | None = None  # CA bundle for SSL/SASL_SSL (default: the system's)
    ssl_certfile: str | None = None  # client certificate (mutual TLS)
    ssl_keyfile: str | None = None
    ssl_check_hostname: bool = True
    # Seconds one Kafka request of the worker may take (faust's broker_request_timeout;
    # at least the 10 s session timeout). Table recovery retries past it, never gives up.
    request_timeout: Annotated[float, msgspec.Meta(ge=10)] = 90.0
    # Seconds a worker waits after a rebalance before restoring its tables, so that
    # workers joining together cause one restore, not one each.
    recovery_delay: NonNegative = 0.0

    def __post_init__(self) -> None:
        self.listings_topic = self.listings_topic or _beside(self.events_topic, "listings")
        self.checkpoints_topic = self.checkpoints_topic or _beside(self.events_topic, "checkpoints")
        self.user_index_topic = self.user_index_topic or _beside(self.events_topic, "user-index")
        if self.replication_factor is None:
            self.replication_factor = 3 if len(self.bootstrap_servers.split(",")) > 1 else 1
        if self.min_insync_replicas is None and self.replication_factor > 1:
            self.min_insync_replicas = min(2, self.replication_factor - 1)
        if (self.min_insync_replicas or 0) > self.replication_factor:
            raise ValueError(f"min_insync_replicas ({self.min_insync_replicas}) exceeds "
                             f"replication_factor ({self.replication_factor})")

    @property
    def replica_configs(self) -> dict[str, str]:
        """The topic configuration every usync topic is created with (none on one broker)."""
        return {} if self.min_insync_replicas is None else {"min.insync.replicas": str(self.min_insync_replicas)}


class RabbitMQ(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    prefetch: PositiveInt = 1000
    heartbeat: Positive = 10.0
    connect_timeout: Positive = 10.0


class Config(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, dict=True):
    sites: dict[Name, Site]
    links: list[Link] = []
    kafka: Kafka = msgspec.field(default_factory=Kafka)
    rabbitmq: RabbitMQ = msgspec.field(default_factory=RabbitMQ)
    reconcile_interval: Positive = 900.0
    # Seconds between a worker's table checkpoints (streams.stages.checkpoint): what
    # `usync replay` starts from; `replay --until T` folds what lies between the one
    # before T and T.
    checkpoint_interval: Positive = 86400.0
    # A row whose PATCH A refused (400, 409, 422 ...) is tried again only when B's or A's
    # username changes, or after this many seconds, doubling per refusal in a row up to
    # rejection_retry_max (streams.core.decide.RetryWindow).
    rejection_retry: Positive = 3600.0
    rejection_retry_max: Positive = 86400.0
    # Seconds between the re-raise timer's scans, and how old a drifting row's newest fact
    # must be before it is raised again (streams.stages.reraise).
    reraise_interval: Positive = 30.0
    app_id: str = "usync"
    web_host: str = "127.0.0.1"  # 0.0.0.0 in a container, so health and metrics are reachable
    web_port: int = 6066
    # Environment variable holding the bearer token of the worker's operator views
    # (/usync/table/, /usync/drift/, POST /usync/reconcile/). Unset: those stay open and
    # the worker says so in one WARNING at start. /health and /metrics are always open.
    web_token_env: str | None = None
    data_dir: str = ".local/usync-data"

    @property
    def listings_retention(self) -> float:
        """Seconds the listings topic keeps pages: configured, else 3 reconcile intervals (at least an hour)."""
        return self.kafka.listings_retention or max(3600.0, 3 * self.reconcile_interval)

    def secret(self, env_name: str) -> Secret:
        """The value of a secret-holding environment variable (checked at load)."""
        environ: Mapping[str, str] = self.__dict__.get("_environ", os.environ)
        return Secret(environ[env_name])

    def site_token(self, site: str) -> Secret:
        return self.secret(self.sites[site].token_env)

    def web_token(self) -> Secret | None:
        """The operator views' bearer token, None when ``web_token_env`` is not configured."""
        return self.secret(self.web_token_env) if self.web_token_env else None

    def web_headers(self) -> dict[str, str]:
        """What a client of the operator views sends (``usync status``, ``replay --compare``)."""
        token = self.web_token()
        return {"Authorization": f"Bearer {token.reveal()}"} if token else {}


#: Every broker URL scheme the bridge speaks: scheme -> (protocol family, origin of the
#: facts it carries). The one list: this file's checks, the bridge's transport registry
#: (``bridges.transports.registry``, a factory per family) and the relay read it.
BROKER_SCHEMES: Final[dict[str, tuple[str, Origin]]] = {
    "ws": ("stomp", Origin.STOMP),
    "wss": ("stomp", Origin.STOMP),
    "stomp": ("stomp", Origin.STOMP),
    "stomp+ssl": ("stomp", Origin.STOMP),
    "amqp": ("amqp", Origin.AMQP),
    "amqps": ("amqp", Origin.AMQP),
}
_SCHEMES: Final = tuple(f"{scheme}://" for scheme in BROKER_SCHEMES)


def _problems(config: Config, environ: Mapping[str, str]) -> list[str]:
    problems: list[str] = []
    for name, site in config.sites.items():
        where = f"$.sites.{name}"
        if not site.api_url.startswith(("http://", "https://")):
            problems.append(f"{where}.api_url: must start with http:// or https://")
        if site.broker_url and not site.broker_url.startswith(_SCHEMES):
            problems.append(f"{where}.broker_url: scheme must be one of {', '.join(_SCHEMES)}")
        if site.queue_style not in ("subscription", "consumer"):
            problems.append(f"{where}.queue_style: must be 'subscription' or 'consumer'")
        env_fields = [("token_env", site.token_env)] + [
            (f"subscriptions[{i}].passcode_env", s.passcode_env)
            for i, s in enumerate(site.subscriptions)
            if s.passcode_env
        ]
        problems += _file_problems(where, site, ("ca_file", "broker_ca_file", "client_cert_file", "client_key_file"))
        if bool(site.client_cert_file) != bool(site.client_key_file):
            problems.append(f"{where}: client_cert_file and client_key_file go together")
        for field, env_name in env_fields:
            if env_name not in environ:
                problems.append(f"{where}.{field}: environment variable {env_name} is not set")
    problems += _kafka_problems(config.kafka)
    if config.web_token_env and not environ.get(config.web_token_env):
        problems.append(f"$.web_token_env: environment variable {config.web_token_env} is not set (or empty)")
    if config.kafka.sasl_password_env and config.kafka.sasl_password_env not in environ:
        problems.append(f"$.kafka.sasl_password_env: environment variable {config.kafka.sasl_password_env} is not set")
    seen: set[str] = set()
    for i, link in enumerate(config.links):
        where = f"$.links[{i}]"
        if link.name in seen:
            problems.append(f"{where}.name: duplicate link name {link.name!r}")
        seen.add(link.name)
        for side in ("target", "source"):
            endpoint: Endpoint = getattr(link, side)
            if endpoint.site not in config.sites:
                problems.append(f"{where}.{side}.site: unknown site {endpoint.site!r}")
        if (link.target.site, link.target.offering) == (link.source.site, link.source.offering):
            problems.append(f"{where}: target and source are the same offering")
    return problems


_PROTOCOLS: Final = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
_MECHANISMS: Final = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "GSSAPI", "OAUTHBEARER")


def _kafka_problems(kafka: Kafka) -> list[str]:
    """TLS/SASL settings that aiokafka would only reject at connect time, reported at load."""
    problems: list[str] = []
    where = "$.kafka"
    if kafka.security_protocol not in _PROTOCOLS:
        problems.append(f"{where}.security_protocol: must be one of {', '.join(_PROTOCOLS)}")
    sasl = kafka.security_protocol.startswith("SASL_")
    if sasl and not kafka.sasl_mechanism:
        problems.append(f"{where}.sasl_mechanism: required with security_protocol {kafka.security_protocol}")
    if kafka.sasl_mechanism and not sasl:
        problems.append(f"{where}.sasl_mechanism: needs security_protocol SASL_PLAINTEXT or SASL_SSL")
    if kafka.sasl_mechanism and kafka.sasl_mechanism not in _MECHANISMS:
        problems.append(f"{where}.sasl_mechanism: must be one of {', '.join(_MECHANISMS)}")
    if kafka.sasl_mechanism in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512") and not (kafka.sasl_username and kafka.sasl_password_env):
        problems.append(f"{where}: sasl_mechanism {kafka.sasl_mechanism} needs sasl_username and sasl_password_env")
    if bool(kafka.ssl_certfile) != bool(kafka.ssl_keyfile):
        problems.append(f"{where}: ssl_certfile and ssl_keyfile go together")
    return problems + _file_problems(where, kafka, ("ssl_cafile", "ssl_certfile", "ssl_keyfile"))


def _file_problems(where: str, section: object, fields: tuple[str, ...]) -> list[str]:
    """Each configured file that is missing or unreadable, by field (a TLS handshake would
    otherwise fail only at connect time, and retry forever)."""
    problems = []
    for field in fields:
        path = getattr(section, field)
        if not path:
            continue
        if not Path(path).is_file():
            problems.append(f"{where}.{field}: no such file {path}")
        elif not os.access(path, os.R_OK):
            problems.append(f"{where}.{field}: cannot read {path}")
    return problems


def _normalise(config: Config) -> Config:
    """Dashed and upper-case UUIDs mean the same offering: store Waldur's canonical form."""
    for link in config.links:
        for endpoint in (link.target, link.source):
            endpoint.offering = endpoint.offering.replace("-", "").lower()
        # The fold compares display names exactly: "ok" in a file must mean "OK".
        link.target_states = [state_display(state) or state for state in link.target_states]
    return config


def _convert(data: dict) -> Config:
    # Sites are converted one by one because msgspec reports a dict value's path as
    # `$.sites[...]`; an operator needs to read `$.sites.a.api_url`.
    sites = data.get("sites")
    if isinstance(sites, dict):
        converted = {}
        for name, site in sites.items():
            try:
                converted[name] = msgspec.convert(site, Site)
            except msgspec.ValidationError as exc:
                where = str(exc).replace("`$", f"`$.sites.{name}", 1)
                raise ConfigError(f"invalid configuration: {where}") from None
        data = {**data, "sites": converted}
    try:
        return msgspec.convert(data, Config)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid configuration: {exc}") from None


def parse_config(text: str | bytes, environ: Mapping[str, str] | None = None) -> Config:
    """Decode and validate a TOML configuration, or raise :class:`ConfigError`."""
    environ = os.environ if environ is None else environ
    try:
        data = tomllib.loads(text.decode() if isinstance(text, bytes) else text)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"not valid TOML: {exc}") from None
    config = _convert(data)
    problems = _problems(config, environ)
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))
    config.__dict__["_environ"] = environ  # not a field: never encoded, never printed
    return _normalise(config)


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> Config:
    try:
        text = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read configuration {path}: {exc.strerror}") from None
    return parse_config(text, environ)
