"""How much memory fsmount may hold: every bound on it, block data derived from the block size, the rest counted.

Block data is what fills the daemon's memory: blocks fetched and not yet on disk, blocks kept after
their fill for the reads that follow, fills waiting in the background, and the buffers large bodies
are received into. Each of those budgets is in bytes; what the parts count (fill slots, buffers
kept) is derived from those bytes and `cache.block_size`, so larger blocks mean fewer of them, not
more memory. The daemon makes one MemoryBudgets and hands each part its share. What is kept of
names, listings and metadata is bounded in entries, by the constants below, which the modules that
keep them import. docs/DESIGN.md lists them all.
"""
import dataclasses
import os

_BACKGROUND_FILLS = 48 * 2**20
_UNWRITTEN = 64 * 2**20
_FILLED_BLOCKS = 32 * 2**20
_SWEEPS_IN_FLIGHT = 16 * 2**20
_WHOLE_OBJECT_FILLS = 32 * 2**20
_PAGE_FEED_SHARE = 8  # of the machine's memory

# Names, listings and metadata kept in memory: it stays bounded however many objects a volume has.
NAMES_KEPT = 100_000  # an object volume's names whose object or directory is known, and as many known missing
LISTED_ENTRIES_KEPT = 200_000  # of every listing an object volume keeps, in all
LISTING_ENTRIES_KEPT = 120_000  # of one listing: a longer one is not kept, and streams from the store every time
CHANGES_KEPT = 100_000  # directories whose last change by this daemon an object volume remembers
ATTRIBUTES_KEPT = 100_000  # an object volume's objects' and directories' attributes, and directories' times
VERSIONS_KEPT = 100_000  # an object volume's names whose opened version is remembered, and objects filled whole
SWEEPS_KEPT = 1024  # directories whose sweep an object volume follows
IPFS_NODE_BYTES_KEPT = 32 * 2**20  # an IPFS store's directories, symlinks and files' inner nodes
IPFS_LISTED_ENTRIES_KEPT = 200_000  # of every directory listing an IPFS store keeps, in all
IPFS_LINKS_KEPT = 16  # directories whose links, by name, an IPFS store keeps
PRESIGNED_URLS_KEPT = 10_000  # an S3 store's URLs of reads
BLOCK_NAMES_KEPT = 8192  # block names made from (store, key, version, index): a random read asks every time
BLOCK_USES_KEPT = 4096  # uses of blocks held in memory before they are written to the block index


@dataclasses.dataclass(frozen=True)
class MemoryBudgets:
    block_size: int  # `cache.block_size`
    background_fills: int  # of block fills in the background at once: read-ahead and whole objects, across volumes
    unwritten: int  # of blocks being fetched, or fetched and not yet on disk, by anyone: a fill past it waits
    filled_blocks: int  # of blocks kept in memory after their fill, for the reads that follow
    sweeps_in_flight: int  # of the blocks a volume's directory sweeps are fetching at once
    whole_object_fills: int  # of the blocks of one object filled whole that are being filled at once
    page_feed: int  # an object filled whole goes into the kernel's pages too when at most this large

    @classmethod
    def for_blocks_of(cls, block_size: int) -> "MemoryBudgets":
        """The daemon's budgets for blocks of BLOCK_SIZE bytes; two blocks may be unwritten, however large."""
        machine = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        return cls(block_size, _BACKGROUND_FILLS, max(2 * block_size, _UNWRITTEN), _FILLED_BLOCKS, _SWEEPS_IN_FLIGHT,
                   _WHOLE_OBJECT_FILLS, machine // _PAGE_FEED_SHARE)

    @property
    def background_fill_slots(self) -> int:
        """Fills in the background at once: two at least, however large the blocks."""
        return max(2, self.background_fills // self.block_size)

    @property
    def whole_object_fill_slots(self) -> int:
        """Blocks of one object filled whole at once: two at least, however large the blocks."""
        return max(2, self.whole_object_fills // self.block_size)

    @property
    def receive_buffers_kept(self) -> int:
        """Buffers kept for reuse by the bodies of large blocks: one for each block the cache holds in memory
        at most, unwritten or filled."""
        return (self.unwritten + self.filled_blocks) // self.block_size
