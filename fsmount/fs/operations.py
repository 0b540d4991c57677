"""The FUSE face: pyfuse3 handlers that turn inodes into (volume, path), and OSError into errno."""
import dataclasses
import errno
import functools
import itertools
import logging
import os
import stat
import time

import pyfuse3
import trio

from fsmount.fs.inodes import InodeTable, Node
from fsmount.fs.namespace import Namespace
from fsmount.metrics.counting import FuseRequests
from fsmount.volumes.base import NAME_MAX, Attrs, AttrChanges, DirHandle, FileHandle, Owner

log = logging.getLogger(__name__)

_VIRTUAL_TIMEOUT = 24 * 3600.0  # the virtual tree never changes while mounted
_BLKSIZE = 128 * 1024
_RENAME_EXCHANGE = 2


def _errno_reply(handler):
    """OSError becomes its errno; anything unexpected is logged and becomes EIO, never a dead loop. Each request is
    counted and timed, by its operation and the errno replied, where the daemon keeps metrics."""
    op = handler.__name__

    @functools.wraps(handler)
    async def wrapper(self, *args):
        requests = self.requests
        started = 0.0 if requests is None else time.perf_counter()
        replied = 0
        try:
            return await handler(self, *args)
        except pyfuse3.FUSEError as error:
            replied = error.errno
            raise
        except OSError as error:
            replied = error.errno or errno.EIO
            if replied == errno.EIO and not getattr(error, "logged", False):
                log.warning("%s failed: %s", op, error)
            raise pyfuse3.FUSEError(replied) from None
        except Exception:
            replied = errno.EIO
            log.exception("%s failed", op)
            raise pyfuse3.FUSEError(errno.EIO) from None
        finally:
            if requests is not None:
                requests.record(op, time.perf_counter() - started, replied)
    return wrapper


async def _store_pages(inode: int, offset: int, data: bytes) -> bool:
    """Puts DATA into the kernel's pages of INODE from OFFSET. A worker thread makes the call: it waits
    for pages that reads in flight hold locked, and only the event loop can answer those reads."""
    try:
        await trio.to_thread.run_sync(pyfuse3.notify_store, inode, offset, data)
    except OSError as error:  # ENOENT: the kernel forgot the inode; ENOSYS: it takes no stores
        log.debug("the kernel took no pages of inode %d: %s", inode, error)
        return False
    return True


class _Open:
    __slots__ = ("node", "handle")

    def __init__(self, node: Node, handle):
        self.node, self.handle = node, handle


class Operations(pyfuse3.Operations):
    supports_dot_lookup = False
    enable_writeback_cache = False

    def __init__(self, namespace: Namespace):
        super().__init__()
        self.namespace = namespace
        self.inodes: InodeTable = namespace.inodes
        self._handles: dict[int, _Open] = {}
        self._numbers = itertools.count(1)
        self._released: trio.Event | None = None  # set at the next release, for whoever waits on one
        self.after_init = None  # called once the kernel's INIT has been answered
        self.requests: FuseRequests | None = None  # counts the requests where the daemon keeps metrics

    def init(self):
        # pyfuse3 calls this just before it replies to INIT; what after_init starts runs after the reply.
        if self.after_init is not None:
            self.after_init()

    def _entry(self, node: Node, attrs: Attrs) -> pyfuse3.EntryAttributes:
        entry = pyfuse3.EntryAttributes()
        entry.st_ino = node.inode
        entry.st_mode = attrs.mode
        entry.st_nlink = attrs.nlink
        entry.st_uid = attrs.uid
        entry.st_gid = attrs.gid
        entry.st_rdev = attrs.rdev
        entry.st_size = attrs.size
        entry.st_blocks = attrs.blocks
        entry.st_blksize = _BLKSIZE
        entry.st_atime_ns = attrs.atime_ns
        entry.st_mtime_ns = attrs.mtime_ns
        entry.st_ctime_ns = attrs.ctime_ns
        timeout = node.volume.kernel_ttl if node.volume is not None else _VIRTUAL_TIMEOUT
        entry.entry_timeout = entry.attr_timeout = timeout
        return entry

    def _known(self, node: Node, attrs: Attrs) -> pyfuse3.EntryAttributes:
        """The reply to a request that made NODE known to the kernel: counts the lookup."""
        self.inodes.remember(node)
        return self._entry(node, attrs)

    def _child(self, parent: Node, name: str, attrs: Attrs) -> Node:
        if parent.entries is not None:
            return parent.entries[name]
        return self.inodes.child(parent, name, attrs)

    def _register(self, node: Node, handle) -> int:
        number = next(self._numbers)
        self._handles[number] = _Open(node, handle)
        if node.handles is None:
            node.handles = set()
        node.handles.add(number)
        return number

    def _unregister(self, number: int) -> _Open:
        opened = self._handles.pop(number)
        opened.node.handles.discard(number)
        self.inodes.drop_if_unused(opened.node)
        if self._released is not None:
            self._released.set()
            self._released = None
        return opened

    def opened_in(self, volume) -> int:
        """How many files and directories of VOLUME are open."""
        return sum(opened.node.volume is volume for opened in self._handles.values())

    async def unopened(self, volume):
        """Returns once nothing of VOLUME is open."""
        while self.opened_in(volume):
            self._released = self._released or trio.Event()
            await self._released.wait()

    # Names and attributes

    @_errno_reply
    async def lookup(self, parent_inode, name, ctx):
        parent = self.inodes[parent_inode]
        too_long = len(name) > NAME_MAX  # the kernel passes names of up to 1024 bytes
        name = os.fsdecode(name)
        if parent.entries is not None:
            child = parent.entries.get(name)
            if child is None:
                if too_long:
                    raise OSError(errno.ENAMETOOLONG, "name too long")
                negative = pyfuse3.EntryAttributes()
                negative.st_ino = 0
                negative.entry_timeout = _VIRTUAL_TIMEOUT
                return negative
            return self._known(child, await self.namespace.attrs(child))
        try:
            attrs = await parent.volume.getattr(parent.path + (name,))
        except OSError as error:
            if too_long and error.errno == errno.ENOENT:  # an object's name may be longer, and is found
                raise OSError(errno.ENAMETOOLONG, "name too long") from None
            raise
        return self._known(self.inodes.child(parent, name, attrs), attrs)

    async def forget(self, inode_list):
        for inode, count in inode_list:
            self.inodes.forget(inode, count)

    @_errno_reply
    async def getattr(self, inode, ctx):
        node = self.inodes[inode]
        if node.orphan and node.handles:
            attrs = await self._handles[next(iter(node.handles))].handle.getattr()
            if attrs.host_inode is None:  # an object's one name is gone (a host file's own count says if it has others)
                attrs = dataclasses.replace(attrs, nlink=0)
            return self._entry(node, attrs)
        return self._entry(node, await self.namespace.attrs(node))

    @_errno_reply
    async def setattr(self, inode, attr, fields, fh, ctx):
        node = self.inodes[inode]
        volume = self.namespace.writable(node)
        changes = AttrChanges(
            mode=attr.st_mode if fields.update_mode else None,
            uid=attr.st_uid if fields.update_uid else None,
            gid=attr.st_gid if fields.update_gid else None,
            size=attr.st_size if fields.update_size else None,
            atime_ns=attr.st_atime_ns if fields.update_atime else None,
            mtime_ns=attr.st_mtime_ns if fields.update_mtime else None,
        )
        opened = self._handles.get(fh) if fh is not None else None
        handle = opened.handle if opened is not None else None
        if node.orphan and isinstance(handle, FileHandle):
            if changes.size is not None:
                await handle.truncate(changes.size)
            return self._entry(node, await handle.getattr())
        return self._entry(node, await volume.setattr(node.path, changes, handle))

    @_errno_reply
    async def readlink(self, inode, ctx):
        node = self.inodes[inode]
        if node.volume is None:
            raise OSError(errno.EINVAL, "not a symlink")
        return os.fsencode(await node.volume.readlink(node.path))

    # Directories

    @_errno_reply
    async def opendir(self, inode, ctx):
        node = self.inodes[inode]
        return self._register(node, await self.namespace.opendir(node))

    @_errno_reply
    async def readdir(self, fh, start_id, token):
        opened = self._handles[fh]
        node, listing = opened.node, opened.handle
        # "." and ".." are never linked by the kernel, so they count no lookup.
        for name, target, offset in ((b".", node, 1), (b"..", node.parent, 2)):
            if start_id < offset:
                dot = pyfuse3.EntryAttributes()
                dot.st_ino, dot.st_mode = target.inode, stat.S_IFDIR
                if not pyfuse3.readdir_reply(token, name, dot, offset):
                    return
        position = max(start_id - 2, 0)
        while batch := await listing.entries(position):
            for entry in batch:
                child = self._child(node, entry.name, entry.attrs)
                if not pyfuse3.readdir_reply(token, os.fsencode(entry.name), self._entry(child, entry.attrs), entry.offset + 2):
                    self.inodes.drop_if_unused(child)
                    return
                self.inodes.remember(child)
            position = batch[-1].offset

    @_errno_reply
    async def releasedir(self, fh):
        await self._unregister(fh).handle.close()

    @_errno_reply
    async def fsyncdir(self, fh, datasync):
        listing: DirHandle = self._handles[fh].handle
        await listing.fsync(datasync)

    @_errno_reply
    async def mkdir(self, parent_inode, name, mode, ctx):
        return await self._make(parent_inode, name, ctx, lambda volume, path, owner: volume.mkdir(path, mode, owner))

    @_errno_reply
    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        return await self._make(parent_inode, name, ctx, lambda volume, path, owner: volume.mknod(path, mode, rdev, owner))

    @_errno_reply
    async def symlink(self, parent_inode, name, target, ctx):
        target = os.fsdecode(target)
        return await self._make(parent_inode, name, ctx, lambda volume, path, owner: volume.symlink(path, target, owner))

    async def _make(self, parent_inode, name, ctx, make):
        parent = self.inodes[parent_inode]
        volume = self.namespace.writable(parent)
        name = os.fsdecode(name)
        attrs = await make(volume, parent.path + (name,), Owner(ctx.uid, ctx.gid))
        return self._known(self.inodes.child(parent, name), attrs)

    @_errno_reply
    async def link(self, inode, new_parent_inode, new_name, ctx):
        node, new_parent = self.inodes[inode], self.inodes[new_parent_inode]
        volume = self._same_volume(node.parent, new_parent)
        new_name = os.fsdecode(new_name)
        attrs = await volume.link(node.path, new_parent.path + (new_name,))
        return self._known(self.inodes.linked(node, new_parent, new_name, attrs), attrs)

    @_errno_reply
    async def unlink(self, parent_inode, name, ctx):
        await self._remove(parent_inode, name, lambda volume, path: volume.unlink(path))

    @_errno_reply
    async def rmdir(self, parent_inode, name, ctx):
        await self._remove(parent_inode, name, lambda volume, path: volume.rmdir(path))

    async def _remove(self, parent_inode, name, remove):
        parent = self.inodes[parent_inode]
        volume = self.namespace.writable(parent)
        name = os.fsdecode(name)
        await remove(volume, parent.path + (name,))
        self.inodes.unlinked(parent, name)

    @_errno_reply
    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        old_parent, new_parent = self.inodes[parent_inode_old], self.inodes[parent_inode_new]
        volume = self._same_volume(old_parent, new_parent)
        name_old, name_new = os.fsdecode(name_old), os.fsdecode(name_new)
        await volume.rename(old_parent.path + (name_old,), new_parent.path + (name_new,), flags)
        self.inodes.renamed(old_parent, name_old, new_parent, name_new, exchange=bool(flags & _RENAME_EXCHANGE))

    def _same_volume(self, parent: Node, other_parent: Node):
        """The volume both may change; EROFS before EXDEV, so a read-only side is never tried."""
        volume = self.namespace.writable(parent)
        if self.namespace.writable(other_parent) is not volume:
            raise OSError(errno.EXDEV, "across volumes")
        return volume

    # Files

    @_errno_reply
    async def open(self, inode, flags, ctx):
        node = self.inodes[inode]
        if node.volume is None:
            raise OSError(errno.EISDIR, "directory")
        writing = (flags & os.O_ACCMODE) != os.O_RDONLY or flags & os.O_TRUNC
        volume = self.namespace.writable(node) if writing else node.volume
        handle = await volume.open(node.path, flags)
        if not flags & os.O_DIRECT:
            handle.store_pages = functools.partial(_store_pages, inode)
        return pyfuse3.FileInfo(fh=self._register(node, handle), keep_cache=handle.keep_cache,
                                direct_io=bool(flags & os.O_DIRECT))

    @_errno_reply
    async def create(self, parent_inode, name, mode, flags, ctx):
        parent = self.inodes[parent_inode]
        volume = self.namespace.writable(parent)
        name = os.fsdecode(name)
        handle, attrs = await volume.create(parent.path + (name,), flags, mode, Owner(ctx.uid, ctx.gid))
        node = self.inodes.child(parent, name)
        info = pyfuse3.FileInfo(fh=self._register(node, handle), keep_cache=handle.keep_cache,
                                direct_io=bool(flags & os.O_DIRECT))
        return info, self._known(node, attrs)

    @_errno_reply
    async def read(self, fh, off, size):
        return await self._handles[fh].handle.read(off, size)

    @_errno_reply
    async def write(self, fh, off, buf):
        return await self._handles[fh].handle.write(off, buf)

    @_errno_reply
    async def flush(self, fh):
        await self._handles[fh].handle.flush()

    @_errno_reply
    async def fsync(self, fh, datasync):
        await self._handles[fh].handle.fsync(datasync)

    @_errno_reply
    async def release(self, fh):
        await self._unregister(fh).handle.release()

    # Extended attributes and the file system

    def _xattr_node(self, inode) -> Node:
        if not self.namespace.xattrs:
            raise OSError(errno.ENOSYS, "no volume has extended attributes")
        return self.inodes[inode]

    @_errno_reply
    async def getxattr(self, inode, name, ctx):
        node = self._xattr_node(inode)
        if node.volume is None:
            raise OSError(errno.ENODATA, "no such attribute")
        return await node.volume.getxattr(node.path, os.fsdecode(name))

    @_errno_reply
    async def listxattr(self, inode, ctx):
        node = self._xattr_node(inode)
        if node.volume is None:
            return []
        return [os.fsencode(name) for name in await node.volume.listxattr(node.path)]

    @_errno_reply
    async def setxattr(self, inode, name, value, ctx):
        node = self._xattr_node(inode)
        await self.namespace.writable(node).setxattr(node.path, os.fsdecode(name), value)

    @_errno_reply
    async def removexattr(self, inode, name, ctx):
        node = self._xattr_node(inode)
        await self.namespace.writable(node).removexattr(node.path, os.fsdecode(name))

    @_errno_reply
    async def statfs(self, ctx):
        result = pyfuse3.StatvfsData()
        for field, value in (await self.namespace.statvfs()).items():
            setattr(result, field, value)
        return result
