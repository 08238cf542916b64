"""`python -m waldursim serve scenario.toml`: serve a scenario until interrupted.

Prints each site's API URL, admin URL and tokens (as a table, or one JSON document
with --json), optionally writes the same JSON to --info-file for benchmarks, and on
SIGINT/SIGTERM stops and deletes what it created on the broker. ``--tls-cert``/``--tls-key``
serve every site's API over https:// with that certificate.

Federation scenarios (``federation.py``): a ``[federation]`` table in the scenario, or
``--federation sites=50,links=200,fanout=20,users=278,big_users=50000,seed=7`` (no scenario
file needed); ``--change-rate R`` changes R usernames/s on the sources while serving (paced,
seeded); ``--usync-config FILE`` writes a usync configuration for the generated links
(tokens from ``USYNC_TOKEN_<SITE>``; the JSON's ``token_env`` maps them to the staff tokens).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import ssl
import sys
import time
from pathlib import Path

import msgspec

from .broker import BrokerError
from .federation import ChangeDriver, FederationLink, parse_federation, token_env, write_usync_config
from .scenario import Scenario, build_scenario, load_scenario
from .site import Federation


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m waldursim", description="Simulated Waldur sites.")
    sub = p.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve a scenario (TOML or JSON) until interrupted")
    serve.add_argument("scenario", type=Path, nargs="?", help="optional with --federation")
    serve.add_argument("--federation", metavar="K=V,...", help="a generated federation, e.g. sites=50,links=200,fanout=20")
    serve.add_argument("--change-rate", type=float, help="usernames/s changed on the federation's sources")
    serve.add_argument("--usync-config", type=Path, help="write a usync configuration for the federation's links")
    serve.add_argument("--no-broker", action="store_true", help="do not provision or publish on RabbitMQ")
    serve.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    serve.add_argument("--info-file", type=Path, help="also write the JSON document here")
    serve.add_argument("--all-users", action="store_true", help="list generated users' tokens too")
    serve.add_argument("--tls-cert", type=Path, help="serve the APIs over https:// with this PEM certificate (chain)")
    serve.add_argument("--tls-key", type=Path, help="the certificate's PEM private key (with --tls-cert)")
    return p


def _scenario(args: argparse.Namespace) -> Scenario:
    scenario = load_scenario(args.scenario) if args.scenario else Scenario()
    if args.federation:
        scenario.federation = parse_federation(args.federation)
    if scenario.federation is None and not scenario.sites:
        raise ValueError("give a scenario file or --federation")
    if args.change_rate is not None and scenario.federation is not None:
        scenario.federation.change_rate = args.change_rate
    if (args.change_rate or args.usync_config) and scenario.federation is None:
        raise ValueError("--change-rate and --usync-config need a federation scenario")
    return scenario


async def serve(args: argparse.Namespace) -> int:
    try:
        scenario = _scenario(args)
    except (OSError, ValueError, msgspec.ValidationError) as exc:
        print(f"waldursim: bad scenario {args.scenario or args.federation}: {exc}", file=sys.stderr)
        return 2
    try:
        tls = _tls(args)
    except (OSError, ssl.SSLError, ValueError) as exc:
        print(f"waldursim: bad TLS certificate or key: {exc}", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    federation, links = build_scenario(scenario, broker_enabled=False if args.no_broker else None, progress=sys.stderr)
    for site in federation.sites.values():
        site.tls = tls
    loaded = time.monotonic() - t0
    if federation.broker is not None:
        try:
            await federation.check_broker()
        except BrokerError as exc:
            print(f"waldursim: {exc} (use --no-broker to serve without events)", file=sys.stderr)
            return 1
    await federation.start()
    spec = scenario.federation
    if args.usync_config and spec is not None:
        write_usync_config(args.usync_config, federation, links, spec)
    _announce(args, scenario, federation, links, loaded)
    driver = ChangeDriver(federation, links, spec.change_rate, seed=spec.seed) if spec and spec.change_rate else None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        if driver is not None:
            driver.start()
        await stop.wait()
    finally:
        if driver is not None:
            await driver.stop()
        await federation.stop()
    return 0


def _announce(args: argparse.Namespace, scenario: Scenario, federation: Federation, links: list[FederationLink],
              loaded: float) -> None:
    """The info document (stdout, --info-file) or the table."""
    named = {u.username for s in scenario.sites for u in s.users}
    info = []
    for site in federation.sites.values():
        data = site.info(include_users=True)
        if not args.all_users:
            data["users"] = [u for u in data["users"] if u["username"] in named or u["is_staff"]]
        info.append(data)
    document: dict[str, object] = {"sites": info, "load_seconds": round(loaded, 3)}
    spec = scenario.federation
    if spec is not None:
        document["links"] = [link.describe() for link in links]
        document["token_env"] = {token_env(spec, site.name): site.staff_token for site in federation.sites.values()}
        document["change_rate"] = spec.change_rate
        document["usync_config"] = str(args.usync_config) if args.usync_config else None
    if args.info_file:
        args.info_file.write_text(json.dumps(document, indent=2))
    if args.json:
        print(json.dumps(document), flush=True)
        return
    for data in info:
        print(f"site {data['name']}: {data['url']}  (admin {data['admin_url']})")
        for user in data["users"]:
            print(f"  {user['username']:<24} token {user['token']}")
        for off in data["offerings"]:
            print(f"  offering {off['name']} {off['uuid']} {off['type']}: {off['offering_users']} offering users")
    for link in links:
        print(f"link {link.name}: {link.source_site}/{link.source_offering} -> "
              f"{link.target_site}/{link.target_offering} ({len(link.pairs)} users)")
    if args.usync_config:
        print(f"usync configuration: {args.usync_config} (tokens in USYNC_TOKEN_<SITE>)")
    print(f"loaded in {loaded:.2f}s; Ctrl-C to stop", flush=True)


def _tls(args: argparse.Namespace) -> ssl.SSLContext | None:
    if not args.tls_cert and not args.tls_key:
        return None
    if not (args.tls_cert and args.tls_key):
        raise ValueError("--tls-cert and --tls-key go together")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(args.tls_cert, args.tls_key)
    return context


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return asyncio.run(serve(args))
    return 2


if __name__ == "__main__":
    sys.exit(main())
