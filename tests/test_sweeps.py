"""DirectorySweeps on its own: when a directory's files are fetched ahead of their readers, and how many."""
import pytest
import trio
import trio.testing

from fsmount.memory import MemoryBudgets
from fsmount.volumes.prefetch import DirectorySweeps, Piece, Prefetcher

pytestmark = pytest.mark.unit

FILES = 100
SIZE = 1000
IN_FLIGHT_LIMIT = MemoryBudgets.for_blocks_of(2**20).sweeps_in_flight  # the daemon's


class Directory:
    """A listing of FILES files of SIZE bytes whose fills are recorded, and held until released."""

    def __init__(self):
        self.filled: list[str] = []
        self.released = trio.Event()

    def piece_at(self, position: int) -> Piece | None:
        name = f"file-{position:03d}"
        return None if name in self.filled else Piece(name, None, SIZE, ("store", name))

    async def fill(self, piece: Piece):
        self.filled.append(piece.name)
        await self.released.wait()


async def sweeping(test, ahead_limit=10**9):
    directory = Directory()
    prefetcher = Prefetcher(8)
    async with trio.open_nursery() as nursery:
        await nursery.start(prefetcher.run)
        sweeps = DirectorySweeps(prefetcher, directory.fill, ahead_limit, IN_FLIGHT_LIMIT)

        def read(position):
            directory.filled.append(f"file-{position:03d}")  # what a reader read is cached
            sweeps.read_whole(("dir",), position, f"file-{position:03d}", FILES, directory.piece_at)

        await test(directory, read)
        nursery.cancel_scope.cancel()


async def test_a_sweep_starts_at_the_third_file_read_whole_with_eight_files_after_it():
    async def test(directory, read):
        read(50)
        read(7)
        await trio.testing.wait_all_tasks_blocked()
        assert directory.filled == ["file-050", "file-007"]
        read(93)
        await trio.testing.wait_all_tasks_blocked()
        assert sorted(directory.filled[3:]) == [f"file-{position:03d}" for position in (0, 1, 94, 95, 96, 97, 98, 99)]

    await sweeping(test)


async def test_each_file_read_after_lets_four_more_go_and_no_more_than_sixteen_fly_at_once():
    async def test(directory, read):
        for position in (10, 20, 30):
            read(position)
        for position in range(60, 66):
            read(position)  # 8 + 6 x 4 = 32 files the sweep may fetch
        await trio.testing.wait_all_tasks_blocked()
        fetched = len(directory.filled) - 9
        assert fetched == 16  # in flight at once, at most
        directory.released.set()
        await trio.testing.wait_all_tasks_blocked()
        assert len(directory.filled) - 9 == 32

    await sweeping(test)


async def test_no_more_is_fetched_ahead_than_the_bound_until_it_is_read():
    async def test(directory, read):
        directory.released.set()
        for position in (10, 20, 30):
            read(position)
        await trio.testing.wait_all_tasks_blocked()
        assert sorted(directory.filled[3:]) == ["file-031", "file-032", "file-033"]
        read(31)  # a file fetched ahead is read: its bytes leave the bound
        await trio.testing.wait_all_tasks_blocked()
        assert directory.filled[6:] == ["file-031", "file-034"]  # the read, then one more ahead

    await sweeping(test, ahead_limit=3 * SIZE)
