"""Datasets read as training jobs read them, through a real mount on moto: every file of a tree read whole, in a
shuffled order, by several threads at once; what the server is asked, counted in its request log."""
import os
import random
from concurrent.futures import ThreadPoolExecutor

from conftest import wait_for
from servers import Proxy
from test_object_volume import drop_page_cache, fill_bucket, s3_config

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
