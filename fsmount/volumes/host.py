"""HostVolume: passthrough to a linked host directory (or one file), never following a symlink inside it.

Every call resolves its path one name at a time from the volume's root descriptor with
O_NOFOLLOW, and acts on the last name with an *at call, so a symlink planted in the source,
or a directory swapped for one, can never lead the daemon outside.

On a local file system the calls run inline: a trip to a worker thread costs many times the
system call. On a network (or unknown) file system they run in worker threads, limited per
volume, so a hung server stalls only its own volume.
"""
import contextlib
import ctypes
import dataclasses
import errno
import os
import stat

import trio

from fsmount.volumes.base import (Attrs, AttrChanges, DirEntry, DirHandle, FileHandle, Owner, Path, Volume,
                                  rest_of_batch)

_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_BATCH = 512
_THREADS_PER_VOLUME = 16
LOCAL_FILESYSTEMS = {"ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "ramfs", "overlay", "zfs", "f2fs", "bcachefs",
                     "jfs", "reiserfs", "vfat", "exfat"}
_libc = ctypes.CDLL(None, use_errno=True)


def _name(part: str) -> str:
    if part in ("", ".", "..") or "/" in part or "\0" in part:
        raise OSError(errno.EINVAL, f"invalid name {part!r}")
    return part


def filesystem_type(mountinfo: str, device: int) -> str | None:
    """The type of the mount whose device number is DEVICE, from /proc/self/mountinfo's text."""
    wanted = f"{os.major(device)}:{os.minor(device)}"
    for line in mountinfo.splitlines():
        fields, _, rest = line.partition(" - ")
        if fields.split()[2:3] == [wanted] and rest:
            return rest.split()[0]
    return None


class HostVolume(Volume):
    has_xattrs = True

    def __init__(self, host_path: str, kernel_ttl: float = 1.0, threaded: bool | None = None):
        """HOST_PATH: a directory, or a file, which is then the volume itself (Bacalhau's file sources)."""
        self.host_path = host_path
        self.kernel_ttl = kernel_ttl
        directory, self._root_name = (host_path, ".") if os.path.isdir(host_path) else os.path.split(host_path)
        self.root_fd = os.open(directory, _DIR_FLAGS & ~os.O_NOFOLLOW)
        if threaded is None:
            with open("/proc/self/mountinfo") as mountinfo:
                threaded = filesystem_type(mountinfo.read(), os.fstat(self.root_fd).st_dev) not in LOCAL_FILESYSTEMS
        self._limiter = trio.CapacityLimiter(_THREADS_PER_VOLUME) if threaded else None

    async def _run(self, function, *args):
        if self._limiter is None:
            return function(*args)
        return await trio.to_thread.run_sync(function, *args, limiter=self._limiter)

    @contextlib.contextmanager
    def _at(self, path: Path):
        """(directory fd, name) for PATH: walks the parents with O_NOFOLLOW; the root is (root_fd, ".") for a
        directory, (its directory's fd, its name) for a file."""
        if not path:
            yield self.root_fd, self._root_name
            return
        fd = self.root_fd
        try:
            for part in path[:-1]:
                parent, fd = fd, os.open(_name(part), _DIR_FLAGS, dir_fd=fd)
                if parent != self.root_fd:
                    os.close(parent)
            yield fd, _name(path[-1])
        finally:
            if fd != self.root_fd:
                os.close(fd)

    def _on_file(self, path: Path, action, on_symlink):
        """ACTION(a /proc/self/fd path naming exactly PATH's file), for calls with no *at form.
        A symlink has no mode or attributes of its own here: it gets ON_SYMLINK() instead."""
        with self._at(path) as (dir_fd, name):
            fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            return on_symlink() if stat.S_ISLNK(os.fstat(fd).st_mode) else action(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)

    def _stat(self, path: Path) -> Attrs:
        with self._at(path) as (dir_fd, name):
            return Attrs.from_stat(os.stat(name, dir_fd=dir_fd, follow_symlinks=False))

    async def getattr(self, path: Path) -> Attrs:
        return await self._run(self._stat, path)

    async def opendir(self, path: Path) -> DirHandle:
        def open_dir():
            with self._at(path) as (dir_fd, name):
                return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        return _HostDir(await self._run(open_dir), self._run)

    async def open(self, path: Path, flags: int) -> FileHandle:
        def open_file():
            with self._at(path) as (dir_fd, name):
                return os.open(name, _open_flags(flags), dir_fd=dir_fd)
        return _HostFile(await self._run(open_file), self._run)

    async def create(self, path: Path, flags: int, mode: int, owner: Owner) -> tuple[FileHandle, Attrs]:
        def create_file():
            with self._at(path) as (dir_fd, name):
                fd = os.open(name, _open_flags(flags) | os.O_CREAT, mode, dir_fd=dir_fd)
                try:
                    _give(dir_fd, name, owner)
                    return fd, Attrs.from_stat(os.fstat(fd))
                except OSError:
                    os.close(fd)
                    raise
        fd, attrs = await self._run(create_file)
        return _HostFile(fd, self._run), attrs

    async def _make(self, path: Path, owner: Owner, make):
        def make_and_stat():
            with self._at(path) as (dir_fd, name):
                make(name, dir_fd)
                _give(dir_fd, name, owner)
                return Attrs.from_stat(os.stat(name, dir_fd=dir_fd, follow_symlinks=False))
        return await self._run(make_and_stat)

    async def mkdir(self, path: Path, mode: int, owner: Owner) -> Attrs:
        return await self._make(path, owner, lambda name, dir_fd: os.mkdir(name, mode, dir_fd=dir_fd))

    async def mknod(self, path: Path, mode: int, rdev: int, owner: Owner) -> Attrs:
        return await self._make(path, owner, lambda name, dir_fd: os.mknod(name, mode, rdev, dir_fd=dir_fd))

    async def symlink(self, path: Path, target: str, owner: Owner) -> Attrs:
        return await self._make(path, owner, lambda name, dir_fd: os.symlink(target, name, dir_fd=dir_fd))

    async def readlink(self, path: Path) -> str:
        def read_link():
            with self._at(path) as (dir_fd, name):
                return os.readlink(name, dir_fd=dir_fd)
        return await self._run(read_link)

    async def link(self, path: Path, new_path: Path) -> Attrs:
        def hard_link():
            with self._at(path) as (dir_fd, name), self._at(new_path) as (new_dir_fd, new_name):
                os.link(name, new_name, src_dir_fd=dir_fd, dst_dir_fd=new_dir_fd, follow_symlinks=False)
                return Attrs.from_stat(os.stat(new_name, dir_fd=new_dir_fd, follow_symlinks=False))
        return await self._run(hard_link)

    async def unlink(self, path: Path):
        def remove():
            with self._at(path) as (dir_fd, name):
                os.unlink(name, dir_fd=dir_fd)
        await self._run(remove)

    async def rmdir(self, path: Path):
        def remove():
            with self._at(path) as (dir_fd, name):
                os.rmdir(name, dir_fd=dir_fd)
        await self._run(remove)

    async def rename(self, path: Path, new_path: Path, flags: int):
        def move():
            with self._at(path) as (dir_fd, name), self._at(new_path) as (new_dir_fd, new_name):
                if _libc.renameat2(dir_fd, os.fsencode(name), new_dir_fd, os.fsencode(new_name), flags) != 0:
                    code = ctypes.get_errno()
                    raise OSError(code, os.strerror(code))
        await self._run(move)

    async def setattr(self, path: Path, changes: AttrChanges, handle: FileHandle | None) -> Attrs:
        if changes.size is not None and handle is not None:
            await handle.truncate(changes.size)
            changes = dataclasses.replace(changes, size=None)
        return await self._run(self._setattr, path, changes)

    def _setattr(self, path: Path, changes: AttrChanges) -> Attrs:
        if changes.mode is not None:
            self._on_file(path, lambda file: os.chmod(file, stat.S_IMODE(changes.mode)), _refuse(errno.EOPNOTSUPP))
        with self._at(path) as (dir_fd, name):
            if changes.uid is not None or changes.gid is not None:
                uid, gid = _or_keep(changes.uid), _or_keep(changes.gid)
                os.chown(name, uid, gid, dir_fd=dir_fd, follow_symlinks=False)
            if changes.size is not None:
                fd = os.open(name, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
                try:
                    os.ftruncate(fd, changes.size)
                finally:
                    os.close(fd)
            if changes.atime_ns is not None or changes.mtime_ns is not None:
                now = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                times = (_or(changes.atime_ns, now.st_atime_ns), _or(changes.mtime_ns, now.st_mtime_ns))
                os.utime(name, ns=times, dir_fd=dir_fd, follow_symlinks=False)
            return Attrs.from_stat(os.stat(name, dir_fd=dir_fd, follow_symlinks=False))

    async def getxattr(self, path: Path, name: str) -> bytes:
        return await self._run(self._on_file, path, lambda file: os.getxattr(file, name), _refuse(errno.ENODATA))

    async def listxattr(self, path: Path) -> list[str]:
        return await self._run(self._on_file, path, os.listxattr, list)

    async def setxattr(self, path: Path, name: str, value: bytes):
        await self._run(self._on_file, path, lambda file: os.setxattr(file, name, value), _refuse(errno.EPERM))

    async def removexattr(self, path: Path, name: str):
        await self._run(self._on_file, path, lambda file: os.removexattr(file, name), _refuse(errno.EPERM))

    async def statvfs(self) -> os.statvfs_result:
        return await self._run(os.fstatvfs, self.root_fd)

    async def close(self):
        os.close(self.root_fd)


def _open_flags(flags: int) -> int:
    # O_DIRECT would need aligned buffers; the kernel bypasses its page cache for us instead.
    return (flags & ~(os.O_CREAT | os.O_EXCL | os.O_NOCTTY | os.O_DIRECT)) | os.O_NOFOLLOW | os.O_CLOEXEC


def _give(dir_fd: int, name: str, owner: Owner):
    """Hands a new file to the caller, as the kernel would have; a setgid directory keeps its group."""
    if os.geteuid() != 0:
        return
    group = -1 if os.fstat(dir_fd).st_mode & stat.S_ISGID else owner.gid
    os.chown(name, owner.uid, group, dir_fd=dir_fd, follow_symlinks=False)


def _refuse(code: int):
    def refuse():
        raise OSError(code, f"not on a symlink: {os.strerror(code)}")
    return refuse


def _or(value, default):
    return default if value is None else value


def _or_keep(value):
    return -1 if value is None else value


class _HostFile(FileHandle):
    def __init__(self, fd: int, run):
        self.fd = fd
        self._run = run

    async def read(self, offset: int, size: int) -> bytes:
        return await self._run(os.pread, self.fd, size, offset)

    async def write(self, offset: int, data: bytes) -> int:
        return await self._run(os.pwrite, self.fd, data, offset)

    async def flush(self):
        # A close of a duplicate gives network file systems their close-to-open flush.
        await self._run(lambda: os.close(os.dup(self.fd)))

    async def fsync(self, datasync: bool):
        await self._run(os.fdatasync if datasync else os.fsync, self.fd)

    async def getattr(self) -> Attrs:
        return Attrs.from_stat(await self._run(os.fstat, self.fd))

    async def truncate(self, size: int):
        await self._run(os.ftruncate, self.fd, size)

    async def release(self):
        await self._run(os.close, self.fd)


class _HostDir(DirHandle):
    """Streams a directory in batches; offsets are positions, so a listing resumes where it stopped."""

    def __init__(self, fd: int, run):
        self.fd = fd
        self._run = run
        self._scan = None
        self._position = 0  # entries consumed from _scan
        self._batch: list[DirEntry] = []

    async def entries(self, offset: int) -> list[DirEntry]:
        rest = rest_of_batch(self._batch, offset)
        if rest is not None:
            return rest
        self._batch = await self._run(self._read_from, offset)
        return self._batch

    def _read_from(self, offset: int) -> list[DirEntry]:
        if self._scan is None or offset != self._position:
            self._restart()
            for _ in zip(range(offset), self._scan):
                self._position += 1
        batch = []
        for entry in self._scan:
            self._position += 1
            try:
                attrs = Attrs.from_stat(entry.stat(follow_symlinks=False))
            except FileNotFoundError:
                continue
            batch.append(DirEntry(entry.name, attrs, self._position))
            if len(batch) == _BATCH:
                break
        return batch

    def _restart(self):
        if self._scan is not None:
            self._scan.close()
        os.lseek(self.fd, 0, os.SEEK_SET)
        self._scan = os.scandir(self.fd)
        self._position = 0

    async def fsync(self, datasync: bool):
        await self._run(os.fdatasync if datasync else os.fsync, self.fd)

    async def close(self):
        if self._scan is not None:
            self._scan.close()
        os.close(self.fd)
