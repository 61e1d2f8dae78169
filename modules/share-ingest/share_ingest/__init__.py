"""share-ingest core: find complete files on the local share and decide what to announce.

The module wiring (edgekit transport, twin settings, metrics) lives in __main__.py; this package is the
logic it drives: ShareIngestor (the loop), IngestConfig, FileReady/Refusal records, the Catalog protocol
with its SQLite implementation, and the rules and filesystem access underneath.

Decisions (each also where it is implemented):
- Watching: `mode: auto` polls on network filesystems (nfs, cifs/smb, fuse.*, ... from /proc/self/mountinfo)
  and uses inotify elsewhere; inotify without IN_MODIFY; a new folder is watched, then walked; an overflow
  or a lost share root means a full rescan; in inotify mode a safety rescan every `rescan_interval_seconds`.
  Auto mode falls back to polling when watches run out; explicit `inotify` raises WatchLimitReached.
- Completion: `stable` needs the same (size, mtime, inode) observed `stable_seconds` apart (our clock, not the
  share's mtime: server clocks drift); `marker` needs `<name>.ready` no older than the data file; `rename`
  treats any non-temporary name as final. Under every rule a file that changes while hashed is not complete.
- Never announced: markers, temporary names (`*.tmp`, `*.partial`, `*.part`, `*.filepart`, `~$*`), hidden
  names (files and folders, e.g. `.name.tmp`, `.snapshot`), include/exclude misses. These are silent.
- Refused with a reason (listed in `ShareIngestor.refused`, passed once to `on_refused`): symlinks (never
  followed; the reason says whether it leads out of the share), FIFOs/sockets/devices, unsafe names (see
  rules.py), over-long paths, unreadable files or folders (retried every `retry_seconds`).
- Datasets: first matching `datasets` glob, else the top folder's name as is, else `default_dataset`
  ("default") for files at the share root.
- Formats: csv, jsonl (.jsonl/.ndjson), parquet (.parquet/.pq), optional `.gz` -> compression "gzip";
  anything else is announced as "unknown" for the transformer to quarantine with a reason.
- Identity: the catalog keys (path, sha256). New content at a path is announced; content a path already
  announced is not announced again; the same content under another path is announced (same file id).
  An announced file whose size and mtime are unchanged is recognised without re-reading it.
"""

from .catalog import Catalog, CatalogEntry, SqliteCatalog
from .config import IngestConfig
from .ingestor import IngestStats, ShareIngestor
from .records import FileReady, Refusal
from .watcher import ChangeSource, Hint, InotifyWatcher

__all__ = [
    "Catalog",
    "CatalogEntry",
    "ChangeSource",
    "FileReady",
    "Hint",
    "IngestConfig",
    "IngestStats",
    "InotifyWatcher",
    "Refusal",
    "ShareIngestor",
    "SqliteCatalog",
]
