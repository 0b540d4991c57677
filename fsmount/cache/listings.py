"""KnownListings: whole listings of object store prefixes, on disk beside the block cache, for the mounts that follow.

A listing is kept as the store gave it (names, sizes, versions, times, metadata), with when it was
made; the volume decides whether it is fresh. At most `_ENTRIES_KEPT` entries are kept in all, the
listings made longest ago going first. `fsmount status` reads the counts while a daemon runs.
"""
import json
import os
import sqlite3
import time

from fsmount.stores.base import ObjectInfo

_SCHEMA = """
CREATE TABLE IF NOT EXISTS listings (
    store TEXT NOT NULL, prefix TEXT NOT NULL, listed REAL NOT NULL, count INTEGER NOT NULL, entries TEXT NOT NULL,
    PRIMARY KEY (store, prefix));
"""
_ENTRIES_KEPT = 2_000_000
FILE_NAME = "listings.sqlite"

Entries = list[tuple[str, ObjectInfo | None]]  # (name, info) sorted by name; None: a directory


class KnownListings:
    def __init__(self, directory: str):
        os.makedirs(directory, exist_ok=True)
        self._db = sqlite3.connect(os.path.join(directory, FILE_NAME), isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def close(self):
        self._db.close()

    def keep(self, store: str, prefix: str, entries: Entries):
        rows = [[name] if info is None else [name, info.size, info.version, info.mtime_ns, info.metadata,
                                             info.link_target] for name, info in entries]
        self._db.execute("INSERT OR REPLACE INTO listings (store, prefix, listed, count, entries) "
                         "VALUES (?, ?, ?, ?, ?)", (store, prefix, time.time(), len(rows),
                                                    json.dumps(rows, separators=(",", ":"))))
        kept = self._db.execute("SELECT coalesce(sum(count), 0) FROM listings").fetchone()[0]
        while kept > _ENTRIES_KEPT:
            oldest, count = self._db.execute("SELECT rowid, count FROM listings ORDER BY listed LIMIT 1").fetchone()
            self._db.execute("DELETE FROM listings WHERE rowid = ?", (oldest,))
            kept -= count

    def recall(self, store: str, prefix: str) -> tuple[float, Entries] | None:
        """(seconds since it was made, its entries) of PREFIX's listing, if one is kept."""
        row = self._db.execute("SELECT listed, entries FROM listings WHERE store = ? AND prefix = ?",
                               (store, prefix)).fetchone()
        if row is None:
            return None
        listed, rows = row
        entries = [(entry[0], None) if len(entry) == 1 else
                   (entry[0], ObjectInfo(prefix + entry[0], entry[1], entry[2], entry[3], entry[4], entry[5]))
                   for entry in json.loads(rows)]
        return max(0.0, time.time() - listed), entries

    def forget(self, store: str, prefix: str, below: bool = False):
        """Drops PREFIX's listing, and with BELOW those of every prefix under it."""
        if below:
            self._db.execute("DELETE FROM listings WHERE store = ? AND substr(prefix, 1, ?) = ?",
                             (store, len(prefix), prefix))
        else:
            self._db.execute("DELETE FROM listings WHERE store = ? AND prefix = ?", (store, prefix))


def counts(directory: str) -> tuple[int, int]:
    """(listings, entries) kept under DIRECTORY, read without disturbing a daemon that uses them."""
    path = os.path.join(directory, FILE_NAME)
    if not os.path.exists(path):
        return 0, 0
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return tuple(db.execute("SELECT count(*), coalesce(sum(count), 0) FROM listings").fetchone())
    except sqlite3.OperationalError:  # made by nothing yet
        return 0, 0
    finally:
        db.close()
