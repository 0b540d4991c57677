"""WritableObjectVolume: an rw object volume. A file being written is staged on local disk and uploaded on close.

Where POSIX and an object store part ways (README, "Writing", says the same to users):
- close() (flush) and fsync upload the whole file; when the upload fails, close() fails with EIO
  and the file stays staged, uploaded again in the background until the store takes it. A new
  file written in order goes up in parts while it is written (volumes/streaming.py).
- Handles of one file share its staged copy, so each sees the others' writes; every close uploads
  what the copy holds then, and the last close wins.
- A file opened for writing is copied in from the cache or the store at its first write, not at
  open: a program that opens read-write and only reads (SQLite does) costs nothing more.
- Renaming a file is a server-side copy and a delete; renaming a directory does that for each
  object under it, up to `rename_limit` objects, and fails with EXDEV above it, so `mv` copies.
- A file's times and mode (chmod, or the mode it was created with) are kept in its `mtime` and `mode`
  metadata; a directory's are not (a prefix has no metadata), but its times move, in memory, when this
  daemon makes or removes a name in it; chown succeeds and changes nothing.
- Symbolic and hard links, FIFOs and devices cannot be made (EPERM).
- A name of over 255 bytes, or one that would make a key of over 1024, cannot be made (ENAMETOOLONG).
- A directory made here is a marker object (`dir/`); an implicit directory (a prefix) goes away
  with its last object, as it does in every object store.
"""
import contextlib
import errno
import logging
import os
import stat
from dataclasses import dataclass

import trio

from fsmount.cache.background import run_in_background
from fsmount.staging.area import CLOSED, DEFAULT_MODE, UPLOADED, StagedFile, StagingArea
from fsmount.stores.base import NotFound, ObjectInfo
from fsmount.volumes.base import NAME_MAX, AttrChanges, Attrs, FileHandle, Owner, Path
from fsmount.volumes.objects import MODE, MTIME, ObjectVolume, format_mode, format_mtime
from fsmount.volumes.streaming import PartStream

log = logging.getLogger(__name__)

_RETRY_FIRST = 1.0  # seconds before a failed upload is tried again; doubled after each failure
_RETRY_MOST = 60.0
_RENAME_PARALLEL = 8  # server-side copies at once while a directory is renamed
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2
_INLINE_READ = 256 * 1024  # smaller staged files are read into the cache on the event loop
_KEY_MAX = 1024  # bytes in a key: S3's, Azure's and GCS's bound alike
_ABSENT = object()


@dataclass(frozen=True)
class Uploads:
    threshold: int  # larger files go up in parts
    part_size: int
    parallel: int  # parts in flight per file


class WritableObjectVolume(ObjectVolume):
    def __init__(self, store, prefix: str, staging: StagingArea, uploads: Uploads, rename_limit: int, **volume):
        super().__init__(store, prefix, read_only=False, **volume)
        self.staging = staging
        self.uploads = uploads
        self.rename_limit = rename_limit
        self._staged: dict[Path, StagedFile] = {}
        self._unstaged_writers: dict[Path, set[_WritableFile]] = {}  # handles open for writing, none written yet
        self._failed: set[StagedFile] = set()  # uploads the background task tries again
        self._streams: dict[StagedFile, PartStream] = {}
        self._retry = trio.Event()
        self._nursery: trio.Nursery | None = None

    async def start(self, nursery: trio.Nursery):
        await super().start(nursery)
        self._nursery = nursery
        for staged in self.staging.recover(self.store.identity, self.prefix):
            self._staged[self._path_of(staged.key)] = staged
            self._failed.add(staged)
        nursery.start_soon(self._retry_uploads)

    def _path_of(self, key: str) -> Path:
        return tuple(key[len(self.prefix):].split("/"))

    def _staged_info(self, staged: StagedFile) -> ObjectInfo:
        return ObjectInfo(staged.key, staged.size, f"staged:{staged.row}:{staged.changes}", staged.mtime_ns,
                          {MODE: format_mode(staged.mode)})

    async def _lookup(self, path: Path) -> ObjectInfo | None:
        staged = self._staged.get(path)
        if staged is not None:
            return self._staged_info(staged)
        return await super()._lookup(path)

    async def _lookup_or_absent(self, path: Path):
        try:
            return await self._lookup(path)
        except NotFound:
            return _ABSENT

    def local_entries(self, path: Path) -> dict[str, ObjectInfo]:
        return {staged_path[-1]: self._staged_info(staged) for staged_path, staged in self._staged.items()
                if staged_path[:-1] == path}

    # Files

    async def open(self, path: Path, flags: int) -> FileHandle:
        staged = self._staged.get(path)
        writing = (flags & os.O_ACCMODE) != os.O_RDONLY or bool(flags & os.O_TRUNC)
        if staged is None and not writing:
            return await super().open(path, flags)
        info = await self._lookup(path)
        if info is None:
            raise OSError(errno.EISDIR, "is a directory")
        if flags & os.O_TRUNC:
            staged = await self.stage(path, None, mode=self._permissions(info))
            if staged.size:
                staged.truncate(0)
        if staged is not None:
            return _WritableFile(self, path, None, staged, writing)
        handle = _WritableFile(self, path, await super().open(path, flags), None, writing)
        self._unstaged_writers.setdefault(path, set()).add(handle)
        await self.stop_feeding(path)  # once registered: no feed can start after this one stops
        return handle

    async def create(self, path: Path, flags: int, mode: int, owner: Owner) -> tuple[FileHandle, Attrs]:
        self._new_key(path)
        existing = await self._lookup_or_absent(path)
        if existing is None:
            raise OSError(errno.EISDIR, "is a directory")
        if existing is not _ABSENT and flags & os.O_EXCL:
            raise OSError(errno.EEXIST, "exists")
        kept_mode = mode & 0o7777 if existing is _ABSENT else self._permissions(existing)  # an existing file keeps its
        staged = await self.stage(path, None, mode=kept_mode)
        if existing is _ABSENT:
            self.entries_changed(path[:-1])
        if staged.size:
            staged.truncate(0)
        self.made(path)
        handle = _WritableFile(self, path, None, staged, writing=True)
        return handle, await handle.getattr()

    async def stage(self, path: Path, info: ObjectInfo | None, attached: bool = True,
                    mode: int | None = None) -> StagedFile:
        """The staged copy of the file at PATH, made if there is none: empty for INFO None, else a copy of
        the object. ATTACHED False: a copy for a handle whose file was unlinked, never uploaded. MODE: its
        permissions, if not the object's."""
        while attached and (staged := self._staged.get(path)) is not None:
            async with staged.lock:  # a copy still being filled
                pass
            if self._staged.get(path) is staged:
                return staged
        if mode is None:
            mode = DEFAULT_MODE if info is None else self._permissions(info)
        staged = self.staging.create(self.store.identity, self._key(path), mode)
        if attached:
            self._staged[path] = staged
        else:
            staged.discarded = True
        async with staged.lock:
            await self.stop_feeding(path)  # once registered: no feed can start after this one stops
            if info is None:
                return staged
            try:
                for index in range(-(-info.size // self.cache.block_size)):
                    name, fetch, size = self.piece(path, info, index, self.cache.block_size)
                    staged.write(index * self.cache.block_size,
                                 await self.cache.read(name, 0, self.cache.block_size, fetch, size=size))
            except BaseException:
                if self._staged.get(path) is staged:
                    del self._staged[path]
                self.staging.remove(staged)
                raise
            staged.mtime_ns = self._mtime_ns(info)
            staged.stored = info
            staged.uploaded = staged.changes
            self.staging.set_state(staged, UPLOADED)
        return staged

    def may_feed(self, path: Path) -> bool:
        return path not in self._staged and path not in self._unstaged_writers

    def forget_writer(self, handle: "_WritableFile"):
        """HANDLE has a staged copy now, or is closed: unlink and rename need not find it any more."""
        writers = self._unstaged_writers.get(handle.path)
        if writers is not None:
            writers.discard(handle)
            if not writers:
                del self._unstaged_writers[handle.path]

    # Uploads

    def wrote(self, staged: StagedFile, offset: int):
        """A new file (never in the store) that grows past the multipart threshold starts going up in parts."""
        stream = self._streams.get(staged)
        if stream is None:
            if staged.stored is not None or staged.size <= self.uploads.threshold or self._nursery is None:
                return
            stream = self._streams[staged] = PartStream(self.store, staged, self.uploads.part_size,
                                                        self.uploads.parallel, self._nursery)
        stream.wrote(offset)

    def break_stream(self, staged: StagedFile):
        stream = self._streams.pop(staged, None)
        if stream is not None:
            stream.abandon()

    async def upload(self, staged: StagedFile):
        """Uploads the staged file if it changed since its last upload; OSError(EIO) when that fails."""
        async with staged.lock:
            await self._upload_locked(staged)
        self._finish_if_idle(staged)

    async def _upload_locked(self, staged: StagedFile):
        if staged.discarded or not staged.dirty:
            return
        changes = staged.changes
        self.staging.set_state(staged, CLOSED)
        stream = self._streams.pop(staged, None)
        try:
            info = await stream.finish() if stream is not None else None
            if info is None:
                info = await self.store.put_file(staged.key, staged.path, self.uploads.threshold,
                                                 self.uploads.part_size, self.uploads.parallel,
                                                 {MTIME: format_mtime(staged.mtime_ns), MODE: format_mode(staged.mode)})
        except OSError as error:
            log.warning("uploading %s failed (%s); it stays staged in %s and is tried again", staged.key,
                        error.strerror or error, staged.path)
            self._failed.add(staged)
            self._retry.set()
            raise OSError(errno.EIO, f"uploading {staged.key} failed") from None
        staged.uploaded = changes
        staged.stored = info
        self._failed.discard(staged)
        if not staged.dirty:
            self.staging.set_state(staged, UPLOADED)
        self._now_stored(self._path_of(staged.key), info)

    def _now_stored(self, path: Path, info: ObjectInfo):
        """The store holds INFO at PATH, written by this daemon."""
        self.remember(path, info)
        self.relist(path, info)
        self.pages_hold(path, info.version)

    async def handle_closed(self, staged: StagedFile):
        """A handle of STAGED is gone. The last one uploads what a close has not (times set after it)."""
        staged.handles -= 1
        if not staged.handles and staged.dirty and staged not in self._failed:
            with contextlib.suppress(OSError):
                await self.upload(staged)
        self._finish_if_idle(staged)

    def _finish_if_idle(self, staged: StagedFile):
        """A staged file nobody uses and the store has leaves the staging area; its bytes go into the
        cache, so reading back what was just written costs no GET."""
        if staged.handles or staged.lock.locked() or (staged.dirty and not staged.discarded):
            return
        path = self._path_of(staged.key)
        if self._staged.get(path) is staged:
            del self._staged[path]
        if staged.discarded or self._nursery is None:
            self.staging.remove(staged)
        else:
            self._nursery.start_soon(self._keep_in_cache, staged, staged.stored)

    async def _keep_in_cache(self, staged: StagedFile, info: ObjectInfo):
        try:
            if info.size <= self.whole_object_limit:
                block_size = self.cache.block_size
                for index in range(-(-info.size // block_size)):
                    async def from_staging(offset=index * block_size):
                        if info.size <= _INLINE_READ:
                            return staged.read(offset, block_size)
                        return await run_in_background(staged.read, offset, block_size)

                    await self.cache.read(self.block(info, index), 0, 0, from_staging, background=True)
        except OSError as error:
            log.info("%s is uploaded, but its bytes did not go into the cache: %s", info.key, error)
        finally:
            self.staging.remove(staged)

    async def _retry_uploads(self):
        delay = _RETRY_FIRST
        while True:
            if not self._failed:
                self._retry = trio.Event()
                await self._retry.wait()
            await trio.sleep(delay)
            for staged in list(self._failed):
                with contextlib.suppress(OSError):
                    await self.upload(staged)
            delay = min(delay * 2, _RETRY_MOST) if self._failed else _RETRY_FIRST

    # Names

    async def mkdir(self, path: Path, mode: int, owner: Owner) -> Attrs:
        marker = self._new_key(path, "/")
        if await self._lookup_or_absent(path) is not _ABSENT:
            raise OSError(errno.EEXIST, "exists")
        await self.store.put(marker, b"")
        self.remember(path, None)
        self.relist(path, None)
        self.remember_listing(path, [])  # so the names made in it next need no request to be found new
        self.entries_changed(path[:-1])
        return self.attrs(None, path)

    async def mknod(self, path: Path, mode: int, rdev: int, owner: Owner) -> Attrs:
        if not stat.S_ISREG(mode):
            raise OSError(errno.EPERM, "an object store holds files and directories only")
        handle, attrs = await self.create(path, os.O_WRONLY | os.O_EXCL, mode, owner)
        try:
            await handle.flush()
        finally:
            await handle.release()
        return attrs

    def _new_key(self, path: Path, suffix: str = "") -> str:
        """The key of a name to be made at PATH, with SUFFIX (a marker's "/"): ENAMETOOLONG for a name or
        a key longer than may be."""
        key = self._key(path) + suffix
        if len(os.fsencode(path[-1])) > NAME_MAX or len(os.fsencode(key)) > _KEY_MAX:
            raise OSError(errno.ENAMETOOLONG, "a name is at most 255 bytes, an object's key 1024")
        return key

    async def symlink(self, path: Path, target: str, owner: Owner) -> Attrs:
        raise OSError(errno.EPERM, "an object store has no symbolic links")

    async def link(self, path: Path, new_path: Path) -> Attrs:
        raise OSError(errno.EPERM, "an object store has no hard links")

    async def unlink(self, path: Path):
        if await self._lookup(path) is None:
            raise OSError(errno.EISDIR, "is a directory")
        staged = self._staged.pop(path, None)
        if staged is not None:
            async with staged.lock:  # an upload under way ends first
                staged.discarded = True
                self._failed.discard(staged)
                self.break_stream(staged)
            self._finish_if_idle(staged)
        for handle in self._unstaged_writers.pop(path, ()):
            handle.unlinked = True
        await self._delete(self._key(path))
        self._forget(path)

    async def rmdir(self, path: Path):
        if await self._lookup(path) is not None:
            raise OSError(errno.ENOTDIR, "not a directory")
        if any(staged_path[:len(path)] == path for staged_path in self._staged):
            raise OSError(errno.ENOTEMPTY, "directory not empty")
        prefix = self.dir_prefix(path)
        page = await self.store.list_page(prefix, page_size=2)
        if page.prefixes or any(info.key != prefix for info in page.objects):
            raise OSError(errno.ENOTEMPTY, "directory not empty")
        await self._delete(prefix)
        self._forget(path)
        self.forget_listings(path)

    async def _delete(self, key: str):
        with contextlib.suppress(NotFound):
            await self.store.delete(key)

    def _forget(self, path: Path):
        self.entries_changed(path[:-1])
        self.gone(path)
        self.relist(path)

    async def rename(self, path: Path, new_path: Path, flags: int):
        if flags & _RENAME_EXCHANGE:
            raise OSError(errno.EINVAL, "an object store cannot exchange two names")
        info = await self._lookup(path)
        self._new_key(new_path)
        target = await self._lookup_or_absent(new_path)
        if target is not _ABSENT and flags & _RENAME_NOREPLACE:
            raise OSError(errno.EEXIST, "exists")
        await self.stop_feeding(path, new_path)  # a file's pages go with its name, and a writer may open it there
        if info is not None:
            if target is None:
                raise OSError(errno.EISDIR, "is a directory")
            await self._rename_file(path, new_path)
        else:
            if target not in (None, _ABSENT):
                raise OSError(errno.ENOTDIR, "not a directory")
            await self._rename_directory(path, new_path, target is None)
        self.entries_changed(path[:-1])
        self.entries_changed(new_path[:-1])

    async def _rename_file(self, path: Path, new_path: Path):
        replaced = self._staged.pop(new_path, None)
        if replaced is not None:  # its handles keep the bytes they had; they are never uploaded
            replaced.discarded = True
            self._failed.discard(replaced)
            self.break_stream(replaced)
            self._finish_if_idle(replaced)
        staged = self._staged.get(path)
        async with staged.lock if staged is not None else contextlib.nullcontext():
            if staged is None or not staged.dirty:  # else its upload goes to the new name
                copied = await self.store.copy(self._key(path), self._key(new_path))
                self._now_stored(new_path, copied)
                if staged is not None:
                    staged.stored = copied
            await self._delete(self._key(path))
            if staged is not None:
                self.break_stream(staged)
                self.staging.rename(staged, self._key(new_path))
                self._staged[new_path] = self._staged.pop(path)
        self._move_writers(path, new_path)
        self._forget(path)

    async def _rename_directory(self, path: Path, new_path: Path, target_exists: bool):
        old_prefix, new_prefix = self.dir_prefix(path), self.dir_prefix(new_path)
        if target_exists:
            page = await self.store.list_page(new_prefix, page_size=2)
            if page.prefixes or any(info.key != new_prefix for info in page.objects):
                raise OSError(errno.ENOTEMPTY, "directory not empty")
        keys = []
        async for page in self.store.list(old_prefix, delimiter=""):
            keys += [info.key for info in page.objects]
            if len(keys) > self.rename_limit:
                raise OSError(errno.EXDEV, f"more than {self.rename_limit} objects to rename (rename_limit)")
        for key in keys:
            self._new_key(new_path + tuple(key[len(old_prefix):].split("/")))
        moving = sorted((staged_path, staged) for staged_path, staged in self._staged.items()
                        if staged_path[:len(path)] == path)
        async with contextlib.AsyncExitStack() as locks:
            for _, staged in moving:
                await locks.enter_async_context(staged.lock)
            limit = trio.CapacityLimiter(_RENAME_PARALLEL)

            async def copy(key: str):
                async with limit:
                    if key.endswith("/"):  # a marker: servers that keep directories of their own (SeaweedFS) copy none
                        await self.store.put(new_prefix + key[len(old_prefix):], b"")
                    else:
                        await self.store.copy(key, new_prefix + key[len(old_prefix):])

            async def delete(key: str):
                async with limit:
                    await self._delete(key)

            # Markers go first, as mkdir made them: SeaweedFS lists no key for a marker put into a directory
            # that copying an object into it has made already.
            markers = [key for key in keys if key.endswith("/")]
            objects = [key for key in keys if not key.endswith("/")]
            for step, group in ((copy, markers), (copy, objects), (delete, keys)):
                async with trio.open_nursery() as nursery:
                    for key in group:
                        nursery.start_soon(step, key)
            for staged_path, staged in moving:
                moved = new_path + staged_path[len(path):]
                self.break_stream(staged)
                self.staging.rename(staged, self._key(moved))
                self._staged[moved] = self._staged.pop(staged_path)
        self._move_writers(path, new_path)
        self.forget_below(path, new_path)
        self.forget_listings(path, below=True)
        self.forget_listings(new_path, below=True)
        self.gone(path)
        self.relist(path)
        self.relist(new_path, None)

    def _move_writers(self, path: Path, new_path: Path):
        for writer_path in [p for p in self._unstaged_writers if p[:len(path)] == path]:
            writers = self._unstaged_writers.pop(writer_path)
            for handle in writers:
                handle.path = new_path + writer_path[len(path):]
            self._unstaged_writers[new_path + writer_path[len(path):]] = writers

    # Attributes

    async def setattr(self, path: Path, changes: AttrChanges, handle: FileHandle | None) -> Attrs:
        if changes.size is not None:
            if isinstance(handle, _WritableFile):
                await handle.truncate(changes.size)
            else:
                info = await self._lookup(path)
                if info is None:
                    raise OSError(errno.EISDIR, "is a directory")
                staged = await self.stage(path, info)
                staged.truncate(changes.size)
                self.break_stream(staged)
                if not staged.handles:
                    await self.upload(staged)
        mode = None if changes.mode is None else changes.mode & 0o7777
        if changes.mtime_ns is not None or mode is not None:
            await self._keep(path, changes.mtime_ns, mode)
        return await self.getattr(path)

    async def _keep(self, path: Path, mtime_ns: int | None, mode: int | None):
        """A time or a mode set (None: as it is). A dirty staged file takes them to its upload; else the
        object is copied onto itself with them in its metadata. Directories keep theirs: a prefix has no
        metadata."""
        current = await self._lookup(path)
        if current is None or (mtime_ns in (None, self._mtime_ns(current))
                               and mode in (None, self._permissions(current))):
            return  # nothing changes: a copy would cost a request, and break a stream
        staged = self._staged.get(path)
        if staged is not None and staged.dirty:
            staged.keep(mtime_ns, mode)
            self.break_stream(staged)  # its parts went without them
            if not staged.handles:  # closed, its last upload perhaps under way without them: none would follow
                await self.upload(staged)
            return
        key = self._key(path)
        metadata = (await self.store.stat(key)).metadata  # a listing's info has none, and the copy replaces it all
        kept = {MTIME: None if mtime_ns is None else format_mtime(mtime_ns),
                MODE: None if mode is None else format_mode(mode)}
        stored = await self.store.copy(key, key, metadata | {name: text for name, text in kept.items() if text})
        self._now_stored(path, stored)
        if staged is not None:
            staged.keep(mtime_ns, mode, changed=False)
            staged.stored = stored


class _WritableFile(FileHandle):
    """A handle of an rw volume's file: it reads the staged copy once there is one, else through the cache."""

    def __init__(self, volume: WritableObjectVolume, path: Path, reader: FileHandle | None, staged: StagedFile | None,
                 writing: bool):
        self.volume = volume
        self.path = path
        self.reader = reader
        self.staged = staged
        self.writing = writing
        self.changed = False  # written or truncated through this handle since its last upload
        self.unlinked = False
        self.keep_cache = reader.keep_cache if reader is not None else False
        if staged is not None:
            staged.handles += 1

    async def _staged(self) -> StagedFile:
        if self.staged is None:
            staged = await self.volume.stage(self.path, self.reader.info, attached=not self.unlinked)
            if self.staged is None:
                self.staged = staged
                staged.handles += 1
                self.volume.forget_writer(self)
        return self.staged

    async def read(self, offset: int, size: int) -> bytes | memoryview:
        if self.staged is None:
            return await self.reader.read(offset, size)
        return self.staged.read(offset, size)

    async def write(self, offset: int, data: bytes) -> int:
        staged = await self._staged()
        written = staged.write(offset, data)
        self.changed = True
        self.volume.wrote(staged, offset)
        return written

    async def truncate(self, size: int):
        staged = await self._staged()
        staged.truncate(size)
        self.changed = True
        self.volume.break_stream(staged)

    async def flush(self):
        """Uploads what this handle changed. A shell's `> file` closes a duplicate of the descriptor
        before anything is written: that close uploads nothing, and the file goes up at the next close
        (or, only created or truncated, when its last handle is released)."""
        if self.changed:
            await self.fsync(datasync=False)

    async def fsync(self, datasync: bool):
        if self.writing and self.staged is not None:
            await self.volume.upload(self.staged)
            self.changed = False

    async def getattr(self) -> Attrs:
        if self.staged is None:
            return await self.reader.getattr()
        return self.volume.attrs(self.volume._staged_info(self.staged), self.path)

    async def release(self):
        if self.staged is not None:
            await self.volume.handle_closed(self.staged)
        else:
            self.volume.forget_writer(self)
