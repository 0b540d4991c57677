"""BlockIndex: the block cache's SQLite index of its blocks: each one's size, XXH3 checksum, last use, readiness, place
and origin (the store and key it is a block of, for `fsmount cache du|evict|clear`).

One daemon uses an index at a time: it holds the file's locks (`locking_mode=EXCLUSIVE`), so no statement
takes or drops them (WAL's locks took many fcntl calls a block, on the event loop), and a second daemon is
refused. Uses are kept in memory and written in batches: only eviction reads them.
"""
import contextlib
import dataclasses
import errno
import os
import sqlite3
import time

from fsmount.memory import BLOCK_USES_KEPT

_SCHEMA = """
CREATE TABLE blocks (
    name TEXT PRIMARY KEY, size INTEGER NOT NULL, checksum INTEGER NOT NULL, used REAL NOT NULL, ready INTEGER NOT NULL,
    segment INTEGER, position INTEGER,  -- segment NULL: a file of its own
    store INTEGER, key BLOB);  -- stores.id and the object's key (UTF-8, surrogates escaped); NULL: unknown
CREATE INDEX blocks_by_use ON blocks (used);
CREATE INDEX blocks_by_key ON blocks (store, key);
CREATE TABLE stores (id INTEGER PRIMARY KEY, identity TEXT NOT NULL UNIQUE);
"""
# 1: XXH3 checksums, cheaper than zlib's CRC-32 before on a cold sequential read. 2: small blocks in
# segments, not in the index. 3: each block's store and key.
_INDEX_VERSION = 3
_ROW = "name, size, checksum, segment, position"  # of a Row

Place = tuple[int, int]  # (segment, position) of a packed block
Origin = tuple[str, str]  # (store identity, key) of the object a block is of
Row = tuple[str, int, int, int | None, int | None]  # (name, size, checksum, segment, position) of a written block


@dataclasses.dataclass(frozen=True)
class Selection:
    """Blocks of the store IDENTITY (of every store: None) whose key is KEY, or starts with PREFIX (a key ending
    in "/", or "": every key); KEY or PREFIX None: no key so."""
    identity: str | None
    key: str | None = None
    prefix: str | None = None


class BlockIndex:
    def __init__(self, directory: str):
        """The index in the cache's DIRECTORY; OSError(EBUSY) when another daemon holds it."""
        self._db = sqlite3.connect(os.path.join(directory, "index.sqlite"), isolation_level=None)
        self._db.execute("PRAGMA locking_mode=EXCLUSIVE")
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
        except sqlite3.OperationalError as error:
            self._db.close()
            raise OSError(errno.EBUSY, f"the cache in {directory} is in use by another fsmount ({error})") from None
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._touched: dict[str, float] = {}
        self._stores: dict[str, int] = {}  # identity -> stores.id, of those entered already

    def close(self):
        self.flush_touches()
        self._db.close()

    def outdated(self) -> bool:
        """Whether another version of fsmount made the index (its checksums are of another kind)."""
        return self._db.execute("PRAGMA user_version").fetchone()[0] != _INDEX_VERSION

    def reset(self) -> bool:
        """Starts the index anew, empty; whether it held blocks before."""
        had_blocks = self._db.execute("SELECT 1 FROM sqlite_master WHERE name = 'blocks'").fetchone() is not None
        self._db.execute("DROP TABLE IF EXISTS blocks")
        self._db.execute("DROP TABLE IF EXISTS stores")
        self._db.executescript(_SCHEMA)
        self._db.execute(f"PRAGMA user_version = {_INDEX_VERSION}")
        return had_blocks

    def unfinished(self) -> list[str]:
        """Blocks in files of their own entered before they were written: a killed daemon may have left them torn."""
        return [name for (name,) in self._db.execute("SELECT name FROM blocks WHERE ready = 0").fetchall()]

    def drop_unfinished(self):
        self._db.execute("DELETE FROM blocks WHERE ready = 0")

    def blocks_per_segment(self) -> dict[int, int]:
        return dict(self._db.execute("SELECT segment, count(*) FROM blocks WHERE segment IS NOT NULL GROUP BY segment"))

    def size(self) -> int:
        return self._db.execute("SELECT coalesce(sum(size), 0) FROM blocks").fetchone()[0]

    def count(self) -> int:
        return self._db.execute("SELECT count(*) FROM blocks WHERE ready = 1").fetchone()[0]

    def has(self, name: str) -> bool:
        return self._db.execute("SELECT 1 FROM blocks WHERE name = ? AND ready = 1", (name,)).fetchone() is not None

    def find(self, name: str) -> tuple[int, int, int | None, int | None] | None:
        """(size, checksum, segment, position) of block NAME, written; None when the index has none."""
        return self._db.execute("SELECT size, checksum, segment, position FROM blocks WHERE name = ? AND ready = 1",
                                (name,)).fetchone()

    @contextlib.contextmanager
    def transaction(self):
        self._db.execute("BEGIN")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def enter_unwritten(self, files: list[tuple[str, int, Origin | None]]):
        """Blocks of files of their own (name, size, origin) about to be written: entered first, not ready."""
        with self.transaction():
            self._db.executemany("INSERT OR REPLACE INTO blocks (name, size, checksum, used, ready, store, key) "
                                 "VALUES (?, ?, 0, ?, 0, ?, ?)",
                                 [(name, size, time.time(), *self._origin(origin)) for name, size, origin in files])

    def written(self, name: str, size: int, checksum: int, place: Place | None, origin: Origin | None):
        """Block NAME of ORIGIN is written, in its own file (PLACE None) or packed at PLACE. In a `transaction`."""
        if place is None:
            self._db.execute("UPDATE blocks SET checksum = ?, ready = 1 WHERE name = ?", (checksum, name))
        else:
            self._db.execute("INSERT OR REPLACE INTO blocks (name, size, checksum, used, ready, segment, position, "
                             "store, key) VALUES (?, ?, ?, ?, 1, ?, ?, ?, ?)",
                             (name, size, checksum, time.time(), *place, *self._origin(origin)))

    def _origin(self, origin: Origin | None) -> tuple[int | None, bytes | None]:
        """ORIGIN's columns: its store's id (the store entered if new) and its key."""
        if origin is None:
            return None, None
        identity, key = origin
        store = self._stores.get(identity)
        if store is None:
            self._db.execute("INSERT OR IGNORE INTO stores (identity) VALUES (?)", (identity,))
            store = self._stores[identity] = self._db.execute("SELECT id FROM stores WHERE identity = ?",
                                                              (identity,)).fetchone()[0]
        return store, key.encode("utf-8", "surrogateescape")

    def usage(self, selection: Selection) -> tuple[int, int]:
        """(bytes, blocks) of the written blocks SELECTION names."""
        where, parameters = self._where(selection)
        return self._db.execute(f"SELECT coalesce(sum(size), 0), count(*) FROM blocks WHERE ready = 1 AND ({where})",
                                parameters).fetchone()

    def selected(self, selection: Selection, after: int, count: int) -> list[tuple[int, str, int, int, int | None,
                                                                                   int | None]]:
        """(rowid, *Row) of COUNT written blocks SELECTION names after rowid AFTER, in rowid order: from 0 on, each
        block once (until a fill replaces it)."""
        where, parameters = self._where(selection)
        return self._db.execute(f"SELECT rowid, {_ROW} FROM blocks WHERE ready = 1 AND rowid > ? AND ({where}) "
                                "ORDER BY rowid LIMIT ?", [after, *parameters, count]).fetchall()

    def _where(self, selection: Selection) -> tuple[str, list]:
        if selection.identity is None:
            return "1", []
        found = self._db.execute("SELECT id FROM stores WHERE identity = ?", (selection.identity,)).fetchone()
        clauses, parameters = [], []
        if selection.key is not None:
            clauses.append("key = ?")
            parameters.append(selection.key.encode("utf-8", "surrogateescape"))
        if selection.prefix == "":
            clauses.append("1")
        elif selection.prefix is not None:  # ends with "/": the keys below sort from it to it with "0" for "/"
            prefix = selection.prefix.encode("utf-8", "surrogateescape")
            clauses.append("(key >= ? AND key < ?)")
            parameters += [prefix, prefix[:-1] + bytes([prefix[-1] + 1])]
        return f"store = ? AND ({' OR '.join(clauses) or '0'})", [None if found is None else found[0], *parameters]

    def least_used(self, count: int) -> list[tuple[str, int, int | None, int | None]]:
        """(name, size, segment, position) of the COUNT written blocks used longest ago."""
        self.flush_touches()  # only the order of eviction needs them
        return self._db.execute("SELECT name, size, segment, position FROM blocks WHERE ready = 1 ORDER BY used "
                                "LIMIT ?", (count,)).fetchall()

    def delete(self, name: str):
        self._db.execute("DELETE FROM blocks WHERE name = ?", (name,))

    def touch(self, name: str):
        """Records a use of block NAME; the index learns of uses in batches."""
        self._touched[name] = time.time()
        if len(self._touched) >= BLOCK_USES_KEPT:
            self.flush_touches()

    def flush_touches(self):
        if self._touched:
            self._db.executemany("UPDATE blocks SET used = ? WHERE name = ?",
                                 [(used, name) for name, used in self._touched.items()])
            self._touched.clear()
