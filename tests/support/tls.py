"""A test PKI made by the tests (the ``cryptography`` package): nothing is checked in.

``make_pki(folder)`` writes, as PEM files:

- ``ca.pem`` / ``ca.key``: the test CA (the bundle usync is given as ``ca_file``);
- ``server.pem`` / ``server.key``: 127.0.0.1 and localhost (SAN IP and DNS), signed by the CA;
- ``client.pem`` / ``client.key``: a client certificate (mutual TLS), signed by the CA;
- ``other-ca.pem`` and ``stranger.pem`` / ``stranger.key``: a server certificate for the
  right names signed by another CA (the "unknown CA" failure);
- ``expired.pem`` / ``expired.key``: the right names and CA, expired yesterday;
- ``wrong-host.pem`` / ``wrong-host.key``: the test CA, but only for ``wrong.example``.

EC P-256 keys: the whole set (7 keys, 8 certificates) takes ~5 ms, ~14 ms the first time
in a process; the 7 keys alone as RSA-2048 take ~330 ms (measured on this 2-core machine).
The ``pki`` session fixture makes one set per test run under pytest's temporary folder.
``python -m tests.support.tls DIR`` writes a set for the brokers: ``services/rabbitmq.sh``
serves its TLS listeners with ``$USYNC_DATA/tls/server.pem`` (:func:`broker_pki` finds it).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

LOCAL_NAMES = ("127.0.0.1", "localhost")


@dataclass(frozen=True)
class Pair:
    """A certificate and its key, as files."""

    cert: Path
    key: Path

    def server_context(self, client_ca: Path | None = None) -> ssl.SSLContext:
        """A server-side context serving this pair; ``client_ca`` requires client certificates from it."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, self.key)
        if client_ca is not None:
            context.load_verify_locations(client_ca)
            context.verify_mode = ssl.CERT_REQUIRED
        return context


@dataclass(frozen=True)
class Pki:
    ca: Path
    ca_key: Path
    server: Pair
    client: Pair
    other_ca: Path
    stranger: Pair
    expired: Pair
    wrong_host: Pair


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


def _write_cert(cert: x509.Certificate, path: Path) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _ca(common_name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(_name(common_name))
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _leaf(folder: Path, stem: str, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey], names: tuple[str, ...],
          *, client: bool = False, expired: bool = False) -> Pair:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    start, end = (now - dt.timedelta(days=10), now - dt.timedelta(days=1)) if expired else (now - dt.timedelta(hours=1),
                                                                                          now + dt.timedelta(days=30))
    sans: list[x509.GeneralName] = []
    for name in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            sans.append(x509.DNSName(name))
    ca_cert, ca_key = issuer
    usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
    cert = (
        x509.CertificateBuilder().subject_name(_name(names[0])).issuer_name(ca_cert.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pair = Pair(folder / f"{stem}.pem", folder / f"{stem}.key")
    _write_cert(cert, pair.cert)
    _write_key(key, pair.key)
    return pair


def make_pki(folder: Path) -> Pki:
    """Write the whole set into ``folder`` (created if missing)."""
    folder.mkdir(parents=True, exist_ok=True)
    ca, other = _ca("usync test CA"), _ca("some other CA")
    _write_cert(ca[0], folder / "ca.pem")
    _write_key(ca[1], folder / "ca.key")
    _write_cert(other[0], folder / "other-ca.pem")
    _leaf(folder, "server", ca, LOCAL_NAMES)
    _leaf(folder, "client", ca, ("usync-client",), client=True)
    _leaf(folder, "stranger", other, LOCAL_NAMES)
    _leaf(folder, "expired", ca, LOCAL_NAMES, expired=True)
    _leaf(folder, "wrong-host", ca, ("wrong.example",))
    return pki_in(folder)


def pki_in(folder: Path) -> Pki:
    """The paths of a set :func:`make_pki` wrote into ``folder``."""
    def pair(stem: str) -> Pair:
        return Pair(folder / f"{stem}.pem", folder / f"{stem}.key")
    return Pki(ca=folder / "ca.pem", ca_key=folder / "ca.key", server=pair("server"), client=pair("client"),
               other_ca=folder / "other-ca.pem", stranger=pair("stranger"), expired=pair("expired"),
               wrong_host=pair("wrong-host"))


def broker_pki() -> Pki:
    """The set the local RabbitMQ serves (``$USYNC_DATA/tls``, written by services/rabbitmq.sh)."""
    root = Path(__file__).resolve().parents[2]
    folder = Path(os.environ.get("USYNC_DATA") or root / ".local") / "tls"
    found = pki_in(folder)
    if not found.ca.is_file():
        raise FileNotFoundError(f"{found.ca}: no broker PKI (services/rabbitmq.sh install writes it)")
    return found


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """One test PKI per run (import into a conftest.py: ``from tests.support.tls import pki``)."""
    return make_pki(tmp_path_factory.mktemp("tls"))


def ensure_pki(folder: Path, margin: dt.timedelta = dt.timedelta(days=7)) -> bool:
    """Write a set into ``folder`` unless its server certificate is still valid for ``margin``
    (a running broker keeps serving the one it loaded); True if it wrote one."""
    server = folder / "server.pem"
    if server.is_file():
        cert = x509.load_pem_x509_certificate(server.read_bytes())
        if cert.not_valid_after_utc - margin > dt.datetime.now(dt.timezone.utc):
            return False
    make_pki(folder)
    return True


if __name__ == "__main__":
    print("written" if ensure_pki(Path(sys.argv[1])) else "kept")
