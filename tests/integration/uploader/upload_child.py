"""Child process for the kill test: uploads one large file and dies (os._exit) after N staged blocks."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "modules" / "cloud-share-uploader"))

from uploader import AzureBlobStore, Identity, Uploader, UploaderSettings, UploadQueue

EXIT_CODE = 17


class DyingStore(AzureBlobStore):
    def __init__(self, connection: str, die_after: int) -> None:
        super().__init__(connection)
        self.die_after = die_after
        self.staged = 0

    async def stage_block(self, *args: Any) -> None:
        await super().stage_block(*args)
        self.staged += 1
        if self.staged == self.die_after:
            os._exit(EXIT_CODE)  # no cleanup, no flush: a power cut as far as the upload knows


async def main(
    share: Path, db: Path, settings_json: str, connection: str, rel_path: str, die_after: int
) -> None:
    store = DyingStore(connection, die_after)
    queue = UploadQueue(db)
    queue.open()
    await store.open()
    settings = json.loads(settings_json)
    settings["deviceToCloudUploadProperties"]["cloudStorageConnectionString"] = connection
    uploader = Uploader(
        UploaderSettings.model_validate(settings),
        share_root=share,
        store=store,
        queue=queue,
        identity=Identity("hub", "dev", "mod"),
    )
    uploader.submit(rel_path)
    await uploader.process_due()
    await store.close()
    queue.close()


if __name__ == "__main__":
    share_arg, db_arg, settings_arg, rel_arg, die_arg = sys.argv[1:6]
    # The connection string comes on stdin so it never shows in a process list.
    asyncio.run(main(Path(share_arg), Path(db_arg), settings_arg, sys.stdin.read(), rel_arg, int(die_arg)))
