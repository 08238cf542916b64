"""The existing agent's username sync, driven as in production; runs in .local/agent-venv.

    .local/agent-venv/bin/python bench/agent_driver.py CONFIG.json              # the event path
    .local/agent-venv/bin/python bench/agent_driver.py --periodic CONFIG.json   # one periodic pass

Not importable from usync's venv (it imports waldur-site-agent 1.0.7 and its Waldur
federation plugin). CONFIG.json: a_url, a_token, a_offering, b_url, b_token, b_offering,
b_customer, ws_host, ws_port, ws_path.

What runs is the plugin's own event path: ``WaldurBackend.setup_target_event_subscriptions``
registers the agent identity and its unified ``consumer_<uuid>`` queue on B, opens the
agent's STOMP-over-WebSocket connection (ack=auto, the stomp.py receiver thread) and routes
each message through the plugin's ``target_router`` to ``make_target_offering_user_handler``,
which runs ``sync_offering_user_usernames`` (list B, list A, PATCH what differs) for every
create/update event with a non-empty username, sequentially, in the receiver thread.

One shim: in 1.0.7 ``target_router`` calls the handlers with four arguments while they take
three, so every event fails with a TypeError and no sync runs (seen with the PyPI package 1.0.7).
The shim accepts and drops the fourth argument: the agent "as designed".

Prints one JSON line per event handled on stdout ({"event": n, "action", "seconds"}) and
"READY" once subscribed. Exits on SIGTERM (the bench also sets PR_SET_PDEATHSIG).

``--periodic``: one pass of the agent's periodic username reconciliation
(``run_periodic_username_reconciliation`` with an offering as the agent's config would
give it: ``membership_sync_backend="waldur"``, ``username_reconciliation_enabled``), then
"DONE" and exit 0.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time


def periodic(cfg: dict) -> int:
    from waldur_site_agent.common.structures import Offering
    from waldur_site_agent.event_processing.utils import run_periodic_username_reconciliation

    offering = Offering(
        name="periodic A offering",
        waldur_api_url=cfg["a_url"],
        waldur_api_token=cfg["a_token"],
        waldur_offering_uuid=cfg["a_offering"],
        backend_type="waldur",
        membership_sync_backend="waldur",
        username_reconciliation_enabled=True,
        backend_settings={
            "target_api_url": cfg["b_url"],
            "target_api_token": cfg["b_token"],
            "target_offering_uuid": cfg["b_offering"],
            "target_customer_uuid": cfg["b_customer"],
        },
    )
    run_periodic_username_reconciliation([offering], "waldur-site-agent-periodic")
    print("DONE", flush=True)
    return 0


def serve_events(cfg: dict) -> int:
    import waldur_site_agent_waldur.target_event_handler as handlers
    from waldur_site_agent.common.structures import Offering
    from waldur_site_agent_waldur.backend import WaldurBackend

    counter = {"n": 0}
    lock = threading.Lock()
    original = handlers.make_target_offering_user_handler

    def make_handler(source_offering, backend):
        handler = original(source_offering, backend)

        def timed(frame, target_offering, user_agent, *_ignored):  # the arity shim
            started = time.monotonic()
            handler(frame, target_offering, user_agent)
            try:
                action = json.loads(frame.body).get("action", "")
            except ValueError:
                action = "?"
            with lock:
                counter["n"] += 1
                print(json.dumps({"event": counter["n"], "action": action,
                                  "seconds": round(time.monotonic() - started, 4)}), flush=True)

        return timed

    handlers.make_target_offering_user_handler = make_handler

    source_offering = Offering(
        name="bench A offering",
        waldur_api_url=cfg["a_url"],
        waldur_api_token=cfg["a_token"],
        waldur_offering_uuid=cfg["a_offering"],
        backend_type="waldur",
        stomp_enabled=True,
        stomp_ws_host=cfg["ws_host"],
        stomp_ws_port=cfg["ws_port"],
        stomp_ws_path=cfg["ws_path"],
        websocket_use_tls=False,
    )
    backend = WaldurBackend({
        "target_api_url": cfg["b_url"],
        "target_api_token": cfg["b_token"],
        "target_offering_uuid": cfg["b_offering"],
        "target_customer_uuid": cfg["b_customer"],
        "target_stomp_enabled": True,
    }, {})
    consumers = backend.setup_target_event_subscriptions(source_offering, "waldur-site-agent-bench")
    if not consumers:
        print("FAILED: no target STOMP subscription (see the log above)", file=sys.stderr, flush=True)
        return 2
    connection = consumers[0][0]
    deadline = time.monotonic() + 30
    while not connection.is_connected() and time.monotonic() < deadline:
        time.sleep(0.05)
    print("READY", flush=True)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    try:
        connection.disconnect()
    except Exception:
        pass
    return 0


def main() -> int:
    logging.basicConfig(level=os.environ.get("AGENT_LOG_LEVEL", "WARNING"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if sys.argv[1] == "--periodic":
        return periodic(json.load(open(sys.argv[2])))
    return serve_events(json.load(open(sys.argv[1])))


if __name__ == "__main__":
    sys.exit(main())
