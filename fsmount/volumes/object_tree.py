"""ObjectTree: an object volume's names: which keys they are, what is known of each (object, directory or missing) and of each directory's listing.

It alone keeps those caches. Attributes and listings are trusted for `metadata_ttl`, misses for a
shorter while; the daemon's own changes keep them true (remember, made, gone, relist), and a listing
that was under way from the store across such a change of its directory is not kept. A whole
listing is also kept on disk (fsmount/cache/listings.py): after a remount it is used at once, and
listed again in the background once older than `metadata_ttl`.
"""
import bisect
import collections
import contextlib
import functools
import re
from collections.abc import Awaitable, Callable

import trio

from fsmount.cache.listings import KnownListings
from fsmount.cache.metadata import ExpiringCache
from fsmount.memory import CHANGES_KEPT, LISTED_ENTRIES_KEPT, LISTING_ENTRIES_KEPT, NAMES_KEPT
from fsmount.stores.aio import TrioStore
from fsmount.stores.base import NotFound, ObjectInfo, raise_store_error_of
from fsmount.volumes.base import Path
from fsmount.volumes.object_attributes import ObjectAttributes

_NEGATIVE_TTL = 1.0
_UNKNOWN = object()
GONE = object()

Entries = list[tuple[str, ObjectInfo | None]]  # a directory's, sorted by name; None: a directory


def valid_name(name: str) -> bool:
    """Whether NAME can be a file's name: a key with another segment is not shown."""
    return name not in ("", ".", "..") and "\0" not in name


def _entry_name(entry: tuple[str, ObjectInfo | None]) -> str:
    return entry[0]


def find(entries: Entries, name: str) -> tuple[int, bool]:
    """Where NAME is in ENTRIES, or would go, and whether it is there."""
    position = bisect.bisect_left(entries, name, key=_entry_name)
    return position, position < len(entries) and entries[position][0] == name


def key_prefix(prefix: str) -> str:
    """The keys of a volume of PREFIX (in its source) start with this: "" or a prefix ending in "/"."""
    return prefix.strip("/") + "/" if prefix.strip("/") else ""


class ObjectTree:
    def __init__(self, store: TrioStore, prefix: str, attributes: ObjectAttributes, metadata_ttl: float,
                 key_filter: re.Pattern | None, known_listings: KnownListings | None,
                 list_again: Callable[[Path], Awaitable[None]], spawn: Callable):
        """KEY_FILTER: only objects whose full key it matches (re.search) are shown. KNOWN_LISTINGS: where whole
        listings are kept across mounts (content-addressed stores keep their own). LIST_AGAIN(path) lists a
        directory anew, in a task SPAWN starts, when its listing on disk is older than the TTL."""
        self.store = store
        self.prefix = key_prefix(prefix)
        self.attributes = attributes
        self.metadata_ttl = metadata_ttl
        self.key_filter = key_filter
        self.known_listings = None if store.content_addressed else known_listings
        # Listings on disk are the store's as this volume shows them: a filter shows fewer objects.
        self._listed_as = store.identity + (f"\0{key_filter.pattern}" if key_filter is not None else "")
        self._list_again = list_again
        self._spawn = spawn
        self._stats = ExpiringCache(metadata_ttl, NAMES_KEPT)  # path -> info; None: a directory
        self._missing = ExpiringCache(_NEGATIVE_TTL, NAMES_KEPT)
        self._listings = ExpiringCache(metadata_ttl, LISTED_ENTRIES_KEPT, weigh=len)  # path -> Entries
        # directory -> {name: info} of its listing under way, so far: what a lookup finds there costs no request,
        # and less memory a name than a remembered attribute
        self._streaming: dict[Path, dict[str, ObjectInfo | None]] = {}
        # A listing under way is kept at its end only if this daemon changed its directory in none of the ways
        # relist and forget_listings follow since it began: the store may have answered before the change.
        self._changes = 0  # changes of directories' listings, counted
        # (directory, whether every directory under it changed too) -> the count at its last change; the latest last
        self._changed: collections.OrderedDict[tuple[Path, bool], int] = collections.OrderedDict()
        self._changed_before = 0  # every change _changed no longer holds came at this count or before

    def key(self, path: Path) -> str:
        return self.prefix + "/".join(path)

    def dir_prefix(self, path: Path) -> str:
        return self.key(path) + "/" if path else self.prefix

    def path_of(self, key: str) -> Path:
        return tuple(key[len(self.prefix):].split("/"))

    def shows(self, key: str) -> bool:
        return self.key_filter is None or self.key_filter.search(key) is not None

    async def lookup(self, path: Path) -> ObjectInfo | None:
        """The object at PATH, or None for a directory; NotFound when neither."""
        if not path:
            return None
        if any(not valid_name(part) for part in path):
            raise NotFound(f"not a valid name: {'/'.join(path)}")
        info = self._stats.get(path, _UNKNOWN)
        if info is not _UNKNOWN:
            return info
        if path in self._missing:
            raise NotFound(self.key(path))
        listing = self.cached_listing(path[:-1])
        if listing is not None:  # the whole directory is known
            position, found = find(listing, path[-1])
            if not found:
                raise NotFound(self.key(path))
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
                found["file"] = await self.store.stat(self.key(path))

        try:
            async with trio.open_nursery() as nursery:  # one round trip, not two
                nursery.start_soon(directory)
                nursery.start_soon(file)
        except BaseExceptionGroup as group:
            raise_store_error_of(group)
        info = None if found["directory"] else found.get("file")
        if found["directory"] or (info is not None and self.shows(info.key)):
            self.remember(path, info)
            return info
        self._missing.put(path, True)
        raise NotFound(self.key(path))

    async def _learn_marker(self, listed: ObjectInfo):
        """Learns a directory's attributes from its marker LISTED, with a HEAD where listings show no metadata."""
        if self.store.lists_metadata:
            self.attributes.learn_marker(listed.key, listed.metadata)
            return
        with contextlib.suppress(NotFound):
            self.attributes.learn_marker(listed.key, (await self.store.stat(listed.key)).metadata)

    def remember(self, path: Path, info: ObjectInfo | None):
        self._stats.put(path, info)
        self._missing.pop(path)
        if info is not None:
            self.attributes.learn(info)

    def forget_stat(self, path: Path):
        self._stats.pop(path)

    def remembered(self, path: Path) -> ObjectInfo | None:
        """What is known of the object at PATH, while it is fresh."""
        return self._stats.get(path, None)

    def made(self, path: Path):
        """This daemon made a name at PATH: a miss kept for it no longer holds."""
        self._missing.pop(path)

    def gone(self, path: Path):
        """This daemon removed the name at PATH: what was known of it goes, and it is known to be missing."""
        self._stats.pop(path)
        self._missing.put(path, True)

    def forget_below(self, *paths: Path):
        """What is known of every name at or under PATHS goes: this daemon moved them."""
        for cache in (self._stats, self._missing):
            cache.pop_where(lambda cached: any(cached[:len(path)] == path for path in paths))

    def listing_in_memory(self, path: Path) -> Entries | None:
        return self._listings.get(path)

    def cached_listing(self, path: Path) -> Entries | None:
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
            self._spawn(functools.partial(self._list_again, path))
        return listing

    def remember_listing(self, path: Path, entries: Entries, since: int | None = None) -> bool:
        """Keeps a directory's listing, sorted by name (a store lists in key order, where `a/` comes after
        `a.b`), unless it is too long to, or (SINCE: what listing_streams gave as it began) this daemon changed
        the directory since the listing began; whether it did."""
        if len(entries) > LISTING_ENTRIES_KEPT or (since is not None and self._changed_since(path, since)):
            return False
        entries.sort(key=_entry_name)
        self._listings.put(path, entries)
        if self.known_listings is not None:
            self.known_listings.keep(self._listed_as, self.dir_prefix(path), entries)
        return True

    def listing_streams(self, path: Path, seen: dict[str, ObjectInfo | None]) -> int:
        """A listing of directory PATH is under way; SEEN holds what it gave so far. What it returns tells
        remember_listing and listing_ended which changes of this daemon's the listing may have missed."""
        self._streaming[path] = seen
        return self._changes

    def _changed_since(self, path: Path, since: int) -> bool:
        """Whether this daemon changed the listing of directory PATH after the count SINCE."""
        if self._changed_before > since:
            return True
        return (self._changed.get((path, False), 0) > since
                or any(self._changed.get((path[:length], True), 0) > since for length in range(len(path) + 1)))

    def _listing_changed(self, path: Path, below: bool = False):
        """This daemon changed the listing of directory PATH, and with BELOW those of every directory under it."""
        self._changes += 1
        self._changed.pop((path, below), None)
        self._changed[path, below] = self._changes
        if len(self._changed) > CHANGES_KEPT:
            self._changed_before = self._changed.popitem(last=False)[1]

    def listed(self, path: Path):
        """A listing under way gave the name PATH."""
        if len(self._missing):
            self._missing.pop(path)

    def listing_ended(self, path: Path, seen: dict[str, ObjectInfo | None], kept: bool, since: int):
        """The listing of directory PATH that gave SEEN, begun at SINCE (listing_streams), is over; unless KEPT,
        what it gave is remembered name by name, if this daemon changed the directory in none of its ways since."""
        if self._streaming.get(path) is seen:
            del self._streaming[path]
            if not kept and not self._changed_since(path, since):
                for name, info in seen.items():
                    self.remember(path + (name,), info)

    def forget_listings(self, path: Path, below: bool = False):
        """Drops the listing of directory PATH, and with BELOW those of every directory under it, from memory
        and disk: this daemon changed them in ways a listing cannot follow."""
        self._listing_changed(path, below)
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
        self._listing_changed(path[:-1])
        if self.known_listings is not None:
            self.known_listings.forget(self._listed_as, self.dir_prefix(path[:-1]))
        listing = self._listings.get(path[:-1])
        if listing is None:
            return
        entries = list(listing)
        position, found = find(entries, path[-1])
        if found:
            del entries[position]
        if info is not GONE:
            entries.insert(position, (path[-1], info))
        self._listings.update(path[:-1], entries)
