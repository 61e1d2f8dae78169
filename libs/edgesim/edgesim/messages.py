"""The message as the emulator holds it between a module's output and its destinations."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class HubMessage:
    """One device-to-cloud or module-to-module message.

    `system_properties` uses edgeHub's query names without the `$` (e.g. `contentType`,
    `contentEncoding`, `messageId`, `correlationId`, `connectionDeviceId`, `connectionModuleId`,
    `outputName`, `enqueuedTime`), so routing conditions can address them as `$contentType`.
    `app_properties` are the application properties exactly as the sender set them.
    """

    body: bytes
    app_properties: dict[str, str] = field(default_factory=dict)
    system_properties: dict[str, str] = field(default_factory=dict)

    @property
    def source_module(self) -> str | None:
        return self.system_properties.get("connectionModuleId")

    @property
    def source_output(self) -> str | None:
        return self.system_properties.get("outputName")

    def to_json(self) -> str:
        return json.dumps(
            {
                "body_b64": base64.b64encode(self.body).decode("ascii"),
                "app_properties": self.app_properties,
                "system_properties": self.system_properties,
            },
            ensure_ascii=False,
        )

    @classmethod
    def from_json(cls, text: str) -> HubMessage:
        data: dict[str, Any] = json.loads(text)
        return cls(
            body=base64.b64decode(data["body_b64"]),
            app_properties=dict(data["app_properties"]),
            system_properties=dict(data["system_properties"]),
        )
