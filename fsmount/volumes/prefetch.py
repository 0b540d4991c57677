"""Background fills: the bounded Prefetcher, and DirectorySweeps, which fetches ahead the files of a directory being read whole."""
import collections
import dataclasses
import functools
import logging
import time
import typing

from fsmount.cache.background import BackgroundTasks
from fsmount.cache.metadata import ExpiringCache
from fsmount.memory import SWEEPS_KEPT

log = logging.getLogger(__name__)

# A directory is swept once this many of its files have been read whole, in whatever order.
_SWEEP_AFTER = 3
_SWEEP_START = 8  # files a sweep may fetch when it starts
_CREDIT_PER_READ = 4  # more for each file of the directory read whole after that: a sweep outruns its readers
_CREDIT_MOST = 32  # files a sweep fetches at most once its directory's reads stop
_SWEEP_GETS = 16  # of a volume's sweeps, fetches in flight at once (their bytes: fsmount/memory.py)
_AHEAD_KEPT = 60.0  # seconds a file fetched ahead counts against the bound while nobody reads it
_SWEEP_KEPT = 600.0  # seconds a sweep is followed: a later epoch over the same directory starts one anew
_LOOKS_AT_ONCE = 256  # entries a sweep looks at, at most, before the event loop serves others


class Prefetcher(BackgroundTasks):
    """Runs block fills in the background (read-ahead, whole objects), bounded so memory in flight stays flat."""

    def spawn(self, task):
        """Runs TASK in the background; its fills go through `fill`, which waits for a slot."""
        super().spawn(functools.partial(_quietly, task))

    async def fill(self, fill):
        async with self.slots:
            return await fill()

    def start(self, fill) -> bool:
        """Starts FILL unless every slot is busy (read-ahead is a hint, never a queue); False if not."""
        return super().start(functools.partial(_quietly, fill))


async def _quietly(task):
    """A fill that failed on the store's side is no news: its reader fetches the block again, and sees why."""
    try:
        await task()
    except OSError as error:
        log.debug("a background fill failed: %s", error)


class Piece(typing.NamedTuple):
    name: str  # in the block cache
    fetch: typing.Callable[[], typing.Awaitable[bytes | memoryview]]
    size: int  # of the bytes it fetches
    origin: tuple[str, str]  # (store identity, key) of its object, which the cache's index files it under


@dataclasses.dataclass(eq=False)
class _Sweep:
    read: set[int] | None  # positions of the files read whole before it started; None once it has
    piece_at: typing.Callable[[int], Piece | None] = None
    count: int = 0  # entries in the directory's listing
    next: int = 0  # the position looked at next, modulo COUNT
    left: int = 0  # positions not looked at yet
    credit: int = 0  # files it may still fetch
    queued: bool = False

    def next_piece(self) -> Piece | None:
        """The first piece of the next file to fetch, while the credit lasts; None when there is none among the
        next _LOOKS_AT_ONCE entries (a long listing of cached files is not looked through in one go)."""
        for _ in range(_LOOKS_AT_ONCE):
            if self.credit <= 0 or self.left <= 0:
                return None
            position = self.next % self.count
            self.next += 1
            self.left -= 1
            piece = self.piece_at(position)
            if piece is not None:
                self.credit -= 1
                return piece
        return None


class DirectorySweeps:
    """A data loader reads every file of a directory whole in a shuffled order; `cp -r`, `tar` and `rsync` in
    listing order. Either way each file waits on a GET of its own. Once a few files of a directory have been
    read whole, its other files are fetched ahead (their first blocks), in listing order from the one read last:
    a few to start with and a few more for each file read after, so the sweep keeps ahead of its readers and
    stops soon after they do. Fetches in flight and files fetched ahead and not read yet are bounded."""

    def __init__(self, prefetcher: Prefetcher, fill, ahead_limit: int, in_flight_limit: int):
        """FILL(piece): an awaitable that puts PIECE in the cache. AHEAD_LIMIT: bytes fetched ahead and not read yet.
        IN_FLIGHT_LIMIT: bytes being fetched at once."""
        self._prefetcher = prefetcher
        self._fill = fill
        self._ahead_limit = ahead_limit
        self._in_flight_limit = in_flight_limit
        self._sweeps = ExpiringCache(_SWEEP_KEPT, SWEEPS_KEPT)
        self._waiting: collections.deque[_Sweep] = collections.deque()  # sweeps with credit, in turn
        self._in_flight = 0
        self._in_flight_bytes = 0
        self._ahead: collections.OrderedDict[str, tuple[int, float]] = collections.OrderedDict()  # -> (size, when)
        self._ahead_bytes = 0

    def read_whole(self, directory, position: int, name: str, count: int, piece_at):
        """The file at POSITION of DIRECTORY's listing (COUNT entries), whose first piece is cache block NAME, was
        read from its start to its end. PIECE_AT(position): the first piece of the file at another position
        to fetch, None if there is nothing to fetch there."""
        self._was_read(name)
        sweep = self._sweeps.get(directory)
        if sweep is None:
            sweep = _Sweep(read=set())
            self._sweeps.put(directory, sweep)
        sweep.piece_at, sweep.count = piece_at, count
        if sweep.read is not None:
            sweep.read.add(position)
            if len(sweep.read) < _SWEEP_AFTER:
                return
            sweep.read = None
            sweep.next, sweep.left, sweep.credit = position + 1, count, _SWEEP_START
        else:
            sweep.credit = min(sweep.credit + _CREDIT_PER_READ, _CREDIT_MOST)
        if sweep.left and not sweep.queued:
            sweep.queued = True
            self._waiting.append(sweep)
        self._start_fills()

    def _was_read(self, name: str):
        entry = self._ahead.pop(name, None)
        if entry is not None:
            self._ahead_bytes -= entry[0]

    def _start_fills(self):
        given_up = time.monotonic() - _AHEAD_KEPT
        while self._ahead and next(iter(self._ahead.values()))[1] < given_up:
            self._ahead_bytes -= self._ahead.popitem(last=False)[1][0]
        while (self._waiting and self._in_flight < _SWEEP_GETS and self._in_flight_bytes < self._in_flight_limit
               and self._ahead_bytes < self._ahead_limit):
            sweep = self._waiting[0]
            piece = sweep.next_piece()
            if piece is None and sweep.credit > 0 and sweep.left > 0:
                return  # the next read, or fill done, goes on looking
            if piece is None:
                sweep.queued = False
                self._waiting.popleft()
                continue
            self._waiting.rotate(-1)  # the directories take turns
            self._in_flight += 1
            self._in_flight_bytes += piece.size
            self._ahead[piece.name] = (piece.size, time.monotonic())
            self._ahead_bytes += piece.size
            self._prefetcher.spawn(functools.partial(self._fetch, sweep, piece))

    async def _fetch(self, sweep: _Sweep, piece: Piece):
        try:
            await self._fill(piece)
        except OSError:
            sweep.credit = 0  # the store may be down: the readers find out for themselves
            raise
        finally:
            self._in_flight -= 1
            self._in_flight_bytes -= piece.size
            self._start_fills()
