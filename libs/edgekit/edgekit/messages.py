"""The message a module sends and receives, independent of the IoT Edge SDK."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

JSON_CONTENT_TYPE = "application/json"
UTF8 = "utf-8"


@dataclass(frozen=True)
class Message:
    """One module-to-module or module-to-cloud message.

    `properties` are the application properties edgeHub routes can filter on (strings only: that is
    what goes over MQTT). `input_name` is set on received messages, `output_name` on sent ones where
    the transport knows it.
    """

    body: bytes
    properties: dict[str, str] = field(default_factory=dict)
    content_type: str | None = None
    content_encoding: str | None = None
    message_id: str | None = None
    correlation_id: str | None = None
    input_name: str | None = None
    output_name: str | None = None

    @classmethod
    def from_json(
        cls,
        value: Any,
        properties: Mapping[str, str] | None = None,
        *,
        message_id: str | None = None,
        correlation_id: str | None = None,
    ) -> Message:
        """A JSON message (UTF-8, content type application/json) carrying `value`."""
        return cls(
            body=json_bytes(value),
            properties=dict(properties or {}),
            content_type=JSON_CONTENT_TYPE,
            content_encoding=UTF8,
            message_id=message_id,
            correlation_id=correlation_id,
        )

    def json(self) -> Any:
        """The body decoded as JSON (raises `ValueError` if it is not UTF-8 JSON)."""
        return json.loads(self.body.decode(self.content_encoding or UTF8))

    def text(self) -> str:
        return self.body.decode(self.content_encoding or UTF8)


def json_bytes(value: Any) -> bytes:
    """Compact UTF-8 JSON; non-ASCII stays as is so bodies stay small and readable."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode(UTF8)


@dataclass(frozen=True)
class MethodRequest:
    """A direct method call: `payload` is the decoded JSON payload (None when empty)."""

    name: str
    payload: Any = None
    request_id: str = ""


@dataclass(frozen=True)
class MethodResponse:
    """What a direct method handler returns; `status` follows HTTP conventions."""

    status: int
    payload: Any = None

    @classmethod
    def ok(cls, payload: Any = None) -> MethodResponse:
        return cls(200, payload)

    @classmethod
    def error(cls, status: int, reason: str) -> MethodResponse:
        return cls(status, {"error": reason})
