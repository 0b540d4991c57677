"""RangeFetcher: sends the ranged GETs (and uploads) that stores sign, from worker threads, through one urllib3 pool per store.

Why data goes so rather than through the SDKs or aiohttp is said once, in fsmount.stores.base. Small
GETs and small uploads go the other way: the fetcher's `small_requests` (fsmount.stores.curl) sends
them from the event loop.
"""
import http.client
import mmap
import sys
import threading
import typing

import urllib3

from fsmount.stores import arrival
from fsmount.stores.base import NotFound, RangeRequest, Reply, StoreError, status_error, unanswered
from fsmount.stores.curl import CurlRequests
from fsmount.stores.retries import RetryPolicy
from fsmount.stores.tls import urllib3_tls

_ANSWERS = {200, 201, 308}  # 308: a resumable upload (GCS) took a chunk and wants the next
_REUSED_FROM = 1024 * 1024  # bodies of this many bytes or more are read into ReceiveBuffers
SMALL_REQUEST = _REUSED_FROM  # GETs and uploads of fewer bytes are libcurl's, on the event loop (`small_requests`)
_PART = 128 * 1024  # a body is read, and reported, this much at a time: what the kernel asks a read for


class ReceiveBuffers:
    """Memory that large bodies are read into, in whole pages, reused. Fresh memory costs a page fault
    every 4 KiB, which a block read into new bytes pays on every page of it. A
    buffer is free again once nothing but this pool refers to it: no block of the cache, no view of it on
    its way to the kernel. KEPT of them are kept; beyond them, buffers are made and dropped."""

    _UNUSED = 3  # references to a buffer nobody else holds: the pool's list, the loop's name, getrefcount's own

    def __init__(self, kept: int):
        self.kept = kept
        self._buffers: list[mmap.mmap] = []
        self._taken: set[int] = set()  # ids of the buffers taken since the last release_idle
        self._lock = threading.Lock()

    def take(self, size: int) -> mmap.mmap:
        """A buffer of SIZE bytes or more, for the caller alone until it drops every reference to it."""
        with self._lock:
            too_small = None  # a free buffer that a larger one would better replace
            for index in range(len(self._buffers)):  # not enumerate: its tuple would hold a reference
                buffer = self._buffers[index]
                if sys.getrefcount(buffer) == self._UNUSED:
                    if len(buffer) >= size:
                        self._taken.add(id(buffer))
                        return buffer
                    too_small = index
            fresh = mmap.mmap(-1, -(-size // mmap.PAGESIZE) * mmap.PAGESIZE)  # whole pages: O_DIRECT writes them
            if len(self._buffers) < self.kept:
                self._buffers.append(fresh)
            elif too_small is not None:
                self._buffers[too_small] = fresh
            else:
                return fresh
            self._taken.add(id(fresh))
            return fresh

    def release_idle(self):
        """Hands back to the system the memory of the buffers nobody holds and nobody took since the last call."""
        with self._lock:
            self._buffers = [buffer for buffer in self._buffers
                             if id(buffer) in self._taken or sys.getrefcount(buffer) > self._UNUSED]
            self._taken.clear()


receive_buffers = ReceiveBuffers(0)  # the daemon sets how many it keeps, from its memory budgets (fsmount/memory.py)


class RangeFetcher:
    def __init__(self, max_connections: int, verify: bool | str = True, retries: RetryPolicy = RetryPolicy()):
        self.retries = retries  # the stores' own requests (SDK calls, JSON calls) follow it too
        self._pool = urllib3.PoolManager(num_pools=4, maxsize=max_connections, block=True, retries=False,
                                         timeout=urllib3.Timeout(connect=5, read=60), **urllib3_tls(verify))
        self.small_requests = CurlRequests(max_connections, verify, retries)

    def get(self, request: RangeRequest) -> bytes | memoryview:
        """The bytes REQUEST asks for (blocking: call it in a worker thread), retried while the server
        is throttling or unreachable; fewer at the end of the object, b"" past it."""
        def answer(response):
            if response.status == 206:
                return _body(response)
            if response.status == 200:  # a server that ignores Range sends it all
                return response.read()[request.start:request.start + request.length]
            return b"" if response.status == 416 else None

        headers = {**request.headers, "Range": f"bytes={request.start}-{request.start + request.length - 1}"}
        try:
            return self._send("GET", request.url, headers, None,
                              f"GET {request.key} [{request.start}+{request.length}]", answer)
        except NotFound as error:
            raise request.stale_if_gone(error) from None

    def send(self, method: str, url: str, body: bytes | typing.BinaryIO | None, headers: dict[str, str],
             what: str) -> Reply:
        """A signed request other than a ranged GET (an upload, a listing), sent (blocking) and retried as
        GETs are; the server's answer. A file BODY is sent from its start, each try."""
        def answer(response):
            if response.status in _ANSWERS:
                return Reply(response.status, {name.lower(): value for name, value in response.headers.items()},
                             response.read())
            return None

        return self._send(method, url, headers, body, what, answer)

    def _send(self, method: str, url: str, headers: dict[str, str], body, what: str, answer):
        """ANSWER(response) gives the result, or None for a failure the status names."""
        return self.retries.call(lambda: self._send_once(method, url, headers, body, what, answer))

    def _send_once(self, method: str, url: str, headers: dict[str, str], body, what: str, answer):
        if hasattr(body, "seek"):
            body.seek(0)
        try:
            response = self._pool.request(method, url, headers=headers, body=body, preload_content=False,
                                          decode_content=False)
            try:
                result = answer(response)
                if result is not None:
                    return result
                raise status_error(response.status, f"{what}: {response.status}", response.headers.get("retry-after"))
            finally:
                response.release_conn()
        except (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError) as failure:
            if isinstance(failure, StoreError):
                raise
            raise unanswered(what, failure) from None

    def close(self):
        self._pool.clear()


def _body(response: urllib3.BaseHTTPResponse) -> bytes | memoryview:
    """RESPONSE's body; a large one in a ReceiveBuffer, read from the socket by http.client (urllib3's
    readinto reads into new bytes and copies), and reported part by part to the current Arrival."""
    length = int(response.headers.get("content-length", 0))
    if length < _REUSED_FROM:
        return response.read()
    body = memoryview(receive_buffers.take(length))[:length]
    report = arrival.current.get()
    if report is not None:
        report.receiving(body)
    received = 0
    try:
        while received < length:
            count = response._fp.readinto(body[received:received + _PART])
            if not count:
                raise http.client.IncompleteRead(b"", length - received)
            received += count
            if report is not None:
                report.received(received)
    except BaseException:
        response.close()  # its connection holds the rest of a body: it must not be reused
        raise
    return body
