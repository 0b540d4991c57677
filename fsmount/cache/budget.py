"""Budget: bytes that may be taken at once, at most a limit, by tasks that wait for their share."""
import trio


class Budget:
    """At most LIMIT bytes taken at once; one taker may go past it when nothing else is taken."""

    def __init__(self, limit: int):
        self.limit = limit
        self.taken = 0
        self._waiting = trio.lowlevel.ParkingLot()

    async def acquire(self, size: int):
        while self.taken and self.taken + size > self.limit:
            await self._waiting.park()
        self.taken += size
        if self.taken < self.limit:
            self._waiting.unpark()  # the next taker may fit too: each wakes one, not every one at each release

    def release(self, size: int):
        self.taken -= size
        self._waiting.unpark()
