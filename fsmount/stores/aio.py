"""The asyncio seam: the one module that knows the stores' SDKs run on asyncio.

The daemon runs trio with a trio-asyncio loop open (`trio_asyncio.open_loop()`); TrioStore makes
a store's asyncio methods awaitable from trio. Each call crosses the seam once, ~170 us measured
here, so callers cross it per block or listing page, never per FUSE read. A read does not cross it:
a worker thread signs its GET and sends it. Every request of a volume's passes here, so here each is counted
for it (fsmount/metrics/store_requests.py).
"""
from __future__ import annotations  # `list` is also a method's name here

import contextlib
import logging
import os
from collections.abc import AsyncIterator

import trio
import trio_asyncio
from trio_asyncio import aio_as_trio

from fsmount.metrics.store_requests import VolumeRequests
from fsmount.stores.base import AccessDenied, ListPage, ObjectInfo, Store, raise_store_error_of
from fsmount.stores.ranges import SMALL_REQUEST

log = logging.getLogger(__name__)


@contextlib.asynccontextmanager
async def asyncio_loop():
    """The loop the stores run on, for the daemon's life. An error asyncio has no one to hand to (an SDK's
    stray task: aiohttp's body writer on a connection the server dropped) is logged; trio-asyncio's
    default raises it into the daemon, which took the whole mount down."""
    async with trio_asyncio.open_loop() as loop:
        loop.set_exception_handler(_log_stray_error)
        yield loop


def _log_stray_error(loop, context: dict):
    error = context.get("exception")
    log.info("a store's background task failed: %s", f"{type(error).__name__}: {error}" if error else context.get("message"))


class TrioStore:
    """STORE's methods awaitable from trio; each request counted for the volume REQUESTS names."""

    def __init__(self, store: Store, requests: VolumeRequests | None = None):
        self.store = store
        self.requests = requests or VolumeRequests(store.identity)
        self._in_flight: dict[Store, int] = {}  # calls under way, by the store that serves them
        self._call_ended: trio.Event | None = None  # set when one ends, for whoever waits on one

    @contextlib.contextmanager
    def _using(self):
        """The store that serves a call from start to end, even when another replaces it meanwhile."""
        store = self.store
        self._in_flight[store] = self._in_flight.get(store, 0) + 1
        try:
            yield store
        finally:
            self._in_flight[store] -= 1
            if not self._in_flight[store]:
                del self._in_flight[store]
            if self._call_ended is not None:
                self._call_ended.set()
                self._call_ended = None

    async def replace(self, store: Store, task_status=trio.TASK_STATUS_IGNORED):
        """STORE (the same bucket, reached with other credentials) serves every call from now on, once it is open;
        the store it replaces is closed once the calls it serves are done."""
        await aio_as_trio(store.open)()
        old, self.store = self.store, store
        task_status.started()
        while old in self._in_flight:
            self._call_ended = self._call_ended or trio.Event()
            await self._call_ended.wait()
        with trio.CancelScope(shield=True):
            await aio_as_trio(old.close)()

    @property
    def identity(self) -> str:
        return self.store.identity

    @property
    def multipart(self) -> bool:
        return self.store.multipart

    @property
    def parts_in_order(self) -> bool:
        return self.store.parts_in_order

    def source_url(self, info: ObjectInfo) -> str:
        return self.store.source_url(info)

    @property
    def content_addressed(self) -> bool:
        return self.store.content_addressed

    @property
    def lists_metadata(self) -> bool:
        return self.store.lists_metadata

    @property
    def part_size(self) -> int:
        return self.store.part_size

    async def open(self):
        await aio_as_trio(self.store.open)()

    async def close(self):
        await aio_as_trio(self.store.close)()

    async def stat(self, key: str, pinned: str | None = None) -> ObjectInfo:
        with self.requests.request("head", key), self._using() as store:
            return await aio_as_trio(store.stat)(key, pinned)

    async def list_page(self, prefix: str, delimiter: str = "/", token: str | None = None,
                        page_size: int | None = None) -> ListPage:
        with self.requests.request("list", prefix), self._using() as store:
            return await aio_as_trio(store.list_page)(prefix, delimiter, token, page_size)

    async def list(self, prefix: str, delimiter: str = "/", page_size: int | None = None) -> AsyncIterator[ListPage]:
        """Every page in turn. A trio generator on this side of the seam, so it may be resumed from any
        task (FUSE requests are); an asyncio iterator must not outlive the task that started it."""
        token = None
        while True:
            page = await self.list_page(prefix, delimiter, token, page_size)
            yield page
            token = page.next_token
            if token is None:
                return

    async def read(self, key: str, start: int, length: int, version: str) -> bytes:
        """LENGTH bytes (fewer at the end) from START of KEY at VERSION; PreconditionFailed if it changed. A
        small range whose request can be signed at once is fetched on the event loop, the rest from worker threads."""
        with self.requests.request("get", key):
            for fresh in (False, True):
                try:
                    with self._using() as store:
                        if length < SMALL_REQUEST and store.signs_at_once():
                            request = store.range_request(key, start, length, version, fresh)
                            data = await store.fetcher.small_requests.get(request)
                        else:
                            data = await trio.to_thread.run_sync(store.read_range, key, start, length, version,
                                                                 fresh, abandon_on_cancel=True)
                    self.requests.received(len(data))
                    return data
                except AccessDenied:  # perhaps a signature that expired early, with the credentials it was made with
                    if fresh:
                        raise

    async def put(self, key: str, data: bytes, metadata: dict[str, str] | None = None) -> ObjectInfo:
        """Makes KEY of DATA in one request: a small one on the event loop, when it can be signed at once;
        else from a worker thread (the seam and asyncio's thread cost ~1 ms of ~8)."""
        with self.requests.request("put", key, len(data)), self._using() as store:
            if len(data) < SMALL_REQUEST and store.signs_at_once():
                reply = await store.fetcher.small_requests.send(store.put_request(key, data, metadata))
                return store.put_result(key, len(data), metadata, reply)
            return await trio.to_thread.run_sync(store.upload_bytes, key, data, metadata, abandon_on_cancel=True)

    async def put_file(self, key: str, path: str, threshold: int, part_size: int, parallel: int,
                       metadata: dict[str, str] | None = None) -> ObjectInfo:
        """Uploads the file at PATH: in one request up to THRESHOLD bytes, else in parts of PART_SIZE,
        PARALLEL at once (one at a time, in order, where the store wants them so)."""
        size = os.path.getsize(path)
        if size < min(SMALL_REQUEST, threshold + 1):
            with open(path, "rb") as stream:  # a few pages, in the page cache: read on the loop
                return await self.put(key, stream.read(), metadata)
        if size <= threshold:
            with self.requests.request("put", key, size), self._using() as store:
                return await trio.to_thread.run_sync(store.upload_file, key, path, metadata, abandon_on_cancel=True)
        upload = await self.start_upload(key, metadata)
        parts: dict[int, str] = {}
        slots = trio.CapacityLimiter(1 if self.parts_in_order else parallel)

        async def send(number: int, offset: int):
            async with slots:
                parts[number] = await self.upload_part(key, upload, number, path, offset, min(part_size, size - offset))

        try:
            try:
                async with trio.open_nursery() as nursery:
                    for number, offset in enumerate(range(0, size, part_size), start=1):
                        if self.parts_in_order:
                            await send(number, offset)
                        else:
                            nursery.start_soon(send, number, offset)
            except BaseExceptionGroup as group:  # a part that failed: the upload's callers catch OSError
                raise_store_error_of(group)
            return await self.complete_upload(key, upload, sorted(parts.items()), size, metadata)
        except BaseException:
            with contextlib.suppress(Exception):
                await self.abort_upload(key, upload)
            raise

    async def start_upload(self, key: str, metadata: dict[str, str] | None = None) -> str:
        with self.requests.request("start", key), self._using() as store:
            return await aio_as_trio(store.start_upload)(key, metadata)

    async def upload_part(self, key: str, upload: str, number: int, path: str, offset: int, size: int) -> str:
        with self.requests.request("part", key, size), self._using() as store:
            return await trio.to_thread.run_sync(store.upload_part, key, upload, number, path, offset, size,
                                                 abandon_on_cancel=True)

    async def complete_upload(self, key: str, upload: str, parts: list[tuple[int, str]], size: int,
                              metadata: dict[str, str] | None = None) -> ObjectInfo:
        with self.requests.request("complete", key), self._using() as store:
            return await aio_as_trio(store.complete_upload)(key, upload, parts, size, metadata)

    async def abort_upload(self, key: str, upload: str):
        with self.requests.request("abort", key), self._using() as store:
            await aio_as_trio(store.abort_upload)(key, upload)

    async def version_id(self, key: str) -> str | None:
        with self.requests.request("head", key), self._using() as store:
            return await aio_as_trio(store.version_id)(key)

    async def delete(self, key: str):
        with self.requests.request("delete", key), self._using() as store:
            await aio_as_trio(store.delete)(key)

    async def copy(self, source_key: str, key: str, metadata: dict[str, str] | None = None) -> ObjectInfo:
        with self.requests.request("copy", key), self._using() as store:
            return await aio_as_trio(store.copy)(source_key, key, metadata)
