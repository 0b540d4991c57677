"""What every object store client offers: keys, ranges, listings, puts, deletes and copies; nothing about files.

Where a store's methods run; fsmount.stores.aio calls each so, and the rest of fsmount reaches stores only through it:
- A coroutine runs on the asyncio loop and uses an asyncio SDK (aiobotocore, azure-storage-blob's aio client,
  aiohttp). It never blocks and hands no work to a thread, but for credentials that botocore or google-auth fetch
  or refresh, which they do only blocking, once in the credentials' life (`fetch_credentials`).
- A plain method may block: it is called from a worker thread. Those that move data (`read_range`, `upload_*`)
  and sign it (`range_request`, `put_request`) are plain in every store. The others (`stat`, `list_page`, `open`,
  `close`, `complete_upload`...) are each store's choice: IPFS's `stat` walks a DAG by blocking requests, so it
  is plain; S3's calls aiobotocore, so it is a coroutine. None is a coroutine that waits for a thread.
- `identity`, `source_url`, `signs_at_once` and `put_result` answer at once, on whichever loop or thread asks.

Data (ranged GETs, uploads and their parts) does not go through the SDKs: a store signs each request and
fsmount.stores.ranges sends it from a worker thread with urllib3, its body read into one buffer with the GIL
released, so fills run on the second core while the loop answers the kernel (aiohttp on the loop took much of
the daemon's one busy thread on a cold read); a small one, mostly overhead, goes by libcurl on the trio loop
(fsmount.stores.curl).
Errors are OSErrors with a fitting errno, so no SDK exception ever leaves a store.
"""
import abc
import asyncio
import base64
import email.utils
import errno
import hashlib
import time
import types
import typing
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from fsmount.stores.parts import PART_SIZE


NO_METADATA: Mapping[str, str] = types.MappingProxyType({})  # one for every object a listing gives without any


def redact_url(url: str) -> str:
    """The URL with any password or query string (where SAS tokens live) masked."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        netloc = netloc.replace(f":{parts.password}@", ":***@")
    query = "***" if parts.query else ""
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def metadata_of(metadata: Mapping[str, str] | None) -> Mapping[str, str]:
    return dict(metadata) if metadata else NO_METADATA


@dataclass(frozen=True, slots=True)  # a volume may hold a few hundred thousand
class ObjectInfo:
    key: str
    size: int
    version: str  # what a read can be pinned to: an ETag, a generation, a version id, a CID
    mtime_ns: int
    metadata: Mapping[str, str] = field(default_factory=lambda: NO_METADATA, compare=False)
    link_target: str | None = None  # a symlink's (IPFS has them): the object is the link, not a file
    content_type: str | None = None  # where the store said (S3 listings do not)


@dataclass(frozen=True)
class ListPage:
    objects: list[ObjectInfo]
    prefixes: list[str]  # common prefixes, each ending in the delimiter
    next_token: str | None = None  # passed back, it gives the next page; None after the last


@dataclass(frozen=True)
class RangeRequest:
    """A plain HTTP GET of LENGTH bytes from START of KEY, as the store signed it; worker threads send it."""
    key: str
    start: int
    length: int
    url: str
    headers: dict[str, str] = field(default_factory=dict)  # pins the version, authorizes
    version_in_url: bool = False  # the URL names the version: a 404 says that version is gone

    def stale_if_gone(self, error: "NotFound") -> OSError:
        """What a 404 to this GET means."""
        if self.version_in_url:
            return PreconditionFailed(f"GET {self.key}: version gone")
        return error


class Request(NamedTuple):
    """A signed request with a body (an upload), in the order `RangeFetcher.send` takes it."""
    method: str
    url: str
    body: bytes | None
    headers: dict[str, str]
    what: str  # what errors and logs call it: "PUT key"


class Reply(NamedTuple):
    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes


class StoreError(OSError):
    errno_value = errno.EIO
    retry_after: float | None = None  # seconds the server asked to wait before the request is sent again

    def __init__(self, message: str):
        super().__init__(self.errno_value, message)


class NotFound(StoreError):
    errno_value = errno.ENOENT


class PreconditionFailed(StoreError):
    """The object is no longer at the version asked for."""
    errno_value = errno.ESTALE


class AccessDenied(StoreError):
    errno_value = errno.EACCES


class Throttled(StoreError):
    """Still throttled once the retries are spent: EIO, as for any store fault (EAGAIN would tell cp or a reader of
    a regular file to give up, not to wait)."""
    errno_value = errno.EIO


class Unavailable(StoreError):
    errno_value = errno.EIO


class TooLarge(StoreError):
    """More than one request may carry (S3's 5 GiB single PUT); not retried."""
    errno_value = errno.EFBIG


class CertificateRefused(StoreError):
    """The server's TLS certificate did not verify: an answer, not a fault, so it is not retried."""
    errno_value = errno.EIO


class NoSuchContainer(StoreError):
    """The bucket or container itself is not there. The store says so once in the log; each request after
    fails with EIO, and no more lines."""
    errno_value = errno.EIO
    logged = True


_STATUS_ERRORS = {404: NotFound, 412: PreconditionFailed, 401: AccessDenied, 403: AccessDenied,
                  429: Throttled, 503: Throttled}


def status_error(status: int, message: str, retry_after: str | None = None) -> StoreError:
    """The error an HTTP status means, whichever store's server sent it; RETRY_AFTER: its Retry-After header."""
    error = (_STATUS_ERRORS.get(status) or (Unavailable if status >= 500 else StoreError))(message)
    error.retry_after = retry_after_seconds(retry_after)
    return error


def unanswered(what: str, failure: BaseException) -> StoreError:
    """The error of a request that got no answer (FAILURE, from urllib3, http.client or an SDK that wraps them): a
    certificate that did not verify is refused for good, anything else is a server out of reach, tried again."""
    cause = failure
    while cause is not None and not hasattr(cause, "verify_message"):  # aiohttp's wrapper is an SSLCertVerificationError too
        cause = cause.__cause__ or cause.__context__
    if cause is not None:
        return CertificateRefused(f"{what}: certificate verify failed: {cause.verify_message}")
    return Unavailable(f"{what}: {type(failure).__name__}")


def raise_store_error_of(group: BaseExceptionGroup):
    """Raises the OSError among GROUP's, what a nursery of requests raised, as one request would have raised it; GROUP
    itself if none is."""
    failure = next((error for error in group.exceptions if isinstance(error, OSError)), None)
    if failure is None:
        raise group
    raise failure from None


def retry_after_seconds(header: str | None) -> float | None:
    """A Retry-After header's wait in seconds: it is a number of seconds or an HTTP date."""
    if not header:
        return None
    try:
        return max(0.0, float(header))
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(header).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


class Store(abc.ABC):
    """A client of one bucket or container; keys are relative to it. Its `fetcher`, a RangeFetcher
    (fsmount.stores.ranges, which imports this module), sends the requests it signs."""

    multipart = True  # False: every upload is one request, whatever its size
    parts_in_order = False  # True: an upload's parts must be sent one at a time, in order (GCS's resumable uploads)
    content_addressed = False  # True: a version names the bytes wherever they are (IPFS's CIDs), so caches key by it alone
    part_size = PART_SIZE  # of uploads in parts, unless the config names one
    lists_metadata = True  # False: listings show no object's metadata (S3's), only a request per key does

    @property
    @abc.abstractmethod
    def identity(self) -> str:
        """Names the bucket for cache keys: the same bucket gives the same identity across runs."""

    @abc.abstractmethod
    def source_url(self, info: ObjectInfo) -> str:
        """Where the object INFO comes from, as a user would name it, with no secret in it."""

    async def open(self):
        pass

    async def close(self):
        pass

    @abc.abstractmethod
    async def stat(self, key: str, pinned: str | None = None) -> ObjectInfo:
        """KEY's size, version and metadata. PINNED: a version the store names itself (an S3 version
        id); the info is then that version's, and reads of it never change."""

    @abc.abstractmethod
    async def list_page(self, prefix: str, delimiter: str = "/", token: str | None = None,
                        page_size: int | None = None) -> ListPage:
        """One page (of at most PAGE_SIZE entries) of the keys and common prefixes under PREFIX, in key
        order: the first page with TOKEN None, then each page's next_token gives the one after it.
        DELIMITER "": every key under PREFIX, however deep."""


    @abc.abstractmethod
    def range_request(self, key: str, start: int, length: int, version: str, fresh: bool = False) -> RangeRequest:
        """The GET for LENGTH bytes from START of KEY at VERSION, failing with PreconditionFailed once KEY
        changed. FRESH: the last one was refused; sign it anew rather than from a cache. Called from
        worker threads, right before the GET is sent: thread-safe, and it may block."""

    def signs_at_once(self) -> bool:
        """Whether `range_request` may be called on the event loop now: it would not wait for anything (a
        credential to refresh, a token to fetch)."""
        return False

    def read_range(self, key: str, start: int, length: int, version: str, fresh: bool = False) -> bytes:
        """The bytes of `range_request`, sent from this (worker) thread; fewer at the end, b"" past it."""
        return self.fetcher.get(self.range_request(key, start, length, version, fresh))

    def upload_file(self, key: str, path: str, metadata: dict[str, str] | None = None) -> ObjectInfo:
        """Sends the whole file at PATH in one request. Called from worker threads, and it blocks."""
        with open(path, "rb") as stream:
            return self.upload_bytes(key, stream.read(), metadata)

    def upload_bytes(self, key: str, data: bytes, metadata: dict[str, str] | None = None) -> ObjectInfo:
        """Makes KEY of DATA in one request. Called from worker threads: thread-safe, and it blocks."""
        return self.put_result(key, len(data), metadata, self.fetcher.send(*self.put_request(key, data, metadata)))

    @abc.abstractmethod
    def put_request(self, key: str, data: bytes, metadata: dict[str, str] | None = None) -> Request:
        """The one request that makes KEY of DATA with METADATA, signed. Thread-safe; it may block unless
        `signs_at_once`."""

    @abc.abstractmethod
    def put_result(self, key: str, size: int, metadata: dict[str, str] | None, reply: Reply) -> ObjectInfo:
        """What the request of `put_request` made, from the server's REPLY."""

    @abc.abstractmethod
    async def start_upload(self, key: str, metadata: dict[str, str] | None = None) -> str:
        """Begins an upload of KEY in parts; returns the id its parts name."""

    @abc.abstractmethod
    def upload_part(self, key: str, upload: str, number: int, path: str, offset: int, size: int) -> str:
        """Sends SIZE bytes from OFFSET of the file at PATH as part NUMBER (from 1) of UPLOAD; returns the
        part's tag. Every part but the last is at least 5 MiB and a multiple of 256 KiB, so a part that
        is not is the last. Called from worker threads: thread-safe, and it blocks."""

    @abc.abstractmethod
    async def complete_upload(self, key: str, upload: str, parts: list[tuple[int, str]], size: int,
                              metadata: dict[str, str] | None = None) -> ObjectInfo:
        """Makes the object of PARTS ((number, tag) in order), SIZE bytes in all."""

    @abc.abstractmethod
    async def abort_upload(self, key: str, upload: str): ...

    async def version_id(self, key: str) -> str | None:
        """The id of KEY's current version where the bucket keeps versions (S3 versioning); None elsewhere."""
        return None

    @abc.abstractmethod
    async def delete(self, key: str): ...

    @abc.abstractmethod
    async def copy(self, source_key: str, key: str, metadata: dict[str, str] | None = None) -> ObjectInfo:
        """A server-side copy; METADATA replaces the source's, None keeps it."""


class ReadOnlyStore(Store):
    """A store of content fsmount never changes (web URLs, IPFS): every change is EROFS."""

    def put_request(self, key: str, data: bytes, metadata: dict[str, str] | None = None) -> Request:
        raise _read_only()

    def put_result(self, key: str, size: int, metadata: dict[str, str] | None, reply: Reply) -> ObjectInfo:
        raise _read_only()

    async def start_upload(self, key: str, metadata: dict[str, str] | None = None) -> str:
        raise _read_only()

    def upload_part(self, key: str, upload: str, number: int, path: str, offset: int, size: int) -> str:
        raise _read_only()

    async def complete_upload(self, key: str, upload: str, parts: list[tuple[int, str]], size: int,
                              metadata: dict[str, str] | None = None) -> ObjectInfo:
        raise _read_only()

    async def abort_upload(self, key: str, upload: str):
        raise _read_only()

    async def delete(self, key: str):
        raise _read_only()

    async def copy(self, source_key: str, key: str, metadata: dict[str, str] | None = None) -> ObjectInfo:
        raise _read_only()


def _read_only() -> OSError:
    return OSError(errno.EROFS, "a read-only store")


def uploaded(key: str, size: int, version: str, metadata: dict[str, str] | None) -> ObjectInfo:
    """What an upload made, from its response: the time is ours, as not every server's answer has one."""
    return ObjectInfo(key, size, version, time.time_ns(), metadata_of(metadata))


def content_md5(body: bytes | typing.BinaryIO) -> str:
    """The base64 MD5 digest that S3, Azure and GCS check an upload's bytes (or a file's, read from its start) against."""
    if isinstance(body, bytes):
        return base64.b64encode(hashlib.md5(body).digest()).decode()
    body.seek(0)
    return base64.b64encode(hashlib.file_digest(body, "md5").digest()).decode()


def read_part(path: str, offset: int, size: int) -> bytes:
    with open(path, "rb") as stream:
        stream.seek(offset)
        return stream.read(size)


async def fetch_credentials(fetch: typing.Callable[..., typing.Any], *arguments):
    """FETCH(*ARGUMENTS) in a worker thread: botocore and google-auth fetch and refresh credentials only blocking.
    The one thread a store's coroutine waits for, once in the credentials' life."""
    return await asyncio.to_thread(fetch, *arguments)
