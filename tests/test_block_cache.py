"""The block cache against a real S3 server: hits, single flight, eviction, restarts and damage."""
import contextlib
import os
import sqlite3
import threading
import zlib

import pytest
import trio
import trio.testing

from fsmount.cache import blockio, blocks, filled
from fsmount.cache import segments as segments_module
from fsmount.cache.blocks import BlockCache, block_name
from fsmount.stores import arrival
from fsmount.stores.arrival import Arrival
from fsmount.stores.ranges import receive_buffers

BLOCK = blocks.PACKED_BELOW  # the smallest block kept in a file of its own
SMALL = 64 * 1024  # a block packed into a segment


async def object_with_blocks(store, bucket, count, block=BLOCK):
    data = os.urandom(block * count)
    info = await store.put("object", data)
    return data, info


def fetcher(store, info, index, fetches=None, block=BLOCK):
    """Fetches block INDEX from STORE, noting INDEX in FETCHES."""
    async def fetch():
        if fetches is not None:
            fetches.append(index)
        return await store.read(info.key, index * block, block, info.version)

    return fetch


def reader(cache, store, info, index, fetches=None, block=BLOCK):
    """Reads all of block INDEX through CACHE, fetching it from STORE on a miss."""
    name = block_name(store.identity, info.key, info.version, index)
    fetch = fetcher(store, info, index, fetches, block)
    return lambda: cache.read(name, 0, block, fetch)


def block_files(directory):
    """The files of blocks of their own, segments aside."""
    return [os.path.join(parent, name) for parent, _, names in os.walk(directory / "blocks") for name in names
            if os.path.basename(parent) != "segments"]


def segments(directory):
    return sorted((directory / "blocks" / "segments").iterdir())


def gets(moto, bucket):
    return moto.requests(f"GET /{bucket}/object")


@pytest.mark.server
async def test_a_hit_costs_no_request(s3_bucket, moto, tmp_path):
    store, bucket = s3_bucket
    data, info = await object_with_blocks(store, bucket, 2)
    cache = BlockCache(str(tmp_path), 10 * BLOCK, BLOCK)
    read = reader(cache, store, info, 1)
    assert await read() == data[BLOCK:]
    before = gets(moto, bucket)
    assert await read() == data[BLOCK:]
    assert gets(moto, bucket) == before == 1


@pytest.mark.server
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


@pytest.mark.server
async def test_eviction_keeps_the_bound_and_drops_the_least_recently_used(s3_bucket, tmp_path):
    store, bucket = s3_bucket
    data, info = await object_with_blocks(store, bucket, 6)
    cache = BlockCache(str(tmp_path), 3 * BLOCK, BLOCK)
    fetches = []
    for index in (0, 1, 2, 0, 3, 4):  # 0 is used again, so 1 and 2 are the oldest when 3 and 4 come
        assert await reader(cache, store, info, index, fetches)() == data[index * BLOCK:(index + 1) * BLOCK]
        assert cache.size <= 3 * BLOCK
    assert fetches == [0, 1, 2, 3, 4]
    assert len(block_files(tmp_path)) == 3
    for index in (0, 3, 4):
        await reader(cache, store, info, index, fetches)()
    assert fetches == [0, 1, 2, 3, 4]
    await reader(cache, store, info, 1, fetches)()
    assert fetches == [0, 1, 2, 3, 4, 1]


@pytest.mark.server
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


@pytest.mark.server
async def test_a_large_block_of_odd_size_is_written_from_its_receive_buffer_exactly(s3_bucket, moto, tmp_path,
                                                                                  monkeypatch):
    """A body of 1 MiB or more is written to disk from the memory it was received in, padded to whole pages
    there (O_DIRECT); what was in that memory before never reaches the block."""
    store, bucket = s3_bucket
    monkeypatch.setattr(receive_buffers, "kept", 16)
    block = 2 * 2**20
    data = os.urandom(2**20 + 123)
    info = await store.put("object", data)
    used = [receive_buffers.take(block) for _ in range(16)]
    for buffer in used:
        buffer[:] = b"\xff" * len(buffer)
    del used, buffer
    first = BlockCache(str(tmp_path), 10 * block, block)
    assert await reader(first, store, info, 0, block=block)() == data
    first.close()
    assert [os.path.getsize(path) for path in block_files(tmp_path)] == [len(data)]
    again = BlockCache(str(tmp_path), 10 * block, block)
    assert await reader(again, store, info, 0, block=block)() == data
    assert gets(moto, bucket) == 1


@pytest.mark.server
async def test_a_damaged_block_is_fetched_again_not_served(s3_bucket, moto, tmp_path):
    store, bucket = s3_bucket
    data, info = await object_with_blocks(store, bucket, 1)
    first = BlockCache(str(tmp_path), 10 * BLOCK, BLOCK)
    await reader(first, store, info, 0)()
    first.close()
    [path] = block_files(tmp_path)
    with open(path, "r+b") as block:
        block.seek(1000)
        block.write(bytes([data[1000] ^ 0xFF]))
    again = BlockCache(str(tmp_path), 10 * BLOCK, BLOCK)
    assert await reader(again, store, info, 0)() == data
    assert gets(moto, bucket) == 2


@pytest.mark.server
async def test_a_fill_cut_short_by_a_crash_is_forgotten(s3_bucket, tmp_path):
    store, bucket = s3_bucket
    data, info = await object_with_blocks(store, bucket, 1)
    name = block_name(store.identity, info.key, info.version, 0)
    crashed = BlockCache(str(tmp_path), 10 * BLOCK, BLOCK)
    # What a daemon killed between recording a fill and renaming its file leaves behind.
    crashed._index.enter_unwritten([(name, BLOCK, None)])
    os.makedirs(os.path.dirname(crashed._path(name)))
    with open(crashed._path(name), "wb") as torn:
        torn.write(data[:100])
    crashed._index.close()
    again = BlockCache(str(tmp_path), 10 * BLOCK, BLOCK)
    assert again.size == 0 and not again.contains(name)
    fetches = []
    assert await reader(again, store, info, 0, fetches)() == data
    assert fetches == [0]


@pytest.mark.server
async def test_small_blocks_are_packed_into_one_segment_and_survive_a_restart(s3_bucket, moto, tmp_path):
    store, bucket = s3_bucket
    data, info = await object_with_blocks(store, bucket, 2, SMALL)
    first = BlockCache(str(tmp_path), 10 * SMALL, SMALL)
    for index in (0, 1):
        assert await reader(first, store, info, index, block=SMALL)() == data[index * SMALL:(index + 1) * SMALL]
    assert block_files(tmp_path) == []
    [segment] = segments(tmp_path)
    assert segment.read_bytes() == data
    first.close()
    again = BlockCache(str(tmp_path), 10 * SMALL, SMALL)
    name = block_name(store.identity, info.key, info.version, 1)
    assert await again.read(name, 100, 50, None) == data[SMALL + 100:SMALL + 150]
    assert await reader(again, store, info, 0, block=SMALL)() == data[:SMALL]
    assert gets(moto, bucket) == 2


@pytest.mark.server
async def test_a_read_past_a_small_blocks_end_gets_none_of_the_next_blocks_bytes(s3_bucket, tmp_path):
    """A page feed asks for a whole block of an object's last, shorter one: the segment goes on with others."""
    store, _ = s3_bucket
    data, info = await object_with_blocks(store, None, 2, SMALL)
    first = BlockCache(str(tmp_path), 10 * SMALL, SMALL)
    for index in (0, 1):
        await reader(first, store, info, index, block=SMALL)()
    name = block_name(store.identity, info.key, info.version, 0)
    assert await first.read(name, SMALL - 10, 100, None) == data[SMALL - 10:SMALL]
    first.close()
    again = BlockCache(str(tmp_path), 10 * SMALL, SMALL)
    assert await again.read(name, 0, 2 * SMALL, None) == data[:SMALL]


@pytest.mark.server
async def test_a_damaged_small_block_is_fetched_again_not_served(s3_bucket, moto, tmp_path):
    store, bucket = s3_bucket
    data, info = await object_with_blocks(store, bucket, 1, SMALL)
    first = BlockCache(str(tmp_path), 10 * SMALL, SMALL)
    await reader(first, store, info, 0, block=SMALL)()
    first.close()
    [segment] = segments(tmp_path)
    with open(segment, "r+b") as packed:
        packed.seek(1000)
        packed.write(bytes([data[1000] ^ 0xFF]))
    again = BlockCache(str(tmp_path), 10 * SMALL, SMALL)
    assert await reader(again, store, info, 0, block=SMALL)() == data
    assert gets(moto, bucket) == 2


@pytest.mark.server
async def test_small_blocks_are_evicted_within_the_bound(s3_bucket, tmp_path):
    store, bucket = s3_bucket
    data, info = await object_with_blocks(store, bucket, 5, SMALL)
    cache = BlockCache(str(tmp_path), 3 * SMALL, SMALL)
    fetches = []
    for index in range(5):
        await reader(cache, store, info, index, fetches, block=SMALL)()
        assert cache.size <= 3 * SMALL
    for index in (2, 3, 4):
        assert await reader(cache, store, info, index, fetches, block=SMALL)() == data[index * SMALL:(index + 1) * SMALL]
    assert fetches == [0, 1, 2, 3, 4]


@pytest.mark.server
async def test_evicted_small_blocks_give_their_space_back_and_an_emptied_segment_goes(s3_bucket, tmp_path, monkeypatch):
    store, bucket = s3_bucket
    data, info = await object_with_blocks(store, bucket, 8, SMALL)
    monkeypatch.setattr(segments_module, "SEGMENT_SIZE", 4 * SMALL)  # blocks 0-3 in one segment, 4-7 in the next
    cache = BlockCache(str(tmp_path), 6 * SMALL, SMALL)
    for index in range(6):
        await reader(cache, store, info, index, block=SMALL)()
    first, second = segments(tmp_path)
    assert first.stat().st_size == 4 * SMALL and second.stat().st_size == 2 * SMALL
    allocated = first.stat().st_blocks
    for index in (6, 7):  # evicts 0 and 1: their bytes are punched out of the first segment
        await reader(cache, store, info, index, block=SMALL)()
    assert first.stat().st_blocks * 512 <= allocated * 512 - 2 * SMALL
    cache.close()
    cache = BlockCache(str(tmp_path), 2 * SMALL, SMALL)  # a smaller bound: 2-5 must go, and the first segment with them
    name = block_name(store.identity, info.key, info.version, 0)
    assert await cache.read(name, 0, SMALL, fetcher(store, info, 0, block=SMALL)) == data[:SMALL]
    assert segments(tmp_path)[0] != first and not first.exists()


@pytest.mark.server
@pytest.mark.parametrize("fetched_by", ["a fill ahead of the reads", "the reader"])
async def test_readers_of_a_block_being_written_get_its_bytes_without_waiting_for_the_disk(
        fetched_by, s3_bucket, moto, tmp_path, monkeypatch):
    store, bucket = s3_bucket
    large = 1024 * 1024  # written on a worker thread, not inline
    data, info = await object_with_blocks(store, bucket, 1, large)
    disk_free = threading.Event()

    def held_write(*args):
        disk_free.wait(30)
        return write(*args)

    write = blockio.write_atomically
    monkeypatch.setattr(blockio, "write_atomically", held_write)
    cache = BlockCache(str(tmp_path), 10 * large, large)
    name = block_name(store.identity, info.key, info.version, 0)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(cache.write_behind)
            if fetched_by != "the reader":
                nursery.start_soon(cache.read, name, 0, 0, fetcher(store, info, 0, block=large))
                await trio.testing.wait_all_tasks_blocked()
            with trio.fail_after(10):
                assert await reader(cache, store, info, 0, block=large)() == data
            assert block_files(tmp_path) == []
            disk_free.set()
            with trio.fail_after(10):
                while not cache.checked(name):
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    finally:
        disk_free.set()
    assert len(block_files(tmp_path)) == 1 and gets(moto, bucket) == 1
    cache.close()
    again = BlockCache(str(tmp_path), 10 * large, large)
    assert await reader(again, store, info, 0, block=large)() == data
    assert gets(moto, bucket) == 1


class CountedArrival(Arrival):
    def __init__(self):
        super().__init__()
        self.reports = []

    def received(self, count: int):
        self.reports.append(count)
        super().received(count)


@pytest.mark.server
async def test_a_large_body_is_reported_as_it_arrives(s3_bucket):
    store, bucket = s3_bucket
    data, info = await object_with_blocks(store, bucket, 2)
    report = CountedArrival()
    arrival.current.set(report)
    assert await store.read(info.key, 0, len(data), info.version) == data
    assert len(report.reports) > 1 and report.reports == sorted(report.reports) and report.reports[-1] == len(data)
    assert await report.first(len(data)) == data


@pytest.mark.unit
@pytest.mark.parametrize("fetched_by", ["a fill ahead of the reads", "the reader"])
async def test_a_reader_of_a_large_block_on_its_way_has_its_bytes_before_the_rest_arrives(fetched_by, tmp_path):
    size, part = 4 * BLOCK, 128 * 1024
    data = os.urandom(size)
    rest_may_come = trio.Event()

    async def fetch():
        body = memoryview(bytearray(size))
        report = arrival.current.get()
        report.receiving(body)
        body[:2 * part] = data[:2 * part]
        report.received(2 * part)
        await rest_may_come.wait()
        body[2 * part:] = data[2 * part:]
        report.received(size)
        return body

    cache = BlockCache(str(tmp_path), 10 * size, size)
    async with trio.open_nursery() as nursery:
        await nursery.start(cache.write_behind)
        if fetched_by != "the reader":
            nursery.start_soon(cache.read, "block", 0, 0, fetch)
            await trio.testing.wait_all_tasks_blocked()
        with trio.fail_after(10):
            assert await cache.read("block", part, part, fetch) == data[part:2 * part]
        assert not cache.checked("block")
        rest_may_come.set()
        with trio.fail_after(10):
            assert await cache.read("block", size - part, part, fetch) == data[-part:]
        nursery.cancel_scope.cancel()


@pytest.mark.unit
async def test_a_failed_fetch_of_a_large_block_fails_its_reader_and_the_next_one_fetches_again(tmp_path):
    size = 4 * BLOCK
    data = os.urandom(size)
    fetches = []

    async def fetch():
        fetches.append(True)
        if len(fetches) == 1:
            raise OSError(5, "the store is down")
        return data

    cache = BlockCache(str(tmp_path), 10 * size, size)
    async with trio.open_nursery() as nursery:
        await nursery.start(cache.write_behind)
        with trio.fail_after(10), pytest.raises(OSError, match="the store is down"):
            await cache.read("block", 0, 4096, fetch)
        with trio.fail_after(10):
            assert await cache.read("block", 0, 4096, fetch) == data[:4096]
        nursery.cancel_scope.cancel()
    assert len(fetches) == 2


@pytest.mark.server
async def test_a_cache_made_by_an_older_version_is_dropped_not_misread(s3_bucket, moto, tmp_path):
    store, bucket = s3_bucket
    data, info = await object_with_blocks(store, bucket, 1)
    name = block_name(store.identity, info.key, info.version, 0)
    path = tmp_path / "blocks" / name[:2] / name[2:4] / name
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    with contextlib.closing(sqlite3.connect(tmp_path / "index.sqlite")) as index, index:  # as fsmount kept it before checksums were XXH3
        index.execute("CREATE TABLE blocks (name TEXT PRIMARY KEY, size INTEGER NOT NULL, crc INTEGER NOT NULL, "
                      "used REAL NOT NULL, ready INTEGER NOT NULL, data BLOB)")
        index.execute("INSERT INTO blocks VALUES (?, ?, ?, 0, 1, NULL)", (name, BLOCK, zlib.crc32(data)))
    cache = BlockCache(str(tmp_path), 10 * BLOCK, BLOCK)
    assert cache.size == 0 and block_files(tmp_path) == []
    assert await reader(cache, store, info, 0)() == data
    assert gets(moto, bucket) == 1


@pytest.mark.server
async def test_however_many_readers_at_most_the_bound_of_blocks_is_fetched_and_unwritten(s3_bucket, tmp_path):
    """Ten streams at once held 13 fetched 8 MiB blocks waiting for the disk; memory must not grow with readers."""
    store, bucket = s3_bucket
    data, info = await object_with_blocks(store, bucket, 12)
    cache = BlockCache(str(tmp_path), 100 * BLOCK, BLOCK, unwritten=3 * BLOCK)
    held, most = 0, 0

    async def read(index):
        async def fetch():
            nonlocal held, most
            held += 1
            most = max(most, held)
            try:
                return await fetcher(store, info, index)()
            finally:
                await trio.sleep(0.01)  # the write that follows; its slot is still held
                held -= 1

        name = block_name(store.identity, info.key, info.version, index)
        assert await cache.read(name, 0, BLOCK, fetch) == data[index * BLOCK:(index + 1) * BLOCK]

    async with trio.open_nursery() as nursery:
        for index in range(12):
            nursery.start_soon(read, index)
    assert most == 3


@pytest.mark.server
async def test_a_block_filled_ahead_stays_in_memory_until_read_and_read_ones_go_first(s3_bucket, tmp_path):
    store, bucket = s3_bucket
    data, info = await object_with_blocks(store, bucket, 4)
    cache = BlockCache(str(tmp_path), 100 * BLOCK, BLOCK, memory=2 * BLOCK)
    names = [block_name(store.identity, info.key, info.version, index) for index in range(4)]
    await cache.read(names[0], 0, 0, fetcher(store, info, 0))  # ahead of its reader
    await cache.read(names[1], 0, 10, fetcher(store, info, 1))  # read, not to its end
    await cache.read(names[2], 0, 0, fetcher(store, info, 2))  # ahead: one of the two in memory must go
    for path in block_files(tmp_path):
        os.unlink(path)  # what is not in memory any more cannot be read
    assert await cache.read(names[0], 0, BLOCK, fetcher(store, info, 0)) == data[:BLOCK]
    assert await cache.read(names[2], 0, BLOCK, fetcher(store, info, 2)) == data[2 * BLOCK:3 * BLOCK]


@pytest.mark.server
async def test_a_block_filled_ahead_that_no_reader_came_for_is_given_up_on(s3_bucket, tmp_path, monkeypatch):
    """A program that stopped reading must not hold memory, nor the read-ahead of others, for ever."""
    monkeypatch.setattr(filled, "_UNREAD_AWAITED", 0.0)
    store, bucket = s3_bucket
    data, info = await object_with_blocks(store, bucket, 3)
    cache = BlockCache(str(tmp_path), 100 * BLOCK, BLOCK, memory=2 * BLOCK)
    names = [block_name(store.identity, info.key, info.version, index) for index in range(3)]
    await cache.read(names[0], 0, 0, fetcher(store, info, 0))  # ahead of a reader that never comes
    await cache.read(names[1], 0, 10, fetcher(store, info, 1))
    await cache.read(names[2], 0, 0, fetcher(store, info, 2))
    assert cache.unread() == 0
    for path in block_files(tmp_path):
        os.unlink(path)
    assert await cache.read(names[1], 10, BLOCK - 10, fetcher(store, info, 1)) == data[BLOCK + 10:2 * BLOCK]
