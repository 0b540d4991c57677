"""What every volume offers the FUSE layer: path-based, async calls that raise OSError with an errno."""
from __future__ import annotations

import abc
import errno
import os
from dataclasses import dataclass

Path = tuple[str, ...]  # names below the volume's root; () is the root
NAME_MAX = 255  # bytes in a name, as statfs says: no longer name can be made, so none is found (ENAMETOOLONG)


@dataclass(frozen=True)
class Attrs:
    mode: int
    size: int = 0
    nlink: int = 1
    uid: int = 0
    gid: int = 0
    rdev: int = 0
    blocks: int = 0
    atime_ns: int = 0
    mtime_ns: int = 0
    ctime_ns: int = 0
    host_inode: tuple[int, int] | None = None  # (st_dev, st_ino) of a host file: its hard links share them

    @classmethod
    def from_stat(cls, st: os.stat_result) -> Attrs:
        return cls(st.st_mode, st.st_size, st.st_nlink, st.st_uid, st.st_gid, st.st_rdev,
                   st.st_blocks, st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns, (st.st_dev, st.st_ino))


@dataclass(frozen=True)
class AttrChanges:
    """A setattr request: None means leave as it is."""
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    size: int | None = None
    atime_ns: int | None = None
    mtime_ns: int | None = None


@dataclass(frozen=True)
class Owner:
    """The caller of a create-like request, who should own what it creates."""
    uid: int
    gid: int


@dataclass(frozen=True)
class DirEntry:
    name: str
    attrs: Attrs
    offset: int  # > 0; passing it back continues the listing after this entry


def rest_of_batch(batch: list[DirEntry], offset: int) -> list[DirEntry] | None:
    """The entries of BATCH after OFFSET when the listing stopped inside it (the kernel's buffer
    filled up), so it resumes with no new read; None when OFFSET lies outside it."""
    if batch and batch[0].offset <= offset + 1 <= batch[-1].offset:
        return [entry for entry in batch if entry.offset > offset]
    return None


class DirHandle(abc.ABC):
    @abc.abstractmethod
    async def entries(self, offset: int) -> list[DirEntry]:
        """The next batch of entries after OFFSET (0: from the start); an empty list at the end."""

    async def fsync(self, datasync: bool):
        pass

    async def close(self):
        pass


class FileHandle(abc.ABC):
    # Whether the kernel may keep the file's pages from an earlier open: only when it cannot have changed.
    keep_cache = False
    # `await store_pages(offset, data)` puts bytes of the file into the kernel's pages of it, where reads
    # find them without asking the daemon; False once the kernel takes no more. Set by the FUSE layer.
    store_pages = None

    @abc.abstractmethod
    async def read(self, offset: int, size: int) -> bytes | memoryview: ...

    async def write(self, offset: int, data: bytes) -> int:
        raise OSError(errno.EBADF, "not open for writing")

    async def flush(self):
        pass

    async def fsync(self, datasync: bool):
        pass

    @abc.abstractmethod
    async def getattr(self) -> Attrs: ...

    async def truncate(self, size: int):
        raise OSError(errno.EBADF, "not open for writing")

    @abc.abstractmethod
    async def release(self): ...


class Volume(abc.ABC):
    """A store or host directory seen as a tree. Mutations are only called on writable volumes."""

    # How long the kernel may trust the volume's names and attributes, in seconds.
    kernel_ttl = 1.0
    # Whether its files can carry extended attributes.
    has_xattrs = False

    @abc.abstractmethod
    async def getattr(self, path: Path) -> Attrs: ...

    @abc.abstractmethod
    async def opendir(self, path: Path) -> DirHandle: ...

    @abc.abstractmethod
    async def open(self, path: Path, flags: int) -> FileHandle: ...

    @abc.abstractmethod
    async def readlink(self, path: Path) -> str: ...

    async def create(self, path: Path, flags: int, mode: int, owner: Owner) -> tuple[FileHandle, Attrs]:
        raise OSError(errno.EROFS, "read-only volume")

    async def mkdir(self, path: Path, mode: int, owner: Owner) -> Attrs:
        raise OSError(errno.EROFS, "read-only volume")

    async def mknod(self, path: Path, mode: int, rdev: int, owner: Owner) -> Attrs:
        raise OSError(errno.EROFS, "read-only volume")

    async def symlink(self, path: Path, target: str, owner: Owner) -> Attrs:
        raise OSError(errno.EROFS, "read-only volume")

    async def link(self, path: Path, new_path: Path) -> Attrs:
        raise OSError(errno.EROFS, "read-only volume")

    async def unlink(self, path: Path):
        raise OSError(errno.EROFS, "read-only volume")

    async def rmdir(self, path: Path):
        raise OSError(errno.EROFS, "read-only volume")

    async def rename(self, path: Path, new_path: Path, flags: int):
        raise OSError(errno.EROFS, "read-only volume")

    async def setattr(self, path: Path, changes: AttrChanges, handle: FileHandle | None) -> Attrs:
        raise OSError(errno.EROFS, "read-only volume")

    async def getxattr(self, path: Path, name: str) -> bytes:
        raise OSError(errno.ENODATA, "no such attribute")

    async def listxattr(self, path: Path) -> list[str]:
        return []

    async def setxattr(self, path: Path, name: str, value: bytes):
        raise OSError(errno.ENOTSUP, "extended attributes not supported")

    async def removexattr(self, path: Path, name: str):
        raise OSError(errno.ENOTSUP, "extended attributes not supported")

    @abc.abstractmethod
    async def statvfs(self) -> os.statvfs_result | None:
        """The space behind the volume, or None where the store has no such notion."""

    async def start(self, nursery):
        """Called once inside the daemon's event loops, before the mount is served; NURSERY runs
        the volume's background work for as long as it is mounted."""

    async def sync(self, path: Path):
        """Waits until the store has every file closed under directory PATH (fsync of a directory);
        OSError(EIO) when it refused some."""

    async def unmounted(self):
        """Called once the kernel let go of the mount, before background work stops: what the volume
        owes its store goes there now, within a bound."""

    async def close(self):
        pass
