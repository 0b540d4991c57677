"""Block I/O, the part worker threads do: block files written whole (with O_DIRECT where it is taken, padded to
whole pages) and renamed into place, runs of small blocks written into their segments, ranges read back, and the
XXH3 checksums the index keeps."""
import contextlib
import ctypes
import mmap
import os
import queue

import xxhash

from fsmount.cache.segments import write_packed

_ALIGNMENT = 4096  # of offsets, lengths and memory in O_DIRECT transfers


class _AlignedBuffers:
    """Page-aligned memory, as O_DIRECT needs: DATA's own where it lies so (a receive buffer's, see
    fsmount.stores.ranges), so a block is not copied on a cold read, else buffers kept for reuse
    (fresh memory costs page faults) and few, so memory stays bounded however many threads write."""

    def __init__(self, count: int):
        self._free: queue.LifoQueue[mmap.mmap] = queue.LifoQueue()
        for _ in range(count):
            self._free.put(mmap.mmap(-1, _ALIGNMENT))

    @contextlib.contextmanager
    def padded(self, data: bytes | memoryview):
        """A view of DATA padded to whole pages: of its own memory if that allows, else of a copy (which
        waits while every buffer is in use)."""
        in_place = _padded_in_place(data)
        if in_place is not None:
            with in_place:
                yield in_place
            return
        buffer = self._free.get()
        if len(buffer) < len(data):
            buffer = mmap.mmap(-1, _aligned(len(data)))
        try:
            with memoryview(buffer) as view:
                view[:len(data)] = data
                with view[:_aligned(len(data))] as padded:
                    yield padded
        finally:
            self._free.put(buffer)


_buffers = _AlignedBuffers(1)


def _aligned(size: int) -> int:
    return -(-size // _ALIGNMENT) * _ALIGNMENT


def _padded_in_place(data: bytes | memoryview) -> memoryview | None:
    """A view of DATA's own memory padded to whole pages, if DATA starts on a page and its memory goes on
    to the padding's end; else None."""
    if not isinstance(data, memoryview) or data.readonly or not data.contiguous or not data.nbytes:
        return None
    whole = memoryview(data.obj).cast("B")
    address = ctypes.addressof(ctypes.c_char.from_buffer(data))
    start = address - ctypes.addressof(ctypes.c_char.from_buffer(whole))
    end = start + _aligned(data.nbytes)
    if address % _ALIGNMENT or end > whole.nbytes:
        return None
    return whole[start:end]


def direct_io_flag(directory: str) -> int:
    """O_DIRECT if the file system under DIRECTORY takes it (tmpfs, for one, may not), else 0."""
    probe = os.path.join(directory, f".direct-io-probe.{os.getpid()}")
    try:
        os.close(os.open(probe, os.O_CREAT | os.O_WRONLY | os.O_DIRECT | os.O_CLOEXEC, 0o600))
        return os.O_DIRECT
    except OSError:
        return 0
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(probe)


def read_if_cached(fd: int, position: int, size: int) -> bytearray | None:
    """SIZE bytes from POSITION of FD if the page cache holds them all, else None (or BlockingIOError)."""
    data = bytearray(size)
    read = os.preadv(fd, [data], position, os.RWF_NOWAIT)
    if read < size and read < os.fstat(fd).st_size - position:
        return None
    del data[read:]
    return data


def read_range(path: str, position: int, size: int) -> bytes:
    with open(path, "rb", buffering=0) as stream:
        return os.pread(stream.fileno(), size, position)


def intact(path: str, position: int, size: int, expected: int) -> bool:
    """Whether the SIZE bytes from POSITION of the file at PATH are there and have the checksum EXPECTED."""
    try:
        data = read_range(path, position, size)
    except FileNotFoundError:
        return False
    return len(data) == size and checksum(data) == expected


def write_blocks(runs: list[tuple[str, int, list]], files: list[tuple[str, bytes, int]]) -> list[int | OSError]:
    """Writes each run of packed blocks ((segment's path, position, blocks)) in one call, and each of FILES
    ((path, data, O_DIRECT or 0)) by `write_atomically`: a checksum, or why not, a block, in that order."""
    results = []
    for path, position, blocks in runs:
        try:
            write_packed(path, position, blocks)
            results += [checksum(block) for block in blocks]
        except OSError as error:
            results += [error] * len(blocks)
    for path, data, direct in files:
        try:
            results.append(write_atomically(path, data, direct))
        except OSError as error:
            results.append(error)
    return results


def write_atomically(path: str, data: bytes, direct: int) -> int:
    """Writes DATA to PATH by a rename, with DIRECT (O_DIRECT or 0) among the open flags; returns its checksum."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    temporary = f"{path}.{os.getpid()}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | direct, 0o600)
    try:
        if direct:
            with _buffers.padded(data) as padded:
                _write_all(fd, padded)
            os.ftruncate(fd, len(data))
        else:
            _write_all(fd, data)
    finally:
        os.close(fd)
    os.rename(temporary, path)
    return checksum(data)


def checksum(data) -> int:
    """DATA's XXH3 hash, as the signed 64-bit integer SQLite keeps."""
    return int.from_bytes(xxhash.xxh3_64_digest(data), "big", signed=True)


def _write_all(fd: int, data):
    with memoryview(data) as view:
        written = 0
        while written < len(view):
            written += os.write(fd, view[written:])
