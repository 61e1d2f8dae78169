"""Message envelopes (DESIGN §4): a JSON body whose `schema` names kind and version, summarised in
application properties so edgeHub routes can filter with WHERE, plus content ids (sha256)."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .messages import JSON_CONTENT_TYPE, UTF8, Message, json_bytes

SCHEMA_PREFIX = "edgeloop."
_SCHEMA_RE = re.compile(r"^edgeloop\.(?P<kind>[a-z][a-z0-9-]*)/(?P<version>[1-9][0-9]*(?:\.[0-9]+)?)$")
_KIND_RE = re.compile(r"^[a-z][a-z0-9-]*$")
_VERSION_RE = re.compile(r"^[1-9][0-9]*(?:\.[0-9]+)?$")
_CHUNK = 1 << 20

RouteValue = str | int | float | bool


class EnvelopeError(ValueError):
    """A message is not the envelope the consumer expects (wrong kind, major version, or not JSON)."""


def schema_name(kind: str, version: str | int) -> str:
    version = str(version)
    if not _KIND_RE.match(kind):
        raise ValueError(f"kind {kind!r} must be lower-case letters, digits and '-'")
    if not _VERSION_RE.match(version):
        raise ValueError(f"version {version!r} must be MAJOR or MAJOR.MINOR")
    return f"{SCHEMA_PREFIX}{kind}/{version}"


def _route_property(value: RouteValue) -> str:
    # edgeHub compares application properties as strings; booleans in the lower-case JSON spelling
    # so that a route can say `WHERE flag = 'true'`.
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def make_message(
    kind: str,
    version: str | int,
    body: Mapping[str, Any],
    route_props: Mapping[str, RouteValue] | None = None,
    *,
    message_id: str | None = None,
    correlation_id: str | None = None,
) -> Message:
    """An envelope message: `body` plus `"schema": "edgeloop.<kind>/<version>"`.

    Application properties carry `schema`, `kind` and `route_props` (values as strings). `message_id`
    should be a content id so that redelivered copies are recognisable.
    """
    schema = schema_name(kind, version)
    if "schema" in body and body["schema"] != schema:
        raise ValueError(f"body already has schema {body['schema']!r}, not {schema!r}")
    properties = {key: _route_property(value) for key, value in (route_props or {}).items()}
    for reserved in ("schema", "kind"):
        if reserved in properties:
            raise ValueError(f"route property {reserved!r} is set by the envelope")
    properties["schema"] = schema
    properties["kind"] = kind
    return Message(
        body=json_bytes({"schema": schema, **body}),
        properties=properties,
        content_type=JSON_CONTENT_TYPE,
        content_encoding=UTF8,
        message_id=message_id,
        correlation_id=correlation_id,
    )


def parse_message(message: Message, expected_kind: str, major: int = 1) -> tuple[str, dict[str, Any]]:
    """Check and decode an envelope: returns (version, body), body including `schema`.

    Minor versions only add fields, so any `<major>.x` is accepted; another major version, another
    kind, a missing schema or a body that is not a UTF-8 JSON object raises `EnvelopeError`.
    """
    try:
        body = json.loads(message.body.decode(message.content_encoding or UTF8))
    except (UnicodeDecodeError, LookupError) as error:
        encoding = message.content_encoding or UTF8
        raise EnvelopeError(f"message body is not text in {encoding}: {error}") from error
    except json.JSONDecodeError as error:
        raise EnvelopeError(f"message body is not JSON: {error}") from error
    if not isinstance(body, dict):
        raise EnvelopeError(f"message body is a JSON {type(body).__name__}, not an object")
    schema = body.get("schema")
    if not isinstance(schema, str):
        raise EnvelopeError("message body has no 'schema' string")
    match = _SCHEMA_RE.match(schema)
    if match is None:
        raise EnvelopeError(f"schema {schema!r} is not 'edgeloop.<kind>/<version>'")
    if match["kind"] != expected_kind:
        raise EnvelopeError(f"expected kind {expected_kind!r}, got {match['kind']!r} ({schema})")
    version = match["version"]
    if int(version.split(".")[0]) != major:
        raise EnvelopeError(f"expected {expected_kind} major version {major}, got {version} ({schema})")
    return version, body


def content_id(data: bytes | bytearray | memoryview | str | os.PathLike[str]) -> str:
    """sha256 hex of bytes, or of a file's content when given a path (read in chunks)."""
    if isinstance(data, bytes | bytearray | memoryview):
        return hashlib.sha256(data).hexdigest()
    digest = hashlib.sha256()
    with Path(data).open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def json_content_id(value: Any) -> str:
    """sha256 of a canonical JSON form (sorted keys), for ids derived from descriptions, not bytes."""
    canonical = json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode(UTF8)).hexdigest()
