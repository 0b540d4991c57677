"""VolumeRequests: each request of one volume to its store, counted, timed and logged; and Health, the volumes' state.

A request is what fsmount asks of a store (a GET of a block, a HEAD, a page of a listing, a PUT, a part of an
upload, a copy, a delete), counted once however many times it is tried; the tries after the first are counted
apart. A volume is healthy while its store answered its last request: an answer that refuses (a missing key,
a denied one) counts as an answer, a fault of the store's (out of reach, throttled or failing past the retries,
a certificate refused) does not.
"""
import errno
import logging
import threading
import time

from fsmount.metrics.counting import STORE_BOUNDS, Histograms
from fsmount.stores import retries

log = logging.getLogger("fsmount.requests")


class VolumeRequests:
    def __init__(self, volume: str):
        self.volume = volume
        self.counts: dict[tuple[str, str], int] = {}  # (kind, status) -> requests
        self.durations = Histograms(STORE_BOUNDS)  # by (kind,)
        self.bytes_in = 0
        self.bytes_out = 0
        self.retries = 0
        self.ok = True
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.last_request_at: float | None = None
        self._retries_lock = threading.Lock()  # retries are counted from worker threads and the asyncio loop too

    def request(self, kind: str, key: str, sent: int = 0) -> "_Request":
        """`with requests.request(KIND, KEY, SENT):` around one request of KIND for KEY that sends SENT bytes: its
        tries after the first, its outcome and its time are counted; a line of the debug log says them."""
        return _Request(self, kind, key, sent)

    def ended(self, kind: str, key: str, sent: int, seconds: float, error: BaseException | None):
        """A request ended, in ERROR or not; one cancelled (the daemon stopping, a reader gone) counts for nothing."""
        fault = None
        if error is None:
            status = "ok"
            self.bytes_out += sent
        elif isinstance(error, OSError):
            status = errno.errorcode.get(error.errno, "error")
            fault = error if error.errno in (errno.EIO, None) else None
        elif isinstance(error, Exception):
            status, fault = "error", error
        else:
            status = "cancelled"
        if status != "cancelled":
            self.counts[kind, status] = self.counts.get((kind, status), 0) + 1
            self.durations.observe((kind,), seconds)
            self.last_request_at = time.time()
            self.ok = fault is None
            if fault is not None:
                self.last_error, self.last_error_at = str(fault), self.last_request_at
        log.debug("%s %s %s %s %.1f ms", self.volume, kind, key, status, seconds * 1000)

    def received(self, size: int):
        self.bytes_in += size

    def retried(self):
        with self._retries_lock:
            self.retries += 1

    def state(self) -> dict:
        return {"ok": self.ok, "last_error": self.last_error, "last_error_at": self.last_error_at,
                "last_request_at": self.last_request_at}


class Health:
    """The store requests of every object volume of the daemon, and what they say of each volume."""

    def __init__(self):
        self.volumes: dict[str, VolumeRequests] = {}

    def volume(self, name: str) -> VolumeRequests:
        """The requests of the volume NAME, made now (again, for a volume a reload brings back)."""
        requests = self.volumes[name] = VolumeRequests(name)
        return requests

    def forget(self, name: str):
        """The volume NAME left the tree (a reload removed it, or could not add it)."""
        self.volumes.pop(name, None)

    def states(self) -> dict[str, dict]:
        """Each volume's name -> {"ok", "last_error", "last_error_at", "last_request_at"} (times in Unix seconds)."""
        return {name: requests.state() for name, requests in self.volumes.copy().items()}

    def failing(self) -> dict[str, dict]:
        """The volumes whose store did not answer its last request, as `states`."""
        return {name: state for name, state in self.states().items() if not state["ok"]}


class _Request:
    """One request of a volume's, counted from its start to its end: a class of its own, as a generator's
    context manager cost more."""
    __slots__ = ("_requests", "_kind", "_key", "_sent", "_started", "_counting_retries")

    def __init__(self, requests: VolumeRequests, kind: str, key: str, sent: int):
        self._requests, self._kind, self._key, self._sent = requests, kind, key, sent

    def __enter__(self):
        self._counting_retries = retries.on_retry.set(self._requests.retried)
        self._started = time.perf_counter()

    def __exit__(self, kind, error, traceback):
        retries.on_retry.reset(self._counting_retries)
        self._requests.ended(self._kind, self._key, self._sent, time.perf_counter() - self._started, error)
