"""Which proxy the site clients use: the environment's, read once at start."""

import pytest

from streams.adapters.waldur import _env_proxy


@pytest.fixture(autouse=True)
def no_proxy_env(monkeypatch):
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


def test_no_proxy_configured_means_a_direct_connection():
    assert _env_proxy("https://waldur.example.org/api/") is None


def test_the_proxy_of_the_url_scheme_is_used(monkeypatch):
    monkeypatch.setenv("https_proxy", "http://proxy.example.org:3128")
    monkeypatch.setenv("http_proxy", "http://plain-proxy.example.org:3128")
    proxy = _env_proxy("https://waldur.example.org/api/")
    assert proxy is not None and proxy.url.host == "proxy.example.org"
    assert _env_proxy("http://waldur.example.org/api/").url.host == "plain-proxy.example.org"


def test_no_proxy_hosts_bypass_it(monkeypatch):
    monkeypatch.setenv("https_proxy", "http://proxy.example.org:3128")
    monkeypatch.setenv("no_proxy", "internal.example.org,127.0.0.1")
    assert _env_proxy("https://internal.example.org/api/") is None
    assert _env_proxy("http://127.0.0.1:8000/api/") is None
    assert _env_proxy("https://waldur.example.org/api/") is not None
