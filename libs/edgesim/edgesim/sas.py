"""Shared access signatures as IoT Hub and edgeHub use them for module authentication.

A token is `SharedAccessSignature sr=<url-encoded resource>&sig=<url-encoded base64 HMAC>&se=<expiry>`
(optionally `&skn=<key name>`). The signed string is the *url-encoded* resource, a newline and the expiry,
exactly as azure-iot-device builds it (`common/auth/sastoken.py`), so a token made by the SDK from a
connection string or through the workload API verifies here byte for byte.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
import urllib.parse
from dataclasses import dataclass

TOKEN_PREFIX = "SharedAccessSignature "  # noqa: S105 - a scheme name, not a secret
KEY_BYTES = 32


class SasError(ValueError):
    """A token that does not parse or does not grant access; the message says why."""


@dataclass(frozen=True)
class SasToken:
    resource: str  # decoded, e.g. "hub.azure-devices.net/devices/dev/modules/mod"
    encoded_resource: str  # as it appeared in the token (this is what was signed)
    signature: str  # decoded base64 signature
    expiry: int
    key_name: str | None

    @property
    def signed_string(self) -> str:
        return f"{self.encoded_resource}\n{self.expiry}"


def generate_key() -> bytes:
    return secrets.token_bytes(KEY_BYTES)


def module_resource(iothub_hostname: str, device_id: str, module_id: str) -> str:
    return f"{iothub_hostname}/devices/{device_id}/modules/{module_id}"


def sign(key: bytes, data: str | bytes) -> str:
    """Base64 HMAC-SHA256 of `data` under `key`: the `sig` of a token and the workload API's digest."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    return base64.b64encode(hmac.new(key, raw, hashlib.sha256).digest()).decode("ascii")


def build_token(resource: str, key: bytes, expiry: int, key_name: str | None = None) -> str:
    encoded_resource = urllib.parse.quote(resource, safe="")
    signature = urllib.parse.quote(sign(key, f"{encoded_resource}\n{expiry}"), safe="")
    token = f"{TOKEN_PREFIX}sr={encoded_resource}&sig={signature}&se={expiry}"
    if key_name:
        token += f"&skn={urllib.parse.quote(key_name, safe='')}"
    return token


def parse_token(token: str) -> SasToken:
    if not token.startswith(TOKEN_PREFIX):
        raise SasError("not a SharedAccessSignature")
    fields: dict[str, str] = {}
    for part in token[len(TOKEN_PREFIX) :].split("&"):
        name, sep, value = part.partition("=")
        if not sep or not name:
            raise SasError(f"malformed field {part!r}")
        if name in fields:
            raise SasError(f"duplicate field {name!r}")
        fields[name] = value
    unknown = set(fields) - {"sr", "sig", "se", "skn"}
    if unknown:
        raise SasError(f"unknown fields {sorted(unknown)}")
    missing = {"sr", "sig", "se"} - set(fields)
    if missing:
        raise SasError(f"missing fields {sorted(missing)}")
    try:
        expiry = int(fields["se"])
    except ValueError:
        raise SasError("expiry is not an integer") from None
    key_name = fields.get("skn")
    return SasToken(
        resource=urllib.parse.unquote(fields["sr"]),
        encoded_resource=fields["sr"],
        signature=urllib.parse.unquote(fields["sig"]),
        expiry=expiry,
        key_name=urllib.parse.unquote(key_name) if key_name is not None else None,
    )


def verify_token(token: str, key: bytes, expected_resource: str, now: float | None = None) -> SasToken:
    """Return the parsed token when it grants access to `expected_resource`, else raise SasError.

    IoT Hub compares resource URIs case-insensitively (host names are), so this does too.
    """
    parsed = parse_token(token)
    if parsed.resource.rstrip("/").lower() != expected_resource.rstrip("/").lower():
        raise SasError(f"token is for {parsed.resource!r}, not {expected_resource!r}")
    expected_sig = sign(key, parsed.signed_string)
    if not hmac.compare_digest(parsed.signature.encode("utf-8"), expected_sig.encode("ascii")):
        raise SasError("signature does not match")
    current = time.time() if now is None else now
    if parsed.expiry <= current:
        raise SasError("token expired")
    return parsed
