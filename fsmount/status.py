"""What `fsmount status` shows: a running daemon's state, gathered by the daemon; or, with no daemon, its journal."""
import os
import time

from fsmount.cache.listings import counts as listing_counts
from fsmount.config import Config
from fsmount.staging.area import CLOSED, kept_files, read_journal
from fsmount.stores.base import redact_url
from fsmount.units import format_size


def gather(daemon) -> dict:
    """The state of DAEMON (a fsmount.daemon.Daemon), as `fsmount status --json` prints it."""
    config = daemon.config
    cache = daemon.cache
    health = daemon.health.states()
    volumes = [{"path": "/" + volume_config.name, "source": redact_url(volume_config.source),
                "mode": "ro" if volume_config.read_only else "rw",
                "health": health.get(volume_config.name)}  # None: a host path, no store to answer
               for volume_config, _ in daemon.reloader.mounted()]
    uploads = daemon.uploads()
    staging = daemon.staging
    return {
        "config": config.file,
        "pid": os.getpid(),
        "uptime": time.monotonic() - daemon.started,
        "volumes": volumes,
        "cache": None if cache is None else {"dir": config.cache.dir, "used": cache.size, "limit": cache.max_size,
                                             "blocks": cache.blocks(), "hits": cache.counts.hits,
                                             "misses": cache.counts.misses},
        "memory_in_flight": 0 if cache is None else cache.unwritten_bytes,
        "staging": {"dir": config.staging.dir, "used": staging.used if staging else 0,
                    "limit": config.staging.max_size},
        "uploads": {"waiting": uploads.waiting, "uploading": uploads.uploading,
                    "failing": [{"volume": "/" + volume, "key": staged.key, "size": staged.size, "failures": failures,
                                 "error": staged.error} for volume, staged, failures in uploads.failing]},
        "kept_aside": kept_files(config.staging.dir),
    }


def describe(state: dict, mountpoint: str) -> str:
    """STATE (from `gather`) as lines for a terminal."""
    lines = [f"mount        {mountpoint}: {state['config']}, pid {state['pid']}, up {_duration(state['uptime'])}"]
    width = max(len(volume["path"]) for volume in state["volumes"]) if state["volumes"] else 0
    lines += [f"  {volume['path']:<{width}}  {volume['mode']}  {_health(volume['health'])}  {volume['source']}"
              for volume in state["volumes"]]
    lines += [f"  {'':<{width}}      last error at {_clock(volume['health']['last_error_at'])}: "
              f"{volume['health']['last_error']}" for volume in state["volumes"]
              if volume["health"] is not None and volume["health"]["last_error"] is not None]
    cache = state["cache"]
    if cache is not None:
        reads = cache["hits"] + cache["misses"]
        rate = f"hit rate {100 * cache['hits'] / reads:.1f}% of {reads} block reads" if reads else "no block read yet"
        lines.append(f"cache        {cache['dir']}: {format_size(cache['used'])} of {format_size(cache['limit'])} "
                     f"in {cache['blocks']} blocks, {rate}")
    lines.append(f"memory       {format_size(state['memory_in_flight'])} of blocks fetched and not yet on disk")
    staging, uploads = state["staging"], state["uploads"]
    lines.append(f"staging      {staging['dir']}: {format_size(staging['used'])} of {format_size(staging['limit'])}")
    lines.append(f"uploads      {uploads['waiting']} waiting, {uploads['uploading']} in progress, "
                 f"{len(uploads['failing'])} failing")
    lines += [f"  failing    {failed['volume']}: {failed['key']} ({format_size(failed['size'])}), "
              f"{failed['failures']} tries: {failed['error']}" for failed in uploads["failing"]]
    kept = state["kept_aside"]
    lines.append(f"kept aside   {len(kept)} files that were never closed, so never uploaded" + (":" if kept else ""))
    lines += [f"  {path}" for path in kept]
    return "\n".join(lines)


def _health(health: dict | None) -> str:
    if health is None:
        return "host   "
    return "ok     " if health["ok"] else "FAILING"


def _clock(when: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when))


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    return (f"{days}d " if days else "") + f"{hours:02d}:{minutes:02d}:{seconds:02d}"


def from_journal(config: Config) -> str:
    """What `fsmount status CONFIG` prints, with or without a daemon: the staged files that wait for an upload,
    and the files kept aside, as the journal has them."""
    staging = config.staging
    pending, kept = read_journal(staging.dir)
    waiting = [entry for entry in pending if entry.state == CLOSED]
    lines = [f"staging      {staging.dir}: at most {format_size(staging.max_size)}",
             f"uploads      {len(waiting)} waiting, {len(pending) - len(waiting)} files open for writing"]
    for entry in waiting:
        lines.append(f"  waiting    {format_size(entry.size):>10}  since {_clock(entry.since)}  {entry.store}/{entry.key}  ({entry.path})"
                     + (f"\n             last upload failed: {entry.error}" if entry.error else ""))
    lines.append(f"kept aside   {len(kept)} files that were never closed, so never uploaded"
                 + (":" if kept else ""))
    lines += [f"  {path}" for path in kept]
    directories, entries = listing_counts(config.cache.dir)
    lines.append(f"listings     {directories} directories of {entries} entries kept in {config.cache.dir}")
    return "\n".join(lines)
