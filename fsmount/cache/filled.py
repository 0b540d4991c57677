"""FilledBlocks: the blocks filled last, kept in memory, a bounded amount, for the reads that asked for them."""
import collections
import time

_UNREAD_AWAITED = 5.0  # seconds a block filled ahead of its reader is kept for it over blocks read already


class FilledBlocks:
    """The oldest go first, those read already before those filled ahead of readers that are still on
    their way (from disk, those would cost a read each)."""

    def __init__(self, memory: int):
        self._memory = memory
        self._blocks: collections.OrderedDict[str, bytes] = collections.OrderedDict()
        self._size = 0
        self._unread: dict[str, float] = {}  # blocks filled ahead of readers, none read yet -> when filled

    def keep(self, name: str, data: bytes, unread: bool):
        self._blocks[name] = data
        self._size += len(data)
        if unread:
            self._unread[name] = time.monotonic()
        while self._size > self._memory:
            awaited = self._awaited()
            oldest = next((old for old in self._blocks if old not in awaited), None) or next(iter(self._blocks))
            self.forget(oldest)

    def get(self, name: str) -> bytes | None:
        return self._blocks.get(name)

    def read(self, name: str):
        """A reader came for block NAME: it is not awaited any longer."""
        self._unread.pop(name, None)

    def forget(self, name: str):
        data = self._blocks.pop(name, None)
        if data is not None:
            self._size -= len(data)
            self._unread.pop(name, None)

    def unread(self) -> int:
        """How many blocks filled ahead of their readers wait for them."""
        return len(self._awaited())

    def _awaited(self) -> dict[str, float]:
        """The blocks filled ahead of their readers lately that none has read yet; older ones were given up on."""
        given_up = time.monotonic() - _UNREAD_AWAITED
        for name in [name for name, filled in self._unread.items() if filled < given_up]:
            del self._unread[name]
        return self._unread
