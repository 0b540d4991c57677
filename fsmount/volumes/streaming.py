"""PartStream: a new file written in order goes up in parts while it is written, so close waits for the last part only.

Each part is sent once the file has grown past it, read from the staged copy by a worker thread
(fsmount.stores.multipart sends them). A write into a part already sent (or being sent), a truncate,
a time or mode set by hand or a rename breaks the stream: its upload is aborted and close uploads the
whole file as usual. A store whose parts go in order (GCS) gets them one at a time, each after the one
before. The parts carry no `mtime` metadata (the upload begins before the last write), so such a file
shows the time the store finished it, which is when it was closed; they carry the rest of its metadata.
"""
import logging

import trio

from fsmount.staging.area import StagedFile
from fsmount.stores.aio import TrioStore
from fsmount.stores.base import ObjectInfo
from fsmount.stores.multipart import PartUpload
from fsmount.volumes.posix import MTIME

log = logging.getLogger(__name__)


class PartStream:
    def __init__(self, store: TrioStore, staged: StagedFile, metadata: dict[str, str], part_size: int, parallel: int,
                 nursery: trio.Nursery):
        """METADATA: the file's, as it starts; a change of it breaks the stream."""
        self.staged = staged
        self.key = staged.key
        self.broken = False
        metadata = {name: text for name, text in metadata.items() if name != MTIME}
        self._parts = PartUpload(store, staged.key, part_size, parallel, nursery, staged.path, metadata,
                                 ended=self._part_ended)

    def wrote(self, offset: int):
        """After a write at OFFSET: sends the parts the file has grown past."""
        if self.broken:
            return
        if offset < self._parts.sent_until:
            self.abandon()
            return
        self._parts.grown(self.staged.size)

    def _part_ended(self, number: int, error: OSError | None):
        if error is not None:
            log.info("sending part %d of %s early failed (%s); it goes up whole at close", number, self.key, error)
            self.broken = True

    async def finish(self) -> ObjectInfo | None:
        """At close: sends what is left and completes the object; None when the stream broke, and the
        caller uploads the whole file."""
        if not self.broken:
            try:
                return await self._parts.finish(self.staged.size)
            except OSError as error:
                if not self.broken:  # else a part failed, and said so
                    log.info("completing the upload of %s in parts failed (%s); it goes up whole", self.key, error)
        self.abandon()
        return None

    def abandon(self):
        """Stops sending parts; the parts sent are dropped from the store in the background."""
        self.broken = True
        self._parts.abandon()
