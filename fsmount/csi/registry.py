"""The node's fsmount volumes: one daemon per volume (same attributes, credentials, mount flags and mode), bind-mounted
into each target path that publishes it and ended with the last; the node's cache bound, shared out among them; all
of it kept in the state directory, so that a restarted plugin takes up its daemons and repairs what a dead one left."""
import collections
import contextlib
import dataclasses
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass, field

from grpc import StatusCode

from fsmount import control
from fsmount.csi import mounts
from fsmount.csi.volume_config import (VOLUME, InvalidVolume, NodeDefaults, cache_share, check, daemon_key, mask,
                                       staging_dir, volume_config, write_private)
from fsmount.staging.area import read_journal
from fsmount.units import format_size

log = logging.getLogger(__name__)

SINGLE_NODE_SINGLE_WRITER = 6  # VolumeCapability.AccessMode: one workload on one node
_START_MOST = 120  # seconds a daemon may take to mount (a CA bundle to fetch, a bucket's region to learn)
_DRAIN_MOST = 90  # seconds an unpublish waits for an ended daemon's uploads, within kubelet's two minutes
_ASK_MOST = 10  # seconds a daemon may take to answer on its control socket: a hung one is not serving
_LOG_LINES = 5  # of a daemon's log, in the error of a daemon that did not start


class CsiError(Exception):
    """A request's failure, with the gRPC code the CSI spec gives it; the message holds no secret."""

    def __init__(self, code: StatusCode, message: str):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Publication:
    """What a NodePublishVolume asks, checked for the fields the spec requires."""
    volume_id: str
    target: str
    attributes: dict[str, str]
    secrets: dict[str, str] = field(repr=False)
    read_only: bool
    options: str  # the mount flags, as fsmount's -o
    access_mode: int
    capability: str  # a digest of the volume capability: a second target must ask for the same
    params: str  # a digest of all but the secrets: a second publish of one target must ask for the same


@dataclass
class Record:
    """A daemon of the node: its volume, its share of the bounds, and the targets it is bound into."""
    key: str
    volume_id: str
    options: str
    cache_size: int
    pid: int | None = None
    targets: dict[str, dict] = field(default_factory=dict)  # path -> {"access_mode", "capability", "params"}


class Registry:
    def __init__(self, state_dir: str, node: NodeDefaults, max_volumes: int):
        self.state_dir = os.path.abspath(state_dir)
        self.node = node
        self.max_volumes = max_volumes
        self.volumes_dir = os.path.join(self.state_dir, "volumes")
        self.logs_dir = os.path.join(self.state_dir, "logs")
        for directory in (self.state_dir, self.volumes_dir, self.logs_dir, node.cache_dir):
            os.makedirs(directory, mode=0o700, exist_ok=True)
        os.chmod(self.state_dir, 0o700)  # it holds the volumes' credentials
        self.salt = _salt(os.path.join(self.state_dir, "salt"))
        self.records = {key: self._load(key) for key in sorted(os.listdir(self.volumes_dir))
                        if os.path.exists(self._file(key, "record.json"))}
        self._lock = threading.Lock()  # the records and the budget
        self._volume_locks: dict[str, threading.Lock] = collections.defaultdict(threading.Lock)

    def _file(self, key: str, name: str) -> str:
        return os.path.join(self.volumes_dir, key, name)

    def _mountpoint(self, record: Record) -> str:
        return self._file(record.key, "mnt")

    def _load(self, key: str) -> Record:
        with open(self._file(key, "record.json")) as stream:
            return Record(**json.load(stream))

    def _save(self, record: Record):
        write_private(self._file(record.key, "record.json"), dataclasses.asdict(record))

    def _records_of(self, volume_id: str) -> list[Record]:
        return [record for record in list(self.records.values()) if record.volume_id == volume_id]

    def _volume_lock(self, volume_id: str) -> threading.Lock:
        with self._lock:
            return self._volume_locks[volume_id]

    def recover(self):
        """Takes up the daemons and targets of the state directory: a daemon that died is started again and its
        targets bound anew; targets that are gone are forgotten, and a daemon left with none is unmounted (its record
        goes once it has sent its uploads and exited)."""
        for record in list(self.records.values()):
            try:
                with self._volume_lock(record.volume_id):
                    for target in [t for t in record.targets if not os.path.lexists(t) and not mounts.dead(t)]:
                        del record.targets[target]
                    self._save(record)
                    if record.targets:
                        self._serve(record)
                    elif mounts.mounted(self._mountpoint(record)):
                        mounts.unmount(self._mountpoint(record), lazy=mounts.dead(self._mountpoint(record)))
            except (CsiError, mounts.MountFailed, OSError) as error:
                log.warning("volume %s: not repaired: %s", record.volume_id, error)
        with self._lock:
            self._reap()

    def publish(self, request: Publication):
        with self._volume_lock(request.volume_id):
            same_volume = self._records_of(request.volume_id)
            for record in same_volume:
                published = record.targets.get(request.target)
                if published is not None:
                    if published["params"] != request.params:
                        raise CsiError(StatusCode.ALREADY_EXISTS, f"{request.target} holds volume {request.volume_id} "
                                                                  "published with other arguments")
                    self._serve(record)
                    return
            others = [published for record in same_volume for published in record.targets.values()]
            if others and SINGLE_NODE_SINGLE_WRITER in [request.access_mode] + [p["access_mode"] for p in others]:
                raise CsiError(StatusCode.FAILED_PRECONDITION, f"volume {request.volume_id} is published for a single "
                                                               "writer already")
            if any(published["capability"] != request.capability for published in others):
                raise CsiError(StatusCode.FAILED_PRECONDITION, f"volume {request.volume_id} is published with another "
                                                               "volume capability already")
            key = daemon_key(self.salt, request.volume_id, request.attributes, request.secrets, request.options,
                             request.read_only)
            record = self._record(key, request)
            try:
                self._serve(record)
                self._ensure_bound(record, request.target)
            except BaseException:
                if not record.targets:  # a daemon of no target: its config, with the secret, goes too
                    with contextlib.suppress(mounts.MountFailed, OSError):  # the first error is the one to tell
                        self._stop(record)
                raise
            record.targets[request.target] = {"access_mode": request.access_mode, "capability": request.capability,
                                              "params": request.params}
            self._save(record)
            log.info("published volume %s on %s (daemon %s, pid %s)", request.volume_id, request.target, key,
                     record.pid)

    def unpublish(self, volume_id: str, target: str):
        with self._volume_lock(volume_id):
            record = next((record for record in self._records_of(volume_id) if target in record.targets), None)
            mounts.clear(target)
            mounts.remove_directory(target)
            if record is None:
                return
            del record.targets[target]
            self._save(record)
            log.info("unpublished volume %s from %s", volume_id, target)
            if not record.targets:
                self._stop(record)

    def usage(self, volume_id: str, path: str) -> tuple[dict | None, str | None]:
        """(the status of the daemon serving PATH, or None; why it is not serving, or None)."""
        path = os.path.abspath(path)
        record = next((record for record in self._records_of(volume_id) if path in record.targets), None)
        if record is None:
            raise CsiError(StatusCode.NOT_FOUND, f"volume {volume_id} is not published on {path}")
        if not mounts.serving(path):
            return None, f"{path} is not served: its fsmount daemon is gone; publishing it again repairs it"
        try:
            return control.ask(self._mountpoint(record), "status", timeout=_ASK_MOST), None
        except (control.NotServing, control.CommandFailed, OSError) as error:
            return None, f"the fsmount daemon does not answer: {error}"

    def _serve(self, record: Record):
        """The record's daemon serving, and each of its targets bound to it: after a daemon died, all of them."""
        self._ensure_daemon(record)
        for target in record.targets:
            self._ensure_bound(record, target)

    def _record(self, key: str, request: Publication) -> Record:
        """The record of daemon KEY; for a new one, writes the daemon's config and checks it, then takes its share
        of the node's bounds."""
        if key in self.records:
            return self.records[key]
        share = cache_share(request.attributes) or self.node.cache_bound // self.max_volumes
        staging_size = self.node.staging_bound // self.max_volumes
        directory = os.path.join(self.volumes_dir, key)
        os.makedirs(directory, mode=0o700, exist_ok=True)
        try:
            config = volume_config(self.node, request.attributes, request.secrets, request.read_only,
                                   os.path.join(self.node.cache_dir, key), share, staging_size,
                                   os.path.join(self.logs_dir, f"{key}.log"))
            write_private(self._file(key, "fsmount.conf"), config)
            check(self._file(key, "fsmount.conf"), request.secrets)
            with self._lock:
                self._reap()
                if len(self.records) >= self.max_volumes:
                    raise CsiError(StatusCode.RESOURCE_EXHAUSTED, f"the node serves {len(self.records)} fsmount "
                                                                  "volumes already, as many as --max-volumes allows")
                left = self.node.cache_bound - sum(record.cache_size for record in self.records.values())
                if share > left:
                    raise CsiError(StatusCode.RESOURCE_EXHAUSTED,
                                   f"the volume's cache share, {format_size(share)}, is more than the "
                                   f"{format_size(left)} left of the node's {format_size(self.node.cache_bound)}")
                self._make_room(share, key)
                record = Record(key, request.volume_id, request.options, share)
                self.records[key] = record
                self._save(record)
                return record
        except InvalidVolume as error:
            shutil.rmtree(directory)
            raise CsiError(StatusCode.INVALID_ARGUMENT, str(error)) from None
        except CsiError:
            shutil.rmtree(directory)
            raise

    def _make_room(self, share: int, key: str):
        """Caches of volumes no daemon serves stay for their next publish, within the node's bound: the least
        recently used go, as a new daemon needs their room. One with uploads still waiting is kept."""
        taken = sum(record.cache_size for record in self.records.values())
        stopped = []
        for name in os.listdir(self.node.cache_dir):
            path = os.path.join(self.node.cache_dir, name)
            if name not in self.records and name != key and os.path.isdir(path):
                stopped.append((os.stat(path).st_mtime, _disk_usage(path), path, name))
        held = sum(used for _, used, _, _ in stopped)
        for _, used, path, name in sorted(stopped):
            if taken + held + share <= self.node.cache_bound:
                return
            if self._uploads_waiting(path):
                continue
            shutil.rmtree(path, ignore_errors=True)
            held -= used
            log.info("removed the cache of an ended volume, %s (%s), for room", name, format_size(used))

    def _uploads_waiting(self, cache_dir: str) -> bool:
        try:
            pending, kept = read_journal(staging_dir(self.node, cache_dir))
        except Exception:  # sqlite3's errors: a journal that cannot be read may still hold what no one uploaded
            return True
        return bool(pending or kept)

    def _ensure_daemon(self, record: Record):
        """Makes sure the record's daemon serves its mount point: one that died is cleared away and started again."""
        mountpoint, config = self._mountpoint(record), self._file(record.key, "fsmount.conf")
        if mounts.serving(mountpoint):
            if not mounts.running(record.pid, config):
                record.pid = self._pid(mountpoint)
                self._save(record)
            return
        if mounts.mounted(mountpoint):
            log.warning("volume %s: its daemon died; mounting it again", record.volume_id)
            mounts.clear(mountpoint)
        if mounts.running(record.pid, config) and not mounts.wait_for_exit(record.pid, config, _DRAIN_MOST):
            raise CsiError(StatusCode.UNAVAILABLE, f"the last daemon of volume {record.volume_id} is still uploading")
        os.makedirs(mountpoint, exist_ok=True)
        command = [_fsmount(), "mount", config, mountpoint] + (["-o", record.options] if record.options else [])
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=_START_MOST)
        except subprocess.TimeoutExpired:
            raise CsiError(StatusCode.DEADLINE_EXCEEDED, f"the daemon of volume {record.volume_id} did not mount "
                                                         f"within {_START_MOST} s") from None
        if result.returncode != 0:
            with open(config) as stream:
                secrets = _secret_values(json.load(stream))
            why = "\n".join([result.stderr.strip()] + self._log_tail(record))
            raise CsiError(StatusCode.INTERNAL, mask(f"the daemon of volume {record.volume_id} failed: {why}", secrets))
        record.pid = self._pid(mountpoint)
        self._save(record)

    def _log_tail(self, record: Record) -> list[str]:
        try:
            with open(os.path.join(self.logs_dir, f"{record.key}.log"), errors="replace") as stream:
                return stream.read().splitlines()[-_LOG_LINES:]
        except OSError:
            return []

    @staticmethod
    def _pid(mountpoint: str) -> int | None:
        try:
            return control.ask(mountpoint, "status", timeout=_ASK_MOST)["pid"]
        except (control.NotServing, control.CommandFailed, OSError):
            return None

    def _ensure_bound(self, record: Record, target: str):
        if mounts.serving(target):
            return
        mounts.clear(target)
        os.makedirs(target, exist_ok=True)
        mounts.bind(os.path.join(self._mountpoint(record), VOLUME), target)

    def _stop(self, record: Record):
        """Unmounts the daemon of a volume no target holds and waits for it to send what it owes its store;
        its record goes once it has exited."""
        mountpoint, config = self._mountpoint(record), self._file(record.key, "fsmount.conf")
        if mounts.mounted(mountpoint):
            mounts.unmount(mountpoint, lazy=mounts.dead(mountpoint))
        if mounts.running(record.pid, config) and not mounts.wait_for_exit(record.pid, config, _DRAIN_MOST):
            log.warning("volume %s: its daemon is still uploading; it exits when done", record.volume_id)
            return
        with self._lock:
            self._forget(record)

    def _reap(self):
        """Forgets the records of ended daemons that finished their uploads since."""
        for record in [record for record in self.records.values() if not record.targets]:
            if not mounts.running(record.pid, self._file(record.key, "fsmount.conf")):
                self._forget(record)

    def _forget(self, record: Record):
        shutil.rmtree(os.path.join(self.volumes_dir, record.key), ignore_errors=True)
        self.records.pop(record.key, None)
        log.info("volume %s: its daemon ended", record.volume_id)


def _salt(path: str) -> bytes:
    try:
        with open(path, "rb") as stream:
            return stream.read()
    except FileNotFoundError:
        salt = os.urandom(32)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as stream:
            stream.write(salt)
        return salt


def _secret_values(config: dict) -> dict[str, str]:
    """Every value of the config's credentials entries, to mask in what the daemon says."""
    values = {}
    for entries in config.get("credentials", {}).values():
        for index, entry in enumerate(entries):
            values.update({f"{index}.{key}": str(value) for key, value in entry.items()})
    return values


def _disk_usage(path: str) -> int:
    total = 0
    for directory, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(directory, name)).st_blocks * 512
            except FileNotFoundError:
                pass
    return total


def _fsmount() -> str:
    """The fsmount command beside this Python (a virtualenv's), else the one on PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), "fsmount")
    return beside if os.path.exists(beside) else shutil.which("fsmount") or "fsmount"
