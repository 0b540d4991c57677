"""ObjectVolume: an object store seen as a tree. Prefixes become directories; data comes through the block cache.

Names: a key with an empty, "." or ".." segment cannot be a file name and is not shown; a name that
is both an object and a prefix ("a" and "a/b") shows as the directory. A `dir/` marker object makes
an empty directory exist. Attributes and listings are trusted for `metadata_ttl`, misses for a
shorter while. A whole listing is also kept on disk (fsmount/cache/listings.py): after a remount it
is used at once, and listed again in the background once older than `metadata_ttl`. Owners, modes
and times come from ObjectAttributes (fsmount/volumes/object_attributes.py); a symlink is resolved by
the kernel in the reader's view. Its handles are ObjectFile (fsmount/volumes/object_reads.py) and
ObjectListing (fsmount/volumes/object_listing.py).
"""
import bisect
import contextlib
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
from fsmount.stores.aio import TrioStore
from fsmount.stores.base import NotFound, ObjectInfo, PreconditionFailed
from fsmount.volumes.base import Attrs, DirHandle, FileHandle, Path, Volume
from fsmount.volumes.object_attributes import ObjectAttributes, kind
from fsmount.volumes.object_listing import ObjectListing, valid_name
from fsmount.volumes.object_reads import ObjectFile, PageFeed
from fsmount.volumes.posix import OWN_XATTRS, STAGED_VERSION, USER_XATTRS, decode_value, xattrs_in
from fsmount.volumes.prefetch import DirectorySweeps, Piece, Prefetcher

log = logging.getLogger(__name__)

_NEGATIVE_TTL = 1.0
_KERNEL_TTL_MAX = 86400.0  # what the kernel is told of entries that never expire (IPFS)
# What the metadata caches keep at most: memory stays bounded however many objects a volume has.
_NAMES_KEPT = 100_000
_LISTED_ENTRIES_KEPT = 200_000  # of every listing kept in memory, in all
_LISTING_CACHE_ENTRIES = 120_000  # a longer listing streams from the store every time
# An object read at random is filled whole in the background when it is at most this share of the cache.
_WHOLE_OBJECT_SHARE = 4
_WHOLE_OBJECT_MAX = 4 * 2**30
_WHOLE_OBJECT_FILLS = 4
_AHEAD_SHARE = 4  # of the cache, what a volume's sweeps may fetch ahead of their readers
_PAGE_FEED_SHARE = 8  # an object filled whole goes into the kernel's pages too when at most this share of memory
_UNKNOWN = object()
GONE = object()


def _entry_name(entry: tuple[str, ObjectInfo | None]) -> str:
    return entry[0]


def _find(entries: list[tuple[str, ObjectInfo | None]], name: str) -> tuple[int, bool]:
    """Where NAME is in ENTRIES (sorted by name), or would go, and whether it is there."""
    position = bisect.bisect_left(entries, name, key=_entry_name)
    return position, position < len(entries) and entries[position][0] == name


class ObjectVolume(Volume):
    has_xattrs = True
    def __init__(self, store: TrioStore, prefix: str, cache: BlockCache, known_attributes: KnownAttributes,
                 prefetcher: Prefetcher, metadata_ttl: float, read_ahead: int, uid: int, gid: int, read_only: bool,
                 key_filter: re.Pattern | None = None, known_listings: KnownListings | None = None):
        """KEY_FILTER: only objects whose full key it matches (re.search) are shown. KNOWN_LISTINGS: where whole
        listings are kept across mounts (content-addressed stores keep their own)."""
        self.store = store
        self.known_listings = None if store.content_addressed else known_listings
        # Listings on disk are the store's as this volume shows them: a filter shows fewer objects.
        self._listed_as = store.identity + (f"\0{key_filter.pattern}" if key_filter is not None else "")
        self.key_filter = key_filter
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.cache = cache
        self.prefetcher = prefetcher
        self.metadata_ttl = metadata_ttl
        self.kernel_ttl = min(metadata_ttl, _KERNEL_TTL_MAX)
        self.read_ahead_blocks = max(1, read_ahead // cache.block_size)
        self.attributes = ObjectAttributes(store.identity, store.lists_metadata, known_attributes, uid, gid, read_only)
        self._stats = ExpiringCache(metadata_ttl, _NAMES_KEPT)  # path -> info; None: a directory
        self._missing = ExpiringCache(_NEGATIVE_TTL, _NAMES_KEPT)
        self._listings = ExpiringCache(metadata_ttl, _LISTED_ENTRIES_KEPT, weigh=len)  # path -> sorted [(name, info)]
        # directory -> {name: info} of its listing under way, so far: what a lookup finds there costs no request,
        # and ~200 bytes less a name than a remembered attribute (100,000 names: ~24 MiB)
        self._streaming: dict[Path, dict[str, ObjectInfo | None]] = {}
        self._sweeps = DirectorySweeps(prefetcher, self._fill_ahead_of_readers, cache.max_size // _AHEAD_SHARE)
        self._opened_versions = ExpiringCache(math.inf, _NAMES_KEPT)
        self._whole = ExpiringCache(math.inf, _NAMES_KEPT)  # (key, version) of objects filled, or being filled, whole
        self.whole_object_limit = min(_WHOLE_OBJECT_MAX, cache.max_size // _WHOLE_OBJECT_SHARE)
        self.page_feed_limit = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // _PAGE_FEED_SHARE
        self._feeds: dict[Path, PageFeed] = {}

    async def start(self, nursery: trio.Nursery):
        await self.store.open()

    async def close(self):
        await self.store.close()

    def _key(self, path: Path) -> str:
        return self.prefix + "/".join(path)

    def dir_prefix(self, path: Path) -> str:
        return self._key(path) + "/" if path else self.prefix

    def attrs(self, info: ObjectInfo | None, path: Path) -> Attrs:
        """The attributes of the object INFO at PATH, or of the directory PATH (INFO None)."""
        if info is None:
            return self.attributes.of_directory(path, self.dir_prefix(path))
        return self.attributes.of_object(info)

    def remember(self, path: Path, info: ObjectInfo | None):
        self._stats.put(path, info)
        self._missing.pop(path)
        if info is not None:
            self.attributes.learn(info)

    async def _lookup(self, path: Path) -> ObjectInfo | None:
        """The object at PATH, or None for a directory; NotFound when neither."""
        if not path:
            return None
        if any(not valid_name(part) for part in path):
            raise NotFound(f"not a valid name: {'/'.join(path)}")
        info = self._stats.get(path, _UNKNOWN)
        if info is not _UNKNOWN:
            return info
        if path in self._missing:
            raise NotFound(self._key(path))
        listing = self.cached_listing(path[:-1])
        if listing is not None:  # the whole directory is known
            position, found = _find(listing, path[-1])
            if not found:
                raise NotFound(self._key(path))
            info = listing[position][1]
            self.remember(path, info)
            return info
        streaming = self._streaming.get(path[:-1])
        if streaming is not None and path[-1] in streaming:
            info = streaming[path[-1]]
            self.remember(path, info)
            return info
        found = {}

        async def directory():
            marker = self.dir_prefix(path)
            page = await self.store.list_page(marker, page_size=1)
            found["directory"] = bool(page.objects or page.prefixes)
            if page.objects and page.objects[0].key == marker:
                await self._learn_marker(page.objects[0])

        async def file():
            with contextlib.suppress(NotFound):
                found["file"] = await self.store.stat(self._key(path))

        async with trio.open_nursery() as nursery:  # one round trip, not two
            nursery.start_soon(directory)
            nursery.start_soon(file)
        info = None if found["directory"] else found.get("file")
        if found["directory"] or (info is not None and self.shows(info.key)):
            self.remember(path, info)
            return info
        self._missing.put(path, True)
        raise NotFound(self._key(path))

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
        entries = self._listings.get(directory)
        if entries is None:
            return
        position, found = _find(entries, path[-1])
        if found:
            self._sweeps.read_whole(directory, position, self.block(info, 0), len(entries),
                                    functools.partial(self._first_piece_to_fetch, directory, entries))

    def _first_piece_to_fetch(self, directory: Path, entries: list[tuple[str, ObjectInfo | None]],
                              position: int) -> Piece | None:
        name, info = entries[position]
        if info is None or info.size == 0 or info.link_target is not None:
            return None
        piece = self.piece(directory + (name,), info, 0, self.cache.block_size)
        return None if self.cache.checked(piece.name) or self.cache.filling(piece.name) else piece

    async def _fill_ahead_of_readers(self, piece: Piece):
        await self.cache.read(piece.name, 0, 0, piece.fetch, size=piece.size)

    def fill_ahead(self, name: str, fetch, size: int) -> bool:
        """Starts filling block NAME in the background unless this process has it (one on disk is checked
        there, ahead of its reader); False when no slot is free."""
        if self.cache.checked(name):
            return True
        # Blocks filled ahead and not read yet keep their share of memory: starting more would push them
        # out, and their readers would read them from disk (ten streams at once read up to half their bytes so).
        if self.cache.unread() >= self.prefetcher.slots.value:
            return False
        return self.prefetcher.start(lambda: self.cache.read(name, 0, 0, fetch, size=size))

    async def _learn_marker(self, listed: ObjectInfo):
        """Learns a directory's attributes from its marker LISTED, with a HEAD where listings show no metadata."""
        if self.store.lists_metadata:
            self.attributes.learn_marker(listed.key, listed.metadata)
            return
        with contextlib.suppress(NotFound):
            self.attributes.learn_marker(listed.key, (await self.store.stat(listed.key)).metadata)

    async def readlink(self, path: Path) -> str:
        info = await self._lookup(path)
        if info is not None and info.link_target is not None:
            return info.link_target
        if info is None or kind(self.attributes.kept(info)) != stat.S_IFLNK:
            raise OSError(errno.EINVAL, "not a symlink")
        name, fetch, size = self.piece(path, info, 0, self.cache.block_size)  # s3fs's: the target is the body
        return os.fsdecode(bytes(await self.cache.read(name, 0, size, fetch, size=size)))

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
            return xattrs_in(self.attributes.of_marker(self.dir_prefix(path)))
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
        """Piece INDEX of SIZE bytes of the object: its cache name, its fetch and its length."""
        name = self.block(info, index, tag)
        length = max(0, min(size, info.size - index * size))  # as the listing says: a range no longer than the object

        async def fetch():
            try:
                return await self.store.read(info.key, index * size, length, info.version)
            except PreconditionFailed:
                self.forget_stat(path)
                log.info("%s changed while open; its old version is gone", info.key)
                raise OSError(errno.ESTALE, "the object changed") from None

        return Piece(name, fetch, length)

    def fill_whole(self, path: Path, info: ObjectInfo, store_pages=None):
        """Fills every block of an object read at random, a few at a time, once per version. With
        STORE_PAGES (see FileHandle) each block also goes into the kernel's pages of the file, so the
        random reads that follow are answered by the kernel alone."""
        if info.size > self.whole_object_limit or (info.key, info.version) in self._whole:
            return
        self._whole.put((info.key, info.version), True)
        feed = None
        if store_pages is not None and info.size <= self.page_feed_limit and self.may_feed(path):
            feed = self._feeds[path] = PageFeed(info.version, store_pages)
        block_size = self.cache.block_size

        async def fill_one(index, name, fetch, size, limit, nursery):
            try:
                async with limit:
                    if feed is None or feed.stopped:
                        if not self.cache.contains(name):
                            await self.prefetcher.fill(
                                lambda: self.cache.read(name, 0, 0, fetch, page_cache=True, size=size))
                        return
                    data = await self.prefetcher.fill(lambda: self.cache.read(name, 0, block_size, fetch, size=size))
                    await feed.store(index * block_size, data)
            except Exception as error:  # the first failure stops the rest: the store may be down
                log.info("filling %s in the background stopped: %s", info.key, error,
                         exc_info=not isinstance(error, OSError))
                self._whole.pop((info.key, info.version))  # a later random read tries again
                nursery.cancel_scope.cancel()

        async def fill_blocks():
            limit = trio.CapacityLimiter(_WHOLE_OBJECT_FILLS)
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

    def shows(self, key: str) -> bool:
        return self.key_filter is None or self.key_filter.search(key) is not None

    def forget_stat(self, path: Path):
        self._stats.pop(path)

    def remembered(self, path: Path) -> ObjectInfo | None:
        """What is known of the object at PATH, while it is fresh."""
        return self._stats.get(path, None)

    def made(self, path: Path):
        """This daemon made a name at PATH: a miss kept for it no longer holds."""
        self._missing.pop(path)

    def pages_hold(self, path: Path, version: str):
        """The kernel's pages of PATH hold the bytes of VERSION (this daemon stored them): an open keeps them."""
        self._opened_versions.put(path, version)

    def gone(self, path: Path):
        """This daemon removed the name at PATH: what was known of it goes, and it is known to be missing."""
        self._stats.pop(path)
        self._opened_versions.pop(path)
        self._missing.put(path, True)

    def forget_below(self, *paths: Path):
        """What is known of every name at or under PATHS goes: this daemon moved them."""
        for cache in (self._stats, self._opened_versions, self._missing):
            cache.pop_where(lambda cached: any(cached[:len(path)] == path for path in paths))

    def cached_listing(self, path: Path) -> list[tuple[str, ObjectInfo | None]] | None:
        """Directory PATH's whole listing, if one is kept: in memory, else on disk (an earlier mount's, which
        is listed again in the background once older than the TTL)."""
        listing = self._listings.get(path)
        if listing is not None or self.known_listings is None:
            return listing
        known = self.known_listings.recall(self._listed_as, self.dir_prefix(path))
        if known is None:
            return None
        age, listing = known
        self._listings.put(path, listing)
        self.attributes.recall([info for _, info in listing if info is not None])
        if age >= self.metadata_ttl:
            self.prefetcher.spawn(functools.partial(self._list_again, path))
        return listing

    async def _list_again(self, path: Path):
        listing, offset = ObjectListing(self, path, fresh=True), 0
        try:
            while batch := await listing.entries(offset):
                offset = batch[-1].offset
        finally:
            await listing.close()

    def remember_listing(self, path: Path, entries: list[tuple[str, ObjectInfo | None]]) -> bool:
        """Keeps a directory's listing, sorted by name (a store lists in key order, where `a/` comes after
        `a.b`), unless it is too long to; whether it did."""
        if len(entries) > _LISTING_CACHE_ENTRIES:
            return False
        entries.sort(key=_entry_name)
        self._listings.put(path, entries)
        if self.known_listings is not None:
            self.known_listings.keep(self._listed_as, self.dir_prefix(path), entries)
        return True

    def listing_streams(self, path: Path, seen: dict[str, ObjectInfo | None]):
        """A listing of directory PATH is under way; SEEN holds what it gave so far."""
        self._streaming[path] = seen

    def listed(self, path: Path):
        """A listing under way gave the name PATH."""
        if len(self._missing):
            self._missing.pop(path)

    def listing_ended(self, path: Path, seen: dict[str, ObjectInfo | None], kept: bool):
        """The listing of directory PATH that gave SEEN is over; unless KEPT, what it gave is remembered name by name."""
        if self._streaming.get(path) is seen:
            del self._streaming[path]
            if not kept:
                for name, info in seen.items():
                    self.remember(path + (name,), info)

    def forget_listings(self, path: Path, below: bool = False):
        """Drops the listing of directory PATH, and with BELOW those of every directory under it, from memory
        and disk: this daemon changed them in ways a listing cannot follow."""
        if below:
            self._listings.pop_where(lambda cached: cached[:len(path)] == path)
        else:
            self._listings.pop(path)
        if self.known_listings is not None:
            self.known_listings.forget(self._listed_as, self.dir_prefix(path), below)

    def relist(self, path: Path, info=GONE):
        """Keeps the cached listing of PATH's directory true to a change this daemon made: PATH holds
        INFO now (None: a directory), or nothing. Readers of the listing keep the one they had; the one on
        disk goes, so a remount lists the directory again."""
        if self.known_listings is not None:
            self.known_listings.forget(self._listed_as, self.dir_prefix(path[:-1]))
        listing = self._listings.get(path[:-1])
        if listing is None:
            return
        entries = list(listing)
        position, found = _find(entries, path[-1])
        if found:
            del entries[position]
        if info is not GONE:
            entries.insert(position, (path[-1], info))
        self._listings.update(path[:-1], entries)

    def entries_changed(self, directory: Path):
        self.attributes.entries_changed(directory)

    def local_entries(self, path: Path) -> dict[str, ObjectInfo]:
        """Files of directory PATH that only this daemon knows yet, as they are now (staged ones)."""
        return {}
