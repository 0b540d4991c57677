"""The block cache: object data in fixed-size blocks on local disk, shared by every object volume.

A block is named by (store, key, version, index), so blocks of two versions never mix. A large
block's file is written to a temporary name and renamed; a small one (under 1 MiB: a small object's
only one) is packed into a segment with others (fsmount/cache/segments.py). The SQLite index
(fsmount/cache/block_index.py) records each block's size, XXH3 checksum, last use and place. A process checks each block's checksum
the first time it uses it, so a block torn by a crash or damaged on disk is refetched, never served.
Eviction is least recently used, never of a block a reader holds. Ten readers of one missing block
cause one fetch.

Block files are written with O_DIRECT where the file system allows it: filling the page cache
cost as much CPU as the rest of a cold read. Readers of a large block are
answered as soon as their bytes have arrived (fsmount/stores/arrival.py), and from memory while it is
written (by the writers of fsmount/cache/writers.py); the blocks filled last stay there, a bounded
amount, for the reads that asked for them (fsmount/cache/filled.py).
"""
import collections
import contextlib
import errno
import functools
import glob
import hashlib
import logging
import os
import shutil

import trio

from fsmount.cache import blockio
from fsmount.cache.block_index import BlockIndex, Origin, Row
from fsmount.cache.budget import Budget
from fsmount.cache.counts import CacheCounts
from fsmount.cache.fill import Fill
from fsmount.cache.filled import FilledBlocks
from fsmount.cache.segments import Segments
from fsmount.cache.writers import PACKED_BELOW, BlockWriters
from fsmount.memory import BLOCK_NAMES_KEPT, MemoryBudgets
from fsmount.stores import arrival

log = logging.getLogger(__name__)

_EVICTION_BATCH = 64
_OPEN_FILES = 256  # block files and segments kept open for the reads that follow (2 GiB of 8 MiB blocks)


@functools.lru_cache(maxsize=BLOCK_NAMES_KEPT)
def block_name(identity: str, key: str, version: str, index: int) -> str:
    return hashlib.sha256(f"{identity}\0{key}\0{version}\0{index}".encode("utf-8", "surrogateescape")).hexdigest()


class BlockCache:
    def __init__(self, directory: str, max_size: int, block_size: int, memory: int = 0, unwritten: int | None = None):
        """MEMORY: bytes of the blocks filled last kept in memory. UNWRITTEN: bytes of blocks being fetched or
        written at once, at most; the daemon's budget for BLOCK_SIZE if None (fsmount/memory.py)."""
        self.block_size = block_size
        self.max_size = max_size
        self._blocks_dir = os.path.join(directory, "blocks")
        os.makedirs(directory, exist_ok=True)
        self._index = BlockIndex(directory)
        if self._index.outdated():
            self._forget_everything(directory)
        os.makedirs(self._blocks_dir, exist_ok=True)
        self.direct = blockio.direct_io_flag(self._blocks_dir)
        self._forget_unfinished()
        self.segments = Segments(os.path.join(self._blocks_dir, "segments"), self._index.blocks_per_segment())
        self.size = self._index.size()
        self.fills: dict[str, Fill] = {}
        self._pins: collections.Counter[str] = collections.Counter()
        # blocks this process has checked -> (segment, position, size) of a packed one, None for a file of its own
        self.verified: dict[str, tuple[int, int, int] | None] = {}
        self._open: collections.OrderedDict[str, int] = collections.OrderedDict()
        self.filled = FilledBlocks(memory)
        self.unwritten = Budget(MemoryBudgets.for_blocks_of(block_size).unwritten if unwritten is None else unwritten)
        self.counts = CacheCounts()
        self._writers = BlockWriters(self)

    def close(self):
        while self._open:
            os.close(self._open.popitem()[1])
        self._index.close()

    def _path(self, name: str) -> str:
        return os.path.join(self._blocks_dir, name[:2], name[2:4], name)

    def block_path(self, name: str, segment: int | None) -> str:
        """The file block NAME is in: its own, or its SEGMENT's."""
        return self._path(name) if segment is None else self.segments.path(segment)

    @property
    def index(self) -> BlockIndex:
        return self._index

    def drop(self, rows: list[Row]) -> tuple[list[Row], list[Row]]:
        """Removes the blocks of ROWS that are as the index has them and in no reader's hands, in one transaction:
        (those removed, those a reader holds or a fill is replacing, each to be checked again at its next use)."""
        removed, held = [], []
        with self._index.transaction():
            for name, size, checksum, segment, position in rows:
                if name in self._pins or name in self.fills:
                    held.append((name, size, checksum, segment, position))
                    self.verified.pop(name, None)
                elif self._index.find(name) == (size, checksum, segment, position):
                    self.remove(name, size, None if segment is None else (segment, position))
                    removed.append((name, size, checksum, segment, position))
        return removed, held

    def _forget_everything(self, directory: str):
        """Drops the blocks of an index another version of fsmount made: their checksums are of another kind."""
        if self._index.reset():
            log.info("the cache in %s was made by another version of fsmount; its blocks are dropped", directory)
        shutil.rmtree(self._blocks_dir, ignore_errors=True)

    def _forget_unfinished(self):
        """Fills of files a killed daemon left halfway: they may be torn, so they go. (A packed block is entered
        once its segment holds it.)"""
        for name in self._index.unfinished():
            for path in [self._path(name), *glob.glob(glob.escape(self._path(name)) + ".*.tmp")]:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
        self._index.drop_unfinished()

    async def read(self, name: str, offset: int, length: int, fetch, page_cache: bool = False, background: bool = False,
                   size: int | None = None, origin: Origin | None = None) -> bytes | memoryview:
        """LENGTH bytes from OFFSET of block NAME (a view of them while the block is in memory, as soon as
        they have arrived when it is on its way); on a miss
        `await fetch()` gets the block's bytes, SIZE of them (a whole block if None) or fewer.
        PAGE_CACHE: the block is for reads at random, so it is written through the kernel's page cache
        and those reads find it in memory; a stream's blocks skip it (O_DIRECT costs less CPU).
        BACKGROUND: no reader waits for the block; it is written at low priority once the daemon is idle, and
        not kept in memory afterwards. ORIGIN: the store and key the block is of, once it is written."""
        self._pins[name] += 1
        if length:
            self.counts.reads += 1
        try:
            in_memory = None
            if name in self.verified and name not in self.fills:
                self._index.touch(name)  # a block this process has checked: no index lookup
            else:
                in_memory = await self._ensure(name, fetch, page_cache, background, offset, length,
                                               self.block_size if size is None else size, origin)
            if not length:  # a fill ahead of the reads
                return b""
            if in_memory is not None:
                return in_memory
            fresh = self.filled.get(name)
            if fresh is not None:
                return self._from_memory(name, fresh, offset, length)
            place = self.verified[name]
            if place is None:
                return await self._read_file(name, offset, length)
            segment, position, size = place  # the segment goes on with other blocks: none of theirs is read
            return os.pread(self._fd(self.segments.path(segment), writable=True), max(0, min(length, size - offset)),
                            position + offset)
        finally:
            self._pins[name] -= 1
            if not self._pins[name]:
                del self._pins[name]

    async def _read_file(self, name: str, offset: int, length: int) -> bytes | bytearray:
        """LENGTH bytes from OFFSET of block NAME's own file: on the event loop when the page cache has them,
        else by a worker thread. Blocks were written with O_DIRECT, so one that left memory before its
        reader came is read from the disk: eight streams at once waited on each other's disk reads so."""
        path = self._path(name)
        try:
            data = blockio.read_if_cached(self._fd(path), offset, length)
        except BlockingIOError:
            data = None
        if data is None:
            data = await trio.to_thread.run_sync(blockio.read_range, path, offset, length)
        return data

    def _fd(self, path: str, writable: bool = False) -> int:
        """An open descriptor of the block file or segment at PATH; WRITABLE for segments, whose holes are punched."""
        fd = self._open.get(path)
        if fd is None:
            fd = self._open[path] = os.open(path, (os.O_RDWR if writable else os.O_RDONLY) | os.O_CLOEXEC)
            if len(self._open) > _OPEN_FILES:
                os.close(self._open.popitem(last=False)[1])
        else:
            self._open.move_to_end(path)
        return fd

    def _close(self, path: str):
        fd = self._open.pop(path, None)
        if fd is not None:
            os.close(fd)

    def checked(self, name: str) -> bool:
        """Whether this process has block NAME and has checked it: known without asking the index."""
        return name in self.verified

    def filling(self, name: str) -> bool:
        """Whether block NAME is being fetched, or written after its fetch."""
        return name in self.fills

    def contains(self, name: str) -> bool:
        if name in self.verified:
            return True
        return self._index.has(name)

    async def _ensure(self, name: str, fetch, page_cache: bool, background: bool, offset: int, length: int,
                      size: int, origin: Origin | None) -> memoryview | None:
        """Makes sure block NAME (of about SIZE bytes) is in the cache, or on its way with the LENGTH bytes from
        OFFSET in. Those bytes while the block is on its way or being written (its reader need not wait for
        the rest, or for the disk); None once it is written."""
        started = None
        while True:
            filling = self.fills.get(name)
            if filling is None:
                row = self._index.find(name)
                if row is not None and await self._intact(name, *row):
                    self._index.touch(name)
                    return None
                filling = started = self.fills[name] = Fill(reserved=size, origin=origin)
                if not background:
                    self.counts.missed(by_reader=bool(length))
                # A large block arrives in parts (fsmount/stores/arrival.py): its reader is answered once its part
                # is in, and the rest comes in a task of its own. A small one comes in one piece.
                if length and size >= PACKED_BELOW and self._writers.fetchers is not None and not background:
                    self._writers.fetchers.start_soon(self._fill, name, filling, fetch, page_cache, background)
                else:
                    await self._fill(name, filling, fetch, page_cache, background)
                    if not (length or background) and filling.data is not None:
                        self.counts.read_ahead_bytes += len(filling.data)
                    if filling.data is not None and (not length or not self._writers.running or background):
                        return None  # written already, or not wanted now
            if length and not filling.fetched.is_set():
                arrived = await filling.arrival.first(offset + length)
                if arrived is not None and filling.data is None:
                    filling.read = True
                    return arrived[offset:]
            await filling.fetched.wait()
            if filling.data is not None:
                if not length:
                    return None
                filling.read = True
                filling.read_to_end |= offset + length >= len(filling.data)
                return self._from_memory(name, filling.data, offset, length)
            if filling is started:
                if isinstance(filling.error, Exception):
                    raise filling.error
                raise OSError(errno.EIO, "the fetch was cancelled: the daemon is stopping")
            # its fetch failed: this reader tries

    def _from_memory(self, name: str, data: bytes, offset: int, length: int) -> memoryview:
        """LENGTH bytes from OFFSET of block NAME, whose bytes DATA are in memory. A block read to its end is
        most likely done with: it leaves memory."""
        self.filled.read(name)
        if offset + length >= len(data):
            self.filled.forget(name)
        return memoryview(data)[offset:offset + length]  # a copy would cost a page fault a 4 KiB

    async def _fill(self, name: str, filling: Fill, fetch, page_cache: bool, background: bool):
        """Fetches block NAME into FILLING and has it written; a failure of the fetch is kept in FILLING for
        its reader (the fill leaves the cache, and other readers try again)."""
        try:
            await self.unwritten.acquire(filling.reserved)  # released once the block is written
            reporting = arrival.current.set(filling.arrival)
            try:
                filling.data = await fetch()
            except BaseException:
                self.unwritten.release(filling.reserved)
                raise
            finally:
                arrival.current.reset(reporting)
        except BaseException as error:
            del self.fills[name]
            filling.error = error
            filling.arrival.end()
            filling.fetched.set()
            if not isinstance(error, Exception):
                raise
            return
        filling.arrival.end()
        filling.fetched.set()
        await self._writers.fetched(name, filling, page_cache, background)

    async def write_behind(self, task_status=trio.TASK_STATUS_IGNORED):
        """Has fetched blocks written by writers of their own for as long as it runs (fsmount/cache/writers.py)."""
        await self._writers.write_behind(task_status=task_status)

    async def write_queued(self):
        """Writes the blocks fetched and not yet written, and ends `write_behind`."""
        await self._writers.write_queued()

    async def _intact(self, name: str, size: int, checksum: int, segment: int | None, position: int | None) -> bool:
        if name in self.verified:
            return True
        place = None if segment is None else (segment, position)
        if await trio.to_thread.run_sync(blockio.intact, self.block_path(name, segment), position or 0, size, checksum):
            self.verified[name] = None if place is None else (segment, position, size)
            return True
        log.warning("cache block %s is damaged or missing; fetching it again", name)
        self.remove(name, size, place)
        return False

    def blocks(self) -> int:
        return self._index.count()

    @property
    def unwritten_bytes(self) -> int:
        """Of blocks being fetched, or fetched and not yet written: in memory, at most the `unwritten` bound."""
        return self.unwritten.taken

    def unread(self) -> int:
        """How many blocks filled ahead of their readers wait in memory for them."""
        return self.filled.unread()

    def make_room(self, needed: int):
        while self.size + needed > self.max_size:
            rows = self._index.least_used(_EVICTION_BATCH + len(self._pins))
            victims = [row for row in rows if row[0] not in self._pins]
            if not victims:
                log.warning("cache is over its bound (%d bytes): every block is in use", self.size)
                return
            with self._index.transaction():
                for name, size, segment, position in victims:
                    self.remove(name, size, None if segment is None else (segment, position))
                    self.counts.evictions += 1
                    if self.size + needed <= self.max_size:
                        return

    def remove(self, name: str, size: int, place: tuple[int, int] | None):
        """Block NAME of SIZE bytes leaves the cache, from its segment PLACE or its own file (None)."""
        self.filled.forget(name)
        if place is None:
            self._close(self._path(name))
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._path(name))
        else:
            segment, position = place
            path = self.segments.path(segment)
            try:
                fd = self._fd(path, writable=True)
            except FileNotFoundError:  # never written, or gone (damage): nothing to give back
                fd = None
            if self.segments.drop(segment, position, size, fd):
                self._close(path)
        self._index.delete(name)
        self.verified.pop(name, None)
        self.size -= size
