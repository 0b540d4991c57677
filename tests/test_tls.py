"""TLS everywhere through a real mount: an S3 server and an IPFS node behind HTTPS with a CA the test makes, read and
written with `verify` naming that CA (as a path, or as a URL fetched once at start); a certificate the CA does not
vouch for is EIO at once and a log line; a CA bundle URL that gives no certificate stops the mount."""
import errno
import hashlib
import os
import socket
import subprocess
import time

import pytest

from conftest import FSMOUNT, write_config
from servers import IpfsNode, TlsRelay, WebServer, s3_admin
from test_object_volume import fill_bucket

SMALL = b"small enough for libcurl\n"
BIG = os.urandom(6 * 2**20 + 777)  # blocks of 4 MiB, through urllib3
REFUSED = "certificate verify failed: unable to get local issuer certificate"


@pytest.fixture
def s3_over_https(moto, private_ca):
    relay = TlsRelay(moto.port, private_ca.server)
    yield relay
    relay.close()


@pytest.fixture
def ca_server(private_ca):
    """A plain-http server of the CA's certificate, at /ca.pem."""
    server = WebServer({"/ca.pem": private_ca.pem.read_bytes()})
    yield server
    server.close()


def s3_https_config(workspace, relay, bucket: str, verify: str | None) -> str:
    """A rw volume of BUCKET, reached through RELAY by a ClearML credentials entry for its host; VERIFY: that key's
    value (None: no key, the system's CAs)."""
    host = f"127.0.0.1:{relay.port}"
    trust = "" if verify is None else f', verify: "{verify}"'
    return write_config(workspace, f"""
        cache {{ dir: "{workspace}/cache", block_size: 4MiB }}
        staging {{ write_back: 0, multipart_threshold: 8MiB, part_size: 5MiB }}
        credentials {{ s3: [ {{ host: "{host}", key: test, secret: test, secure: true{trust} }} ] }}
        volumes {{ bucket {{ source: "s3://{host}/{bucket}/", mode: rw }} }}
    """)


@pytest.mark.mount
@pytest.mark.parametrize("named", ["path", "url"])
def test_an_s3_server_over_https_is_read_written_and_listed_with_verify_naming_its_ca(
        workspace, moto, mount, private_ca, s3_over_https, ca_server, named):
    """Every kind of request goes over TLS checked against the CA: the region lookup, the SDK's listings, HEADs
    and multipart calls, libcurl's small GET and PUT, urllib3's large GETs, PUT and parts."""
    bucket = fill_bucket(moto, {"small.txt": SMALL, "data/big.bin": BIG})
    verify = private_ca.pem if named == "path" else f"{ca_server.url}/ca.pem"
    daemon = mount(s3_https_config(workspace, s3_over_https, bucket, verify), workspace / "mnt")
    root = workspace / "mnt" / "bucket"
    assert sorted(os.listdir(root)) == ["data", "small.txt"]
    assert (root / "small.txt").read_bytes() == SMALL
    assert (root / "data" / "big.bin").read_bytes() == BIG
    written = {"note.txt": b"a small PUT\n", "medium.bin": os.urandom(3 * 2**20), "large.bin": os.urandom(13 * 2**20)}
    for name, data in written.items():
        (root / name).write_bytes(data)
    admin = s3_admin(moto)
    for name, data in written.items():
        assert admin.get_object(Bucket=bucket, Key=name)["Body"].read() == data
    assert admin.head_object(Bucket=bucket, Key="large.bin")["ETag"].endswith('-3"')  # in three parts
    assert "certificate" not in daemon.log() and "region is unknown" not in daemon.log()


@pytest.mark.mount
@pytest.mark.parametrize("trusted", ["other-ca", "system"])
@pytest.mark.expect_log(
    r"WARNING fsmount\.stores\.s3: bucket volume-\d+: its region is unknown \(HEAD BUCKET volume-\d+: certificate verify failed: ",
    r"WARNING fsmount\.fs\.operations: (readdir|lookup) failed: \[Errno 5\] (LIST \S*|HEAD \S+): certificate verify failed: ",
)
def test_an_s3_server_whose_certificate_the_ca_does_not_vouch_for_is_eio_at_once_and_a_log_line(
        workspace, moto, mount, other_ca, s3_over_https, trusted):
    bucket = fill_bucket(moto, {"small.txt": SMALL})
    config = s3_https_config(workspace, s3_over_https, bucket, other_ca.pem if trusted == "other-ca" else None)
    daemon = mount(config, workspace / "mnt")
    started = time.monotonic()
    for attempt in (lambda: os.listdir(workspace / "mnt" / "bucket"),
                    lambda: (workspace / "mnt" / "bucket" / "small.txt").read_bytes()):
        with pytest.raises(OSError) as error:
            attempt()
        assert error.value.errno == errno.EIO
    assert time.monotonic() - started < 5  # not retried: the default budget is 30 s
    assert f"LIST : {REFUSED}" in daemon.log()


@pytest.fixture(scope="module")
def ipfs_node(tmp_path_factory):
    source = tmp_path_factory.mktemp("ipfs-source")
    (source / "hello.txt").write_bytes(SMALL)
    (source / "big.bin").write_bytes(BIG[:2 * 2**20])
    node = IpfsNode(tmp_path_factory.mktemp("ipfs"), source)
    yield node
    node.stop()


@pytest.mark.mount
@pytest.mark.parametrize("reach", ["gateway", "api"])
@pytest.mark.expect_log(
    r"WARNING fsmount\.fs\.operations: readdir failed: \[Errno 5\] (GET block|block/get) \w+: certificate verify failed: ",
)
def test_an_ipfs_node_over_https_is_read_with_verify_naming_its_ca(workspace, mount, ipfs_node, private_ca, other_ca,
                                                                    reach):
    """The untrusted volume is read first: the volumes share the cache of blocks and listings by CID."""
    relay = TlsRelay(ipfs_node.port, private_ca.server)
    try:
        daemon = mount(write_config(workspace, f"""
            cache {{ dir: "{workspace}/cache", block_size: 1MiB }}
            volumes {{
                trusted {{ source: "ipfs://{ipfs_node.root}", {reach}: "{relay.url}", verify: "{private_ca.pem}" }}
                untrusted {{ source: "ipfs://{ipfs_node.root}", {reach}: "{relay.url}", verify: "{other_ca.pem}" }}
            }}
        """), workspace / "mnt")
        started = time.monotonic()
        with pytest.raises(OSError) as error:
            os.listdir(workspace / "mnt" / "untrusted")
        assert error.value.errno == errno.EIO and time.monotonic() - started < 5
        assert REFUSED in daemon.log()
        trusted = workspace / "mnt" / "trusted"
        assert sorted(os.listdir(trusted)) == ["big.bin", "hello.txt"]
        assert (trusted / "hello.txt").read_bytes() == SMALL
        assert (trusted / "big.bin").read_bytes() == BIG[:2 * 2**20]
    finally:
        relay.close()


@pytest.mark.mount
def test_a_ca_bundle_url_is_fetched_once_at_start_however_many_volumes_name_it(workspace, mount, private_ca, ca_server):
    files = WebServer({"/a.txt": b"first\n", "/b.txt": b"second\n"}, tls=private_ca.server)
    try:
        verify = f"{ca_server.url}/ca.pem"
        mount(write_config(workspace, f"""
            cache {{ dir: "{workspace}/cache" }}
            volumes {{
                one {{ source: "{files.url}/a.txt", verify: "{verify}" }}
                two {{ source: "{files.url}/b.txt", verify: "{verify}" }}
            }}
        """), workspace / "mnt")
        assert (workspace / "mnt" / "one" / "a.txt").read_bytes() == b"first\n"
        assert (workspace / "mnt" / "two" / "b.txt").read_bytes() == b"second\n"
    finally:
        files.close()
    assert ca_server.gets["/ca.pem"] == 1
    kept = workspace / "cache" / "ca" / f"{hashlib.sha256(verify.encode()).hexdigest()}.pem"
    assert kept.read_bytes() == private_ca.pem.read_bytes()


def _closed_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        return listener.getsockname()[1]


@pytest.mark.unit
@pytest.mark.parametrize("path, reason", [
    ("/absent.pem", "could not be fetched: the server answered 404"),
    ("/page.html", "holds no PEM certificate"),
    (None, "could not be fetched:"),
])
def test_a_ca_bundle_url_that_gives_no_certificate_stops_the_mount_naming_the_key(workspace, path, reason):
    server = WebServer({"/page.html": b"<html>not a certificate</html>"})
    url = f"{server.url}{path}" if path else f"http://127.0.0.1:{_closed_port()}/ca.pem"
    try:
        config = write_config(workspace, f"""
            cache {{ dir: "{workspace}/cache" }}
            volumes {{ web {{ source: "https://127.0.0.1:1/a.txt", verify: "{url}" }} }}
        """)
        done = subprocess.run([FSMOUNT, "mount", str(config), str(workspace / "mnt"), "--foreground"],
                              capture_output=True, text=True, timeout=60)
    finally:
        server.close()
    assert done.returncode == 1
    assert f"{config}: volumes.web.verify: " in done.stderr and url in done.stderr and reason in done.stderr, done.stderr
