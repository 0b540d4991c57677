"""`fsmount cache du|verify|evict|clear` on a real mount of moto S3, asked of the daemon while mounted and done on the
cache's directory with --config while not."""
import functools
import json
import os
import subprocess
import threading
from pathlib import Path

import pytest
import trio
import trio.testing

from conftest import FSMOUNT, wait_for
from fsmount.cache import blockio, maintenance
from fsmount.cache.block_index import Selection
from fsmount.cache.blocks import BlockCache, block_name
from fsmount.units import format_size
from test_object_volume import drop_page_cache, fill_bucket, s3_config

# A test reads at most two files of a directory whole: a third would start a sweep that fetches its other files
# ahead of their readers (fsmount/volumes/prefetch.py), and the cache would hold more than was read.
FILES = {
    "a.bin": os.urandom(3 * 2**20 + 100),  # three blocks of 1 MiB in files of their own, a small one packed
    "dir/b.bin": os.urandom(2**20 + 2**19),
    "dir/sub/c.txt": os.urandom(10_000),
    "dir.txt": os.urandom(5_000),  # beside dir/, not in it
    "other.bin": os.urandom(2**20),
}


class Tree:
    """A volume `bucket` of FILES, mounted on demand; `cache(...)` runs `fsmount cache` as a user would: with paths in
    the mount while it is mounted, or (UNMOUNTED) with the daemon stopped, --config and the tree's paths."""

    def __init__(self, workspace: Path, moto, mount, unmounted: bool):
        self.moto, self.start_daemon, self.unmounted = moto, mount, unmounted
        self.bucket = fill_bucket(moto, FILES)
        self.config = s3_config(workspace, moto, self.bucket)
        self.mountpoint = workspace / "mnt"
        self.cache_dir = workspace / "cache"
        self.daemon = None

    def read(self, key: str) -> bytes:
        if self.daemon is None:
            self.daemon = self.start_daemon(self.config, self.mountpoint)
        return (self.mountpoint / "bucket" / key).read_bytes()

    def gets(self, key: str) -> int:
        return self.moto.requests(f"GET /{self.bucket}/{key}")

    def cache(self, action: str, *paths: str, options: tuple[str, ...] = (), check: bool = True, cwd: str | None = None
              ) -> subprocess.CompletedProcess:
        """`fsmount cache ACTION PATHS... OPTIONS`, each PATH a path in the tree ("" its top, "bucket/dir"), from
        CWD (a path in the tree) while mounted."""
        if self.unmounted:
            self.stop()
            arguments = [*paths, "--config", str(self.config)]
        else:
            if self.daemon is None:
                self.daemon = self.start_daemon(self.config, self.mountpoint)
            arguments = [str(self.mountpoint / path) for path in paths]
        done = subprocess.run([FSMOUNT, "cache", action, *arguments, *options], capture_output=True, text=True,
                              timeout=60, cwd=None if cwd is None or self.unmounted else self.mountpoint / cwd)
        if check:
            assert done.returncode == 0, done.stderr
        return done

    def du(self, path: str) -> dict:
        return json.loads(self.cache("du", path, options=("--json",)).stdout)

    def written(self, size: int):
        """Waits until the cache holds SIZE bytes: a daemon writes the blocks it fetched after their reads."""
        wait_for(lambda: self.du("")["cache"]["bytes"] == size, 10, f"{size} bytes in the cache")

    def reread(self, key: str) -> bytes:
        """KEY's bytes as a new read gets them: not from the kernel's pages."""
        drop_page_cache()
        return self.read(key)

    def stop(self):
        if self.daemon is not None:
            self.daemon.stop()
            self.daemon = None


@pytest.fixture(params=["mounted", "unmounted"])
def tree(request, workspace, moto, mount):
    tree = Tree(workspace, moto, mount, request.param == "unmounted")
    yield tree
    tree.stop()


def used(result: dict) -> dict[str, int]:
    return {entry["path"]: entry["bytes"] for entry in result["entries"]}


@pytest.mark.mount
def test_du_counts_the_bytes_read_per_volume_and_per_path(tree):
    for key in ("a.bin", "dir/b.bin", "dir/sub/c.txt", "dir.txt"):
        assert tree.read(key) == FILES[key]
    read = sum(len(FILES[key]) for key in ("a.bin", "dir/b.bin", "dir/sub/c.txt", "dir.txt"))
    tree.written(read)
    whole = tree.du("")
    assert used(whole) == {"bucket": read}
    assert whole["cache"]["bytes"] == read
    assert json.loads(tree.cache("du", options=("--json",), cwd="bucket/dir").stdout) == whole  # no PATH: each volume
    assert used(tree.du("bucket/dir")) == {"bucket/dir": len(FILES["dir/b.bin"]) + len(FILES["dir/sub/c.txt"])}
    assert used(tree.du("bucket/a.bin")) == {"bucket/a.bin": len(FILES["a.bin"])}
    assert used(tree.du("bucket/dir.txt")) == {"bucket/dir.txt": len(FILES["dir.txt"])}
    assert used(tree.du("bucket/other.bin")) == {"bucket/other.bin": 0}
    lines = tree.cache("du", "bucket/dir").stdout.splitlines()
    assert len(lines) == 1 and f" {len(FILES['dir/b.bin']) + len(FILES['dir/sub/c.txt'])} bytes" in lines[0]


@pytest.mark.mount
def test_evict_drops_a_files_blocks_and_the_next_read_fetches_them_again(tree):
    for key in ("a.bin", "other.bin"):
        tree.read(key)
    tree.written(len(FILES["a.bin"]) + len(FILES["other.bin"]))
    before = {key: tree.gets(key) for key in ("a.bin", "other.bin")}
    done = tree.cache("evict", "bucket/a.bin")
    assert done.stdout.startswith("4 blocks dropped ")
    assert used(tree.du("bucket/a.bin")) == {"bucket/a.bin": 0}
    assert used(tree.du("bucket/other.bin")) == {"bucket/other.bin": len(FILES["other.bin"])}
    assert tree.read("a.bin") == FILES["a.bin"]  # the kernel's pages of it are gone too
    assert tree.reread("other.bin") == FILES["other.bin"]
    assert tree.gets("a.bin") > before["a.bin"]
    assert tree.gets("other.bin") == before["other.bin"]


@pytest.mark.mount
def test_evict_of_a_directory_drops_everything_under_it(tree):
    for key in ("a.bin", "dir/b.bin", "dir/sub/c.txt"):
        tree.read(key)
    tree.written(sum(len(FILES[key]) for key in ("a.bin", "dir/b.bin", "dir/sub/c.txt")))
    tree.cache("evict", "bucket/dir")
    assert used(tree.du("")) == {"bucket": len(FILES["a.bin"])}


@pytest.mark.mount
def test_clear_empties_a_volume_and_with_no_volume_the_whole_cache(tree):
    for key in ("a.bin", "dir/b.bin"):
        tree.read(key)
    tree.written(len(FILES["a.bin"]) + len(FILES["dir/b.bin"]))
    tree.cache("clear", "bucket")
    assert used(tree.du("")) == {"bucket": 0}
    tree.read("other.bin")
    tree.written(len(FILES["other.bin"]))
    tree.cache("clear", cwd="bucket/dir")
    assert tree.du("")["cache"]["bytes"] == 0
    assert tree.reread("other.bin") == FILES["other.bin"]


def damage(path: Path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(data)


@pytest.mark.mount
def test_verify_drops_damaged_blocks_and_the_next_read_gets_the_right_bytes(tree):
    for key in ("a.bin", "dir/sub/c.txt"):
        tree.read(key)
    tree.written(len(FILES["a.bin"]) + len(FILES["dir/sub/c.txt"]))
    own = sorted(path for path in (tree.cache_dir / "blocks").rglob("*") if path.is_file() and path.parent.name != "segments")
    [segment] = (tree.cache_dir / "blocks" / "segments").iterdir()  # a.bin's last 100 bytes, then c.txt
    damage(own[0])
    damage(segment)  # in c.txt's bytes
    before = {key: tree.gets(key) for key in ("a.bin", "dir/sub/c.txt")}
    done = tree.cache("verify", "")
    assert done.stdout.strip() == (f"5 blocks checked ({format_size(len(FILES['a.bin']) + 10_000)}): "
                                   "2 damaged, 2 of them dropped")
    assert "verify: 100%" in done.stderr
    assert tree.du("")["cache"]["bytes"] == len(FILES["a.bin"]) + 10_000 - 2**20 - 10_000
    assert tree.reread("a.bin") == FILES["a.bin"]
    assert tree.reread("dir/sub/c.txt") == FILES["dir/sub/c.txt"]
    assert tree.gets("a.bin") == before["a.bin"] + 1
    assert tree.gets("dir/sub/c.txt") == before["dir/sub/c.txt"] + 1
    assert "0 damaged" in tree.cache("verify", "").stdout


@pytest.mark.mount
def test_a_cache_a_daemon_holds_names_its_mount(workspace, moto, mount):
    tree = Tree(workspace, moto, mount, unmounted=False)
    tree.read("a.bin")
    done = subprocess.run([FSMOUNT, "cache", "du", "--config", str(tree.config)], capture_output=True, text=True)
    assert done.returncode == 1
    assert f"in use by the daemon serving {tree.mountpoint}" in done.stderr


@pytest.mark.mount
def test_a_path_in_no_volume_is_an_error(tree):
    tree.read("a.bin")
    done = tree.cache("du", "nothing/here", check=False)
    assert done.returncode == 1 and "/nothing/here: no volume is there" in done.stderr


@pytest.mark.server
async def test_a_block_a_reader_holds_is_dropped_once_the_reader_is_done(s3_bucket, tmp_path, monkeypatch):
    store, _ = s3_bucket
    data = os.urandom(2**20)
    info = await store.put("object", data)
    name = block_name(store.identity, info.key, info.version, 0)
    fetch = functools.partial(store.read, info.key, 0, len(data), info.version)
    first = BlockCache(str(tmp_path), 10 * 2**20, 2**20)
    await first.read(name, 0, len(data), fetch, origin=(store.identity, info.key))
    first.close()
    checking, checked = threading.Event(), threading.Event()

    def held_check(*place):  # a new process checks a block at its first use, holding it meanwhile
        checking.set()
        checked.wait(30)
        return intact(*place)

    intact = blockio.intact
    monkeypatch.setattr(blockio, "intact", held_check)
    cache = BlockCache(str(tmp_path), 10 * 2**20, 2**20)
    results = {}

    async def read():
        results["read"] = await cache.read(name, 0, len(data), fetch)

    async def evict():
        results["evict"] = await maintenance.evict(cache, [Selection(store.identity, key=info.key)])

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read)
        await trio.to_thread.run_sync(checking.wait, 10)
        nursery.start_soon(evict)
        await trio.testing.wait_all_tasks_blocked()
        assert cache.contains(name) and "evict" not in results
        checked.set()
    assert results == {"read": data, "evict": {"blocks": 1, "bytes": len(data), "in_use": 0}}
    assert not cache.contains(name) and cache.size == 0


@pytest.mark.mount
def test_a_volume_a_reload_added_is_counted_and_evicted(workspace, moto, mount):
    tree = Tree(workspace, moto, mount, unmounted=False)
    tree.read("a.bin")
    tree.config.write_text(tree.config.read_text().replace(
        "volumes {", f'volumes {{ more {{ source: "s3://{tree.bucket}/dir", endpoint: "{moto.url}" }}', 1))
    reload = subprocess.run([FSMOUNT, "reload", str(tree.mountpoint)], capture_output=True, text=True, timeout=60)
    assert reload.stdout == "added        more\n", reload.stderr
    assert (tree.mountpoint / "more" / "b.bin").read_bytes() == FILES["dir/b.bin"]
    tree.written(len(FILES["a.bin"]) + len(FILES["dir/b.bin"]))
    assert used(tree.du("")) == {"bucket": len(FILES["a.bin"]) + len(FILES["dir/b.bin"]), "more": len(FILES["dir/b.bin"])}
    tree.cache("evict", "more")
    assert used(tree.du("")) == {"bucket": len(FILES["a.bin"]), "more": 0}
