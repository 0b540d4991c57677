"""ObjectFile: an object volume's read handle, which follows streams of reads and fetches ahead of them; and PageFeed."""
import dataclasses
import typing

import trio

from fsmount.cache.blocks import BlockCache
from fsmount.stores.base import ObjectInfo
from fsmount.volumes.base import Attrs, FileHandle, Path
from fsmount.volumes.prefetch import Piece

# A handle that seeks fetches this much around a read, not a whole block: one short GET per random read.
RANDOM_CHUNK = 128 * 1024
_RUN_PIECE = 2**20  # what a stream fetches at a time, from a seek with a larger read, until it has read a block
_STREAMS = 64  # streams of reads a handle follows at once
SEEKS_AT_RANDOM = 16  # a handle with this many more small reads from seeks than streams they started is read at random


class PageFeed:
    """The blocks of one version of an object on their way into the kernel's pages of the file."""

    def __init__(self, version: str, store_pages):
        self.version = version
        self.stopped = False
        self._store_pages = store_pages
        self._storing = trio.Lock()

    async def store(self, offset: int, data: bytes):
        async with self._storing:
            if not self.stopped and not await self._store_pages(offset, data):
                self.stopped = True

    async def stop(self):
        self.stopped = True
        async with self._storing:
            pass


class ReadVolume(typing.Protocol):
    """What a read handle uses of its volume (an ObjectVolume, fsmount/volumes/objects.py, which makes it)."""
    cache: BlockCache
    read_ahead_blocks: int

    def piece(self, path: Path, info: ObjectInfo, index: int, size: int, tag: str = "") -> Piece: ...

    def read_whole(self, path: Path, info: ObjectInfo): ...

    def fill_whole(self, path: Path, info: ObjectInfo, store_pages=None): ...

    def fill_ahead(self, name: str, fetch, size: int, origin: tuple[str, str]) -> bool: ...

    def attrs(self, info: ObjectInfo | None, path: Path) -> Attrs: ...


@dataclasses.dataclass(eq=False)
class Stream:
    """Reads of a handle that follow one another, from its start or from a seek: what they fetch."""
    piece_size: int | None  # of the pieces its reads fetch where not cached whole; None: whole blocks, read ahead
    read: int = 0  # bytes, so far
    window: int = 1  # blocks fetched ahead of it, doubling with each read up to the volume's read-ahead
    ahead_until: int = 0  # the last block read-ahead has started, or found cached
    alone: bool = False  # a small read from a seek that no read went on with yet


class ObjectFile(FileHandle):
    """A handle follows streams of reads, many at once: pyarrow reads every column chunk of a Parquet file
    it wants at once, from threads of its own, each from a seek on. A read that follows none starts a
    stream of its own, which fetches pieces as large as its reads (a small one RANDOM_CHUNK) until it has
    read a block's worth, then whole blocks with read-ahead. Once SEEKS_AT_RANDOM more small reads started
    a stream than went on with one, the handle reads at random, and its object is filled whole."""

    def __init__(self, volume: ReadVolume, path: Path, info: ObjectInfo, keep_cache: bool):
        self.volume = volume
        self.path = path
        self.info = info
        self.keep_cache = keep_cache
        self._streams: dict[int, Stream] = {0: Stream(None)}  # by the offset each expects next, the latest last
        self._seeks_alone = 0
        self._filling_whole = False
        self._read_from_start = False
        self._read_whole = False
        self._first_read_done = False

    def _reader(self, index: int, size: int, tag: str = ""):
        return self.volume.piece(self.path, self.info, index, size, tag)

    async def read(self, offset: int, size: int) -> bytes | memoryview:
        size = min(size, self.info.size - offset)
        if size <= 0:
            return b""
        cache = self.volume.cache
        stream = self._follow(offset, size)
        self._read_from_start |= offset == 0
        if self._read_from_start and offset + size == self.info.size and not self._read_whole:
            self._read_whole = True
            self.volume.read_whole(self.path, self.info)
        parts = []
        first_read = not self._first_read_done
        end = offset + size
        while offset < end:
            index, inner = divmod(offset, cache.block_size)
            piece = self._reader(index, cache.block_size)
            length = min(cache.block_size - inner, end - offset)
            if stream.piece_size is not None and not cache.contains(piece.name):
                index, inner = divmod(offset, stream.piece_size)
                piece = self._reader(index, stream.piece_size, tag=f"piece{stream.piece_size}")
                length = min(stream.piece_size - inner, end - offset)
            parts.append(await cache.read(piece.name, inner, length, piece.fetch, size=piece.size, origin=piece.origin))
            offset += length
        if first_read and not self._first_read_done:
            self._first_read_done = True
            if stream.piece_size is None:
                self._fetch_ahead(stream, end - 1)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _follow(self, offset: int, size: int) -> Stream:
        """The stream a read of SIZE bytes at OFFSET goes on with, or the one it starts."""
        block_size = self.volume.cache.block_size
        stream = self._streams.pop(offset, None)
        if stream is None:
            piece_size = RANDOM_CHUNK if size <= RANDOM_CHUNK else _RUN_PIECE
            stream = Stream(piece_size if piece_size < block_size else None, ahead_until=offset // block_size,
                             alone=size <= RANDOM_CHUNK)
            if len(self._streams) >= _STREAMS:
                del self._streams[next(iter(self._streams))]
            self._seeks_alone += stream.alone
            if self._seeks_alone >= SEEKS_AT_RANDOM:
                self._fill_whole()
        else:
            if stream.alone:
                stream.alone = False
                self._seeks_alone -= 1
            if stream.piece_size is None and self._first_read_done:  # the first read's block comes alone
                self._fetch_ahead(stream, offset)
        stream.read += size
        if stream.piece_size is not None and stream.read >= block_size:
            stream.piece_size = None
        self._streams[offset + size] = stream
        return stream

    def _fill_whole(self):
        if not self._filling_whole:
            self._filling_whole = True
            self.volume.fill_whole(self.path, self.info, self.store_pages)

    def _fetch_ahead(self, stream: Stream, offset: int):
        """Starts fetching STREAM's window of blocks after the one at OFFSET, and widens the window."""
        block_size = self.volume.cache.block_size
        current = offset // block_size
        last_block = (self.info.size - 1) // block_size
        for index in range(max(current, stream.ahead_until) + 1, min(current + stream.window, last_block) + 1):
            if not self.volume.fill_ahead(*self._reader(index, block_size)):
                break
            stream.ahead_until = index
        stream.window = min(stream.window * 2, self.volume.read_ahead_blocks)

    async def getattr(self) -> Attrs:
        return self.volume.attrs(self.info, self.path)

    async def release(self):
        pass
