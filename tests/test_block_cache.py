"""The block cache against a real S3 server: hits, single flight, eviction, restarts and damage."""
import os

import trio

from fsmount.cache.blocks import BlockCache, block_name

BLOCK = 64 * 1024


async def object_with_blocks(store, bucket, count):
    data = os.urandom(BLOCK * count)
    info = await store.put("object", data)
    return data, info


def reader(cache, store, info, index, fetches=None):
    """Reads all of block INDEX through CACHE, fetching it from STORE on a miss."""
    async def fetch():
        if fetches is not None:
            fetches.append(index)
        return await store.read(info.key, index * BLOCK, BLOCK, info.version)

    name = block_name(store.identity, info.key, info.version, index)
    return lambda: cache.read(name, 0, BLOCK, fetch)


def gets(moto, bucket):
    return moto.requests(f"GET /{bucket}/object")


async def test_a_hit_costs_no_request(s3_bucket, moto, tmp_path):
    store, bucket = s3_bucket
    data, info = await object_with_blocks(store, bucket, 2)
    cache = BlockCache(str(tmp_path), 10 * BLOCK, BLOCK)
    read = reader(cache, store, info, 1)
    assert await read() == data[BLOCK:]
    before = gets(moto, bucket)
    assert await read() == data[BLOCK:]
    assert gets(moto, bucket) == before == 1


async def test_ten_readers_of_a_cold_block_cause_one_get(s3_bucket, moto, tmp_path):
    store, bucket = s3_bucket
    data, info = await object_with_blocks(store, bucket, 1)
    cache = BlockCache(str(tmp_path), 10 * BLOCK, BLOCK)
    results = []

    async def read():
        results.append(await reader(cache, store, info, 0)())

    async with trio.open_nursery() as nursery:
        for _ in range(10):
            nursery.start_soon(read)
    assert results == [data] * 10
    assert gets(moto, bucket) == 1


async def test_eviction_keeps_the_bound_and_drops_the_least_recently_used(s3_bucket, tmp_path):
    store, bucket = s3_bucket
    data, info = await object_with_blocks(store, bucket, 6)
    cache = BlockCache(str(tmp_path), 3 * BLOCK, BLOCK)
    fetches = []
    for index in (0, 1, 2, 0, 3, 4):  # 0 is used again, so 1 and 2 are the oldest when 3 and 4 come
        assert await reader(cache, store, info, index, fetches)() == data[index * BLOCK:(index + 1) * BLOCK]
        assert cache.size <= 3 * BLOCK
    assert fetches == [0, 1, 2, 3, 4]
    files = [name for _, _, names in os.walk(tmp_path / "blocks") for name in names]
    assert len(files) == 3
    for index in (0, 3, 4):
        await reader(cache, store, info, index, fetches)()
    assert fetches == [0, 1, 2, 3, 4]
    await reader(cache, store, info, 1, fetches)()
    assert fetches == [0, 1, 2, 3, 4, 1]


async def test_a_new_process_reuses_what_is_on_disk(s3_bucket, moto, tmp_path):
    store, bucket = s3_bucket
    data, info = await object_with_blocks(store, bucket, 2)
    first = BlockCache(str(tmp_path), 10 * BLOCK, BLOCK)
    for index in (0, 1):
        await reader(first, store, info, index)()
    first.close()
    again = BlockCache(str(tmp_path), 10 * BLOCK, BLOCK)
    assert again.size == 2 * BLOCK
    assert await reader(again, store, info, 1)() == data[BLOCK:]
    assert gets(moto, bucket) == 2


async def test_a_damaged_block_is_fetched_again_not_served(s3_bucket, moto, tmp_path):
    store, bucket = s3_bucket
    data, info = await object_with_blocks(store, bucket, 1)
    first = BlockCache(str(tmp_path), 10 * BLOCK, BLOCK)
    await reader(first, store, info, 0)()
    first.close()
    [path] = [os.path.join(directory, name) for directory, _, names in os.walk(tmp_path / "blocks") for name in names]
    with open(path, "r+b") as block:
        block.seek(1000)
        block.write(bytes([data[1000] ^ 0xFF]))
    again = BlockCache(str(tmp_path), 10 * BLOCK, BLOCK)
    assert await reader(again, store, info, 0)() == data
    assert gets(moto, bucket) == 2


async def test_a_fill_cut_short_by_a_crash_is_forgotten(s3_bucket, tmp_path):
    store, bucket = s3_bucket
    data, info = await object_with_blocks(store, bucket, 1)
    name = block_name(store.identity, info.key, info.version, 0)
    crashed = BlockCache(str(tmp_path), 10 * BLOCK, BLOCK)
    # What a daemon killed between recording a fill and renaming its file leaves behind.
    crashed._db.execute("INSERT INTO blocks VALUES (?, ?, 0, 0, 0)", (name, BLOCK))
    os.makedirs(os.path.dirname(crashed._path(name)))
    with open(crashed._path(name), "wb") as torn:
        torn.write(data[:100])
    crashed._db.close()
    again = BlockCache(str(tmp_path), 10 * BLOCK, BLOCK)
    assert again.size == 0 and not again.contains(name)
    fetches = []
    assert await reader(again, store, info, 0, fetches)() == data
    assert fetches == [0]
