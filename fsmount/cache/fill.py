"""Fill: a block on its way into the block cache, from its fetch until it is written."""
import dataclasses

import trio

from fsmount.cache.block_index import Origin
from fsmount.stores.arrival import Arrival


@dataclasses.dataclass
class Fill:
    """A block on its way into the cache: once fetched, its bytes are read from here while they are written."""
    fetched: trio.Event = dataclasses.field(default_factory=trio.Event)
    data: bytes | None = None
    read: bool = False  # by a reader, as it was being written
    read_to_end: bool = False  # by a reader, which most likely is done with it
    reserved: int = 0  # bytes of the budget of unwritten blocks it holds
    origin: Origin | None = None  # what the index files it under
    arrival: Arrival = dataclasses.field(default_factory=Arrival)  # of its bytes, while they are fetched
    error: BaseException | None = None  # why its fetch failed
