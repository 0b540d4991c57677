"""PartStream: a new file written in order goes up in parts while it is written, so close waits for the last part only.

Each part is sent once the file has grown past it, read from the staged copy by a worker thread.
A write into a part already sent (or being sent), a truncate, a time or mode set by hand or a rename
breaks the stream: its upload is aborted and close uploads the whole file as usual. A store whose
parts go in order (GCS) gets them one at a time, each after the one before. The parts
carry no `mtime` metadata (the upload begins before the last write), so such a file shows the
time the store finished it, which is when it was closed; they carry the rest of its metadata.
"""
import contextlib
import logging

import trio

from fsmount.staging.area import StagedFile
from fsmount.stores.aio import TrioStore
from fsmount.stores.base import ObjectInfo
from fsmount.volumes.posix import MTIME

log = logging.getLogger(__name__)


class PartStream:
    def __init__(self, store: TrioStore, staged: StagedFile, metadata: dict[str, str], part_size: int, parallel: int,
                 nursery: trio.Nursery):
        """METADATA: the file's, as it starts; a change of it breaks the stream."""
        self.store = store
        self.staged = staged
        self.key = staged.key
        self.part_size = part_size
        self._metadata = {name: text for name, text in metadata.items() if name != MTIME}
        self.broken = False
        self._nursery = nursery
        self._slots = trio.CapacityLimiter(parallel)
        self._last_part_done: trio.Event | None = None  # stores whose parts go in order wait for it
        self._upload: str | None = None
        self._starting = trio.Lock()
        self._parts: dict[int, str] = {}
        self._sent_until = 0  # bytes handed to parts, sent or on their way
        self._sending = 0
        self._idle = trio.Event()
        self._idle.set()

    def wrote(self, offset: int):
        """After a write at OFFSET: sends the parts the file has grown past."""
        if self.broken:
            return
        if offset < self._sent_until:
            self.abandon()
            return
        while self.staged.size >= self._sent_until + self.part_size:
            self._start_part(self._sent_until, self.part_size)

    def _start_part(self, offset: int, size: int):
        self._sent_until = offset + size
        if not self._sending:
            self._idle = trio.Event()
        self._sending += 1
        after, done = None, trio.Event()
        if self.store.parts_in_order:
            after, self._last_part_done = self._last_part_done, done
        self._nursery.start_soon(self._send, offset // self.part_size + 1, offset, size, after, done)

    async def _send(self, number: int, offset: int, size: int, after: trio.Event | None, done: trio.Event):
        try:
            if after is not None:
                await after.wait()
            async with self._slots:
                async with self._starting:
                    if self._upload is None and not self.broken:
                        self._upload = await self.store.start_upload(self.key, self._metadata)
                if not self.broken:
                    self._parts[number] = await self.store.upload_part(self.key, self._upload, number,
                                                                       self.staged.path, offset, size)
        except OSError as error:
            log.info("sending part %d of %s early failed (%s); it goes up whole at close", number, self.key, error)
            self.broken = True
        finally:
            done.set()
            self._sending -= 1
            if not self._sending:
                self._idle.set()

    async def finish(self) -> ObjectInfo | None:
        """At close: sends what is left and completes the object; None when the stream broke, and the
        caller uploads the whole file."""
        if not self.broken and self.staged.size > self._sent_until:
            self._start_part(self._sent_until, self.staged.size - self._sent_until)
        await self._idle.wait()
        if not self.broken and self._upload is not None:
            try:
                return await self.store.complete_upload(self.key, self._upload, sorted(self._parts.items()),
                                                        self.staged.size, self._metadata)
            except OSError as error:
                log.info("completing the upload of %s in parts failed (%s); it goes up whole", self.key, error)
        self.abandon()
        return None

    def abandon(self):
        """Stops sending parts; the parts sent are dropped from the store in the background."""
        self.broken = True
        self._nursery.start_soon(self._abort)

    async def _abort(self):
        await self._idle.wait()
        if self._upload is not None:
            upload, self._upload = self._upload, None
            with contextlib.suppress(OSError):
                await self.store.abort_upload(self.key, upload)
