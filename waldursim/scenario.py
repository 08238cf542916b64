"""Scenarios: sites, offerings and N users with usernames, from TOML or JSON.

    seed = 1
    publish_rate = 500            # messages/s per site, 0 = unlimited

    [[sites]]
    name = "b"
    port = 0                      # 0 = any free port
    staff_token = "…"             # optional fixed token

      [[sites.users]]             # named users: managers, identity managers, …
      username = "agent-b"
      token = "…"                 # optional
      is_identity_manager = false
      managed_isds = []
      active_isds = []

      [[sites.offerings]]
      name = "hpc-b"
      type = "Marketplace.Slurm"
      managers = ["agent-b"]      # OFFERING.MANAGER
      users = 10000               # generated members
      user_pattern = "user{i:05d}"       # user_username of member i (the match key)
      username_pattern = "b{i:05d}"      # offering-user username; "" = empty, state Requested
      state = "OK"                       # state of members that have a username
      active_isds = ["isd:x"]

A ``[federation]`` table (``FederationSpec`` in ``federation.py``) adds generated sites
``s0`` … and links besides (or instead of) the ``[[sites]]``:

    [federation]
    sites = 6
    links = 12
    fanout = 3                    # the identity site s0's one offering feeds 3 targets
    users = 100                   # per offering
    big_users = 0                 # one link with this many users instead (0 = none)
    seed = 7
    change_rate = 0               # usernames/s changed on the sources while serving
    kafka_bootstrap = "127.0.0.1:9092"   # for serve --usync-config (also broker_url, cap, burst, …)

Generated members are project members of a resource of the offering, and their
offering users exist from the start (loaded without events: nobody is subscribed yet).
The same user_pattern on two sites gives the same identities (user_username) there.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import TextIO

import msgspec

from .broker import BrokerAdmin
from .federation import FederationLink, FederationSpec, populate_federation
from .models import BY_DISPLAY, PROJECT_MEMBER, SLURM, OfferingUserState
from .site import Federation, Site


class UserSpec(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    username: str
    token: str | None = None
    is_staff: bool = False
    is_identity_manager: bool = False
    managed_isds: list[str] = []
    active_isds: list[str] = []
    full_name: str | None = None
    email: str | None = None


class OfferingSpec(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: str
    type: str = SLURM
    managers: list[str] = []
    users: int = 0
    user_pattern: str = "user{i:05d}"
    username_pattern: str = "{user}"
    state: str = "OK"
    active_isds: list[str] = []


class SiteSpec(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: str
    port: int = 0
    staff_token: str | None = None
    events: bool = True
    users: list[UserSpec] = []
    offerings: list[OfferingSpec] = []


class RabbitSpec(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    enabled: bool = True
    management_url: str = "http://127.0.0.1:15672"
    amqp_host: str = "127.0.0.1"
    amqp_port: int = 5672
    username: str = "guest"
    password: str = "guest"


class Scenario(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    sites: list[SiteSpec] = []
    federation: FederationSpec | None = None
    seed: int = 0
    publish_rate: float = 500.0
    rabbitmq: RabbitSpec = msgspec.field(default_factory=RabbitSpec)


def load_scenario(path: str | Path) -> Scenario:
    """Decode and validate; a bad file raises msgspec.ValidationError naming the field."""
    path = Path(path)
    raw = path.read_bytes()
    data = tomllib.loads(raw.decode()) if path.suffix.lower() == ".toml" else json.loads(raw)
    scenario = msgspec.convert(data, Scenario)
    for site in scenario.sites:
        for offering in site.offerings:
            if offering.state not in BY_DISPLAY:
                raise msgspec.ValidationError(f"offering {offering.name!r}: unknown state {offering.state!r}")
    if scenario.federation is not None:
        scenario.federation.check()
    elif not scenario.sites:
        raise msgspec.ValidationError("a scenario needs [[sites]] or a [federation] table")
    return scenario


def build_federation(scenario: Scenario, *, broker_enabled: bool | None = None) -> Federation:
    """A federation with every site populated (not started)."""
    return build_scenario(scenario, broker_enabled=broker_enabled)[0]


def build_scenario(scenario: Scenario, *, broker_enabled: bool | None = None,
                   progress: TextIO | None = None) -> tuple[Federation, list[FederationLink]]:
    """The populated federation (not started) and the links of its ``[federation]`` table."""
    r = scenario.rabbitmq
    enabled = r.enabled if broker_enabled is None else broker_enabled
    federation = Federation(
        BrokerAdmin(management_url=r.management_url, amqp_host=r.amqp_host, amqp_port=r.amqp_port,
                    username=r.username, password=r.password),
        broker_enabled=enabled, seed=scenario.seed, publish_rate=scenario.publish_rate,
    )
    for spec in scenario.sites:
        populate(federation.add_site(spec.name, port=spec.port, events_enabled=spec.events), spec)
    links = [] if scenario.federation is None else populate_federation(federation, scenario.federation,
                                                                        progress=progress)
    return federation, links


def populate(site: Site, spec: SiteSpec) -> None:
    store = site.store
    if spec.staff_token:
        store.users_by_token.pop(site.staff.token)
        site.staff.token = spec.staff_token
        store.users_by_token[spec.staff_token] = site.staff
    for u in spec.users:
        extra = {k: v for k, v in (("full_name", u.full_name), ("email", u.email)) if v is not None}
        site.create_user(u.username, token=u.token, is_staff=u.is_staff, is_identity_manager=u.is_identity_manager,
                         managed_isds=u.managed_isds, active_isds=u.active_isds, **extra)
    for o in spec.offerings:
        provider = site.create_customer(f"{o.name}-provider")
        offering = site.create_offering(provider, o.name, type=o.type)
        for manager in o.managers:
            site.add_offering_manager(store.users_by_username[manager], offering)
        project = site.create_project(site.create_customer(f"{o.name}-customer"), f"{o.name}-project")
        site.create_resource(offering, project, f"{o.name}-allocation")
        ok_state = BY_DISPLAY[o.state]
        for i in range(o.users):
            user_username = o.user_pattern.format(i=i)
            user = store.users_by_username.get(user_username) or store.create_user(
                user_username, active_isds=o.active_isds)
            # Direct (no auto-creation pass, no events): 10,000 members load in well under a second.
            project.members[user.uuid] = PROJECT_MEMBER
            username = o.username_pattern.format(i=i, user=user_username)
            store.create_offering_user(
                offering, user, username=username,
                state=ok_state if username else OfferingUserState.REQUESTED, emit=False,
            )
