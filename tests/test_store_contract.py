"""The contract every object store keeps, run unchanged against real local servers: moto (S3), Azurite
(Azure Blob) and fake-gcs-server (GCS)."""
import errno
import os
import time

import pytest
import trio
import urllib3
import trio_asyncio

from buckets import new_bucket
from conftest import open_bucket
from fsmount.credentials import AzureCredentials
from fsmount.stores.azure import AzureStore
from fsmount.stores.aio import TrioStore
from fsmount.stores.base import NotFound, PreconditionFailed, Unavailable
from fsmount.stores.retries import RetryPolicy
from fsmount.stores.s3 import S3Endpoint, S3Store
from servers import AZURITE_ACCOUNT, AZURITE_KEY, azurite_endpoint

pytestmark = pytest.mark.server

PART = 5 * 2**20  # the smallest part S3 accepts


SERVERS = {"s3": "moto", "azure": "azurite", "gcs": "fake_gcs"}


@pytest.fixture(params=list(SERVERS))
async def store(request):
    """An empty bucket of each kind of store, reached from trio through the seam."""
    async with open_bucket(request.param, request.getfixturevalue(SERVERS[request.param])) as (opened, _):
        yield opened


async def listing(store, prefix, delimiter="/", page_size=None):
    keys, prefixes, pages = [], [], 0
    async for page in store.list(prefix, delimiter, page_size):
        keys += [info.key for info in page.objects]
        prefixes += page.prefixes
        pages += 1
    return keys, prefixes, pages


async def test_put_then_stat(store):
    info = await store.put("dir/a.txt", b"hello", {"mtime": "1700000000"})
    stat = await store.stat("dir/a.txt")
    assert (stat.key, stat.size, stat.version) == ("dir/a.txt", 5, info.version)
    assert stat.metadata == {"mtime": "1700000000"}
    assert stat.mtime_ns > 0


async def test_a_listing_and_a_stat_agree_on_the_time(store):
    await store.put("timed", b"x")
    (page,) = [page async for page in store.list("")]
    listed, stat = page.objects[0], await store.stat("timed")
    assert abs(listed.mtime_ns - stat.mtime_ns) < 1e9  # a listing has milliseconds, a HEAD whole seconds
    assert abs(stat.mtime_ns / 1e9 - time.time()) < 300


async def test_a_new_put_is_a_new_version(store):
    first = await store.put("k", b"one")
    second = await store.put("k", b"two")
    assert first.version != second.version


async def test_ranged_reads(store):
    data = os.urandom(100_000)
    info = await store.put("blob", data)
    for start, length in ((0, 1), (0, 100_000), (4096, 8192), (99_990, 10), (99_990, 4096)):
        assert await store.read("blob", start, length, info.version) == data[start:start + length]


async def test_large_reads_held_at_once_keep_their_own_bytes(store):
    """Large bodies go into reused memory (ReceiveBuffers): never into memory a reader still holds."""
    first, second = os.urandom(3 * 2**20), os.urandom(3 * 2**20)
    one, two = await store.put("one", first), await store.put("two", second)
    held = await store.read("one", 0, len(first), one.version)
    for _ in range(3):
        assert await store.read("two", 0, len(second), two.version) == second
    assert held == first


async def test_read_at_a_stale_version_fails(store):
    old = await store.put("changing", b"old bytes")
    await store.put("changing", b"new bytes")
    with pytest.raises(PreconditionFailed) as error:
        await store.read("changing", 0, 4, old.version)
    assert error.value.errno == errno.ESTALE


async def test_missing_keys(store):
    with pytest.raises(NotFound) as error:
        await store.stat("absent")
    assert error.value.errno == errno.ENOENT
    gone = await store.put("gone", b"bytes")
    await store.delete("gone")
    with pytest.raises((NotFound, PreconditionFailed)):  # GCS can't tell a key gone from its generation gone
        await store.read("gone", 0, 10, gone.version)
    await store.delete("gone")


async def test_delimiter_listing(store):
    for key in ("top.txt", "d/one", "d/two", "d/sub/three", "e/", "e/x", "other/y"):
        await store.put(key, b"x")
    assert await listing(store, "") == (["top.txt"], ["d/", "e/", "other/"], 1)
    assert await listing(store, "d/") == (["d/one", "d/two"], ["d/sub/"], 1)
    assert await listing(store, "e/") == (["e/", "e/x"], [], 1)
    assert await listing(store, "nothing/") == ([], [], 1)


async def test_listing_streams_page_by_page(store):
    keys = [f"many/{index:05d}" for index in range(1100)]
    limit = trio.CapacityLimiter(16)

    async def put(key):
        async with limit:
            await store.put(key, b"")

    async with trio.open_nursery() as nursery:
        for key in keys:
            nursery.start_soon(put, key)
    listed, prefixes, pages = await listing(store, "many/", page_size=500)
    assert listed == keys and prefixes == [] and pages == 3


async def test_put_file_small_and_multipart(store, tmp_path):
    for size in (0, 1000, 2 * PART, 3 * PART + 12345):
        path = tmp_path / f"upload-{size}"
        data = os.urandom(size)
        path.write_bytes(data)
        info = await store.put_file(f"up/{size}", str(path), PART, PART, 3, {"mode": "644"})
        assert info.size == size and info.metadata == {"mode": "644"}
        assert await store.read(f"up/{size}", 0, size + 1, info.version) == data
        assert (await store.stat(f"up/{size}")).version == info.version


AWKWARD_KEYS = ["odd/a b+c%20d~e=f&g?h#i", "odd/ünïcødé ✓.txt", "odd/semi;colon,comma'quote\"(paren)[x]",
                 "odd/star*bang!at@dollar$^`{}|"]


async def test_keys_with_characters_a_url_escapes(store, tmp_path):
    """Every request that names a key (put, put in parts, read, stat, list, copy, delete) reaches that key."""
    part = tmp_path / "parts"
    part.write_bytes(os.urandom(PART + 1))
    for index, key in enumerate(AWKWARD_KEYS):
        data = key.encode() * 100
        info = await store.put(key, data, {"mtime": str(index)})
        assert await store.read(key, 0, len(data), info.version) == data
        assert (await store.stat(key)).metadata == {"mtime": str(index)}
        uploaded = await store.put_file(key + ".parts", str(part), PART, PART, 2)
        assert await store.read(key + ".parts", PART - 3, 10, uploaded.version) == part.read_bytes()[PART - 3:]
    keys, _, _ = await listing(store, "odd/")
    assert keys == sorted(AWKWARD_KEYS + [key + ".parts" for key in AWKWARD_KEYS])
    copied = await store.copy(AWKWARD_KEYS[0], AWKWARD_KEYS[1] + ".copy")
    assert await store.read(AWKWARD_KEYS[1] + ".copy", 0, 10, copied.version) == AWKWARD_KEYS[0].encode()[:10]
    for key in keys:
        await store.delete(key)
    with pytest.raises(NotFound):
        await store.stat(AWKWARD_KEYS[0])


async def test_delete_and_copy(store):
    await store.put("source", b"copied bytes")
    copied = await store.copy("source", "target")
    assert await store.read("target", 0, 100, copied.version) == b"copied bytes"
    await store.delete("source")
    with pytest.raises(NotFound):
        await store.stat("source")
    assert (await store.stat("target")).size == 12


async def test_copy_in_place_replaces_the_metadata(store):
    await store.put("timed", b"bytes", {"mtime": "1"})
    copied = await store.copy("timed", "timed", {"mtime": "2"})
    assert copied.metadata == {"mtime": "2"} == (await store.stat("timed")).metadata
    assert await store.read("timed", 0, 10, copied.version) == b"bytes"
    assert (await store.copy("timed", "other")).metadata == {"mtime": "2"}


async def test_listing_without_a_delimiter_goes_deep(store):
    for key in ("d/one", "d/sub/two", "d/sub/deeper/three", "e/four"):
        await store.put(key, b"x")
    assert await listing(store, "d/", delimiter="") == (["d/one", "d/sub/deeper/three", "d/sub/two"], [], 1)


async def test_a_server_that_is_down_gives_unavailable():
    async with trio_asyncio.open_loop():
        endpoint = S3Endpoint("http://127.0.0.1:9", key="test", secret="test", retries=RetryPolicy(3, 1.0))
        down = TrioStore(S3Store("bucket", endpoint))
        await down.open()
        try:
            with pytest.raises(Unavailable) as error:
                await down.stat("key")
            assert error.value.errno == errno.EIO
        finally:
            await down.close()


def test_a_read_only_azure_volume_signs_urls_that_read_and_cannot_write(request):
    """What leaks of a read-only volume (a URL in a log, a core dump) cannot change its container."""
    bucket = new_bucket(request, "azure", {"a.txt": b"a"})
    http = urllib3.PoolManager()
    for read_only, put_status in ((True, 403), (False, 201)):
        store = AzureStore(AZURITE_ACCOUNT, bucket.name, AzureCredentials(AZURITE_ACCOUNT, account_key=AZURITE_KEY),
                           endpoint=azurite_endpoint(bucket.server), read_only=read_only)
        read = store.range_request("a.txt", 0, 1, "*")
        assert http.request("GET", read.url, headers=read.headers).data == b"a"
        write = store.range_request(f"written-{read_only}.txt", 0, 1, "*").url  # the container's SAS, on another blob
        assert http.request("PUT", write, body=b"w", headers={"x-ms-blob-type": "BlockBlob"}).status == put_status
    assert bucket.keys() == ["a.txt", "written-False.txt"]
