"""A lost queue, classified without a broker: each transport's signal becomes a
:class:`SubscriptionRefused` naming the queue, the relay re-registers and reports the
window to repair, and ``usync bridge`` turns that report into a reconcile of the links
touching the offerings (the broker-level behaviour: tests/bridge/test_queue_recovery.py)."""

from __future__ import annotations

import asyncio
import random
from types import SimpleNamespace
from typing import Any

import pytest

from bridges.app import Bridge
from bridges.health import Health
from bridges.metrics import BridgeMetrics
from bridges.relay import Credential, SubscriptionRelay
from bridges.transports.amqp import AmqpConnection, _close_error
from bridges.transports.base import AuthenticationError, BrokerError, QueueNotFound, SubscriptionRefused
from bridges.transports.stomp.client import StompConnection, _broker_error
from bridges.transports.stomp.frames import Frame
from streams import cli
from streams.contract.config import Secret, parse_config
from streams.errors import TransientError

QUEUE = "subscription_s1_offering_o1_offering_user"
CANCELLED = Frame("ERROR", {"message": "Server cancelled subscription"},
                  b"The server has canceled a subscription.\nNo more messages will be delivered for \"id='sub-1'\".\n")
A1, A2, B1, B2 = ("a1" * 16, "a2" * 16, "b1" * 16, "b2" * 16)  # offering uuids
CONFIG = """
[sites.a]
api_url = "http://127.0.0.1:9/api/"
token_env = "TOKEN"
[sites.b]
api_url = "http://127.0.0.1:9/api/"
token_env = "TOKEN"
broker_url = "ws://127.0.0.1:9/ws"
register = true
[[links]]
name = "one"
target = { site = "a", offering = "A1" }
source = { site = "b", offering = "B1" }
[[links]]
name = "two"
target = { site = "a", offering = "A2" }
source = { site = "b", offering = "B2" }
""".replace("A1", A1).replace("A2", A2).replace("B1", B1).replace("B2", B2)


def config():
    return parse_config(CONFIG, {"TOKEN": "t"})


# -- transports ------------------------------------------------------------------------------

def test_a_cancelled_stomp_subscription_is_its_queue_not_found():
    connection = StompConnection("ws://127.0.0.1:9/ws", "login", "secret")
    connection._subs["sub-1"] = QUEUE  # noqa: SLF001 (the subscription the broker cancels)
    error = _broker_error(CANCELLED, Secret("secret"), True, connection._queue_of(CANCELLED))  # noqa: SLF001
    assert isinstance(error, QueueNotFound) and error.queue == QUEUE


def test_stomp_not_found_on_subscribe_names_the_queue_being_subscribed():
    connection = StompConnection("stomp://127.0.0.1:9", "login", "secret")
    connection._subscribing = QUEUE  # noqa: SLF001
    frame = Frame("ERROR", {"message": "not_found"}, f"NOT_FOUND - no queue '{QUEUE}' in vhost 'v'".encode())
    error = _broker_error(frame, Secret("secret"), True, connection._queue_of(frame))  # noqa: SLF001
    assert isinstance(error, QueueNotFound) and error.queue == QUEUE


def test_other_stomp_errors_stay_what_they_were():
    refused = _broker_error(Frame("ERROR", {"message": "Access refused"}), Secret("p4ss"), False)
    other = _broker_error(Frame("ERROR", {"message": "Bad header"}), Secret("p4ss"), True)
    assert isinstance(refused, AuthenticationError) and not isinstance(refused, SubscriptionRefused)
    assert type(other) is BrokerError


async def test_an_amqp_consumer_cancelled_by_the_broker_fails_the_connection_with_queue_not_found():
    connection = AmqpConnection("amqp://127.0.0.1:9", "login", "secret")
    connection._queues["ctag-1"] = QUEUE  # noqa: SLF001 (the consumer basic.cancel names)
    connection._on_cancelled(SimpleNamespace(method=SimpleNamespace(consumer_tag="ctag-1")))  # noqa: SLF001
    with pytest.raises(QueueNotFound) as raised:
        async for _ in connection.messages():
            pass
    assert raised.value.queue == QUEUE and "basic.cancel" in str(raised.value)


def test_amqp_not_found_names_the_queue_being_declared():
    error = _close_error(SimpleNamespace(reply_code=404, reply_text="NOT_FOUND - no queue"), "channel closed", QUEUE)
    assert isinstance(error, QueueNotFound) and error.queue == QUEUE


# -- the relay ---------------------------------------------------------------------------------

def relay(**kwargs: Any) -> SubscriptionRelay:
    credential = Credential("login", Secret("secret"), "vhost", [QUEUE], ["o1"])
    return SubscriptionRelay(site="b", broker_url="ws://127.0.0.1:9/ws", credential=credential, outlet=None,  # type: ignore[arg-type]
                             health=Health(), metrics=BridgeMetrics(), rng=random.Random(1), **kwargs)


@pytest.mark.parametrize("refusal", [
    SubscriptionRefused("broker closed the connection in answer to SUBSCRIBE", queue=QUEUE),
    QueueNotFound("broker cancelled the consumer", queue=QUEUE),
])
async def test_a_missing_queue_re_registers_says_which_on_health_and_reports_the_window(refusal):
    fresh = Credential("login2", Secret("secret"), "vhost", [QUEUE], ["o1"])
    registrations: list[int] = []
    repaired: list[Credential] = []

    async def refresh() -> Credential:
        registrations.append(1)
        return fresh

    r = relay(refresh_credential=refresh, on_resubscribed=repaired.append)
    await r._failed(refusal, 1.0)  # noqa: SLF001 (what retry_forever calls after the failure)
    assert registrations == [1] and r.credential is fresh
    component = r.health.components["b/login"]
    assert component.state == "disconnected" and QUEUE in component.detail
    r._resubscribed()  # noqa: SLF001 (what a session calls once subscribed)
    r._resubscribed()  # noqa: SLF001 (a later reconnect is no new window)
    assert repaired == [fresh]
    assert r.metrics.queue_recoveries.labels("b")._value.get() == 1  # noqa: SLF001


async def test_a_plain_reconnect_reports_no_window():
    repaired: list[Credential] = []
    r = relay(on_resubscribed=repaired.append)
    await r._failed(TransientError("Kafka away"), 1.0)  # noqa: SLF001
    r._resubscribed()  # noqa: SLF001
    assert repaired == []


# -- the bridge and usync bridge's wiring -------------------------------------------------------

async def test_the_bridge_calls_on_resubscribed_with_the_site_and_the_credentials_offerings():
    calls: list[tuple[str, list[str]]] = []

    async def on_resubscribed(site: str, offerings: list[str]) -> None:
        calls.append((site, offerings))

    bridge = Bridge(config(), on_resubscribed=on_resubscribed)
    bridge._repair("b", Credential("l", Secret("s"), "v", [QUEUE], [B2]))  # noqa: SLF001
    bridge._repair("b", Credential("l", Secret("s"), "v", ["configured"]))  # noqa: SLF001 (configured: the site's)
    await asyncio.gather(*bridge._repairs)  # noqa: SLF001
    assert calls == [("b", [B2]), ("b", [B1, B2])]


async def test_a_bug_in_the_repair_stops_the_bridge_and_a_failing_site_does_not():
    async def failing(_site: str, _offerings: list[str]) -> None:
        raise TransientError("site B answered 503")

    async def buggy(_site: str, _offerings: list[str]) -> None:
        raise KeyError("bug")

    for callback, stops in ((failing, False), (buggy, True)):
        bridge = Bridge(config(), on_resubscribed=callback)
        bridge._repair("b", Credential("l", Secret("s"), "v", [QUEUE], [B1]))  # noqa: SLF001
        await asyncio.gather(*bridge._repairs, return_exceptions=True)  # noqa: SLF001
        await asyncio.sleep(0)  # the done callback runs on the next loop iteration
        assert bridge._stopping.is_set() is stops  # noqa: SLF001
        assert isinstance(bridge._bug, KeyError) is stops  # noqa: SLF001


def test_links_touching_an_offering():
    c = config()
    assert [link.name for link in cli.links_touching(c, "b", [B2])] == ["two"]
    assert [link.name for link in cli.links_touching(c, "a", [A1, A2])] == ["one", "two"]
    assert cli.links_touching(c, "a", [B1]) == []


async def test_usync_bridge_reconciles_the_links_touching_the_offerings(monkeypatch):
    passes: list[list[str]] = []

    async def reconcile_links(_config, links):
        passes.append([link.name for link in links])
        return {}

    monkeypatch.setattr(cli, "reconcile_links", reconcile_links)
    on_resubscribed = cli.reconcile_touching(config())
    await on_resubscribed("b", [B1])
    await on_resubscribed("b", ["unknown"])  # no link: no pass
    assert passes == [["one"]]


def test_usync_bridge_gives_the_bridge_its_repair(monkeypatch, tmp_path):
    built: list[Any] = []

    class Recorded:
        def __init__(self, _config, health_port=None, on_resubscribed=None) -> None:
            built.append(on_resubscribed)

        async def run(self) -> None:
            return None

    monkeypatch.setattr("bridges.app.Bridge", Recorded)
    monkeypatch.setenv("TOKEN", "t")
    path = tmp_path / "usync.toml"
    path.write_text(CONFIG)
    assert cli.main(["bridge", "--config", str(path)]) == 0
    assert len(built) == 1 and callable(built[0])
