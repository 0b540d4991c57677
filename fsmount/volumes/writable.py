"""WritableObjectVolume: an rw object volume: an ObjectVolume whose names, owners, modes and xattrs change, and whose files are staged (StagedFiles) and uploaded.

Where POSIX and an object store part ways (docs/SEMANTICS.md, section 6, says the same to users):
- A closed file goes up `staging.write_back` after its last change, once, under its final name with
  its final metadata (volumes/uploads.py); until then chmod, chown, utimensat, truncate, rename and
  unlink change only the staged file and its journal row, and a file removed before its upload
  never reaches the store. fsync uploads and waits, and fails with EIO when the store refuses; the
  file stays staged and is tried again until the store takes it. With `write_back` 0 close does
  what fsync does.
- Handles of one file share its staged copy, so each sees the others' writes; the last state wins.
- A file opened for writing is copied in from the cache or the store at its first write, not at
  open: a program that opens read-write and only reads (SQLite does) costs nothing more.
- Renaming a file is a server-side copy and a delete; renaming a directory does that for each
  object under it, up to `rename_limit` objects, and fails with EXDEV above it, so `mv` copies.
- A file's owner, mode and time are kept in its metadata, as s3fs keeps them (volumes/posix.py); a
  directory's in its marker's; its times move, in memory, when this daemon makes or removes a name in it.
- A symlink is an object as s3fs makes one (its body the target); hard links, FIFOs and devices
  cannot be made (EPERM).
- A name of over 255 bytes, or one that would make a key of over 1024, cannot be made (ENAMETOOLONG).
- A directory made here is a marker object (`dir/`); an implicit directory (a prefix) goes away
  with its last object, as it does in every object store.
"""
import contextlib
import errno
import logging
import os
import stat
import time

import trio

from fsmount.staging.area import StagingArea
from fsmount.stores.base import NotFound, ObjectInfo
from fsmount.volumes.base import NAME_MAX, AttrChanges, Attrs, FileHandle, Owner, Path
from fsmount.volumes.object_attributes import kind
from fsmount.volumes.objects import ObjectVolume
from fsmount.volumes.posix import (GID, OWN_XATTRS, POSIX_KEYS, UID, USER_XATTRS, Posix, check_size, encode_value,
                                   kept_posix, parse_id, posix_metadata, xattrs_in)
from fsmount.volumes.staged_files import StagedFiles
from fsmount.volumes.uploads import UploadSettings
from fsmount.volumes.writable_file import WritableFile

log = logging.getLogger(__name__)

_UNMOUNT_UPLOADS_MOST = 120.0  # seconds an unmount waits for pending uploads; the rest go up at the next mount
_RENAME_PARALLEL = 8  # server-side copies at once while a directory is renamed
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2
_KEY_MAX = 1024  # bytes in a key: S3's, Azure's and GCS's bound alike
_ABSENT = object()


class WritableObjectVolume(ObjectVolume):
    def __init__(self, store, prefix: str, staging: StagingArea, uploads: UploadSettings, rename_limit: int,
                 **volume):
        super().__init__(store, prefix, read_only=False, **volume)
        self.staged_files = StagedFiles(self, staging, uploads, self.now_stored)
        self.rename_limit = rename_limit

    async def start(self, nursery: trio.Nursery):
        await super().start(nursery)
        await self.staged_files.start(nursery)

    async def unmounted(self):
        await self.staged_files.uploads.drain(_UNMOUNT_UPLOADS_MOST)

    async def sync(self, path: Path):
        await self.staged_files.uploads.sync(self.tree.dir_prefix(path) if path else self.tree.prefix)

    def now_stored(self, path: Path, info: ObjectInfo):
        """The store holds INFO at PATH, written by this daemon."""
        self.tree.remember(path, info)
        self.tree.relist(path, info)
        self.pages_hold(path, info.version)

    def may_feed(self, path: Path) -> bool:
        return self.staged_files.may_feed(path)

    async def _lookup(self, path: Path) -> ObjectInfo | None:
        staged = self.staged_files.get(path)
        if staged is not None:
            return self.staged_files.info_of(staged)
        return await super()._lookup(path)

    async def _lookup_or_absent(self, path: Path):
        try:
            return await self._lookup(path)
        except NotFound:
            return _ABSENT

    def local_entries(self, path: Path) -> dict[str, ObjectInfo]:
        return self.staged_files.entries(path)

    # Files

    async def open(self, path: Path, flags: int) -> FileHandle:
        staged = self.staged_files.get(path)
        writing = (flags & os.O_ACCMODE) != os.O_RDONLY or bool(flags & os.O_TRUNC)
        if staged is None and not writing:
            return await super().open(path, flags)
        info = await self._lookup(path)
        if info is None:
            raise OSError(errno.EISDIR, "is a directory")
        if flags & os.O_TRUNC:
            staged = await self.staged_files.stage(path, None, like=info)
            if staged.size:
                staged.truncate(0)
        if staged is not None:
            return WritableFile(self.staged_files, path, None, staged, writing)
        handle = WritableFile(self.staged_files, path, await super().open(path, flags), None, writing)
        self.staged_files.add_writer(handle)
        await self.stop_feeding(path)  # once registered: no feed can start after this one stops
        return handle

    async def create(self, path: Path, flags: int, mode: int, owner: Owner) -> tuple[FileHandle, Attrs]:
        self._new_key(path)
        existing = await self._lookup_or_absent(path)
        if existing is None:
            raise OSError(errno.EISDIR, "is a directory")
        if existing is not _ABSENT and flags & os.O_EXCL:
            raise OSError(errno.EEXIST, "exists")
        if existing is _ABSENT:
            staged = await self.staged_files.stage(path, None, mode=mode, owner=owner)
            staged.key_in_store = False
            self.attributes.entries_changed(path[:-1])
        else:
            staged = await self.staged_files.stage(path, None, like=existing)  # an existing file keeps its mode and owner
        if staged.size:
            staged.truncate(0)
        self.tree.made(path)
        handle = WritableFile(self.staged_files, path, None, staged, writing=True)
        return handle, await handle.getattr()

    # Names

    async def mkdir(self, path: Path, mode: int, owner: Owner) -> Attrs:
        marker = self._new_key(path, "/")
        if await self._lookup_or_absent(path) is not _ABSENT:
            raise OSError(errno.EEXIST, "exists")
        metadata = posix_metadata(time.time_ns(), mode, owner.uid, owner.gid, {}, stat.S_IFDIR)
        await self.store.put(marker, b"", metadata)
        self.attributes.learn_marker(marker, metadata)
        self.tree.remember(path, None)
        self.tree.relist(path, None)
        self.tree.remember_listing(path, [])  # so the names made in it next need no request to be found new
        self.attributes.entries_changed(path[:-1])
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
        key = self.tree.key(path) + suffix
        if len(os.fsencode(path[-1])) > NAME_MAX or len(os.fsencode(key)) > _KEY_MAX:
            raise OSError(errno.ENAMETOOLONG, "a name is at most 255 bytes, an object's key 1024")
        return key

    async def symlink(self, path: Path, target: str, owner: Owner) -> Attrs:
        """A symlink as s3fs stores one: an object whose body is the target and whose mode says symlink."""
        key = self._new_key(path)
        if await self._lookup_or_absent(path) is not _ABSENT:
            raise OSError(errno.EEXIST, "exists")
        info = await self.store.put(key, os.fsencode(target),
                                    posix_metadata(time.time_ns(), 0o777, owner.uid, owner.gid, {}, stat.S_IFLNK))
        self.tree.made(path)
        self.now_stored(path, info)
        self.attributes.entries_changed(path[:-1])
        return self.attrs(info, path)

    async def link(self, path: Path, new_path: Path) -> Attrs:
        raise OSError(errno.EPERM, "an object store has no hard links")

    async def unlink(self, path: Path):
        if await self._lookup(path) is None:
            raise OSError(errno.EISDIR, "is a directory")
        staged = self.staged_files.pop(path)
        if staged is not None:
            await self.staged_files.discard(staged)
        self.staged_files.unlinked(path)
        if staged is None or staged.key_in_store:
            await self._delete(self.tree.key(path))
        self._forget(path)

    async def rmdir(self, path: Path):
        if await self._lookup(path) is not None:
            raise OSError(errno.ENOTDIR, "not a directory")
        await self._check_empty(path)
        await self._delete(self.tree.dir_prefix(path))
        self._forget(path)
        self.tree.forget_listings(path)

    async def _check_empty(self, path: Path):
        """ENOTEMPTY unless directory PATH holds nothing, staged files waiting for upload included."""
        if self.staged_files.below(path):
            raise OSError(errno.ENOTEMPTY, "directory not empty")
        prefix = self.tree.dir_prefix(path)
        page = await self.store.list_page(prefix, page_size=2)
        if page.prefixes or any(info.key != prefix for info in page.objects):
            raise OSError(errno.ENOTEMPTY, "directory not empty")

    async def _delete(self, key: str):
        with contextlib.suppress(NotFound):
            await self.store.delete(key)

    def _forget(self, path: Path):
        self.attributes.entries_changed(path[:-1])
        self.gone(path)
        self.tree.relist(path)

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
            await self._rename_file(path, new_path, target is not _ABSENT)
        else:
            if target not in (None, _ABSENT):
                raise OSError(errno.ENOTDIR, "not a directory")
            await self._rename_directory(path, new_path, target is None)
        self.attributes.entries_changed(path[:-1])
        self.attributes.entries_changed(new_path[:-1])

    async def _rename_file(self, path: Path, new_path: Path, target_in_store: bool):
        """TARGET_IN_STORE: whether the store may hold an object at NEW_PATH."""
        replaced = self.staged_files.pop(new_path)
        if replaced is not None:  # its handles keep the bytes they had; an upload of it under way lands first
            await self.staged_files.discard(replaced)
            target_in_store = replaced.key_in_store
        staged = self.staged_files.get(path)
        async with staged.lock if staged is not None else contextlib.nullcontext():
            if staged is None or not staged.dirty:  # else its upload goes to the new name
                copied = await self.store.copy(self.tree.key(path), self.tree.key(new_path))
                self.now_stored(new_path, copied)
                target_in_store = True
                if staged is not None:
                    staged.stored = copied
            if staged is None or staged.key_in_store:
                await self._delete(self.tree.key(path))
            if staged is not None:
                staged.key_in_store = target_in_store
                self.staged_files.move(staged, path, new_path)
        self.staged_files.move_writers(path, new_path)
        self._forget(path)

    async def _rename_directory(self, path: Path, new_path: Path, target_exists: bool):
        old_prefix, new_prefix = self.tree.dir_prefix(path), self.tree.dir_prefix(new_path)
        if target_exists:
            await self._check_empty(new_path)
        keys = []
        async for page in self.store.list(old_prefix, delimiter=""):
            keys += [info.key for info in page.objects]
            if len(keys) > self.rename_limit:
                raise OSError(errno.EXDEV, f"more than {self.rename_limit} objects to rename (rename_limit)")
        for key in keys:
            self._new_key(new_path + tuple(key[len(old_prefix):].split("/")))
        moving = self.staged_files.below(path)
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
                self.staged_files.move(staged, staged_path, new_path + staged_path[len(path):])
        self.staged_files.move_writers(path, new_path)
        self.forget_below(path, new_path)
        self.tree.forget_listings(path, below=True)
        self.tree.forget_listings(new_path, below=True)
        self.gone(path)
        self.tree.relist(path)
        self.tree.relist(new_path, None)

    # Attributes

    async def setattr(self, path: Path, changes: AttrChanges, handle: FileHandle | None) -> Attrs:
        if changes.size is not None:
            if isinstance(handle, WritableFile):
                await handle.truncate(changes.size)
            else:
                info = await self._lookup(path)
                if info is None:
                    raise OSError(errno.EISDIR, "is a directory")
                staged = await self.staged_files.stage(path, info)
                staged.truncate(changes.size)
                self.staged_files.uploads.break_stream(staged)
                if not staged.handles:
                    await self.staged_files.uploads.closed(staged)
        mode = None if changes.mode is None else changes.mode & 0o7777
        if any(value is not None for value in (changes.mtime_ns, mode, changes.uid, changes.gid)):
            await self._keep(path, Posix(changes.mtime_ns, mode, changes.uid, changes.gid))
        return await self.getattr(path)

    async def setxattr(self, path: Path, name: str, value: bytes):
        if name in OWN_XATTRS:
            raise OSError(errno.EPERM, "fsmount's own attributes are read-only")
        if not name.startswith(USER_XATTRS):
            raise OSError(errno.ENOTSUP, "an object keeps user.* attributes only")
        await self._keep(path, Posix(xattrs=await self.xattrs(path) | {name: encode_value(value)}))

    async def removexattr(self, path: Path, name: str):
        xattrs = await self.xattrs(path)
        if name not in xattrs:
            raise OSError(errno.ENODATA, "no such attribute")
        await self._keep(path, Posix(xattrs={key: value for key, value in xattrs.items() if key != name}))

    async def _keep(self, path: Path, changes: Posix):
        """Attributes set (None: as they are). A staged file not uploaded yet takes them to its upload; else
        the object, or the directory's marker, is written again with them in its metadata."""
        current = await self._lookup(path)
        if current is None:
            await self._keep_directory(path, changes)
            return
        staged = self.staged_files.get(path)
        if staged is not None and staged.dirty:
            check_size(changes.metadata_over(self.staged_files.metadata_of(staged)))
            staged.keep(changes.mtime_ns, changes.mode, changes.uid, changes.gid, changes.xattrs)
            self.staged_files.uploads.break_stream(staged)  # its parts went without them
            if not staged.handles:  # closed: its write-back time starts again (or, with none, it goes up now)
                await self.staged_files.uploads.closed(staged)
            return
        key = self.tree.key(path)
        stored = await self.store.stat(key)  # a listing's info has no metadata, and the copy replaces it all
        self.attributes.learn(stored)
        kept = self.attributes.kept(stored)
        metadata = changes.metadata_over(self._posix_now(stored, kept))
        if metadata == kept_posix(stored.metadata):
            return  # nothing changes: a copy would cost a request, and break a stream
        check_size(metadata)
        others = {name: text for name, text in stored.metadata.items() if name not in POSIX_KEYS}
        copied = await self.store.copy(key, key, others | metadata)
        self.now_stored(path, copied)
        if staged is not None:
            staged.keep(changes.mtime_ns, changes.mode, changes.uid, changes.gid, changes.xattrs, changed=False)
            staged.stored = copied

    def _posix_now(self, info: ObjectInfo, kept: dict[str, str]) -> dict[str, str]:
        """The POSIX metadata of the object INFO as it shows now, KEPT being what it holds."""
        attributes = self.attributes
        return posix_metadata(attributes.mtime_ns(info, kept), attributes.permissions(info, kept),
                              parse_id(kept.get(UID), None), parse_id(kept.get(GID), None), xattrs_in(kept),
                              kind(kept) or stat.S_IFREG)

    async def _keep_directory(self, path: Path, changes: Posix):
        """Attributes of a directory set: its marker is written with them (an implicit directory gets one)."""
        if not path:
            return  # the volume's root has no marker of its own
        marker = self.tree.dir_prefix(path)
        kept = self.attributes.of_marker(marker)
        now = self.attrs(None, path)
        metadata = changes.metadata_over(posix_metadata(
            now.mtime_ns, now.mode, parse_id(kept.get(UID), None), parse_id(kept.get(GID), None), xattrs_in(kept),
            stat.S_IFDIR))
        if metadata == kept:
            return
        check_size(metadata)
        await self.store.put(marker, b"", metadata)
        self.attributes.learn_marker(marker, metadata)
