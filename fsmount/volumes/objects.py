"""ObjectVolume: an object store seen as a tree. Prefixes become directories; data comes through the block cache.

Names: a key with an empty, "." or ".." segment cannot be a file name and is not shown; a name that
is both an object and a prefix ("a" and "a/b") shows as the directory. A `dir/` marker object makes
an empty directory exist. The volume is made of parts, each the one owner of its caches: ObjectTree
(fsmount/volumes/object_tree.py) knows the names, their objects and the directories' listings;
ObjectAttributes (fsmount/volumes/object_attributes.py) their owners, modes and times; this module
reads, through the block cache, with the handles ObjectFile (fsmount/volumes/object_reads.py) and
ObjectListing (fsmount/volumes/object_listing.py). A symlink is resolved by the kernel in the
reader's view.
"""
import errno
import functools
import logging
import math
import os
import re
import stat

import trio

from fsmount.cache.attributes import KnownAttributes
from fsmount.cache.blocks import BlockCache, block_name
from fsmount.cache.listings import KnownListings
from fsmount.cache.metadata import ExpiringCache
from fsmount.memory import VERSIONS_KEPT, MemoryBudgets
from fsmount.stores.aio import TrioStore
from fsmount.stores.base import ObjectInfo, PreconditionFailed
from fsmount.volumes.base import Attrs, DirHandle, FileHandle, Path, Volume
from fsmount.volumes.object_attributes import ObjectAttributes, kind
from fsmount.volumes.object_listing import ObjectListing
from fsmount.volumes.object_reads import ObjectFile, PageFeed
from fsmount.volumes.posix import OWN_XATTRS, STAGED_VERSION, USER_XATTRS, decode_value, xattrs_in
from fsmount.volumes.object_tree import Entries, ObjectTree, find
from fsmount.volumes.prefetch import DirectorySweeps, Piece, Prefetcher

log = logging.getLogger(__name__)

_KERNEL_TTL_MAX = 86400.0  # what the kernel is told of entries that never expire (IPFS)
# An object read at random is filled whole in the background when it is at most this share of the cache.
_WHOLE_OBJECT_SHARE = 4
_WHOLE_OBJECT_MAX = 4 * 2**30
_AHEAD_SHARE = 4  # of the cache, what a volume's sweeps may fetch ahead of their readers


class ObjectVolume(Volume):
    has_xattrs = True
    def __init__(self, store: TrioStore, prefix: str, cache: BlockCache, known_attributes: KnownAttributes,
                 prefetcher: Prefetcher, metadata_ttl: float, read_ahead: int, uid: int, gid: int, read_only: bool,
                 key_filter: re.Pattern | None = None, known_listings: KnownListings | None = None, *,
                 memory: MemoryBudgets):
        """KEY_FILTER: only objects whose full key it matches (re.search) are shown. KNOWN_LISTINGS: where whole
        listings are kept across mounts (content-addressed stores keep their own). MEMORY: the daemon's budgets."""
        self.store = store
        self.cache = cache
        self.memory = memory
        self.prefetcher = prefetcher
        self.kernel_ttl = min(metadata_ttl, _KERNEL_TTL_MAX)
        self.read_ahead_blocks = max(1, read_ahead // cache.block_size)
        self.attributes = ObjectAttributes(store.identity, store.lists_metadata, known_attributes, uid, gid, read_only)
        self.tree = ObjectTree(store, prefix, self.attributes, metadata_ttl, key_filter, known_listings,
                               self._list_again, prefetcher.spawn)
        self._sweeps = DirectorySweeps(prefetcher, self._fill_ahead_of_readers, cache.max_size // _AHEAD_SHARE,
                                      self.memory.sweeps_in_flight)
        self._opened_versions = ExpiringCache(math.inf, VERSIONS_KEPT)  # path -> the version its pages hold
        self._whole = ExpiringCache(math.inf, VERSIONS_KEPT)  # (key, version) of objects filled, or being filled, whole
        self.whole_object_limit = min(_WHOLE_OBJECT_MAX, cache.max_size // _WHOLE_OBJECT_SHARE)
        self._feeds: dict[Path, PageFeed] = {}

    async def start(self, nursery: trio.Nursery):
        await self.store.open()

    async def close(self):
        await self.store.close()

    def attrs(self, info: ObjectInfo | None, path: Path) -> Attrs:
        """The attributes of the object INFO at PATH, or of the directory PATH (INFO None)."""
        if info is None:
            return self.attributes.of_directory(path, self.tree.dir_prefix(path))
        return self.attributes.of_object(info)

    async def _lookup(self, path: Path) -> ObjectInfo | None:
        """The object at PATH, or None for a directory; NotFound when neither."""
        return await self.tree.lookup(path)

    async def getattr(self, path: Path) -> Attrs:
        return self.attrs(await self._lookup(path), path)

    async def opendir(self, path: Path) -> DirHandle:
        if await self._lookup(path) is not None:
            raise OSError(errno.ENOTDIR, "not a directory")
        return ObjectListing(self, path)

    async def open(self, path: Path, flags: int) -> FileHandle:
        info = await self._lookup(path)
        if info is None:
            raise OSError(errno.EISDIR, "is a directory")
        feed = self._feeds.get(path)
        if feed is not None and feed.version != info.version:  # the kernel must not get the old bytes again
            await self.stop_feeding(path)
        keep_cache = self._opened_versions.get(path) == info.version
        self._opened_versions.put(path, info.version)
        return ObjectFile(self, path, info, keep_cache)

    def read_whole(self, path: Path, info: ObjectInfo):
        """A handle read the file at PATH (INFO) from its start to its end: its directory's sweep learns of it."""
        directory = path[:-1]
        entries = self.tree.listing_in_memory(directory)
        if entries is None:
            return
        position, found = find(entries, path[-1])
        if found:
            self._sweeps.read_whole(directory, position, self.block(info, 0), len(entries),
                                    functools.partial(self._first_piece_to_fetch, directory, entries))

    def _first_piece_to_fetch(self, directory: Path, entries: Entries, position: int) -> Piece | None:
        name, info = entries[position]
        if info is None or info.size == 0 or info.link_target is not None:
            return None
        piece = self.piece(directory + (name,), info, 0, self.cache.block_size)
        return None if self.cache.checked(piece.name) or self.cache.filling(piece.name) else piece

    async def _fill_ahead_of_readers(self, piece: Piece):
        await self.cache.read(piece.name, 0, 0, piece.fetch, size=piece.size, origin=piece.origin)

    def fill_ahead(self, name: str, fetch, size: int, origin: tuple[str, str]) -> bool:
        """Starts filling block NAME in the background unless this process has it (one on disk is checked
        there, ahead of its reader); False when no slot is free."""
        if self.cache.checked(name):
            return True
        # Blocks filled ahead and not read yet keep their share of memory: starting more would push them
        # out, and their readers would read them from disk (ten streams at once read up to half their bytes so).
        if self.cache.unread() >= self.prefetcher.slots.value:
            return False
        return self.prefetcher.start(lambda: self.cache.read(name, 0, 0, fetch, size=size, origin=origin))

    async def readlink(self, path: Path) -> str:
        info = await self._lookup(path)
        if info is not None and info.link_target is not None:
            return info.link_target
        if info is None or kind(self.attributes.kept(info)) != stat.S_IFLNK:
            raise OSError(errno.EINVAL, "not a symlink")
        piece = self.piece(path, info, 0, self.cache.block_size)  # s3fs's: the target is the body
        return os.fsdecode(bytes(await self.cache.read(piece.name, 0, piece.size, piece.fetch, size=piece.size,
                                                       origin=piece.origin)))

    # Extended attributes: a file's or directory's own (user.*), and read-only ones of fsmount's

    async def getxattr(self, path: Path, name: str) -> bytes:
        if name in OWN_XATTRS:
            return await self._own_xattr(path, name)
        value = (await self.xattrs(path)).get(name) if name.startswith(USER_XATTRS) else None
        if value is None:
            raise OSError(errno.ENODATA, "no such attribute")
        return decode_value(value)

    async def listxattr(self, path: Path) -> list[str]:
        own = [] if await self._lookup(path) is None else list(OWN_XATTRS)
        return list(await self.xattrs(path)) + own

    async def _own_xattr(self, path: Path, name: str) -> bytes:
        """One of fsmount's read-only attributes of the object at PATH."""
        info = await self._lookup(path)
        if info is None or info.version.startswith(STAGED_VERSION):
            raise OSError(errno.ENODATA, "not an object in the store (yet)")
        if name == OWN_XATTRS[2] and info.content_type is None and not self.store.content_addressed:
            info = await self.store.stat(info.key)
        value = {OWN_XATTRS[0]: info.version.strip('"'), OWN_XATTRS[1]: self.store.source_url(info),
                 OWN_XATTRS[2]: info.content_type, OWN_XATTRS[3]: str(self._cached_bytes(info))}[name]
        if value is None:
            raise OSError(errno.ENODATA, "the store names none")
        return value.encode()

    def _cached_bytes(self, info: ObjectInfo) -> int:
        """Bytes of INFO in the block cache, or on their way to its disk."""
        block_size = self.cache.block_size
        names = ((index, self.block(info, index)) for index in range(-(-info.size // block_size)))
        return sum(min(block_size, info.size - index * block_size) for index, name in names
                   if self.cache.filling(name) or self.cache.contains(name))

    async def xattrs(self, path: Path) -> dict[str, str]:
        """The extended attributes of PATH (name -> base64 value), learning its metadata if need be."""
        info = await self._lookup(path)
        if info is None:
            return xattrs_in(self.attributes.of_marker(self.tree.dir_prefix(path)))
        if not self.attributes.known(info) and not self.store.lists_metadata and info.link_target is None:
            stored = await self.store.stat(info.key)
            self.attributes.learn(stored)
            info = stored
        return xattrs_in(self.attributes.kept(info))

    async def statvfs(self):
        return None

    def block(self, info: ObjectInfo, index: int, tag: str = "") -> str:
        """The cache name of piece INDEX of the object; TAG keeps chunks apart from blocks. Content by CID
        is cached by CID alone: the same file under any path or root is one."""
        key = "" if self.store.content_addressed else info.key
        return block_name(self.store.identity, key, info.version, f"{tag}{index}")

    def piece(self, path: Path, info: ObjectInfo, index: int, size: int, tag: str = "") -> "Piece":
        """Piece INDEX of SIZE bytes of the object: its cache name, its fetch, its length and its origin."""
        name = self.block(info, index, tag)
        length = max(0, min(size, info.size - index * size))  # as the listing says: a range no longer than the object

        async def fetch():
            try:
                return await self.store.read(info.key, index * size, length, info.version)
            except PreconditionFailed:
                self.tree.forget_stat(path)
                log.info("%s changed while open; its old version is gone", info.key)
                raise OSError(errno.ESTALE, "the object changed") from None

        return Piece(name, fetch, length, (self.store.identity, info.key))

    def fill_whole(self, path: Path, info: ObjectInfo, store_pages=None):
        """Fills every block of an object read at random, a few at a time, once per version. With
        STORE_PAGES (see FileHandle) each block also goes into the kernel's pages of the file, so the
        random reads that follow are answered by the kernel alone."""
        if info.size > self.whole_object_limit or (info.key, info.version) in self._whole:
            return
        self._whole.put((info.key, info.version), True)
        feed = None
        if store_pages is not None and info.size <= self.memory.page_feed and self.may_feed(path):
            feed = self._feeds[path] = PageFeed(info.version, store_pages)
        block_size = self.cache.block_size

        async def fill_one(index, name, fetch, size, origin, limit, nursery):
            try:
                async with limit:
                    if feed is None or feed.stopped:
                        if not self.cache.contains(name):
                            await self.prefetcher.fill(
                                lambda: self.cache.read(name, 0, 0, fetch, page_cache=True, size=size, origin=origin))
                        return
                    data = await self.prefetcher.fill(
                        lambda: self.cache.read(name, 0, block_size, fetch, size=size, origin=origin))
                    await feed.store(index * block_size, data)
            except Exception as error:  # the first failure stops the rest: the store may be down
                log.info("filling %s in the background stopped: %s", info.key, error,
                         exc_info=not isinstance(error, OSError))
                self._whole.pop((info.key, info.version))  # a later random read tries again
                nursery.cancel_scope.cancel()

        async def fill_blocks():
            limit = trio.CapacityLimiter(self.memory.whole_object_fill_slots)
            async with trio.open_nursery() as nursery:
                for index in range((info.size + block_size - 1) // block_size):
                    nursery.start_soon(fill_one, index, *self.piece(path, info, index, block_size), limit, nursery)
            if feed is not None and self._feeds.get(path) is feed:
                del self._feeds[path]

        self.prefetcher.spawn(fill_blocks)

    def may_feed(self, path: Path) -> bool:
        """Whether the kernel's pages of PATH may be filled by the daemon: not while it is being written."""
        return True

    async def stop_feeding(self, *paths: Path):
        """Stops putting pages of the files at or below PATHS into the kernel, and waits for a store under
        way: after it, the kernel's pages of those files change only by what programs do."""
        for path in [path for path in self._feeds if any(path[:len(stop)] == stop for stop in paths)]:
            await self._feeds.pop(path).stop()

    def pages_hold(self, path: Path, version: str):
        """The kernel's pages of PATH hold the bytes of VERSION (this daemon stored them): an open keeps them."""
        self._opened_versions.put(path, version)

    def gone(self, path: Path):
        """This daemon removed the name at PATH: it is missing, and an open there keeps no pages."""
        self.tree.gone(path)
        self._opened_versions.pop(path)

    def forget_below(self, *paths: Path):
        """This daemon moved every name at or under PATHS."""
        self.tree.forget_below(*paths)
        self.forget_pages(*paths)

    def forget_pages(self, *paths: Path):
        """The kernel's pages of the files at or under PATHS are dropped at their next open (their blocks left the
        cache: a reader expects the store's bytes again)."""
        self._opened_versions.pop_where(lambda cached: any(cached[:len(path)] == path for path in paths))

    async def _list_again(self, path: Path):
        listing, offset = ObjectListing(self, path, fresh=True), 0
        try:
            while batch := await listing.entries(offset):
                offset = batch[-1].offset
        finally:
            await listing.close()

    def local_entries(self, path: Path) -> dict[str, ObjectInfo]:
        """Files of directory PATH that only this daemon knows yet, as they are now (staged ones)."""
        return {}
