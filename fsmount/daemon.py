"""The daemon's life: mount, go to the background once the mount is live, serve until unmounted or signalled."""
import contextlib
import ctypes
import logging
import os
import resource
import signal
import stat
import sys
import time
from dataclasses import dataclass, field, replace

import pyfuse3
import trio

from fsmount.cache.attributes import KnownAttributes
from fsmount import cache_control
from fsmount.cache.blocks import BlockCache
from fsmount.cache.listings import KnownListings
from fsmount.config import Config, ConfigError, VolumeConfig
from fsmount.control import CommandFailed, ControlServer, Handler
from fsmount.fs.inodes import InodeTable
from fsmount.fs.namespace import Namespace
from fsmount.fs.operations import Operations
from fsmount.logs import set_log_level, setup_logging, toggle_debug_on_signal
from fsmount.metrics.counting import FuseRequests
from fsmount.metrics.exporter import Exporter
from fsmount.metrics.store_requests import Health
from fsmount.memory import MemoryBudgets
from fsmount.reload import Reloader
from fsmount.staging.area import StagingArea
from fsmount.status import gather as gather_status
from fsmount.warm import warm as warm_cache
from fsmount.stores.aio import TrioStore, asyncio_loop
from fsmount.stores.ranges import receive_buffers
from fsmount.volume_stores import Stores
from fsmount.stores.tls import fetch_ca_bundle
from fsmount.volumes.base import Volume
from fsmount.volumes.host import HostVolume
from fsmount.volumes.objects import ObjectVolume
from fsmount.volumes.prefetch import Prefetcher
from fsmount.volumes.single import SingleObjectVolume
from fsmount.volumes.uploads import UploadSettings, UploadTotals, upload_totals
from fsmount.volumes.writable import WritableObjectVolume

log = logging.getLogger("fsmount")

_WRITE_QUEUED_MOST = 10  # seconds an unmount waits for fetched blocks to reach the cache
# The kernel's own read-ahead on the mount, so that it asks for 1 MiB reads.
_KERNEL_READ_AHEAD_KB = 1024
# Seconds between hand-backs of the receive buffers nobody took since the last: a daemon done fetching
# holds them 2-4 s longer at most, and a stream keeps those it cycles through.
_IDLE_BUFFERS_CHECK = 2
_M_ARENA_MAX = -8  # mallopt's parameter number
_MALLOC_ARENAS = 2

# Options handed to the kernel as they are (libfuse's mount options).
_KERNEL_FLAGS = {"suid", "nosuid", "dev", "nodev", "exec", "noexec", "atime", "noatime", "diratime",
                 "nodiratime", "relatime", "norelatime", "strictatime", "lazytime", "sync", "async", "dirsync"}
# Options mount(8) and fstab use that concern nobody below mount(8).
_USERSPACE = {"defaults", "rw", "_netdev", "auto", "noauto", "nofail", "user", "nouser", "users",
              "owner", "group", "default_permissions"}
_USERSPACE_PREFIXES = ("x-", "comment=")


class MountError(Exception):
    pass


@dataclass
class MountOptions:
    allow_other: bool | None = None
    read_only: bool = False
    uid: int | None = None
    gid: int | None = None
    debug: bool = False
    log_file: str | None = None
    kernel_flags: set[str] = field(default_factory=set)


def parse_mount_options(text: str) -> MountOptions:
    """`-o` options as mount(8) passes them: `rw,allow_other,_netdev,uid=1000`."""
    options = MountOptions()
    for option in filter(None, (part.strip() for part in text.split(","))):
        name, _, value = option.partition("=")
        if name == "allow_other":
            options.allow_other = True
        elif name == "ro":
            options.read_only = True
            options.kernel_flags.add("ro")
        elif name in ("uid", "gid") and value.isdigit():
            setattr(options, name, int(value))
        elif name == "debug":
            options.debug = True
        elif name == "log" and value:
            options.log_file = value
        elif option in _KERNEL_FLAGS:
            options.kernel_flags.add(option)
        elif option not in _USERSPACE and not option.startswith(_USERSPACE_PREFIXES):
            raise MountError(f"unknown mount option {option!r}; known: allow_other, ro, rw, uid=N, gid=N, "
                             f"log=FILE, debug, {', '.join(sorted(_KERNEL_FLAGS))}")
    return options


class Daemon:
    """What a mount is made of: the FUSE operations over the volumes, and the shared block cache."""

    def __init__(self, config: Config, options: MountOptions):
        self.config = config
        self.started = time.monotonic()
        self.options = options
        self.uid = config.uid if options.uid is None else options.uid
        self.gid = config.gid if options.gid is None else options.gid
        self.cache: BlockCache | None = None
        self.known_attributes: KnownAttributes | None = None
        self.known_listings: KnownListings | None = None
        self.staging: StagingArea | None = None
        self.health = Health()  # of each object volume's store, after its last request
        self.stores = Stores(config.cache.dir, config.retries, _ca_bundles(config))
        self.memory = MemoryBudgets.for_blocks_of(config.cache.block_size)
        receive_buffers.kept = self.memory.receive_buffers_kept
        self.prefetcher = Prefetcher(self.memory.background_fill_slots)
        self.nursery: trio.Nursery | None = None  # while it serves
        volumes = {volume.path: (volume, self.make_volume(volume)) for volume in config.volumes}
        self.operations = Operations(Namespace(InodeTable(), [(path, made, self.read_only(volume))
                                                              for path, (volume, made) in volumes.items()],
                                               self.uid, self.gid))
        self.reloader = Reloader(self, volumes)
        if config.metrics_listen is not None:
            self.operations.requests = FuseRequests()

    def read_only(self, volume: VolumeConfig) -> bool:
        return volume.read_only or self.options.read_only

    def make_volume(self, volume: VolumeConfig) -> Volume:
        read_only = self.read_only(volume)
        if volume.host_path is not None:
            return HostVolume(volume.host_path, self.config.attr_timeout)
        cache = self.config.cache
        if self.cache is None:
            self.cache = BlockCache(cache.dir, cache.max_size, cache.block_size, self.memory.filled_blocks,
                                    self.memory.unwritten)
            self.known_attributes = KnownAttributes(cache.dir)
            self.known_listings = KnownListings(cache.dir)
        source = volume.objects
        store = TrioStore(self.stores.store_for(source, volume.read_only), self.health.volume(volume.name))
        shared = dict(cache=self.cache, known_attributes=self.known_attributes, prefetcher=self.prefetcher,
                      memory=self.memory, metadata_ttl=source.effective_ttl(cache.metadata_ttl),
                      read_ahead=cache.read_ahead, uid=self.uid, gid=self.gid)
        if source.single_object:
            return SingleObjectVolume(store, source.prefix, source.version_id, source.checksum_sha256, **shared)
        shared["known_listings"] = self.known_listings  # not a single object's: its volume's listing is its own
        if read_only:
            return ObjectVolume(store, source.prefix, read_only=True, key_filter=source.filter, **shared)
        staging = self.config.staging
        if self.staging is None:
            self.staging = StagingArea(staging.dir, staging.max_size)
        threshold = staging.multipart_threshold if store.multipart else sys.maxsize
        uploads = UploadSettings(threshold, staging.part_size or store.part_size,
                                 staging.parallel_parts, staging.write_back)
        return WritableObjectVolume(store, source.prefix, self.staging, uploads, source.rename_limit,
                                    key_filter=source.filter, **shared)

    def fetch_ca_bundles(self, config: Config):
        """Fetches the CA bundles CONFIG's volumes name that the stores do not have yet; ConfigError naming the
        key of one that cannot be had."""
        missing = {url: key for url, key in config.ca_bundles.items() if url not in self.stores.ca_bundles}
        self.stores.ca_bundles.update(_ca_bundles(replace(config, ca_bundles=missing)))

    def set_log_level(self, level: str):
        """The config's `log.level`, unless the mount's `debug` option overrides it."""
        if not self.options.debug:
            set_log_level(logging.getLevelName(level.upper()))

    def configured_log_level(self) -> int:
        """The config's `log.level` as last read, unless the mount's `debug` option overrides it."""
        return logging.DEBUG if self.options.debug else logging.getLevelName(self.reloader.log_level.upper())

    @property
    def volumes(self) -> list[Volume]:
        return self.operations.namespace.volumes

    def commands(self) -> dict[str, Handler]:
        """What the daemon answers on its control socket (fsmount/control.py), by command."""
        async def status(request: dict, report) -> dict:
            return gather_status(self)

        async def warm(request: dict, report) -> dict:
            return await warm_cache(self.operations.namespace, self.cache, request["paths"], request["jobs"], report)

        async def reload(request: dict, report) -> dict:
            try:
                return await self.reloader.reload()
            except ConfigError as error:
                raise CommandFailed(str(error)) from None

        return {"status": status, "warm": warm, "reload": reload, **cache_control.commands(self)}

    def uploads(self) -> UploadTotals:
        """Of every rw object volume, summed."""
        return upload_totals((config.name, volume.staged_files.uploads) for config, volume in self.reloader.mounted()
                             if isinstance(volume, WritableObjectVolume))

    async def serve(self, mountpoint: str, ready: int | None, exporter: Exporter | None = None):
        """EXPORTER: serves the metrics meanwhile."""
        if exporter is not None:
            exporter.start()
        async with asyncio_loop():
            try:
                async with trio.open_nursery() as nursery:
                    self.nursery = nursery
                    self.operations.after_init = lambda: nursery.start_soon(_raise_kernel_read_ahead, mountpoint)
                    await nursery.start(_terminate_on_signal)
                    await nursery.start(self.reloader.reload_on_sighup)
                    await nursery.start(toggle_debug_on_signal, self.configured_log_level)
                    control = ControlServer(mountpoint)
                    control.commands.update(self.commands())
                    await nursery.start(control.serve)
                    nursery.start_soon(_hand_back_idle_buffers)
                    await nursery.start(self.prefetcher.run)
                    await self.reloader.start()
                    if ready is not None:
                        os.write(ready, b"1")
                        os.close(ready)
                    await pyfuse3.main()
                    for volume in self.volumes:
                        await volume.unmounted()
                    if self.cache is not None:
                        with trio.move_on_after(_WRITE_QUEUED_MOST):
                            await self.cache.write_queued()
                    nursery.cancel_scope.cancel()
            finally:
                for volume in self.volumes:
                    await volume.close()
                if self.cache is not None:
                    self.cache.close()
                    self.known_attributes.close()
                    self.known_listings.close()
                if self.staging is not None:
                    self.staging.close()
                if exporter is not None:
                    exporter.close()


def _ca_bundles(config: Config) -> dict[str, str]:
    """The file of each CA bundle URL the volumes' `verify` names, fetched now, once however many name it. One that
    cannot be had stops the mount, naming the key."""
    bundles = {}
    for url, key in config.ca_bundles.items():
        try:
            bundles[url] = fetch_ca_bundle(url, os.path.join(config.cache.dir, "ca"))
        except ValueError as error:
            raise ConfigError(config.file, key, str(error)) from None
    return bundles


def _return_large_buffers_to_the_system():
    """glibc would otherwise keep freed block buffers in per-thread arenas: its threshold for
    mapping large allocations rises once one is freed, and RSS grew past 240 MiB on one 1 GiB read."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).mallopt(_M_ARENA_MAX, _MALLOC_ARENAS)


def mount(config: Config, mountpoint: str, options: MountOptions, foreground: bool):
    """Mounts and serves; returns once unmounted. In the background, the caller's process exits
    as soon as the mount is live and the daemon serves it."""
    mountpoint = os.path.realpath(mountpoint)
    try:
        if not stat.S_ISDIR(os.stat(mountpoint).st_mode):
            raise MountError(f"mount point {mountpoint} is not a directory")
    except OSError as error:
        raise MountError(f"mount point {mountpoint}: {error.strerror}") from None
    log_file = setup_logging(options.log_file or config.log_file, logging.DEBUG if options.debug else
                             logging.getLevelName(config.log_level.upper()), config.cache.dir, foreground)
    try:
        daemon = Daemon(config, options)
    except OSError as error:  # the cache's directory: unusable, or another daemon's
        raise MountError(error.strerror or str(error)) from None
    exporter = _exporter(daemon, config.metrics_listen)
    fuse_options = set(pyfuse3.default_options) | options.kernel_flags
    fuse_options |= {f"fsname={config.file}", "subtype=fsmount"}
    if config.allow_other if options.allow_other is None else options.allow_other:
        fuse_options.add("allow_other")
    os.umask(0)  # the kernel has applied the caller's umask already
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # open files, block files and host directories
    _return_large_buffers_to_the_system()
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the daemon serves, which reloads then: the config is fresh
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)  # its default ends the process: one sent before serve() is lost
    try:
        pyfuse3.init(daemon.operations, mountpoint, fuse_options)
    except RuntimeError as error:
        raise MountError(f"cannot mount on {mountpoint}: {error}") from None
    ready = None if foreground else _daemonize(log_file)
    log.info("mounted %s on %s (%d volumes)", config.file, mountpoint, len(config.volumes))
    try:
        trio.run(daemon.serve, mountpoint, ready, exporter)
    except KeyboardInterrupt:
        pass
    except BaseException:
        log.exception("the daemon failed")
        raise
    finally:
        pyfuse3.close(unmount=True)
        log.info("unmounted %s", mountpoint)


def _exporter(daemon: Daemon, listen: tuple[str, int] | None) -> Exporter | None:
    """The metrics' server, its port bound now (before the daemon goes to the background), if the config asks for one."""
    if listen is None:
        return None
    try:
        return Exporter(daemon, listen)
    except OSError as error:
        raise MountError(f"metrics.listen: cannot listen on {listen[0]}:{listen[1]}: {error.strerror or error}") from None


async def _terminate_on_signal(task_status=trio.TASK_STATUS_IGNORED):
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        task_status.started()
        async for signum in signals:
            log.info("%s: unmounting", signal.Signals(signum).name)
            pyfuse3.terminate()
            return


async def _hand_back_idle_buffers():
    """A daemon that stopped fetching keeps no receive buffers: a large read leaves them at many blocks' worth."""
    while True:
        await trio.sleep(_IDLE_BUFFERS_CHECK)
        receive_buffers.release_idle()


async def _raise_kernel_read_ahead(mountpoint: str):
    """The INIT reply can only lower the mount's read-ahead, so it is raised after it."""
    with open("/proc/self/mountinfo") as mountinfo:
        devices = [line.split()[2] for line in mountinfo if line.split()[4] == mountpoint]
    if not devices:
        return
    try:
        with open(f"/sys/class/bdi/{devices[-1]}/read_ahead_kb", "w") as setting:
            setting.write(str(_KERNEL_READ_AHEAD_KB))
    except OSError as error:
        log.info("kernel read-ahead stays as it is (%s)", error.strerror)


def _daemonize(log_file: str | None) -> int:
    """Forks; the parent exits when the child reports it serves (0) or dies first (1)."""
    sys.stdout.flush()
    sys.stderr.flush()
    read_end, write_end = os.pipe()
    if os.fork():
        os.close(write_end)
        if os.read(read_end, 1):
            os._exit(0)
        print(f"fsmount: the daemon stopped before serving; see {log_file or 'syslog'}", file=sys.stderr, flush=True)
        os._exit(1)
    os.close(read_end)
    os.setsid()
    os.chdir("/")
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    return write_end
