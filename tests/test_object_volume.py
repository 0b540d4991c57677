"""Object store volumes through a real mount: listings, bytes, the block cache and consistency, on every kind of
store (moto, Azurite, fake-gcs-server), and what only S3's request log shows, on moto."""
import errno
import hashlib
import itertools
import os
import stat
import subprocess
import time

import pytest

from buckets import BUCKETS, KINDS, SERVER_SCRIPT_NAME, Bucket, S3Bucket, new_bucket
from conftest import wait_for, write_config
from fsmount.volumes.object_reads import SEEKS_AT_RANDOM
from servers import s3_admin, serve

pytestmark = pytest.mark.mount

BLOCK = 2**20
TTL = 2  # volume_config's metadata_ttl, in seconds
BIG = os.urandom(5 * BLOCK + 12345)
OBJECTS = {
    "a.txt": b"hello from s3\n",
    "data/big.bin": BIG,
    "data/sub/small.csv": b"x,y\n1,2\n",
    "empty/": b"",
    "both": b"a file shadowed by the directory of the same name",
    "both/inside.txt": b"inside\n",
    "odd//name": b"an empty segment",
    "dots/../escape": b"a dot-dot segment",
    "ünïcode name.txt": "ünïcode\n".encode(),
}
_buckets = itertools.count()


def fill_bucket(server, objects) -> str:
    return S3Bucket(server, objects).name


def volume_config(directory, bucket: Bucket, ttl=f"{TTL}s", extra="", max_size="1GiB", staging="", url=None,
                  retries="attempts: 4, max_time: 5s"):
    return write_config(directory, f"""
        cache {{ dir: "{directory}/cache", max_size: {max_size}, block_size: 1MiB, read_ahead: 4MiB, metadata_ttl: {ttl} }}
        staging {{ write_back: 0, {staging} }}
        retries {{ {retries} }}
        {bucket.config(extra, url)}
    """)


def s3_config(directory, server, bucket: str, **options):
    """The config of a volume of BUCKET, which fill_bucket made on SERVER (moto, or a Proxy in front of it)."""
    return volume_config(directory, S3Bucket(server, name=bucket), **options)


@pytest.fixture(params=KINDS)
def any_mount(request, workspace, mount):
    """(volume root, Bucket, daemon) of a volume of a bucket holding OBJECTS, on each kind of store."""
    objects = {key: data for key, data in OBJECTS.items() if request.param != "azure" or "/../" not in key}
    bucket = new_bucket(request, request.param, objects)  # Azure's blob URLs can't carry a `..` segment
    daemon = mount(volume_config(workspace, bucket), workspace / "mnt")
    return workspace / "mnt" / "bucket", bucket, daemon


@pytest.fixture
def s3_mount(workspace, moto, mount):
    bucket = fill_bucket(moto, OBJECTS)
    daemon = mount(s3_config(workspace, moto, bucket), workspace / "mnt")
    return workspace / "mnt" / "bucket", bucket, daemon


def drop_page_cache():
    with open("/proc/sys/vm/drop_caches", "w") as drop:
        drop.write("1")


def test_listing_and_bytes(any_mount):
    root, bucket, _ = any_mount
    dots = [] if bucket.kind == "azure" else ["dots"]
    assert sorted(os.listdir(root)) == ["a.txt", "both", "data", *dots, "empty", "odd", "ünïcode name.txt"]
    assert (root / "a.txt").read_bytes() == OBJECTS["a.txt"]
    assert os.stat(root / "data" / "big.bin").st_size == len(BIG)
    assert hashlib.sha256((root / "data" / "big.bin").read_bytes()).digest() == hashlib.sha256(BIG).digest()
    assert (root / "ünïcode name.txt").read_bytes() == OBJECTS["ünïcode name.txt"]


def test_directories_markers_and_names_that_cannot_be_files(any_mount):
    root, bucket, _ = any_mount
    assert os.path.isdir(root / "empty") and os.listdir(root / "empty") == []
    assert os.path.isdir(root / "both") and os.listdir(root / "both") == ["inside.txt"]
    assert os.listdir(root / "odd") == []
    if bucket.kind != "azure":
        assert os.listdir(root / "dots") == []
    for missing in ("odd/name", "nothing", "data/nothing"):
        with pytest.raises(FileNotFoundError):
            os.stat(root / missing)


def test_cp_r_gives_identical_bytes(any_mount, tmp_path):
    root, _, _ = any_mount
    subprocess.run(["cp", "-r", str(root / "data"), str(tmp_path / "copy")], check=True)
    assert (tmp_path / "copy" / "big.bin").read_bytes() == BIG
    assert (tmp_path / "copy" / "sub" / "small.csv").read_bytes() == OBJECTS["data/sub/small.csv"]


def test_a_name_over_255_bytes_is_enametoolong_unless_an_object_has_it(workspace, moto, mount):
    long_name = "l" * 300  # a key may hold one; no file system can make one
    bucket = fill_bucket(moto, {f"dir/{long_name}": b"long"})
    mount(s3_config(workspace, moto, bucket), workspace / "mnt")
    root = workspace / "mnt" / "bucket"
    assert (root / "dir" / long_name).read_bytes() == b"long"
    for missing in (root / "dir" / ("m" * 256), workspace / "mnt" / ("m" * 256)):  # in a volume, above them
        with pytest.raises(OSError) as error:
            os.stat(missing)
        assert error.value.errno == errno.ENAMETOOLONG
    with pytest.raises(FileNotFoundError):
        os.stat(root / "dir" / ("m" * 255))


def test_files_opened_in_listing_order_are_fetched_ahead_once_each(workspace, moto, mount):
    files = {f"scan/file-{index:02d}": os.urandom(3000 + index) for index in range(40)}
    bucket = fill_bucket(moto, {**files, "scan/sub/inner.txt": b"inner"})
    mount(s3_config(workspace, moto, bucket), workspace / "mnt")
    directory = workspace / "mnt" / "bucket" / "scan"
    names = sorted(os.listdir(directory))

    def gets(name):
        return moto.requests(f"GET /{bucket}/scan/{name}?")

    for name in names[:3]:
        assert (directory / name).read_bytes() == files[f"scan/{name}"]
    wait_for(lambda: gets(names[6]) == 1, 10, "the files after a scan's first three to be fetched ahead")
    for name in names[3:]:
        if name != "sub":
            assert (directory / name).read_bytes() == files[f"scan/{name}"]
    assert [gets(name) for name in names if name != "sub"] == [1] * 40


def test_reads_across_block_boundaries(any_mount):
    root, _, _ = any_mount
    with open(root / "data" / "big.bin", "rb", buffering=0) as stream:
        for offset, size in ((BLOCK - 1, 2), (0, 3 * BLOCK + 7), (2 * BLOCK - 100, BLOCK + 200), (len(BIG) - 10, 100)):
            assert os.pread(stream.fileno(), size, offset) == BIG[offset:offset + size]


def test_the_kernel_reads_ahead_a_megabyte(s3_mount):
    root, _, _ = s3_mount
    os.listdir(root)
    device = os.stat(root.parent).st_dev
    with open(f"/sys/class/bdi/{os.major(device)}:{os.minor(device)}/read_ahead_kb") as setting:
        assert setting.read().strip() == "1024"


def test_a_read_only_volume_shows_fsmount_s_own_attributes_and_takes_none(s3_mount):
    root, _, _ = s3_mount
    assert "user.fsmount.etag" in os.listxattr(root / "a.txt")
    for call, expected in ((lambda: os.getxattr(root / "a.txt", "user.x"), errno.ENODATA),
                           (lambda: os.setxattr(root / "a.txt", "user.x", b"v"), errno.EROFS)):
        with pytest.raises(OSError) as error:
            call()
        assert error.value.errno == expected


def test_a_files_mode_comes_from_its_metadata_without_write_bits_when_read_only(workspace, moto, mount):
    """s3fs writes st_mode in decimal, rclone's metadata has it in octal."""
    bucket = S3Bucket(moto, {"plain.txt": b"x"})
    for key, mode in (("tool.sh", str(stat.S_IFREG | 0o755)), ("rclone.sh", "0100750")):
        bucket.admin.put_object(Bucket=bucket.name, Key=key, Body=b"#!/bin/sh\n", Metadata={"mode": mode})
    mount(volume_config(workspace, bucket), workspace / "mnt")
    root = workspace / "mnt" / "bucket"
    assert {name: stat.S_IMODE(os.stat(root / name).st_mode) for name in ("plain.txt", "tool.sh", "rclone.sh")} == \
        {"plain.txt": 0o444, "tool.sh": 0o555, "rclone.sh": 0o550}


def test_read_only_volume_refuses_writes(any_mount):
    root, _, _ = any_mount
    for attempt in (lambda: open(root / "new", "w"), lambda: open(root / "a.txt", "r+"),
                    lambda: os.unlink(root / "a.txt"), lambda: os.mkdir(root / "d"), lambda: os.rmdir(root / "empty"),
                    lambda: os.rename(root / "a.txt", root / "b.txt"), lambda: os.truncate(root / "a.txt", 0),
                    lambda: os.utime(root / "a.txt", (0, 0)), lambda: os.chmod(root / "a.txt", 0o600),
                    lambda: os.mknod(root / "node")):
        with pytest.raises(OSError) as error:
            attempt()
        assert error.value.errno == errno.EROFS


def test_a_prefix_of_many_objects_lists_page_by_page(workspace, moto, mount):
    bucket = fill_bucket(moto, {})
    admin = s3_admin(moto)
    names = [f"item-{index:05d}" for index in range(1500)]
    for name in names:
        admin.put_object(Bucket=bucket, Key=f"many/{name}", Body=b"")
    mount(s3_config(workspace, moto, bucket, ttl="1h"), workspace / "mnt")
    assert sorted(os.listdir(workspace / "mnt" / "bucket" / "many")) == names
    assert moto.requests(f"GET /{bucket}?list-type=2", "prefix=many/&", "continuation-token=") == 1
    lists = moto.requests(f"GET /{bucket}?list-type=2", "prefix=many/&")
    assert sorted(os.listdir(workspace / "mnt" / "bucket" / "many")) == names
    assert moto.requests(f"GET /{bucket}?list-type=2", "prefix=many/&") == lists  # within the TTL: no request


def test_a_listing_the_store_gave_out_of_name_order_stays_true_to_changes(workspace, moto, mount):
    """Key order is not name order: `a.b` comes before `a/`, here at the end of the first page. The
    directory `a` renamed and the file `a.b` removed leave the listing, and a new file joins it."""
    bucket = fill_bucket(moto, {})
    admin = s3_admin(moto)
    names = [f"a-{index:03d}" for index in range(999)]
    for key in [f"many/{name}" for name in names] + ["many/a.b", "many/a/inside"]:
        admin.put_object(Bucket=bucket, Key=key, Body=b"x")
    mount(s3_config(workspace, moto, bucket, ttl="1h", extra="mode: rw"), workspace / "mnt")
    many = workspace / "mnt" / "bucket" / "many"
    assert len(os.listdir(many)) == 1001
    assert moto.requests(f"GET /{bucket}?list-type=2", "prefix=many/&", "continuation-token=") == 1
    os.rename(many / "a", many / "z")
    os.unlink(many / "a.b")
    (many / "a-x").write_bytes(b"new")
    assert sorted(os.listdir(many)) == sorted(names + ["a-x", "z"])
    assert (many / "z" / "inside").read_bytes() == b"x"


def first_bytes(path) -> bytes:
    with open(path, "rb") as stream:
        return stream.read(100)


def changed_behind_the_mount(path, bucket: Bucket, key: str, looked_up: float) -> bytes:
    """Puts new bytes, as long as BIG, at KEY of BUCKET, whose file PATH the mount looked up at LOOKED_UP (a
    time.monotonic()): until the TTL, the mount answers the version it knows, from its cache; then the new one."""
    new = os.urandom(len(BIG))
    bucket.put(key, new)
    checked_at = time.monotonic()
    stale = first_bytes(path)
    if checked_at - looked_up < TTL:
        assert stale == BIG[:100]
    wait_for(lambda: first_bytes(path) == new[:100], 3 * TTL, "the new version, after the TTL")
    return new


def test_a_changed_object_is_seen_after_the_ttl_and_never_mixed(any_mount):
    root, bucket, _ = any_mount
    path = root / "data" / "big.bin"
    looked_up = time.monotonic()
    assert first_bytes(path) == BIG[:100]
    new = changed_behind_the_mount(path, bucket, "data/big.bin", looked_up)
    assert hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(new).digest()


def test_the_cache_survives_a_remount(workspace, moto, mount):
    bucket = fill_bucket(moto, {"data/big.bin": BIG})
    config = s3_config(workspace, moto, bucket)
    first = mount(config, workspace / "mnt")
    assert (workspace / "mnt" / "bucket" / "data" / "big.bin").read_bytes() == BIG
    first.stop()
    gets = moto.requests(f"GET /{bucket}/data/big.bin")
    assert gets == 6
    mount(config, workspace / "mnt")
    drop_page_cache()
    assert (workspace / "mnt" / "bucket" / "data" / "big.bin").read_bytes() == BIG
    assert moto.requests(f"GET /{bucket}/data/big.bin") == gets


CHUNK = 128 * 1024  # what a random read fetches
RANDOM_OFFSETS = [((index * 7 + 3) % 39 + 1) * CHUNK + 100 for index in range(SEEKS_AT_RANDOM)]  # chunks of BIG


def random_reads(path):
    """Enough reads at random, each in a chunk of its own, that the handle is taken to read at random."""
    with open(path, "rb", buffering=0) as stream:
        for offset in RANDOM_OFFSETS:
            assert os.pread(stream.fileno(), 4096, offset) == BIG[offset:offset + 4096]


def test_random_reads_of_a_large_object_fetch_one_chunk_each(workspace, moto, mount):
    bucket = fill_bucket(moto, {"big.bin": BIG})
    daemon = mount(s3_config(workspace, moto, bucket, max_size="8MiB"), workspace / "mnt")  # too big to fill whole
    random_reads(workspace / "mnt" / "bucket" / "big.bin")
    daemon.wait_settled()
    assert moto.requests(f"GET /{bucket}/big.bin") == len(RANDOM_OFFSETS)


def test_streams_read_at_once_from_seeks_on_one_handle_fetch_whole_blocks_and_not_the_whole_object(
        workspace, moto, mount):
    """As pyarrow reads column chunks of a Parquet file from threads of its own: each a seek, then on from there,
    in reads as large as the kernel sends (1 MiB)."""
    data = os.urandom(32 * BLOCK)
    bucket = fill_bucket(moto, {"table.parquet": data})
    daemon = mount(s3_config(workspace, moto, bucket), workspace / "mnt")
    starts = [2 * BLOCK + 100, 12 * BLOCK + 100, 22 * BLOCK + 100]
    descriptor = os.open(workspace / "mnt" / "bucket" / "table.parquet", os.O_RDONLY | os.O_DIRECT)
    try:
        for step in range(0, 4 * BLOCK, BLOCK):
            for start in starts:
                assert os.pread(descriptor, BLOCK, start + step) == data[start + step:start + step + BLOCK]
    finally:
        os.close(descriptor)
    daemon.wait_settled()
    # each stream: the 5 blocks it reads from and at most 4 read ahead of them (read_ahead: 4MiB). Read as one
    # stream, every read would fetch 128 KiB chunks, and the object would be filled whole.
    assert moto.requests(f"GET /{bucket}/table.parquet") <= len(starts) * (5 + 4)


def test_an_object_read_at_random_is_filled_whole_in_the_background(s3_mount, moto):
    root, bucket, daemon = s3_mount
    random_reads(root / "data" / "big.bin")
    blocks = len(BIG) // BLOCK + 1

    def gets():
        return moto.requests(f"GET /{bucket}/data/big.bin")

    wait_for(lambda: gets() >= blocks, 30, "the background fill")
    daemon.wait_settled()
    before = gets()
    drop_page_cache()
    assert (root / "data" / "big.bin").read_bytes() == BIG
    assert gets() == before


def resident(path) -> int:
    """Bytes of PATH in the kernel's page cache."""
    return int(subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
                              capture_output=True, text=True, check=True).stdout)


def test_an_object_read_at_random_goes_whole_into_the_kernels_pages(s3_mount, moto):
    root, bucket, _ = s3_mount
    path = root / "data" / "big.bin"
    random_reads(path)
    wait_for(lambda: resident(path) >= len(BIG), 30, "every page of the file in the kernel")
    before = moto.requests(f"GET /{bucket}/data/big.bin")
    assert path.read_bytes() == BIG
    assert moto.requests(f"GET /{bucket}/data/big.bin") == before


def test_an_object_read_at_random_through_o_direct_is_filled_whole_without_its_pages(s3_mount, moto):
    root, bucket, daemon = s3_mount
    path = root / "data" / "big.bin"
    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        for offset in RANDOM_OFFSETS:
            assert os.pread(descriptor, 4096, offset) == BIG[offset:offset + 4096]
    finally:
        os.close(descriptor)
    wait_for(lambda: moto.requests(f"GET /{bucket}/data/big.bin") >= len(BIG) // BLOCK + 1, 30,
             "the background fill of every block")
    daemon.wait_settled()
    assert resident(path) == 0
    assert (root / "a.txt").read_bytes() == OBJECTS["a.txt"]
    assert daemon.process.poll() is None, daemon.log()
    assert "Traceback" not in daemon.log()


def test_an_object_changed_while_its_pages_go_to_the_kernel_shows_only_its_new_bytes(any_mount):
    root, bucket, daemon = any_mount
    path = root / "data" / "big.bin"
    looked_up = time.monotonic()
    random_reads(path)
    assert first_bytes(path) == BIG[:100]
    new = changed_behind_the_mount(path, bucket, "data/big.bin", looked_up)
    assert hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(new).digest()
    daemon.wait_settled()  # an old version's pages that came late would show on a later read
    assert hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(new).digest()


@pytest.mark.parametrize("kind", KINDS)
def test_even_the_debug_log_shows_no_signed_request_and_no_library_chatter(request, workspace, mount, kind):
    bucket = new_bucket(request, kind, {"data/a.txt": b"a"})
    daemon = mount(volume_config(workspace, bucket), workspace / "mnt", "-o", "debug")
    root = workspace / "mnt" / "bucket"
    assert os.listdir(root / "data") == ["a.txt"] and (root / "data" / "a.txt").read_bytes() == b"a"
    logged = daemon.log()
    for request_detail in ("Authorization", "Signature", "X-Amz-Credential", "sig=", "Request URL", "GET /"):
        assert request_detail not in logged


@pytest.mark.expect_log(
    r"ERROR fsmount\.stores\.s3: bucket no-such-bucket does not exist at \S+: listing and reading its volume fail with EIO$",
)
def test_a_bucket_that_does_not_exist_is_one_log_line_and_eio(workspace, mount, moto):
    daemon = mount(s3_config(workspace, moto, "no-such-bucket"), workspace / "mnt")
    root = workspace / "mnt" / "bucket"
    for look in (os.listdir, lambda path: os.stat(path / "file"), lambda path: os.listdir(path / "dir")):
        with pytest.raises(OSError) as error:
            look(root)
        assert error.value.errno == errno.EIO
    said = [line for line in daemon.log().splitlines() if " INFO " not in line]
    assert len(said) == 1 and "bucket no-such-bucket does not exist at http://127.0.0.1:" in said[0]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.expect_log(r"WARNING fsmount\.fs\.operations: read failed: \[Errno 5\] GET big\.bin \[\d+\+\d+\]: ")
def test_a_store_that_goes_down_gives_eio_and_keeps_cached_bytes(workspace, mount, kind):
    server = serve(SERVER_SCRIPT_NAME[kind], workspace)
    try:
        bucket = BUCKETS[kind](server, {"big.bin": BIG})
        mount(volume_config(workspace, bucket, ttl="1h"), workspace / "mnt")
        path = workspace / "mnt" / "bucket" / "big.bin"
        with open(path, "rb", buffering=0) as stream:
            assert os.pread(stream.fileno(), 100, 0) == BIG[:100]
            server.stop()
            drop_page_cache()
            assert os.pread(stream.fileno(), 100, 0) == BIG[:100]
            with pytest.raises(OSError) as error:
                os.pread(stream.fileno(), 100, 4 * BLOCK)
            assert error.value.errno == errno.EIO
    finally:
        server.stop()


def test_a_daemon_killed_mid_fill_serves_whole_blocks_after_a_restart(workspace, moto, mount):
    big = os.urandom(48 * BLOCK)
    bucket = fill_bucket(moto, {"big.bin": big})
    config = s3_config(workspace, moto, bucket)
    path = workspace / "mnt" / "bucket" / "big.bin"
    blocks = workspace / "cache" / "blocks"
    daemon = mount(config, workspace / "mnt")
    reader = subprocess.Popen(["cat", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: len([p for p in blocks.rglob("*") if p.is_file()]) >= 4, 30, "the first block fills")
    daemon.process.kill()
    daemon.stop()
    reader.wait(timeout=10)
    mount(config, workspace / "mnt")
    assert hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(big).digest()
    assert list(blocks.rglob("*.tmp")) == []
