"""Cache maintenance: dropping the blocks of a selection, and checking every block's checksum, on a block cache that
a daemon may be reading through meanwhile (`fsmount cache evict|clear|verify`).

The work goes a batch at a time, with the event loop's other tasks between batches: the reads of a daemon serving
its mount wait for one batch at most. A block a reader holds stays until the reader lets go of it.
"""
import trio

from fsmount.cache import blockio
from fsmount.cache.block_index import Row, Selection
from fsmount.cache.blocks import BlockCache

_DROP_BATCH = 256  # blocks removed in one transaction, with the loop's other tasks between two
_CHECK_BATCH = 256  # blocks checked in one trip to a worker thread, at most
_CHECK_BATCH_BYTES = 64 * 2**20  # and at most so many bytes of them: a progress report each
_HELD_TRIES = 40  # a block a reader holds is tried again this many times, _HELD_WAIT apart, then left
_HELD_WAIT = 0.05


async def evict(cache: BlockCache, selections: list[Selection]) -> dict:
    """Drops the blocks SELECTIONS name: {"blocks", "bytes"} dropped, and "in_use", those readers held throughout."""
    removed, held = [], []
    for selection in selections:
        after = 0
        while rows := cache.index.selected(selection, after, _DROP_BATCH):
            after = rows[-1][0]
            dropped, holding = cache.drop([row[1:] for row in rows])
            removed += dropped
            held += holding
            await trio.sleep(0)
    let_go = await _drop_held(cache, held)
    removed += let_go
    return {"blocks": len(removed), "bytes": sum(row[1] for row in removed), "in_use": len(held) - len(let_go)}


async def verify(cache: BlockCache, report) -> dict:
    """Reads every block and checks its checksum; drops those damaged or missing. Awaits REPORT({"done", "total"},
    bytes checked of those there were) after each batch. {"blocks", "bytes"} checked, "damaged" and "dropped"."""
    total, _ = cache.index.usage(Selection(None))
    checked = done = 0
    damaged = dropped = 0
    held = []
    after = 0
    while rows := cache.index.selected(Selection(None), after, _CHECK_BATCH):
        after = rows[-1][0]
        for batch in _by_bytes([row[1:] for row in rows]):
            places = [(cache.block_path(name, segment), position or 0, size, checksum)
                      for name, size, checksum, segment, position in batch]
            intact = await trio.to_thread.run_sync(_check, places)
            removed, holding = cache.drop([row for row, whole in zip(batch, intact) if not whole])
            damaged += intact.count(False)
            dropped += len(removed)
            held += holding
            checked += len(batch)
            done += sum(row[1] for row in batch)
            await report({"done": done, "total": max(total, done)})
    dropped += len(await _drop_held(cache, held))
    return {"blocks": checked, "bytes": done, "damaged": damaged, "dropped": dropped}


def _check(places: list[tuple[str, int, int, int]]) -> list[bool]:
    """Whether each block at PLACES ((path, position, size, checksum)) is intact: a worker thread's work."""
    return [blockio.intact(*place) for place in places]


def _by_bytes(rows: list[Row]) -> list[list[Row]]:
    """ROWS in batches of at most _CHECK_BATCH_BYTES (a larger block alone)."""
    batches, size = [[]], 0
    for row in rows:
        if batches[-1] and size + row[1] > _CHECK_BATCH_BYTES:
            batches.append([])
            size = 0
        batches[-1].append(row)
        size += row[1]
    return [batch for batch in batches if batch]


async def _drop_held(cache: BlockCache, held: list[Row]) -> list[Row]:
    """Drops the blocks of HELD, which readers held, once they let go of them; those they hold throughout stay."""
    removed = []
    for _ in range(_HELD_TRIES):
        if not held:
            break
        await trio.sleep(_HELD_WAIT)
        dropped, held = cache.drop(held)
        removed += dropped
    return removed
