"""Background fills: the bounded Prefetcher, and DirectoryScans, which spots a directory's files opened in listing order."""
import dataclasses
import functools
import logging
import math

from fsmount.cache.background import BackgroundTasks
from fsmount.cache.metadata import ExpiringCache

log = logging.getLogger(__name__)

# A forward step of at most this many entries keeps a scan going: subdirectories sit between files.
_SCAN_STEP = 8
_SCAN_WINDOW = 32  # files fetched ahead of a scan at most


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


@dataclasses.dataclass
class _Scan:
    position: int  # of the file opened last
    ahead_until: int  # the last position fetched ahead
    window: int


class DirectoryScans:
    """`cp -r`, `tar` and `rsync` open a directory's files one after another in listing order, and each
    waits on a GET of its own; seen doing that, the next files are fetched ahead, a window growing
    while the order holds."""

    def __init__(self, directories_kept: int):
        self._scans = ExpiringCache(math.inf, directories_kept)

    def opened(self, directory, position: int, fetch_ahead):
        """The file at POSITION of DIRECTORY's listing was opened; `fetch_ahead(position)` starts the
        fetch of another (True), or finds no room for it (False: the rest waits for the next open)."""
        scan = self._scans.get(directory)
        if scan is None or not 0 < position - scan.position <= _SCAN_STEP:
            self._scans.put(directory, _Scan(position, position, 1))
            return
        scan.window = min(scan.window * 2, _SCAN_WINDOW)
        scan.position = position
        for ahead in range(max(position, scan.ahead_until) + 1, position + scan.window + 1):
            if not fetch_ahead(ahead):
                return
            scan.ahead_until = ahead
