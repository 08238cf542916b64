"""TLS and SASL options reach the Kafka clients, faust and the broker transports (pure: nothing connects)."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from streams.contract.config import ConfigError, parse_config
from streams.adapters.kafka.client import client_options

PASSWORD = "kafka-password-8c2f61d0"


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> dict[str, Path]:
    """A self-signed CA-less client certificate, made with the machine's openssl."""
    d = tmp_path_factory.mktemp("certs")
    key, cert = d / "client.key", d / "client.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=usync-test"], check=True, capture_output=True, timeout=60)
    return {"key": key, "cert": cert}


def _config(kafka: str, env: dict[str, str] | None = None):
    text = f'[kafka]\nbootstrap_servers = "k1:9093,k2:9093"\n{kafka}\n[sites.a]\napi_url = "https://a/api/"\ntoken_env = "T"\n'
    return parse_config(text, {"T": "t", **(env or {})})


async def test_sasl_ssl_reaches_every_aiokafka_client(certs):
    config = _config(
        f'security_protocol = "SASL_SSL"\nsasl_mechanism = "SCRAM-SHA-512"\nsasl_username = "usync"\n'
        f'sasl_password_env = "KPW"\nssl_cafile = "{certs["cert"]}"\nssl_certfile = "{certs["cert"]}"\n'
        f'ssl_keyfile = "{certs["key"]}"', {"KPW": PASSWORD})
    options = client_options(config)
    assert isinstance(options["ssl_context"], ssl.SSLContext) and options["ssl_context"].check_hostname
    for client in (AIOKafkaProducer(**options).client, AIOKafkaConsumer(**options)._client,
                   AIOKafkaAdminClient(**options)._client):
        assert client._security_protocol == "SASL_SSL"
        assert client._sasl_mechanism == "SCRAM-SHA-512"
        assert client._sasl_plain_username == "usync" and client._sasl_plain_password == PASSWORD
        assert client._ssl_context is options["ssl_context"]
    assert PASSWORD not in repr(config)


def test_faust_gets_sasl_and_ssl_credentials():
    from streams.app import broker_credentials

    sasl = broker_credentials(_config('security_protocol = "SASL_PLAINTEXT"\nsasl_mechanism = "PLAIN"\n'
                                      'sasl_username = "u"\nsasl_password_env = "KPW"', {"KPW": PASSWORD}))
    assert sasl.username == "u" and sasl.password == PASSWORD and sasl.mechanism.value == "PLAIN"
    tls = broker_credentials(_config('security_protocol = "SSL"\nssl_check_hostname = false'))
    assert isinstance(tls.context, ssl.SSLContext) and tls.context.check_hostname is False
    assert broker_credentials(_config("")) is None


@pytest.mark.parametrize("kafka, problem", [
    ('security_protocol = "TLS"', "security_protocol: must be one of"),
    ('security_protocol = "SASL_SSL"', "sasl_mechanism: required"),
    ('sasl_mechanism = "PLAIN"', "needs security_protocol SASL_PLAINTEXT or SASL_SSL"),
    ('security_protocol = "SASL_SSL"\nsasl_mechanism = "SCRAM-SHA-256"', "needs sasl_username and sasl_password_env"),
    ('ssl_certfile = "/x.pem"', "ssl_certfile and ssl_keyfile go together"),
])
def test_inconsistent_kafka_security_is_refused_at_load(kafka, problem):
    with pytest.raises(ConfigError, match=problem):
        _config(kafka)


def test_amqps_source_gets_tls_and_amqp_does_not():
    from bridges.transports.registry import open_connection

    secure = open_connection("amqps://rabbit.example.org/", "login", "pass", "vhost")
    assert isinstance(secure._ssl_context, ssl.SSLContext) and secure._port == 5671
    plain = open_connection("amqp://rabbit.example.org/", "login", "pass", "vhost")
    assert plain._ssl_context is None and plain._port == 5672
    context = ssl.create_default_context()
    assert open_connection("amqps://r/", "l", "p", "v", ssl_context=context)._ssl_context is context


class FirstBytes:
    """A loopback TCP server that records what a client sends first, then hangs up."""

    def __init__(self) -> None:
        self.seen: asyncio.Future[bytes] | None = None
        self.server: asyncio.base_events.Server | None = None

    async def __aenter__(self) -> "FirstBytes":
        self.seen = asyncio.get_running_loop().create_future()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            data = await reader.read(5)
            if not self.seen.done():
                self.seen.set_result(data)
            writer.close()

        self.server = await asyncio.start_server(handle, "127.0.0.1", 0)
        return self

    @property
    def port(self) -> int:
        return self.server.sockets[0].getsockname()[1]

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        await self.server.wait_closed()


TLS_HANDSHAKE = b"\x16\x03"  # a TLS record of type handshake: the ClientHello


@pytest.mark.parametrize("scheme, secure", [("wss", True), ("ws", False), ("stomp+ssl", True), ("stomp", False),
                                            ("amqps", True), ("amqp", False)])
async def test_secure_schemes_speak_tls_on_the_wire(scheme, secure):
    from bridges.transports.registry import open_connection

    async with FirstBytes() as server:
        source = open_connection(f"{scheme}://127.0.0.1:{server.port}/ws", "login", "passcode-5e1f0a", "vhost",
                             connect_timeout=5.0)
        connecting = asyncio.create_task(source.connect())
        first = await asyncio.wait_for(server.seen, 30)
        with pytest.raises(Exception):  # the server hangs up: whatever the transport's error
            await asyncio.wait_for(connecting, 30)
        await source.close()
    assert first.startswith(TLS_HANDSHAKE) == secure, first
    assert b"passcode-5e1f0a" not in first
