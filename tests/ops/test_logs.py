"""Structured logs and secret masking (pure: no services)."""

from __future__ import annotations

import io
import json
import logging

import pytest

from streams.contract.config import parse_config
from streams.ops.logs import JsonFormatter, Redactor, logging_config, secret_values

SECRET = "tok-3f9a1c7e5b2d4086"


def _record(msg: str, *args: object, exc: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(exc), exc, exc.__traceback__) if exc else None
    return logging.LogRecord("usync.test", logging.WARNING, __file__, 1, msg, args, exc_info)


def test_redactor_masks_message_arguments_and_traceback():
    redactor = Redactor()
    redactor.add(SECRET, "abc")  # too short to mask safely: ignored
    try:
        raise RuntimeError(f"server said: bad token {SECRET}")
    except RuntimeError as exc:
        record = _record("login %s failed for %r", SECRET, {"token": SECRET}, exc=exc)
    record.site_token = SECRET  # an `extra` field
    assert redactor.filter(record)
    text = JsonFormatter().format(record)
    assert SECRET not in text
    entry = json.loads(text)
    assert entry["msg"] == "login *** failed for {'token': '***'}"
    assert "bad token ***" in entry["exc"] and entry["site_token"] == "***"
    assert "abc" in redactor.scrub("abc")


def test_json_formatter_one_object_per_line():
    entry = json.loads(JsonFormatter().format(_record("hello %s", "world")))
    assert entry["level"] == "warning" and entry["logger"] == "usync.test" and entry["msg"] == "hello world"
    assert entry["ts"].endswith("+00:00")


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_logging_config_masks_every_library(fmt, monkeypatch):
    import logging.config

    from streams.ops import logs

    stream = io.StringIO()
    monkeypatch.setattr(logs, "REDACTOR", Redactor())
    config = logging_config("info", fmt)
    config["handlers"]["stderr"]["stream"] = stream
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        logging.config.dictConfig(config)
        logs.REDACTOR.add(SECRET)
        logging.getLogger("httpx").warning("GET /api/?token=%s", SECRET)
        logging.getLogger("aiokafka").error("dropped: aiokafka is quiet below CRITICAL")
    finally:
        root.handlers[:], root.level = saved
    out = stream.getvalue()
    assert SECRET not in out and "token=***" in out and "aiokafka" not in out
    if fmt == "json":
        assert json.loads(out.splitlines()[0])["logger"] == "httpx"


def test_secret_values_are_every_env_secret():
    text = """
[kafka]
security_protocol = "SASL_PLAINTEXT"
sasl_mechanism = "SCRAM-SHA-512"
sasl_username = "usync"
sasl_password_env = "KPW"
[sites.a]
api_url = "https://a.example.org/api/"
token_env = "TA"
[[sites.a.subscriptions]]
login = "sub"
vhost = "v"
queues = ["q"]
passcode_env = "PA"
"""
    config = parse_config(text, {"TA": "token-a-123456", "PA": "passcode-a-123456", "KPW": "kafka-pw-123456"})
    assert sorted(secret_values(config)) == ["kafka-pw-123456", "passcode-a-123456", "token-a-123456"]
