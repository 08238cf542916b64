"""The `usync` command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from streams.config import ConfigError, load_config


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # aiokafka logs every failed reconnect at ERROR with a traceback; our loops say it once, clearly.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)


def _cmd_bridge(args: argparse.Namespace) -> int:
    from bridges.app import Bridge

    config = load_config(args.config)
    asyncio.run(Bridge(config, health_port=args.health_port).run())
    return 0


def _cmd_config_check(args: argparse.Namespace) -> int:
    config = load_config(args.file)
    print(f"{args.file}: OK ({len(config.sites)} sites, {len(config.links)} links)")
    return 0


def _cmd_worker(args: argparse.Namespace) -> int:
    from streams.worker import run_worker

    config = load_config(args.config)
    return run_worker(config, store=args.store, web_port=args.web_port, data_dir=args.data_dir,
                      loglevel=args.log_level, reconcile=not args.no_reconcile)


def _cmd_reconcile(args: argparse.Namespace) -> int:
    from streams.reconciler import reconcile_once

    config = load_config(args.config)
    done = asyncio.run(reconcile_once(config))
    for link, users in done.items():
        print(f"{link}: {users} users listed")
    return 0


def _cmd_replay(args: argparse.Namespace) -> int:
    from datetime import datetime

    import msgspec
    from rich.console import Console

    from streams.core import as_dict
    from streams.replay import compare, drift_table, replay

    config = load_config(args.config)
    since = datetime.fromisoformat(args.since) if args.since else None
    console = Console(stderr=True)
    state, folded, seconds = asyncio.run(replay(config, since=since, console=console))
    console.print(f"folded {folded:,} envelopes in {seconds:.2f} s ({folded / seconds if seconds else 0:,.0f} events/s)")
    Console().print(drift_table(config, state))
    table = as_dict(state)
    if args.json:
        with open(args.json, "wb") as out:
            out.write(msgspec.json.format(msgspec.json.encode(table)))
    if args.compare:
        differences = compare(table, args.compare)
        if differences:
            console.print(f"[red]replay differs from the live table in {len(differences)} entries[/red]")
            for line in differences[:50]:
                console.print(f"  {line}")
            return 1
        console.print("[green]replay equals the live table[/green]")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="usync", description="Keep Waldur usernames in sync, event by event.")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    commands = parser.add_subparsers(dest="command", required=True)

    bridge = commands.add_parser("bridge", help="relay Waldur's RabbitMQ events into Kafka")
    bridge.add_argument("--config", required=True, help="usync TOML configuration")
    bridge.add_argument("--health-port", type=int, default=None, help="port of /health and /metrics (default: web_port)")
    bridge.set_defaults(run=_cmd_bridge)

    worker = commands.add_parser("worker", help="run the Faust app: fold, correct, reconcile")
    worker.add_argument("--config", required=True, help="usync TOML configuration")
    worker.add_argument("--store", choices=["rocksdb", "memory"], default="rocksdb", help="table store (memory: tests)")
    worker.add_argument("--web-port", type=int, default=None, help="port of the web views (default: web_port)")
    worker.add_argument("--data-dir", default=None, help="RocksDB directory (default: data_dir); one per worker")
    worker.add_argument("--no-reconcile", action="store_true", help="never run the periodic reconciler")
    worker.set_defaults(run=_cmd_worker)

    reconcile = commands.add_parser("reconcile", help="run one reconcile pass (snapshots to the events topic) and exit")
    reconcile.add_argument("--config", required=True)
    reconcile.set_defaults(run=_cmd_reconcile)

    replay = commands.add_parser("replay", help="rebuild the table from the events topic, no network")
    replay.add_argument("--config", required=True)
    replay.add_argument("--from", dest="since", default=None, help="ISO time to start from (default: the beginning)")
    replay.add_argument("--json", default=None, help="write the table as JSON to this file")
    replay.add_argument("--compare", default=None, help="URL of a live worker's /usync/table/; exit 1 if different")
    replay.set_defaults(run=_cmd_replay)

    config = commands.add_parser("config", help="configuration tools")
    config_commands = config.add_subparsers(dest="config_command", required=True)
    check = config_commands.add_parser("check", help="validate a configuration file")
    check.add_argument("file")
    check.set_defaults(run=_cmd_config_check)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.log_level)
    try:
        return args.run(args)
    except ConfigError as exc:
        print(f"usync: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
