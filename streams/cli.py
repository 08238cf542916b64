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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="usync", description="Keep Waldur usernames in sync, event by event.")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    commands = parser.add_subparsers(dest="command", required=True)

    bridge = commands.add_parser("bridge", help="relay Waldur's RabbitMQ events into Kafka")
    bridge.add_argument("--config", required=True, help="usync TOML configuration")
    bridge.add_argument("--health-port", type=int, default=None, help="port of /health and /metrics (default: web_port)")
    bridge.set_defaults(run=_cmd_bridge)

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
