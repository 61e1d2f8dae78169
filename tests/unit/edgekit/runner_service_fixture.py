"""A tiny module run as a process by test_edgekit_runner.py: `python runner_service_fixture.py MARKER_DIR`.

Its one input handler takes a while; the test sends SIGTERM while it runs and checks it finished."""

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from edgekit import Context, InMemoryTransport, Message, run_module


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    work_s: float = 0.5


class SlowService:
    def __init__(self, markers: Path, transport: InMemoryTransport) -> None:
        self.markers = markers
        self.transport = transport
        self.stopped = False

    async def start(self, ctx: Context[Settings]) -> None:
        self.ctx = ctx
        ctx.transport.on_input("work", self.handle)
        # Held until the runner opens intake after start() returns.
        self.transport.deliver_nowait("work", Message(b"job-1"))

    async def handle(self, message: Message) -> None:
        (self.markers / "started").write_text(message.text())
        await asyncio.sleep(self.ctx.settings.current.work_s)
        self.ctx.counters.inc("items")
        (self.markers / "finished").write_text(message.text())

    async def stop(self) -> None:
        self.stopped = True
        (self.markers / "service-stopped").write_text("yes")


def main() -> None:
    markers = Path(sys.argv[1])
    transport = InMemoryTransport()
    try:
        run_module(
            SlowService(markers, transport), Settings, env_prefix="SLOW_", transport_factory=lambda: transport
        )
    finally:
        report: dict[str, Any] = {"reported": transport.reported, "connected": transport.connected}
        (markers / "reported.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main()
