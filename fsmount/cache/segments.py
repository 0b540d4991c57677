"""Segments: the append-only files that the block cache packs its small blocks into, one after another.

A small block (a small object's only one) in a file of its own cost a file, an inode and a directory
entry, created and renamed into place: most of the CPU a worker thread spent writing small blocks
went to the kernel and to the GIL handed back and forth with the event loop at each of those calls.
In a segment, a batch of blocks is one write. A block evicted has its bytes punched out of its
segment (the file keeps its length, the disk gets the space back); a segment no block is left in is
deleted. A daemon starts a segment of its own, so what a killed one was writing is never appended
to.
"""
import collections
import contextlib
import ctypes
import errno
import logging
import os

log = logging.getLogger(__name__)

SEGMENT_SIZE = 64 * 2**20  # a segment takes blocks until it is this long
_FALLOC_FL_KEEP_SIZE, _FALLOC_FL_PUNCH_HOLE = 0x01, 0x02
_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]


class Segments:
    """The segments under DIRECTORY. LIVE: how many blocks of each the index holds; the others are what a
    crash left before any of its blocks was entered, and go."""

    def __init__(self, directory: str, live: dict[int, int]):
        self._directory = directory
        os.makedirs(directory, exist_ok=True)
        self.live = collections.Counter(live)
        found = {int(name) for name in os.listdir(directory) if name.isdigit()}
        for orphan in found - set(live):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path(orphan))
        self._current = max(found | set(live), default=0) + 1
        self._end = 0

    def path(self, segment: int) -> str:
        return os.path.join(self._directory, f"{segment:08d}")

    def place(self, sizes: list[int]) -> list[tuple[int, int]]:
        """Where blocks of SIZES go, in order: (segment, position) each, one after another."""
        places = []
        for size in sizes:
            if self._end and self._end + size > SEGMENT_SIZE:
                self._current += 1
                self._end = 0
            places.append((self._current, self._end))
            self.live[self._current] += 1
            self._end += size
        return places

    def drop(self, segment: int, position: int, size: int, fd: int | None) -> bool:
        """Gives the disk back the bytes of a block that leaves the index (FD: its segment, open for writing;
        None if there is no such file). True when the segment holds no block any more and was deleted: FD must
        be closed."""
        self.live[segment] -= 1
        if self.live[segment] <= 0 and segment != self._current:
            del self.live[segment]
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path(segment))
            return True
        if fd is not None and _libc.fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, position, size):
            error = ctypes.get_errno()
            if error != errno.EOPNOTSUPP:  # a file system that cannot punch holes gives the space back with the segment
                log.warning("space of a cache block could not be given back: %s", os.strerror(error))
        return False


def packed_runs(blocks: list[bytes], places: list[tuple[int, int]]) -> list[tuple[int, int, list[bytes]]]:
    """(segment, position, blocks) of BLOCKS one after another in a segment, at their PLACES."""
    runs = []
    for block, (segment, position) in zip(blocks, places):
        if runs and runs[-1][0] == segment:
            runs[-1][2].append(block)
        else:
            runs.append((segment, position, [block]))
    return runs


def write_packed(path: str, position: int, blocks: list) -> None:
    """Writes BLOCKS one after another from POSITION of the segment at PATH, in one call where the kernel
    takes them all (a worker thread's work)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        total = sum(len(block) for block in blocks)
        written = os.pwritev(fd, blocks, position)
        if written < total:  # a short write (a signal, a full disk): the rest one block at a time, or its error
            rest = memoryview(b"".join(bytes(block) for block in blocks))[written:]
            while rest:
                count = os.pwrite(fd, rest, position + total - len(rest))
                rest = rest[count:]
    finally:
        os.close(fd)
