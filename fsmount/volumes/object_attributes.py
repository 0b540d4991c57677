"""ObjectAttributes: the POSIX attributes an object volume shows for its objects and directories, and what it learnt of them.

A file's owner, mode, time and extended attributes are its metadata (volumes/posix.py) where the
store gave it; S3 listings give none, so what a HEAD, an upload or an earlier mount showed of each
version is kept, in memory and on disk (fsmount/cache/attributes.py). Without any, a file shows the
time the store last wrote it, 0644 (0444 read-only) and the volume's owner. A directory's are its
marker object's metadata (`dir/`), learnt the same ways; an implicit directory (a prefix only)
shows 0755 (0555) and the volume's owner, and its times are the mount's start until this daemon
makes or removes a name in it. An object whose mode says symlink (s3fs's), or that has a link
target (IPFS), is a symlink.
"""
import contextlib
import math
import os
import stat
import time

from fsmount.cache.attributes import KnownAttributes
from fsmount.cache.metadata import ExpiringCache
from fsmount.memory import ATTRIBUTES_KEPT
from fsmount.staging.area import DEFAULT_MODE
from fsmount.stores.base import ObjectInfo
from fsmount.volumes.base import Attrs, Path
from fsmount.volumes.posix import GID, MODE, MTIME, UID, kept_posix, parse_id, parse_mode, parse_mtime

_DIRECTORY = "dir"  # the version a directory's attributes are kept under on disk


class ObjectAttributes:
    def __init__(self, identity: str, lists_metadata: bool, known_attributes: KnownAttributes, uid: int, gid: int,
                 read_only: bool):
        """IDENTITY: the store's, which names what is kept on disk; LISTS_METADATA: whether its listings show it."""
        self.identity = identity
        self.lists_metadata = lists_metadata
        self.known_attributes = known_attributes
        self.uid, self.gid = uid, gid
        self._mode_mask = 0o7555 if read_only else 0o7777  # a read-only volume shows no write bits
        self._dir_mode = 0o555 if read_only else 0o755
        self._started = time.time_ns()
        self._changed = ExpiringCache(math.inf, ATTRIBUTES_KEPT)  # directory -> when this daemon last changed its entries
        self._known = ExpiringCache(math.inf, ATTRIBUTES_KEPT)  # (key, version) -> its POSIX metadata
        self._directories = ExpiringCache(math.inf, ATTRIBUTES_KEPT)  # marker key -> its POSIX metadata ({}: none known)

    # Files

    def of_object(self, info: ObjectInfo) -> Attrs:
        kept = self.kept(info)
        mtime = self.mtime_ns(info, kept)
        uid, gid = self.owner(kept)
        if info.link_target is not None or kind(kept) == stat.S_IFLNK:
            size = info.size if info.link_target is None else len(os.fsencode(info.link_target))
            return Attrs(stat.S_IFLNK | 0o777, size=size, uid=uid, gid=gid, atime_ns=mtime, mtime_ns=mtime,
                         ctime_ns=mtime)
        return Attrs(stat.S_IFREG | self.permissions(info, kept), size=info.size, uid=uid, gid=gid,
                     blocks=(info.size + 511) // 512, atime_ns=mtime, mtime_ns=mtime, ctime_ns=mtime)

    def kept(self, info: ObjectInfo) -> dict[str, str]:
        """INFO's POSIX metadata: its own, else what was learnt of its version."""
        kept = kept_posix(info.metadata)
        if kept or not len(self._known):  # nothing learnt: no lookup (a listing of 100,000 asks for each)
            return kept
        return self._known.get((info.key, info.version), {})

    def known(self, info: ObjectInfo) -> bool:
        """Whether INFO's POSIX metadata is known: given with it, or learnt."""
        return bool(kept_posix(info.metadata)) or (info.key, info.version) in self._known

    def mtime_ns(self, info: ObjectInfo, kept: dict[str, str] | None = None) -> int:
        """INFO's time; KEPT: what `kept` gave for it, if asked already."""
        text = (self.kept(info) if kept is None else kept).get(MTIME)
        if text is not None:
            with contextlib.suppress(ValueError):
                return parse_mtime(text)
        return info.mtime_ns

    def permissions(self, info: ObjectInfo, kept: dict[str, str] | None = None) -> int:
        text = (self.kept(info) if kept is None else kept).get(MODE)
        if text is not None:
            with contextlib.suppress(ValueError):
                return parse_mode(text) & self._mode_mask
        return DEFAULT_MODE & self._mode_mask

    def owner(self, kept: dict[str, str]) -> tuple[int, int]:
        """The owner and group KEPT metadata names, else the volume's."""
        return parse_id(kept.get(UID), self.uid), parse_id(kept.get(GID), self.gid)

    def learn(self, info: ObjectInfo):
        """Keeps the POSIX metadata the store gave with INFO for its version, on disk too where listings
        show no metadata."""
        kept = kept_posix(info.metadata)
        if kept and self._known.get((info.key, info.version)) != kept:
            self._known.put((info.key, info.version), kept)
            if not self.lists_metadata:
                self.known_attributes.keep(self.identity, info.key, info.version, kept)

    def recall(self, listed: list[ObjectInfo]):
        """Learns what was kept on disk of objects a listing gave without metadata."""
        if self.lists_metadata:
            return
        unknown = {info.key: info.version for info in listed if (info.key, info.version) not in self._known}
        for key, kept in self.known_attributes.recall(self.identity, unknown).items():
            self._known.put((key, unknown[key]), kept)

    # Directories

    def of_directory(self, path: Path, marker: str) -> Attrs:
        """The attributes of directory PATH, whose marker object would be MARKER."""
        kept = self.of_marker(marker)
        changed = self._changed.get(path, None)
        mtime = self._started
        with contextlib.suppress(ValueError):
            mtime = parse_mtime(kept[MTIME]) if MTIME in kept else mtime
        mode = self._dir_mode
        with contextlib.suppress(ValueError):
            mode = parse_mode(kept[MODE]) & self._mode_mask if MODE in kept else mode
        uid, gid = self.owner(kept)
        return Attrs(stat.S_IFDIR | mode, nlink=2, uid=uid, gid=gid, atime_ns=mtime, mtime_ns=changed or mtime,
                     ctime_ns=changed or mtime)

    def of_marker(self, marker: str) -> dict[str, str]:
        """The POSIX metadata of the directory whose marker is MARKER, as far as it is known."""
        kept = self._directories.get(marker, None)
        if kept is None:
            kept = self.known_attributes.recall(self.identity, {marker: _DIRECTORY}).get(marker, {})
            self._directories.put(marker, kept)
        return kept

    def learn_marker(self, marker: str, metadata):
        """A directory's marker MARKER holds METADATA (from the store, or as this daemon wrote it)."""
        kept = kept_posix(metadata)
        if self._directories.get(marker, None) != kept:
            self._directories.put(marker, kept)
            self.known_attributes.keep(self.identity, marker, _DIRECTORY, kept)

    def entries_changed(self, directory: Path):
        """This daemon made or removed a name in DIRECTORY: its mtime and ctime are now (kept in memory only)."""
        self._changed.put(directory, time.time_ns())


def kind(kept: dict[str, str]) -> int:
    """The file type KEPT metadata's mode names (S_IFMT bits), 0 where it names none."""
    with contextlib.suppress(ValueError):
        return stat.S_IFMT(parse_mode(kept.get(MODE, "0")))
    return 0

