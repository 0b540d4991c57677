"""Datasets read as training jobs read them, through a real mount on moto: every file of a tree read whole, in a
shuffled order, by several threads at once; what the server is asked, counted in its request log."""
import os
import random
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from buckets import S3Bucket
from conftest import FSMOUNT, wait_for
from servers import Proxy
from test_object_volume import drop_page_cache, fill_bucket, s3_config

pytestmark = pytest.mark.mount

READERS = 8
DATASET = {f"train/class-{index % 4}/sample-{index:03d}": os.urandom(10_000 + 997 * index) for index in range(64)}


def epoch(root, keys) -> dict[str, bytes]:
    """Every key's file under ROOT read whole, in KEYS' order, by READERS threads at once."""
    def read(key):
        with open(root / key, "rb") as stream:
            return key, stream.read()

    with ThreadPoolExecutor(READERS) as pool:
        return dict(pool.map(read, keys))


def shuffled(keys) -> list[str]:
    order = sorted(keys)
    random.Random(26).shuffle(order)
    return order


def test_the_first_read_of_a_small_object_costs_one_get_and_no_head(workspace, moto, mount):
    bucket = fill_bucket(moto, DATASET)
    mount(s3_config(workspace, moto, bucket, ttl="1h"), workspace / "mnt")
    root = workspace / "mnt" / "bucket"
    listed = sorted(os.path.relpath(os.path.join(parent, name), root)
                    for parent, _, names in os.walk(root) for name in names)
    assert listed == sorted(DATASET)
    assert epoch(root, shuffled(DATASET)) == DATASET
    assert [moto.requests(f"GET /{bucket}/{key}?") for key in sorted(DATASET)] == [1] * len(DATASET)
    assert moto.requests(f"HEAD /{bucket}/") == 0


def test_an_epoch_over_cached_files_asks_the_store_nothing(workspace, moto, mount):
    bucket = fill_bucket(moto, DATASET)
    mount(s3_config(workspace, moto, bucket, ttl="1h"), workspace / "mnt")
    root = workspace / "mnt" / "bucket"
    keys = shuffled(DATASET)
    assert epoch(root, keys) == DATASET
    asked = moto.requests(f"/{bucket}")
    drop_page_cache()  # the kernel forgets the files' pages: every read is the daemon's to answer
    assert epoch(root, keys) == DATASET
    assert moto.requests(f"/{bucket}") == asked


def test_eight_readers_of_eight_small_objects_keep_eight_gets_in_flight(workspace, moto, mount):
    bucket = fill_bucket(moto, DATASET)
    proxy = Proxy(moto.port)
    try:
        mount(s3_config(workspace, proxy, bucket, ttl="1h"), workspace / "mnt")
        root = workspace / "mnt" / "bucket"
        keys = shuffled(DATASET)[:READERS]
        for key in keys:
            os.stat(root / key)  # names and sizes known: what follows are the GETs alone
        proxy.stall_after(0)  # every request is held until all eight are under way, each on a connection
        before = proxy.connections
        with ThreadPoolExecutor(READERS) as pool:
            reads = pool.map(lambda key: (root / key).read_bytes(), keys)
            wait_for(lambda: proxy.connections - before == READERS, 10, "eight GETs on eight connections at once")
            proxy.up()
            assert list(reads) == [DATASET[key] for key in keys]
    finally:
        proxy.close()


SWEPT = {f"shuffled/file-{index:02d}": os.urandom(3000 + index) for index in range(40)}


def test_a_directory_read_whole_in_any_order_is_fetched_ahead_each_file_once(workspace, moto, mount):
    bucket = fill_bucket(moto, SWEPT)
    mount(s3_config(workspace, moto, bucket, ttl="1h"), workspace / "mnt")
    root = workspace / "mnt" / "bucket"
    assert len(os.listdir(root / "shuffled")) == len(SWEPT)
    keys = shuffled(SWEPT)
    for key in keys[:3]:
        assert (root / key).read_bytes() == SWEPT[key]
    wait_for(lambda: moto.requests(f"GET /{bucket}/shuffled/") > 3, 10, "files fetched ahead once three were read")
    assert epoch(root, keys[3:]) == {key: SWEPT[key] for key in keys[3:]}
    assert [moto.requests(f"GET /{bucket}/{key}?") for key in sorted(SWEPT)] == [1] * len(SWEPT)


def test_fetching_ahead_stops_soon_after_the_reads_stop(workspace, moto, mount):
    bucket = fill_bucket(moto, SWEPT)
    daemon = mount(s3_config(workspace, moto, bucket, ttl="1h"), workspace / "mnt")
    root = workspace / "mnt" / "bucket"
    os.listdir(root / "shuffled")

    def gets() -> int:
        return moto.requests(f"GET /{bucket}/shuffled/")

    keys = shuffled(SWEPT)
    for key in keys[:2]:
        assert (root / key).read_bytes() == SWEPT[key]
    daemon.wait_settled()
    assert gets() == 2  # two files read are no sweep yet
    assert (root / keys[2]).read_bytes() == SWEPT[keys[2]]
    daemon.wait_settled()
    assert gets() == 3 + 8  # eight fetched ahead once a third was read, and no more once the reads stopped
    unfetched = next(key for key in keys if moto.requests(f"GET /{bucket}/{key}?") == 0)
    assert (root / unfetched).read_bytes() == SWEPT[unfetched]
    daemon.wait_settled()
    assert gets() == 3 + 8 + 1 + 4  # four more for the one read


def listed(root) -> dict[str, int]:
    """Every file under ROOT (a `find` with a stat of each): path -> size."""
    return {os.path.relpath(os.path.join(parent, name), root): os.stat(os.path.join(parent, name)).st_size
            for parent, _, names in os.walk(root) for name in names}


def lists(moto, bucket) -> int:
    return moto.requests(f"GET /{bucket}?list-type=2")


def test_a_remount_finds_the_tree_without_listing_it_again(workspace, moto, mount):
    bucket = fill_bucket(moto, DATASET)
    config = s3_config(workspace, moto, bucket, ttl="1h")
    first = mount(config, workspace / "mnt")
    sizes = {key: len(data) for key, data in DATASET.items()}
    assert listed(workspace / "mnt" / "bucket") == sizes
    first.stop()
    listings, heads = lists(moto, bucket), moto.requests(f"HEAD /{bucket}/")
    assert listings > 0
    mount(config, workspace / "mnt")
    assert listed(workspace / "mnt" / "bucket") == sizes
    assert epoch(workspace / "mnt" / "bucket", shuffled(DATASET)) == DATASET
    assert (lists(moto, bucket), moto.requests(f"HEAD /{bucket}/")) == (listings, heads)
    status = subprocess.run([FSMOUNT, "status", str(config)], check=True, capture_output=True, text=True).stdout
    assert "listings     6 directories of 69 entries kept" in status  # the root, train and its 4 classes


def test_a_kept_listing_older_than_the_ttl_is_listed_again_in_the_background(workspace, moto, mount):
    bucket = fill_bucket(moto, DATASET)
    config = s3_config(workspace, moto, bucket, ttl="1s")
    first = mount(config, workspace / "mnt")
    directory = workspace / "mnt" / "bucket" / "train" / "class-0"
    before = sorted(os.listdir(directory))
    assert len(before) == 16
    kept_at = time.monotonic()
    first.stop()
    S3Bucket(moto, name=bucket).put("train/class-0/new-sample", b"added while unmounted")
    listings = lists(moto, bucket)
    wait_for(lambda: moto.requests(f"PUT /{bucket}/train/class-0/new-sample") == 1, 10, "the new object")
    mount(config, workspace / "mnt")
    time.sleep(max(0.0, kept_at + 1.1 - time.monotonic()))  # the kept listing is older than the TTL now
    assert sorted(os.listdir(directory)) == before  # the kept listing answers at once
    wait_for(lambda: "new-sample" in os.listdir(directory), 10, "the listing made again to show the new object")
    assert (directory / "new-sample").read_bytes() == b"added while unmounted"
    assert lists(moto, bucket) > listings


def test_metadata_ttl_never_keeps_a_listing_for_good(workspace, moto, mount):
    bucket = fill_bucket(moto, DATASET)
    config = s3_config(workspace, moto, bucket, ttl="1s", extra="metadata_ttl: never")
    check = subprocess.run([FSMOUNT, "check", str(config)], check=True, capture_output=True, text=True).stdout
    assert "(metadata ttl never)" in check
    config.write_text(config.read_text() + S3Bucket(moto, name=bucket).config(volume="fresh"))  # the cache's TTL
    first = mount(config, workspace / "mnt")
    listed(workspace / "mnt" / "bucket")
    directory, fresh = (workspace / "mnt" / volume / "train" / "class-1" for volume in ("bucket", "fresh"))
    before = sorted(os.listdir(directory))
    assert sorted(os.listdir(fresh)) == before
    kept_at = time.monotonic()
    first.stop()
    S3Bucket(moto, name=bucket).put("train/class-1/new-sample", b"never listed")
    listings = moto.requests(f"GET /{bucket}?list-type=2", "prefix=train/class-1/")
    mount(config, workspace / "mnt")
    time.sleep(max(0.0, kept_at + 1.1 - time.monotonic()))  # both kept listings are older than the cache's TTL
    assert sorted(os.listdir(directory)) == before
    assert sorted(os.listdir(fresh)) == before
    wait_for(lambda: "new-sample" in os.listdir(fresh), 10, "the volume of the cache's TTL to list again")
    assert sorted(os.listdir(directory)) == before  # listed before the other volume, which has listed again since
    assert moto.requests(f"GET /{bucket}?list-type=2", "prefix=train/class-1/") == listings + 1


def test_a_file_made_through_the_mount_is_listed_after_a_remount(workspace, moto, mount):
    bucket = fill_bucket(moto, DATASET)
    config = s3_config(workspace, moto, bucket, ttl="1h", extra="mode: rw")
    first = mount(config, workspace / "mnt")
    directory = workspace / "mnt" / "bucket" / "train" / "class-2"
    names = os.listdir(directory)
    (directory / "written").write_bytes(b"made here")
    first.stop()  # waits for the upload
    mount(config, workspace / "mnt")
    assert sorted(os.listdir(directory)) == sorted(names + ["written"])
    assert (directory / "written").read_bytes() == b"made here"


def test_a_second_daemon_on_the_same_cache_is_refused_with_a_clear_error(workspace, moto, mount):
    bucket = fill_bucket(moto, DATASET)
    config = s3_config(workspace, moto, bucket)
    mount(config, workspace / "mnt")
    (workspace / "other").mkdir()
    result = subprocess.run([FSMOUNT, "mount", str(config), str(workspace / "other"), "--foreground"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert f"the cache in {workspace}/cache is in use by another fsmount" in result.stderr
    assert "Traceback" not in result.stderr
