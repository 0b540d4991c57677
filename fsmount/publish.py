"""`fsmount publish`: a directory published as Bacalhau's publishers do, as a gzipped tarball in S3, Azure Blob, GCS or a local file.

(IPFS, the other publisher, is fsmount.publish_ipfs.) The tarball is made as the tree is read and sent as it is
made, so neither memory nor disk ever holds it whole. Nothing partial is ever named as a finished result: a
local tarball is written as NAME.part and renamed once whole; an object store's goes in parts to a multipart
upload of a temporary key (which no one sees until it is completed, and which is aborted on any failure or
interrupt), then is copied to its key with its SHA-256 in the metadata: S3 and GCS take metadata only when an
upload begins, before the digest is known.
"""
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
from fsmount.stores.multipart import PartUpload
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


class _PartFiles:
    """The stream a tarball is written into, from a worker thread, on its way to UPLOAD, the PartUpload of KEY:
    its bytes are cut into parts of PART_SIZE, each kept in a file under DIRECTORY until it is sent. A whole part is
    handed to the upload on trio's side; that waits while PARALLEL are on their way, so the disk holds at most
    PARALLEL + 1 parts."""

    def __init__(self, store: TrioStore, key: str, directory: str, part_size: int, parallel: int,
                 nursery: trio.Nursery):
        self._directory, self._part_size = directory, part_size
        self._name = f"publish-{uuid.uuid4().hex}"
        self.upload = PartUpload(store, key, part_size, parallel, nursery, self._part_path, ended=self._remove)
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
                self._file = open(self._part_path(self.size // self._part_size + 1), "wb")
                # The part's bytes at their offset in the tarball, where `Store.upload_part` reads them (and GCS
                # names them): before them, a hole that takes no disk.
                self._file.seek(self.size)
                self._start = self.size
            piece = view[:self._start + self._part_size - self.size]
            self._file.write(piece)
            self.size += len(piece)
            view = view[len(piece):]
            if self.size - self._start == self._part_size:
                self.close()
                trio.from_thread.run(self._hand_over, self.size)

    def _part_path(self, number: int) -> str:
        return os.path.join(self._directory, f"{self._name}-{number}")

    async def _hand_over(self, size: int):
        await self.upload.room()
        self.upload.grown(size)

    def _remove(self, number: int, error: OSError | None):
        with contextlib.suppress(OSError):  # removed already, by a publish that stopped
            os.remove(self._part_path(number))

    def close(self):
        """Closes the part being written: the tarball is whole, and `upload.finish` sends that part."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def stop(self):
        """A write fails from now on."""
        self._stopped.set()

    def discard(self):
        """Removes every part file still there: the writer's, and any not yet sent."""
        self.close()
        for name in os.listdir(self._directory):
            if name.startswith(f"{self._name}-"):
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(self._directory, name))


def _write_parts(root: str, parts: _PartFiles, progress: Progress) -> str:
    try:
        sha256 = write_tarball(root, parts, progress)
        parts.close()
        return sha256
    except BaseException:
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
        async with trio.open_nursery() as nursery:
            parts = _PartFiles(store, temporary, target.staging.dir, target.staging.part_size or store.part_size,
                               target.staging.parallel_parts, nursery)
            try:
                sha256 = await trio.to_thread.run_sync(_write_parts, root, parts, progress, abandon_on_cancel=True)
                await parts.upload.finish(parts.size)
            except BaseException:  # an interrupt too (KeyboardInterrupt); the upload is aborted
                parts.stop()
                parts.upload.abandon()
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(parts.ended.wait)
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
