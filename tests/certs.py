"""Test certificates made at test time: a CA, a server certificate, client certificates."""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class Pki:
    ca_file: Path  # the test CA (PEM): trusted by both sides
    server_cert: Path  # server certificate for 127.0.0.1 and localhost, signed by the CA
    server_key: Path
    client_cert: Path  # client certificate signed by the CA
    client_key: Path
    stranger_cert: Path  # client certificate signed by a CA nobody trusts
    stranger_key: Path


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    try:
        import trustme
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("trustme is not installed (pip install trustme)", pytrace=False)
        pytest.skip("trustme is not installed (pip install trustme)")
    d = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    stranger_ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("client.fluentclient.test")
    stranger = stranger_ca.issue_cert("client.fluentclient.test")
    pki = Pki(
        ca_file=d / "ca.pem",
        server_cert=d / "server.pem",
        server_key=d / "server.key",
        client_cert=d / "client.pem",
        client_key=d / "client.key",
        stranger_cert=d / "stranger.pem",
        stranger_key=d / "stranger.key",
    )
    ca.cert_pem.write_to_path(str(pki.ca_file))
    for leaf, cert_path, key_path in (
        (server, pki.server_cert, pki.server_key),
        (client, pki.client_cert, pki.client_key),
        (stranger, pki.stranger_cert, pki.stranger_key),
    ):
        cert_path.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
        leaf.private_key_pem.write_to_path(str(key_path))
    return pki


def server_context(pki: Pki, *, require_client_cert: bool = False) -> ssl.SSLContext:
    """A server-side context for the embedded server, optionally demanding client certs."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(pki.server_cert), str(pki.server_key))
    if require_client_cert:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(str(pki.ca_file))
    return context


def client_context(pki: Pki, *, cert: str | None = None) -> ssl.SSLContext:
    """A client-side context trusting the test CA; ``cert`` is None, "client" or "stranger"."""
    context = ssl.create_default_context(cafile=str(pki.ca_file))
    if cert == "client":
        context.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    elif cert == "stranger":
        context.load_cert_chain(str(pki.stranger_cert), str(pki.stranger_key))
    elif cert is not None:
        raise ValueError(f"cert must be None, 'client' or 'stranger', not {cert!r}")
    return context
