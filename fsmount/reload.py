"""Reload: the running tree brought to what its config file says now, on SIGHUP or `fsmount reload`.

Volumes added appear; a volume removed leaves once nothing of it is open; a volume whose credentials alone
changed gets a store with the new ones, which every request from then on goes to; a volume otherwise changed
is removed, and added again once it has left. The log level changes too. A config that does not check changes
nothing, and the settings a mount fixes (the cache, staging, retries, owners...) wait for the next mount.
"""
import contextlib
import logging
import os
import signal
from dataclasses import dataclass, field, replace

import pyfuse3
import trio

from fsmount.config import ConfigError, VolumeConfig, load_config
from fsmount.stores.base import redact_url
from fsmount.volumes.base import Path, Volume

log = logging.getLogger(__name__)

# Config keys whose change takes a remount: what the mount and its cache, staging and stores were made with.
FIXED_SETTINGS = {"mountpoint": "mountpoint", "allow_other": "allow_other", "uid": "uid", "gid": "gid",
                  "attr_timeout": "attr_timeout", "log_file": "log.file", "cache": "cache", "staging": "staging",
                  "retries": "retries"}


@dataclass
class _Running:
    config: VolumeConfig
    volume: Volume
    work: trio.CancelScope | None = None  # its background work's
    leaving: trio.CancelScope | None = None  # its removal's, while that waits for its files to be closed


@dataclass
class Changes:
    """What a reload did, by volume name; `fsmount reload` prints it."""
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)  # to leave, once what is open of them is closed
    arriving: list[str] = field(default_factory=list)  # to be added once the volumes in their way have left
    credentials: list[str] = field(default_factory=list)  # changed: every new request uses the new ones
    kept: list[str] = field(default_factory=list)  # that were waiting to leave, and the config has again
    failed: dict[str, str] = field(default_factory=dict)  # volume -> why it could not be added or changed
    log_level: str | None = None  # the new one
    remount: list[str] = field(default_factory=list)  # settings that changed and take a remount


class Reloader:
    """Keeps the daemon's volumes: starts them, and brings them to the config on each reload."""

    def __init__(self, daemon, volumes: dict[Path, tuple[VolumeConfig, Volume]]):
        """DAEMON: fsmount.daemon.Daemon; VOLUMES: those it was made with, by path."""
        self.daemon = daemon
        self.running = {path: _Running(config, volume) for path, (config, volume) in volumes.items()}
        self.log_level = daemon.config.log_level  # the config's, as last read
        self._arriving: dict[Path, VolumeConfig] = {}
        self._lock = trio.Lock()  # one reload at a time, and arrivals between them
        self._writing_behind = False  # the block cache's write-behind runs

    def mounted(self) -> list[tuple[VolumeConfig, Volume]]:
        """The volumes in the tree, those waiting to leave included, with their configs. The metrics' thread asks
        too: the volumes are copied at once, never iterated while a reload may change them."""
        return [(running.config, running.volume) for running in list(self.running.values())]

    async def start(self):
        """Starts the volumes' background work; the daemon's nursery is open."""
        for running in self.running.values():
            running.work = await self._start(running.volume)

    async def _start(self, volume: Volume) -> trio.CancelScope:
        """Starts VOLUME's background work in a nursery of its own, under the daemon's, and the block cache's
        write-behind once there is a cache (the first object volume makes it); cancelling the scope returned stops
        the volume's."""
        daemon = self.daemon
        if daemon.cache is not None and not self._writing_behind:
            await daemon.nursery.start(daemon.cache.write_behind)
            self._writing_behind = True
        scope, nursery = await daemon.nursery.start(_nursery)
        try:
            await volume.start(nursery)  # here, so that its failure comes as it is, not in the nursery's group
        except BaseException:
            scope.cancel()
            raise
        return scope

    async def reload_on_sighup(self, task_status=trio.TASK_STATUS_IGNORED):
        with trio.open_signal_receiver(signal.SIGHUP) as signals:
            task_status.started()
            async for _ in signals:
                log.info("SIGHUP: reloading")
                try:
                    await self.reload()
                except ConfigError:
                    pass  # refused, and logged
                except Exception:  # the mount serves on, as after a control command that failed
                    log.exception("the reload failed")

    async def reload(self) -> dict:
        """Reads the config file again and applies it; ConfigError, logged, when it does not check."""
        async with self._lock:
            try:
                config = await trio.to_thread.run_sync(load_config, self.daemon.config.file)
                await trio.to_thread.run_sync(self.daemon.fetch_ca_bundles, config)
            except ConfigError as error:
                log.error("reload refused, the tree stays as it was: %s", error)
                raise
            changes = Changes()
            if config.log_level != self.log_level:
                self.log_level = changes.log_level = config.log_level
                self.daemon.set_log_level(config.log_level)
            wanted = {volume.path: volume for volume in config.volumes}
            for path, running in list(self.running.items()):
                await self._bring(path, running, wanted.get(path), changes)
            self._arriving = {path: volume for path, volume in wanted.items()
                              if path not in self.running or self.running[path].config != volume}
            await self._arrive(changes)
            changes.remount = [key for name, key in FIXED_SETTINGS.items()
                               if getattr(config, name) != getattr(self.daemon.config, name)]
            if changes.remount:
                log.warning("reload: %s changed, which takes a remount; the rest of the config is in effect",
                            ", ".join(changes.remount))
            log.info("reloaded %s: %s", config.file, _summary(changes))
            return changes.__dict__

    async def _bring(self, path: Path, running: _Running, wanted: VolumeConfig | None, changes: Changes):
        """Brings the volume at PATH to WANTED (None: gone)."""
        name = running.config.name
        if wanted is not None and (wanted == running.config or _credentials_alone_differ(running.config, wanted)):
            if running.leaving is not None:
                running.leaving.cancel()
                running.leaving = None
                changes.kept.append(name)
            if wanted != running.config:
                try:
                    store = self.daemon.stores.store_for(wanted.objects, wanted.read_only)
                    await self.daemon.nursery.start(running.volume.store.replace, store)
                except OSError as error:
                    log.error("volume %s keeps its credentials: the new ones fail: %s", name, error.strerror or error)
                    changes.failed[name] = f"its new credentials fail: {error.strerror or error}"
                    return
                running.config = wanted
                log.info("volume %s: new credentials, for every request from now on", name)
                changes.credentials.append(name)
        elif running.leaving is None:
            getattr(changes, await self.daemon.nursery.start(self._depart, path)).append(name)

    async def _depart(self, path: Path, task_status=trio.TASK_STATUS_IGNORED):
        """Takes the volume at PATH out of the tree once nothing of it is open (a later reload may keep it), then
        sends what it owes its store there and closes it. Starts as "removed", or as "waiting" while it waits."""
        running = self.running[path]
        name, operations = running.config.name, self.daemon.operations
        with trio.CancelScope() as running.leaving:
            opened = operations.opened_in(running.volume)
            if opened:
                log.info("volume %s is leaving the config: it waits for %d open files or directories to be closed",
                         name, opened)
                task_status.started("waiting")
            await operations.unopened(running.volume)
            # From here on nothing awaits until the volume is out of the tree: nothing can open it again.
            del self.running[path]
            parent, entry = operations.namespace.remove(path)
        if path in self.running:
            log.info("volume %s stays: the config has it again", name)
            return
        await _forget_entry(parent.inode, entry)
        self.daemon.health.forget(name)
        log.info("volume %s removed", name)
        if not opened:
            task_status.started("removed")
        try:
            await running.volume.unmounted()
        finally:
            running.work.cancel()
            with trio.CancelScope(shield=True):
                await running.volume.close()
        async with self._lock:
            await self._arrive(Changes())

    async def _arrive(self, changes: Changes):
        """Adds the volumes the config has and the tree not, as far as no volume (leaving) is in their way."""
        for path, wanted in list(self._arriving.items()):
            in_the_way = [running.config.name for other, running in self.running.items() if _overlap(path, other)]
            if in_the_way:
                log.info("volume %s waits for %s to leave", wanted.name, ", ".join(in_the_way))
                changes.arriving.append(wanted.name)
                continue
            del self._arriving[path]
            volume = None
            try:
                volume = self.daemon.make_volume(wanted)
                work = await self._start(volume)
            except OSError as error:
                if volume is not None:
                    await volume.close()  # what its start opened before it failed
                self.daemon.health.forget(wanted.name)
                log.error("volume %s cannot be added: %s", wanted.name, error.strerror or error)
                changes.failed[wanted.name] = error.strerror or str(error)
                continue
            self.running[path] = _Running(wanted, volume, work)
            parent, entry = self.daemon.operations.namespace.add(path, volume, self.daemon.read_only(wanted))
            await _forget_entry(parent.inode, entry)
            log.info("volume %s added: %s", wanted.name, redact_url(wanted.source))
            changes.added.append(wanted.name)


async def _nursery(task_status=trio.TASK_STATUS_IGNORED):
    """Starts as a nursery, open until the scope it starts with too is cancelled."""
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            task_status.started((scope, nursery))
            await trio.sleep_forever()


def _credentials_alone_differ(old: VolumeConfig, new: VolumeConfig) -> bool:
    """Whether NEW is OLD with other credentials, which a new store of the same bucket can take: uploads of it
    in parts or not (`multipart`) stay as they are."""
    if old.objects is None or new.objects is None or not hasattr(old.objects, "credentials"):
        return False
    if getattr(old.objects.credentials, "multipart", True) != getattr(new.objects.credentials, "multipart", True):
        return False
    return old == replace(new, objects=replace(new.objects, credentials=old.objects.credentials))


def _overlap(path: Path, other: Path) -> bool:
    """Whether one is the other or lies in it."""
    shorter = min(len(path), len(other))
    return path[:shorter] == other[:shorter]


async def _forget_entry(parent: int, name: str):
    """The kernel forgets what it knew of NAME in the virtual directory PARENT, which it trusts for a day, present
    or not. A worker thread asks: the kernel may wait for requests in flight, which only the event loop answers."""
    with contextlib.suppress(OSError):  # ENOENT: it knew nothing of it
        await trio.to_thread.run_sync(pyfuse3.invalidate_entry, parent, os.fsencode(name))


def _summary(changes: Changes) -> str:
    parts = [f"{what} {', '.join(names)}" for what, names in (
        ("added", changes.added), ("removed", changes.removed), ("waiting to leave", changes.waiting),
        ("waiting to arrive", changes.arriving), ("new credentials", changes.credentials), ("kept", changes.kept))
        if names]
    parts += [f"{name} failed: {why}" for name, why in changes.failed.items()]
    if changes.log_level:
        parts.append(f"log level {changes.log_level}")
    return "; ".join(parts) or "no change"
