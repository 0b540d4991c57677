"""UnixFS decoding and block checks, on blocks built here (the mounted tests use a real node's)."""
import pytest
from multiformats import CID, multihash

from fsmount.stores import unixfs

pytestmark = pytest.mark.unit


def cid_of(block: bytes, codec: str = "dag-pb") -> CID:
    return CID("base32", 1, codec, multihash.digest(block, "sha2-256"))


def node_block(kind: int, data: bytes = b"", links=(), **fields) -> bytes:
    """A DAG-PB block: LINKS of (name, CID, size) over UnixFS data of type KIND."""
    unixfs_data = unixfs._Data(Type=kind, Data=data, **fields)
    node = unixfs._PBNode(Data=unixfs_data.SerializeToString())
    for name, cid, size in links:
        node.Links.add(Hash=bytes(cid), Name=name.encode(), Tsize=size)
    return node.SerializeToString()


def test_a_block_passes_only_with_the_bytes_its_cid_names():
    block = node_block(1)
    assert unixfs.check(cid_of(block), block) == block
    with pytest.raises(unixfs.BadBlock, match="not the block the CID names"):
        unixfs.check(cid_of(block), block + b"\0")


def test_an_identity_cid_holds_its_block():
    block = b"tiny file"
    cid = CID("base32", 1, "raw", multihash.wrap(block, "identity"))
    assert unixfs.inline(cid) == block
    assert unixfs.inline(cid_of(block, "raw")) is None


def test_a_file_node_says_which_children_hold_a_range():
    leaves = [cid_of(bytes([n]) * 10, "raw") for n in range(3)]
    block = node_block(2, data=b"head", links=[("", leaf, 10) for leaf in leaves], filesize=34, blocksizes=[10, 10, 10])
    node = unixfs.decode(cid_of(block), block)
    assert (node.kind, node.size) == (unixfs.FILE, 34)
    assert node.pieces(0, 4) == (b"head", [])
    assert node.pieces(2, 15) == (b"ad", [(leaves[0], 0, 10), (leaves[1], 0, 1)])
    assert node.pieces(23, 34) == (b"", [(leaves[1], 9, 10), (leaves[2], 0, 10)])
    assert node.pieces(34, 40) == (b"", [])


def test_a_sharded_directory_names_entries_and_sub_shards_by_prefix():
    file, shard = cid_of(b"x", "raw"), cid_of(node_block(5, fanout=256))
    block = node_block(5, links=[("0Aname.txt", file, 1), ("FF", shard, 9)], fanout=256)
    node = unixfs.decode(cid_of(block), block)
    assert node.kind == unixfs.DIRECTORY
    assert [(link.name, link.cid) for link in node.entries()] == [("name.txt", file)]
    assert node.shards() == [shard]


def test_symlinks_times_and_what_is_not_unixfs():
    block = node_block(4, data=b"../target", mtime={"Seconds": 1_700_000_000, "FractionalNanoseconds": 5})
    node = unixfs.decode(cid_of(block), block)
    assert (node.kind, node.data, node.mtime_ns) == (unixfs.SYMLINK, b"../target", 1_700_000_000 * 10**9 + 5)
    untimed = node_block(2, data=b"x", filesize=1)
    assert unixfs.decode(cid_of(untimed), untimed).mtime_ns is None
    with pytest.raises(unixfs.BadBlock, match="UnixFS type 3"):
        metadata = node_block(3)
        unixfs.decode(cid_of(metadata), metadata)
    with pytest.raises(unixfs.BadBlock, match="not a UnixFS node"):
        unixfs.decode(cid_of(b"\xff\xff"), b"\xff\xff")
    with pytest.raises(unixfs.BadBlock, match="dag-cbor, not UnixFS"):
        unixfs.decode(cid_of(b"\xa0", "dag-cbor"), b"\xa0")
