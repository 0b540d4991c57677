"""IPFS volumes through a real mount, against a local Helia node (scripts/ipfs_gateway.mjs): the tree as it was
added, ranges across block boundaries, every block checked against its CID, read-only, a node that is down,
and the cache across remounts."""
import errno
import os
import subprocess

import pytest
from multiformats import CID, multihash

from conftest import write_config
from servers import IpfsNode, WebServer
from test_object_volume import BLOCK, drop_page_cache

pytestmark = pytest.mark.mount

CHUNK = 64 * 1024
CHILDREN = 4  # links per file node: a file of 20 chunks has two levels of nodes above its leaves
BIG = os.urandom(20 * CHUNK + 777)
SHARDED = 60  # entries of many/, above the threshold the node shards a directory at
IMPORTS = {"cidv1": ["--chunk-size", str(CHUNK), "--max-children", str(CHILDREN), "--shard-split-threshold", "1000"],
           "cidv0": ["--chunk-size", str(CHUNK), "--max-children", str(CHILDREN), "--shard-split-threshold", "1000",
                     "--cid-version", "0", "--raw-leaves", "false"]}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """The directory the node adds: nested directories, an empty one, an empty file, a file of many blocks,
    a symlink and a directory large enough to be sharded."""
    root = tmp_path_factory.mktemp("ipfs-source")
    (root / "data" / "nested").mkdir(parents=True)
    (root / "void").mkdir()
    (root / "many").mkdir()
    (root / "data" / "big.bin").write_bytes(BIG)
    (root / "hello.txt").write_text("hello from ipfs\n")
    (root / "data" / "empty").write_bytes(b"")
    (root / "data" / "nested" / "notes.md").write_text("# notes\n")
    for number in range(SHARDED):
        (root / "many" / f"file-{number:03}").write_text(f"{number}\n")
    os.symlink("../hello.txt", root / "data" / "link")
    for path in sorted(root.rglob("*")):
        os.utime(path, (1_700_000_000, 1_700_000_000 + len(path.name)), follow_symlinks=False)
    return root


@pytest.fixture(scope="module", params=list(IMPORTS))
def node(request, source, tmp_path_factory):
    started = IpfsNode(tmp_path_factory.mktemp("ipfs"), source, *IMPORTS[request.param])
    started.keeps_times = request.param == "cidv1"  # see scripts/ipfs_gateway.mjs
    yield started
    started.stop()


def ipfs_config(workspace, node, reach: str = "gateway", path: str = "", retries: str = "") -> str:
    where = f'api: "/ip4/127.0.0.1/tcp/{node.port}"' if reach == "api" else f'gateway: "{node.url}"'
    return write_config(workspace, f"""
        cache {{ dir: "{workspace}/cache", block_size: 1MiB, read_ahead: 4MiB }}
        retries {{ {retries} }}
        volumes {{ ipfs {{ source: "ipfs://{node.root}{path}", {where} }} }}
    """)


def long_listing(root, times: bool = True) -> list[tuple]:
    """`ls -lR` of ROOT as a user compares two trees: each entry's type, name, and (but for directories,
    whose sizes and times are the file system's own) size, time (unless not TIMES) and symlink target."""
    output = subprocess.run(["ls", "-lR", "--time-style=+%s", str(root)], capture_output=True, text=True,
                            check=True).stdout
    entries = []
    for line in output.replace(str(root), "").splitlines():
        fields = line.split(maxsplit=6)
        if len(fields) < 7:  # "total N", a directory's heading, a blank line
            entries.append(line if line.endswith(":") else None)
            continue
        mode, _, _, _, size, mtime, name = fields
        entries.append((mode[0], name) if mode[0] == "d" else (mode[0], size, mtime if times else None, name))
    return [entry for entry in entries if entry is not None]


@pytest.mark.parametrize("reach", ["gateway", "api"])
def test_ls_and_cp_of_an_ipfs_tree_match_the_directory_it_was_added_from(workspace, mount, node, source, reach):
    mount(ipfs_config(workspace, node, reach), workspace / "mnt")
    root = workspace / "mnt" / "ipfs"
    assert long_listing(root, node.keeps_times) == long_listing(source, node.keeps_times)
    assert os.readlink(root / "data" / "link") == "../hello.txt"
    assert (root / "data" / "link").read_text() == "hello from ipfs\n"
    assert len(os.listdir(root / "many")) == SHARDED
    subprocess.run(["cp", "-r", str(root), str(workspace / "copy")], check=True)
    subprocess.run(["diff", "-r", "--no-dereference", str(source), str(workspace / "copy")], check=True)


def test_reads_across_block_and_node_boundaries_give_the_files_bytes(workspace, mount, node):
    mount(ipfs_config(workspace, node), workspace / "mnt")
    path = workspace / "mnt" / "ipfs" / "data" / "big.bin"
    drop_page_cache()
    with open(path, "rb", buffering=0) as stream:
        for offset, size in ((CHUNK - 1, 2), (CHILDREN * CHUNK - 3, 10), (CHILDREN**2 * CHUNK - 5, CHUNK + 10),
                             (BLOCK - 7, 14), (0, len(BIG)), (len(BIG) - 100, 1000), (len(BIG), 10)):
            assert os.pread(stream.fileno(), size, offset) == BIG[offset:offset + size], (offset, size)


def test_a_volume_of_a_path_below_the_cid_shows_that_directory_or_file(workspace, mount, node):
    daemon = mount(ipfs_config(workspace, node, path="/data/nested"), workspace / "mnt")
    assert os.listdir(workspace / "mnt" / "ipfs") == ["notes.md"]
    daemon.stop()
    mount(ipfs_config(workspace, node, path="/data/big.bin"), workspace / "mnt")
    assert os.listdir(workspace / "mnt" / "ipfs") == ["big.bin"]
    assert (workspace / "mnt" / "ipfs" / "big.bin").read_bytes() == BIG


def test_opening_one_file_of_a_large_directory_does_not_fetch_its_siblings(workspace, mount, node):
    mount(ipfs_config(workspace, node), workspace / "mnt")
    asked = node.block_requests()
    assert (workspace / "mnt" / "ipfs" / "many" / "file-007").read_text() == "7\n"
    assert node.block_requests() - asked < SHARDED // 4


def test_a_file_is_cached_by_its_cid_whichever_volume_or_path_reads_it(workspace, mount, source, tmp_path):
    fresh = IpfsNode(tmp_path, source, *IMPORTS["cidv1"])
    try:
        config = write_config(workspace, f"""
            cache {{ dir: "{workspace}/cache", block_size: 1MiB }}
            volumes {{
              whole {{ source: "ipfs://{fresh.root}", api: "{fresh.url}" }}
              data {{ source: "ipfs://{fresh.root}/data", gateway: "{fresh.url}" }}
            }}
        """)
        mount(config, workspace / "mnt")
        assert (workspace / "mnt" / "whole" / "data" / "big.bin").read_bytes() == BIG
        leaves = [str(CID("base32", 1, "raw", multihash.digest(BIG[start:start + CHUNK], "sha2-256")))
                  for start in range(0, len(BIG), CHUNK)]
        assert all(fresh.requests(leaf) == 1 for leaf in leaves)
        drop_page_cache()
        assert (workspace / "mnt" / "data" / "big.bin").read_bytes() == BIG
        assert all(fresh.requests(leaf) == 1 for leaf in leaves)
    finally:
        fresh.stop()


def test_ipfs_volumes_are_read_only(workspace, mount, node):
    mount(ipfs_config(workspace, node), workspace / "mnt")
    root = workspace / "mnt" / "ipfs"
    for attempt in (lambda: open(root / "new", "w"), lambda: open(root / "hello.txt", "r+"),
                    lambda: os.unlink(root / "hello.txt"), lambda: os.mkdir(root / "d"),
                    lambda: os.rename(root / "hello.txt", root / "moved")):
        with pytest.raises(OSError) as error:
            attempt()
        assert error.value.errno == errno.EROFS


@pytest.mark.parametrize("reach", ["gateway", "api"])
@pytest.mark.expect_log(
    r"ERROR fsmount\.stores\.ipfs: IPFS http://127\.0\.0\.1:\d+: block \w+: the bytes received are not the block the CID names$",
    r"WARNING fsmount\.fs\.operations: read failed: \[Errno 5\] block \w+: the bytes received are not the block the CID names$",
)
def test_a_block_that_does_not_match_its_cid_is_eio_and_a_log_line(workspace, mount, source, tmp_path, reach):
    second_leaf = CID("base32", 1, "raw", multihash.digest(BIG[CHUNK:2 * CHUNK], "sha2-256"))
    tampering = IpfsNode(tmp_path, source, *IMPORTS["cidv1"], "--tamper", str(second_leaf))
    try:
        daemon = mount(ipfs_config(workspace, tampering, reach), workspace / "mnt")
        root = workspace / "mnt" / "ipfs"
        with pytest.raises(OSError) as error:
            (root / "data" / "big.bin").read_bytes()
        assert error.value.errno == errno.EIO
        assert tampering.requests(str(second_leaf)) >= 1
        assert f"block {second_leaf}: the bytes received are not the block the CID names" in daemon.log()
        assert (root / "hello.txt").read_text() == "hello from ipfs\n"  # the rest of the tree still reads
    finally:
        tampering.stop()


@pytest.mark.expect_log(
    r"WARNING fsmount\.fs\.operations: lookup failed: \[Errno 5\] GET block \w+: NewConnectionError$",
)
def test_a_node_that_is_down_gives_eio_for_what_is_not_cached(workspace, mount, source, tmp_path):
    down = IpfsNode(tmp_path, source, *IMPORTS["cidv1"])
    try:
        mount(ipfs_config(workspace, down, retries="attempts: 3, max_time: 2s"), workspace / "mnt")
        root = workspace / "mnt" / "ipfs"
        assert (root / "hello.txt").read_text() == "hello from ipfs\n"
        down.stop()
        with pytest.raises(OSError) as error:
            (root / "data" / "big.bin").read_bytes()
        assert error.value.errno == errno.EIO
        assert (root / "hello.txt").read_text() == "hello from ipfs\n"  # cached
    finally:
        down.stop()


@pytest.mark.parametrize("answer, logged", [
    ("html", "answered a raw block request for {cid} with None: not a trustless gateway"),
    ("404", "has no block {cid}"),
])
@pytest.mark.expect_log(
    r"WARNING fsmount\.fs\.operations: readdir failed: \[Errno 5\] http://127\.0\.0\.1:\d+ "
    r"(answered a raw block request for \w+ with None: not a trustless gateway|has no block \w+)$",
)
def test_a_gateway_without_the_raw_block_gives_eio_not_unchecked_bytes(workspace, mount, answer, logged):
    cid = CID("base32", 1, "dag-pb", multihash.digest(os.urandom(16), "sha2-256")).encode("base32")
    plain = WebServer({f"/ipfs/{cid}": b"<html>a directory listing</html>"} if answer == "html" else {})
    try:
        config = write_config(workspace, f"""
            cache {{ dir: "{workspace}/cache" }}
            volumes {{ ipfs {{ source: "ipfs://{cid}", gateway: "{plain.url}" }} }}
        """)
        daemon = mount(config, workspace / "mnt")
        with pytest.raises(OSError) as error:
            os.listdir(workspace / "mnt" / "ipfs")
        assert error.value.errno == errno.EIO
        assert logged.format(cid=cid) in daemon.log()
    finally:
        plain.close()


def test_a_remount_reads_cached_blocks_and_listings_without_asking_the_node(workspace, mount, node):
    daemon = mount(ipfs_config(workspace, node), workspace / "mnt")
    listing = long_listing(workspace / "mnt" / "ipfs")
    subprocess.run(["cp", "-r", str(workspace / "mnt" / "ipfs"), str(workspace / "first")], check=True)
    daemon.stop()
    asked = node.block_requests()
    mount(ipfs_config(workspace, node), workspace / "mnt")
    assert long_listing(workspace / "mnt" / "ipfs") == listing
    subprocess.run(["cp", "-r", str(workspace / "mnt" / "ipfs"), str(workspace / "second")], check=True)
    assert node.block_requests() == asked
    subprocess.run(["diff", "-r", "--no-dereference", str(workspace / "first"), str(workspace / "second")], check=True)
