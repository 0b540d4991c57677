"""The block cache: object data in fixed-size blocks on local disk, shared by every object volume.

A block is named by (store, key, version, index), so blocks of two versions never mix. A large
block's file is written to a temporary name and renamed; a small one (under 1 MiB: a small object's
only one) is packed into a segment with others (fsmount/cache/segments.py). The SQLite index
(fsmount/cache/block_index.py) records each block's size, XXH3 checksum, last use and place. A process checks each block's checksum
the first time it uses it, so a block torn by a crash or damaged on disk is refetched, never served.
Eviction is least recently used, never of a block a reader holds. Ten readers of one missing block
cause one fetch.

Block files are written with O_DIRECT where the file system allows it: filling the page cache
cost ~2 s of CPU per GiB here, half of what a cold read cost in all. Readers of a large block are
answered as soon as their bytes have arrived (fsmount/stores/arrival.py), and from memory while it is
written; the blocks filled last stay there, a bounded amount, for the reads that asked for them
(fsmount/cache/filled.py). Fetched blocks are written by writers of their own, a batch at a time, in
one trip to a worker thread (fsmount/cache/blockio.py) and one index transaction after it (and one
before, for blocks in files of their own). Written on the event loop, one by one, a shuffled epoch
of 128 KiB objects spent a third of the loop's time on creating their files and committing their
rows.
"""
import collections
import contextlib
import ctypes
import errno
import functools
import glob
import hashlib
import logging
import math
import os
import shutil

import trio

from fsmount.cache.background import run_in_background, when_idle
from fsmount.cache import blockio
from fsmount.cache.block_index import BlockIndex, Origin, Row
from fsmount.cache.budget import Budget
from fsmount.cache.counts import CacheCounts
from fsmount.cache.fill import Fill
from fsmount.cache.filled import FilledBlocks
from fsmount.cache.segments import Segments, packed_runs
from fsmount.stores import arrival

log = logging.getLogger(__name__)

_WRITERS = 2  # tasks writing fetched blocks to the cache, each a batch at a time
_BATCH_MOST = 64  # blocks a writer takes at once
_EVICTION_BATCH = 64
_OPEN_FILES = 256  # block files and segments kept open for the reads that follow (2 GiB of 8 MiB blocks)
PACKED_BELOW = 2**20  # blocks smaller than this go into segments, not into files of their own
# glibc keeps the blocks' buffers freed in the middle of its heap: ten streams read at once peaked at
# ~220 MiB with ~40 of blocks alive. Handing its free pages back after each block written took that to
# ~183 (~192 every fourth block), at no cost to a cold read that could be measured. A block fetched
# into a receive buffer (a memoryview: fsmount.stores.ranges) was never glibc's; small ones free too little
# to trim after each, so a batch is trimmed once it freed this much.
_TRIM_FROM = 2**20
_malloc_trim = getattr(ctypes.CDLL(None), "malloc_trim", None)


@functools.lru_cache(maxsize=8192)  # a random read asks for the name of its block every time
def block_name(identity: str, key: str, version: str, index: int) -> str:
    return hashlib.sha256(f"{identity}\0{key}\0{version}\0{index}".encode("utf-8", "surrogateescape")).hexdigest()


class BlockCache:
    def __init__(self, directory: str, max_size: int, block_size: int, memory: int = 0, unwritten: int = 2**26):
        """MEMORY: bytes of the blocks filled last kept in memory. UNWRITTEN: bytes of blocks being fetched or
        written at once, at most: ten streams at once held 13 fetched blocks waiting for the disk."""
        self.block_size = block_size
        self.max_size = max_size
        self._blocks_dir = os.path.join(directory, "blocks")
        os.makedirs(directory, exist_ok=True)
        self._index = BlockIndex(directory)
        if self._index.outdated():
            self._forget_everything(directory)
        os.makedirs(self._blocks_dir, exist_ok=True)
        self._direct = blockio.direct_io_flag(self._blocks_dir)
        self._forget_unfinished()
        self._segments = Segments(os.path.join(self._blocks_dir, "segments"), self._index.blocks_per_segment())
        self.size = self._index.size()
        self._fills: dict[str, Fill] = {}
        self._pins: collections.Counter[str] = collections.Counter()
        # blocks this process has checked -> (segment, position, size) of a packed one, None for a file of its own
        self._verified: dict[str, tuple[int, int, int] | None] = {}
        self._open: collections.OrderedDict[str, int] = collections.OrderedDict()
        self._filled = FilledBlocks(memory)
        self._unwritten = Budget(unwritten)
        self.counts = CacheCounts()
        self._queued: trio.MemorySendChannel | None = None  # to the writers, while they run
        self._queued_background: trio.MemorySendChannel | None = None  # to the writer of background fills
        self._fetchers: trio.Nursery | None = None  # where large blocks are fetched while their readers go on
        self._writers_done = trio.Event()

    def close(self):
        while self._open:
            os.close(self._open.popitem()[1])
        self._index.close()

    def _path(self, name: str) -> str:
        return os.path.join(self._blocks_dir, name[:2], name[2:4], name)

    def block_path(self, name: str, segment: int | None) -> str:
        """The file block NAME is in: its own, or its SEGMENT's."""
        return self._path(name) if segment is None else self._segments.path(segment)

    @property
    def index(self) -> BlockIndex:
        return self._index

    def drop(self, rows: list[Row]) -> tuple[list[Row], list[Row]]:
        """Removes the blocks of ROWS that are as the index has them and in no reader's hands, in one transaction:
        (those removed, those a reader holds or a fill is replacing, each to be checked again at its next use)."""
        removed, held = [], []
        with self._index.transaction():
            for name, size, checksum, segment, position in rows:
                if name in self._pins or name in self._fills:
                    held.append((name, size, checksum, segment, position))
                    self._verified.pop(name, None)
                elif self._index.find(name) == (size, checksum, segment, position):
                    self._remove(name, size, None if segment is None else (segment, position))
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
            if name in self._verified and name not in self._fills:
                self._index.touch(name)  # a block this process has checked: no index lookup
            else:
                in_memory = await self._ensure(name, fetch, page_cache, background, offset, length,
                                               self.block_size if size is None else size, origin)
            if not length:  # a fill ahead of the reads
                return b""
            if in_memory is not None:
                return in_memory
            fresh = self._filled.get(name)
            if fresh is not None:
                return self._from_memory(name, fresh, offset, length)
            place = self._verified[name]
            if place is None:
                return await self._read_file(name, offset, length)
            segment, position, size = place  # the segment goes on with other blocks: none of theirs is read
            return os.pread(self._fd(self._segments.path(segment), writable=True), max(0, min(length, size - offset)),
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
        return name in self._verified

    def filling(self, name: str) -> bool:
        """Whether block NAME is being fetched, or written after its fetch."""
        return name in self._fills

    def contains(self, name: str) -> bool:
        if name in self._verified:
            return True
        return self._index.has(name)

    async def _ensure(self, name: str, fetch, page_cache: bool, background: bool, offset: int, length: int,
                      size: int, origin: Origin | None) -> memoryview | None:
        """Makes sure block NAME (of about SIZE bytes) is in the cache, or on its way with the LENGTH bytes from
        OFFSET in. Those bytes while the block is on its way or being written (its reader need not wait for
        the rest, or for the disk); None once it is written."""
        started = None
        while True:
            filling = self._fills.get(name)
            if filling is None:
                row = self._index.find(name)
                if row is not None and await self._intact(name, *row):
                    self._index.touch(name)
                    return None
                filling = started = self._fills[name] = Fill(reserved=size, origin=origin)
                if not background:
                    self.counts.missed(by_reader=bool(length))
                # A large block arrives over ~20 ms: its reader is answered once its part is in, and the rest
                # comes in a task of its own. A small one comes in one piece.
                if length and size >= PACKED_BELOW and self._fetchers is not None and not background:
                    self._fetchers.start_soon(self._fill, name, filling, fetch, page_cache, background)
                else:
                    await self._fill(name, filling, fetch, page_cache, background)
                    if not (length or background) and filling.data is not None:
                        self.counts.read_ahead_bytes += len(filling.data)
                    if filling.data is not None and (not length or self._queued is None or background):
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
        self._filled.read(name)
        if offset + length >= len(data):
            self._filled.forget(name)
        return memoryview(data)[offset:offset + length]  # a copy would cost a page fault a 4 KiB

    async def _fill(self, name: str, filling: Fill, fetch, page_cache: bool, background: bool):
        """Fetches block NAME into FILLING and has it written; a failure of the fetch is kept in FILLING for
        its reader (the fill leaves the cache, and other readers try again)."""
        try:
            await self._unwritten.acquire(filling.reserved)  # released once the block is written
            reporting = arrival.current.set(filling.arrival)
            try:
                filling.data = await fetch()
            except BaseException:
                self._unwritten.release(filling.reserved)
                raise
            finally:
                arrival.current.reset(reporting)
        except BaseException as error:
            del self._fills[name]
            filling.error = error
            filling.arrival.end()
            filling.fetched.set()
            if not isinstance(error, Exception):
                raise
            return
        filling.arrival.end()
        filling.fetched.set()
        queued = self._queued_background if background else self._queued
        if queued is not None:
            queued.send_nowait((name, filling, page_cache))
        else:
            if background:
                await when_idle()  # readers of the block meanwhile have its bytes from the fill
            await self._write([(name, filling, page_cache)], background)

    async def write_behind(self, task_status=trio.TASK_STATUS_IGNORED):
        """For as long as it runs, fetched blocks are written by writers of their own, in batches, while
        their readers are answered from memory: no reader waits for the disk or the index."""
        send, receive = trio.open_memory_channel(math.inf)  # the budget of unwritten bytes bounds it
        send_background, receive_background = trio.open_memory_channel(math.inf)
        self._writers_done = trio.Event()
        try:
            async with trio.open_nursery() as nursery:
                for _ in range(_WRITERS):
                    nursery.start_soon(self._write_queued, receive, False)
                nursery.start_soon(self._write_queued, receive_background, True)
                self._queued, self._queued_background, self._fetchers = send, send_background, nursery
                task_status.started()
        finally:
            self._queued = self._queued_background = self._fetchers = None
            self._writers_done.set()

    async def write_queued(self):
        """Writes the blocks fetched and not yet written, and ends `write_behind`: a daemon stopping keeps
        what it fetched (a remount read them again from the store otherwise)."""
        if self._queued is not None:
            queued, self._queued = self._queued, None  # a fetch that ends meanwhile writes its block itself
            queued_background, self._queued_background = self._queued_background, None
            await queued.aclose()  # the writers take what is queued, then stop
            await queued_background.aclose()
            await self._writers_done.wait()

    async def _write_queued(self, receive, background: bool):
        """Writes what RECEIVE brings, in batches. BACKGROUND: once the daemon is idle, each batch of what
        came until then (the fills that put uploaded files into the cache, one file each: written one by
        one they took the loop's thread from the uploads of an rsync)."""
        async for first in receive:
            if background:
                await when_idle()
            batch = [first]
            with contextlib.suppress(trio.WouldBlock, trio.EndOfChannel):  # closed by write_queued at unmount
                while len(batch) < _BATCH_MOST:
                    batch.append(receive.receive_nowait())
            try:
                await self._write(batch, background)
            except Exception as error:  # the readers have their bytes; the next ones fetch them again
                log.warning("%d cache blocks could not be written: %s", len(batch), error,
                            exc_info=not isinstance(error, OSError))

    async def _write(self, batch: list[tuple[str, Fill, bool]], background: bool):
        """Puts the fetched blocks of BATCH ((name, fill, page_cache) each) into the cache, however many they
        are, in one trip to a worker thread: the small ones packed into segments, one write for those
        of a segment, entered in the index once written; the large ones in files of their own, entered as
        not ready before. BACKGROUND: by the low-priority thread."""
        try:
            self._make_room(sum(len(filling.data) for _, filling, _ in batch))
            packed = [(name, filling.data) for name, filling, _ in batch if len(filling.data) < PACKED_BELOW]
            files = [(name, filling.data, 0 if page_cache else self._direct)
                     for name, filling, page_cache in batch if len(filling.data) >= PACKED_BELOW]
            places = self._segments.place([len(data) for _, data in packed])
            origins = {name: filling.origin for name, filling, _ in batch}
            self.size += sum(len(filling.data) for _, filling, _ in batch)
            try:
                if files:
                    self._index.enter_unwritten([(name, len(data), origins[name]) for name, data, _ in files])
                runs = [(self._segments.path(segment), position, blocks)
                        for segment, position, blocks in packed_runs([data for _, data in packed], places)]
                write = run_in_background if background else trio.to_thread.run_sync
                written = await write(blockio.write_blocks, runs, [(self._path(name), data, direct)
                                                            for name, data, direct in files])
            except BaseException:
                for (name, data), place in zip(packed, places):
                    self._remove(name, len(data), place)
                for name, data, _ in files:
                    self._remove(name, len(data), None)
                raise
            self._record_written(packed, places, files, written, origins)
        finally:
            self._release(batch, background)

    def _record_written(self, packed: list[tuple[str, bytes]], places: list[tuple[int, int]],
                        files: list[tuple[str, bytes, int]], written: list[int | OSError], origins: dict):
        """Enters what `blockio.write_blocks` wrote (WRITTEN: a checksum, or why not, a block: the packed ones
        first) in one transaction; what it could not write leaves the cache."""
        blocks = [(name, data, place) for (name, data), place in zip(packed, places)]
        blocks += [(name, data, None) for name, data, _ in files]
        failed = []
        with self._index.transaction():
            for (name, data, place), checksum in zip(blocks, written):
                if isinstance(checksum, OSError):
                    failed.append((name, data, place, checksum))
                else:
                    self._index.written(name, len(data), checksum, place, origins[name])
        self._verified.update((name, None if place is None else (*place, len(data)))
                              for (name, data, place), checksum in zip(blocks, written)
                              if not isinstance(checksum, OSError))
        for name, data, place, error in failed:
            log.warning("cache block %s could not be written: %s", name, error)
            self._remove(name, len(data), place)

    def _release(self, batch: list[tuple[str, Fill, bool]], background: bool):
        """The fills of BATCH are over: blocks written stay in memory a while for their readers (unless read
        to the end already), and their bytes leave the budget of unwritten ones."""
        glibc_bytes = 0
        for name, filling, page_cache in batch:
            if name in self._verified and not (background or filling.read_to_end):
                self._filled.keep(name, filling.data, unread=not (filling.read or page_cache))
            del self._fills[name]
            self._unwritten.release(filling.reserved)
            if isinstance(filling.data, bytes):
                glibc_bytes += len(filling.data)
        if _malloc_trim is not None and glibc_bytes >= _TRIM_FROM:
            _malloc_trim(0)

    async def _intact(self, name: str, size: int, checksum: int, segment: int | None, position: int | None) -> bool:
        if name in self._verified:
            return True
        place = None if segment is None else (segment, position)
        if await trio.to_thread.run_sync(blockio.intact, self.block_path(name, segment), position or 0, size, checksum):
            self._verified[name] = None if place is None else (segment, position, size)
            return True
        log.warning("cache block %s is damaged or missing; fetching it again", name)
        self._remove(name, size, place)
        return False

    def blocks(self) -> int:
        return self._index.count()

    @property
    def unwritten_bytes(self) -> int:
        """Of blocks being fetched, or fetched and not yet written: in memory, at most the `unwritten` bound."""
        return self._unwritten.taken

    def unread(self) -> int:
        """How many blocks filled ahead of their readers wait in memory for them."""
        return self._filled.unread()

    def _make_room(self, needed: int):
        while self.size + needed > self.max_size:
            rows = self._index.least_used(_EVICTION_BATCH + len(self._pins))
            victims = [row for row in rows if row[0] not in self._pins]
            if not victims:
                log.warning("cache is over its bound (%d bytes): every block is in use", self.size)
                return
            with self._index.transaction():
                for name, size, segment, position in victims:
                    self._remove(name, size, None if segment is None else (segment, position))
                    self.counts.evictions += 1
                    if self.size + needed <= self.max_size:
                        return

    def _remove(self, name: str, size: int, place: tuple[int, int] | None):
        """Block NAME of SIZE bytes leaves the cache, from its segment PLACE or its own file (None)."""
        self._filled.forget(name)
        if place is None:
            self._close(self._path(name))
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._path(name))
        else:
            segment, position = place
            path = self._segments.path(segment)
            try:
                fd = self._fd(path, writable=True)
            except FileNotFoundError:  # never written, or gone (damage): nothing to give back
                fd = None
            if self._segments.drop(segment, position, size, fd):
                self._close(path)
        self._index.delete(name)
        self._verified.pop(name, None)
        self.size -= size
