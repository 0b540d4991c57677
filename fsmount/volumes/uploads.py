"""Uploads: when the staged files of an rw object volume go up to the store, and how failed ones are tried again.

A closed file waits `write_back` seconds after its last change (its close, a chmod, chown,
utimensat or rename) before it is uploaded, in one PUT or one multipart upload: what programs
rename or remove right after they close it (rsync's temporaries, git's locks, editors' swap files)
goes up once under its final name, or never. With `write_back` 0 a close uploads and waits, and
fails with EIO when the store refuses. A new file that grows past the multipart threshold goes up
in parts while it is written (volumes/streaming.py) and is finished at its close. A failed upload
stays staged and is tried again after 1 s, then twice as long each time, up to a minute; its error
is in the journal. `fsync` and `fsmount sync` upload at once and wait.
"""
import contextlib
import errno
import heapq
import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import trio

from fsmount.staging.area import CLOSED, OPEN, UPLOADED, StagedFile, StagingArea
from fsmount.stores.aio import TrioStore
from fsmount.stores.base import ObjectInfo
from fsmount.stores.retries import Backoff
from fsmount.volumes.streaming import PartStream

log = logging.getLogger(__name__)

_RETRY_BACKOFF = Backoff(first=1.0, most=60.0)  # seconds before a failed upload is tried again
_AT_ONCE = 4  # uploads under way at once, of files whose write-back time came


@dataclass(frozen=True)
class UploadSettings:
    threshold: int  # larger files go up in parts
    part_size: int
    parallel: int  # parts in flight per file
    write_back: float  # seconds a closed file waits before its upload


class Uploads:
    def __init__(self, store: TrioStore, staging: StagingArea, settings: UploadSettings,
                 metadata: Callable[[StagedFile], dict[str, str]], stored: Callable[[StagedFile, ObjectInfo], None],
                 settled: Callable[[StagedFile], None]):
        """METADATA: what a staged file goes up with; STORED: called once the store holds a file's upload;
        SETTLED: once an upload ended, whatever its outcome."""
        self.store = store
        self.staging = staging
        self.settings = settings
        self._metadata = metadata
        self._stored = stored
        self._settled = settled
        self._due: dict[StagedFile, float] = {}  # files waiting for their upload -> when it starts (trio's clock)
        self._queue: list[tuple[float, int, StagedFile]] = []  # a heap of (when, row, file); stale where _due differs
        self._failures: dict[StagedFile, int] = {}  # failed files -> how many times their upload failed in a row
        self.failed_uploads = 0  # uploads that failed, of every file, each try counted
        self._uploading: set[StagedFile] = set()  # of the files whose time came
        self._streams: dict[StagedFile, PartStream] = {}
        self._changed = trio.Event()
        self._nursery: trio.Nursery | None = None

    async def run(self, task_status=trio.TASK_STATUS_IGNORED):
        """Starts each upload when its time comes; runs for as long as the volume is mounted."""
        limit = trio.CapacityLimiter(_AT_ONCE)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            while True:
                now = trio.current_time()
                while self._queue and self._queue[0][0] <= now:
                    due, _, staged = heapq.heappop(self._queue)
                    if self._due.get(staged) != due:
                        continue  # its time moved, or it went up already
                    del self._due[staged]
                    if staged.state != OPEN:  # else written again since its close: the next close brings it back
                        self._uploading.add(staged)
                        nursery.start_soon(self._upload_in_turn, staged, limit)
                self._changed = trio.Event()
                with trio.move_on_at(self._queue[0][0] if self._queue else math.inf):
                    await self._changed.wait()

    async def _upload_in_turn(self, staged: StagedFile, limit: trio.CapacityLimiter):
        try:
            async with limit:
                with contextlib.suppress(OSError):
                    await self.upload(staged)
        finally:
            self._uploading.discard(staged)

    def _start_at(self, staged: StagedFile, delay: float):
        due = self._due[staged] = trio.current_time() + delay
        if not self._queue or due < self._queue[0][0]:
            self._changed.set()  # sooner than the runner wakes
        heapq.heappush(self._queue, (due, staged.row, staged))

    @property
    def pending(self) -> list[StagedFile]:
        """Files closed and not uploaded yet: waiting, failed or on their way."""
        return [*self._due, *self._uploading]

    def counts(self) -> tuple[int, int, list[tuple[StagedFile, int]]]:
        """How many files wait for their upload, how many are on their way, and the failing ones with how many
        times they failed in a row."""
        return len(self._due), len(self._uploading), list(self._failures.items())

    def is_pending(self, staged: StagedFile) -> bool:
        return staged in self._due or staged in self._uploading

    async def closed(self, staged: StagedFile):
        """A close (or the last handle's release) asks for STAGED's upload: at once with no write-back, or
        when its stream of parts has sent some; else once `write_back` has passed. OSError(EIO) when an
        upload made at once fails."""
        if staged.discarded or not staged.dirty:
            return
        if self.settings.write_back <= 0 or staged in self._streams:
            await self.upload(staged)
            return
        if staged.state != CLOSED:
            self.staging.set_state(staged, CLOSED)
        self._start_at(staged, self.settings.write_back)

    def postpone(self, staged: StagedFile):
        """STAGED changed after its close: its write-back time starts again."""
        if staged in self._due and staged not in self._failures:
            self._start_at(staged, self.settings.write_back)

    def recovered(self, staged: StagedFile):
        """STAGED was closed and not uploaded when the daemon stopped: it goes up now."""
        self._start_at(staged, 0)

    def discard(self, staged: StagedFile):
        """STAGED will never be uploaded (unlinked, or replaced by a rename)."""
        self._due.pop(staged, None)
        self._failures.pop(staged, None)
        self.break_stream(staged)

    async def upload(self, staged: StagedFile):
        """Uploads STAGED now if it changed since its last upload; OSError(EIO) when that fails."""
        self._due.pop(staged, None)
        try:
            async with staged.lock:
                await self._upload_locked(staged)
        finally:
            self._settled(staged)

    async def _upload_locked(self, staged: StagedFile):
        if staged.discarded or not staged.dirty:
            return
        changes = staged.changes
        self.staging.set_state(staged, CLOSED)
        stream = self._streams.pop(staged, None)
        try:
            info = await stream.finish() if stream is not None else None
            if info is None:
                settings = self.settings
                info = await self.store.put_file(staged.key, staged.path, settings.threshold, settings.part_size,
                                                 settings.parallel, self._metadata(staged))
        except OSError as error:
            reason = error.strerror or str(error)
            log.warning("uploading %s failed (%s); it stays staged in %s and is tried again", staged.key, reason,
                        staged.path)
            self.staging.failed(staged, reason)
            self.failed_uploads += 1
            failures = self._failures[staged] = self._failures.get(staged, 0) + 1
            self._start_at(staged, _RETRY_BACKOFF.after(failures))
            raise OSError(errno.EIO, f"uploading {staged.key} failed") from None
        if self._failures.pop(staged, None) is not None:
            self.staging.failed(staged, None)
        staged.uploaded = changes
        staged.stored = info
        staged.key_in_store = True
        if not staged.dirty:
            self.staging.set_state(staged, UPLOADED)
        self._stored(staged, info)

    async def sync(self, key_prefix: str):
        """Uploads every pending file whose key starts with KEY_PREFIX, now, and waits; OSError(EIO) naming
        those the store refused."""
        failed = []

        async def upload(staged: StagedFile):
            try:
                await self.upload(staged)
            except OSError:
                failed.append(staged.key)

        async with trio.open_nursery() as nursery:
            for staged in self.pending:
                if staged.key.startswith(key_prefix):
                    nursery.start_soon(upload, staged)
        if failed:
            raise OSError(errno.EIO, f"{len(failed)} uploads failed: {', '.join(sorted(failed)[:10])}")

    async def drain(self, seconds: float):
        """At unmount: uploads what is pending, for at most SECONDS; logs each file left staged."""
        with trio.move_on_after(seconds):
            with contextlib.suppress(OSError):
                await self.sync("")
        for staged in self.pending:
            log.warning("%s %s is not uploaded yet; it stays staged in %s and goes up at the next mount",
                        staged.store, staged.key, staged.path)

    def wrote(self, staged: StagedFile, offset: int):
        """A new file (never in the store) that grows past the multipart threshold starts going up in parts,
        unless it has a hole: pjdfstest's pwrite 2 GiB into an empty file sent its zeros while it was written."""
        stream = self._streams.get(staged)
        if staged.sparse:
            self.break_stream(staged)
            return
        if stream is None:
            if staged.stored is not None or staged.size <= self.settings.threshold or self._nursery is None:
                return
            stream = self._streams[staged] = PartStream(self.store, staged, self._metadata(staged),
                                                        self.settings.part_size, self.settings.parallel,
                                                        self._nursery)
        stream.wrote(offset)

    def break_stream(self, staged: StagedFile):
        stream = self._streams.pop(staged, None)
        if stream is not None:
            stream.abandon()


@dataclass
class UploadTotals:
    """The uploads of several rw volumes together, as `fsmount status` and the metrics show them."""
    waiting: int = 0
    uploading: int = 0
    failures: int = 0  # uploads that failed, of every file, each try counted
    failing: list[tuple[str, StagedFile, int]] = field(default_factory=list)  # (volume, file, failures in a row)


def upload_totals(volumes: Iterable[tuple[str, Uploads]]) -> UploadTotals:
    """The uploads of VOLUMES, each (its name, its uploads), summed."""
    totals = UploadTotals()
    for name, uploads in volumes:
        waiting, uploading, failing = uploads.counts()
        totals.waiting += waiting
        totals.uploading += uploading
        totals.failures += uploads.failed_uploads
        totals.failing += [(name, staged, failures) for staged, failures in failing]
    return totals
