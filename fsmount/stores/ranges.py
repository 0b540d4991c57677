"""RangeFetcher: sends the ranged GETs (and uploads) that stores sign, from worker threads, through one urllib3 pool per store.

Block data does not go through the event loop: urllib3 reads a body straight into one buffer with
the GIL released, so fills run on the second core while the loop answers the kernel. aiohttp on
the loop spent ~40% of the daemon's only busy thread on a cold sequential read.
"""
import time
from typing import NamedTuple

import urllib3

from fsmount.stores.base import ATTEMPTS, RangeRequest, Throttled, Unavailable, backoff, status_error

_ANSWERS = {200, 201, 308}  # 308: a resumable upload (GCS) took a chunk and wants the next


class Reply(NamedTuple):
    status: int
    headers: dict[str, str]
    body: bytes


class RangeFetcher:
    def __init__(self, max_connections: int, verify: bool | str = True):
        tls = {"cert_reqs": "CERT_NONE"} if verify is False else {"ca_certs": verify} if isinstance(verify, str) else {}
        self._pool = urllib3.PoolManager(num_pools=4, maxsize=max_connections, block=True, retries=False,
                                         timeout=urllib3.Timeout(connect=5, read=60), **tls)

    def get(self, request: RangeRequest) -> bytes:
        """The bytes REQUEST asks for (blocking: call it in a worker thread), retried while the server
        is throttling or unreachable; fewer at the end of the object, b"" past it."""
        def answer(response):
            if response.status == 206:
                return response.read()
            if response.status == 200:  # a server that ignores Range sends it all
                return response.read()[request.start:request.start + request.length]
            return b"" if response.status == 416 else None

        headers = {**request.headers, "Range": f"bytes={request.start}-{request.start + request.length - 1}"}
        return self._send("GET", request.url, headers, None, f"GET {request.key} [{request.start}+{request.length}]",
                          answer)

    def send(self, method: str, url: str, body: bytes | None, headers: dict[str, str], what: str) -> Reply:
        """A signed request other than a ranged GET (an upload, a listing), sent (blocking) and retried as
        GETs are; the server's answer."""
        def answer(response):
            if response.status in _ANSWERS:
                return Reply(response.status, {name.lower(): value for name, value in response.headers.items()},
                             response.read())
            return None

        return self._send(method, url, headers, body, what, answer)

    def _send(self, method: str, url: str, headers: dict[str, str], body: bytes | None, what: str, answer):
        """ANSWER(response) gives the result, or None for a failure the status names."""
        attempt = 0
        while True:
            try:
                response = self._pool.request(method, url, headers=headers, body=body, preload_content=False,
                                              decode_content=False)
                try:
                    result = answer(response)
                    if result is not None:
                        return result
                    error = status_error(response.status, f"{what}: {response.status}")
                finally:
                    response.release_conn()
            except urllib3.exceptions.HTTPError as failure:
                error = Unavailable(f"{what}: {type(failure).__name__}")
            attempt += 1
            if attempt == ATTEMPTS or not isinstance(error, (Throttled, Unavailable)):
                raise error
            time.sleep(backoff(attempt))

    def close(self):
        self._pool.clear()
