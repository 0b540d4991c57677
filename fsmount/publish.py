"""`fsmount publish`: a directory published as Bacalhau's publishers do, as a gzipped tarball in S3, Azure Blob, GCS or a local file.

(IPFS, the other publisher, is fsmount.publish_ipfs.) The tarball is made as the tree is read and sent as it is
made, so neither memory nor disk ever holds it whole. Nothing partial is ever named as a finished result: a
local tarball is written as NAME.part and renamed once whole; an object store's goes in parts to a multipart
upload of a temporary key (which no one sees until it is completed, and which is aborted on any failure or
interrupt), then is copied to its key with its SHA-256 in the metadata: S3 and GCS take metadata only when an
upload begins, before the digest is known.
"""
import concurrent.futures
import contextlib
import hashlib
import os
import stat
import tarfile
import threading
import uuid

import trio

from fsmount.config import PublishTarget
from fsmount.progress import Progress
from fsmount.stores.aio import TrioStore, asyncio_loop
from fsmount.stores.base import Store
from fsmount.volume_stores import Stores

CHECKSUM_KEY = "sha256"  # the metadata key of a published tarball's SHA-256, in hex


def walk(root: str, relative: str = ""):
    """(path, path relative to ROOT, lstat) of every entry below ROOT, by name, each directory before what it
    holds; symlinks are not followed."""
    directory = os.path.join(root, relative)
    for name in sorted(os.listdir(directory)):
        path, entry = os.path.join(directory, name), os.path.join(relative, name)
        info = os.lstat(path)
        yield path, entry, info
        if stat.S_ISDIR(info.st_mode):
            yield from walk(root, entry)


def file_bytes(root: str) -> int:
    """The bytes of the regular files below ROOT: what a publish reads."""
    return sum(info.st_size for _, _, info in walk(root) if stat.S_ISREG(info.st_mode))


class _Counted:
    """A file whose reads are counted on PROGRESS as tarfile makes them."""

    def __init__(self, stream, progress: Progress):
        self._stream, self._progress = stream, progress

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        self._progress.add(len(data))
        return data


class _Digest:
    """A stream that hashes what is written to it, then passes it on to SINK."""

    def __init__(self, sink):
        self._sink = sink
        self.sha256 = hashlib.sha256()

    def write(self, data: bytes):
        self.sha256.update(data)
        self._sink.write(data)


def write_tarball(root: str, sink, progress: Progress) -> str:
    """Writes a gzipped tar of ROOT (`.` and all below it, as `tar -C ROOT -czf - .` would) into SINK, a stream,
    as it reads the tree; returns its SHA-256, in hex."""
    digest = _Digest(sink)
    with tarfile.open(fileobj=digest, mode="w|gz", format=tarfile.PAX_FORMAT) as tar:
        tar.add(root, arcname=".", recursive=False)
        for path, relative, _ in walk(root):
            member = tar.gettarinfo(path, arcname=f"./{relative}")
            if member is None:  # a socket: tar has no such member
                continue
            if member.isreg():
                with open(path, "rb") as stream:
                    tar.addfile(member, _Counted(stream, progress))
            else:
                tar.addfile(member)
    return digest.sha256.hexdigest()


def publish_file(root: str, path: str, progress: Progress) -> str:
    """The local publisher: the tarball of ROOT written to PATH.part, then renamed PATH; its SHA-256. PATH.part
    is removed on any failure or interrupt."""
    part = f"{path}.part"
    try:
        with open(part, "wb") as stream:
            sha256 = write_tarball(root, stream, progress)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(part, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(part)
        raise
    return sha256


class _Parts:
    """The stream a tarball is written into on its way to the multipart upload UPLOAD of KEY: its bytes are cut
    into parts of PART_SIZE, each kept in a file under DIRECTORY until it is sent, PARALLEL at once. A write waits
    while that many are on their way, so the disk holds at most PARALLEL + 1 parts."""

    def __init__(self, store: Store, key: str, upload: str, directory: str, part_size: int, parallel: int):
        self._store, self._key, self._upload = store, key, upload
        self._directory, self._part_size = directory, part_size
        self._name = f"publish-{uuid.uuid4().hex}"
        self._sends = concurrent.futures.ThreadPoolExecutor(parallel, thread_name_prefix="publish")
        self._slots = threading.Semaphore(parallel)
        self._sent: list[concurrent.futures.Future] = []
        self._stopped = threading.Event()
        self.ended = threading.Event()  # no more is written: the writer is done, or gave up
        self._file = None
        self._start = 0  # of the part being written, in the tarball
        self.size = 0

    def write(self, data: bytes):
        view = memoryview(data)
        while view:
            if self._stopped.is_set():
                raise InterruptedError("publish stopped")
            if self._file is None:
                self._file = open(self._part_path(len(self._sent) + 1), "wb")
                # The part's bytes at their offset in the tarball, where `Store.upload_part` reads them (and GCS
                # names them): before them, a hole that takes no disk.
                self._file.seek(self.size)
                self._start = self.size
            piece = view[:self._start + self._part_size - self.size]
            self._file.write(piece)
            self.size += len(piece)
            view = view[len(piece):]
            if self.size - self._start == self._part_size:
                self._send()

    def _part_path(self, number: int) -> str:
        return os.path.join(self._directory, f"{self._name}-{number}")

    def _send(self):
        self._file.close()
        self._file = None
        failed = next((future for future in self._sent if future.done() and future.exception()), None)
        if failed is not None:
            failed.result()
        self._slots.acquire()
        number = len(self._sent) + 1
        sending = self._sends.submit(self._upload_part, number, self._start, self.size - self._start)
        sending.add_done_callback(lambda _: self._slots.release())
        self._sent.append(sending)

    def _upload_part(self, number: int, offset: int, size: int) -> tuple[int, str]:
        try:
            if self._stopped.is_set():
                raise InterruptedError("publish stopped")
            return number, self._store.upload_part(self._key, self._upload, number, self._part_path(number), offset, size)
        finally:
            with contextlib.suppress(OSError):  # removed already, by a publish that stopped
                os.remove(self._part_path(number))

    def finish(self) -> list[tuple[int, str]]:
        """Sends the last part; (number, tag) of every part, once all are sent."""
        if self._file is not None:
            self._send()
        return [sending.result() for sending in self._sent]

    def stop(self):
        """Sends no more parts: a write fails from now on."""
        self._stopped.set()
        self._sends.shutdown(wait=False, cancel_futures=True)

    def discard(self):
        """Removes every part file still there: the writer's, and any not yet sent."""
        if self._file is not None:
            self._file.close()
        for name in os.listdir(self._directory):
            if name.startswith(f"{self._name}-"):
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(self._directory, name))


def _send_tarball(root: str, parts: _Parts, progress: Progress) -> tuple[str, list[tuple[int, str]]]:
    try:
        sha256 = write_tarball(root, parts, progress)
        return sha256, parts.finish()
    except BaseException:
        parts.stop()
        parts.discard()
        raise
    finally:
        parts.ended.set()


def run_with_stores(function, *arguments):
    """FUNCTION(*ARGUMENTS), a trio function, run with the stores' asyncio loop open (as the daemon runs)."""
    async def main():
        async with asyncio_loop():
            return await function(*arguments)
    try:
        return trio.run(main)
    except BaseExceptionGroup as group:  # trio-asyncio's nursery wraps what FUNCTION raised
        error = group
        while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
            error = error.exceptions[0]
        raise error from None


async def publish_object(root: str, target: PublishTarget, progress: Progress) -> tuple[str | None, str]:
    """The object store publisher: the tarball of ROOT as TARGET's key with its SHA-256 in the metadata;
    (its version id where the bucket keeps versions, the SHA-256)."""
    os.makedirs(target.staging.dir, exist_ok=True)
    store = TrioStore(Stores(target.staging.dir, target.retries).store_for(target.source, read_only=False))
    await store.open()
    try:
        temporary = f"{target.key}.{uuid.uuid4().hex}.part"
        upload = await store.start_upload(temporary)
        parallel = 1 if store.parts_in_order else target.staging.parallel_parts
        parts = _Parts(store.store, temporary, upload, target.staging.dir,
                       target.staging.part_size or store.part_size, parallel)
        try:
            sha256, sent = await trio.to_thread.run_sync(_send_tarball, root, parts, progress, abandon_on_cancel=True)
            await store.complete_upload(temporary, upload, sent, parts.size)
        except BaseException:  # an interrupt too (KeyboardInterrupt)
            parts.stop()
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(parts.ended.wait)
                with contextlib.suppress(Exception):
                    await store.abort_upload(temporary, upload)
            raise
        try:
            await store.copy(temporary, target.key, {CHECKSUM_KEY: sha256})
        finally:
            with trio.CancelScope(shield=True), contextlib.suppress(Exception):
                await store.delete(temporary)
        return await store.version_id(target.key), sha256
    finally:
        with trio.CancelScope(shield=True):
            await store.close()
