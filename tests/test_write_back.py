"""Write-back through a real mount: closed files wait before their upload, so what rsync, tar, git and editors do
right after a close costs no request; one PUT per final file, nothing lost to a kill, errors reach fsync."""
import errno
import os
import random
import shutil
import stat
import subprocess
import tarfile

import pytest

from conftest import FSMOUNT, wait_for
from buckets import KINDS, S3Bucket, new_bucket
from servers import Proxy
from test_object_volume import volume_config
from test_object_writes import restart, status

pytestmark = pytest.mark.mount

WRITE_BACK = "write_back: 2s"


def mount_write_back(workspace, mount, bucket, url=None):
    config = volume_config(workspace, bucket, extra="mode: rw", staging=WRITE_BACK, url=url)
    return config, mount(config, workspace / "mnt"), workspace / "mnt" / "bucket"


def sync(path) -> subprocess.CompletedProcess:
    return subprocess.run([FSMOUNT, "sync", str(path)], capture_output=True, text=True, timeout=120)


def make_tree(root, files=40, directories=4) -> dict[str, bytes]:
    """FILES small files of random sizes in DIRECTORIES directories under ROOT; their paths and bytes."""
    generator = random.Random(27)
    tree = {}
    for index in range(files):
        name = f"d{index % directories}/f{index}.bin"
        tree[name] = generator.randbytes(generator.randrange(0, 8192))
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(tree[name])
        os.chmod(root / name, 0o640 if index % 2 else 0o755)
        os.utime(root / name, ns=(10**18 + index, 10**18 + index * 10**9))
    return tree


def puts(moto, bucket, key="") -> int:
    return moto.requests("PUT", f"/{bucket}/{key}")


def changes_naming(moto, bucket, text: str = "") -> list[str]:
    """The requests moto took that wrote or removed a key of BUCKET holding TEXT (moto serves every test)."""
    return [line for line in moto.log_path.read_text().splitlines()
            if any(f'"{method} /{bucket}/' in line for method in ("PUT", "POST", "DELETE")) and text in line]


@pytest.mark.parametrize("tool", ["rsync", "tar"])
def test_rsync_and_tar_make_one_put_per_final_file_with_its_metadata(tool, workspace, moto, mount, tmp_path):
    bucket = S3Bucket(moto)
    config, _, root = mount_write_back(workspace, mount, bucket)
    source = tmp_path / "source"
    tree = make_tree(source)
    if tool == "rsync":
        subprocess.run(["rsync", "-a", f"{source}/", f"{root}/"], check=True)
    else:
        with tarfile.open(tmp_path / "tree.tar", "w") as archive:
            archive.add(source, arcname=".")
        subprocess.run(["tar", "xf", str(tmp_path / "tree.tar"), "-C", str(root)], check=True)
    for name, data in tree.items():  # pending, and read as written
        assert (root / name).read_bytes() == data
        assert os.stat(root / name).st_mtime_ns == os.stat(source / name).st_mtime_ns
    assert sync(root).returncode == 0
    assert sorted(key for key in bucket.keys() if not key.endswith("/")) == sorted(tree)
    for name, data in tree.items():
        assert bucket.get(name) == data
        assert puts(moto, bucket, name + " ") + puts(moto, bucket, name + "?") == 1, name  # once, under its own name
        metadata = bucket.metadata(name)
        assert int(metadata["mode"]) == os.stat(source / name).st_mode
        assert (metadata["uid"], metadata["gid"]) == ("0", "0")
        assert metadata["mtime"] == f"{os.stat(source / name).st_mtime_ns // 10**9}.{os.stat(source / name).st_mtime_ns % 10**9:09d}"
    assert changes_naming(moto, bucket, "/.") == [] and changes_naming(moto, bucket, "DELETE") == []  # temporaries


def test_a_file_removed_before_its_upload_never_reaches_the_store(workspace, moto, mount):
    bucket = S3Bucket(moto)
    _, _, root = mount_write_back(workspace, mount, bucket)
    (root / "index.lock").write_bytes(b"locked")  # git's lock, an editor's swap file
    os.unlink(root / "index.lock")
    (root / "config.lock").write_bytes(b"new config\n")
    os.rename(root / "config.lock", root / "config")
    assert sync(root).returncode == 0
    assert bucket.keys() == ["config"] and bucket.get("config") == b"new config\n"
    assert changes_naming(moto, bucket, "lock") == []


def test_a_file_written_past_its_end_sends_nothing_of_its_hole(workspace, moto, mount):
    """pjdfstest's open/25: one byte written 2 GiB into a new file, read back, removed. The file went up in
    parts of zeros while it was written (past the multipart threshold); it must wait for its close."""
    bucket = S3Bucket(moto)
    _, _, root = mount_write_back(workspace, mount, bucket)
    with open(root / "sparse.bin", "wb", buffering=0) as stream:
        stream.seek(64 * 2**20)  # four times the multipart threshold
        stream.write(b"a")
    assert os.stat(root / "sparse.bin").st_size == 64 * 2**20 + 1
    with open(root / "sparse.bin", "rb") as stream:
        assert stream.read(4096) == bytes(4096) and os.pread(stream.fileno(), 1, 64 * 2**20) == b"a"
    os.unlink(root / "sparse.bin")
    assert sync(root).returncode == 0
    assert changes_naming(moto, bucket, "sparse") == []


def test_chmod_chown_and_times_after_close_go_up_with_the_one_upload(workspace, moto, mount):
    bucket = S3Bucket(moto)
    _, daemon, root = mount_write_back(workspace, mount, bucket)
    (root / "tool").write_bytes(b"#!/bin/sh\necho ran\n")
    os.chmod(root / "tool", 0o751)
    os.chown(root / "tool", 1234, 5678)
    os.utime(root / "tool", ns=(1, 1_700_000_000_123_456_789))
    assert daemon.status()["uploads"]["waiting"] == 1  # for the write-back delay, not merely late
    assert bucket.keys() == []
    assert sync(root / "tool").returncode == 0
    assert puts(moto, bucket, "tool") == 1
    assert bucket.metadata("tool") == {"mode": str(stat.S_IFREG | 0o751), "uid": "1234", "gid": "5678",
                                            "mtime": "1700000000.123456789"}
    seen = os.stat(root / "tool")
    assert (stat.S_IMODE(seen.st_mode), seen.st_uid, seen.st_gid, seen.st_mtime_ns) == (
        0o751, 1234, 5678, 1_700_000_000_123_456_789)


def test_a_directory_renamed_with_pending_files_uploads_them_under_the_new_name(workspace, moto, mount):
    bucket = S3Bucket(moto)
    _, _, root = mount_write_back(workspace, mount, bucket)
    os.mkdir(root / "build")
    (root / "build" / "out.txt").write_bytes(b"output\n")
    os.rename(root / "build", root / "release")
    assert (root / "release" / "out.txt").read_bytes() == b"output\n"
    assert sync(root).returncode == 0
    assert bucket.get("release/out.txt") == b"output\n"
    assert changes_naming(moto, bucket, "build/out.txt") == []


@pytest.mark.parametrize("kind", KINDS)
def test_a_daemon_killed_after_a_rename_uploads_the_final_names_on_its_next_start(kind, request, workspace, mount,
                                                                                  tmp_path):
    bucket = new_bucket(request, kind)
    config, daemon, root = mount_write_back(workspace, mount, bucket)
    source = tmp_path / "source"
    tree = make_tree(source, files=12, directories=2)
    subprocess.run(["rsync", "-a", f"{source}/", f"{root}/"], check=True)
    os.chown(root / "d0" / "f0.bin", 4321, 4321)
    daemon = restart(daemon, mount, config)  # kill -9, with every upload still waiting
    wait_for(lambda: sorted(key for key in bucket.keys() if not key.endswith("/")) == sorted(tree), 30,
             "the uploads after the restart")
    for name, data in tree.items():
        assert bucket.get(name) == data == (root / name).read_bytes()
        assert int(bucket.metadata(name)["mode"]) == os.stat(source / name).st_mode
    assert bucket.metadata("d0/f0.bin")["uid"] == "4321"
    assert "was closed but not uploaded" in daemon.log()


@pytest.mark.expect_log(
    r"WARNING fsmount\.volumes\.uploads: uploading refused\.txt failed \(PUT refused\.txt: .*\); it stays staged in .* and is tried again$",
    r"WARNING fsmount\.fs\.operations: fsync failed: \[Errno 5\] uploading refused\.txt failed$",
    r"WARNING fsmount\.fs\.operations: fsyncdir failed: \[Errno 5\] 1 uploads failed: refused\.txt$",
)
def test_fsync_fails_with_eio_while_the_store_refuses_and_the_file_goes_up_once_it_takes_it(workspace, moto, mount):
    bucket = S3Bucket(moto)
    proxy = Proxy(moto.port)
    try:
        config, _, root = mount_write_back(workspace, mount, bucket, url=proxy.url)
        os.listdir(root)
        proxy.down()
        fd = os.open(root / "refused.txt", os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.write(fd, b"kept until the store takes it\n")
            with pytest.raises(OSError) as error:
                os.fsync(fd)
            assert error.value.errno == errno.EIO
        finally:
            os.close(fd)
        result = sync(root)
        assert result.returncode == 1 and "refused.txt" in result.stderr
        assert "last upload failed" in status(config)
        assert (root / "refused.txt").read_bytes() == b"kept until the store takes it\n"
        proxy.up()
        wait_for(lambda: "refused.txt" in bucket.keys(), 90, "the retried upload")
        assert bucket.get("refused.txt") == b"kept until the store takes it\n"
        assert sync(root).returncode == 0
    finally:
        proxy.close()


def test_an_unmount_waits_for_pending_uploads(workspace, moto, mount):
    bucket = S3Bucket(moto)
    _, daemon, root = mount_write_back(workspace, mount, bucket)
    (root / "last.txt").write_bytes(b"written just before the unmount\n")
    subprocess.run([FSMOUNT, "umount", str(daemon.mountpoint)], check=True)
    daemon.process.wait(timeout=60)
    assert bucket.get("last.txt") == b"written just before the unmount\n"


def test_a_pending_file_lists_and_stats_as_written_everywhere(workspace, moto, mount):
    bucket = S3Bucket(moto)
    _, daemon, root = mount_write_back(workspace, mount, bucket)
    os.makedirs(root / "a" / "b")
    (root / "a" / "b" / "new.txt").write_bytes(b"12345")
    assert daemon.status()["uploads"]["waiting"] == 1
    assert bucket.keys() == ["a/", "a/b/"]
    assert os.listdir(root / "a" / "b") == ["new.txt"]
    assert os.stat(root / "a" / "b" / "new.txt").st_size == 5
    assert shutil.copyfile(root / "a" / "b" / "new.txt", workspace / "copy") and \
        (workspace / "copy").read_bytes() == b"12345"
