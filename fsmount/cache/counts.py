"""CacheCounts: what the block cache did, for the metrics; plain integers, added to on the event loop."""
import dataclasses


@dataclasses.dataclass
class CacheCounts:
    reads: int = 0  # of a block by a reader
    misses_by_readers: int = 0  # blocks a reader fetched from a store
    misses_ahead: int = 0  # blocks fetched from a store before any reader asked (read-ahead, sweeps, whole objects)
    evictions: int = 0
    read_ahead_bytes: int = 0  # of the blocks fetched ahead

    def missed(self, by_reader: bool):
        if by_reader:
            self.misses_by_readers += 1
        else:
            self.misses_ahead += 1

    @property
    def hits(self) -> int:
        """Reads of a block that fetched nothing: it was on disk, in memory, or on its way already."""
        return self.reads - self.misses_by_readers

    @property
    def misses(self) -> int:
        return self.misses_by_readers + self.misses_ahead
