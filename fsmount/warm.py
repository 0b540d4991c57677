"""Warm-up: the daemon's side of `fsmount warm`, which fills the block cache with the files under paths of its tree.

The files are found first (their listings and attributes come into the metadata cache on the way), so
that a warm-up that would not fit is refused before it fetches anything: filling more than the cache
holds would evict the first files to make room for the last. Blocks are then fetched by JOBS tasks at
once, as background fills: they are written by the low-priority writer and not kept in memory, and the
budget of fetched blocks not yet written bounds the memory they take.
"""
import dataclasses
import errno
import stat

import trio

from fsmount.cache.blocks import BlockCache
from fsmount.control import CommandFailed, Report
from fsmount.fs.namespace import Namespace
from fsmount.stores.base import ObjectInfo
from fsmount.units import format_size
from fsmount.volumes.base import Path, Volume
from fsmount.volumes.objects import ObjectVolume
from fsmount.volumes.posix import STAGED_VERSION

_REPORT_EVERY = 0.2  # seconds between progress lines


@dataclasses.dataclass(eq=False)
class _File:
    volume: ObjectVolume
    path: Path
    info: ObjectInfo
    shown: str  # its path in the tree
    blocks_left: int = 0
    fetched: bool = False  # any of its blocks, rather than all found in the cache


@dataclasses.dataclass
class _Amount:
    files: int = 0
    bytes: int = 0


@dataclasses.dataclass
class _Tally:
    total: _Amount = dataclasses.field(default_factory=_Amount)
    done: _Amount = dataclasses.field(default_factory=_Amount)
    fetched: _Amount = dataclasses.field(default_factory=_Amount)  # files with a block fetched from the store
    cached: _Amount = dataclasses.field(default_factory=_Amount)  # files found whole in the cache
    failed: dict[str, str] = dataclasses.field(default_factory=dict)  # path -> why
    skipped: list[str] = dataclasses.field(default_factory=list)  # paths on volumes without a block cache

    def progress(self) -> dict:
        return {"files": self.done.files, "bytes": self.done.bytes, "files_total": self.total.files,
                "bytes_total": self.total.bytes}


async def warm(namespace: Namespace, cache: BlockCache | None, paths: list[str], jobs: int, report: Report) -> dict:
    """Fills CACHE with every file under PATHS (paths in the tree, from its root), JOBS blocks at a time; reports
    progress through REPORT and returns the summary. CommandFailed when they would not fit in the cache."""
    tally = _Tally()
    files: list[_File] = []
    for path in paths:
        shown = "/" + "/".join(part for part in path.split("/") if part)
        try:
            await _find(namespace, shown, files, tally)
        except OSError as error:
            tally.failed[shown] = error.strerror or str(error)
    tally.total = _Amount(len(files), sum(file.info.size for file in files))
    if files and tally.total.bytes > cache.max_size:
        raise CommandFailed(f"the {len(files)} files ({format_size(tally.total.bytes)}) do not fit in the cache "
                            f"({format_size(cache.max_size)}): warming them would evict the first to make room for "
                            f"the last. Warm fewer, or raise cache.max_size")
    await report(tally.progress())
    blocks = _blocks(files, cache.block_size) if files else iter(())
    last_report = [trio.current_time()]

    async def fetch_blocks():
        for file, index in blocks:
            if file.shown not in tally.failed:
                await _fill(cache, file, index, tally)
            if trio.current_time() - last_report[0] >= _REPORT_EVERY:
                last_report[0] = trio.current_time()
                await report(tally.progress())

    async with trio.open_nursery() as nursery:
        for _ in range(max(1, jobs)):
            nursery.start_soon(fetch_blocks)
    await report(tally.progress())
    return {"files": tally.total.files, "bytes": tally.total.bytes,
            "fetched": dataclasses.asdict(tally.fetched), "cached": dataclasses.asdict(tally.cached),
            "failed": [{"path": path, "error": error} for path, error in tally.failed.items()],
            "skipped": tally.skipped}


def _blocks(files: list[_File], block_size: int):
    """(file, block index) of every block of FILES, in order; each file knows how many it has."""
    for file in files:
        file.blocks_left = max(1, -(-file.info.size // block_size))
        for index in range(file.blocks_left):
            yield file, index


async def _fill(cache: BlockCache, file: _File, index: int, tally: _Tally):
    name, fetch, size, origin = file.volume.piece(file.path, file.info, index, cache.block_size)
    try:
        if size and not cache.contains(name):
            await cache.read(name, 0, 0, fetch, background=True, size=size, origin=origin)
            file.fetched = True
            tally.fetched.bytes += size
        else:
            tally.cached.bytes += size
    except OSError as error:
        tally.failed[file.shown] = error.strerror or str(error)
    tally.done.bytes += size
    file.blocks_left -= 1
    if not file.blocks_left:
        tally.done.files += 1
        if file.shown not in tally.failed:
            if file.fetched:
                tally.fetched.files += 1
            else:
                tally.cached.files += 1


async def _find(namespace: Namespace, shown: str, files: list[_File], tally: _Tally):
    """Adds the files at or under the tree's path SHOWN to FILES."""
    node = namespace.inodes.root
    parts = [part for part in shown.split("/") if part]
    while parts and node.volume is None:
        child = node.entries.get(parts[0])
        if child is None:
            raise OSError(errno.ENOENT, "no such file or directory")
        node, parts = child, parts[1:]
    if node.volume is None:
        for name in node.entries:
            await _find(namespace, f"{shown.rstrip('/')}/{name}", files, tally)
        return
    await _find_in_volume(node.volume, node.path + tuple(parts), shown, files, tally)


async def _find_in_volume(volume: Volume, path: Path, shown: str, files: list[_File], tally: _Tally):
    if not isinstance(volume, ObjectVolume):
        tally.skipped.append(shown)  # a host path: the kernel's page cache is its cache
        return
    info = await volume.tree.lookup(path)
    if info is not None:
        if info.link_target is None and not info.version.startswith(STAGED_VERSION):  # staged: on local disk
            files.append(_File(volume, path, info, shown))
        return
    listing = await volume.opendir(path)
    try:
        offset = 0
        while batch := await listing.entries(offset):
            for entry in batch:
                if stat.S_ISDIR(entry.attrs.mode) or stat.S_ISREG(entry.attrs.mode):
                    await _find_in_volume(volume, path + (entry.name,), f"{shown.rstrip('/')}/{entry.name}", files,
                                          tally)
            offset = batch[-1].offset
    finally:
        await listing.close()


def summary(result: dict, seconds: float) -> str:
    """The last lines `fsmount warm` prints."""
    fetched, cached = result["fetched"], result["cached"]
    lines = [f"warmed {result['files']} files ({format_size(result['bytes'])}) in {seconds:.1f} s: "
             f"{fetched['files']} fetched ({format_size(fetched['bytes'])}), "
             f"{cached['files']} already cached, {len(result['failed'])} failed"]
    lines += [f"  failed   {failed['path']}: {failed['error']}" for failed in result["failed"]]
    lines += [f"  skipped  {path}: a host path, which the kernel caches" for path in result["skipped"]]
    return "\n".join(lines)

