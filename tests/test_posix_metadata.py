"""POSIX metadata kept in the objects, through a real mount: owners, modes and times of files and directories,
symlinks and user.* extended attributes survive a remount, in the forms s3fs writes and reads; fsmount's own
read-only attributes name each object's version, source and cached bytes."""
import base64
import errno
import json
import os
import stat
import subprocess
import sys
import urllib.parse

import pytest

from buckets import KINDS, S3Bucket, new_bucket
from conftest import wait_for
from test_object_volume import volume_config
from test_object_writes import restart

pytestmark = pytest.mark.mount

OLD = {"old.txt": b"old bytes\n", "dir/inside.txt": b"inside\n"}


@pytest.fixture(params=KINDS)
def rw(request, workspace, mount):
    """(config, daemon, volume root, bucket) of an rw volume mounted with allow_other, on each kind of store."""
    bucket = new_bucket(request, request.param, OLD)
    config = volume_config(workspace, bucket, extra="mode: rw")
    daemon = mount(config, workspace / "mnt", "-o", "allow_other")
    return config, daemon, workspace / "mnt" / "bucket", bucket


def remount(rw_volume, mount):
    config, daemon, root, bucket = rw_volume
    return restart(daemon, mount, config), root


def as_user(uid: int, code: str, directory) -> subprocess.CompletedProcess:
    """CODE run by Python as UID (its group too) with `d` a descriptor of DIRECTORY, opened before: the test's
    own directories above the mount are root's alone."""
    return subprocess.run([sys.executable, "-c", f"import os\nd = os.open({str(directory)!r}, os.O_RDONLY)\n"
                           f"os.setgid({uid}); os.setuid({uid})\n{code}"], capture_output=True, text=True, timeout=60)


def test_owners_and_modes_of_files_and_directories_survive_a_remount(rw, mount):
    _, _, root, bucket = rw
    os.mkdir(root / "private", 0o700)
    (root / "private" / "notes").write_bytes(b"mine\n")
    os.chown(root / "private", 1000, 1000)
    os.chown(root / "private" / "notes", 1000, 1000)
    os.chmod(root / "private" / "notes", 0o600)
    os.chmod(root / "dir", 0o750)  # an implicit directory: it gets a marker
    os.chown(root / "old.txt", 1001, 1002)
    _, root = remount(rw, mount)
    seen = {name: os.stat(root / name) for name in ("private", "private/notes", "dir", "old.txt")}
    assert [(stat.S_IMODE(s.st_mode), s.st_uid, s.st_gid) for s in seen.values()] == [
        (0o700, 1000, 1000), (0o600, 1000, 1000), (0o750, 0, 0), (0o644, 1001, 1002)]
    assert stat.S_ISDIR(seen["private"].st_mode) and stat.S_ISDIR(seen["dir"].st_mode)
    assert (root / "dir" / "inside.txt").read_bytes() == b"inside\n"
    assert int(bucket.metadata("private/")["mode"]) == stat.S_IFDIR | 0o700
    assert bucket.metadata("old.txt")["uid"] == "1001" and bucket.get("old.txt") == b"old bytes\n"


def test_the_kernel_checks_permissions_against_the_owners_kept(rw):
    _, _, root, _ = rw
    os.mkdir(root / "home", 0o755)
    os.chown(root / "home", 1000, 1000)
    (root / "home" / "own").write_bytes(b"x")
    os.chown(root / "home" / "own", 1000, 1000)
    mine = as_user(1000, "os.close(os.open('new', os.O_CREAT | os.O_WRONLY, dir_fd=d)); os.chmod('own', 0o600, dir_fd=d)",
                   root / "home")
    assert mine.returncode == 0, mine.stderr
    assert stat.S_IMODE(os.stat(root / "home" / "own").st_mode) == 0o600
    assert os.stat(root / "home" / "new").st_uid == 1000
    other = as_user(2000, "os.chmod('own', 0o666, dir_fd=d)", root / "home")
    assert "PermissionError" in other.stderr  # EPERM: only the owner or root changes a mode
    denied = as_user(2000, "os.open('own', os.O_RDONLY, dir_fd=d)", root / "home")
    assert "PermissionError" in denied.stderr


def test_symlinks_are_stored_as_s3fs_stores_them_and_survive_a_remount(rw, mount):
    _, _, root, bucket = rw
    os.symlink("old.txt", root / "link")
    os.symlink("../old.txt", root / "dir" / "up")
    assert os.readlink(root / "link") == "old.txt" and (root / "link").read_bytes() == b"old bytes\n"
    assert bucket.get("link") == b"old.txt" and int(bucket.metadata("link")["mode"]) == stat.S_IFLNK | 0o777
    _, root = remount(rw, mount)
    assert stat.S_ISLNK(os.lstat(root / "link").st_mode) and os.readlink(root / "link") == "old.txt"
    assert sorted(os.listdir(root / "dir")) == ["inside.txt", "up"]
    assert (root / "dir" / "up").read_bytes() == b"old bytes\n"
    os.rename(root / "link", root / "moved")
    assert os.readlink(root / "moved") == "old.txt"
    os.unlink(root / "moved")
    assert "moved" not in bucket.keys()
    with pytest.raises(FileExistsError):
        os.symlink("x", root / "old.txt")


def test_metadata_written_by_another_client_in_s3fs_s_form_is_read(workspace, moto, mount):
    bucket = S3Bucket(moto)
    admin = bucket.admin
    xattr = urllib.parse.quote(json.dumps({"user.origin": base64.b64encode(b"s3fs").decode()}))
    admin.put_object(Bucket=bucket.name, Key="shared/data.bin", Body=b"data",
                     Metadata={"mode": str(stat.S_IFREG | 0o640), "uid": "1234", "gid": "99", "mtime": "1600000000",
                               "xattr": xattr})
    admin.put_object(Bucket=bucket.name, Key="shared/", Body=b"",
                     Metadata={"mode": str(stat.S_IFDIR | 0o711), "uid": "1234", "gid": "99"})
    admin.put_object(Bucket=bucket.name, Key="shared/latest", Body=b"data.bin",
                     Metadata={"mode": str(stat.S_IFLNK | 0o777)})
    mount(volume_config(workspace, bucket, extra="mode: rw"), workspace / "mnt")
    root = workspace / "mnt" / "bucket"
    directory, data, link = (os.lstat(root / name) for name in ("shared", "shared/data.bin", "shared/latest"))
    assert (stat.S_IMODE(directory.st_mode), directory.st_uid, directory.st_gid) == (0o711, 1234, 99)
    assert (stat.S_IMODE(data.st_mode), data.st_uid, data.st_gid, data.st_mtime) == (0o640, 1234, 99, 1600000000)
    assert stat.S_ISLNK(link.st_mode) and os.readlink(root / "shared" / "latest") == "data.bin"
    assert os.getxattr(root / "shared" / "data.bin", "user.origin") == b"s3fs"


def test_user_xattrs_are_kept_in_the_object_and_survive_a_remount(rw, mount):
    _, _, root, bucket = rw
    os.setxattr(root / "old.txt", "user.checksum", b"sha256:abc")
    os.setxattr(root / "dir", "user.owner-team", b"ml")
    (root / "fresh.txt").write_bytes(b"fresh")
    os.setxattr(root / "fresh.txt", "user.k", b"\x00\xffbinary")
    _, root = remount(rw, mount)
    assert os.getxattr(root / "old.txt", "user.checksum") == b"sha256:abc"
    assert os.getxattr(root / "dir", "user.owner-team") == b"ml"
    assert os.getxattr(root / "fresh.txt", "user.k") == b"\x00\xffbinary"
    assert (root / "old.txt").read_bytes() == b"old bytes\n"
    stored = json.loads(urllib.parse.unquote(bucket.metadata("old.txt")["xattr"]))
    assert stored == {"user.checksum": base64.b64encode(b"sha256:abc").decode()}
    os.removexattr(root / "old.txt", "user.checksum")
    assert "user.checksum" not in os.listxattr(root / "old.txt")
    with pytest.raises(OSError) as error:
        os.getxattr(root / "old.txt", "user.checksum")
    assert error.value.errno == errno.ENODATA
    with pytest.raises(OSError) as error:
        os.setxattr(root / "old.txt", "user.big", b"x" * 4096)
    assert error.value.errno in (errno.ENOSPC, errno.E2BIG)
    with pytest.raises(OSError) as error:
        os.setxattr(root / "old.txt", "trusted.k", b"v")
    assert error.value.errno in (errno.ENOTSUP, errno.EPERM)


def test_fsmount_s_own_attributes_name_the_version_source_and_cached_bytes(rw):
    _, _, root, bucket = rw
    path = root / "old.txt"
    names = os.listxattr(path)
    assert {"user.fsmount.etag", "user.fsmount.url", "user.fsmount.content_type", "user.fsmount.cached"} <= set(names)
    assert os.getxattr(path, "user.fsmount.url").decode().endswith(f"{bucket.name}/old.txt")
    assert os.getxattr(path, "user.fsmount.etag")
    if bucket.kind != "gcs":  # fake-gcs-server keeps no type for an object uploaded without one
        assert os.getxattr(path, "user.fsmount.content_type")
    assert os.getxattr(path, "user.fsmount.cached") == b"0"
    assert path.read_bytes() == b"old bytes\n"
    wait_for(lambda: os.getxattr(path, "user.fsmount.cached") == b"10", 10, "the object in the cache")
    with pytest.raises(OSError) as error:
        os.setxattr(path, "user.fsmount.etag", b"forged")
    assert error.value.errno == errno.EPERM
    listed = subprocess.run(["getfattr", "-d", "-m", "-", str(path)], capture_output=True, text=True)
    assert "user.fsmount.url=" in listed.stdout
