"""The data-loader rows' floor: a bare pyfuse3 file system of a tree of objects, each fetched by one GET on its first read.

Usage: pyfuse3_tree_floor.py MOUNTPOINT OBJECTS_JSON, where OBJECTS_JSON is a file of a list of {"path", "size",
"url", "headers"}: each object's path under the mount, its size, and a GET of it as the store signed it. The tree
is known from the start (no listing, no signing); a file's bytes come from one GET when it is first read, sent
by fsmount's own client of small GETs (libcurl on the event loop), and every read is answered from memory, which
a read to the end frees: no cache, nothing written. No pyfuse3 daemon does less for a cold epoch over small
objects, so fsmount's is measured against it (scripts/bench, column `pyfuse3-floor`).
"""
import errno
import json
import os
import stat
import sys
from pathlib import Path

import pyfuse3
import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fsmount.stores.base import RangeRequest  # noqa: E402
from fsmount.stores.curl import CurlRequests  # noqa: E402

TIMEOUT = 300


class TreeFloor(pyfuse3.Operations):
    def __init__(self, objects: list[dict]):
        super().__init__()
        self.children: dict[int, dict[bytes, int]] = {pyfuse3.ROOT_INODE: {}}
        self.objects: dict[int, dict] = {}
        self.fetches: dict[int, tuple[trio.Event, list]] = {}  # inode -> (fetched, [bytes])
        self.gets = CurlRequests(64)
        for entry in objects:
            parent = pyfuse3.ROOT_INODE
            *directories, name = entry["path"].split("/")
            for directory in directories:
                parent = self.children[parent].setdefault(directory.encode(), self._new_directory())
            inode = len(self.children) + len(self.objects) + pyfuse3.ROOT_INODE
            self.children[parent][name.encode()] = inode
            self.objects[inode] = entry

    def _new_directory(self) -> int:
        inode = len(self.children) + len(self.objects) + pyfuse3.ROOT_INODE
        self.children[inode] = {}
        return inode

    async def getattr(self, inode, ctx=None):
        attributes = pyfuse3.EntryAttributes()
        attributes.st_ino = inode
        if inode in self.children:
            attributes.st_mode = stat.S_IFDIR | 0o755
        else:
            attributes.st_mode = stat.S_IFREG | 0o644
            attributes.st_size = self.objects[inode]["size"]
        attributes.attr_timeout = attributes.entry_timeout = TIMEOUT
        return attributes

    async def lookup(self, parent, name, ctx=None):
        inode = self.children.get(parent, {}).get(name)
        if inode is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return await self.getattr(inode)

    async def open(self, inode, flags, ctx):
        return pyfuse3.FileInfo(fh=inode)

    async def flush(self, fh):
        pass  # answered, as a mount that also writes must: ENOSYS would spare the kernel every flush after

    async def release(self, fh):
        pass

    async def read(self, fh, offset, size):
        entry = self.objects[fh]
        if fh not in self.fetches:
            fetched, held = self.fetches[fh] = (trio.Event(), [])
            request = RangeRequest(entry["path"], 0, entry["size"], entry["url"], entry["headers"])
            held.append(await self.gets.get(request))
            fetched.set()
        fetched, held = self.fetches[fh]
        await fetched.wait()
        if offset + size >= entry["size"]:
            self.fetches.pop(fh, None)
        return held[0][offset:offset + size]


async def serve(mountpoint: str):
    with open("/proc/self/mountinfo") as mountinfo:  # as fsmount's daemon does: 1 MiB reads
        device = [line.split()[2] for line in mountinfo if line.split()[4] == mountpoint][-1]
    with open(f"/sys/class/bdi/{device}/read_ahead_kb", "w") as setting:
        setting.write("1024")
    await pyfuse3.main()


def main():
    mountpoint = os.path.abspath(sys.argv[1])
    floor = TreeFloor(json.loads(Path(sys.argv[2]).read_text()))
    pyfuse3.init(floor, mountpoint, set(pyfuse3.default_options) | {"fsname=pyfuse3-floor"})
    try:
        trio.run(serve, mountpoint)
    finally:
        pyfuse3.close(unmount=True)


if __name__ == "__main__":
    main()
