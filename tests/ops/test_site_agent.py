"""`usync config import-site-agent` (pure: the YAML in, TOML and notes out)."""

from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from streams.contract.config import ConfigError, parse_config
from streams.ops.site_agent import import_site_agent
from tests.app.harness import ROOT, USYNC

SAMPLE = Path(__file__).parent / "data" / "site-agent.yaml"
SAMPLE_TOKENS = ("sample-token-for-waldur-a-0123456789abcdef", "sample-service-account-token-for-waldur-b-fedcba9876543210")


def test_sample_becomes_sites_and_links():
    imported = import_site_agent(SAMPLE.read_text())
    data = tomllib.loads(imported.toml)
    assert data["sites"] == {
        "waldur-a": {"api_url": "https://waldur-a.example.org/api/", "token_env": "USYNC_TOKEN_WALDUR_A",
                     "broker_url": "wss://waldur-a.example.org/rmqws-stomp", "register": True},
        "waldur-b": {"api_url": "https://waldur-b.example.org/api/", "token_env": "USYNC_TOKEN_WALDUR_B",
                     "broker_url": "wss://waldur-b.example.org/rmqws-stomp", "register": True},
    }
    hpc, storage = data["links"]
    # the agent's local offering is usync's target; the agent's target offering is usync's source
    assert hpc == {"name": "federated-hpc-access", "reconcile": True,
                   "target": {"site": "waldur-a", "offering": "5a9bd0f6a3c54cd3b5b0b0c4c1e8f5a1"},
                   "source": {"site": "waldur-b", "offering": "0d4f7c2e-9b1a-4e3c-8f6d-2a5b7c9e1f30"}}
    assert storage["name"] == "federated-storage" and storage["reconcile"] is False
    assert any("Local SLURM cluster" in n and "skipped" in n for n in imported.notes)
    assert imported.token_envs == {"USYNC_TOKEN_WALDUR_A": "offerings[0] (Federated HPC Access).waldur_api_token",
                                   "USYNC_TOKEN_WALDUR_B": "offerings[0] (Federated HPC Access).backend_settings.target_api_token"}
    config = parse_config(imported.toml, {"USYNC_TOKEN_WALDUR_A": "x", "USYNC_TOKEN_WALDUR_B": "y"})
    assert [link.source.offering for link in config.links] == ["0d4f7c2e9b1a4e3c8f6d2a5b7c9e1f30", "3b6d9f1c2e4a4c8e9a0b2d4f6a8c0e13"]


def test_tokens_never_in_output_or_notes():
    imported = import_site_agent(SAMPLE.read_text())
    for token in SAMPLE_TOKENS:
        assert token not in imported.toml and all(token not in n for n in imported.notes)


def test_env_reference_and_plain_ws_and_differing_tokens():
    agent = yaml.safe_load(SAMPLE.read_text())
    first, second = agent["offerings"][0], agent["offerings"][1]
    first["waldur_api_token"] = "${WALDUR_A_TOKEN}"
    first.update(websocket_use_tls=False, stomp_ws_host="127.0.0.1", stomp_ws_port=15674, stomp_ws_path="/ws")
    second["waldur_api_token"] = "another-token-for-a-000000"
    imported = import_site_agent(yaml.safe_dump(agent))
    site = tomllib.loads(imported.toml)["sites"]["waldur-a"]
    assert site["token_env"] == "WALDUR_A_TOKEN" and site["broker_url"] == "ws://127.0.0.1:15674/ws"
    assert any("differs" in n for n in imported.notes) and "another-token" not in "".join(imported.notes)


def test_link_without_reconcile_or_events_is_flagged_and_broker_suggested():
    agent = yaml.safe_load(SAMPLE.read_text())
    agent["offerings"] = [agent["offerings"][0]]
    agent["offerings"][0]["username_reconciliation_enabled"] = False
    imported = import_site_agent(yaml.safe_dump(agent), app_id="usync-x", topic_prefix="fed", reconcile_interval=600)
    assert any("never sync" in n for n in imported.notes)
    assert '# broker_url = "wss://waldur-b.example.org/rmqws-stomp"' in imported.toml
    data = tomllib.loads(imported.toml)
    assert data["app_id"] == "usync-x" and data["reconcile_interval"] == 600.0
    assert data["kafka"]["events_topic"] == "fed.offering-users.events"


@pytest.mark.parametrize("text, message", [
    ("offerings: [", "not valid YAML"),
    ("offerings: 3", "not a waldur-site-agent configuration"),
    ("offerings:\n  - name: slurm\n    backend_type: slurm\n", "no Waldur federation offering"),
])
def test_unusable_agent_files(text, message):
    with pytest.raises(ConfigError, match=message):
        import_site_agent(text)


def test_cli_writes_file_and_config_check_accepts_it(tmp_path):
    out = tmp_path / "usync.toml"
    run = subprocess.run([USYNC, "config", "import-site-agent", str(SAMPLE), "-o", str(out)],
                         capture_output=True, text=True, cwd=ROOT, timeout=180)
    assert run.returncode == 0, run.stderr
    assert run.stdout == "" and "USYNC_TOKEN_WALDUR_A" in run.stderr
    assert all(t not in run.stderr + out.read_text() for t in SAMPLE_TOKENS)
    env = {"PATH": "/usr/bin:/bin", "USYNC_TOKEN_WALDUR_A": "a", "USYNC_TOKEN_WALDUR_B": "b"}
    check = subprocess.run([USYNC, "config", "check", str(out)], capture_output=True, text=True, env=env, timeout=180)
    assert check.returncode == 0, check.stderr
    assert "OK (2 sites, 2 links)" in check.stdout
