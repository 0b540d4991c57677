"""IpfsStore: a UnixFS tree (ipfs://CID[/path]) as read-only objects, every block checked against its CID before use.

Blocks come raw, from a node's RPC API (`POST /api/v0/block/get`) or a trustless gateway
(`GET /ipfs/CID?format=raw`), through the RangeFetcher from worker threads as every store's data
does; fsmount walks the DAG itself, so no byte it serves is one it did not hash. A block that does
not match its CID is EIO and a log line.

Keys are paths below the root, versions are CIDs: nothing ever changes, so nothing is revalidated.
Directory listings (names, CIDs, kinds, sizes, times) are written beside the block cache, one file
per directory CID, and a remount reads them instead of the network; opening one file needs only
the directories above it, not a listing of its siblings. File data is the block cache's; the
other nodes (directories, symlinks, which child of a file covers which bytes) are kept in memory.
"""
import collections
import concurrent.futures
import functools
import json
import logging
import os
import threading
from dataclasses import dataclass

from multiformats import CID

from fsmount.memory import IPFS_LINKS_KEPT, IPFS_LISTED_ENTRIES_KEPT, IPFS_NODE_BYTES_KEPT
from fsmount.stores import unixfs
from fsmount.stores.base import ListPage, NotFound, ObjectInfo, RangeRequest, ReadOnlyStore, Unavailable
from fsmount.stores.ranges import RangeFetcher
from fsmount.stores.retries import RetryPolicy

log = logging.getLogger(__name__)

_RAW_BLOCK = "application/vnd.ipld.raw"
_PAGE = 1000


@dataclass(frozen=True)
class Entry:
    name: str
    cid: str
    kind: str  # unixfs.FILE, DIRECTORY or SYMLINK
    size: int
    mtime_ns: int | None
    target: str | None = None  # a symlink's


class IpfsStore(ReadOnlyStore):
    content_addressed = True
    def __init__(self, root: str, path: str, listing_dir: str, api: str | None = None, gateway: str | None = None,
                 verify: bool | str = True, max_connections: int = 8, retries: RetryPolicy = RetryPolicy()):
        """ROOT: a CID, PATH below it names the volume's top. API: a node's RPC API URL; else GATEWAY: a
        trustless gateway's URL. VERIFY: TLS, for either. LISTING_DIR: where listings are kept across mounts."""
        self.root = unixfs.text(CID.decode(root))
        self.path = tuple(part for part in path.split("/") if part)
        self._listing_dir = listing_dir
        self._api = api
        self._gateway = gateway
        self.fetcher = RangeFetcher(max_connections, verify, retries)
        self._fetches = concurrent.futures.ThreadPoolExecutor(max_connections, thread_name_prefix="ipfs")
        self._top: Entry | None = None
        self._nodes = _Recent(IPFS_NODE_BYTES_KEPT, unixfs.Node.weight)  # CID -> unixfs.Node
        self._listings = _Recent(IPFS_LISTED_ENTRIES_KEPT, len)  # directory CID -> {name: Entry}
        self._links = functools.lru_cache(IPFS_LINKS_KEPT)(self._directory_links)
        self._listing_locks = [threading.Lock() for _ in range(16)]  # one listing of a directory at a time
        self._fetching: dict[str, concurrent.futures.Future] = {}  # CID -> its node, being fetched
        self._fetching_lock = threading.Lock()

    @property
    def identity(self) -> str:
        return "ipfs"  # every IPFS volume's: a CID names the same bytes whichever node or root it came through

    def source_url(self, info: ObjectInfo) -> str:
        return f"ipfs://{info.version}"

    def open(self):
        os.makedirs(self._listing_dir, exist_ok=True)

    def close(self):
        self._fetches.shutdown(wait=False, cancel_futures=True)
        self.fetcher.close()

    def _resolved_top(self) -> Entry:
        """What the source names, found on first use: a node that is down fails reads, not the mount."""
        if self._top is None:
            self._top = self._resolve_top()
        return self._top

    def _resolve_top(self) -> Entry:
        if self._known_listing(self.root) is not None:  # listed on an earlier mount: a directory
            entry = Entry(self.root, self.root, unixfs.DIRECTORY, 0, None)
        else:
            entry = _entry(self.root, self._node(CID.decode(self.root)), self.root)
        for depth, name in enumerate(self.path):
            entry = self._child(entry, name)
            if entry is None:
                raise NotFound(f"ipfs://{self.root}/{'/'.join(self.path[:depth + 1])}: no such file or directory")
        return entry

    def stat(self, key: str, pinned: str | None = None) -> ObjectInfo:
        entry = self._entry(key)
        if entry is None or entry.kind == unixfs.DIRECTORY:
            raise NotFound(key)
        return self._info(key, entry)

    def _info(self, key: str, entry: Entry) -> ObjectInfo:
        # No time recorded: the epoch, the same on every mount, so rsync and make see nothing changed.
        return ObjectInfo(key, entry.size, entry.cid, entry.mtime_ns or 0, link_target=entry.target)

    def _entry(self, key: str) -> Entry | None:
        """What KEY names, None when nothing. A file at the top shows as the one entry of the volume."""
        parts = [part for part in key.split("/") if part]
        entry = self._resolved_top()
        if entry.kind != unixfs.DIRECTORY:
            return entry if parts == [entry.name] else None
        for name in parts:
            entry = self._child(entry, name)
            if entry is None:
                return None
        return entry

    def _child(self, directory: Entry, name: str) -> Entry | None:
        """NAME in DIRECTORY: from its listing where one is kept, else found alone (one directory of
        100,000 files need not be listed to open one of them)."""
        if directory.kind != unixfs.DIRECTORY:
            return None
        listing = self._known_listing(directory.cid)
        if listing is not None:
            return listing.get(name)
        link = self._links(directory.cid).get(name)
        return self._describe(link) if link is not None and _shown(name) else None

    def list_page(self, prefix: str, delimiter: str = "/", token: str | None = None,
                  page_size: int | None = None) -> ListPage:
        """The entries under PREFIX in key order, a directory's own marker first (as S3's "dir/" markers:
        an empty directory exists too); TOKEN counts entries. A first page of one, a volume's question
        whether a directory exists, is the marker alone: nothing is listed for it."""
        start, page_size = int(token or 0), page_size or _PAGE
        top = self._resolved_top()
        directory, marker = None, []
        if top.kind == unixfs.DIRECTORY:
            directory = self._entry(prefix) if prefix.endswith("/") or not prefix else None
            if directory is None or directory.kind != unixfs.DIRECTORY:
                return ListPage([], [])
            marker = [ObjectInfo(prefix, 0, directory.cid, 0)] if prefix else []
        end = start + page_size
        if end <= len(marker):
            return ListPage(marker[start:end], [], str(end))
        if directory is None:  # a file at the top: the volume shows it alone
            listed = [] if prefix else [(top.name, top)]
        elif delimiter:
            listed = list(self._listing(directory.cid).items())
        else:
            listed = list(self._walk(directory))
        page = listed[max(start - len(marker), 0):end - len(marker)]
        objects = marker[start:] + [self._info(prefix + name, entry) for name, entry in page
                                    if entry.kind != unixfs.DIRECTORY]
        prefixes = [f"{prefix}{name}/" for name, entry in page if entry.kind == unixfs.DIRECTORY]
        return ListPage(objects, prefixes, str(end) if end < len(marker) + len(listed) else None)

    def _walk(self, directory: Entry, above: str = ""):
        """(path, entry) of every file and symlink below DIRECTORY, in key order."""
        for name, entry in self._listing(directory.cid).items():
            if entry.kind == unixfs.DIRECTORY:
                yield from self._walk(entry, f"{above}{name}/")
            else:
                yield f"{above}{name}", entry

    def range_request(self, key: str, start: int, length: int, version: str, fresh: bool = False) -> RangeRequest:
        raise NotImplementedError("IPFS files are read block by block: see read_range")

    def read_range(self, key: str, start: int, length: int, version: str, fresh: bool = False) -> bytes:
        node = self._node(CID.decode(version))
        return b"".join(self._file_bytes(node, start, min(start + length, node.size)))

    def _file_bytes(self, node: unixfs.Node, start: int, end: int) -> list[bytes]:
        """The file's bytes [START, END) below NODE, in pieces; each level's children fetched in parallel."""
        own, pieces = node.pieces(start, end)
        children = self._fetches.map(lambda piece: self._node(piece[0]), pieces)
        parts = [own]
        for (_, child_start, child_end), child in zip(pieces, children):
            parts += self._file_bytes(child, child_start, child_end) if child.links else [child.data[child_start:child_end]]
        return parts

    def _node(self, cid: CID) -> unixfs.Node:
        """CID's node, checked. All but file leaves are kept a while: leaves are the block cache's."""
        text = unixfs.text(cid)
        node = self._nodes.get(text)
        if node is not None:
            return node
        with self._fetching_lock:  # one fetch of a block at a time: a lookup asks twice at once
            fetching = self._fetching.get(text)
            if fetching is None:
                self._fetching[text] = mine = concurrent.futures.Future()
        if fetching is not None:
            return fetching.result()
        try:
            node = unixfs.decode(cid, self._block(cid))
        except unixfs.BadBlock as error:
            log.error("IPFS %s: %s", self._api or self._gateway, error)
            mine.set_exception(Unavailable(str(error)))
        except BaseException as error:
            mine.set_exception(error)
        else:
            if node.links or node.kind != unixfs.FILE:
                self._nodes.put(text, node)
            mine.set_result(node)
        finally:
            with self._fetching_lock:
                del self._fetching[text]
        return mine.result()

    def _block(self, cid: CID) -> bytes:
        """CID's block, checked against it (BadBlock)."""
        inline = unixfs.inline(cid)
        if inline is not None:
            return inline
        text = unixfs.text(cid)
        try:
            if self._api is not None:
                reply = self.fetcher.send("POST", f"{self._api}/api/v0/block/get?arg={text}", None, {},
                                          f"block/get {text}")
            else:
                reply = self.fetcher.send("GET", f"{self._gateway}/ipfs/{text}?format=raw", None,
                                          {"Accept": _RAW_BLOCK}, f"GET block {text}")
        except NotFound:  # the node cannot find it; the file is no less there: EIO, not ENOENT
            raise Unavailable(f"{self._api or self._gateway} has no block {text}") from None
        if self._api is None and not reply.headers.get("content-type", "").startswith(_RAW_BLOCK):
            raise Unavailable(f"{self._gateway} answered a raw block request for {text} with "
                              f"{reply.headers.get('content-type')!r}: not a trustless gateway")
        return unixfs.check(cid, reply.body)

    def _listing(self, cid: str) -> dict[str, Entry]:
        """Directory CID's entries by name, in name order, each described: kept, or fetched and then kept
        (in memory, and in a file beside the cache for later mounts)."""
        with self._listing_locks[hash(cid) % len(self._listing_locks)]:
            listing = self._known_listing(cid)
            if listing is None:
                links = sorted((link for link in self._links(cid).values() if _shown(link.name)),
                               key=lambda link: link.name)
                listing = {entry.name: entry for entry in self._fetches.map(self._describe, links)}
                path = self._listing_path(cid)
                part = f"{path}.{os.getpid()}.part"  # another daemon may share the cache
                with open(part, "w") as saved:
                    json.dump([[e.name, e.cid, e.kind, e.size, e.mtime_ns, e.target] for e in listing.values()], saved)
                os.replace(part, path)
                self._listings.put(cid, listing)
        return listing

    def _known_listing(self, cid: str) -> dict[str, Entry] | None:
        """Directory CID's listing if this or an earlier mount made it; None rather than a request."""
        listing = self._listings.get(cid)
        if listing is None:
            try:
                with open(self._listing_path(cid)) as saved:
                    listing = {name: Entry(name, *fields) for name, *fields in sorted(json.load(saved))}
            except (OSError, ValueError):
                return None
            self._listings.put(cid, listing)
        return listing

    def _listing_path(self, cid: str) -> str:
        return os.path.join(self._listing_dir, f"{cid}.json")

    def _directory_links(self, cid: str) -> dict[str, unixfs.Link]:
        """Directory CID's links by name; a sharded one's shards fetched a level at a time."""
        links = {}
        shards = [CID.decode(cid)]
        while shards:
            nodes = list(self._fetches.map(self._node, shards))
            if any(node.kind != unixfs.DIRECTORY for node in nodes):
                raise Unavailable(f"{cid}: a directory whose shards are not all directories")
            links.update((link.name, link) for node in nodes for link in node.entries())
            shards = [shard for node in nodes for shard in node.shards()]
        return links

    def _describe(self, link: unixfs.Link) -> Entry:
        """What LINK names. A raw block is a file of the size its parent says; any other is fetched."""
        if link.cid.codec.code == unixfs.RAW_CODEC:
            return Entry(link.name, unixfs.text(link.cid), unixfs.FILE, link.size, None)
        return _entry(link.name, self._node(link.cid), unixfs.text(link.cid))


def _entry(name: str, node: unixfs.Node, cid: str) -> Entry:
    target = node.data.decode(errors="surrogateescape") if node.kind == unixfs.SYMLINK else None
    return Entry(name, cid, node.kind, node.size, node.mtime_ns, target)


class _Recent:
    """The values used last, by key, as many as weigh at most LIMIT in all; worker threads share it."""

    def __init__(self, limit: int, weigh):
        self._limit = limit
        self._weigh = weigh
        self._weight = 0
        self._values: collections.OrderedDict = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, key):
        with self._lock:
            value = self._values.get(key)
            if value is not None:
                self._values.move_to_end(key)
            return value

    def put(self, key, value):
        with self._lock:
            if key in self._values:
                self._weight -= self._weigh(self._values.pop(key))
            self._values[key] = value
            self._weight += self._weigh(value)
            while self._weight > self._limit and len(self._values) > 1:
                self._weight -= self._weigh(self._values.popitem(last=False)[1])


def _shown(name: str) -> bool:
    return name not in ("", ".", "..") and "/" not in name and "\0" not in name

