"""`fsmount warm` through a running daemon: the files under a path, or a manifest's, fetched into the block cache, after
which reading them makes no store request; one that would not fit is refused before it fetches anything."""
import random
import subprocess

import pytest

from buckets import relayed_bucket
from conftest import FSMOUNT
from test_object_volume import drop_page_cache, volume_config

pytestmark = pytest.mark.mount

MIB = 2**20
SMALL = {f"train/part{index % 3}/sample{index:03}.bin": random.Random(index).randbytes(5000 + 911 * index)
         for index in range(30)}
LARGE = {"train/shard.bin": random.Random(99).randbytes(3 * MIB + 777)}  # four blocks of 1 MiB
OTHER = {"other/notes.bin": random.Random(7).randbytes(40000)}
OBJECTS = {**SMALL, **LARGE, **OTHER}


@pytest.fixture
def relayed(request):
    with relayed_bucket(request, "s3", OBJECTS) as relayed:
        yield relayed


def warm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([FSMOUNT, "warm", *args], capture_output=True, text=True, timeout=120)


def mount_relayed(workspace, mount, relayed, max_size="1GiB"):
    bucket, relay = relayed
    mount(volume_config(workspace, bucket, ttl="1h", max_size=max_size, url=relay.url), workspace / "mnt")
    return workspace / "mnt" / "bucket"


def test_a_warmed_tree_is_read_without_a_store_request(relayed, workspace, mount):
    root = mount_relayed(workspace, mount, relayed)
    relay = relayed[1]
    done = warm(str(root / "train"), "--jobs", "4")
    assert done.returncode == 0, done.stderr
    train = {**SMALL, **LARGE}
    assert f"warmed {len(train)} files" in done.stdout
    assert f"{len(train)} fetched" in done.stdout and "0 already cached, 0 failed" in done.stdout
    assert "warm: 100%" in done.stderr  # no terminal: plain progress lines
    ranged = relay.requests("GET", "/train/")
    assert ranged == len(SMALL) + 4  # one GET a small file, one a block of the large one
    before = len(relay.exchanges)
    drop_page_cache()
    for key, data in train.items():
        assert (root / key).read_bytes() == data
    assert [str(exchange) for exchange in relay.exchanges[before:]] == []
    again = warm(str(root / "train"))
    assert again.returncode == 0 and f"0 fetched (0B), {len(train)} already cached" in again.stdout
    assert len(relay.exchanges) == before
    (root / "other" / "notes.bin").read_bytes()
    assert relay.requests("GET", "/other/notes.bin") == 1  # not warmed: read from the store


def test_a_manifest_names_the_files_to_warm(relayed, workspace, mount):
    root = mount_relayed(workspace, mount, relayed)
    relay = relayed[1]
    chosen = sorted(SMALL)[::5]
    manifest = workspace / "manifest.txt"
    manifest.write_text("".join(f"{root / key}\n" for key in chosen))
    done = warm("--from", str(manifest))
    assert done.returncode == 0, done.stderr
    assert f"warmed {len(chosen)} files" in done.stdout
    assert relay.requests("GET", "/train/") == len(chosen)
    before = len(relay.exchanges)
    drop_page_cache()
    assert all((root / key).read_bytes() == SMALL[key] for key in chosen)
    assert len(relay.exchanges) == before


def test_a_warm_up_larger_than_the_cache_is_refused_before_any_fetch(relayed, workspace, mount):
    root = mount_relayed(workspace, mount, relayed, max_size="2MiB")
    relay = relayed[1]
    done = warm(str(root))
    assert done.returncode == 1
    assert "do not fit in the cache (2MiB)" in done.stderr and "cache.max_size" in done.stderr
    assert relay.requests("GET", "/train/") == 0 and relay.requests("GET", "/other/") == 0


def test_paths_outside_a_mount_or_missing_in_it_are_errors(relayed, workspace, mount):
    root = mount_relayed(workspace, mount, relayed)
    outside = warm(str(workspace))
    assert outside.returncode == 1 and "is in no fsmount mount" in outside.stderr
    missing = warm(str(root / "train" / "no-such-file"), str(root / "other"))
    assert missing.returncode == 1
    assert "warmed 1 files" in missing.stdout and "1 failed" in missing.stdout
    assert "failed   /bucket/train/no-such-file" in missing.stdout
