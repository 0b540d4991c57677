"""docs/SEMANTICS.md, section by section: each test is named after the section whose rule it checks (test_s9_...
checks section 9), on a real mount, and asserts what a program sees: bytes, errnos, listings, what the store holds.

Most tests share one tree (`tree`): host volumes, S3 volumes on the session's moto (read-only, read-only with a
short TTL, read-write, a bucket that does not exist), single-object volumes, a URL volume and an IPFS volume.
Each test uses names of its own in it. The deeper checks of each rule are in the test files named after what they
check; these are short checks of the rule as the contract states it."""
import ctypes
import errno
import hashlib
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from buckets import S3Bucket
from conftest import FSMOUNT, Daemon, wait_for, write_config
from servers import IpfsNode, WebServer

pytestmark = pytest.mark.mount

BLOCK = 2**20
WRITE_BACK = 2.0  # staging.write_back of the shared tree, in seconds
TTL_SHORT = 2  # metadata_ttl of s3/fresh and s3/rw, in seconds
UPLOADED = 20  # seconds a test waits, at most, for an upload, a TTL or a reload

CHANGING = os.urandom(4 * BLOCK)
SINGLE = os.urandom(3 * BLOCK + 17)
RO_OBJECTS = {
    "a.txt": b"hello from s3\n",
    "big.bin": os.urandom(3 * BLOCK + 5),
    "both": b"a file shadowed by the directory of the same name",
    "both/inside.txt": b"inside\n",
    "empty/": b"",
    "odd//name": b"an empty segment",
    "dots/../escape": b"a dot-dot segment",
    "nested/sub/deeper/file": b"deep\n",
    "ttl/present": b"listed\n",
    "neg/present": b"never listed\n",
    "changing.bin": CHANGING,
    "single.bin": SINGLE,
}
RW_OBJECTS = {
    "old.txt": b"old bytes\n",
    "ren/a.txt": b"rename me\n",
    "implicit/only": b"the only object of an implicit directory\n",
    "unlinkme.bin": os.urandom(3 * BLOCK),
    "many/0": b"0", "many/1": b"1", "many/2": b"2", "many/3": b"3", "many/4": b"4",
    "two/x": b"x", "two/y": b"y",
}
WEB_FILES = {"/data/a.csv": b"x,y\n1,2\n"}
RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2


def renameat2(old, new, flags: int):
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.renameat2(-100, os.fsencode(old), -100, os.fsencode(new), flags) != 0:  # AT_FDCWD
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))


def errno_of(action) -> int | None:
    """The errno ACTION() fails with; None when it succeeds."""
    try:
        action()
    except OSError as error:
        return error.errno
    return None


class Tree:
    def __init__(self, mnt: Path, links: Path, ro: S3Bucket, rw: S3Bucket, base: Path):
        self.mnt, self.links, self.ro, self.rw, self.base = mnt, links, ro, rw, base
        self.host_ro, self.host_rw = mnt / "host" / "ro", mnt / "host" / "rw"
        self.s3_ro, self.s3_fresh, self.s3_rw = mnt / "s3" / "ro", mnt / "s3" / "fresh", mnt / "s3" / "rw"


@pytest.fixture(scope="module")
def tree(tmp_path_factory, moto):
    base = tmp_path_factory.mktemp("semantics")
    base.chmod(0o755)
    links = base / "links"
    (links / "data").mkdir(parents=True)
    (links / "scratch").mkdir()
    (links / "data" / "hello.txt").write_text("hello\n")
    (base / "mnt").mkdir()
    ro, rw = S3Bucket(moto, RO_OBJECTS), S3Bucket(moto, RW_OBJECTS)
    web = WebServer(dict(WEB_FILES))
    s3 = f'endpoint: "{moto.url}"'
    config = write_config(base, f"""
        link_mounts: ["{links}"]
        cache {{ dir: "{base}/cache", max_size: 1GiB, block_size: 1MiB, read_ahead: 4MiB, metadata_ttl: 60s }}
        staging {{ write_back: {WRITE_BACK}s }}
        retries {{ attempts: 3, max_time: 3s }}
        credentials {{ s3: [ {{ key: test, secret: test }} ] }}
        volumes {{
          host/ro {{ source: "file://{links}/data" }}
          host/rw {{ source: "file://{links}/scratch", mode: rw }}
          s3/ro {{ source: "s3://{ro}/", {s3} }}
          s3/fresh {{ source: "s3://{ro}/", {s3}, metadata_ttl: {TTL_SHORT}s }}
          s3/rw {{ source: "s3://{rw}/", {s3}, mode: rw, rename_limit: 3, metadata_ttl: {TTL_SHORT}s }}
          s3/missing {{ source: "s3://no-such-bucket-for-semantics/", {s3} }}
          single/good {{ source: "s3://{ro}/single.bin", {s3}, checksum_sha256: "{hashlib.sha256(SINGLE).hexdigest()}" }}
          single/bad {{ source: "s3://{ro}/single.bin", {s3}, checksum_sha256: "{'0' * 64}" }}
          web {{ source: ["{web.url}/data/a.csv"] }}
        }}
    """)
    daemon = Daemon(config, base / "mnt")
    try:
        yield Tree(base / "mnt", links, ro, rw, base)
    finally:
        daemon.stop()
        web.close()


@pytest.fixture(scope="module")
def ipfs_volume(tmp_path_factory):
    """The root of an IPFS volume of a directory holding hello.txt, added to a Helia node of its own."""
    base = tmp_path_factory.mktemp("semantics-ipfs")
    (base / "source").mkdir()
    (base / "source" / "hello.txt").write_text("hello from ipfs\n")
    (base / "mnt").mkdir()
    node = IpfsNode(base, base / "source")
    try:
        config = write_config(base, f"""
            cache {{ dir: "{base}/cache" }}
            volumes {{ ipfs {{ source: "ipfs://{node.root}", gateway: "{node.url}" }} }}
        """)
        daemon = Daemon(config, base / "mnt")
        try:
            yield base / "mnt" / "ipfs"
        finally:
            daemon.stop()
    finally:
        node.stop()


# 1. Tenets

def test_s1_a_file_written_through_the_mount_is_an_object_other_tools_read(tree):
    path = tree.s3_rw / "tenet.txt"
    with open(path, "wb") as stream:
        stream.write(b"plain bytes\n")
        os.fchmod(stream.fileno(), 0o640)
        stream.flush()
        os.fsync(stream.fileno())  # tenet 4: fsync is the way to know
    assert tree.rw.get("tenet.txt") == b"plain bytes\n"
    metadata = tree.rw.metadata("tenet.txt")  # tenet 2: s3fs's keys
    assert int(metadata["mode"]) == stat.S_IFREG | 0o640
    assert abs(float(metadata["mtime"]) - os.stat(path).st_mtime) < 1


# 2. Volume kinds

def test_s2_1_host_volumes_pass_through_and_never_follow_a_symlink(tree):
    source = tree.links / "scratch"
    (source / "h1").write_bytes(b"linked")
    os.link(source / "h1", source / "h2")
    os.symlink("../secret", source / "escape")  # on the host: links/secret, outside the volume
    (tree.links / "secret").mkdir()
    (tree.links / "secret" / "file").write_text("outside\n")
    h1, h2 = os.stat(tree.host_rw / "h1"), os.stat(tree.host_rw / "h2")
    assert h1.st_ino == h2.st_ino and h1.st_nlink == 2
    os.setxattr(tree.host_rw / "h1", "user.note", b"kept on the host")
    assert os.getxattr(source / "h1", "user.note") == b"kept on the host"
    assert os.readlink(tree.host_rw / "escape") == "../secret"
    # the kernel resolves it in the reader's view: <mnt>/host/secret, which is not there
    assert errno_of(lambda: os.stat(tree.host_rw / "escape" / "file")) == errno.ENOENT
    assert errno_of(lambda: os.getxattr(tree.host_rw / "escape", "user.x", follow_symlinks=False)) == errno.ENODATA
    (source / "later.txt").write_text("made on the host\n")
    wait_for(lambda: (tree.host_rw / "later.txt").exists(), 10, "a host change seen within attr_timeout")
    with open(tree.host_rw / "later.txt", "rb") as stream:
        assert stream.read() == b"made on the host\n"
    (source / "later.txt").write_text("MADE ON THE HOST\n")
    with open(tree.host_rw / "later.txt", "rb") as stream:  # contents are read again on every open
        assert stream.read() == b"MADE ON THE HOST\n"


def test_s2_2_a_read_only_object_volume_shows_no_write_permission(tree):
    assert stat.S_IMODE(os.stat(tree.s3_ro / "a.txt").st_mode) == 0o444
    assert (tree.s3_ro / "a.txt").read_bytes() == RO_OBJECTS["a.txt"]


def test_s2_3_a_read_write_object_volume_takes_writes(tree):
    assert stat.S_IMODE(os.stat(tree.s3_rw / "old.txt").st_mode) == 0o644
    with open(tree.s3_rw / "kinds.txt", "wb") as stream:
        stream.write(b"written")
        stream.flush()
        os.fsync(stream.fileno())
    assert tree.rw.get("kinds.txt") == b"written"


@pytest.mark.expect_log(
    r"ERROR fsmount\.volumes\.single: single\.bin: SHA-256 \w+, not the 0{64} the config asks for; reads fail with EIO$",
    r"WARNING fsmount\.fs\.operations: open failed: \[Errno 5\] checksum mismatch$",
)
def test_s2_4_a_single_object_volume_holds_its_object_checked_against_its_sha256(tree):
    good, bad = tree.mnt / "single" / "good", tree.mnt / "single" / "bad"
    assert os.listdir(good) == ["single.bin"]
    assert (good / "single.bin").read_bytes() == SINGLE
    assert errno_of(lambda: os.stat(good / "a.txt")) == errno.ENOENT
    assert errno_of(lambda: open(bad / "single.bin", "rb")) == errno.EIO
    assert errno_of(lambda: open(good / "single.bin", "r+b")) == errno.EROFS


def test_s2_5_an_ipfs_volume_is_read_only_and_gives_the_added_bytes(ipfs_volume):
    root = ipfs_volume
    assert (root / "hello.txt").read_bytes() == b"hello from ipfs\n"
    for change in (lambda: open(root / "new", "w"), lambda: os.unlink(root / "hello.txt"),
                   lambda: os.mkdir(root / "d")):
        assert errno_of(change) == errno.EROFS


def test_s2_6_a_url_volume_is_a_read_only_directory_of_its_files(tree):
    root = tree.mnt / "web"
    assert os.listdir(root) == ["a.csv"]
    assert (root / "a.csv").read_bytes() == WEB_FILES["/data/a.csv"]
    assert errno_of(lambda: open(root / "a.csv", "r+b")) == errno.EROFS
    assert errno_of(lambda: open(root / "new.csv", "w")) == errno.EROFS


# 3. The tree

def test_s3_1_virtual_directories_are_0555_and_refuse_changes_with_erofs(tree):
    for directory in (tree.mnt, tree.mnt / "s3", tree.mnt / "host"):
        assert stat.S_IMODE(os.stat(directory).st_mode) == 0o555
    for change in (lambda: os.mkdir(tree.mnt / "new"), lambda: open(tree.mnt / "s3" / "file", "w"),
                   lambda: os.rmdir(tree.mnt / "web"), lambda: os.rename(tree.mnt / "web", tree.mnt / "www"),
                   lambda: os.chmod(tree.mnt / "s3", 0o755),
                   lambda: os.setxattr(tree.mnt / "s3", "user.x", b"1")):
        assert errno_of(change) == errno.EROFS


def test_s3_2_read_only_volumes_refuse_every_change_with_erofs(tree):
    for root, name in ((tree.host_ro, "hello.txt"), (tree.s3_ro, "a.txt")):
        for change in (lambda: open(root / name, "r+b"), lambda: open(root / name, "wb"),
                       lambda: open(root / "new", "w"), lambda: os.mkdir(root / "d"), lambda: os.unlink(root / name),
                       lambda: os.rename(root / name, root / "moved"), lambda: os.chmod(root / name, 0o600),
                       lambda: os.utime(root / name, (1, 1)), lambda: os.truncate(root / name, 0),
                       lambda: os.setxattr(root / name, "user.x", b"1")):
            assert errno_of(change) == errno.EROFS, (root, change)
    assert (tree.host_ro / "hello.txt").read_text() == "hello\n"


def test_s3_3_across_volumes_a_rename_is_exdev_unless_a_side_is_read_only(tree):
    (tree.host_rw / "cross.txt").write_bytes(b"crossing")
    assert errno_of(lambda: os.rename(tree.host_rw / "cross.txt", tree.s3_rw / "cross.txt")) == errno.EXDEV
    assert errno_of(lambda: os.link(tree.host_rw / "cross.txt", tree.s3_rw / "cross.txt")) == errno.EXDEV
    assert errno_of(lambda: os.rename(tree.host_rw / "cross.txt", tree.host_ro / "cross.txt")) == errno.EROFS
    assert errno_of(lambda: os.rename(tree.s3_ro / "a.txt", tree.s3_rw / "a.txt")) == errno.EROFS
    subprocess.run(["mv", str(tree.host_rw / "cross.txt"), str(tree.s3_rw / "crossed.txt")], check=True)
    assert (tree.s3_rw / "crossed.txt").read_bytes() == b"crossing"
    assert not (tree.host_rw / "cross.txt").exists()


def test_s3_4_a_reload_adds_volumes_at_once_and_removes_them_once_unused(workspace, mount):
    links = workspace / "links"
    for name in ("first", "second"):
        (links / name).mkdir()
        (links / name / f"{name}.txt").write_text(f"{name}\n")

    def config(*names):
        volumes = " ".join(f'{name} {{ source: "file://{links}/{name}", mode: rw }}' for name in names)
        return write_config(workspace, f'link_mounts: ["{links}"]\nvolumes {{ {volumes} }}')

    daemon = mount(config("first"), workspace / "mnt")
    mnt = workspace / "mnt"
    assert os.listdir(mnt) == ["first"]
    with open(mnt / "first" / "first.txt", "rb") as still_open:
        config("second")
        daemon.process.send_signal(signal.SIGHUP)
        wait_for(lambda: (mnt / "second" / "second.txt").exists(), UPLOADED, "the volume the reload added")
        assert sorted(os.listdir(mnt)) == ["first", "second"]  # the removed one stays while a file of it is open
        assert still_open.read() == b"first\n"
    # The listing changes as the volume leaves; the kernel forgets its name just after, before the log says so.
    wait_for(lambda: "volume first removed" in daemon.log(), UPLOADED, "the removed volume gone once nothing of it is open")
    assert os.listdir(mnt) == ["second"]
    assert errno_of(lambda: os.stat(mnt / "first")) == errno.ENOENT


# 4. Names in object volumes

def test_s4_prefixes_are_directories_and_keys_that_cannot_be_names_are_not_shown(tree):
    root = tree.s3_ro
    assert stat.S_ISDIR(os.stat(root / "both").st_mode)  # an object and a prefix: the directory
    assert os.listdir(root / "both") == ["inside.txt"]
    assert os.listdir(root / "empty") == []  # a marker alone
    assert os.listdir(root / "odd") == []  # odd//name has an empty segment
    assert os.listdir(root / "dots") == []  # dots/../escape has a ".." segment
    assert os.stat(root / "nested").st_nlink == 2  # whatever subdirectories it holds
    assert errno_of(lambda: os.stat(root / ("n" * 256))) == errno.ENAMETOOLONG
    assert errno_of(lambda: open(tree.s3_rw / ("n" * 256), "w")) == errno.ENAMETOOLONG
    deep = tree.s3_rw / "deep" / ("d" * 250) / ("d" * 250) / ("d" * 250) / ("d" * 250)  # a key of 1,008 bytes
    os.makedirs(deep)
    assert errno_of(lambda: open(deep / ("k" * 20), "w")) == errno.ENAMETOOLONG  # 1,029 bytes
    (deep / ("k" * 10)).write_bytes(b"fits")  # 1,019 bytes


# 5. Open and read

def test_s5_a_handle_reads_its_version_or_fails_with_estale_and_a_later_open_sees_the_new_one(tree):
    path = tree.s3_fresh / "changing.bin"
    new = os.urandom(len(CHANGING))
    with open(path, "rb", buffering=0) as stream:
        assert os.pread(stream.fileno(), 100, 0) == CHANGING[:100]
        tree.ro.put("changing.bin", new)
        assert errno_of(lambda: os.pread(stream.fileno(), 100, 3 * BLOCK + 512 * 1024)) == errno.ESTALE
        assert os.pread(stream.fileno(), 100, 0) == CHANGING[:100]  # cached bytes of its version

    def new_version_seen():
        with open(path, "rb", buffering=0) as stream:
            return os.pread(stream.fileno(), 100, 3 * BLOCK) == new[3 * BLOCK:3 * BLOCK + 100]

    wait_for(new_version_seen, UPLOADED, "the new version, after the TTL")
    assert hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(new).digest()


def test_s5_files_and_directories_are_opened_as_what_they_are(tree):
    assert errno_of(lambda: open(tree.s3_ro / "both", "rb")) == errno.EISDIR
    assert errno_of(lambda: os.listdir(tree.s3_ro / "a.txt")) == errno.ENOTDIR
    with open(tree.s3_ro / "big.bin", "rb", buffering=0) as stream:
        assert os.pread(stream.fileno(), 1000, BLOCK - 500) == RO_OBJECTS["big.bin"][BLOCK - 500:BLOCK + 500]
    fd = os.open(tree.s3_ro / "big.bin", os.O_RDONLY | os.O_DIRECT)
    try:
        assert os.pread(fd, 4096, 2 * BLOCK) == RO_OBJECTS["big.bin"][2 * BLOCK:2 * BLOCK + 4096]
    finally:
        os.close(fd)


# 6. Write, close and fsync

def test_s6_a_close_is_local_and_the_upload_follows_after_write_back(tree):
    path = tree.s3_rw / "closed.txt"
    started = time.monotonic()
    path.write_bytes(b"closed, not yet uploaded\n")
    if time.monotonic() - started < WRITE_BACK / 2:
        assert "closed.txt" not in tree.rw.keys()
    assert path.read_bytes() == b"closed, not yet uploaded\n"  # the daemon's own view at once
    assert os.stat(path).st_size == 25 and "closed.txt" in os.listdir(tree.s3_rw)
    wait_for(lambda: "closed.txt" in tree.rw.keys(), UPLOADED, "the upload after write_back")
    assert tree.rw.get("closed.txt") == b"closed, not yet uploaded\n"


def test_s6_fsync_uploads_now_and_random_writes_and_truncates_work(tree):
    path = tree.s3_rw / "old.txt"
    with open(path, "r+b") as stream:
        stream.seek(4)
        stream.write(b"BYTES")
        stream.flush()
        stream.truncate(12)
        stream.seek(0, os.SEEK_END)
        stream.write(b"+appended")
        stream.flush()
        os.fsync(stream.fileno())
        assert tree.rw.get("old.txt") == b"old BYTES\n\0\0+appended"
    assert path.read_bytes() == b"old BYTES\n\0\0+appended"


def test_s6_fsync_of_a_directory_uploads_every_file_waiting_under_it(tree):
    directory = tree.s3_rw / "synced"
    directory.mkdir()
    for name in ("one", "two"):
        (directory / name).write_bytes(name.encode())
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    assert tree.rw.get("synced/one") == b"one" and tree.rw.get("synced/two") == b"two"


def rw_volume(workspace, mount, moto, staging: str, objects: dict[str, bytes] | None = None):
    """(volume root, bucket) of an rw volume of its own, on a new bucket holding OBJECTS, with STAGING's keys."""
    bucket = S3Bucket(moto, objects)
    config = write_config(workspace, f"""
        cache {{ dir: "{workspace}/cache", block_size: 1MiB }}
        staging {{ {staging} }}
        credentials {{ s3: [ {{ key: test, secret: test }} ] }}
        volumes {{ bucket {{ source: "s3://{bucket}/", endpoint: "{moto.url}", mode: rw }} }}
    """)
    daemon = mount(config, workspace / "mnt")
    return workspace / "mnt" / "bucket", bucket, daemon, config


def test_s6_staging_is_bounded_enospc_and_efbig_and_what_was_staged_stays(workspace, mount, moto):
    root, bucket, _, _ = rw_volume(workspace, mount, moto, "write_back: 1h, max_size: 4MiB")
    (root / "before").write_bytes(b"b" * BLOCK)
    with pytest.raises(OSError) as error:
        with open(root / "too-big", "wb") as stream:
            for _ in range(4):
                stream.write(b"x" * BLOCK)
                stream.flush()
    assert error.value.errno == errno.ENOSPC
    with open(root / "sparse", "wb") as stream:
        assert errno_of(lambda: os.ftruncate(stream.fileno(), 5 * BLOCK)) == errno.EFBIG
        assert errno_of(lambda: os.ftruncate(stream.fileno(), 3 * BLOCK)) == errno.ENOSPC
    assert (root / "before").read_bytes() == b"b" * BLOCK
    with open(root / "before", "rb") as stream:
        os.fsync(stream.fileno())
    assert bucket.get("before") == b"b" * BLOCK


def test_s6_a_removed_file_gives_its_staging_space_back(workspace, mount, moto):
    root, _, _, _ = rw_volume(workspace, mount, moto, "write_back: 1h, max_size: 1536KiB")  # one file of 1 MiB
    for attempt in range(3):  # an editor's swap file, written, closed and removed, again and again
        (root / "swap").write_bytes(b"s" * BLOCK)
        os.unlink(root / "swap")
    (root / "after").write_bytes(b"a" * BLOCK)
    assert (root / "after").read_bytes() == b"a" * BLOCK


# 7. Create and mknod

def test_s7_create_exclusive_modes_and_special_files(tree):
    root = tree.s3_rw
    assert errno_of(lambda: os.open(root / "old.txt", os.O_CREAT | os.O_EXCL | os.O_WRONLY)) == errno.EEXIST
    umask = os.umask(0o022)
    try:
        fd = os.open(root / "made.txt", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o640)
        os.close(fd)
    finally:
        os.umask(umask)
    made = os.stat(root / "made.txt")
    assert stat.S_IMODE(made.st_mode) == 0o640 and (made.st_uid, made.st_gid) == (os.getuid(), os.getgid())
    assert "made.txt" in os.listdir(root)
    os.chmod(root / "made.txt", 0o600)
    fd = os.open(root / "made.txt", os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o666)  # an existing file keeps its mode
    os.close(fd)
    assert stat.S_IMODE(os.stat(root / "made.txt").st_mode) == 0o600
    assert errno_of(lambda: os.mkfifo(root / "fifo")) == errno.EPERM
    assert errno_of(lambda: os.mknod(root / "dev", stat.S_IFCHR | 0o600, os.makedev(1, 3))) == errno.EPERM
    os.mknod(root / "node")
    assert (root / "node").read_bytes() == b""


# 8. mkdir and rmdir

def test_s8_mkdir_writes_a_marker_and_rmdir_refuses_what_holds_anything(tree):
    root = tree.s3_rw
    os.mkdir(root / "made")
    assert "made/" in tree.rw.keys()
    assert errno_of(lambda: os.mkdir(root / "made")) == errno.EEXIST
    (root / "made" / "staged").write_bytes(b"waiting for its upload")
    assert errno_of(lambda: os.rmdir(root / "made")) == errno.ENOTEMPTY
    assert errno_of(lambda: os.rmdir(root / "old.txt")) == errno.ENOTDIR
    os.unlink(root / "made" / "staged")
    os.rmdir(root / "made")
    assert "made/" not in tree.rw.keys() and not (root / "made").exists()
    assert os.listdir(root / "implicit") == ["only"]
    os.unlink(root / "implicit" / "only")
    assert os.listdir(root / "implicit") == []  # a prefix alone goes with its last object
    wait_for(lambda: "implicit" not in os.listdir(root) and not (root / "implicit").exists(), UPLOADED,
             "the parent's listing and the name renewed after their TTL")


# 9. Rename

def test_s9_renaming_a_file_copies_and_deletes_and_a_staged_one_goes_up_once_under_its_new_name(tree):
    root = tree.s3_rw
    os.rename(root / "ren" / "a.txt", root / "ren" / "b.txt")
    keys = tree.rw.keys()
    assert "ren/b.txt" in keys and "ren/a.txt" not in keys
    assert tree.rw.get("ren/b.txt") == b"rename me\n"
    (root / "ren" / "draft.tmp").write_bytes(b"final bytes")
    os.rename(root / "ren" / "draft.tmp", root / "ren" / "final.txt")
    wait_for(lambda: "ren/final.txt" in tree.rw.keys(), UPLOADED, "the upload under the new name")
    assert tree.rw.get("ren/final.txt") == b"final bytes"
    assert "ren/draft.tmp" not in tree.rw.keys()


def test_s9_renaming_a_directory_is_bounded_by_rename_limit_and_flags_are_checked(tree):
    root = tree.s3_rw
    os.rename(root / "two", root / "three")
    assert sorted(os.listdir(root / "three")) == ["x", "y"]
    assert sorted(key for key in tree.rw.keys() if key.startswith(("two/", "three/"))) == ["three/x", "three/y"]
    assert errno_of(lambda: os.rename(root / "many", root / "lots")) == errno.EXDEV  # 5 objects, rename_limit 3
    assert sorted(os.listdir(root / "many")) == ["0", "1", "2", "3", "4"]
    assert errno_of(lambda: os.rename(root / "three", root / "many")) == errno.ENOTEMPTY
    assert errno_of(lambda: os.rename(root / "old.txt", root / "three")) == errno.EISDIR
    assert errno_of(lambda: os.rename(root / "three", root / "old.txt")) == errno.ENOTDIR
    (root / "other.txt").write_bytes(b"other")
    assert errno_of(lambda: renameat2(root / "other.txt", root / "old.txt", RENAME_NOREPLACE)) == errno.EEXIST
    assert errno_of(lambda: renameat2(root / "other.txt", root / "old.txt", RENAME_EXCHANGE)) == errno.EINVAL
    assert (root / "other.txt").read_bytes() == b"other"


# 10. Unlink

def test_s10_unlink_deletes_and_open_handles_keep_what_they_can(tree):
    root = tree.s3_rw
    (root / "never.txt").write_bytes(b"gone before its upload")
    with open(root / "never.txt", "rb") as staged:
        os.unlink(root / "never.txt")
        assert os.fstat(staged.fileno()).st_nlink == 0
        assert staged.read() == b"gone before its upload"  # a staged file's handles keep its bytes
    assert not (root / "never.txt").exists()
    with open(root / "unlinkme.bin", "rb", buffering=0) as stream:
        assert os.pread(stream.fileno(), 100, 0) == RW_OBJECTS["unlinkme.bin"][:100]
        os.unlink(root / "unlinkme.bin")
        assert "unlinkme.bin" not in tree.rw.keys()
        assert os.fstat(stream.fileno()).st_nlink == 0
        assert os.pread(stream.fileno(), 100, 0) == RW_OBJECTS["unlinkme.bin"][:100]  # cached
        assert errno_of(lambda: os.pread(stream.fileno(), 100, 2 * BLOCK + 512 * 1024)) == errno.ENOENT
    assert errno_of(lambda: os.unlink(root / "many")) == errno.EISDIR
    assert "never.txt" not in tree.rw.keys()


# 11. Links and symlinks

def test_s11_no_hard_links_and_symlinks_are_objects_as_s3fs_makes_them(tree):
    root = tree.s3_rw
    assert errno_of(lambda: os.link(root / "old.txt", root / "hard")) == errno.EPERM
    os.symlink("../somewhere/else", root / "link")
    assert os.readlink(root / "link") == "../somewhere/else"
    assert stat.S_ISLNK(os.lstat(root / "link").st_mode)
    assert tree.rw.get("link") == b"../somewhere/else"
    assert stat.S_ISLNK(int(tree.rw.metadata("link")["mode"]))
    assert errno_of(lambda: os.readlink(root / "old.txt")) == errno.EINVAL


# 12. Owners, modes and times

def test_s12_modes_owners_and_times_live_in_the_objects_metadata(tree):
    root, path = tree.s3_rw, tree.s3_rw / "ren" / "b.txt"
    os.chmod(path, 0o600)
    assert int(tree.rw.metadata("ren/b.txt")["mode"]) == stat.S_IFREG | 0o600  # at once: not staged
    os.chown(path, 1234, 4321)
    os.utime(path, ns=(1_600_000_000_500_000_000, 1_600_000_000_500_000_000))
    metadata = tree.rw.metadata("ren/b.txt")
    assert (metadata["uid"], metadata["gid"]) == ("1234", "4321")
    assert float(metadata["mtime"]) == pytest.approx(1_600_000_000.5)
    seen = os.stat(path)
    assert (stat.S_IMODE(seen.st_mode), seen.st_uid, seen.st_gid) == (0o600, 1234, 4321)
    assert seen.st_mtime_ns == seen.st_atime_ns == seen.st_ctime_ns == 1_600_000_000_500_000_000
    assert tree.rw.get("ren/b.txt") == b"rename me\n"
    assert stat.S_IMODE(os.stat(root / "many").st_mode) == 0o755  # an implicit directory
    os.chmod(root / "many", 0o700)
    assert "many/" in tree.rw.keys()  # it has a marker now
    assert stat.S_IMODE(os.stat(root / "many").st_mode) == 0o700


# 13. Extended attributes

def test_s13_user_xattrs_are_kept_in_the_object_and_fsmounts_own_are_read_only(tree):
    path = tree.s3_rw / "three" / "x"
    os.setxattr(path, "user.colour", b"blue")
    assert os.getxattr(path, "user.colour") == b"blue"
    assert "xattr" in tree.rw.metadata("three/x")
    assert "user.colour" in os.listxattr(path)
    assert errno_of(lambda: os.getxattr(path, "user.missing")) == errno.ENODATA
    assert errno_of(lambda: os.setxattr(path, "trusted.colour", b"red")) == errno.ENOTSUP
    assert errno_of(lambda: os.setxattr(path, "user.big", os.urandom(3000))) == errno.ENOSPC
    etag = os.getxattr(tree.s3_ro / "a.txt", "user.fsmount.etag").decode()
    assert etag and etag.strip('"') == etag
    assert errno_of(lambda: os.setxattr(path, "user.fsmount.etag", b"x")) == errno.EPERM
    assert os.getxattr(tree.mnt / "web" / "a.csv", "user.fsmount.url").decode().endswith("/data/a.csv")


# 14. Listings and readdir

def test_s14_listings_show_this_daemons_files_at_once_each_name_once(tree):
    root = tree.s3_rw / "listing"
    root.mkdir()
    for name in ("b", "a", "c"):
        (root / name).write_bytes(name.encode() * 3)
    entries = {entry.name: entry.stat().st_size for entry in os.scandir(root)}
    assert entries == {"a": 3, "b": 3, "c": 3}  # listed before they are uploaded
    os.unlink(root / "b")
    assert sorted(os.listdir(root)) == ["a", "c"]


# 15. Metadata caching and TTLs

def test_s15_a_cached_listing_hides_new_names_until_its_ttl_and_misses_last_a_second(tree):
    assert os.listdir(tree.s3_ro / "ttl") == ["present"]  # s3/ro trusts it for 60 s
    assert os.listdir(tree.s3_fresh / "ttl") == ["present"]  # s3/fresh for 2 s
    tree.ro.put("ttl/new", b"made by another client\n")
    assert not (tree.s3_ro / "ttl" / "new").exists()
    assert os.listdir(tree.s3_ro / "ttl") == ["present"]
    assert os.listdir(tree.s3_fresh / "ttl") == ["present"]  # until its TTL
    wait_for(lambda: (tree.s3_fresh / "ttl" / "new").exists(), UPLOADED, "the new name after the TTL")
    # neg/ was never listed: a miss there is remembered for 1 s only, even in a volume whose TTL is 60 s
    assert errno_of(lambda: os.stat(tree.s3_ro / "neg" / "later")) == errno.ENOENT
    tree.ro.put("neg/later", b"made after the miss\n")
    assert not (tree.s3_ro / "neg" / "later").exists()  # the miss, remembered
    wait_for(lambda: (tree.s3_ro / "neg" / "later").exists(), UPLOADED, "the name once its miss expired")
    assert (tree.s3_ro / "neg" / "later").read_bytes() == b"made after the miss\n"


# 16. Concurrent access

def test_s16_handles_of_one_file_share_its_staged_copy(tree):
    path = tree.s3_rw / "shared.txt"
    path.write_bytes(b"0123456789")
    with open(path, "r+b", buffering=0) as one, open(path, "rb", buffering=0) as two:
        one.write(b"AB")
        assert os.pread(two.fileno(), 10, 0) == b"AB23456789"
        os.pwrite(one.fileno(), b"Z", 9)
        assert os.pread(two.fileno(), 10, 0) == b"AB2345678Z"
    with open(path, "rb") as stream:
        os.fsync(stream.fileno())
    assert tree.rw.get("shared.txt") == b"AB2345678Z"


def test_s16_a_second_daemon_on_the_same_cache_directory_is_refused(tree, tmp_path, moto):
    (tmp_path / "mnt").mkdir()
    config = write_config(tmp_path, f"""
        cache {{ dir: "{tree.base}/cache" }}
        credentials {{ s3: [ {{ key: test, secret: test }} ] }}
        volumes {{ again {{ source: "s3://{tree.ro}/", endpoint: "{moto.url}" }} }}
    """)
    result = subprocess.run([FSMOUNT, "mount", str(config), str(tmp_path / "mnt"), "--foreground"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "in use by another fsmount" in result.stderr
    assert os.listdir(tree.s3_ro / "both") == ["inside.txt"]  # the first goes on


# 17. What a crash leaves

@pytest.mark.expect_log(
    r"WARNING fsmount\.staging\.area: \S+ open was still being written when fsmount stopped; it was never closed, so it is not uploaded: ",
)
def test_s17_a_killed_daemon_leaves_enotconn_and_its_next_start_uploads_what_was_closed(workspace, mount, moto):
    root, bucket, daemon, config = rw_volume(workspace, mount, moto, "write_back: 1h")
    (root / "draft").write_bytes(b"closed before the kill\n")
    os.chmod(root / "draft", 0o600)
    os.rename(root / "draft", root / "final")
    writer = subprocess.Popen([sys.executable, "-c", "import sys, time\n"
                               "stream = open(sys.argv[1], 'wb'); stream.write(b'never closed'); stream.flush()\n"
                               "print('written', flush=True); time.sleep(60)", str(root / "open")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline() == "written\n"
        assert bucket.keys() == []
        daemon.process.kill()
        daemon.process.wait()
        assert errno_of(lambda: os.stat(root)) == errno.ENOTCONN
    finally:
        writer.kill()
        writer.wait()
    daemon.stop()
    daemon = mount(config, workspace / "mnt")
    wait_for(lambda: "final" in bucket.keys(), UPLOADED, "the closed file, uploaded at the next start")
    assert bucket.get("final") == b"closed before the kill\n"
    assert int(bucket.metadata("final")["mode"]) == stat.S_IFREG | 0o600
    assert sorted(bucket.keys()) == ["final"]  # neither its first name nor the file never closed
    (kept,) = (workspace / "cache" / "staging" / "kept").iterdir()
    assert kept.read_bytes() == b"never closed"
    assert str(kept) in daemon.log()
    # section 19: a tree without host volumes reports 1 PiB
    space = os.statvfs(workspace / "mnt")
    assert space.f_blocks * space.f_frsize == 2**50 and space.f_bavail * space.f_frsize == 2**50


# 18. Errors

@pytest.mark.expect_log(
    r"ERROR fsmount\.stores\.s3: bucket no-such-bucket-for-semantics does not exist at \S+: listing and reading its volume fail with EIO$",
)
def test_s18_errors_are_the_errnos_the_contract_names(tree):
    missing = tree.mnt / "s3" / "missing"
    assert errno_of(lambda: os.listdir(missing)) == errno.EIO  # a bucket that does not exist
    assert errno_of(lambda: os.stat(missing / "file")) == errno.EIO
    assert errno_of(lambda: os.stat(tree.s3_ro / "absent")) == errno.ENOENT
    assert errno_of(lambda: os.unlink(tree.s3_rw / "absent")) == errno.ENOENT
    assert errno_of(lambda: os.symlink("x", tree.s3_rw / "old.txt")) == errno.EEXIST
    assert errno_of(lambda: os.readlink(tree.s3_ro / "a.txt")) == errno.EINVAL
    assert errno_of(lambda: os.rmdir(tree.s3_rw / "many")) == errno.ENOTEMPTY


# 19. statfs

def test_s19_statfs_sums_the_host_file_systems_behind_host_volumes(tree):
    host, mounted = os.statvfs(tree.links), os.statvfs(tree.mnt)
    assert mounted.f_namemax == 255
    assert mounted.f_blocks == host.f_blocks * host.f_frsize // mounted.f_frsize
    assert os.statvfs(tree.s3_rw).f_blocks == mounted.f_blocks  # one answer for every path
