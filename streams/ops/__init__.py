"""Operator tooling: structured logs, status, audit tail, topic schemas, config import."""
