"""The command line of `fsmount cache du|verify|evict|clear`: paths in a mount go to the daemon serving it; with
`--config`, paths of the tree as the config names them (`s3/dir`), done on the cache's directory while unmounted."""
import argparse
import functools
import json
import os
import sys

from fsmount import control
from fsmount.cache_control import offline
from fsmount.config import ConfigError, load_config
from fsmount.progress import Progress
from fsmount.units import format_size


def add_parser(commands: argparse._SubParsersAction):
    cache = commands.add_parser("cache", help="what the block cache holds: du, verify, evict, clear")
    actions = cache.add_subparsers(dest="action", required=True)
    du = actions.add_parser("du", help="bytes cached per volume, or under PATH")
    du.add_argument("path", nargs="?", help="a file or directory; a directory above volumes, or none: each volume")
    du.add_argument("--json", action="store_true", help="print the numbers as JSON")
    verify = actions.add_parser("verify", help="check every block's checksum; drop those damaged or missing")
    verify.add_argument("path", nargs="?", help="any path in the mount whose cache to check (default: .)")
    evict = actions.add_parser("evict", help="drop the cached blocks of files, or of everything under directories")
    evict.add_argument("paths", nargs="+", metavar="PATH")
    clear = actions.add_parser("clear", help="drop every cached block, or a volume's")
    clear.add_argument("volume", nargs="?", help="a volume: its path in a mount, or its name in the tree")
    for parser in (du, verify, evict, clear):
        parser.add_argument("--config", help="the tree's config, for a cache no daemon serves: paths are then "
                                             "the tree's, such as s3/dir")


def run(args: argparse.Namespace) -> int:
    try:
        if args.action == "du":
            ask, [path] = _target(args.config, [args.path])
            result = ask("cache.du", path=path)
            print(json.dumps(result, indent=2) if args.json else _usage_table(result, whole=not path))
        elif args.action == "verify":
            ask, _ = _target(args.config, [args.path])
            progress = _VerifyProgress()
            result = ask("cache.verify", progress=progress.update)
            progress.finish()
            print(f"{result['blocks']} blocks checked ({format_size(result['bytes'])}): {result['damaged']} damaged, "
                  f"{result['dropped']} of them dropped")
        elif args.action == "evict":
            ask, paths = _target(args.config, args.paths)
            _print_dropped(ask("cache.evict", paths=paths))
        else:
            ask, [path] = _target(args.config, [args.volume], volume_names=True)
            _print_dropped(ask("cache.clear", path=path if args.volume is not None else None))
    except (control.NotServing, control.CommandFailed, ConfigError, OSError) as error:
        print(f"fsmount cache {args.action}: {getattr(error, 'strerror', None) or error}", file=sys.stderr)
        return 1
    return 0


def _target(config_file: str | None, paths: list[str | None], volume_names: bool = False):
    """(ask(command, progress=None, **request), each of PATHS as names from the tree's top): the daemon of the mount
    the paths are in, or with CONFIG_FILE, its cache directory. A path None: the tree's top, of the mount holding the
    current directory or else of the only fsmount mount. VOLUME_NAMES: a path that is in no mount and no file names
    a volume of the only fsmount mount."""
    if config_file is not None:
        config = load_config(config_file)
        return functools.partial(offline, config), [_names(path or "") for path in paths]
    points, named = set(), []
    for path in paths:
        point = control.mount_holding(path or ".")
        if path is None:
            point = point or _only_mount()
            named.append([])
        elif point is None and volume_names and not os.path.exists(path):
            point = _only_mount()
            named.append(_names(path))
        elif point is None:
            raise control.CommandFailed(f"{path} is in no fsmount mount; with --config CONFIG, name the tree's paths")
        else:
            relative = os.path.relpath(os.path.realpath(path), point)
            named.append(_names(relative if relative != "." else ""))
        points.add(point)
    if len(points) > 1:
        raise control.CommandFailed(f"the paths are in {len(points)} mounts: one mount at a time")
    return functools.partial(control.ask, points.pop()), named


def _only_mount() -> str:
    mounts = list(control.mounts())
    if len(mounts) != 1:
        raise control.CommandFailed(f"{len(mounts) or 'no'} fsmount mounts: name a path in one, or give --config")
    return mounts[0]


def _names(path: str) -> list[str]:
    names = [name for name in path.split("/") if name and name != "."]
    if ".." in names:
        raise control.CommandFailed(f"{path}: a path of the tree has no '..'")
    return names


def _usage_table(result: dict, whole: bool) -> str:
    """The lines of `du`; WHOLE: a last one with the whole cache's."""
    rows = [(entry["bytes"], entry["blocks"], entry["path"]) for entry in result["entries"]]
    cache = result["cache"]
    if whole:
        rows.append((cache["bytes"], cache["blocks"], f"(the whole cache, {cache['dir']})"))
    return "\n".join(f"{format_size(used):>10}  {used:>14} bytes  {blocks:>8} blocks  {name}"
                     for used, blocks, name in rows)


def _print_dropped(result: dict):
    print(f"{result['blocks']} blocks dropped ({format_size(result['bytes'])})")
    if result["in_use"]:
        print(f"{result['in_use']} blocks kept: readers held them throughout")


class _VerifyProgress:
    """The bytes checked so far, as the progress lines of a verify tell them."""

    def __init__(self):
        self._progress: Progress | None = None

    def update(self, line: dict):
        if self._progress is None:
            self._progress = Progress(line["total"], "verify", "checked")
        self._progress.add(line["done"] - self._progress.done)

    def finish(self):
        if self._progress is not None:
            self._progress.finish()
