"""A private CA and the emulator's server certificate.

Modules trust only the CA (through the workload API's trust bundle or `EdgeModuleCACertificateFile`), as
they trust the IoT Edge device CA in production. The server certificate carries an IP SAN for the loopback
address the hub listens on (azure-iot-device checks the host name, and an IP SAN satisfies it for an address)
and DNS SANs for names a module may dial. The CA is kept across runs of the same state directory; the server
certificate is re-issued whenever the address or names it must carry change, so a restarted emulator on a new
address keeps the trust modules already have.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_VALIDITY = dt.timedelta(days=3650)
SERVER_VALIDITY = dt.timedelta(days=365)
# Re-issue the server certificate well before it lapses, so a long-lived state directory never serves an
# expired one.
RENEW_BEFORE = dt.timedelta(days=30)


@dataclass(frozen=True)
class CertPaths:
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _make_ca(paths: CertPaths) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edgesim device CA")])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_private(paths.ca_key, _key_pem(key))
    _write_private(paths.ca_cert, cert.public_bytes(serialization.Encoding.PEM))


def _wanted_sans(host: str, hostnames: Sequence[str]) -> set[str]:
    return {f"ip:{ipaddress.ip_address(host)}"} | {f"dns:{name.lower()}" for name in hostnames}


def _server_cert_fits(paths: CertPaths, host: str, hostnames: Sequence[str]) -> bool:
    if not (paths.server_cert.exists() and paths.server_key.exists()):
        return False
    cert = x509.load_pem_x509_certificate(paths.server_cert.read_bytes())
    ca = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
    if cert.issuer != ca.subject or cert.not_valid_after_utc - RENEW_BEFORE < _now():
        return False
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    present = {f"ip:{ip}" for ip in san.get_values_for_type(x509.IPAddress)} | {
        f"dns:{name.lower()}" for name in san.get_values_for_type(x509.DNSName)
    }
    return _wanted_sans(host, hostnames) <= present


def _make_server_cert(paths: CertPaths, host: str, hostnames: Sequence[str]) -> None:
    ca_key = serialization.load_pem_private_key(paths.ca_key.read_bytes(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise TypeError(f"{paths.ca_key} is not an EC key")
    ca_cert = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    common_name = hostnames[0] if hostnames else host
    now = _now()
    alt_names: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address(host))]
    alt_names += [x509.DNSName(name) for name in hostnames]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + SERVER_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write_private(paths.server_key, _key_pem(key))
    _write_private(paths.server_cert, cert.public_bytes(serialization.Encoding.PEM))


def ensure_certificates(directory: Path, host: str, hostnames: Sequence[str] = ()) -> CertPaths:
    """Create (or reuse) the CA and a server certificate valid for `host` and `hostnames` in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = CertPaths(
        ca_cert=directory / "ca.pem",
        ca_key=directory / "ca.key.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key.pem",
    )
    if not (paths.ca_cert.exists() and paths.ca_key.exists()):
        _make_ca(paths)
        paths.server_cert.unlink(missing_ok=True)
    if not _server_cert_fits(paths, host, hostnames):
        _make_server_cert(paths, host, hostnames)
    return paths


def server_ssl_context(paths: CertPaths) -> ssl.SSLContext:
    """TLS 1.2+ server context; the chain sent includes the CA so clients can build the path."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    chain = paths.server_cert.with_name("server-chain.pem")
    chain.write_bytes(paths.server_cert.read_bytes() + paths.ca_cert.read_bytes())
    context.load_cert_chain(certfile=chain, keyfile=paths.server_key)
    return context
