"""PartUpload: the one sender of an upload's parts, for bytes that may still be growing: each part goes once they have grown past it.

Its store is a TrioStore (fsmount.stores.aio, which imports this module to upload a file in parts), so every
part is counted for its volume. A whole file (`TrioStore.put_file`), a file still being written
(fsmount.volumes.streaming) and a tarball being made (fsmount.publish) are each sent by one.
"""
import contextlib
from typing import Callable

import trio

from fsmount.stores.base import ObjectInfo, raise_store_error_of


class PartUpload:
    """The upload of KEY to STORE in parts of PART_SIZE, sent from tasks in NURSERY: each part goes as soon as the
    bytes have grown past it (`grown`), PARALLEL at once, or one at a time and in order where the store wants them
    so; `finish` sends the rest and completes the object. The upload begins with its first part, with METADATA.

    PATH is where a part's bytes are, at their offset: one file, or a function of the part's number. A part that
    fails stops the sending; `finish` raises what it failed with. A failure, or `abandon`, aborts the upload.
    ENDED(number, error) is called as each part's sending ends: ERROR is what it failed with, else None."""

    def __init__(self, store, key: str, part_size: int, parallel: int, nursery: trio.Nursery,
                 path: str | Callable[[int], str], metadata: dict[str, str] | None = None,
                 ended: Callable[[int, OSError | None], None] | None = None):
        self.store, self.key, self.part_size = store, key, part_size
        self._nursery = nursery
        self._path = path if callable(path) else lambda number: path
        self._metadata = metadata
        self._ended = ended
        self._at_once = 1 if store.parts_in_order else parallel
        self._slots = trio.CapacityLimiter(self._at_once)
        self._last_part_done: trio.Event | None = None  # stores whose parts go in order wait for it
        self._upload: str | None = None
        self._starting = trio.Lock()
        self._tags: dict[int, str] = {}
        self.sent_until = 0  # bytes handed to parts, sent or on their way
        self._sending: set[trio.CancelScope] = set()  # of the parts on their way
        self._idle = trio.Event()  # set while none is
        self._idle.set()
        self._part_ended = trio.Event()  # set as one ends (or sending stops), then replaced
        self._stopped = False
        self._abandoned = False
        self.error: OSError | None = None  # what the first part that failed failed with

    def grown(self, size: int):
        """The bytes are SIZE long now: sends each part they have grown past."""
        while not self._stopped and size >= self.sent_until + self.part_size:
            self._start_part(self.part_size)

    async def room(self):
        """Waits until one more part may be on its way at once; raises what a part failed with, if one did."""
        while len(self._sending) >= self._at_once and not self._stopped:
            await self._part_ended.wait()
        if self.error is not None:
            raise self.error

    async def finish(self, size: int) -> ObjectInfo:
        """Sends what is left of SIZE bytes and completes the object. On any failure (a part's, the completion's,
        a cancel) aborts the upload and raises."""
        try:
            self.grown(size)
            if not self._stopped and size > self.sent_until:
                self._start_part(size - self.sent_until)
            await self._idle.wait()
            if self.error is not None:
                raise self.error
            return await self.store.complete_upload(self.key, self._upload, sorted(self._tags.items()), size,
                                                    self._metadata)
        except BaseException:
            self.abandon()
            raise

    def abandon(self):
        """Sends no more parts and stops those on their way; the upload is aborted in the background."""
        if self._abandoned:
            return
        self._abandoned = self._stopped = True
        for part in self._sending:
            part.cancel()
        self._wake()
        self._nursery.start_soon(self._abort)

    async def _abort(self):
        with trio.CancelScope(shield=True):
            await self._idle.wait()
            if self._upload is not None:
                with contextlib.suppress(OSError):
                    await self.store.abort_upload(self.key, self._upload)

    def _wake(self):
        self._part_ended.set()
        self._part_ended = trio.Event()

    def _start_part(self, size: int):
        offset = self.sent_until
        self.sent_until += size
        if not self._sending:
            self._idle = trio.Event()
        part = trio.CancelScope()
        self._sending.add(part)
        after, done = None, trio.Event()
        if self.store.parts_in_order:
            after, self._last_part_done = self._last_part_done, done
        self._nursery.start_soon(self._send, part, offset // self.part_size + 1, offset, size, after, done)

    async def _send(self, part: trio.CancelScope, number: int, offset: int, size: int, after: trio.Event | None,
                    done: trio.Event):
        error = None
        try:
            with part:
                if after is not None:
                    await after.wait()
                async with self._slots:
                    async with self._starting:
                        if self._upload is None and not self._stopped:
                            self._upload = await self.store.start_upload(self.key, self._metadata)
                    if not self._stopped:
                        self._tags[number] = await self.store.upload_part(self.key, self._upload, number,
                                                                          self._path(number), offset, size)
        except OSError as failure:
            error = failure
            self.error = self.error or failure
            self._stopped = True
        finally:
            done.set()
            self._sending.discard(part)
            if self._ended is not None:
                self._ended(number, error)
            if not self._sending:
                self._idle.set()
            self._wake()


async def send_file(store, key: str, path: str, size: int, part_size: int, parallel: int,
                    metadata: dict[str, str] | None) -> ObjectInfo:
    """Uploads the SIZE bytes of the file at PATH to KEY in parts; raises what `PartUpload.finish` raised."""
    try:
        async with trio.open_nursery() as nursery:
            return await PartUpload(store, key, part_size, parallel, nursery, path, metadata).finish(size)
    except BaseExceptionGroup as group:  # the nursery's wrapping of it
        raise_store_error_of(group)
