"""`python -m waldursim serve scenario.toml`: serve a scenario until interrupted.

Prints each site's API URL, admin URL and tokens (as a table, or one JSON document
with --json), optionally writes the same JSON to --info-file for benchmarks, and on
SIGINT/SIGTERM stops and deletes what it created on the broker. ``--tls-cert``/``--tls-key``
serve every site's API over https:// with that certificate.
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
from .scenario import build_federation, load_scenario


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m waldursim", description="Simulated Waldur sites.")
    sub = p.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve a scenario (TOML or JSON) until interrupted")
    serve.add_argument("scenario", type=Path)
    serve.add_argument("--no-broker", action="store_true", help="do not provision or publish on RabbitMQ")
    serve.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    serve.add_argument("--info-file", type=Path, help="also write the JSON document here")
    serve.add_argument("--all-users", action="store_true", help="list generated users' tokens too")
    serve.add_argument("--tls-cert", type=Path, help="serve the APIs over https:// with this PEM certificate (chain)")
    serve.add_argument("--tls-key", type=Path, help="the certificate's PEM private key (with --tls-cert)")
    return p


async def serve(args: argparse.Namespace) -> int:
    try:
        scenario = load_scenario(args.scenario)
    except (OSError, ValueError, msgspec.ValidationError) as exc:
        print(f"waldursim: bad scenario {args.scenario}: {exc}", file=sys.stderr)
        return 2
    try:
        tls = _tls(args)
    except (OSError, ssl.SSLError, ValueError) as exc:
        print(f"waldursim: bad TLS certificate or key: {exc}", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    federation = build_federation(scenario, broker_enabled=False if args.no_broker else None)
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
    named = {u.username for s in scenario.sites for u in s.users}
    info = []
    for site in federation.sites.values():
        data = site.info(include_users=True)
        if not args.all_users:
            data["users"] = [u for u in data["users"] if u["username"] in named or u["is_staff"]]
        info.append(data)
    document = {"sites": info, "load_seconds": round(loaded, 3)}
    if args.info_file:
        args.info_file.write_text(json.dumps(document, indent=2))
    if args.json:
        print(json.dumps(document), flush=True)
    else:
        for data in info:
            print(f"site {data['name']}: {data['url']}  (admin {data['admin_url']})")
            for user in data["users"]:
                print(f"  {user['username']:<24} token {user['token']}")
            for off in data["offerings"]:
                print(f"  offering {off['name']} {off['uuid']} {off['type']}: {off['offering_users']} offering users")
        print(f"loaded in {loaded:.2f}s; Ctrl-C to stop", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await federation.stop()
    return 0


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
