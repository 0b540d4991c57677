"""KnownListings: whole listings of object store prefixes, on disk beside the block cache, for the mounts that follow.

A listing is kept as the store gave it (names, sizes, versions, times, metadata), with when it was
made, an entry a row: a large listing kept as one JSON text had to be built whole in the daemon's
memory to be written. The volume decides whether a listing is fresh. At most `_ENTRIES_KEPT` entries
are kept in all, the listings made longest ago going first. `fsmount status` reads the counts while
a daemon runs.
"""
import json
import os
import sqlite3
import time

from fsmount.stores.base import NO_METADATA, ObjectInfo

_SCHEMA = """
CREATE TABLE listings (
    id INTEGER PRIMARY KEY, store TEXT NOT NULL, prefix TEXT NOT NULL, listed REAL NOT NULL, count INTEGER NOT NULL,
    UNIQUE (store, prefix));
CREATE TABLE entries (
    listing INTEGER NOT NULL, name TEXT NOT NULL, size INTEGER, version TEXT, mtime_ns INTEGER, metadata TEXT,
    link_target TEXT);  -- size NULL: a directory
CREATE INDEX entries_by_listing ON entries (listing);
"""
_VERSION = 2  # 1: a listing's entries as one JSON text
_ENTRIES_KEPT = 2_000_000
FILE_NAME = "listings.sqlite"

Entries = list[tuple[str, ObjectInfo | None]]  # (name, info) sorted by name; None: a directory


class KnownListings:
    def __init__(self, directory: str):
        os.makedirs(directory, exist_ok=True)
        self._db = sqlite3.connect(os.path.join(directory, FILE_NAME), isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        if self._db.execute("PRAGMA user_version").fetchone()[0] != _VERSION:
            self._db.executescript(f"DROP TABLE IF EXISTS listings; DROP TABLE IF EXISTS entries; {_SCHEMA}"
                                   f"PRAGMA user_version = {_VERSION};")

    def close(self):
        self._db.close()

    def keep(self, store: str, prefix: str, entries: Entries):
        self._db.execute("BEGIN")
        try:
            self._forget([(store, prefix)])
            listing = self._db.execute("INSERT INTO listings (store, prefix, listed, count) VALUES (?, ?, ?, ?)",
                                       (store, prefix, time.time(), len(entries))).lastrowid
            self._db.executemany(
                "INSERT INTO entries VALUES (?, ?, ?, ?, ?, ?, ?)",
                ((listing, name, None, None, None, None, None) if info is None else
                 (listing, name, info.size, info.version, info.mtime_ns,
                  json.dumps(dict(info.metadata)) if info.metadata else None, info.link_target)
                 for name, info in entries))
            kept = self._db.execute("SELECT coalesce(sum(count), 0) FROM listings").fetchone()[0]
            while kept > _ENTRIES_KEPT:
                oldest, count = self._db.execute("SELECT id, count FROM listings ORDER BY listed LIMIT 1").fetchone()
                self._drop([oldest])
                kept -= count
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def recall(self, store: str, prefix: str) -> tuple[float, Entries] | None:
        """(seconds since it was made, its entries) of PREFIX's listing, if one is kept."""
        row = self._db.execute("SELECT id, listed FROM listings WHERE store = ? AND prefix = ?",
                               (store, prefix)).fetchone()
        if row is None:
            return None
        listing, listed = row
        entries = [(name, None) if size is None else
                   (name, ObjectInfo(prefix + name, size, version, mtime_ns,
                                     json.loads(metadata) if metadata else NO_METADATA, link_target))
                   for name, size, version, mtime_ns, metadata, link_target in self._db.execute(
                       "SELECT name, size, version, mtime_ns, metadata, link_target FROM entries WHERE listing = ? "
                       "ORDER BY rowid", (listing,))]
        return max(0.0, time.time() - listed), entries

    def forget(self, store: str, prefix: str, below: bool = False):
        """Drops PREFIX's listing, and with BELOW those of every prefix under it."""
        if below:
            found = self._db.execute("SELECT store, prefix FROM listings WHERE store = ? AND substr(prefix, 1, ?) = ?",
                                     (store, len(prefix), prefix)).fetchall()
        else:
            found = [(store, prefix)]
        self._forget(found)

    def _forget(self, listings: list[tuple[str, str]]):
        ids = [row[0] for store, prefix in listings for row in self._db.execute(
            "SELECT id FROM listings WHERE store = ? AND prefix = ?", (store, prefix))]
        self._drop(ids)

    def _drop(self, ids: list[int]):
        self._db.executemany("DELETE FROM entries WHERE listing = ?", [(listing,) for listing in ids])
        self._db.executemany("DELETE FROM listings WHERE id = ?", [(listing,) for listing in ids])


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
