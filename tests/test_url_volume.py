"""URL volumes through a real mount, against a local web server: a file per URL, ranges or a whole download,
redirects, the block cache across remounts, and read-only."""
import errno
import hashlib
import os
import ssl
import time

import pytest
import trustme

from conftest import wait_for, write_config
from servers import WebServer
from test_object_volume import BLOCK, drop_page_cache

pytestmark = pytest.mark.mount

BIG = os.urandom(5 * BLOCK + 12345)
FILES = {"/data/big.bin": BIG, "/data/small.csv": b"x,y\n1,2\n", "/moved/notes.txt": b"followed a redirect\n"}


def url_config(workspace, sources: str, extra: str = "", ttl: str = "60s") -> str:
    return write_config(workspace, f"""
        cache {{ dir: "{workspace}/cache", block_size: 1MiB, read_ahead: 4MiB, metadata_ttl: {ttl} }}
        volumes {{ web {{ source: {sources}, {extra} }} }}
    """)


@pytest.fixture(params=[True, False], ids=["ranges", "no-ranges"])
def web(request):
    server = WebServer(dict(FILES), ranges=request.param)
    yield server
    server.close()


def mount_files(workspace, mount, web):
    sources = (f'["{web.url}/data/big.bin", "{web.url}/data/small.csv", '
               f'{{ url: "{web.url}/redirect/moved/notes.txt", name: "redirected.txt" }}]')
    return mount(url_config(workspace, sources), workspace / "mnt"), workspace / "mnt" / "web"


def test_a_list_of_urls_is_a_directory_of_their_files(workspace, mount, web):
    _, root = mount_files(workspace, mount, web)
    assert sorted(os.listdir(root)) == ["big.bin", "redirected.txt", "small.csv"]
    assert os.stat(root / "big.bin").st_size == len(BIG)
    assert hashlib.sha256((root / "big.bin").read_bytes()).digest() == hashlib.sha256(BIG).digest()
    assert (root / "small.csv").read_bytes() == b"x,y\n1,2\n"
    assert (root / "redirected.txt").read_bytes() == b"followed a redirect\n"
    drop_page_cache()
    with open(root / "big.bin", "rb", buffering=0) as stream:
        for offset, size in ((BLOCK - 1, 2), (2 * BLOCK - 100, BLOCK + 200), (len(BIG) - 10, 100)):
            assert os.pread(stream.fileno(), size, offset) == BIG[offset:offset + size]
    if not web.ranges:
        assert web.gets["/data/big.bin"] == 1  # downloaded whole, once


def test_url_volumes_are_read_only(workspace, mount, web):
    _, root = mount_files(workspace, mount, web)
    for attempt in (lambda: open(root / "new", "w"), lambda: open(root / "small.csv", "r+"),
                    lambda: os.unlink(root / "small.csv"), lambda: os.mkdir(root / "d")):
        with pytest.raises(OSError) as error:
            attempt()
        assert error.value.errno == errno.EROFS


def test_cached_blocks_are_read_after_a_remount_with_no_request(workspace, mount, web):
    daemon, root = mount_files(workspace, mount, web)
    assert (root / "big.bin").read_bytes() == BIG
    daemon.stop()
    gets = web.gets["/data/big.bin"]
    mount_files(workspace, mount, web)
    drop_page_cache()
    assert (root / "big.bin").read_bytes() == BIG
    assert web.gets["/data/big.bin"] == gets


def test_one_url_is_a_volume_of_one_file_named_as_configured(workspace, mount):
    web = WebServer({"/download": b"model weights"}, head=False)  # the size comes from a GET of one byte
    try:
        mount(url_config(workspace, f'"{web.url}/download?id=3"', 'name: "model.bin"'), workspace / "mnt")
        assert os.listdir(workspace / "mnt" / "web") == ["model.bin"]
        assert (workspace / "mnt" / "web" / "model.bin").read_bytes() == b"model weights"
    finally:
        web.close()


def test_a_changed_file_is_seen_after_the_ttl(workspace, mount, web):
    mount(url_config(workspace, f'"{web.url}/data/small.csv"', ttl="1s"), workspace / "mnt")
    path = workspace / "mnt" / "web" / "small.csv"
    looked_up = time.monotonic()
    assert path.read_bytes() == b"x,y\n1,2\n"
    gets = web.gets["/data/small.csv"]
    web.files["/data/small.csv"] = b"x,y\n3,4\n5,6\n"
    checked_at = time.monotonic()
    stale = path.read_bytes()
    if checked_at - looked_up < 1:  # the TTL: until then, the size and bytes it knows, from its cache
        assert (stale, web.gets["/data/small.csv"]) == (b"x,y\n1,2\n", gets)
    wait_for(lambda: path.read_bytes() == b"x,y\n3,4\n5,6\n", 5, "the new bytes, after the TTL")


@pytest.mark.parametrize("ranges", [True, False], ids=["ranges", "no-ranges"])
@pytest.mark.expect_log(
    r"WARNING fsmount\.fs\.operations: lookup failed: \[Errno 5\] HEAD small\.csv: \[SSL: CERTIFICATE_VERIFY_FAILED\] certificate verify failed: ",
)
def test_an_https_server_of_a_private_ca_is_read_with_verify_naming_the_ca(workspace, mount, tmp_path, ranges):
    """The CA file reaches every request: the HEAD, the ranged GETs and the whole download of a server
    without ranges. A volume that does not name it fails with EIO and a log line saying why."""
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    server = WebServer(dict(FILES), ranges=ranges, tls=context)
    try:
        files = f'["{server.url}/data/big.bin", "{server.url}/data/small.csv"]'
        daemon = mount(write_config(workspace, f"""
            cache {{ dir: "{workspace}/cache", block_size: 1MiB }}
            volumes {{
                trusted {{ source: {files}, verify: "{tmp_path}/ca.pem" }}
                untrusted {{ source: {files} }}
            }}
        """), workspace / "mnt")
        trusted, untrusted = workspace / "mnt" / "trusted", workspace / "mnt" / "untrusted"
        assert (trusted / "big.bin").read_bytes() == BIG and (trusted / "small.csv").read_bytes() == FILES["/data/small.csv"]
        with pytest.raises(OSError) as error:
            (untrusted / "small.csv").read_bytes()
        assert error.value.errno == errno.EIO
        assert "CERTIFICATE_VERIFY_FAILED" in daemon.log() or "certificate verify failed" in daemon.log()
    finally:
        server.close()
