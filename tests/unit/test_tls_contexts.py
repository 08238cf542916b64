"""The per-site TLS settings reach the contexts the API and broker clients use, and a refused
handshake's reason is read out of each library's wrapping (the handshakes themselves are
tested for real in tests/app/test_tls.py)."""

from __future__ import annotations

import ssl
from types import SimpleNamespace

import aiohttp
import httpx

from streams.adapters.tls import client_context, site_api_context, site_broker_context, tls_reason
from streams.contract.config import parse_config
from tests.support.tls import make_pki


def _site(tmp_path, extra: str):
    text = f'[sites.a]\napi_url = "https://a/api/"\ntoken_env = "T"\n{extra}'
    return parse_config(text, {"T": "t"}).sites["a"]


def test_site_files_reach_the_contexts(tmp_path):
    pki = make_pki(tmp_path)
    site = _site(tmp_path, f'ca_file = "{pki.ca}"\nbroker_ca_file = "{pki.other_ca}"\n'
                           f'client_cert_file = "{pki.client.cert}"\nclient_key_file = "{pki.client.key}"\n')
    api, broker = site_api_context(site), site_broker_context(site)
    assert [c["subject"] for c in api.get_ca_certs()] == [((("commonName", "usync test CA"),),)]
    assert [c["subject"] for c in broker.get_ca_certs()] == [((("commonName", "some other CA"),),)]
    assert api.verify_mode is ssl.CERT_REQUIRED and api.check_hostname
    assert site_broker_context(_site(tmp_path, "")) is None  # nothing configured: the transport's default


def test_tls_reason_through_httpx_and_aiohttp_wrapping():
    verify = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")
    verify.verify_message = "certificate has expired"
    key = SimpleNamespace(host="127.0.0.1", port=443, is_ssl=True, ssl=True)  # aiohttp's ConnectionKey
    wrapped = aiohttp.ClientConnectorCertificateError(key, verify)  # an ssl.CertificateError itself
    try:
        try:
            raise wrapped
        except aiohttp.ClientError as exc:
            raise httpx.ConnectTimeout(str(exc)) from exc  # as httpx_aiohttp maps it
    except httpx.ConnectTimeout as outer:
        assert tls_reason(outer) == "certificate verify failed: certificate has expired"
    assert tls_reason(httpx.ConnectError("refused")) is None
    assert tls_reason(ConnectionRefusedError()) is None


def test_client_context_defaults_verify():
    context = client_context()
    assert context.verify_mode is ssl.CERT_REQUIRED and context.check_hostname
