"""BlockWriters: write fetched blocks into the block cache in batches, while their readers are answered from memory.

While `write_behind` runs, fetched blocks are written by writer tasks of their own, a batch at a
time, in one trip to a worker thread (fsmount/cache/blockio.py) and one index transaction after it
(and one before, for blocks in files of their own). Written on the event loop, one by one, small
blocks kept the loop busy creating their files and committing their rows, not answering reads. Fills
in the background (uploaded files put into the cache) are written by a writer of their own, once the
daemon is idle, on the low-priority thread.
"""
import contextlib
import ctypes
import logging
import math

import trio

from fsmount.cache import blockio
from fsmount.cache.background import run_in_background, when_idle
from fsmount.cache.fill import Fill
from fsmount.cache.segments import packed_runs

log = logging.getLogger(__name__)

_WRITERS = 2  # tasks writing fetched blocks to the cache, each a batch at a time
_BATCH_MOST = 64  # blocks a writer takes at once
PACKED_BELOW = 2**20  # blocks smaller than this go into segments, not into files of their own
# glibc keeps the blocks' buffers freed in the middle of its heap, so streams read at once held far more
# memory than their live blocks. Handing its free pages back after each block written lowers the peak, at
# no measurable cost to a cold read. A block fetched
# into a receive buffer (a memoryview: fsmount.stores.ranges) was never glibc's; small ones free too little
# to trim after each, so a batch is trimmed once it freed this much.
_TRIM_FROM = 2**20
_malloc_trim = getattr(ctypes.CDLL(None), "malloc_trim", None)

Batch = list[tuple[str, Fill, bool]]  # (name, fill, page_cache) of each block


class BlockWriters:
    """Writes the fetched blocks of CACHE (a BlockCache) into it: by writer tasks while `write_behind` runs,
    else by the task that fetched each."""

    def __init__(self, cache):
        self._cache = cache
        self._queued: trio.MemorySendChannel | None = None  # to the writers, while they run
        self._queued_background: trio.MemorySendChannel | None = None  # to the writer of background fills
        self.fetchers: trio.Nursery | None = None  # where large blocks are fetched while their readers go on
        self._done = trio.Event()

    @property
    def running(self) -> bool:
        return self._queued is not None

    async def write_behind(self, task_status=trio.TASK_STATUS_IGNORED):
        """For as long as it runs, fetched blocks are written by writers of their own, in batches, while
        their readers are answered from memory: no reader waits for the disk or the index."""
        send, receive = trio.open_memory_channel(math.inf)  # the budget of unwritten bytes bounds it
        send_background, receive_background = trio.open_memory_channel(math.inf)
        self._done = trio.Event()
        try:
            async with trio.open_nursery() as nursery:
                for _ in range(_WRITERS):
                    nursery.start_soon(self._write_queued, receive, False)
                nursery.start_soon(self._write_queued, receive_background, True)
                self._queued, self._queued_background, self.fetchers = send, send_background, nursery
                task_status.started()
        finally:
            self._queued = self._queued_background = self.fetchers = None
            self._done.set()

    async def write_queued(self):
        """Writes the blocks fetched and not yet written, and ends `write_behind`: a daemon stopping keeps
        what it fetched (a remount read them again from the store otherwise)."""
        if self._queued is not None:
            queued, self._queued = self._queued, None  # a fetch that ends meanwhile writes its block itself
            queued_background, self._queued_background = self._queued_background, None
            await queued.aclose()  # the writers take what is queued, then stop
            await queued_background.aclose()
            await self._done.wait()

    async def fetched(self, name: str, filling: Fill, page_cache: bool, background: bool):
        """Block NAME was fetched into FILLING: queued for the writers while they run, else written now.
        BACKGROUND: no reader waits for it."""
        queued = self._queued_background if background else self._queued
        if queued is not None:
            queued.send_nowait((name, filling, page_cache))
        else:
            if background:
                await when_idle()  # readers of the block meanwhile have its bytes from the fill
            await self._write([(name, filling, page_cache)], background)

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

    async def _write(self, batch: Batch, background: bool):
        """Puts the fetched blocks of BATCH into the cache, however many they are, in one trip to a worker
        thread: the small ones packed into segments, one write for those of a segment, entered in the index
        once written; the large ones in files of their own, entered as not ready before. BACKGROUND: by the
        low-priority thread."""
        cache = self._cache
        try:
            cache.make_room(sum(len(filling.data) for _, filling, _ in batch))
            packed = [(name, filling.data) for name, filling, _ in batch if len(filling.data) < PACKED_BELOW]
            files = [(name, filling.data, 0 if page_cache else cache.direct)
                     for name, filling, page_cache in batch if len(filling.data) >= PACKED_BELOW]
            places = cache.segments.place([len(data) for _, data in packed])
            origins = {name: filling.origin for name, filling, _ in batch}
            cache.size += sum(len(filling.data) for _, filling, _ in batch)
            try:
                if files:
                    cache.index.enter_unwritten([(name, len(data), origins[name]) for name, data, _ in files])
                runs = [(cache.segments.path(segment), position, blocks)
                        for segment, position, blocks in packed_runs([data for _, data in packed], places)]
                write = run_in_background if background else trio.to_thread.run_sync
                written = await write(blockio.write_blocks, runs, [(cache.block_path(name, None), data, direct)
                                                                   for name, data, direct in files])
            except BaseException:
                for (name, data), place in zip(packed, places):
                    cache.remove(name, len(data), place)
                for name, data, _ in files:
                    cache.remove(name, len(data), None)
                raise
            self._record_written(packed, places, files, written, origins)
        finally:
            self._release(batch, background)

    def _record_written(self, packed: list[tuple[str, bytes]], places: list[tuple[int, int]],
                        files: list[tuple[str, bytes, int]], written: list[int | OSError], origins: dict):
        """Enters what `blockio.write_blocks` wrote (WRITTEN: a checksum, or why not, a block: the packed ones
        first) in one transaction; what it could not write leaves the cache."""
        cache = self._cache
        blocks = [(name, data, place) for (name, data), place in zip(packed, places)]
        blocks += [(name, data, None) for name, data, _ in files]
        failed = []
        with cache.index.transaction():
            for (name, data, place), checksum in zip(blocks, written):
                if isinstance(checksum, OSError):
                    failed.append((name, data, place, checksum))
                else:
                    cache.index.written(name, len(data), checksum, place, origins[name])
        cache.verified.update((name, None if place is None else (*place, len(data)))
                              for (name, data, place), checksum in zip(blocks, written)
                              if not isinstance(checksum, OSError))
        for name, data, place, error in failed:
            log.warning("cache block %s could not be written: %s", name, error)
            cache.remove(name, len(data), place)

    def _release(self, batch: Batch, background: bool):
        """The fills of BATCH are over: blocks written stay in memory a while for their readers (unless read
        to the end already), and their bytes leave the budget of unwritten ones."""
        cache = self._cache
        glibc_bytes = 0
        for name, filling, page_cache in batch:
            if name in cache.verified and not (background or filling.read_to_end):
                cache.filled.keep(name, filling.data, unread=not (filling.read or page_cache))
            del cache.fills[name]
            cache.unwritten.release(filling.reserved)
            if isinstance(filling.data, bytes):
                glibc_bytes += len(filling.data)
        if _malloc_trim is not None and glibc_bytes >= _TRIM_FROM:
            _malloc_trim(0)
