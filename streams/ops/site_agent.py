"""``usync config import-site-agent``: a waldur-site-agent YAML configuration turned into usync sites and links.

The agent's federation plugin runs on Waldur A (``waldur_api_url``, the offering's site)
and pulls usernames from its *target*, Waldur B (``backend_settings.target_api_url``).
In usync words the agent's local offering is a link's **target** and the agent's target
offering is the link's **source**: B's usernames flow to A in both tools.

Tokens in the agent file are never copied: every site gets a ``token_env`` naming an
environment variable, and the notes say which agent field to take its value from.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlsplit

import msgspec
import yaml

from streams.contract.config import ConfigError, parse_config

DEFAULT_WS_PATH: Final = "/rmqws-stomp"  # the agent's default, as Waldur's ingress serves it
AGENT_RECONCILE_MINUTES: Final = 60  # WALDUR_SITE_AGENT_RECONCILIATION_PERIOD_MINUTES default
_ENV_REFERENCE: Final = re.compile(r"^\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?$")


class BackendSettings(msgspec.Struct, kw_only=True):
    target_api_url: str | None = None
    target_api_token: str | None = None
    target_offering_uuid: str | None = None
    target_stomp_enabled: bool = False


class AgentOffering(msgspec.Struct, kw_only=True):
    """The fields of one agent offering that matter to the username sync (others are ignored)."""

    name: str = ""
    waldur_api_url: str = ""
    waldur_api_token: str | None = None
    waldur_offering_uuid: str = ""
    backend_type: str = ""
    membership_sync_backend: str = ""
    username_reconciliation_enabled: bool = False
    stomp_enabled: bool = False
    websocket_use_tls: bool = True
    stomp_ws_host: str | None = None
    stomp_ws_port: int | None = None
    stomp_ws_path: str | None = None
    backend_settings: BackendSettings = msgspec.field(default_factory=BackendSettings)

    @property
    def is_federation(self) -> bool:
        s = self.backend_settings
        return bool(s.target_api_url and s.target_offering_uuid)


class AgentConfig(msgspec.Struct, kw_only=True):
    offerings: list[AgentOffering] = []


@dataclass
class _Site:
    name: str
    api_url: str
    token_env: str
    token_from: str  # where the operator finds the value (never the value)
    broker_url: str = ""
    suggested_broker_url: str = ""


@dataclass
class Imported:
    """The usync configuration as TOML text, and notes for the operator (no secrets in either)."""

    toml: str
    notes: list[str] = field(default_factory=list)
    token_envs: dict[str, str] = field(default_factory=dict)  # env name -> agent field it comes from


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60] or "x"


def _unique(candidates: list[str], taken: set[str]) -> str:
    for candidate in candidates:
        if candidate and candidate not in taken:
            return candidate
    base, n = candidates[-1], 2
    while f"{base}-{n}" in taken:
        n += 1
    return f"{base}-{n}"


def _site_names(url: str) -> list[str]:
    parts = urlsplit(url)
    host = parts.hostname or "site"
    first = host.split(".")[0]
    names = [] if first.isdigit() else [_slug(first)]
    names.append(_slug(host))
    if parts.port:
        names.append(_slug(f"{host}-{parts.port}"))
    return names


def _broker_url(api_url: str, tls: bool, host: str | None, port: int | None, path: str | None) -> str:
    """The agent's rule: the API host unless overridden, 443/80 by TLS, /rmqws-stomp."""
    parts = urlsplit(api_url)
    host = host or parts.hostname or ""
    default_port = 443 if tls else 80
    netloc = host if port in (None, default_port) else f"{host}:{port}"
    return f"{'wss' if tls else 'ws'}://{netloc}{path or DEFAULT_WS_PATH}"


def _normal_api_url(url: str) -> str:
    """The agent accepts ``https://host/`` or ``https://host/api/``; usync wants the latter."""
    url = url.rstrip("/")
    return url + "/" if url.endswith("/api") else url + "/api/"


class _Builder:
    def __init__(self) -> None:
        self.sites: dict[str, _Site] = {}  # keyed by api url
        self.notes: list[str] = []
        self._tokens: dict[str, str | None] = {}

    def site(self, api_url: str, token: str | None, where: str) -> _Site:
        api_url = _normal_api_url(api_url)
        found = self.sites.get(api_url)
        if found is not None:
            if token != self._tokens[api_url]:  # compared in memory, never printed
                self.notes.append(f"{where}: differs from {found.token_from}; usync uses one token per site ({found.token_env})")
            return found
        name = _unique(_site_names(api_url), {s.name for s in self.sites.values()})
        reference = _ENV_REFERENCE.match(token or "")
        token_env = reference.group(1) if reference else "USYNC_TOKEN_" + re.sub(r"[^A-Z0-9]", "_", name.upper())
        site = _Site(name=name, api_url=api_url, token_env=token_env, token_from=where)
        self.sites[api_url] = site
        self._tokens[api_url] = token
        return site


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def _render(sites: list[_Site], links: list[dict[str, Any]], *, app_id: str, bootstrap: str,
            topic_prefix: str, reconcile_interval: float) -> str:
    out = [
        "# Generated by `usync config import-site-agent`: review before use.",
        "# Tokens are not copied: set each token_env variable (see the notes printed on stderr).",
        f"app_id = {_toml(app_id)}",
        f"reconcile_interval = {_toml(float(reconcile_interval))}",
        "",
        "[kafka]",
        f"bootstrap_servers = {_toml(bootstrap)}",
        f"events_topic = {_toml(topic_prefix + '.offering-users.events')}",
        f"dlq_topic = {_toml(topic_prefix + '.offering-users.dlq')}",
        f"outcomes_topic = {_toml(topic_prefix + '.username-sync.outcomes')}",
    ]
    for site in sites:
        out += ["", f"[sites.{site.name}]", f"api_url = {_toml(site.api_url)}", f"token_env = {_toml(site.token_env)}"]
        if site.broker_url:
            out += [f"broker_url = {_toml(site.broker_url)}", "register = true"]
        elif site.suggested_broker_url:
            out += ["# No STOMP settings for this site in the agent file: usync learns its changes by",
                    "# reconciliation only. Uncomment to sync on its events as well:",
                    f"# broker_url = {_toml(site.suggested_broker_url)}", "# register = true"]
    for link in links:
        out += ["", "[[links]]"] + [f"{key} = {value}" for key, value in link.items()]
    return "\n".join(out) + "\n"


def _endpoint(site: str, offering: str) -> str:
    return f"{{ site = {_toml(site)}, offering = {_toml(offering)} }}"


def import_site_agent(text: str | bytes, *, app_id: str = "usync", bootstrap: str = "127.0.0.1:9092",
                      topic_prefix: str = "waldur", reconcile_interval: float = AGENT_RECONCILE_MINUTES * 60.0) -> Imported:
    """Translate an agent configuration; raise :class:`ConfigError` if nothing can be imported."""
    try:
        agent = msgspec.convert(yaml.safe_load(text) or {}, AgentConfig, strict=False)
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {exc}") from None
    except msgspec.ValidationError as exc:
        raise ConfigError(f"not a waldur-site-agent configuration: {exc}") from None
    builder = _Builder()
    links: list[dict[str, Any]] = []
    link_names: set[str] = set()
    for i, offering in enumerate(agent.offerings):
        label = f"offerings[{i}] ({offering.name or offering.waldur_offering_uuid or '?'})"
        if not offering.is_federation:
            builder.notes.append(f"{label}: skipped, not a Waldur federation offering (no target_api_url/target_offering_uuid)")
            continue
        if not offering.waldur_api_url or not offering.waldur_offering_uuid:
            builder.notes.append(f"{label}: skipped, waldur_api_url or waldur_offering_uuid missing")
            continue
        settings = offering.backend_settings
        target = builder.site(offering.waldur_api_url, offering.waldur_api_token, f"{label}.waldur_api_token")
        source = builder.site(settings.target_api_url or "", settings.target_api_token,
                              f"{label}.backend_settings.target_api_token")
        if offering.stomp_enabled:
            target.broker_url = _broker_url(target.api_url, offering.websocket_use_tls, offering.stomp_ws_host,
                                            offering.stomp_ws_port, offering.stomp_ws_path)
        if settings.target_stomp_enabled:
            source.broker_url = _broker_url(source.api_url, True, None, None, None)
        source.suggested_broker_url = source.suggested_broker_url or _broker_url(source.api_url, True, None, None, None)
        target.suggested_broker_url = target.suggested_broker_url or _broker_url(target.api_url, True, None, None, None)
        name = _unique([_slug(offering.name or offering.waldur_offering_uuid)], link_names)
        link_names.add(name)
        links.append({
            "name": _toml(name),
            "target": _endpoint(target.name, offering.waldur_offering_uuid),
            "source": _endpoint(source.name, settings.target_offering_uuid or ""),
            "reconcile": _toml(offering.username_reconciliation_enabled),
        })
        if not offering.username_reconciliation_enabled and not source.broker_url:
            builder.notes.append(f"{label}: link {name!r} has neither reconciliation nor B's events; "
                                 "enable one of them or it will never sync")
    if not links:
        raise ConfigError("no Waldur federation offering found in the agent configuration")
    sites = list(builder.sites.values())
    toml = _render(sites, links, app_id=app_id, bootstrap=bootstrap, topic_prefix=topic_prefix,
                   reconcile_interval=reconcile_interval)
    token_envs = {s.token_env: s.token_from for s in sites}
    # Self-check: what we print must be a configuration usync accepts (tokens stubbed).
    parse_config(toml, {env: "placeholder" for env in token_envs})
    notes = [f"site {s.name}: set {s.token_env} to the value of {s.token_from}" for s in sites] + builder.notes
    return Imported(toml=toml, notes=notes, token_envs=token_envs)
