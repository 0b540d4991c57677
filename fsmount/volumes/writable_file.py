"""WritableFile: a handle of an rw object volume's file; it reads the staged copy once there is one, else through the cache."""
from fsmount.staging.area import StagedFile
from fsmount.volumes.base import Attrs, FileHandle, Path
from fsmount.volumes.staged_files import StagedFiles


class WritableFile(FileHandle):
    def __init__(self, files: StagedFiles, path: Path, reader: FileHandle | None, staged: StagedFile | None,
                 writing: bool):
        """FILES: its volume's staged files."""
        self.files = files
        self.path = path
        self.reader = reader
        self.staged = staged
        self.writing = writing
        self.changed = False  # written or truncated through this handle since its last close or fsync
        self.unlinked = False
        self.keep_cache = reader.keep_cache if reader is not None else False
        if staged is not None:
            staged.handles += 1

    async def _staged(self) -> StagedFile:
        if self.staged is None:
            staged = await self.files.stage(self.path, self.reader.info, attached=not self.unlinked)
            if self.staged is None:
                self.staged = staged
                staged.handles += 1
                self.files.forget_writer(self)
        return self.staged

    async def read(self, offset: int, size: int) -> bytes | memoryview:
        if self.staged is None:
            return await self.reader.read(offset, size)
        return self.staged.read(offset, size)

    async def write(self, offset: int, data: bytes) -> int:
        staged = await self._staged()
        written = staged.write(offset, data)
        self.changed = True
        self.files.uploads.wrote(staged, offset)
        return written

    async def truncate(self, size: int):
        staged = await self._staged()
        staged.truncate(size)
        self.changed = True
        self.files.uploads.break_stream(staged)

    async def flush(self):
        """Asks for the upload of what this handle changed (write-back may hold it back). A shell's
        `> file` closes a duplicate of the descriptor before anything is written: that close asks
        for nothing, and the file goes up after the next close (or, only created or truncated,
        after its last handle is released)."""
        if self.changed:
            self.changed = False
            await self.files.uploads.closed(self.staged)

    async def fsync(self, datasync: bool):
        """Uploads the file now, whichever handle changed it, and waits: EIO when the store refuses."""
        if self.staged is not None:
            self.changed = False
            await self.files.uploads.upload(self.staged)

    async def getattr(self) -> Attrs:
        if self.staged is None:
            return await self.reader.getattr()
        return self.files.attrs_of(self.staged, self.path)

    async def release(self):
        if self.staged is not None:
            await self.files.handle_closed(self.staged)
        else:
            self.files.forget_writer(self)
