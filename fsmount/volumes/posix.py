"""POSIX attributes in object metadata, in the keys and forms s3fs writes (rclone's `mtime` and octal mode read too).

`mode` is the whole st_mode in decimal (its type says file, directory or symlink), `uid` and `gid`
decimal ids, `mtime` seconds with up to nine decimals, `xattr` the extended attributes as s3fs
keeps them: a JSON object of name to base64 value, percent-encoded.
"""
import base64
import contextlib
import errno
import json
import stat
import urllib.parse
from dataclasses import dataclass

MTIME, MODE, UID, GID, XATTR = "mtime", "mode", "uid", "gid", "xattr"
POSIX_KEYS = (MTIME, MODE, UID, GID, XATTR)
USER_XATTRS = "user."  # the namespace of extended attributes kept in objects
# fsmount's own, read-only: the object's version, its source URL, its content type, and its bytes in the block cache
OWN_XATTRS = ("user.fsmount.etag", "user.fsmount.url", "user.fsmount.content_type", "user.fsmount.cached")
STAGED_VERSION = "staged:"  # begins the version of a file staged and not uploaded yet
METADATA_MOST = 2048  # bytes of keys and values: S3's bound on user metadata (Azure's and GCS's are 8 KiB)


def format_mtime(mtime_ns: int) -> str:
    return f"{mtime_ns // 10**9}.{mtime_ns % 10**9:09d}"


def parse_mtime(text: str) -> int:
    """Seconds as `format_mtime` writes them, or as rclone and s3fs do: a decimal number."""
    seconds, _, fraction = text.strip().partition(".")
    return int(seconds) * 10**9 + int((fraction + "000000000")[:9])


def format_mode(permissions: int, kind: int = stat.S_IFREG) -> str:
    """A mode as s3fs keeps it in metadata: its st_mode, type KIND, in decimal."""
    return str(kind | permissions & 0o7777)


def parse_mode(text: str) -> int:
    """The st_mode of a mode as `format_mode` writes it, or in octal from a leading 0 (rclone's, which
    may name no type: S_IFMT 0)."""
    text = text.strip()
    return int(text, 8) if text.startswith("0") else int(text)


def parse_id(text: str | None, default):
    """A uid or gid from metadata; DEFAULT where there is none or it is not a number."""
    if text is not None:
        with contextlib.suppress(ValueError):
            return int(text)
    return default


def encode_xattrs(xattrs: dict[str, str]) -> str:
    """XATTRS (name -> base64 value) as one metadata value."""
    return urllib.parse.quote(json.dumps(xattrs, separators=(",", ":")), safe="")


def decode_xattrs(text: str) -> dict[str, str]:
    """The name -> base64 value of a metadata value `encode_xattrs` (or s3fs) wrote; ValueError if it is not one."""
    xattrs = json.loads(urllib.parse.unquote(text))
    if not isinstance(xattrs, dict) or not all(isinstance(value, str) for value in xattrs.values()):
        raise ValueError("not a JSON object of strings")
    return xattrs


def encode_value(value: bytes) -> str:
    return base64.b64encode(value).decode()


def decode_value(text: str) -> bytes:
    return base64.b64decode(text)


def posix_metadata(mtime_ns: int, permissions: int, uid: int | None, gid: int | None, xattrs: dict[str, str],
                   kind: int = stat.S_IFREG) -> dict[str, str]:
    """The metadata an object of type KIND carries its attributes in; an owner of None (the volume's) is left out."""
    metadata = {MTIME: format_mtime(mtime_ns), MODE: format_mode(permissions, kind)}
    if uid is not None:
        metadata[UID] = str(uid)
    if gid is not None:
        metadata[GID] = str(gid)
    if xattrs:
        metadata[XATTR] = encode_xattrs(xattrs)
    return metadata


def xattrs_in(kept: dict[str, str]) -> dict[str, str]:
    """The extended attributes (name -> base64 value) KEPT metadata holds; none where they do not read."""
    with contextlib.suppress(ValueError):
        return decode_xattrs(kept.get(XATTR, "{}"))
    return {}


def metadata_size(metadata: dict[str, str]) -> int:
    return sum(len(name.encode()) + len(value.encode()) for name, value in metadata.items())


def kept_posix(metadata) -> dict[str, str]:
    """What of METADATA says POSIX attributes (S3 listings carry none of it)."""
    if not metadata:
        return {}
    return {name: metadata[name] for name in POSIX_KEYS if name in metadata}


@dataclass(frozen=True)
class Posix:
    """Attributes to set; None leaves one as it is."""
    mtime_ns: int | None = None
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    xattrs: dict[str, str] | None = None

    def metadata_over(self, metadata: dict[str, str]) -> dict[str, str]:
        """METADATA (as `posix_metadata` makes it) with these changes made."""
        changed = dict(metadata)
        kind_bits = stat.S_IFMT(int(metadata[MODE]))
        for name, value in ((MTIME, None if self.mtime_ns is None else format_mtime(self.mtime_ns)),
                            (MODE, None if self.mode is None else format_mode(self.mode, kind_bits)),
                            (UID, None if self.uid is None else str(self.uid)),
                            (GID, None if self.gid is None else str(self.gid))):
            if value is not None:
                changed[name] = value
        if self.xattrs is not None:
            changed.pop(XATTR, None)
            if self.xattrs:
                changed[XATTR] = encode_xattrs(self.xattrs)
        return changed


def check_size(metadata: dict[str, str]):
    if metadata_size(metadata) > METADATA_MOST:
        raise OSError(errno.ENOSPC, f"an object's metadata holds at most {METADATA_MOST} bytes")
