"""SingleObjectVolume: one object, pinned to a version or checked against its SHA-256, as the only file of its volume.

Bacalhau's S3 inputs: `version_id` reads that version for as long as the mount lives;
`checksum_sha256` has the whole object read and hashed when it is first opened (through the
block cache, one block in memory at a time), and a mismatch fails the open with EIO.
"""
import errno
import hashlib
import logging

import trio

from fsmount.stores.base import NotFound, ObjectInfo
from fsmount.volumes.base import DirHandle, FileHandle, Path
from fsmount.volumes.objects import ObjectVolume

log = logging.getLogger(__name__)


class SingleObjectVolume(ObjectVolume):
    def __init__(self, store, key: str, version_id: str | None, checksum_sha256: bytes | None, **volume):
        prefix, _, self.name = key.rpartition("/")
        super().__init__(store, prefix, read_only=True, **volume)
        self.version_id = version_id
        self.checksum_sha256 = checksum_sha256
        self._checked: set[str] = set()  # versions whose digest matched

    async def _lookup(self, path: Path) -> ObjectInfo | None:
        if not path:
            return None
        if path != (self.name,):
            raise NotFound(f"{'/'.join(path)}: this volume holds {self.name} alone")
        info = self.tree.remembered(path)
        if info is None:
            info = await self.store.stat(self.tree.key(path), self.version_id)
            self.tree.remember(path, info)
        return info

    async def opendir(self, path: Path) -> DirHandle:
        if not path:
            try:
                self.tree.remember_listing(path, [(self.name, await self._lookup((self.name,)))])
            except NotFound:
                self.tree.remember_listing(path, [])
        return await super().opendir(path)

    async def open(self, path: Path, flags: int) -> FileHandle:
        handle = await super().open(path, flags)
        if self.checksum_sha256 is not None and handle.info.version not in self._checked:
            await self._check(path, handle.info)
        return handle

    async def _check(self, path: Path, info: ObjectInfo):
        digest = hashlib.sha256()
        block_size = self.cache.block_size
        for index in range(-(-info.size // block_size)):
            name, fetch, size, origin = self.piece(path, info, index, block_size)
            await trio.to_thread.run_sync(digest.update, await self.cache.read(name, 0, block_size, fetch, size=size,
                                                                               origin=origin))
        if digest.digest() != self.checksum_sha256:
            log.error("%s: SHA-256 %s, not the %s the config asks for; reads fail with EIO",
                      info.key, digest.hexdigest(), self.checksum_sha256.hex())
            raise OSError(errno.EIO, "checksum mismatch")
        self._checked.add(info.version)
