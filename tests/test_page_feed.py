"""The pages of a file read at random go to the kernel, on a real S3 server and without FUSE: a store of an
old version's bytes still under way is waited for before a writer or a new version gets the file, and none
starts after."""
import os

import pytest
import trio
import trio.testing

from fsmount.cache.blocks import BlockCache
from fsmount.cache.attributes import KnownAttributes
from fsmount.memory import MemoryBudgets
from fsmount.staging.area import StagingArea
from fsmount.volumes.object_reads import SEEKS_AT_RANDOM
from fsmount.volumes.prefetch import Prefetcher
from fsmount.volumes.uploads import UploadSettings
from fsmount.volumes.writable import WritableObjectVolume

pytestmark = pytest.mark.server

BLOCK = 2**20
PATH = ("f.bin",)


async def replaced_on_the_server(volume, store):
    await store.put("f.bin", os.urandom(4 * BLOCK))
    volume.tree.forget_stat(PATH)  # as when metadata_ttl has passed
    return await volume.open(PATH, os.O_RDONLY)


async def opened_for_writing(volume, store):
    return await volume.open(PATH, os.O_RDWR)


@pytest.mark.parametrize("take_over", [replaced_on_the_server, opened_for_writing])
async def test_no_old_pages_reach_the_kernel_once_the_file_is_opened_anew(s3_bucket, tmp_path, take_over):
    store, _ = s3_bucket
    data = os.urandom(4 * BLOCK)
    await store.put("f.bin", data)
    volume = WritableObjectVolume(store, "", StagingArea(str(tmp_path / "staging"), 64 * BLOCK),
                                  UploadSettings(8 * BLOCK, 8 * BLOCK, 2, 0), 100, cache=BlockCache(str(tmp_path), 64 * BLOCK, BLOCK),
                                  known_attributes=KnownAttributes(str(tmp_path)), prefetcher=Prefetcher(4), metadata_ttl=60,
                                  read_ahead=4 * BLOCK, uid=0, gid=0,
                                  memory=MemoryBudgets.for_blocks_of(BLOCK))
    stored, release = [], trio.Event()

    async def store_pages(offset, _):
        stored.append(offset)
        await release.wait()  # as the kernel does while a read in flight holds the page locked
        return True

    opened, opened_after_release = trio.Event(), []

    async def open_anew():
        await take_over(volume, store)
        opened_after_release.append(release.is_set())
        opened.set()

    async with trio.open_nursery() as nursery:
        await nursery.start(volume.prefetcher.run)
        await volume.start(nursery)
        reader = await volume.open(PATH, os.O_RDONLY)
        reader.store_pages = store_pages
        for offset in [(index * 7 + 3) % 32 * BLOCK // 8 + 5 for index in range(SEEKS_AT_RANDOM)]:  # read at random
            assert await reader.read(offset, 4096) == data[offset:offset + 4096]
        with trio.fail_after(10):
            while not stored:
                await trio.sleep(0.01)
        nursery.start_soon(open_anew)
        with trio.fail_after(10):  # the open has taken the feed away, and waits for the store under way
            while PATH in volume._feeds:
                await trio.sleep(0.01)
        await trio.testing.wait_all_tasks_blocked()
        assert not opened.is_set()
        release.set()
        with trio.fail_after(10):
            await opened.wait()
        assert opened_after_release == [True]
        with trio.fail_after(10):  # the old version's fill ends
            while volume.prefetcher._nursery.child_tasks:
                await trio.sleep(0.01)
        assert len(stored) == 1
        nursery.cancel_scope.cancel()
