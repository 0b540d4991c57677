"""UnixFS blocks as IPFS keeps files: each checked against its CID, then read as a directory, file or symlink node.

A block is DAG-PB (a node: links to other blocks, and UnixFS data saying what the node is) or raw
(file bytes, the leaves of CIDv1 files). The protobuf messages are declared here and compiled at
import by the protobuf library; their schemas are the DAG-PB and UnixFS specifications'.
"""
from dataclasses import dataclass

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from multiformats import CID, multihash

RAW_CODEC = 0x55
DAG_PB_CODEC = 0x70
# UnixFS Data.Type
_RAW, _DIRECTORY, _FILE, _METADATA, _SYMLINK, _HAMT_SHARD = range(6)
FILE, DIRECTORY, SYMLINK = "file", "directory", "symlink"


class BadBlock(ValueError):
    """A block that is not the one its CID names, or not UnixFS."""


@dataclass(frozen=True)
class Link:
    name: str
    cid: CID
    size: int  # the bytes of all blocks below, by the parent's word: a raw leaf's length


@dataclass(frozen=True)
class Node:
    kind: str  # FILE, DIRECTORY or SYMLINK
    data: bytes  # a file node's own bytes (before its children's); a symlink's target
    links: tuple[Link, ...]
    blocksizes: tuple[int, ...]  # a file node's: the bytes under each link
    size: int  # a file's
    mtime_ns: int | None
    shard_fanout: int = 0  # a HAMT-sharded directory's; its links are named by hex prefixes of the entries'

    def weight(self) -> int:
        """About the bytes it takes in memory."""
        return 100 + len(self.data) + 150 * len(self.links)

    def entries(self) -> list[Link]:
        """A plain directory's links; a sharded one's entries in this shard (sub-shards: see `shards`)."""
        if not self.shard_fanout:
            return list(self.links)
        width = _prefix_width(self.shard_fanout)
        return [Link(link.name[width:], link.cid, link.size) for link in self.links if len(link.name) > width]

    def shards(self) -> list[CID]:
        width = _prefix_width(self.shard_fanout) if self.shard_fanout else None
        return [link.cid for link in self.links if len(link.name) == width]

    def pieces(self, start: int, end: int) -> tuple[bytes, list[tuple[CID, int, int]]]:
        """A file node's part of bytes [START, END): its own bytes there, and (child, start, end) of each
        child below, in order, with offsets in the child."""
        pieces = []
        offset = len(self.data)
        for link, size in zip(self.links, self.blocksizes):
            if offset < end and start < offset + size:
                pieces.append((link.cid, max(start - offset, 0), min(end, offset + size) - offset))
            offset += size
        return self.data[start:end], pieces


def _prefix_width(fanout: int) -> int:
    return len(f"{fanout - 1:X}")


def text(cid: CID) -> str:
    """CID as IPFS writes it: CIDv0 in base58, CIDv1 in base32."""
    return str(cid) if cid.version == 0 else cid.encode("base32")


def inline(cid: CID) -> bytes | None:
    """The block an identity CID holds in itself; None for a CID that names a block elsewhere."""
    return bytes(cid.raw_digest) if cid.hashfun.name == "identity" else None


def check(cid: CID, block: bytes) -> bytes:
    """BLOCK, once its hash is CID's."""
    try:
        digest = multihash.digest(block, cid.hashfun)
    except Exception as error:  # multiformats names no common class for a hash it cannot compute
        raise BadBlock(f"cannot check {text(cid)}: {cid.hashfun.name} ({error})") from None
    if bytes(digest) != bytes(cid.digest):
        raise BadBlock(f"block {text(cid)}: the bytes received are not the block the CID names")
    return block


def decode(cid: CID, block: bytes) -> Node:
    if cid.codec.code == RAW_CODEC:
        return Node(FILE, block, (), (), len(block), None)
    if cid.codec.code != DAG_PB_CODEC:
        raise BadBlock(f"block {text(cid)}: {cid.codec.name}, not UnixFS")
    try:
        node = _PBNode.FromString(block)
        unixfs = _Data.FromString(node.Data)
        links = tuple(Link(link.Name.decode(errors="surrogateescape"), CID.decode(link.Hash), link.Tsize)
                      for link in node.Links)
    except Exception as error:  # protobuf's DecodeError, or a link that is no CID
        raise BadBlock(f"block {text(cid)}: not a UnixFS node ({type(error).__name__})") from None
    mtime = (unixfs.mtime.Seconds * 10**9 + unixfs.mtime.FractionalNanoseconds) if unixfs.HasField("mtime") else None
    if unixfs.Type in (_FILE, _RAW):
        return Node(FILE, unixfs.Data, links, tuple(unixfs.blocksizes), unixfs.filesize, mtime)
    if unixfs.Type == _DIRECTORY:
        return Node(DIRECTORY, b"", links, (), 0, mtime)
    if unixfs.Type == _HAMT_SHARD:
        if unixfs.fanout < 2:
            raise BadBlock(f"block {text(cid)}: a sharded directory with fanout {unixfs.fanout}")
        return Node(DIRECTORY, b"", links, (), 0, mtime, unixfs.fanout)
    if unixfs.Type == _SYMLINK:
        return Node(SYMLINK, unixfs.Data, (), (), len(unixfs.Data), mtime)
    raise BadBlock(f"block {text(cid)}: UnixFS type {unixfs.Type}, not a file, directory or symlink")


def _compile():
    """(PBNode, Data): the DAG-PB node and the UnixFS data it carries, as protobuf message classes."""
    proto = descriptor_pb2.FileDescriptorProto(name="fsmount/unixfs.proto", package="fsmount.unixfs", syntax="proto2")
    field = descriptor_pb2.FieldDescriptorProto
    optional, repeated = field.LABEL_OPTIONAL, field.LABEL_REPEATED

    def message(name: str, *fields):
        declared = proto.message_type.add(name=name)
        for number, label, kind, field_name, *message_type in fields:
            declared.field.add(name=field_name, number=number, label=label, type=kind,
                               type_name=f".fsmount.unixfs.{message_type[0]}" if message_type else None)

    message("PBLink", (1, optional, field.TYPE_BYTES, "Hash"), (2, optional, field.TYPE_BYTES, "Name"),
            (3, optional, field.TYPE_UINT64, "Tsize"))
    message("PBNode", (2, repeated, field.TYPE_MESSAGE, "Links", "PBLink"), (1, optional, field.TYPE_BYTES, "Data"))
    message("UnixTime", (1, optional, field.TYPE_INT64, "Seconds"),
            (2, optional, field.TYPE_FIXED32, "FractionalNanoseconds"))
    message("Data", (1, optional, field.TYPE_INT32, "Type"), (2, optional, field.TYPE_BYTES, "Data"),
            (3, optional, field.TYPE_UINT64, "filesize"), (4, repeated, field.TYPE_UINT64, "blocksizes"),
            (5, optional, field.TYPE_UINT64, "hashType"), (6, optional, field.TYPE_UINT64, "fanout"),
            (7, optional, field.TYPE_UINT32, "mode"), (8, optional, field.TYPE_MESSAGE, "mtime", "UnixTime"))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return tuple(message_factory.GetMessageClass(pool.FindMessageTypeByName(f"fsmount.unixfs.{name}"))
                 for name in ("PBNode", "Data"))


_PBNode, _Data = _compile()
