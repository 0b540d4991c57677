"""UrlStore: plain HTTP(S) URLs (Bacalhau's URL source) as read-only objects, one file each, named by the config.

A HEAD (aiohttp, redirects followed up to a limit; a GET of one byte where HEAD is refused)
gives a URL's size, version (its strong ETag, else its Last-Modified, else its size) and where
it finally lives; ranged GETs go there from worker
threads, through the RangeFetcher, conditional on the version (If-Match, If-Unmodified-Since).
A server that does not take ranges has the whole file downloaded once, streamed to a spool file
beside the cache, and ranges are read from that.
"""
import asyncio
import email.utils
import hashlib
import os
import shutil
import tempfile
import threading
import time

import aiohttp
import urllib3

from fsmount.stores.base import (CertificateRefused, ListPage, NotFound, ObjectInfo, PreconditionFailed, RangeRequest,
                                 ReadOnlyStore, Unavailable, read_part, redact_url, status_error, unanswered)
from fsmount.stores.ranges import RangeFetcher
from fsmount.stores.retries import RetryPolicy
from fsmount.stores.tls import aiohttp_tls, urllib3_tls

_SIZE = "size:"
_HEAD_REFUSED = {403, 405, 501}  # starts the version of a URL whose server names neither an ETag nor a time


class UrlStore(ReadOnlyStore):
    def __init__(self, files: dict[str, str], spool_dir: str, verify: bool | str = True, max_connections: int = 8,
                 redirects: int = 5, retries: RetryPolicy = RetryPolicy()):
        """FILES: name -> URL. SPOOL_DIR: where whole downloads from servers without ranges go."""
        self.files = dict(files)
        self._verify = verify
        self._redirects = redirects
        self._max_connections = max_connections
        self.fetcher = RangeFetcher(max_connections, verify, retries)
        self._spool_dir = spool_dir
        self._session: aiohttp.ClientSession | None = None
        self._located: dict[str, tuple[str, bool]] = {}  # name -> (final URL, takes ranges)
        self._spooled: dict[tuple[str, str], str] = {}  # (name, version) -> spool file
        self._spool_lock = threading.Lock()

    @property
    def identity(self) -> str:
        return "url:" + hashlib.sha256(repr(sorted(self.files.items())).encode()).hexdigest()

    def source_url(self, info: ObjectInfo) -> str:
        return redact_url(self.files[info.key])


    async def open(self):
        os.makedirs(self._spool_dir, exist_ok=True)
        self._spool_dir = tempfile.mkdtemp(prefix="spool-", dir=self._spool_dir)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self._max_connections, ssl=aiohttp_tls(self._verify)),
            timeout=aiohttp.ClientTimeout(sock_connect=5, sock_read=60))

    async def close(self):
        self.fetcher.close()
        if self._session is not None:
            await self._session.close()
            self._session = None
        shutil.rmtree(self._spool_dir, ignore_errors=True)

    async def stat(self, key: str, pinned: str | None = None) -> ObjectInfo:
        url = self.files.get(key)
        if url is None:
            raise NotFound(key)
        headers, final = await self._head(key, url)
        ranges = headers.get("Accept-Ranges", "").lower() == "bytes" or "Content-Range" in headers
        self._located[key] = (final, ranges)
        modified = headers.get("Last-Modified")
        size = int(headers.get("Content-Range", "/").rpartition("/")[2] or headers.get("Content-Length", 0))
        mtime = email.utils.parsedate_to_datetime(modified).timestamp() if modified else time.time()
        etag = headers.get("ETag", "")
        strong = etag if etag.startswith('"') else None  # If-Match never matches a weak ETag
        return ObjectInfo(key, size, strong or modified or f"{_SIZE}{size}", int(mtime * 1e9),
                          content_type=headers.get("Content-Type"))

    async def _head(self, key: str, url: str):
        """(the headers, the final URL) of a HEAD, or of a GET of the first byte where HEAD is refused (a
        presigned GET URL refuses it); retried as every request is."""
        async for attempt in self.fetcher.retries.attempts_of():
            with attempt:
                return await self._head_once(key, url)

    async def _head_once(self, key: str, url: str):
        for method, headers in (("HEAD", {}), ("GET", {"Range": "bytes=0-0"})):
            try:
                async with self._session.request(method, url, headers=headers, allow_redirects=True,
                                                 max_redirects=self._redirects) as response:
                    if response.status in _HEAD_REFUSED and method == "HEAD":
                        continue
                    if response.status >= 300:
                        raise status_error(response.status, f"{method} {key}: {response.status}",
                                           response.headers.get("Retry-After"))
                    return response.headers, str(response.url)
            except aiohttp.TooManyRedirects:
                raise Unavailable(f"{method} {key}: more than {self._redirects} redirects") from None
            except aiohttp.ClientConnectorCertificateError as error:  # the reason says which CA to name in `verify`
                raise CertificateRefused(f"{method} {key}: {error.certificate_error}") from None
            except (aiohttp.ClientError, asyncio.TimeoutError) as error:
                raise Unavailable(f"{method} {key}: {type(error).__name__}") from None

    async def list_page(self, prefix: str, delimiter: str = "/", token: str | None = None,
                        page_size: int | None = None) -> ListPage:
        names = [name for name in sorted(self.files) if name.startswith(prefix) and "/" not in name[len(prefix):]]
        return ListPage(list(await asyncio.gather(*(self.stat(name) for name in names))), [])

    def range_request(self, key: str, start: int, length: int, version: str, fresh: bool = False) -> RangeRequest:
        return RangeRequest(key, start, length, self._located_url(key), _condition(version))

    def _located_url(self, key: str) -> str:
        return self._located.get(key, (self.files[key], True))[0]

    def read_range(self, key: str, start: int, length: int, version: str, fresh: bool = False) -> bytes:
        if self._located.get(key, ("", True))[1]:
            return super().read_range(key, start, length, version, fresh)
        return read_part(self._spool(key, version), start, length)

    def _spool(self, key: str, version: str) -> str:
        """The whole file at VERSION on local disk, downloaded (streamed) on first use."""
        with self._spool_lock:  # one download at a time; later readers of the file wait for it
            path = self._spooled.get((key, version))
            if path is None:
                path = os.path.join(self._spool_dir, hashlib.sha256(f"{key}\0{version}".encode()).hexdigest())
                self._download(key, self._located_url(key), _condition(version), path)
                for (name, old), old_path in list(self._spooled.items()):
                    if name == key:  # an older version of the file
                        os.unlink(old_path)
                        del self._spooled[(name, old)]
                self._spooled[(key, version)] = path
            return path

    def _download(self, key: str, url: str, headers: dict[str, str], path: str):
        """Retried whole, as every request is: a download cut short starts again."""
        pool = urllib3.PoolManager(retries=urllib3.Retry(total=None, connect=0, read=0, status=0, other=0,
                                                         redirect=self._redirects), **urllib3_tls(self._verify))
        for attempt in self.fetcher.retries.attempts_of():
            with attempt:
                self._download_once(pool, key, url, headers, path)

    def _download_once(self, pool: urllib3.PoolManager, key: str, url: str, headers: dict[str, str], path: str):
        try:
            response = pool.request("GET", url, headers=headers, preload_content=False)
            try:
                if response.status == 412:
                    raise PreconditionFailed(f"GET {key}: changed")
                if response.status != 200:
                    raise status_error(response.status, f"GET {key}: {response.status}", response.headers.get("retry-after"))
                with open(path + ".part", "wb") as spool:
                    shutil.copyfileobj(response, spool, 2**20)
                os.rename(path + ".part", path)
            finally:
                response.release_conn()
        except urllib3.exceptions.HTTPError as error:
            raise unanswered(f"GET {key}", error) from None


def _condition(version: str) -> dict[str, str]:
    """The header that makes a GET fail (412) once the URL no longer has VERSION."""
    if version.startswith(_SIZE):
        return {}
    return {"If-Match" if version.startswith('"') else "If-Unmodified-Since": version}

