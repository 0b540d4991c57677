"""StagedFiles: an rw object volume's files staged on local disk: which path each is at, the handles writing files not staged yet, and each file's way up (Uploads) and into the block cache after.

It alone keeps the map of staged files and of those writers. A file is staged at its first write, its
creation or an O_TRUNC open; it leaves the staging area once no handle uses it and the store holds
what it holds, its bytes going into the block cache so that reading back costs no GET.
"""
import contextlib
import logging
import typing
from collections.abc import Callable

import trio

from fsmount.cache.background import run_in_background
from fsmount.staging.area import DEFAULT_MODE, UNLINKED, UPLOADED, StagedFile, StagingArea
from fsmount.stores.base import ObjectInfo
from fsmount.volumes.base import Attrs, Owner, Path
from fsmount.volumes.objects import ObjectVolume
from fsmount.volumes.posix import GID, STAGED_VERSION, UID, parse_id, posix_metadata, xattrs_in
from fsmount.volumes.uploads import UploadSettings, Uploads

log = logging.getLogger(__name__)

_INLINE_READ = 256 * 1024  # smaller staged files are read into the cache on the event loop


class Writer(typing.Protocol):
    """A handle open for writing a file it has not staged yet (a WritableFile, fsmount/volumes/writable_file.py)."""
    path: Path
    unlinked: bool


class StagedFiles:
    def __init__(self, volume: ObjectVolume, staging: StagingArea, settings: UploadSettings,
                 now_stored: Callable[[Path, ObjectInfo], None]):
        """VOLUME: where a file's bytes are read from to be staged. NOW_STORED(path, info): told what the store holds
        after an upload."""
        self.volume = volume
        self._now_stored = now_stored
        self.staging = staging
        self.uploads = Uploads(volume.store, staging, settings, self.metadata_of, self._uploaded, self.finish_if_idle)
        self._at: dict[Path, StagedFile] = {}
        self._unstaged_writers: dict[Path, set[Writer]] = {}  # handles open for writing, none written yet
        self._nursery: trio.Nursery | None = None

    async def start(self, nursery: trio.Nursery):
        """Uploads start, the files a stopped daemon left closed first."""
        self._nursery = nursery
        await nursery.start(self.uploads.run)
        for staged in self.staging.recover(self.volume.store.identity, self.volume.tree.prefix):
            self._at[self.volume.tree.path_of(staged.key)] = staged
            self.uploads.recovered(staged)

    def get(self, path: Path) -> StagedFile | None:
        return self._at.get(path)

    def pop(self, path: Path) -> StagedFile | None:
        return self._at.pop(path, None)

    def below(self, path: Path) -> list[tuple[Path, StagedFile]]:
        """The staged files at or under PATH, by path."""
        return sorted((staged_path, staged) for staged_path, staged in self._at.items()
                      if staged_path[:len(path)] == path)

    def move(self, staged: StagedFile, path: Path, new_path: Path):
        """STAGED, at PATH, is at NEW_PATH now: its upload goes there, its write-back time starting again."""
        self.uploads.break_stream(staged)
        self.staging.rename(staged, self.volume.tree.key(new_path))
        self._at[new_path] = self._at.pop(path)
        self.uploads.postpone(staged)

    def metadata_of(self, staged: StagedFile) -> dict[str, str]:
        return posix_metadata(staged.mtime_ns, staged.mode, staged.uid, staged.gid, staged.xattrs)

    def info_of(self, staged: StagedFile) -> ObjectInfo:
        return ObjectInfo(staged.key, staged.size, f"{STAGED_VERSION}{staged.row}:{staged.changes}", staged.mtime_ns,
                          self.metadata_of(staged))

    def attrs_of(self, staged: StagedFile, path: Path) -> Attrs:
        """The attributes of STAGED, at PATH, as they are now."""
        return self.volume.attrs(self.info_of(staged), path)

    def entries(self, directory: Path) -> dict[str, ObjectInfo]:
        """The files staged in DIRECTORY, by name, as they are now."""
        return {staged_path[-1]: self.info_of(staged) for staged_path, staged in self._at.items()
                if staged_path[:-1] == directory}

    async def stage(self, path: Path, info: ObjectInfo | None, attached: bool = True, like: ObjectInfo | None = None,
                    mode: int = DEFAULT_MODE, owner: Owner | None = None) -> StagedFile:
        """The staged copy of the file at PATH, made if there is none: a copy of the object INFO, or (INFO
        None) an empty file with the mode, owner and extended attributes of the object LIKE, or else MODE
        and OWNER (None: the volume's). ATTACHED False: a copy for a handle whose file was unlinked,
        never uploaded."""
        while attached and (staged := self._at.get(path)) is not None:
            async with staged.lock:  # a copy still being filled
                pass
            if self._at.get(path) is staged:
                return staged
        volume = self.volume
        key, model = volume.tree.key(path), info or like
        if model is not None:
            kept = volume.attributes.kept(model)
            staged = self.staging.create(volume.store.identity, key, volume.attributes.permissions(model, kept),
                                         parse_id(kept.get(UID), None), parse_id(kept.get(GID), None))
            staged.keep(xattrs=xattrs_in(kept), changed=False)
        else:
            staged = self.staging.create(volume.store.identity, key, mode & 0o7777,
                                         *((owner.uid, owner.gid) if owner is not None else (None, None)))
        if attached:
            self._at[path] = staged
        else:
            staged.discarded = True
        async with staged.lock:
            await volume.stop_feeding(path)  # once registered: no feed can start after this one stops
            if info is None:
                return staged
            block_size = volume.cache.block_size
            try:
                for index in range(-(-info.size // block_size)):
                    name, fetch, size, origin = volume.piece(path, info, index, block_size)
                    staged.write(index * block_size, await volume.cache.read(name, 0, block_size, fetch, size=size,
                                                                             origin=origin))
            except BaseException:
                if self._at.get(path) is staged:
                    del self._at[path]
                self.staging.remove(staged)
                raise
            staged.mtime_ns = volume.attributes.mtime_ns(info)
            staged.stored = info
            staged.uploaded = staged.changes
            self.staging.set_state(staged, UPLOADED)
        return staged

    def may_feed(self, path: Path) -> bool:
        """Whether nothing writes the file at PATH (the daemon may fill the kernel's pages of it)."""
        return path not in self._at and path not in self._unstaged_writers

    def add_writer(self, handle: Writer):
        self._unstaged_writers.setdefault(handle.path, set()).add(handle)

    def forget_writer(self, handle: Writer):
        """HANDLE has a staged copy now, or is closed: unlink and rename need not find it any more."""
        writers = self._unstaged_writers.get(handle.path)
        if writers is not None:
            writers.discard(handle)
            if not writers:
                del self._unstaged_writers[handle.path]

    def unlinked(self, path: Path):
        """The file at PATH is unlinked: the handles writing it and not staged yet stage copies of their own."""
        for handle in self._unstaged_writers.pop(path, ()):
            handle.unlinked = True

    def move_writers(self, path: Path, new_path: Path):
        for writer_path in [p for p in self._unstaged_writers if p[:len(path)] == path]:
            writers = self._unstaged_writers.pop(writer_path)
            for handle in writers:
                handle.path = new_path + writer_path[len(path):]
            self._unstaged_writers[new_path + writer_path[len(path):]] = writers

    def _uploaded(self, staged: StagedFile, info: ObjectInfo):
        self._now_stored(self.volume.tree.path_of(staged.key), info)

    async def handle_closed(self, staged: StagedFile):
        """A handle of STAGED is gone. The last one asks for the upload of what no close has (a file only
        created or truncated, times set after a close)."""
        staged.handles -= 1
        if not staged.handles and staged.dirty and not self.uploads.is_pending(staged):
            with contextlib.suppress(OSError):
                await self.uploads.closed(staged)
        self.finish_if_idle(staged)

    def finish_if_idle(self, staged: StagedFile):
        """A staged file nobody uses and the store has leaves the staging area; its bytes go into the
        cache, so reading back what was just written costs no GET."""
        if staged.handles or staged.lock.locked() or (staged.dirty and not staged.discarded):
            return
        path = self.volume.tree.path_of(staged.key)
        if self._at.get(path) is staged:
            del self._at[path]
        if staged.discarded or self._nursery is None:
            self.staging.remove(staged)
        else:
            self._nursery.start_soon(self._keep_in_cache, staged, staged.stored)

    async def _keep_in_cache(self, staged: StagedFile, info: ObjectInfo):
        cache = self.volume.cache
        try:
            if info.size <= self.volume.whole_object_limit:
                block_size = cache.block_size
                for index in range(-(-info.size // block_size)):
                    async def from_staging(offset=index * block_size):
                        if info.size <= _INLINE_READ:
                            return staged.read(offset, block_size)
                        return await run_in_background(staged.read, offset, block_size)

                    await cache.read(self.volume.block(info, index), 0, 0, from_staging, background=True,
                                     size=min(block_size, info.size - index * block_size),
                                     origin=(self.volume.store.identity, info.key))
        except OSError as error:
            log.info("%s is uploaded, but its bytes did not go into the cache: %s", info.key, error)
        finally:
            self.staging.remove(staged)

    async def discard(self, staged: StagedFile):
        """STAGED is unlinked, or replaced by a rename: it is never uploaded (an upload under way ends first); its
        handles keep its bytes, and it leaves the staging area with the last of them."""
        async with staged.lock:
            staged.discarded = True
            self.staging.set_state(staged, UNLINKED)
            self.uploads.discard(staged)
        self.finish_if_idle(staged)  # not under the lock, which keeps a file in use
