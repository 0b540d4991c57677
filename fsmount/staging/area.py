"""The staging area: files being written to object volumes, on local disk until they are uploaded, and their journal.

A staged file is a row of the journal (SQLite, WAL: a row outlives a killed daemon) before its
first byte is accepted, and every change of its name, owner, mode, times or extended attributes
is in its row before the change is acknowledged. The row is `open` while programs may still write
the file, `closed` once a close or fsync asked for its upload (write-back may hold it back a
while), `uploaded` when the store has every byte, `unlinked` once removed before its last handle;
it goes when the last handle does. A daemon that starts again finds its unfinished work there:
closed files are uploaded, under their last name with their last metadata; open ones were never
closed, so they are moved to `kept/` and named in the log, never uploaded half-written. The bytes
staged are bounded: growing a file past the bound fails with ENOSPC, as does a full disk, and the
bytes already staged stay as they were.
"""
import contextlib
import errno
import json
import logging
import os
import sqlite3
import time
from dataclasses import dataclass, field

import trio

log = logging.getLogger(__name__)

OPEN, CLOSED, UPLOADED, UNLINKED = "open", "closed", "uploaded", "unlinked"
DEFAULT_MODE = 0o644  # a file's permissions where nothing says otherwise
_SCHEMA = """
CREATE TABLE IF NOT EXISTS staged (
    id INTEGER PRIMARY KEY, store TEXT NOT NULL, key TEXT NOT NULL, state TEXT NOT NULL,
    mtime_ns INTEGER NOT NULL, since REAL NOT NULL);
"""
# Columns later versions added, with what rows written before them hold
_ADDED_COLUMNS = {"mode": f"INTEGER NOT NULL DEFAULT {DEFAULT_MODE}", "uid": "INTEGER", "gid": "INTEGER",
                  "xattrs": "TEXT NOT NULL DEFAULT '{}'", "error": "TEXT"}


@dataclass(frozen=True)
class Pending:
    """A journal row, as `fsmount status` shows it."""
    store: str
    key: str
    state: str
    size: int
    since: float
    path: str
    error: str | None  # why its last upload failed


@dataclass(eq=False)  # a file is itself, whatever it holds: uploads and handles key on it
class StagedFile:
    """One file's bytes on local disk while it is written and until the store has them. `changes` counts
    every change; an upload records the count it carried, so a write during an upload keeps it dirty."""
    area: "StagingArea"
    row: int
    store: str
    key: str
    fd: int
    size: int
    mtime_ns: int
    mode: int  # permission bits
    uid: int | None = None  # None: the volume's
    gid: int | None = None
    xattrs: dict[str, str] = field(default_factory=dict)  # name -> value, base64 (s3fs's form)
    key_in_store: bool = True  # whether the store may hold an object under `key`: a removal or rename deletes it
    state: str = OPEN
    changes: int = 1
    uploaded: int = 0
    handles: int = 0
    discarded: bool = False  # unlinked: never uploaded, gone with its last handle
    sparse: bool = False  # written or truncated past its end, leaving a hole
    stored: object = None  # what the store holds of the file (its volume's ObjectInfo), once it holds it all
    error: str | None = None  # why its last upload failed
    lock: trio.Lock = field(default_factory=trio.Lock, repr=False)  # one upload, fill or rename at a time

    @property
    def path(self) -> str:
        return self.area.data_path(self.row)

    @property
    def dirty(self) -> bool:
        return self.changes != self.uploaded

    def read(self, offset: int, size: int) -> bytes:
        return os.pread(self.fd, size, offset)

    def write(self, offset: int, data: bytes) -> int:
        self._changed()
        self.sparse |= offset > self.size
        growth = self._reserve_up_to(offset + len(data))
        written = 0
        try:
            with memoryview(data) as view:
                while written < len(view):
                    written += os.pwrite(self.fd, view[written:], offset + written)
        finally:
            self._settle(max(self.size, offset + written), growth)
        return written

    def truncate(self, size: int):
        self._changed()
        self.sparse |= size > self.size
        growth = self._reserve_up_to(size)
        try:
            os.ftruncate(self.fd, size)
        except OSError:
            self._settle(self.size, growth)
            raise
        self._settle(size, growth)

    def keep(self, mtime_ns: int | None = None, mode: int | None = None, uid: int | None = None,
             gid: int | None = None, xattrs: dict[str, str] | None = None, changed: bool = True):
        """Sets the time, mode, owner or extended attributes (None: as they are) that the file goes up with,
        in the journal first; CHANGED False: the store has them already."""
        self.changes += changed
        self.mtime_ns = self.mtime_ns if mtime_ns is None else mtime_ns
        self.mode = self.mode if mode is None else mode
        self.uid = self.uid if uid is None else uid
        self.gid = self.gid if gid is None else gid
        self.xattrs = self.xattrs if xattrs is None else xattrs
        self.area.set_state(self, self.state)

    def _changed(self):
        self.changes += 1
        self.mtime_ns = time.time_ns()
        if self.state != OPEN:
            self.area.set_state(self, OPEN)

    def _reserve_up_to(self, size: int) -> int:
        """Reserves the room growing to SIZE bytes takes (ENOSPC when the area has none); returns it."""
        growth = max(0, size - self.size)
        self.area.reserve(growth)
        return growth

    def _settle(self, size: int, reserved: int):
        """The file is SIZE bytes now, RESERVED having been reserved for the change."""
        self.area.used += size - self.size - reserved
        self.size = size


class StagingArea:
    def __init__(self, directory: str, max_size: int):
        self.directory = directory
        self.max_size = max_size
        self._files = os.path.join(directory, "files")
        self._kept = os.path.join(directory, "kept")
        os.makedirs(self._files, exist_ok=True)
        self._db = sqlite3.connect(os.path.join(directory, "journal.sqlite"), isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        columns = {column[1] for column in self._db.execute("PRAGMA table_info(staged)")}
        for name, declaration in _ADDED_COLUMNS.items():
            if name not in columns:
                self._db.execute(f"ALTER TABLE staged ADD COLUMN {name} {declaration}")
        self._remove_orphans()
        self.used = sum(self._size(row) for (row,) in self._db.execute("SELECT id FROM staged"))

    def close(self):
        self._db.close()

    def data_path(self, row: int) -> str:
        return os.path.join(self._files, str(row))

    def _size(self, row: int) -> int:
        return _size_of(self.data_path(row))

    def _remove_orphans(self):
        """Data files whose row went (uploaded, then the daemon stopped before they were removed)."""
        rows = {str(row) for (row,) in self._db.execute("SELECT id FROM staged")}
        for name in os.listdir(self._files):
            if name not in rows:
                os.unlink(os.path.join(self._files, name))

    def reserve(self, size: int):
        if size > self.max_size:
            raise OSError(errno.EFBIG, f"larger than the staging area ({self.max_size} bytes)")
        if self.used + size > self.max_size:
            raise OSError(errno.ENOSPC, f"the staging area is full ({self.max_size} bytes)")
        self.used += size

    def create(self, store: str, key: str, mode: int = DEFAULT_MODE, uid: int | None = None,
               gid: int | None = None) -> StagedFile:
        """A new, empty staged file for KEY of STORE, of permissions MODE and owner UID, GID (None: the
        volume's), in the journal before anything is written to it."""
        now = time.time_ns()
        row = self._db.execute("INSERT INTO staged (store, key, state, mtime_ns, since, mode, uid, gid) "
                               "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (store, key, OPEN, now, time.time(), mode, uid, gid)
                               ).lastrowid
        try:
            fd = os.open(self.data_path(row), os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        except OSError:
            self._db.execute("DELETE FROM staged WHERE id = ?", (row,))
            raise
        return StagedFile(self, row, store, key, fd, 0, now, mode, uid, gid)

    def set_state(self, staged: StagedFile, state: str):
        """STAGED is in STATE now, with the metadata it holds."""
        self._db.execute("UPDATE staged SET state = ?, mtime_ns = ?, mode = ?, uid = ?, gid = ?, xattrs = ? "
                         "WHERE id = ?", (state, staged.mtime_ns, staged.mode, staged.uid, staged.gid,
                                          json.dumps(staged.xattrs), staged.row))
        staged.state = state

    def failed(self, staged: StagedFile, error: str | None):
        """Why STAGED's last upload failed (None: it did not), for `fsmount status` and `fsmount sync`."""
        self._db.execute("UPDATE staged SET error = ? WHERE id = ?", (error, staged.row))
        staged.error = error

    def rename(self, staged: StagedFile, key: str):
        self._db.execute("UPDATE staged SET key = ? WHERE id = ?", (key, staged.row))
        staged.key = key

    def remove(self, staged: StagedFile):
        """The file leaves the journal and the disk: uploaded and unused, or unlinked."""
        self._db.execute("DELETE FROM staged WHERE id = ?", (staged.row,))
        if staged.fd >= 0:
            os.close(staged.fd)
            staged.fd = -1
            with contextlib.suppress(FileNotFoundError):
                os.unlink(staged.path)
            self.used -= staged.size

    def recover(self, store: str, prefix: str) -> list[StagedFile]:
        """The files of STORE under PREFIX that a stopped daemon left: closed ones come back to be uploaded;
        open ones are moved to `kept/`, with a log line saying where; uploaded ones are done with."""
        recovered = []
        for row, key, state, mtime_ns, mode, uid, gid, xattrs in self._db.execute(
                "SELECT id, key, state, mtime_ns, mode, uid, gid, xattrs FROM staged "
                "WHERE store = ? AND substr(key, 1, ?) = ? ORDER BY id", (store, len(prefix), prefix)).fetchall():
            if state == CLOSED:
                try:
                    fd = os.open(self.data_path(row), os.O_RDWR | os.O_CLOEXEC)
                except FileNotFoundError:
                    log.error("%s %s was closed but not uploaded when fsmount stopped, and its staged bytes "
                              "(%s) are gone: it cannot be uploaded", store, key, self.data_path(row))
                else:
                    staged = StagedFile(self, row, store, key, fd, os.fstat(fd).st_size, mtime_ns, mode, uid, gid,
                                        json.loads(xattrs), state=CLOSED)
                    recovered.append(staged)
                    log.info("%s %s was closed but not uploaded when fsmount stopped: uploading it now", store, key)
                    continue
            elif state == OPEN:
                kept = self._keep(row, key)
                log.warning("%s %s was still being written when fsmount stopped; it was never closed, so it is not "
                            "uploaded: its bytes are kept in %s", store, key, kept)
            self.used -= self._size(row)
            self._db.execute("DELETE FROM staged WHERE id = ?", (row,))
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.data_path(row))
        return recovered

    def _keep(self, row: int, key: str) -> str:
        """Moves the bytes of ROW to `kept/`, where they no longer count as staged."""
        os.makedirs(self._kept, exist_ok=True)
        kept = os.path.join(self._kept, f"{row}-{key.replace('/', '%2F')[-200:]}")
        with contextlib.suppress(FileNotFoundError):
            os.link(self.data_path(row), kept)
        return kept



def read_journal(directory: str) -> tuple[list[Pending], list[str]]:
    """The journal's rows and the files kept aside under DIRECTORY, read without changing anything
    (a daemon may be using them): what `fsmount status` shows."""
    journal = os.path.join(directory, "journal.sqlite")
    rows = []
    if os.path.exists(journal):
        db = sqlite3.connect(f"file:{journal}?mode=ro", uri=True)
        try:
            columns = {column[1] for column in db.execute("PRAGMA table_info(staged)")}
            error = "error" if "error" in columns else "NULL"  # a journal no daemon of this version opened yet
            rows = db.execute(f"SELECT id, store, key, state, since, {error} FROM staged WHERE state != ? ORDER BY id",
                              (UNLINKED,)).fetchall()
        finally:
            db.close()
    files = os.path.join(directory, "files")
    pending = []
    for row, store, key, state, since, error in rows:
        path = os.path.join(files, str(row))
        pending.append(Pending(store, key, state, _size_of(path), since, path, error))
    return pending, kept_files(directory)


def kept_files(directory: str) -> list[str]:
    """The files kept aside under the staging DIRECTORY: never closed, so never uploaded."""
    kept = os.path.join(directory, "kept")
    return sorted(os.path.join(kept, name) for name in os.listdir(kept)) if os.path.isdir(kept) else []


def _size_of(path: str) -> int:
    """The size of a staged file, 0 once it is gone."""
    try:
        return os.path.getsize(path)
    except FileNotFoundError:
        return 0
