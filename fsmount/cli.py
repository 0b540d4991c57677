"""The command line: `fsmount mount|check|status|sync|reload|umount|publish|warm|csi|cache` and the mount(8) helper
`mount.fsmount`."""
import argparse
import errno
import json
import os
import subprocess
import sys
import time
import urllib.parse

from fsmount import cache_cli, control
from fsmount.config import IPFS_API_ENV, Config, ConfigError, load_config, load_publish_target
from fsmount.stores.base import redact_url
from fsmount.daemon import MountError, mount, parse_mount_options
from fsmount.progress import Progress
from fsmount.staging.area import read_journal
from fsmount.status import describe as describe_status, from_journal as status_of_journal
from fsmount.warm import summary as warm_summary
from fsmount.stores.parts import GCS_PART_SIZE, PART_SIZE
from fsmount.units import format_size, format_ttl

_STATUS_TIMEOUT = 30  # seconds: a daemon that takes longer to say how it is, is not well


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="fsmount", description="One FUSE tree over object stores and linked host paths.")
    commands = parser.add_subparsers(dest="command", required=True)
    mount_parser = commands.add_parser("mount", help="mount the tree a config describes")
    mount_parser.add_argument("config")
    mount_parser.add_argument("mountpoint", nargs="?", help="default: the config's mountpoint")
    mount_parser.add_argument("-o", dest="options", default="", help="mount options, comma-separated")
    mount_parser.add_argument("-f", "--foreground", action="store_true", help="stay in the foreground, log to stderr")
    check_parser = commands.add_parser("check", help="validate a config and print its mount table")
    check_parser.add_argument("config")
    status_parser = commands.add_parser("status", help="what a running mount is doing; or, given a config, what waits "
                                                       "in its staging area")
    status_parser.add_argument("target", metavar="MOUNTPOINT|CONFIG")
    status_parser.add_argument("--json", action="store_true", help="the running daemon's state as JSON")
    sync_parser = commands.add_parser("sync", help="upload every file closed under PATH now, and wait")
    sync_parser.add_argument("path", nargs="?", default=".", help="a file or directory in a mount (default: .)")
    warm_parser = commands.add_parser("warm", help="fill the block cache with the files under PATHs of a running mount")
    warm_parser.add_argument("paths", nargs="*", metavar="PATH")
    warm_parser.add_argument("--from", dest="manifest", metavar="FILE", help="paths to warm, one a line ('-': stdin)")
    warm_parser.add_argument("--jobs", type=int, default=8, help="blocks fetched at once (default: 8)")
    reload_parser = commands.add_parser("reload", help="have the daemon read its config again and apply it (as SIGHUP)")
    reload_parser.add_argument("mountpoint")
    umount_parser = commands.add_parser("umount", help="unmount; the daemon then exits")
    umount_parser.add_argument("mountpoint")
    umount_parser.add_argument("-l", "--lazy", action="store_true", help="detach now, even while files are open")
    publish_parser = commands.add_parser("publish", help="publish a directory: a tarball in a store or file, or IPFS")
    publish_parser.add_argument("directory")
    publish_parser.add_argument("--to", required=True, metavar="TARGET",
                                help="ipfs, s3://bucket/key.tar.gz, azure://..., gs://... or file:///path.tar.gz")
    publish_parser.add_argument("--config", help="the config whose credentials, staging and retries to use")
    publish_parser.add_argument("--endpoint", help="the object store's URL, as a volume's `endpoint`")
    publish_parser.add_argument("--api", help=f"the IPFS node's RPC API, a multiaddr or URL (default: ${IPFS_API_ENV})")
    csi_parser = commands.add_parser("csi", help="serve the CSI node plugin, for Kubernetes")
    csi_parser.add_argument("--endpoint", required=True, help="the Unix socket to serve, as unix:///csi/csi.sock")
    csi_parser.add_argument("--node-id", required=True, help="this node's name, as the cluster knows it")
    csi_parser.add_argument("--config", help="the node config: defaults for every volume (cache, link_mounts, ...)")
    csi_parser.add_argument("--state-dir", default="/var/lib/fsmount-csi",
                            help="the plugin's state: the volumes' configs, mount points and daemons' logs")
    csi_parser.add_argument("--max-volumes", type=int, default=16,
                            help="volumes this node serves at most; each gets that share of cache.max_size")
    cache_cli.add_parser(commands)
    args = parser.parse_args(argv)
    if args.command == "cache":
        return cache_cli.run(args)
    if args.command == "csi":
        from fsmount.csi.service import serve  # gRPC's import is for the plugin alone
        return serve(args.endpoint, args.node_id, args.config, args.state_dir, args.max_volumes)
    if args.command == "publish":
        return publish(args.directory, args.to, args.config, args.endpoint, args.api)
    if args.command == "check":
        return _run(lambda: print(describe(load_config(args.config))))
    if args.command == "status":
        return status(args.target, args.json)
    if args.command == "sync":
        return sync(args.path)
    if args.command == "warm":
        return warm(args.paths, args.manifest, args.jobs)
    if args.command == "reload":
        return reload(args.mountpoint)
    if args.command == "umount":
        return umount(args.mountpoint, args.lazy)
    return _run(lambda: _mount(args.config, args.mountpoint, args.options, args.foreground))


def mount_helper(argv=None) -> int:
    """mount(8) calls this as `mount.fsmount CONFIG DIR [-sfnv] [-o OPTIONS]` (mount.fuse conventions)."""
    parser = argparse.ArgumentParser(prog="mount.fsmount")
    parser.add_argument("config")
    parser.add_argument("mountpoint")
    parser.add_argument("-o", dest="options", default="")
    for flag in ("-s", "-f", "-n", "-v"):  # sloppy, fake, no mtab, verbose: nothing to do for FUSE
        parser.add_argument(flag, action="store_true")
    parser.add_argument("-t", dest="type")
    args = parser.parse_args(argv)
    if args.f:
        return 0
    return _run(lambda: _mount(args.config, args.mountpoint, args.options, foreground=False))


def _mount(config_file: str, mountpoint: str | None, options: str, foreground: bool):
    config = load_config(config_file)
    mountpoint = mountpoint or config.mountpoint
    if not mountpoint:
        raise MountError(f"{config.file}: no mount point given and no 'mountpoint' key")
    mount(config, mountpoint, parse_mount_options(options), foreground)


def _run(action) -> int:
    try:
        action()
    except (ConfigError, MountError) as error:
        print(f"fsmount: {error}", file=sys.stderr)
        return 1
    return 0


def publish(directory: str, to: str, config_file: str | None, endpoint: str | None, api: str | None) -> int:
    """Publishes DIRECTORY to TO; prints the result on the last line of stdout: the root CID, or the tarball's URL
    with its `checksum_sha256=` and (where the bucket keeps versions) `version_id=`, as a volume of it would name them."""
    from fsmount import publish as publishing
    try:
        if not os.path.isdir(directory):
            raise OSError(errno.ENOTDIR, f"{directory}: not a directory")
        progress = Progress(publishing.file_bytes(directory), "publish", "read")
        scheme = to.partition("://")[0]
        if to == "ipfs":
            from fsmount.publish_ipfs import publish_ipfs
            result = publish_ipfs(directory, api, progress)
        elif scheme == "file":
            path = os.path.abspath(urllib.parse.unquote(urllib.parse.urlsplit(to).path))
            sha256 = publishing.publish_file(directory, path, progress)
            result = f"file://{path} checksum_sha256={sha256}"
        else:
            target = load_publish_target(config_file, to, endpoint)
            version, sha256 = publishing.run_with_stores(publishing.publish_object, directory, target, progress)
            result = f"{to} checksum_sha256={sha256}" + (f" version_id={version}" if version else "")
        progress.finish()
    except (ConfigError, OSError) as error:
        print(f"fsmount publish: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("fsmount publish: interrupted; nothing was published", file=sys.stderr)
        return 130
    print(result)
    return 0


def _metrics_url(listen: tuple[str, int] | None) -> str:
    if listen is None:
        return "off"
    host, port = listen
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/metrics and /healthz"


def status(target: str, as_json: bool) -> int:
    """The state of the daemon serving the mount TARGET (or the mount holding it); for a config file, its journal."""
    if not os.path.isdir(target):
        if as_json:
            print(f"fsmount status: --json needs a running daemon: give its mount point, not {target}", file=sys.stderr)
            return 1
        return _run(lambda: print(status_of_journal(load_config(target))))
    try:
        mountpoint = _mount_of(target)
        state = control.ask(mountpoint, "status", timeout=_STATUS_TIMEOUT)
    except (control.NotServing, control.CommandFailed, OSError) as error:
        print(f"fsmount status: {error}", file=sys.stderr)
        return 1
    print(json.dumps(state, indent=2) if as_json else describe_status(state, mountpoint))
    return 0


def _mount_of(path: str) -> str:
    mountpoint = control.mount_holding(path)
    if mountpoint is None:
        raise control.NotServing(f"{path} is in no fsmount mount")
    return mountpoint


def warm(paths: list[str], manifest: str | None, jobs: int) -> int:
    """Fills the cache with the files under PATHS and those FILE lists, through the daemon of each one's mount."""
    if manifest is not None:
        try:
            with sys.stdin if manifest == "-" else open(manifest) as lines:
                paths = paths + [line.rstrip("\n") for line in lines if line.strip()]
        except OSError as error:
            print(f"fsmount warm: {manifest}: {error.strerror}", file=sys.stderr)
            return 1
    if not paths:
        print("fsmount warm: no path given", file=sys.stderr)
        return 1
    by_mount: dict[str, list[str]] = {}
    for path in paths:
        try:
            mountpoint = _mount_of(path)
        except control.NotServing as error:
            print(f"fsmount warm: {error}", file=sys.stderr)
            return 1
        by_mount.setdefault(mountpoint, []).append(os.path.relpath(os.path.realpath(path), mountpoint))
    failed = False
    for mountpoint, inside in by_mount.items():
        started = time.monotonic()
        progress = None

        def show(step: dict):
            nonlocal progress
            if progress is None:
                progress = Progress(step["bytes_total"], "warm", "fetched or found")
            progress.add(step["bytes"] - progress.done, f"{step['files']}/{step['files_total']} files")

        try:
            result = control.ask(mountpoint, "warm", show, paths=[path if path != "." else "" for path in inside],
                                 jobs=jobs)
        except (control.NotServing, control.CommandFailed, OSError) as error:
            print(f"fsmount warm: {error}", file=sys.stderr)
            return 1
        finally:
            if progress is not None:
                progress.finish()
        print(warm_summary(result, time.monotonic() - started))
        failed |= bool(result["failed"])
    return 1 if failed else 0


def reload(mountpoint: str) -> int:
    """Asks the daemon serving MOUNTPOINT to reload its config; prints what changed, or why the config was refused."""
    try:
        changes = control.ask(_mount_of(mountpoint), "reload")
    except (control.NotServing, control.CommandFailed, OSError) as error:
        print(f"fsmount reload: {error}", file=sys.stderr)
        return 1
    print(describe_reload(changes))
    return 0


def describe_reload(changes: dict) -> str:
    """What `fsmount reload` prints of the daemon's answer (fsmount.reload.Changes)."""
    lines = [f"{what:<12} {name}{note}" for key, what, note in (
        ("added", "added", ""), ("removed", "removed", ""),
        ("waiting", "waiting", ": files of it are open; it leaves once they are closed"),
        ("arriving", "arriving", ": once the volume in its way has left"),
        ("credentials", "credentials", ": new ones, for every request from now on"),
        ("kept", "kept", ": no longer leaving")) for name in changes[key]]
    lines += [f"{'failed':<12} {name}: {why}" for name, why in changes["failed"].items()]
    if changes["log_level"]:
        lines.append(f"{'log level':<12} {changes['log_level']}")
    if changes["remount"]:
        lines.append(f"{'remount':<12} {', '.join(changes['remount'])} changed: that takes effect at the next mount")
    return "\n".join(lines) or "no change"


def umount(mountpoint: str, lazy: bool) -> int:
    if os.geteuid() == 0:
        command = ["umount"] + (["-l"] if lazy else []) + [mountpoint]
    else:
        command = ["fusermount3", "-u"] + (["-z"] if lazy else []) + [mountpoint]
    return subprocess.run(command).returncode


def sync(path: str) -> int:
    """fsync of PATH: the daemon uploads what waits under it (write-back) and answers once the store has it."""
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as error:
        print(f"fsmount sync: {path}: {error.strerror}", file=sys.stderr)
        if error.errno == errno.EIO:
            for line in _failed_uploads(path):
                print(f"  {line}", file=sys.stderr)
        return 1
    return 0


def _failed_uploads(path: str) -> list[str]:
    """The uploads the journal of the mount holding PATH says failed, with why: its config is the mount's source."""
    path = os.path.realpath(path)
    with open("/proc/self/mountinfo") as mountinfo:
        mounts = [(fields[4], line.split(" - ")[1].split()) for line in mountinfo for fields in [line.split()]]
    holding = [(point, source) for point, (kind, source, *_) in mounts
               if kind == "fuse.fsmount" and (path + "/").startswith(point.rstrip("/") + "/")]
    if not holding:
        return []
    try:
        config = load_config(max(holding)[1])
    except ConfigError:
        return []
    pending, _ = read_journal(config.staging.dir)
    return [f"{entry.store}/{entry.key}: {entry.error}" for entry in pending if entry.error]


def describe(config: Config) -> str:
    """The mount table `fsmount check` prints; sources are shown with any secret masked."""
    cache = config.cache
    parts = format_size(config.staging.part_size or PART_SIZE) + (
        "" if config.staging.part_size else f" (GCS: {format_size(GCS_PART_SIZE)})")
    links = ", ".join(f"{m.path} ({'ro' if m.read_only else 'rw'})" for m in config.link_mounts) or "none"
    lines = [
        f"config       {config.file}",
        f"mountpoint   {config.mountpoint or '(given on the command line)'}",
        f"access       uid {config.uid}, gid {config.gid}, allow_other {'yes' if config.allow_other else 'no'}",
        f"cache        {cache.dir}: at most {format_size(cache.max_size)}, blocks of {format_size(cache.block_size)}, "
        f"read-ahead {format_size(cache.read_ahead)}, metadata ttl {format_ttl(cache.metadata_ttl)}",
        f"staging      {config.staging.dir}: at most {format_size(config.staging.max_size)}, parts of "
        f"{parts} above {format_size(config.staging.multipart_threshold)}",
        f"link mounts  {links}",
        f"metrics      {_metrics_url(config.metrics_listen)}",
    ]
    if config.clearml_file:
        lines.append(f"clearml      {config.clearml_file}")
        lines += [f"  {taken.what}\n      from {taken.where}" for taken in config.clearml]
    lines.append("")
    width = max(len("PATH"), *(len(volume.name) for volume in config.volumes))
    lines.append(f"{'PATH':<{width}}  MODE  SOURCE")
    for volume in sorted(config.volumes, key=lambda v: v.path):
        ttl = volume.objects.metadata_ttl if volume.objects is not None else None
        note = "" if ttl is None else f"  (metadata ttl {format_ttl(ttl)})"
        lines.append(f"{volume.name:<{width}}  {'ro' if volume.read_only else 'rw'}    {redact_url(volume.source)}{note}")
        if volume.chosen:
            lines.append(f"{'':<{width}}        served from {volume.chosen}")
    return "\n".join(lines)
