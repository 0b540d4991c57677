"""The benchmark's floor: a bare pyfuse3 file system of one object, read by ranged GETs into reused memory.

Usage: pyfuse3_floor.py MOUNTPOINT REQUEST_JSON, where REQUEST_JSON is {"path", "size", "url", "headers"}:
the object's path under the mount, its size, and a GET of it as the store signed it. It reads 8 MiB blocks,
eight at once ahead of the reader, from worker threads into buffers it reuses, and answers each read from
memory: no cache, no listing, no other file. No pyfuse3 daemon does less for a cold sequential read, so
fsmount's cold read is measured against it (scripts/bench, column `pyfuse3-floor`).
"""
import errno
import json
import mmap
import os
import stat
import sys

import pyfuse3
import trio
import urllib3

BLOCK = 8 * 2**20
AHEAD = 8
ROOT = pyfuse3.ROOT_INODE


class Floor(pyfuse3.Operations):
    def __init__(self, request: dict):
        super().__init__()
        self.request = request
        self.size = request["size"]
        self.directories = request["path"].split("/")[:-1]
        self.name = request["path"].split("/")[-1].encode()
        self.pool = urllib3.PoolManager(maxsize=AHEAD)
        self.free = [mmap.mmap(-1, BLOCK) for _ in range(AHEAD + 2)]
        self.blocks: dict[int, tuple[trio.Event, list]] = {}  # index -> (fetched, [view, buffer])
        self.nursery = None

    def _attributes(self, inode: int) -> pyfuse3.EntryAttributes:
        attributes = pyfuse3.EntryAttributes()
        attributes.st_ino = inode
        directory = inode <= ROOT + len(self.directories)
        attributes.st_mode = stat.S_IFDIR | 0o755 if directory else stat.S_IFREG | 0o644
        attributes.st_size = 0 if directory else self.size
        attributes.attr_timeout = attributes.entry_timeout = 300
        return attributes

    async def getattr(self, inode, ctx=None):
        return self._attributes(inode)

    async def lookup(self, parent, name, ctx=None):
        depth = parent - ROOT  # directories are inodes ROOT+1.., the file the one after the last
        names = [part.encode() for part in self.directories] + [self.name]
        if depth < len(names) and name == names[depth]:
            return self._attributes(parent + 1)
        raise pyfuse3.FUSEError(errno.ENOENT)

    async def open(self, inode, flags, ctx):
        return pyfuse3.FileInfo(fh=inode)

    def _fetch(self, index: int, buffer: mmap.mmap) -> memoryview:
        start = index * BLOCK
        length = min(BLOCK, self.size - start)
        headers = {**self.request["headers"], "Range": f"bytes={start}-{start + length - 1}"}
        response = self.pool.request("GET", self.request["url"], headers=headers, preload_content=False)
        view, received = memoryview(buffer)[:length], 0
        while received < length:
            count = response._fp.readinto(view[received:])  # as fsmount.stores.ranges reads a body
            if not count:
                raise OSError(errno.EIO, f"the server sent {received} of {length} bytes")
            received += count
        response.release_conn()
        return view

    def _start(self, index: int):
        if index in self.blocks or index * BLOCK >= self.size:
            return
        fetched, held = trio.Event(), []
        self.blocks[index] = (fetched, held)

        async def fetch():
            buffer = self.free.pop() if self.free else mmap.mmap(-1, BLOCK)
            held[:] = [await trio.to_thread.run_sync(self._fetch, index, buffer), buffer]
            fetched.set()

        self.nursery.start_soon(fetch)

    async def read(self, fh, offset, size):
        index = offset // BLOCK
        for ahead in range(index, index + AHEAD):
            self._start(ahead)
        fetched, held = self.blocks[index]
        await fetched.wait()
        for done in [old for old, (filled, _) in self.blocks.items() if old < index - 1 and filled.is_set()]:
            self.free.append(self.blocks.pop(done)[1][1])
        inner = offset - index * BLOCK
        return held[0][inner:inner + size]


async def serve(floor: Floor, mountpoint: str):
    async with trio.open_nursery() as nursery:
        floor.nursery = nursery
        with open("/proc/self/mountinfo") as mountinfo:  # as fsmount's daemon does: 1 MiB reads
            device = [line.split()[2] for line in mountinfo if line.split()[4] == mountpoint][-1]
        with open(f"/sys/class/bdi/{device}/read_ahead_kb", "w") as setting:
            setting.write("1024")
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


def main():
    mountpoint, request = os.path.abspath(sys.argv[1]), json.loads(sys.argv[2])
    floor = Floor(request)
    pyfuse3.init(floor, mountpoint, set(pyfuse3.default_options) | {"fsname=pyfuse3-floor"})
    try:
        trio.run(serve, floor, mountpoint)
    finally:
        pyfuse3.close(unmount=True)


if __name__ == "__main__":
    main()
