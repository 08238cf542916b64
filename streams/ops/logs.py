"""Logging for every usync process: text or JSON lines, with every known secret masked.

Secrets are registered once the configuration is loaded (:func:`register_config`); the
:class:`Redactor` filter sits on the handlers, so records from any library (aiokafka,
httpx, pika, faust) are masked before they are formatted, tracebacks included.
"""

from __future__ import annotations

import logging
import traceback
from datetime import datetime, timezone
from typing import Any, Final, Literal

import msgspec

from streams.contract.config import Config

LogFormat = Literal["text", "json"]
TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"
MASK: Final = "***"
# Shorter values would mask ordinary words; real tokens and passwords are longer.
MIN_SECRET_LENGTH: Final = 6

# Record attributes that are not "extra" fields (the ones logging.LogRecord sets itself).
_STANDARD: Final = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class Redactor(logging.Filter):
    """Masks every registered secret in a record's message, arguments and traceback."""

    def __init__(self) -> None:
        super().__init__()
        self._secrets: set[str] = set()

    def add(self, *values: str) -> None:
        self._secrets.update(v for v in values if v and len(v) >= MIN_SECRET_LENGTH)

    def scrub(self, text: str) -> str:
        # Longest first, so a secret containing another is masked whole.
        for secret in sorted(self._secrets, key=len, reverse=True):
            if secret in text:
                text = text.replace(secret, MASK)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._secrets:
            return True
        record.msg, record.args = self.scrub(record.getMessage()), None
        if record.exc_info and not record.exc_text:
            record.exc_text = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        if record.exc_text:
            record.exc_text = self.scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = self.scrub(record.stack_info)
        for key, value in list(vars(record).items()):
            if key not in _STANDARD and isinstance(value, str):
                setattr(record, key, self.scrub(value))
        return True


REDACTOR: Final = Redactor()


def redactor() -> Redactor:
    """The process-wide filter (a factory for ``logging.config.dictConfig``)."""
    return REDACTOR


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, exc, and any ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value if isinstance(value, (str, int, float, bool, type(None))) else repr(value)
        return msgspec.json.encode(entry).decode()


def logging_config(level: str, fmt: LogFormat) -> dict[str, Any]:
    """A ``dictConfig`` for the root logger; faust's worker takes the same dict."""
    formatter: dict[str, Any] = {"()": JsonFormatter} if fmt == "json" else {"format": TEXT_FORMAT}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"redact": {"()": redactor}},
        "formatters": {"usync": formatter},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr",
                                "formatter": "usync", "filters": ["redact"]}},
        "root": {"level": level.upper(), "handlers": ["stderr"]},
        # aiokafka logs every failed reconnect at ERROR with a traceback; our loops say it once, clearly.
        # httpx logs every request at INFO; the metrics count them.
        "loggers": {"aiokafka": {"level": "CRITICAL"}, "httpx": {"level": "WARNING"}},
    }


def setup_logging(level: str = "info", fmt: LogFormat = "text") -> None:
    import logging.config

    logging.config.dictConfig(logging_config(level, fmt))


def secret_values(config: Config) -> list[str]:
    """Every secret the configuration refers to (tokens, passcodes, the Kafka password)."""
    names = [site.token_env for site in config.sites.values()]
    names += [s.passcode_env for site in config.sites.values() for s in site.subscriptions if s.passcode_env]
    if config.kafka.sasl_password_env:
        names.append(config.kafka.sasl_password_env)
    values = []
    for name in names:
        try:
            values.append(config.secret(name).reveal())
        except KeyError:  # load_config already reported it; nothing to mask
            continue
    return values


def register_config(config: Config) -> Config:
    """Mask the configuration's secrets in every log record from now on."""
    REDACTOR.add(*secret_values(config))
    return config
