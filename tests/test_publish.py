"""`fsmount publish` (issue 29, point 5), against real servers: a tarball in a local file, S3, Azure Blob and GCS
that untars to the tree and has the SHA-256 printed; IPFS read back through a mounted volume of the printed
CID; and publishes interrupted half way that leave nothing named as a finished result."""
import hashlib
import os
import signal
import subprocess

import pytest

from buckets import KINDS, new_bucket
from conftest import FSMOUNT, write_config
from servers import AZURITE_ACCOUNT, AZURITE_KEY, IpfsNode, azurite_endpoint
from test_ipfs_volume import long_listing

PART = 5 * 2**20  # the least part size a config may name


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """A tree of every kind of entry: nested and empty directories, an empty file, a file of three parts, a symlink."""
    root = tmp_path_factory.mktemp("publish") / "results"
    (root / "data" / "nested").mkdir(parents=True)
    (root / "void").mkdir()
    (root / "hello.txt").write_text("hello, published\n")
    (root / "data" / "empty").write_bytes(b"")
    (root / "data" / "big.bin").write_bytes(os.urandom(2 * PART + 12345))
    (root / "data" / "nested" / "notes.md").write_text("# notes\n")
    os.symlink("../hello.txt", root / "data" / "link")
    for path in sorted(root.rglob("*"), reverse=True):
        os.utime(path, ns=(1_700_000_000 * 10**9, 1_700_000_000 * 10**9 + 123456789 * len(path.name)),
                 follow_symlinks=False)
    return root


@pytest.fixture
def big_tree(tmp_path):
    """A tree that takes a while to publish: a publish can be interrupted half way."""
    root = tmp_path / "big"
    root.mkdir()
    for number in range(8):
        (root / f"chunk-{number}").write_bytes(os.urandom(6 * 2**20))
    return root


def publish(directory, *arguments) -> str:
    """The last line `fsmount publish` prints."""
    done = subprocess.run([FSMOUNT, "publish", str(directory), *arguments], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "publish: 100%" in done.stderr
    return done.stdout.splitlines()[-1]


def untar_and_compare(data: bytes, tree, destination):
    destination.mkdir()
    subprocess.run(["tar", "-xzf", "-", "-C", str(destination)], input=data, check=True)
    subprocess.run(["diff", "-r", "--no-dereference", str(tree), str(destination)], check=True)
    assert long_listing(destination) == long_listing(tree)


@pytest.mark.unit
def test_publish_to_a_file_untars_to_the_same_tree(tree, tmp_path):
    result = tmp_path / "result.tar.gz"
    url, checksum = publish(tree, "--to", f"file://{result}").split()
    data = result.read_bytes()
    assert (url, checksum) == (f"file://{result}", f"checksum_sha256={hashlib.sha256(data).hexdigest()}")
    assert os.listdir(tmp_path) == ["result.tar.gz"]
    untar_and_compare(data, tree, tmp_path / "out")


def target_config(directory, bucket) -> tuple[str, list[str]]:
    """(the config, the `--to` and `--endpoint` arguments) for a tarball in BUCKET, parts of 5 MiB staged in
    DIRECTORY/staging."""
    credentials, url, endpoint = {
        "s3": (f"s3: [ {{ bucket: {bucket}, key: test, secret: test }} ]", f"s3://{bucket}", bucket.server.url),
        "azure": (f'azure: [ {{ account_name: {AZURITE_ACCOUNT}, account_key: "{AZURITE_KEY}" }} ]',
                  f"azure://{bucket}", azurite_endpoint(bucket.server)),
        "gcs": ("", f"gs://{bucket}", bucket.server.url)}[bucket.kind]
    config = write_config(directory, f"""
        staging {{ dir: "{directory}/staging", part_size: 5MiB }}
        credentials {{ {credentials} }}
    """)
    return config, ["--config", str(config), "--to", f"{url}/runs/result.tar.gz", "--endpoint", endpoint]


@pytest.mark.server
@pytest.mark.parametrize("kind", KINDS)
def test_publish_to_an_object_store_puts_a_tarball_of_the_tree_with_its_sha256(request, kind, tree, tmp_path):
    bucket = new_bucket(request, kind)
    if kind == "s3":
        bucket.admin.put_bucket_versioning(Bucket=bucket.name, VersioningConfiguration={"Status": "Enabled"})
    _, arguments = target_config(tmp_path, bucket)
    url, checksum, *version = publish(tree, *arguments).split()
    data = bucket.get("runs/result.tar.gz")
    assert url == arguments[3]
    assert checksum == f"checksum_sha256={hashlib.sha256(data).hexdigest()}"
    assert bucket.metadata("runs/result.tar.gz") == {"sha256": hashlib.sha256(data).hexdigest()}
    if kind == "s3":
        head = bucket.admin.head_object(Bucket=bucket.name, Key="runs/result.tar.gz")
        assert version == [f"version_id={head['VersionId']}"]
    assert bucket.keys() == ["runs/result.tar.gz"]
    assert os.listdir(tmp_path / "staging") == []
    untar_and_compare(data, tree, tmp_path / "out")


@pytest.mark.mount
def test_publish_to_ipfs_reads_back_through_a_volume_of_the_printed_cid(tree, tmp_path_factory, workspace, mount):
    node = IpfsNode(tmp_path_factory.mktemp("ipfs"), tree / "data" / "nested")
    try:
        cid = publish(tree, "--to", "ipfs", "--api", f"/ip4/127.0.0.1/tcp/{node.port}")
        assert node.requests("POST /api/v0/add?cid-version=1&raw-leaves=true") == 1
        config = write_config(workspace, f"""
            cache {{ dir: "{workspace}/cache" }}
            volumes {{ results {{ source: "ipfs://{cid}", api: "/ip4/127.0.0.1/tcp/{node.port}" }} }}
        """)
        mount(config, workspace / "mnt")
        published = workspace / "mnt" / "results"
        subprocess.run(["diff", "-r", "--no-dereference", str(tree), str(published)], check=True)
        assert long_listing(published) == long_listing(tree)
    finally:
        node.stop()


def interrupt_half_way(directory, *arguments) -> subprocess.CompletedProcess:
    """`fsmount publish` sent SIGINT once it has read a tenth of the tree."""
    process = subprocess.Popen([FSMOUNT, "publish", str(directory), *arguments], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    for line in process.stderr:
        if line.startswith("publish:  10%"):
            break
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert stdout == "" and "interrupted; nothing was published" in stderr
    return process


@pytest.mark.unit
def test_an_interrupted_publish_to_a_file_leaves_no_result(big_tree, tmp_path):
    interrupt_half_way(big_tree, "--to", f"file://{tmp_path}/result.tar.gz")
    assert sorted(os.listdir(tmp_path)) == ["big"]


@pytest.mark.server
def test_an_interrupted_publish_to_s3_leaves_no_object_and_no_upload(request, big_tree, tmp_path):
    bucket = new_bucket(request, "s3")
    _, arguments = target_config(tmp_path, bucket)
    interrupt_half_way(big_tree, *arguments)
    assert bucket.keys() == []
    assert bucket.admin.list_multipart_uploads(Bucket=bucket.name).get("Uploads", []) == []
    assert os.listdir(tmp_path / "staging") == []
