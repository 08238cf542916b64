"""TLS client contexts from the configuration, and what a refused handshake says.

One builder for every client usync opens (the Waldur API, the broker, Kafka): the
configured CA bundle or the system's (``SSL_CERT_FILE`` included), and an optional client
certificate for mutual TLS. :func:`tls_reason` reads, from any library's wrapped
exception (httpx, aiohttp, websockets, pika), the handshake's own reason ("certificate
has expired", "Hostname mismatch, ...", "unable to get local issuer certificate") so that
an operator sees why, not only that, a connection was refused.
"""

from __future__ import annotations

import ssl

from streams.contract.config import Site


def client_context(ca_file: str | None = None, cert_file: str | None = None, key_file: str | None = None,
                   check_hostname: bool = True) -> ssl.SSLContext:
    """A verifying client context: ``ca_file`` (default: the system's), a client certificate if given."""
    context = ssl.create_default_context(cafile=ca_file)
    if cert_file:
        context.load_cert_chain(cert_file, key_file)
    context.check_hostname = check_hostname
    return context


def site_api_context(site: Site) -> ssl.SSLContext:
    """The context for a site's API (``Site.ca_file``, ``client_cert_file``/``client_key_file``)."""
    return client_context(site.ca_file, site.client_cert_file, site.client_key_file)


def site_broker_context(site: Site) -> ssl.SSLContext | None:
    """The context for a site's broker (``Site.broker_ca_file``, the same client certificate);
    None when nothing is configured: the transports then use the system's defaults."""
    if not (site.broker_ca_file or site.client_cert_file):
        return None
    return client_context(site.broker_ca_file, site.client_cert_file, site.client_key_file)


def tls_reason(exc: BaseException | None) -> str | None:
    """The TLS failure inside ``exc`` (its cause and context chain), or None if there is none."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        # aiohttp's ClientConnectorCertificateError is an ssl.CertificateError without
        # OpenSSL's fields: the handshake's own error is in its certificate_error.
        certificate_error = getattr(exc, "certificate_error", None)
        if isinstance(certificate_error, BaseException) and certificate_error is not exc:
            exc = certificate_error
            continue
        verify_message = getattr(exc, "verify_message", None)
        if isinstance(exc, ssl.SSLCertVerificationError) and verify_message:
            return f"certificate verify failed: {verify_message}"
        if isinstance(exc, ssl.SSLError) and getattr(exc, "reason", None):
            return f"TLS error: {exc.reason}"
        exc = exc.__cause__ or exc.__context__
    return None
