"""The emulator's CA and server certificate."""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
from pathlib import Path

from cryptography import x509

from edgesim.certs import ensure_certificates, server_ssl_context


def _sans(path: Path) -> tuple[set[object], set[str]]:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return set(san.get_values_for_type(x509.IPAddress)), set(san.get_values_for_type(x509.DNSName))


def test_server_cert_has_ip_and_dns_sans_and_chains_to_the_ca(tmp_path):
    paths = ensure_certificates(tmp_path, "127.9.8.7", ["edgehub"])
    ips, names = _sans(paths.server_cert)
    assert ips == {ipaddress.ip_address("127.9.8.7")}
    assert names == {"edgehub"}
    ca = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(paths.server_cert.read_bytes())
    server.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert (paths.ca_key.stat().st_mode & 0o777) == 0o600


def test_certificates_are_reused_when_they_fit(tmp_path):
    first = ensure_certificates(tmp_path, "127.9.8.7", ["edgehub"])
    ca, server = first.ca_cert.read_bytes(), first.server_cert.read_bytes()
    second = ensure_certificates(tmp_path, "127.9.8.7", ["edgehub"])
    assert second.ca_cert.read_bytes() == ca
    assert second.server_cert.read_bytes() == server


def test_new_address_reissues_server_cert_but_keeps_the_ca(tmp_path):
    first = ensure_certificates(tmp_path, "127.9.8.7", ["edgehub"])
    ca, server = first.ca_cert.read_bytes(), first.server_cert.read_bytes()
    second = ensure_certificates(tmp_path, "127.1.2.3", ["edgehub"])
    assert second.ca_cert.read_bytes() == ca
    assert second.server_cert.read_bytes() != server
    assert _sans(second.server_cert)[0] == {ipaddress.ip_address("127.1.2.3")}


async def test_tls_handshake_verifies_against_the_ca_by_ip(tmp_path):
    host = "127.0.0.1"
    paths = ensure_certificates(tmp_path, host, ["edgehub"])

    async def echo(reader, writer):
        writer.write(await reader.readexactly(4))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, host, 0, ssl=server_ssl_context(paths))
    port = server.sockets[0].getsockname()[1]
    # As azure-iot-device does it: TLS 1.2, only the given CA, host name checked.
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.minimum_version = client.maximum_version = ssl.TLSVersion.TLSv1_2
    client.load_verify_locations(cafile=str(paths.ca_cert))
    reader, writer = await asyncio.open_connection(host, port, ssl=client)
    writer.write(b"ping")
    assert await reader.readexactly(4) == b"ping"
    writer.close()
    server.close()
    await server.wait_closed()
