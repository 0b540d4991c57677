"""The namespace: the read-only virtual directories above volumes, which volume answers for a node, and ro/rw policy."""
import errno
import logging
import stat
import time

from fsmount.fs.inodes import InodeTable, Node
from fsmount.volumes.base import NAME_MAX, Attrs, DirEntry, DirHandle, Path, Volume

log = logging.getLogger(__name__)

# What statfs reports when no volume has a size: room enough that programs checking for space go on.
_UNBOUNDED_BYTES = 2**50
_STATFS_BLOCK = 4096


class Namespace:
    def __init__(self, inodes: InodeTable, volumes: list[tuple[Path, Volume, bool]], uid: int, gid: int):
        """VOLUMES: (path in the tree, volume, read_only) for each; paths neither repeat nor nest."""
        self.inodes = inodes
        self.volumes: list[Volume] = []
        self._read_only: dict[int, bool] = {}
        # False: xattr requests get ENOSYS, and the kernel stops sending them for the mount, so it never turns back.
        self.xattrs = False
        now = time.time_ns()
        self._virtual = Attrs(stat.S_IFDIR | 0o555, nlink=2, uid=uid, gid=gid, atime_ns=now, mtime_ns=now, ctime_ns=now)
        for path, volume, read_only in volumes:
            self.add(path, volume, read_only)

    def add(self, path: Path, volume: Volume, read_only: bool) -> tuple[Node, str]:
        """Puts VOLUME at PATH, which no volume holds, nor lies in or under; returns the parent and name of the
        first node made, whose entry the kernel may have been told is not there."""
        parent, made = self.inodes.root, None
        for name in path[:-1]:
            if name not in parent.entries:
                made = made or (parent, name)
                self.inodes.pin(parent, name)
            parent = parent.entries[name]
        self.inodes.pin(parent, path[-1], volume)
        self.volumes.append(volume)
        self._read_only[id(volume)] = read_only
        self.xattrs = self.xattrs or volume.has_xattrs
        return made or (parent, path[-1])

    def remove(self, path: Path) -> tuple[Node, str]:
        """Takes the volume at PATH out of the tree, with the virtual directories it leaves empty; returns the
        parent and name of the highest node gone, whose entry the kernel must forget."""
        node = self.inodes.root
        for name in path:
            node = node.entries[name]
        self.volumes.remove(node.volume)
        del self._read_only[id(node.volume)]
        while node.parent is not self.inodes.root and len(node.parent.entries) == 1:
            node = node.parent
        parent, name = node.parent, node.name
        for below in _pinned_below(node):
            self.inodes.unpin(below)
        return parent, name

    def writable(self, node: Node) -> Volume:
        """The volume that may change NODE; EROFS for virtual directories and read-only volumes."""
        if node.volume is None or self._read_only.get(id(node.volume), True):  # not there: a reload removed it
            raise OSError(errno.EROFS, "read-only")
        return node.volume

    async def attrs(self, node: Node) -> Attrs:
        if node.volume is None:
            return self._virtual
        return await node.volume.getattr(node.path)

    async def opendir(self, node: Node) -> DirHandle:
        if node.volume is not None:
            return await node.volume.opendir(node.path)
        entries = []
        for offset, (name, child) in enumerate(node.entries.items(), start=1):
            try:
                attrs = await self.attrs(child)
            except OSError as error:
                log.warning("volume %s: its root cannot be read: %s", name, error.strerror)
                attrs = self._virtual
            entries.append(DirEntry(name, attrs, offset))
        return _Listing(entries, self._volumes_below(node))

    def _volumes_below(self, node: Node) -> list[Volume]:
        below = []
        for child in node.entries.values():
            below += [child.volume] if child.volume is not None else self._volumes_below(child)
        return below

    async def statvfs(self) -> dict:
        """Space summed over the distinct file systems behind the volumes."""
        seen, total, free, avail, files, ffree = set(), 0, 0, 0, 0, 0
        for volume in self.volumes:
            try:
                result = await volume.statvfs()
            except OSError as error:
                log.warning("statfs of a volume failed: %s", error.strerror)
                continue
            if result is None or result.f_fsid in seen:
                continue
            seen.add(result.f_fsid)
            total += result.f_blocks * result.f_frsize
            free += result.f_bfree * result.f_frsize
            avail += result.f_bavail * result.f_frsize
            files += result.f_files
            ffree += result.f_ffree
        if not seen:
            total = free = avail = _UNBOUNDED_BYTES
            files = ffree = _UNBOUNDED_BYTES // _STATFS_BLOCK
        return {
            "f_bsize": _STATFS_BLOCK, "f_frsize": _STATFS_BLOCK, "f_namemax": NAME_MAX,
            "f_blocks": total // _STATFS_BLOCK, "f_bfree": free // _STATFS_BLOCK, "f_bavail": avail // _STATFS_BLOCK,
            "f_files": files, "f_ffree": ffree, "f_favail": ffree,
        }


def _pinned_below(node: Node) -> list[Node]:
    """NODE and the pinned nodes under it, deepest first."""
    if node.volume is not None:
        return [node]
    return [below for child in node.entries.values() for below in _pinned_below(child)] + [node]


class _Listing(DirHandle):
    """A virtual directory's listing, fixed when it is opened."""

    def __init__(self, entries: list[DirEntry], volumes: list[Volume]):
        self._entries = entries
        self._volumes = volumes  # below it

    async def entries(self, offset: int) -> list[DirEntry]:
        return self._entries[offset:]

    async def fsync(self, datasync: bool):
        """Waits for every volume below: `fsmount sync` of the mount point."""
        for volume in self._volumes:
            await volume.sync(())
