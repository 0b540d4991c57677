"""Arrival: how much of a large body has come in, so a reader can have its start while the rest is on the way.

A block of 8 MiB takes a while to arrive; the first read of a file wants only its first 128 KiB. The
cache makes an Arrival for each fill and sets it as `current` while it fetches; the worker thread
reading the body (fsmount.stores.ranges) reports each part it receives, and readers waiting on the
loop are woken once the bytes they want are in. A body fetched otherwise (a small one, a store that
does not stream) reports nothing, and its readers wait for the whole of it.
"""
import contextvars
import math
import threading

import trio

current: contextvars.ContextVar["Arrival | None"] = contextvars.ContextVar("arrival", default=None)


class Arrival:
    def __init__(self):
        self._token = trio.lowlevel.current_trio_token()
        self._lock = threading.Lock()
        self._body: memoryview | None = None
        self._received = 0
        self._ended = False
        self._waiting: list[tuple[int, trio.Event]] = []
        self._least_wanted = math.inf

    def receiving(self, body: memoryview):
        """From the worker thread: the body is read into BODY (again, if an attempt failed)."""
        with self._lock:
            self._body, self._received = body, 0

    def received(self, count: int):
        """From the worker thread: the first COUNT bytes of the body are in."""
        self._received = count
        if count >= self._least_wanted:
            with self._lock:
                ready = [event for end, event in self._waiting if end <= count]
                self._waiting = [(end, event) for end, event in self._waiting if end > count]
                self._least_wanted = min((end for end, _ in self._waiting), default=math.inf)
            for event in ready:
                self._token.run_sync_soon(event.set)

    def end(self):
        """On the loop: the fetch is over, whole or failed; nobody waits on the arrival any longer."""
        with self._lock:
            self._ended = True
            waiting, self._waiting = self._waiting, []
        for _, event in waiting:
            event.set()

    async def first(self, end: int) -> memoryview | None:
        """The body's first END bytes once they are in; None if the fetch ended before (or without) them."""
        with self._lock:
            event = None
            if self._received < end and not self._ended:
                event = trio.Event()
                self._waiting.append((end, event))
                self._least_wanted = min(self._least_wanted, end)
        if event is not None:
            await event.wait()
        with self._lock:
            if self._body is not None and self._received >= end:
                return self._body[:end]
        return None
