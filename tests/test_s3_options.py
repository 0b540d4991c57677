"""S3 volume options through a real mount, against moto: key filters, pinned versions, checksums, the credentials chain,
many buckets on one server."""
import base64
import errno
import hashlib
import os
from pathlib import Path

import pytest

from conftest import write_config
from servers import s3_admin
from test_object_volume import fill_bucket, s3_config

pytestmark = pytest.mark.mount

DATA = os.urandom(3 * 2**20 + 777)


def single_object_config(directory, server, bucket, options):
    return write_config(directory, f"""
        cache {{ dir: "{directory}/cache", block_size: 1MiB }}
        credentials {{ s3: [ {{ bucket: {bucket}, key: test, secret: test }} ] }}
        volumes {{ model {{ source: "s3://{bucket}/models/m.bin", endpoint: "{server.url}", {options} }} }}
    """)


def test_a_filter_shows_only_the_keys_it_matches(workspace, moto, mount):
    bucket = fill_bucket(moto, {"a.csv": b"1,2\n", "b.json": b"{}", "sub/c.csv": b"3,4\n", "sub/d.txt": b"d"})
    mount(s3_config(workspace, moto, bucket, extra='filter: "\\\\.csv$"'), workspace / "mnt")
    root = workspace / "mnt" / "bucket"
    assert sorted(os.listdir(root)) == ["a.csv", "sub"] and os.listdir(root / "sub") == ["c.csv"]
    with pytest.raises(FileNotFoundError):
        os.stat(root / "b.json")
    assert (root / "sub" / "c.csv").read_bytes() == b"3,4\n"


def test_a_pinned_version_is_read_after_the_object_changed(workspace, moto, mount):
    bucket = fill_bucket(moto, {})
    admin = s3_admin(moto)
    admin.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    first = admin.put_object(Bucket=bucket, Key="models/m.bin", Body=DATA)["VersionId"]
    admin.put_object(Bucket=bucket, Key="models/m.bin", Body=b"a newer version")
    mount(single_object_config(workspace, moto, bucket, f'version_id: "{first}"'), workspace / "mnt")
    volume = workspace / "mnt" / "model"
    assert os.listdir(volume) == ["m.bin"]
    assert os.stat(volume / "m.bin").st_size == len(DATA)
    assert (volume / "m.bin").read_bytes() == DATA
    with pytest.raises(OSError) as error:
        (volume / "m.bin").write_bytes(b"x")
    assert error.value.errno == errno.EROFS


@pytest.mark.parametrize("encoding", [lambda digest: digest.hex(), lambda digest: base64.b64encode(digest).decode()])
def test_a_matching_checksum_reads(workspace, moto, mount, encoding):
    bucket = fill_bucket(moto, {"models/m.bin": DATA})
    checksum = encoding(hashlib.sha256(DATA).digest())
    mount(single_object_config(workspace, moto, bucket, f'checksum_sha256: "{checksum}"'), workspace / "mnt")
    assert (workspace / "mnt" / "model" / "m.bin").read_bytes() == DATA


@pytest.mark.expect_log(
    r"ERROR fsmount\.volumes\.single: models/m\.bin: SHA-256 \w+, not the \w+ the config asks for; reads fail with EIO$",
    r"WARNING fsmount\.fs\.operations: open failed: \[Errno 5\] checksum mismatch$",
)
def test_a_checksum_mismatch_is_eio_and_a_log_line(workspace, moto, mount):
    bucket = fill_bucket(moto, {"models/m.bin": DATA})
    wrong = hashlib.sha256(b"other bytes").hexdigest()
    daemon = mount(single_object_config(workspace, moto, bucket, f'checksum_sha256: "{wrong}"'), workspace / "mnt")
    with pytest.raises(OSError) as error:
        (workspace / "mnt" / "model" / "m.bin").read_bytes()
    assert error.value.errno == errno.EIO
    assert f"not the {wrong} the config asks for" in daemon.log()


def test_the_credentials_chain_replaces_the_configured_keys(workspace, moto, mount, monkeypatch):
    """moto takes any key, so the test looks at which key signed the GET."""
    bucket = fill_bucket(moto, {"a.txt": b"through the chain"})
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "fromtheenvironment")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    config = write_config(workspace, f"""
        cache {{ dir: "{workspace}/cache" }}
        credentials {{ s3: [ {{ bucket: {bucket}, key: wrong, secret: wrong, use_credentials_chain: true }} ] }}
        volumes {{ bucket {{ source: "s3://{bucket}/", endpoint: "{moto.url}" }} }}
    """)
    mount(config, workspace / "mnt")
    assert (workspace / "mnt" / "bucket" / "a.txt").read_bytes() == b"through the chain"
    assert moto.requests(f"GET /{bucket}/a.txt?", "=fromtheenvironment") == 1
    assert moto.requests(f"/{bucket}/a.txt?", "=wrong") == 0


def test_eight_buckets_on_one_server_keep_the_daemon_under_200_mib(workspace, moto, mount):
    """Each botocore session parses S3's service model: one per volume (and one more to presign) took 26 MiB a volume."""
    buckets = [fill_bucket(moto, {"a.txt": f"bucket {number}".encode()}) for number in range(8)]
    volumes = "\n".join(f'v{number} {{ source: "s3://{bucket}/", endpoint: "{moto.url}" }}'
                        for number, bucket in enumerate(buckets))
    daemon = mount(write_config(workspace, f"""
        cache {{ dir: "{workspace}/cache" }}
        credentials {{ s3: [ {{ key: test, secret: test }} ] }}
        volumes {{ {volumes} }}
    """), workspace / "mnt")
    for number in range(8):
        assert (workspace / "mnt" / f"v{number}" / "a.txt").read_bytes() == f"bucket {number}".encode()
    status = Path(f"/proc/{daemon.process.pid}/status").read_text()
    assert int(status.split("VmHWM:")[1].split()[0]) < 200 * 1024  # kB
