"""`fsmount cache du|verify|evict|clear`: the blocks a path of the tree names, measured, checked or dropped by the
daemon serving the mount (over its control socket) or, with the tree unmounted, on the cache's directory itself.

The index files each block under its store and key, so a path names blocks as it names keys: those of its volume's
store under the volume's prefix and the path below the volume; a path above volumes names every volume under it.
"""
import dataclasses
import errno
import logging
import os

import trio

from fsmount import control
from fsmount.cache import maintenance
from fsmount.cache.block_index import Selection
from fsmount.cache.blocks import BlockCache
from fsmount.config import Config, ConfigError, VolumeConfig, load_config
from fsmount.volume_stores import Stores
from fsmount.volumes.objects import ObjectVolume
from fsmount.volumes.object_tree import key_prefix

log = logging.getLogger(__name__)

Path = tuple[str, ...]  # names from the tree's top


@dataclasses.dataclass(frozen=True)
class CachedVolume:
    """A volume of the tree as the cache knows it. IDENTITY: its store's; None for a linked host path, never cached."""
    path: Path
    identity: str | None
    prefix: str  # of its keys
    live: ObjectVolume | None = dataclasses.field(default=None, compare=False)  # the daemon's, which serves it

    def selection(self, below: Path) -> Selection:
        """The blocks of what is at BELOW in the volume: a file's, or those of everything under a directory."""
        if not below:
            return Selection(self.identity, prefix=self.prefix)
        key = self.prefix + "/".join(below)
        return Selection(self.identity, key=key, prefix=key + "/")


def tree_volume(volume: VolumeConfig, identity: str | None, live: ObjectVolume | None = None) -> CachedVolume:
    """VOLUME as the cache knows it, given its store's IDENTITY (None: a linked host path) and the daemon's LIVE
    volume serving it, if a daemon serves it."""
    source = volume.objects
    prefix = "" if identity is None else source.prefix.rpartition("/")[0] if source.single_object else source.prefix
    return CachedVolume(volume.path, identity, key_prefix(prefix), live)


def commands(daemon) -> dict[str, control.Handler]:
    """The handlers of the cache commands of DAEMON (fsmount.daemon.Daemon), each on its cache and the volumes it
    serves at the time: a reload adds and removes volumes, and the first object volume makes the cache."""
    def current() -> CacheCommands:
        volumes = []
        for config, volume in daemon.reloader.mounted():
            live = volume if isinstance(volume, ObjectVolume) else None
            volumes.append(tree_volume(config, None if live is None else live.store.identity, live))
        return CacheCommands(daemon.cache, daemon.config.cache.dir, volumes)

    def handler(name: str) -> control.Handler:
        async def handle(request: dict, report):
            return await current().handlers()[name](request, report)
        return handle

    return {name: handler(name) for name in CacheCommands.NAMES}


def offline(config: Config, command: str, progress=None, **request):
    """Does COMMAND (a name `commands` answers to) with REQUEST on CONFIG's cache directory, as `control.ask` would
    have the daemon do it; CommandFailed while a daemon holds the cache."""
    stores = Stores(config.cache.dir)
    identities = [None if volume.host_path is not None or volume.objects is None
                  else stores.store_for(dataclasses.replace(volume.objects, verify=True)).identity
                  for volume in config.volumes]
    cache = _open_cache(config)

    async def report(line: dict):
        if progress is not None:
            progress(line)

    try:
        handlers = CacheCommands(cache, config.cache.dir, [tree_volume(volume, identity) for volume, identity
                                                            in zip(config.volumes, identities)]).handlers()
        return trio.run(handlers[command], request, report)
    finally:
        if cache is not None:
            cache.close()


def _open_cache(config: Config) -> BlockCache | None:
    """CONFIG's block cache, or None when it has none; CommandFailed naming the mount whose daemon holds it."""
    cache = config.cache
    if not os.path.exists(os.path.join(cache.dir, "index.sqlite")):
        return None
    try:
        return BlockCache(cache.dir, cache.max_size, cache.block_size)
    except OSError as error:
        if error.errno != errno.EBUSY:
            raise
        holders = [point for point, source in control.mounts().items() if _cache_dir(source) == cache.dir]
        if not holders:
            raise control.CommandFailed(f"{error.strerror}; unmount it first") from None
        raise control.CommandFailed(f"the cache in {cache.dir} is in use by the daemon serving {holders[0]}: "
                                    f"name paths in {holders[0]} instead of --config") from None


def _cache_dir(config_file: str) -> str | None:
    try:
        return load_config(config_file).cache.dir
    except (ConfigError, OSError):
        return None


class CacheCommands:
    """The cache commands on CACHE (None: none of the tree's volumes has blocks) in DIRECTORY, for the tree's VOLUMES."""

    def __init__(self, cache: BlockCache | None, directory: str, volumes: list[CachedVolume]):
        self.cache = cache
        self.directory = directory
        self.volumes = volumes

    NAMES = ("cache.du", "cache.verify", "cache.evict", "cache.clear")

    def handlers(self) -> dict[str, control.Handler]:
        return dict(zip(self.NAMES, (self.du, self.verify, self.evict, self.clear)))

    async def du(self, request: dict, report) -> dict:
        """{"path": names}: {"entries": [{"path", "bytes", "blocks"}], one a volume under PATH (or PATH itself, in a
        volume), "cache": {"dir", "bytes", "blocks"}, the whole cache's}."""
        entries = [{"path": name, **self._usage(selection)} for name, selection in self._named(_path(request))]
        return {"entries": entries, "cache": {"dir": self.directory, **self._usage(Selection(None))}}

    async def verify(self, request: dict, report) -> dict:
        """Checks every block; REPORT gets {"done", "total"} bytes along the way."""
        if self.cache is None:
            return {"blocks": 0, "bytes": 0, "damaged": 0, "dropped": 0}
        result = await maintenance.verify(self.cache, report)
        log.info("cache verify: %(blocks)d blocks checked, %(damaged)d damaged, %(dropped)d of them dropped", result)
        return result

    async def evict(self, request: dict, report) -> dict:
        """{"paths": [names, ...]}: drops their blocks; the kernel drops its pages of those files at their next open."""
        paths = request.get("paths")
        if not isinstance(paths, list) or not paths:
            raise control.CommandFailed("evict: no path given")
        paths = [_path({"path": path}) for path in paths]
        result = await self._drop([selection for path in paths for _, selection in self._named(path)])
        self._forget_pages(paths)
        return result

    async def clear(self, request: dict, report) -> dict:
        """{"path": names or null}: drops the blocks of the volumes at or under PATH; with no PATH, every block."""
        everything = request.get("path") is None
        path = () if everything else _path(request)
        if any(path[:len(volume.path)] == volume.path and path != volume.path for volume in self.volumes):
            raise control.CommandFailed(f"/{'/'.join(path)} is in a volume, not one: evict drops what is under a path")
        result = await self._drop([Selection(None)] if everything else [selection for _, selection in self._named(path)])
        self._forget_pages([path])
        return result

    async def _drop(self, selections: list[Selection]) -> dict:
        if self.cache is None:
            return {"blocks": 0, "bytes": 0, "in_use": 0}
        result = await maintenance.evict(self.cache, selections)
        log.info("cache: %(blocks)d blocks dropped (%(bytes)d bytes), %(in_use)d kept as readers hold them", result)
        return result

    def _forget_pages(self, paths: list[Path]):
        """The kernel's pages of the files at or under PATHS go at their next open, in the volumes the daemon serves."""
        for volume in self.volumes:
            below = [path[len(volume.path):] for path in paths if path[:len(volume.path)] == volume.path]
            below += [()] if any(volume.path[:len(path)] == path for path in paths) else []
            if volume.live is not None and below:
                volume.live.forget_pages(*below)

    def _usage(self, selection: Selection) -> dict:
        used, blocks = (0, 0) if self.cache is None else self.cache.index.usage(selection)
        return {"bytes": used, "blocks": blocks}

    def _named(self, path: Path) -> list[tuple[str, Selection]]:
        """(name, selection) of what PATH names: itself, in a volume, or each volume under it."""
        for volume in self.volumes:
            if path[:len(volume.path)] == volume.path:
                if volume.identity is None:
                    raise control.CommandFailed(f"/{'/'.join(path)}: a linked host path, which is never cached")
                return [("/".join(path), volume.selection(path[len(volume.path):]))]
        under = [volume for volume in self.volumes if volume.path[:len(path)] == path]
        if not under:
            raise control.CommandFailed(f"/{'/'.join(path)}: no volume is there")
        return [("/".join(volume.path), volume.selection(())) for volume in under if volume.identity is not None]


def _path(request: dict) -> Path:
    path = request.get("path") or []
    if not isinstance(path, list) or not all(isinstance(name, str) and name for name in path):
        raise control.CommandFailed(f"not a path: {path!r}")
    return tuple(path)
