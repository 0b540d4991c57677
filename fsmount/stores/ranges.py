"""RangeFetcher: sends the ranged GETs that stores sign, from worker threads, through one urllib3 pool per store.

Block data does not go through the event loop: urllib3 reads a body straight into one buffer with
the GIL released, so fills run on the second core while the loop answers the kernel. aiohttp on
the loop spent ~40% of the daemon's only busy thread on a cold sequential read.
"""
import time

import urllib3

from fsmount.stores.base import RangeRequest, Throttled, Unavailable, status_error

_ATTEMPTS = 3


class RangeFetcher:
    def __init__(self, max_connections: int, verify: bool | str = True):
        tls = {"cert_reqs": "CERT_NONE"} if verify is False else {"ca_certs": verify} if isinstance(verify, str) else {}
        self._pool = urllib3.PoolManager(num_pools=4, maxsize=max_connections, block=True, retries=False,
                                         timeout=urllib3.Timeout(connect=5, read=60), **tls)

    def get(self, request: RangeRequest) -> bytes:
        """The bytes REQUEST asks for (blocking: call it in a worker thread), retried while the server
        is throttling or unreachable; fewer at the end of the object, b"" past it."""
        what = f"GET {request.key} [{request.start}+{request.length}]"
        headers = {**request.headers, "Range": f"bytes={request.start}-{request.start + request.length - 1}"}
        attempt = 0
        while True:
            try:
                response = self._pool.request("GET", request.url, headers=headers, preload_content=False,
                                              decode_content=False)
                try:
                    if response.status == 206:
                        return response.read()
                    if response.status == 200:  # a server that ignores Range sends it all
                        return response.read()[request.start:request.start + request.length]
                    if response.status == 416:
                        return b""
                    error = status_error(response.status, f"{what}: {response.status}")
                finally:
                    response.release_conn()
            except urllib3.exceptions.HTTPError as failure:
                error = Unavailable(f"{what}: {type(failure).__name__}")
            attempt += 1
            if attempt == _ATTEMPTS or not isinstance(error, (Throttled, Unavailable)):
                raise error
            time.sleep(0.2 * 2**attempt)

    def close(self):
        self._pool.clear()
