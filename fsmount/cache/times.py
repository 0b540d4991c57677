"""KnownTimes: the times objects' `mtime` metadata gave, kept on disk, for stores whose listings show no metadata (S3).

Without them a listing shows when the store last wrote each object, and after a restart `ls -l`
and `rsync -a` would see that rather than the time set here. Each key keeps the time of the version
it had last here, so a changed object never shows the old time; the oldest go past `_KEPT`.
"""
import os
import sqlite3

_SCHEMA = """
CREATE TABLE IF NOT EXISTS times (
    store TEXT NOT NULL, key TEXT NOT NULL, version TEXT NOT NULL, mtime_ns INTEGER NOT NULL,
    UNIQUE (store, key));
"""
_KEPT = 1_000_000
_TRIM_EVERY = 1_000  # times kept between two trims


class KnownTimes:
    def __init__(self, directory: str):
        os.makedirs(directory, exist_ok=True)
        self._db = sqlite3.connect(os.path.join(directory, "times.sqlite"), isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._since_trim = 0

    def close(self):
        self._db.close()

    def keep(self, store: str, key: str, version: str, mtime_ns: int):
        self._db.execute("INSERT OR REPLACE INTO times (store, key, version, mtime_ns) VALUES (?, ?, ?, ?)",
                         (store, key, version, mtime_ns))
        self._since_trim += 1
        if self._since_trim >= _TRIM_EVERY:
            self._since_trim = 0
            self._db.execute("DELETE FROM times WHERE rowid <= (SELECT MAX(rowid) FROM times) - ?", (_KEPT,))

    def recall(self, store: str, versions: dict[str, str]) -> dict[str, int]:
        """The time kept for each key of VERSIONS (key -> version) at that version, where one is."""
        found = {}
        keys = list(versions)
        for start in range(0, len(keys), 500):  # SQLite takes so many parameters at most
            batch = keys[start:start + 500]
            found |= {key: mtime_ns for key, version, mtime_ns in self._db.execute(
                f"SELECT key, version, mtime_ns FROM times WHERE store = ? AND key IN ({','.join('?' * len(batch))})",
                (store, *batch)) if versions[key] == version}
        return found
