"""The `usync` command line."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from streams.contract.config import Config, ConfigError, Link, load_config


def _load(path: str) -> Config:
    """Load a configuration and mask its secrets in every log record from now on."""
    from streams.ops.logs import register_config

    return register_config(load_config(path))


def _cmd_bridge(args: argparse.Namespace) -> int:
    from bridges.app import Bridge

    config = _load(args.config)
    asyncio.run(Bridge(config, health_port=args.health_port, on_resubscribed=reconcile_touching(config)).run())
    return 0


def links_touching(config: Config, site: str, offerings: Sequence[str]) -> list[Link]:
    """The links that read or write one of ``site``'s ``offerings``."""
    return [link for link in config.links
            if any(end.site == site and end.offering in offerings for end in (link.source, link.target))]


def reconcile_touching(config: Config) -> Callable[[str, list[str]], Awaitable[dict[str, int]]]:
    """The bridge's ``on_resubscribed``: one reconcile pass of the links touching the
    offerings whose queue went missing, right away. The events published while the queue was
    gone were unroutable at Waldur: only a listing of both sites finds what they changed,
    and the periodic pass may be an hour away (reconcile_interval)."""
    async def reconcile(site: str, offerings: list[str]) -> dict[str, int]:
        links = links_touching(config, site, offerings)
        return await reconcile_links(config, links) if links else {}

    return reconcile


async def reconcile_links(config: Config, links: Sequence[Link] | None = None) -> dict[str, int]:
    """One reconcile pass over ``links`` (default: every link) outside the worker, then close."""
    from streams.adapters.kafka.client import client_options
    from streams.adapters.kafka.producers import RecordSender
    from streams.adapters.kafka.groups import every_member_reads_listings
    from streams.adapters.kafka.topics import ensure_topics, producer_codec
    from streams.adapters.waldur import Clients
    from streams.metrics import Metrics
    from streams.stages.reconcile import Reconcile

    await ensure_topics(config)
    metrics = Metrics()
    clients = Clients(config, metrics)
    options = client_options(config)
    records = RecordSender(options, "reconcile", compression=producer_codec(config.kafka.compression.events))
    await records.start()
    try:
        return await Reconcile(config.links if links is None else links, clients, metrics,
                               records.emitter(config.kafka.events_topic), config.reconcile_interval,
                               emit_listing=records.emitter(config.kafka.listings_topic),
                               differences=every_member_reads_listings(options, f"{config.app_id}-route")).run_pass()
    finally:
        await records.stop()
        await clients.close()


def _cmd_config_check(args: argparse.Namespace) -> int:
    config = _load(args.file)
    print(f"{args.file}: OK ({len(config.sites)} sites, {len(config.links)} links)")
    return 0


def _cmd_worker(args: argparse.Namespace) -> int:
    from streams.worker import run_worker

    config = _load(args.config)
    from streams.ops.logs import logging_config

    return run_worker(config, store=args.store, web_port=args.web_port, data_dir=args.data_dir,
                      loglevel=args.log_level, reconcile=not args.no_reconcile,
                      logging_config=logging_config(args.log_level, args.log_format))


def _cmd_reconcile(args: argparse.Namespace) -> int:
    config = _load(args.config)
    done = asyncio.run(reconcile_links(config))
    for link, users in done.items():
        print(f"{link}: {users} users listed")
    return 0


def _instant(text: str | None, option: str):
    """An ISO time (naive: UTC) or a duration back from now (``2h``), from the command line."""
    from streams.ops.kafka_read import parse_when

    if not text:
        return None
    try:
        return parse_when(text)
    except ValueError:
        raise ConfigError(f"usync replay: {option} {text!r} is not an ISO time (e.g. 2026-12-06T10:02:00Z) "
                          "or a duration (2h)") from None


def _cmd_replay(args: argparse.Namespace) -> int:
    import msgspec
    from rich.console import Console

    from streams.core import as_dict
    from streams.replay import compare, drift_table, replay
    from streams.worker import tune_gc

    config = _load(args.config)
    tune_gc()
    since, until = _instant(args.since, "--from"), _instant(args.until, "--until")
    if since is not None and (until is not None or args.from_beginning):
        raise ConfigError("usync replay: --from starts at an instant with no checkpoint; "
                          "it goes with neither --until nor --from-beginning")
    console = Console(stderr=True)
    done = asyncio.run(replay(config, since=since, console=console, until=until, from_beginning=args.from_beginning,
                              processes=args.processes))
    state, folded, seconds = done.state, done.folded, done.seconds
    started = (f"from checkpoints as of {done.checkpoint.isoformat()} ({done.checkpoint_rows:,} rows)"
               if done.checkpoint else "from the beginning" if since is None else f"from {since.isoformat()}")
    console.print(f"{started}: folded {folded:,} envelopes{f' up to {until.isoformat()}' if until else ''} "
                  f"in {seconds:.2f} s ({folded / seconds if seconds else 0:,.0f} events/s"
                  f"{f', {done.processes} processes' if done.processes > 1 else ''})")
    Console().print(drift_table(config, state))
    table = as_dict(state)
    if args.json:
        with open(args.json, "wb") as out:
            out.write(msgspec.json.format(msgspec.json.encode(table)))
    if args.compare:
        differences = compare(table, args.compare, headers=config.web_headers())
        if differences:
            console.print(f"[red]replay differs from the live table in {len(differences)} entries[/red]")
            for line in differences[:50]:
                console.print(f"  {line}")
            return 1
        console.print("[green]replay equals the live table[/green]")
    return 0


def _cmd_import_site_agent(args: argparse.Namespace) -> int:
    from pathlib import Path

    from streams.ops.site_agent import import_site_agent

    try:
        text = Path(args.agent_config).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {args.agent_config}: {exc.strerror}") from None
    imported = import_site_agent(text, app_id=args.app_id, bootstrap=args.bootstrap_servers,
                                 topic_prefix=args.topic_prefix, reconcile_interval=args.reconcile_interval)
    if args.output:
        Path(args.output).write_text(imported.toml)
    else:
        sys.stdout.write(imported.toml)
    for note in imported.notes:
        print(f"usync: {note}", file=sys.stderr)
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from rich.console import Console

    from streams.ops.status import gather_status, status_table

    config = _load(args.config)
    workers = args.worker or [f"http://{_reachable(config.web_host)}:{config.web_port}"]
    report = asyncio.run(gather_status(config, workers, scan=args.scan, timeout=args.timeout))
    if args.json:
        import msgspec

        sys.stdout.write(msgspec.json.format(msgspec.json.encode(report)).decode() + "\n")
    else:
        console = Console(width=None if sys.stdout.isatty() else 200)  # piped: no wrapping at 80
        console.print(status_table(report))
        for url, state in report.workers.items():
            if state != "ok":
                console.print(f"[yellow]worker {url}: {state}[/yellow]")
        for error in report.errors:
            console.print(f"[yellow]{error}[/yellow]")
    return 0 if not report.errors and all(v == "ok" for v in report.workers.values()) else 1


def _reachable(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host


def _cmd_topics_schema(args: argparse.Namespace) -> int:
    from pathlib import Path

    from streams.ops.topics import schema_text, topic_schemas, write_schemas

    config = _load(args.config) if args.config else None
    if args.write:
        for path in write_schemas(Path(args.write), config):
            print(f"wrote {path}")
        return 0
    schemas = topic_schemas(args.topic, config)
    sys.stdout.write(schema_text(schemas[args.topic] if args.topic else schemas))
    return 0


def _cmd_tail(args: argparse.Namespace) -> int:
    from streams.ops.kafka_read import parse_when
    from streams.ops.tail import TailFilter, tail

    config = _load(args.config)
    filt = TailFilter(links=set(args.link or ()), users=set(args.user or ()),
                      since=parse_when(args.since) if args.since else None,
                      until=parse_when(args.until) if args.until else None)
    unknown = filt.links - {link.name for link in config.links}
    if unknown:
        raise ConfigError(f"unknown link(s): {', '.join(sorted(unknown))}")
    try:
        asyncio.run(tail(config, args.topic, filt, sys.stdout, follow=args.follow, limit=args.limit,
                         with_meta=args.meta))
    except KeyboardInterrupt:
        pass
    return 0


def _cmd_audit(args: argparse.Namespace) -> int:
    from datetime import datetime, timedelta, timezone

    from rich.console import Console

    from streams.ops.audit import Window, summary, tables, write_json_lines
    from streams.ops.audit_sources import audit_site
    from streams.ops.kafka_read import parse_when

    config = _load(args.config)
    now = datetime.now(timezone.utc)
    window = Window(since=parse_when(args.since, now), until=parse_when(args.until, now) if args.until else now,
                    skew=timedelta(seconds=args.skew))
    err = Console(stderr=True, soft_wrap=True)  # one line per message, also in a log file
    report = asyncio.run(audit_site(config, args.site, window, rate=args.rate, progress=err.print))
    if sys.stdout.isatty() and not args.json:
        for table in tables(report):
            Console().print(table)
    else:
        write_json_lines(report, sys.stdout)
    err.print(summary(report))
    return 0 if report.clean else 1


def _add_audit(commands: Any) -> None:
    audit = commands.add_parser("audit", help="usync's PATCHes and folded events on a site against Waldur's event log")
    audit.add_argument("--config", required=True)
    audit.add_argument("--site", required=True, help="the site whose event log is read")
    audit.add_argument("--since", default="24h", help="ISO time or a duration back from now (default: 24h)")
    audit.add_argument("--until", default=None, help="ISO time or a duration back from now (default: now)")
    audit.add_argument("--skew", type=float, default=120.0, help="seconds a PATCH and Waldur's record may be apart")
    audit.add_argument("--rate", type=float, default=None, help="requests per second to the site (default: its rates)")
    audit.add_argument("--json", action="store_true", help="JSON lines also on a terminal")
    audit.set_defaults(run=_cmd_audit)


def _cmd_index(args: argparse.Namespace) -> int:
    from streams.history import run_index

    config = _load(args.config)

    def progress(done) -> None:  # noqa: ANN001
        if done.records and done.records % 100_000 < 10_000:
            print(f"indexed {done.records:,} records: {done.entries:,} entries", file=sys.stderr)

    done = asyncio.run(run_index(config, once=args.once, progress=progress))
    print(f"indexed {done.records:,} records into {done.entries:,} entries ({done.bytes:,} B) in {done.seconds:.1f} s",
          file=sys.stderr)
    return 0


def _cmd_history(args: argparse.Namespace) -> int:
    from streams.history import history, render
    from streams.ops.kafka_read import parse_when

    config = _load(args.config)
    since = parse_when(args.since) if args.since else None
    until = parse_when(args.until) if args.until else None
    lines = asyncio.run(history(config, args.user, link=args.link, since=since, until=until))
    render(lines, sys.stdout, terminal=sys.stdout.isatty() and not args.json)
    return 0 if lines else 1


def _add_history(commands: Any) -> None:
    index = commands.add_parser("index", help="keep the user index (usync history reads it)")
    index.add_argument("--config", required=True)
    index.add_argument("--once", action="store_true", help="index up to the end of the topics now, then exit")
    index.set_defaults(run=_cmd_index)
    hist = commands.add_parser("history", help="one user's timeline: every fact, outcome and dead letter about them")
    hist.add_argument("user", help="user_username, user_uuid or an offering user's uuid on any site")
    hist.add_argument("--config", required=True)
    hist.add_argument("--link", default=None, help="only this link")
    hist.add_argument("--since", default=None, help="ISO time or a duration back from now (15m, 2h, 7d)")
    hist.add_argument("--until", default=None, help="ISO time or a duration back from now")
    hist.add_argument("--json", action="store_true", help="JSON lines even on a terminal")
    hist.set_defaults(run=_cmd_history)


def _add_replay(commands: Any) -> None:
    replay = commands.add_parser("replay", help="rebuild the table from the events topic, no network")
    replay.add_argument("--config", required=True)
    replay.add_argument("--from", dest="since", default=None,
                        help="ISO time to start from, without a checkpoint: a partial table (default: the newest checkpoints)")
    replay.add_argument("--until", default=None,
                        help="ISO time: the table as it was then (the newest checkpoints before it, then the facts up to it)")
    replay.add_argument("--from-beginning", action="store_true", help="fold everything, ignoring the checkpoints")
    replay.add_argument("--processes", type=int, default=1,
                        help="fold the events topic's partitions on this many processes (default 1)")
    replay.add_argument("--json", default=None, help="write the table as JSON to this file")
    replay.add_argument("--compare", default=None, help="URL of a live worker's /usync/table/; exit 1 if different")
    replay.set_defaults(run=_cmd_replay)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="usync", description="Keep Waldur usernames in sync, event by event.")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--log-format", default=os.environ.get("USYNC_LOG_FORMAT", "text"), choices=["text", "json"],
                        help="text, or one JSON object per line (default: $USYNC_LOG_FORMAT or text)")
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

    _add_replay(commands)
    _add_history(commands)

    config = commands.add_parser("config", help="configuration tools")
    config_commands = config.add_subparsers(dest="config_command", required=True)
    check = config_commands.add_parser("check", help="validate a configuration file")
    check.add_argument("file")
    check.set_defaults(run=_cmd_config_check)
    imp = config_commands.add_parser("import-site-agent", help="turn a waldur-site-agent YAML into usync sites and links")
    imp.add_argument("agent_config", metavar="AGENT.yaml")
    imp.add_argument("-o", "--output", default=None, help="write the TOML here (default: stdout)")
    imp.add_argument("--app-id", default="usync", help="the worker's app id (its consumer group)")
    imp.add_argument("--bootstrap-servers", default="127.0.0.1:9092", help="Kafka bootstrap servers")
    imp.add_argument("--topic-prefix", default="waldur", help="prefix of the events, DLQ and outcomes topics")
    imp.add_argument("--reconcile-interval", type=float, default=3600.0,
                     help="seconds between reconciliation passes (default: the agent's 60 minutes)")
    imp.set_defaults(run=_cmd_import_site_agent)

    status = commands.add_parser("status", help="per link: users, drift, last event/reconcile/outcome, consumer lag")
    status.add_argument("--config", required=True)
    status.add_argument("--worker", action="append", default=None, metavar="URL",
                        help="a worker's web address (repeat for every worker; default: web_host:web_port)")
    status.add_argument("--json", action="store_true", help="JSON instead of a table")
    status.add_argument("--scan", type=int, default=2000, help="records per partition read from the topics' tails")
    status.add_argument("--timeout", type=float, default=60.0, help="seconds allowed to each source")
    status.set_defaults(run=_cmd_status)

    topics = commands.add_parser("topics", help="topic tools")
    topics_commands = topics.add_subparsers(dest="topics_command", required=True)
    schema = topics_commands.add_parser("schema", help="the JSON Schema of every topic's records")
    schema.add_argument("--topic", choices=["events", "outcomes", "dlq", "listings", "checkpoints", "user-index"], default=None,
                        help="one topic only")
    schema.add_argument("--config", default=None, help="annotate the schemas with the configured topic names")
    schema.add_argument("--write", default=None, metavar="DIR",
                        help="write one <topic>.schema.json per topic into DIR (docs/schemas: the kept copy)")
    schema.set_defaults(run=_cmd_topics_schema)

    _add_audit(commands)
    tail = commands.add_parser("tail", help="audit records as JSON lines (outcomes, events or dlq)")
    tail.add_argument("--config", required=True)
    tail.add_argument("--topic", choices=["outcomes", "events", "dlq"], default="outcomes")
    tail.add_argument("--link", action="append", help="only this link (repeatable)")
    tail.add_argument("--user", action="append", help="only this user: user_username, user_uuid or offering_user_uuid")
    tail.add_argument("--since", default=None, help="ISO time or a duration back from now (15m, 2h, 7d)")
    tail.add_argument("--until", default=None, help="ISO time or a duration back from now")
    tail.add_argument("--follow", "-f", action="store_true", help="keep printing new records until interrupted")
    tail.add_argument("--limit", type=int, default=None, help="stop after this many records")
    tail.add_argument("--meta", action="store_true", help="wrap each record with topic, partition, offset, key")
    tail.set_defaults(run=_cmd_tail)
    return parser


def main(argv: list[str] | None = None) -> int:
    from streams.ops.logs import setup_logging

    args = build_parser().parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    try:
        return args.run(args)
    except ConfigError as exc:
        print(f"usync: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
