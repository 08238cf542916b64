"""Why a Kafka cluster refuses us (streams/adapters/kafka/client.py): the reason out of a
connection's exception, no secret in it, and one ERROR per distinct refusal."""

from __future__ import annotations

import logging
import ssl

import pytest
from aiokafka.errors import KafkaConnectionError, SaslAuthenticationFailed, UnsupportedSaslMechanismError

from streams.adapters.kafka.client import KafkaAccess, first_server, kafka_transient, refusal_reason
from streams.errors import KafkaRefused

BROKER_WORDS = "Authentication failed during authentication due to invalid credentials with SASL mechanism SCRAM-SHA-512"


@pytest.mark.parametrize(("servers", "expected"), [
    ("127.0.0.1:9094", ("127.0.0.1", 9094)),
    (" kafka-1:9093, kafka-2:9093", ("kafka-1", 9093)),
    ("kafka", ("kafka", 9092)),
    ("[::1]:19094,[::1]:19095", ("::1", 19094)),
])
def test_the_probe_goes_to_the_first_bootstrap_server(servers, expected):
    assert first_server(servers) == expected


def test_a_refused_sasl_login_is_named_with_the_brokers_words():
    assert refusal_reason(SaslAuthenticationFailed(BROKER_WORDS)) == f"SASL authentication refused: {BROKER_WORDS}"
    assert refusal_reason(UnsupportedSaslMechanismError("PLAIN not enabled")).startswith("SASL mechanism refused: ")


def test_a_refused_tls_handshake_is_named_with_its_reason():
    exc = ssl.SSLCertVerificationError(1, "certificate verify failed")
    exc.verify_message = "unable to get local issuer certificate"
    assert refusal_reason(exc) == "TLS handshake refused: certificate verify failed: unable to get local issuer certificate"


@pytest.mark.parametrize("exc", [ConnectionRefusedError(111, "Connect call failed"), TimeoutError(),
                                 ConnectionResetError(), KafkaConnectionError("Unable to bootstrap from [...]")])
def test_kafka_only_away_is_no_refusal(exc):
    assert refusal_reason(exc) is None


def test_the_password_never_reaches_the_reason():
    assert "s3cret" not in refusal_reason(SaslAuthenticationFailed("user x password s3cret"), "s3cret")


async def test_one_error_per_distinct_refusal_and_one_line_when_connected_again(caplog):
    access = KafkaAccess({"bootstrap_servers": "k1:9094,k2:9094", "sasl_plain_password": "pw"})
    assert access.report() == {"servers": "k1:9094,k2:9094", "state": "connecting", "reason": ""}
    with caplog.at_level(logging.INFO, logger="usync.kafka"):
        for _ in range(3):
            refused = await access.classify(SaslAuthenticationFailed(BROKER_WORDS))
            assert isinstance(refused, KafkaRefused) and kafka_transient(refused)  # retried forever
        assert str(refused) == f"Kafka k1:9094,k2:9094: connection refused: SASL authentication refused: {BROKER_WORDS}"
        assert access.report() == {"servers": "k1:9094,k2:9094", "state": "refused",
                                   "reason": f"SASL authentication refused: {BROKER_WORDS}"}
        access.refused("TLS handshake refused: certificate verify failed: certificate has expired")
        access.connected()
        access.connected()
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2 and all(e.startswith("Kafka k1:9094,k2:9094: connection refused: ") for e in errors)
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.INFO] == ["Kafka k1:9094,k2:9094: connected again"]
    assert access.report()["state"] == "connected"


async def test_a_failure_that_is_no_refusal_goes_through_as_itself():
    access = KafkaAccess({"bootstrap_servers": "k1:9094"})
    bug = ValueError("a bug")
    assert await access.classify(bug) is bug

    async def failing():
        raise bug
    with pytest.raises(ValueError):
        await access.attempt(failing)
    assert access.report()["state"] == "connecting"
