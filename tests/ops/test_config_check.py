"""`usync config check`: every problem at once, exit 2, no secret values in the report."""

from __future__ import annotations

import subprocess

from tests.app.harness import ROOT, USYNC

BAD = """
web_token_env = "USYNC_TEST_WEB_TOKEN_MISSING"
[kafka]
security_protocol = "SASL_SSL"
ssl_cafile = "/nonexistent/ca.pem"
[sites.a]
api_url = "ftp://a.example.org/api/"
token_env = "USYNC_TEST_TOKEN_A"
broker_url = "http://a.example.org/ws"
ca_file = "/nonexistent/a-ca.pem"
client_cert_file = "/nonexistent/client.pem"
[sites.b]
api_url = "https://b.example.org/api/"
token_env = "USYNC_TEST_TOKEN_MISSING"
broker_ca_file = "/nonexistent/b-broker-ca.pem"
[[links]]
name = "l"
target = { site = "a", offering = "5a9bd0f6a3c54cd3b5b0b0c4c1e8f5a1" }
source = { site = "nowhere", offering = "0d4f7c2e9b1a4e3c8f6d2a5b7c9e1f30" }
[[links]]
name = "l"
target = { site = "a", offering = "5a9bd0f6a3c54cd3b5b0b0c4c1e8f5a1" }
source = { site = "a", offering = "5a9bd0f6a3c54cd3b5b0b0c4c1e8f5a1" }
"""


def test_every_problem_reported_at_once(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(BAD)
    env = {"PATH": "/usr/bin:/bin", "USYNC_TEST_TOKEN_A": "secret-value-4b1d9e"}
    run = subprocess.run([USYNC, "config", "check", str(path)], capture_output=True, text=True, env=env, cwd=ROOT, timeout=180)
    assert run.returncode == 2
    for expected in ("$.sites.a.api_url", "$.sites.a.broker_url", "USYNC_TEST_TOKEN_MISSING is not set",
                     "$.kafka.sasl_mechanism: required", "$.kafka.ssl_cafile: no such file",
                     "$.sites.a.ca_file: no such file /nonexistent/a-ca.pem",
                     "$.sites.a.client_cert_file: no such file", "$.sites.a: client_cert_file and client_key_file go together",
                     "$.sites.b.broker_ca_file: no such file /nonexistent/b-broker-ca.pem",
                     "$.web_token_env: environment variable USYNC_TEST_WEB_TOKEN_MISSING is not set",
                     "$.links[0].source.site: unknown site 'nowhere'", "$.links[1].name: duplicate",
                     "$.links[1]: target and source are the same offering"):
        assert expected in run.stderr, (expected, run.stderr)
    assert "secret-value-4b1d9e" not in run.stdout + run.stderr


def test_structural_error_names_the_field(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[sites.a]\napi_url = 3\ntoken_env = "T"\n')
    run = subprocess.run([USYNC, "config", "check", str(path)], capture_output=True, text=True, cwd=ROOT, timeout=180)
    assert run.returncode == 2 and "$.sites.a.api_url" in run.stderr


def test_missing_file(tmp_path):
    run = subprocess.run([USYNC, "config", "check", str(tmp_path / "none.toml")], capture_output=True, text=True,
                         cwd=ROOT, timeout=180)
    assert run.returncode == 2 and "cannot read configuration" in run.stderr
