"""How much memory fsmount may hold, derived from the block size and the config.

Block data is what fills the daemon's memory: blocks fetched and not yet on disk, blocks kept after
their fill for the reads that follow, fills waiting in the background, and the buffers large bodies
are received into. Each budget is in bytes; what the parts count (fill slots, buffers kept) is
derived from those bytes and `cache.block_size`, so larger blocks mean fewer of them, not more
memory. The daemon makes one MemoryBudgets and hands each part its share; docs/DESIGN.md lists them.
"""
import dataclasses

_BACKGROUND_FILLS = 48 * 2**20
_UNWRITTEN = 64 * 2**20
_FILLED_BLOCKS = 32 * 2**20


@dataclasses.dataclass(frozen=True)
class MemoryBudgets:
    block_size: int  # `cache.block_size`
    background_fills: int  # of block fills in the background at once: read-ahead and whole objects, across volumes
    unwritten: int  # of blocks being fetched, or fetched and not yet on disk, by anyone: a fill past it waits
    filled_blocks: int  # of blocks kept in memory after their fill, for the reads that follow

    @classmethod
    def for_blocks_of(cls, block_size: int) -> "MemoryBudgets":
        """The daemon's budgets for blocks of BLOCK_SIZE bytes; two blocks may be unwritten, however large."""
        return cls(block_size, _BACKGROUND_FILLS, max(2 * block_size, _UNWRITTEN), _FILLED_BLOCKS)

    @property
    def background_fill_slots(self) -> int:
        """Fills in the background at once: two at least, however large the blocks."""
        return max(2, self.background_fills // self.block_size)

    @property
    def receive_buffers_kept(self) -> int:
        """Buffers kept for reuse by the bodies of large blocks: one for each block the cache holds in memory
        at most, unwritten or filled."""
        return (self.unwritten + self.filled_blocks) // self.block_size
