"""Federation scenarios: N sites, M links with one fan-out, a big offering, a change driver.

    fed, links = federation_scenario(sites=6, links=12, fanout=3, users=100, big_users=0, seed=7)
    await fed.start()
    driver = ChangeDriver(fed, links, rate=20, seed=7); driver.start(); …; await driver.stop()
    write_usync_config(path, fed, links, FederationSpec(...))

The shape, for ``sites`` sites ``s0`` … ``s<N-1>``:

- links ``link0`` … ``link<fanout-1>``: the identity site ``s0``'s ONE offering ``fan`` feeds
  ``fanout`` targets, each its own offering on ``s1``, ``s2``, … (wrapping round);
- the other links each have their own source offering on ``s<1 + k % (N-1)>`` and a target
  offering on a neighbour site; the first of them (``link<fanout>``) holds ``big_users``
  users instead of ``users`` when ``big_users`` > 0;
- every offering user exists on both sides with the same username (``<user>-v0``): the
  converged start state, loaded without events (nobody is subscribed yet). The match key
  (``user_username``) of a source offering's users is ``<offering>u<i>``, so a fan-out's
  targets share identities.

100,000 users (both sides) build in a few seconds; ``progress`` (a text stream) gets a
line every 10,000 users.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import msgspec

from .models import PROJECT_MEMBER, SLURM, OfferingUserState
from .site import Federation, Site

PROGRESS_EVERY = 10_000


class FederationSpec(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The generator's parameters (a scenario's ``[federation]`` table, or ``serve --federation``),
    plus what the written usync configuration needs."""

    sites: int = 6
    links: int = 12
    fanout: int = 3             # targets of the identity site's one offering (links link0..)
    users: int = 100            # users per offering
    big_users: int = 0          # users of the one big link (link<fanout>); 0 = none
    seed: int = 0
    change_rate: float = 0.0    # usernames/s changed on the sources while serving (0 = none)
    site_prefix: str = "s"
    # the usync configuration (serve --usync-config): where the brokers are, the sites' rates
    kafka_bootstrap: str = "127.0.0.1:9092"
    broker_url: str = "ws://127.0.0.1:15674/ws"
    topic_prefix: str = "fed"
    partitions: int = 4
    cap: float = 40.0           # requests_per_second per site
    burst: int = 10
    concurrency: int = 8
    reconcile_interval: int = 3600
    token_env_prefix: str = "USYNC_TOKEN_"

    def check(self) -> None:
        if self.sites < 2:
            raise msgspec.ValidationError("federation: sites must be at least 2")
        if not 0 <= self.fanout <= self.links:
            raise msgspec.ValidationError("federation: fanout must be between 0 and links")
        if self.users < 0 or self.big_users < 0 or self.change_rate < 0:
            raise msgspec.ValidationError("federation: users, big_users and change_rate must be >= 0")
        if self.big_users and self.links == self.fanout:
            raise msgspec.ValidationError("federation: big_users needs a link beside the fan-out")


class FederationLink(msgspec.Struct, kw_only=True):
    """One generated link; ``pairs``: user_username -> (source offering user uuid, target's)."""

    name: str
    source_site: str
    source_offering: str
    target_site: str
    target_offering: str
    pairs: dict[str, tuple[str, str]] = {}

    def describe(self) -> dict[str, Any]:
        """What ``serve`` prints: the link without its pairs (their count instead)."""
        return {"name": self.name, "source": {"site": self.source_site, "offering": self.source_offering},
                "target": {"site": self.target_site, "offering": self.target_offering}, "users": len(self.pairs)}


class Change(msgspec.Struct, frozen=True, array_like=True):
    """One username changed on a source by the driver (``at``: wall-clock seconds)."""

    at: float
    site: str
    offering: str
    user_username: str
    offering_user: str
    username: str


class _Offering(msgspec.Struct):
    site: Site
    uuid: str
    project: Any


class _Builder:
    def __init__(self, progress: TextIO | None) -> None:
        self.progress = progress
        self.count = 0
        self.next_report = PROGRESS_EVERY
        self.t0 = time.monotonic()

    def offering(self, site: Site, name: str) -> _Offering:
        provider = site.create_customer(f"{name}-sp")
        off = site.create_offering(provider, name, type=SLURM)
        project = site.create_project(site.create_customer(f"{name}-c", owners=[]), f"{name}-p")
        site.create_resource(off, project, f"{name}-alloc", backend_id=f"{name}-acc")
        return _Offering(site, off.uuid, project)

    def members(self, off: _Offering, prefix: str, count: int) -> dict[str, str]:
        """``count`` offering users with username ``<user>-v0``, no events: user_username -> uuid."""
        store = off.site.store
        members, offering = off.project.members, store.offerings[off.uuid]
        out: dict[str, str] = {}
        for i in range(count):
            name = f"{prefix}u{i:05d}"
            user = store.users_by_username.get(name) or store.create_user(name)
            members[user.uuid] = PROJECT_MEMBER
            ou = store.create_offering_user(offering, user, username=f"{name}-v0", state=OfferingUserState.OK,
                                            emit=False)
            out[name] = ou.uuid
            self.tick()
        return out

    def tick(self) -> None:
        self.count += 1
        if self.progress is not None and self.count >= self.next_report:
            self.next_report += PROGRESS_EVERY
            print(f"waldursim: {self.count:,} offering users built ({time.monotonic() - self.t0:.1f} s)",
                  file=self.progress, flush=True)


def _plan(spec: FederationSpec) -> list[tuple[int, int, str, int]]:
    """Per link: (source site index, target site index, source offering name, its users).
    Seeded: the fan-out's targets are distinct sites while there are enough (then wrap);
    each other link's target is a random site other than its source."""
    n, rng = spec.sites, random.Random(f"{spec.seed}:federation")
    others = rng.sample(range(1, n), n - 1)
    plan = [(0, others[i % (n - 1)], "fan", spec.users) for i in range(spec.fanout)]
    for k in range(spec.links - spec.fanout):
        src = 1 + k % (n - 1)
        tgt = rng.choice([s for s in range(n) if s != src])
        users = spec.big_users if k == 0 and spec.big_users else spec.users
        plan.append((src, tgt, f"l{spec.fanout + k}", users))
    return plan


def populate_federation(federation: Federation, spec: FederationSpec, *,
                        progress: TextIO | None = None) -> list[FederationLink]:
    """Add ``spec``'s sites to ``federation`` (not started) and build its links."""
    spec.check()
    nodes = [federation.add_site(f"{spec.site_prefix}{i}") for i in range(spec.sites)]
    builder = _Builder(progress)
    sources: dict[str, tuple[_Offering, dict[str, str]]] = {}
    links: list[FederationLink] = []
    for i, (src, tgt, name, users) in enumerate(_plan(spec)):
        if name not in sources:
            off = builder.offering(nodes[src], name)
            sources[name] = (off, builder.members(off, name, users))
        s_off, s_ous = sources[name]
        t_off = builder.offering(nodes[tgt], f"t{i}")
        t_ous = builder.members(t_off, name, users)
        links.append(FederationLink(
            name=f"link{i}", source_site=nodes[src].name, source_offering=s_off.uuid,
            target_site=nodes[tgt].name, target_offering=t_off.uuid,
            pairs={user: (s_ous[user], t_ous[user]) for user in s_ous}))
    if progress is not None:
        print(f"waldursim: federation built: {spec.sites} sites, {len(links)} links, {builder.count:,} offering "
              f"users in {time.monotonic() - builder.t0:.1f} s", file=progress, flush=True)
    return links


def federation_scenario(*, sites: int = 6, links: int = 12, fanout: int = 3, users: int = 100, big_users: int = 0,
                        seed: int = 0, federation: Federation | None = None, progress: TextIO | None = None,
                        **options: Any) -> tuple[Federation, list[FederationLink]]:
    """A populated federation (not started) and its links. ``federation``: add the sites to
    this one (default: a new one on the local broker, publishing unlimited); ``options``:
    further ``FederationSpec`` fields."""
    spec = FederationSpec(sites=sites, links=links, fanout=fanout, users=users, big_users=big_users, seed=seed,
                          **options)
    federation = federation or Federation(seed=seed, publish_rate=0)
    return federation, populate_federation(federation, spec, progress=progress)


def parse_federation(text: str) -> FederationSpec:
    """``sites=50,links=200,fanout=20`` (``serve --federation``) as a FederationSpec."""
    fields: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise msgspec.ValidationError(f"federation: {item!r} is not key=value")
        fields[key.strip()] = value.strip()
    spec = msgspec.convert(fields, FederationSpec, strict=False)
    spec.check()
    return spec


class ChangeDriver:
    """Changes ``rate`` usernames per second on the links' sources, paced (the i-th change
    is due ``i / rate`` s after the start; a late loop catches up), seeded: each change
    picks a source offering, then one of its users, and sets ``<user>-c<n>`` (n from 1) as a
    PATCH would (events). ``limit``: stop after that many. ``changes``: what was done."""

    def __init__(self, federation: Federation, links: Sequence[FederationLink], rate: float, *, seed: int = 0,
                 limit: int | None = None) -> None:
        if rate <= 0:
            raise ValueError("rate must be > 0")
        self.federation, self.rate, self.limit = federation, rate, limit
        self.rng = random.Random(seed)
        groups: dict[tuple[str, str], list[tuple[str, str]]] = {}
        for link in links:
            key = (link.source_site, link.source_offering)
            if key not in groups:
                groups[key] = [(user, pair[0]) for user, pair in sorted(link.pairs.items())]
        self.groups = [(site, off, users) for (site, off), users in groups.items() if users]
        self.changes: list[Change] = []
        self.task: asyncio.Task[None] | None = None

    def step(self) -> Change:
        """One change now."""
        site, off, users = self.rng.choice(self.groups)
        user, ou = self.rng.choice(users)
        change = Change(time.time(), site, off, user, ou, f"{user}-c{len(self.changes) + 1}")
        self.changes.append(change)
        self.federation[site].set_username(ou, change.username)
        return change

    async def run(self) -> None:
        t0 = time.monotonic()
        while self.limit is None or len(self.changes) < self.limit:
            due = int((time.monotonic() - t0) * self.rate) + 1
            if self.limit is not None:
                due = min(due, self.limit)
            while len(self.changes) < due:
                self.step()
            if self.limit is not None and len(self.changes) >= self.limit:
                return
            await asyncio.sleep(max(0.0, t0 + due / self.rate - time.monotonic()))  # the pacing

    def start(self) -> asyncio.Task[None]:
        self.task = asyncio.get_running_loop().create_task(self.run(), name="waldursim-changes")
        return self.task

    async def stop(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass

    async def wait(self) -> None:
        """Until ``limit`` changes are done."""
        if self.task is not None:
            await self.task


def usync_config(federation: Federation, links: Sequence[FederationLink], spec: FederationSpec, *,
                 app_id: str = "usync-fed", data_dir: str | None = None) -> str:
    """A usync TOML configuration for the generated links: every site with its rates and
    ``token_env = "<token_env_prefix><SITE>"`` (export each site's staff token there)."""
    prefix = spec.topic_prefix
    text = (f'app_id = "{app_id}"\nreconcile_interval = {spec.reconcile_interval}\n'
            + (f'data_dir = "{data_dir}"\n' if data_dir else "")
            + f'[kafka]\nbootstrap_servers = "{spec.kafka_bootstrap}"\nevents_topic = "{prefix}.events"\n'
            f'dlq_topic = "{prefix}.dlq"\noutcomes_topic = "{prefix}.outcomes"\npartitions = {spec.partitions}\n')
    for site in federation.sites.values():
        text += (f'[sites.{site.name}]\napi_url = "{site.url}"\ntoken_env = "{token_env(spec, site.name)}"\n'
                 f'broker_url = "{spec.broker_url}"\nregister = true\n'
                 f"[sites.{site.name}.rates]\nrequests_per_second = {spec.cap}\nburst = {spec.burst}\n"
                 f"concurrency = {spec.concurrency}\n")
    for link in links:
        text += (f'[[links]]\nname = "{link.name}"\nreconcile = true\n'
                 f'target = {{ site = "{link.target_site}", offering = "{link.target_offering}" }}\n'
                 f'source = {{ site = "{link.source_site}", offering = "{link.source_offering}" }}\n')
    return text


def token_env(spec: FederationSpec, site: str) -> str:
    return f"{spec.token_env_prefix}{site.upper()}"


def write_usync_config(path: str | Path, federation: Federation, links: Sequence[FederationLink],
                       spec: FederationSpec, **options: Any) -> Path:
    path = Path(path)
    path.write_text(usync_config(federation, links, spec, **options))
    return path
