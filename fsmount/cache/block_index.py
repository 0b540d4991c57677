"""BlockIndex: the block cache's SQLite index of its blocks: each one's size, XXH3 checksum, last use, readiness and place.

One daemon uses an index at a time: it holds the file's locks (`locking_mode=EXCLUSIVE`), so no statement
takes or drops them (WAL's locks took ~14 fcntl calls a block, on the event loop), and a second daemon is
refused. Uses are kept in memory and written in batches: only eviction reads them.
"""
import contextlib
import errno
import os
import sqlite3
import time

_SCHEMA = """
CREATE TABLE blocks (
    name TEXT PRIMARY KEY, size INTEGER NOT NULL, checksum INTEGER NOT NULL, used REAL NOT NULL, ready INTEGER NOT NULL,
    segment INTEGER, position INTEGER);  -- segment NULL: a file of its own
CREATE INDEX blocks_by_use ON blocks (used);
"""
# 1: XXH3 checksums; zlib's CRC-32 before took 6% of the CPU of a cold sequential read. 2: small blocks in
# segments, not in the index.
_INDEX_VERSION = 2
_TOUCHES_KEPT = 4096  # uses of blocks held in memory before they are written to the index

Place = tuple[int, int]  # (segment, position) of a packed block


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

    def enter_unwritten(self, files: list[tuple[str, int]]):
        """Blocks of files of their own (name, size) about to be written: entered first, not ready."""
        with self.transaction():
            self._db.executemany("INSERT OR REPLACE INTO blocks (name, size, checksum, used, ready) VALUES (?, ?, 0, ?, 0)",
                                 [(name, size, time.time()) for name, size in files])

    def written(self, name: str, size: int, checksum: int, place: Place | None):
        """Block NAME is written, in its own file (PLACE None) or packed at PLACE. In a `transaction`."""
        if place is None:
            self._db.execute("UPDATE blocks SET checksum = ?, ready = 1 WHERE name = ?", (checksum, name))
        else:
            self._db.execute("INSERT OR REPLACE INTO blocks (name, size, checksum, used, ready, segment, position) "
                             "VALUES (?, ?, ?, ?, 1, ?, ?)", (name, size, checksum, time.time(), *place))

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
        if len(self._touched) >= _TOUCHES_KEPT:
            self.flush_touches()

    def flush_touches(self):
        if self._touched:
            self._db.executemany("UPDATE blocks SET used = ? WHERE name = ?",
                                 [(used, name) for name, used in self._touched.items()])
            self._touched.clear()
