"""KnownAttributes: files' times and modes from objects' metadata, kept on disk for stores whose listings show none (S3).

Without them a listing shows when the store last wrote each object and the default mode, and
after a restart `ls -l` and `rsync -a` would see those rather than what was set here. Each key
keeps what its version had when last seen here, so a changed object never shows the old
values; the oldest go past `_KEPT`.
"""
import json
import os
import sqlite3

_SCHEMA = """
CREATE TABLE IF NOT EXISTS attributes (
    store TEXT NOT NULL, key TEXT NOT NULL, version TEXT NOT NULL, metadata TEXT NOT NULL, UNIQUE (store, key));
"""
_KEPT = 1_000_000
_TRIM_EVERY = 1_000  # keys kept between two trims
_BATCH = 500  # keys a query names: SQLite takes so many parameters at most


class KnownAttributes:
    def __init__(self, directory: str):
        os.makedirs(directory, exist_ok=True)
        self._db = sqlite3.connect(os.path.join(directory, "attributes.sqlite"), isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._since_trim = 0

    def close(self):
        self._db.close()

    def keep(self, store: str, key: str, version: str, metadata: dict[str, str]):
        self._db.execute("INSERT OR REPLACE INTO attributes (store, key, version, metadata) VALUES (?, ?, ?, ?)",
                         (store, key, version, json.dumps(metadata)))
        self._since_trim += 1
        if self._since_trim >= _TRIM_EVERY:
            self._since_trim = 0
            self._db.execute("DELETE FROM attributes WHERE rowid <= (SELECT MAX(rowid) FROM attributes) - ?", (_KEPT,))

    def recall(self, store: str, versions: dict[str, str]) -> dict[str, dict[str, str]]:
        """The metadata kept for each key of VERSIONS (key -> version) at that version, where there is some."""
        found = {}
        keys = list(versions)
        for start in range(0, len(keys), _BATCH):
            batch = keys[start:start + _BATCH]
            query = f"SELECT key, version, metadata FROM attributes WHERE store = ? AND key IN ({','.join('?' * len(batch))})"
            found |= {key: json.loads(metadata) for key, version, metadata in self._db.execute(query, (store, *batch))
                      if versions[key] == version}
        return found
