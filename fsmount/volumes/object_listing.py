"""ObjectListing: an object volume's directory handle, which streams a prefix's listing a page at a time or serves a kept one."""
import typing

from fsmount.stores.aio import TrioStore
from fsmount.stores.base import ObjectInfo
from fsmount.volumes.base import Attrs, DirEntry, DirHandle, Path, rest_of_batch
from fsmount.volumes.object_attributes import ObjectAttributes
from fsmount.volumes.object_tree import ObjectTree, valid_name

_BATCH = 512  # entries made at once from a kept listing


class ListedVolume(typing.Protocol):
    """What a listing handle uses of its volume (an ObjectVolume, fsmount/volumes/objects.py, which makes it)."""
    store: TrioStore
    tree: ObjectTree
    attributes: ObjectAttributes

    def attrs(self, info: ObjectInfo | None, path: Path) -> Attrs: ...

    def local_entries(self, path: Path) -> dict[str, ObjectInfo]: ...

    async def sync(self, path: Path): ...


class ObjectListing(DirHandle):
    """Streams a prefix's listing a page at a time, or serves it from the volume's listing cache;
    offsets count entries from the start."""

    def __init__(self, volume: ListedVolume, path: Path, fresh: bool = False):
        """FRESH: from the store, whatever listing is kept."""
        self.volume = volume
        self.path = path
        self._local = volume.local_entries(path)
        self._cached = None if fresh else volume.tree.cached_listing(path)
        if self._cached is not None and self._local:
            self._cached = [(name, self._local.get(name, info)) for name, info in self._cached]
            self._cached += self._unlisted({name for name, _ in self._cached})
        self._pages = None
        self._batch: list[DirEntry] = []
        self._position = 0
        self._seen: dict[str, ObjectInfo | None] = {}  # what the store listed so far, in its order
        self._listed = False  # every page has been read
        self._since = 0  # when the listing under way began, as the volume's tree counts its changes

    async def entries(self, offset: int) -> list[DirEntry]:
        rest = rest_of_batch(self._batch, offset)
        if rest is not None:
            return rest
        if self._cached is not None:
            self._batch = [DirEntry(name, self.volume.attrs(info, self.path + (name,)), index) for index, (name, info)
                           in enumerate(self._cached[offset:offset + _BATCH], start=offset + 1)]
            return self._batch
        if self._pages is None or offset < self._position:
            self._pages = aiter(self.volume.store.list(self.volume.tree.dir_prefix(self.path)))
            self._position = 0
            self._end_stream()
            self._seen = {}
            self._since = self.volume.tree.listing_streams(self.path, self._seen)
            self._listed = False
        while not self._listed:
            batch = await self._next_page()
            if batch is None:
                self._listed = True
                self._end_stream(kept=self.volume.tree.remember_listing(self.path, list(self._seen.items()),
                                                                        self._since))
                batch = self._last_batch()
            batch = [entry for entry in batch if entry.offset > offset]
            if batch:
                self._batch = batch
                return batch
        return []

    async def fsync(self, datasync: bool):
        await self.volume.sync(self.path)

    async def close(self):
        self._end_stream()

    def _end_stream(self, kept: bool = False):
        """The listing under way is over, read whole and KEPT by the volume, or not."""
        if self._pages is not None:
            self.volume.tree.listing_ended(self.path, self._seen, kept, self._since)

    def _unlisted(self, listed: set[str]) -> list[tuple[str, ObjectInfo]]:
        return sorted((name, info) for name, info in self._local.items() if name not in listed)

    def _last_batch(self) -> list[DirEntry]:
        """The local files the store did not list, after everything it did."""
        entries = []
        for name, info in self._unlisted(set(self._seen)):
            self._position += 1
            entries.append(DirEntry(name, self.volume.attrs(info, self.path + (name,)), self._position))
        return entries

    async def _next_page(self) -> list[DirEntry] | None:
        page = await anext(self._pages, None)
        if page is None:
            return None
        base = self.volume.tree.dir_prefix(self.path)
        directories = {p[len(base):-1] for p in page.prefixes}
        named: dict[str, ObjectInfo | None] = {}
        self.volume.attributes.recall(page.objects)
        for info in page.objects:
            name = info.key[len(base):]
            if "/" not in name and name not in directories and self.volume.tree.shows(info.key):
                named[name] = info
        for name in directories:
            named[name] = None
        entries = []
        for name in sorted(named):
            self._position += 1
            if not valid_name(name):
                continue
            self._seen[name] = named[name]
            self.volume.tree.listed(self.path + (name,))
            attrs = self.volume.attrs(self._local.get(name, named[name]), self.path + (name,))
            entries.append(DirEntry(name, attrs, self._position))
        return entries
