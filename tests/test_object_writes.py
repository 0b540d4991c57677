"""Writing to rw object store volumes through a real mount: everyday tools, namespace calls, nothing lost, on every
kind of store (moto, Azurite, fake-gcs-server), and what only S3's request log shows, on moto."""
import concurrent.futures
import contextlib
import errno
import hashlib
import itertools
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import FSMOUNT, wait_for, write_config
from buckets import KINDS, S3Bucket, new_bucket
from servers import Proxy
from fsmount.volumes.object_reads import SEEKS_AT_RANDOM
from test_object_volume import drop_page_cache, volume_config

pytestmark = pytest.mark.mount

PART = 5 * 2**20


def mount_rw(workspace, mount, bucket):
    """(volume root, bucket, daemon) of an rw volume of BUCKET, whose files of over 5 MiB go up in parts."""
    daemon = mount(volume_config(workspace, bucket, extra="mode: rw", staging="part_size: 5MiB, multipart_threshold: 5MiB"),
                   workspace / "mnt")
    return workspace / "mnt" / "bucket", bucket, daemon


OLD = {"old.txt": b"old bytes\n", "dir/inside.txt": b"inside\n"}


@pytest.fixture(params=[*KINDS, "seaweedfs"])
def rw(request, workspace, mount):
    """An rw volume on a bucket holding `old.txt` and `dir/inside.txt`, on each kind of store, and on an
    S3-compatible server that keeps directories of its own."""
    return mount_rw(workspace, mount, new_bucket(request, request.param, OLD))


@pytest.fixture
def s3_rw(workspace, moto, mount):
    """The same on moto, whose request log the test reads."""
    return mount_rw(workspace, mount, S3Bucket(moto, OLD))


def test_a_new_file_is_on_the_server_after_close(rw):
    root, bucket, _ = rw
    (root / "new.txt").write_bytes(b"fresh\n")
    assert bucket.get("new.txt") == b"fresh\n"
    assert (root / "new.txt").read_bytes() == b"fresh\n"
    assert os.stat(root / "new.txt").st_size == 6
    assert "new.txt" in os.listdir(root)


def test_a_large_file_goes_up_in_parts(rw):
    root, bucket, _ = rw
    data = os.urandom(3 * PART + 4321)
    (root / "big.bin").write_bytes(data)
    assert bucket.get("big.bin") == data
    assert (root / "big.bin").read_bytes() == data


def test_a_written_file_reads_back_without_a_get(s3_rw, moto):
    root, bucket, _ = s3_rw
    data = os.urandom(2 * PART)
    (root / "back.bin").write_bytes(data)
    gets = lambda: moto.requests("GET", f"/{bucket}/back.bin")
    wait_for(lambda: not list((root.parent.parent / "cache" / "staging" / "files").iterdir()), 10,
             "the staged copy to move into the cache")
    drop_page_cache()
    assert (root / "back.bin").read_bytes() == data
    assert gets() == 0


def test_random_writes_appends_and_truncates_are_staged_and_read_back(rw):
    root, bucket, _ = rw
    path = root / "old.txt"
    with open(path, "r+b") as stream:
        stream.seek(4)
        stream.write(b"BYTES")
        stream.flush()
        with open(path, "rb") as reader:  # a reader opened meanwhile sees the staged bytes
            assert reader.read() == b"old BYTES\n"
    with open(path, "ab") as stream:
        stream.write(b"and more")
    assert bucket.get("old.txt") == b"old BYTES\nand more"
    os.truncate(path, 3)
    assert bucket.get("old.txt") == b"old" == path.read_bytes()
    with open(path, "r+b") as stream:
        stream.truncate(10)
    assert bucket.get("old.txt") == b"old" + bytes(7)


def test_a_file_read_at_random_and_then_written_keeps_the_written_bytes(s3_rw):
    """The daemon puts a file read at random into the kernel's pages; a writer must never see those
    pages overwritten with the bytes it replaced."""
    root, bucket, daemon = s3_rw
    data = bytearray(os.urandom(16 * 2**20))
    bucket.put("random.bin", bytes(data))
    path = root / "random.bin"
    with open(path, "rb", buffering=0) as reader:
        for offset in [(index * 7 + 3) % 128 * 2**17 for index in range(SEEKS_AT_RANDOM)]:  # read at random
            assert os.pread(reader.fileno(), 4096, offset) == data[offset:offset + 4096]
        with open(path, "r+b", buffering=0) as writer:
            for offset in range(0, len(data), 2**20 + 4096):
                os.pwrite(writer.fileno(), b"w" * 8192, offset)
                data[offset:offset + 8192] = b"w" * 8192
        assert hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(data).digest()
        daemon.wait_settled()  # the fill of the bytes replaced is over: its pages, had they come late, would show
        assert hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(data).digest()
    assert bucket.get("random.bin") == bytes(data)


def test_an_open_for_writing_that_only_reads_uploads_nothing(s3_rw, moto):
    root, bucket, daemon = s3_rw
    puts = lambda: moto.requests("PUT", f"/{bucket}/old.txt")
    before = puts()
    with open(root / "old.txt", "r+b") as stream:
        assert stream.read() == b"old bytes\n"
    daemon.wait_settled()
    assert puts() == before


def test_two_handles_share_the_file_and_the_last_close_wins(rw):
    root, bucket, _ = rw
    first, second = open(root / "shared", "wb"), open(root / "shared", "r+b")
    first.write(b"first")
    first.flush()
    second.seek(5)
    second.write(b"+second")
    first.close()
    second.close()
    assert bucket.get("shared") == b"first+second"


def test_mkdir_rmdir_and_unlink(rw):
    root, bucket, _ = rw
    os.mkdir(root / "made")
    assert "made/" in bucket.keys()
    with pytest.raises(FileExistsError):
        os.mkdir(root / "made")
    (root / "made" / "file").write_bytes(b"x")
    with pytest.raises(OSError) as error:
        os.rmdir(root / "made")
    assert error.value.errno == errno.ENOTEMPTY
    os.unlink(root / "made" / "file")
    assert os.listdir(root / "made") == []
    os.rmdir(root / "made")
    assert "made" not in os.listdir(root)
    assert not any(key.startswith("made") for key in bucket.keys())
    with pytest.raises(FileNotFoundError):
        os.unlink(root / "absent")
    with pytest.raises(IsADirectoryError):
        os.unlink(root / "dir")


def test_a_file_unlinked_while_open_has_no_link_left_and_stays_readable(s3_rw):
    root, bucket, _ = s3_rw
    with open(root / "old.txt", "rb") as reader, open(root / "open.txt", "w+b") as writer:
        assert reader.read() == OLD["old.txt"]  # in the cache now: the store's copy goes with the unlink
        writer.write(b"still here")
        writer.flush()
        os.unlink(root / "old.txt")
        os.unlink(root / "open.txt")
        assert os.fstat(reader.fileno()).st_nlink == 0 and os.fstat(writer.fileno()).st_nlink == 0  # pjdfstest unlink/14
        assert os.pread(reader.fileno(), 100, 0) == OLD["old.txt"] and os.pread(writer.fileno(), 100, 0) == b"still here"
    assert "old.txt" not in bucket.keys() and "open.txt" not in bucket.keys()


def test_a_directory_s_time_moves_when_a_name_in_it_is_made_or_removed_here(rw):
    root, _, _ = rw
    os.mkdir(root / "timed")
    os.mkdir(root / "other")
    times = [os.stat(root / "timed").st_mtime_ns]
    for change in (lambda: (root / "timed" / "f").write_bytes(b"x"), lambda: os.mkdir(root / "timed" / "sub"),
                   lambda: os.rename(root / "timed" / "f", root / "other" / "f"), lambda: os.rmdir(root / "timed" / "sub")):
        time.sleep(0.01)
        change()
        times.append(os.stat(root / "timed").st_mtime_ns)
        assert os.stat(root / "timed").st_ctime_ns == times[-1]
    assert times == sorted(set(times))  # each change moved it on
    (root / "other" / "f").write_bytes(b"new bytes")  # a file's contents are no change to its directory
    assert os.stat(root / "timed").st_mtime_ns == times[-1]
    assert os.stat(root / "other").st_mtime_ns > times[2]  # the rename's other side


def test_rename_a_file_replaces_the_target(rw):
    root, bucket, _ = rw
    (root / "target").write_bytes(b"to be replaced")
    (root / "source").write_bytes(b"replacement")
    os.rename(root / "source", root / "target")
    assert bucket.get("target") == b"replacement" == (root / "target").read_bytes()
    assert "source" not in bucket.keys() and not (root / "source").exists()


def test_rename_a_directory_moves_every_object(rw):
    root, bucket, _ = rw
    (root / "dir" / "sub").mkdir()
    (root / "dir" / "sub" / "deep.txt").write_bytes(b"deep")
    os.rename(root / "dir", root / "moved")
    assert sorted(os.listdir(root / "moved")) == ["inside.txt", "sub"]
    assert (root / "moved" / "sub" / "deep.txt").read_bytes() == b"deep"
    assert sorted(key for key in bucket.keys() if key.startswith(("dir", "moved"))) == [
        "moved/inside.txt", "moved/sub/", "moved/sub/deep.txt"]
    assert not (root / "dir").exists()
    (root / "empty").mkdir()
    os.rename(root / "moved" / "sub", root / "empty")  # over an empty directory, which it replaces
    assert os.listdir(root / "empty") == ["deep.txt"]
    assert sorted(key for key in bucket.keys() if key.startswith(("moved", "empty"))) == [
        "empty/", "empty/deep.txt", "moved/inside.txt"]


def test_a_name_or_key_longer_than_may_be_is_enametoolong(rw):
    """255 bytes a name (statvfs's f_namemax), 1024 a key (every store's bound): a store would refuse
    it only at the upload, long after the program that named it was told all was well."""
    root, bucket, _ = rw
    deep = root.joinpath(*["d" * 200] * 4)
    deep.mkdir(parents=True)
    for path in (root / ("n" * 256), deep / ("k" * 230)):
        for make in (Path.touch, Path.mkdir, (root / "old.txt").rename, (root / "dir").rename):
            with pytest.raises(OSError) as error:
                make(path)
            assert error.value.errno == errno.ENAMETOOLONG, (make, path)
    assert sorted(key for key in bucket.keys() if "d" * 200 not in key) == ["dir/inside.txt", "old.txt"]
    (deep / ("k" * 100)).write_bytes(b"fits")
    assert bucket.get(str((deep / ("k" * 100)).relative_to(root))) == b"fits"


def test_renaming_a_directory_of_too_many_objects_is_exdev_and_mv_copies(workspace, moto, mount):
    bucket = S3Bucket(moto, {f"many/{index}": b"x" for index in range(5)})
    mount(volume_config(workspace, bucket, extra="mode: rw, rename_limit: 3"), workspace / "mnt")
    root = workspace / "mnt" / "bucket"
    with pytest.raises(OSError) as error:
        os.rename(root / "many", root / "other")
    assert error.value.errno == errno.EXDEV
    subprocess.run(["mv", str(root / "many"), str(root / "other")], check=True)
    assert sorted(os.listdir(root / "other")) == [str(index) for index in range(5)]
    assert not (root / "many").exists()


def test_times_set_are_kept_and_chmod_is_accepted(rw):
    root, bucket, _ = rw
    os.utime(root / "old.txt", ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))
    assert os.stat(root / "old.txt").st_mtime_ns == 1_600_000_000_123_456_789
    assert bucket.metadata("old.txt")["mtime"] == "1600000000.123456789"
    assert bucket.get("old.txt") == b"old bytes\n"
    os.chmod(root / "old.txt", 0o600)
    os.chown(root / "old.txt", 0, 0)
    listed = subprocess.run(["ls", "-l", "--time-style=+%s", str(root)], check=True, capture_output=True, text=True)
    assert " 1600000000 old.txt" in listed.stdout


def file_modes(root: Path) -> list[str]:
    """Each file's permissions under ROOT as `find` shows them, from listings (find reads directories first)."""
    return sorted(subprocess.run(["find", str(root), "-type", "f", "-printf", "%P %m\\n"], check=True,
                                 capture_output=True, text=True).stdout.splitlines())


def test_modes_are_kept_in_metadata_and_a_script_made_executable_runs(rw, mount):
    root, bucket, daemon = rw
    script = root / "run.sh"
    script.write_text("#!/bin/sh\necho ran\n")
    assert stat.S_IMODE(os.stat(script).st_mode) == 0o644
    os.chmod(script, 0o755)
    assert subprocess.run([str(script)], check=True, capture_output=True, text=True).stdout == "ran\n"
    assert bucket.metadata("run.sh")["mode"] == str(stat.S_IFREG | 0o755)  # as s3fs keeps it
    os.close(os.open(root / "private", os.O_CREAT | os.O_WRONLY, 0o600))
    assert stat.S_IMODE(os.stat(root / "private").st_mode) == 0o600
    os.rename(root / "run.sh", root / "moved.sh")
    with open(root / "moved.sh", "a") as stream:
        stream.write("echo again\n")
    daemon.stop()
    mount(daemon.config, daemon.mountpoint)
    assert file_modes(root) == ["dir/inside.txt 644", "moved.sh 755", "old.txt 644", "private 600"]
    assert subprocess.run([str(root / "moved.sh")], check=True, capture_output=True, text=True).stdout == "ran\nagain\n"
    assert bucket.metadata("private")["mode"] == str(stat.S_IFREG | 0o600)


def make_tree(root: Path) -> Path:
    """A tree of the shapes users copy: nested directories, an empty file, a file in parts, set times."""
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "empty.txt").write_bytes(b"")
    (root / "small.csv").write_bytes(b"a,b\n1,2\n")
    (root / "sub" / "parts.bin").write_bytes(os.urandom(PART + 777))
    (root / "sub" / "deeper" / "notes.md").write_text("# notes\n")
    for index, path in enumerate(sorted(root.rglob("*"))):
        os.utime(path, ns=(1_500_000_000_000_000_000 + index * 10**9,) * 2)
    return root


def file_times(root: Path) -> list[str]:
    """Each file's mtime under ROOT as `find` shows it."""
    return sorted(subprocess.run(["find", str(root), "-type", "f", "-printf", "%P %T@\\n"], check=True,
                                 capture_output=True, text=True).stdout.splitlines())


def differences(source: Path, copy: Path) -> str:
    """What rsync would change to make COPY like SOURCE, by content and time: empty when they are alike."""
    result = subprocess.run(["rsync", "-a", "-c", "-n", "-i", f"{source}/", f"{copy}/"],
                            check=True, capture_output=True, text=True)
    return "\n".join(line for line in result.stdout.splitlines() if not line.startswith(".d"))  # directory times


def test_cp_r_rsync_and_tar_write_identical_trees(rw, tmp_path):
    root, _, _ = rw
    source = make_tree(tmp_path / "source")
    subprocess.run(["cp", "-r", "--preserve=timestamps", str(source), str(root / "cp")], check=True)
    assert differences(source, root / "cp") == ""
    subprocess.run(["rsync", "-a", f"{source}/", f"{root}/rsync/"], check=True)
    assert differences(source, root / "rsync") == "" == differences(root / "rsync", source)
    again = subprocess.run(["rsync", "-a", "-n", "-i", f"{source}/", f"{root}/rsync/"], check=True,
                           capture_output=True, text=True)
    assert [line for line in again.stdout.splitlines() if not line.startswith(".d")] == []  # times were kept
    subprocess.run(["tar", "cf", str(tmp_path / "tree.tar"), "-C", str(source), "."], check=True)
    (root / "tar").mkdir()
    subprocess.run(["tar", "xf", str(tmp_path / "tree.tar"), "-C", str(root / "tar")], check=True)
    assert differences(source, root / "tar") == ""


def test_an_empty_file_given_a_time_after_close_and_renamed_reaches_the_store(rw):
    """rsync's way with an empty file. Its release (which uploads it) is sent while the time is set,
    so the upload it started lacks the time: one must follow it."""
    root, bucket, _ = rw
    os.close(os.open(root / ".empty.XXXX", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    os.utime(root / ".empty.XXXX", ns=(1_500_000_000_000_000_000,) * 2)
    os.rename(root / ".empty.XXXX", root / "empty")
    wait_for(lambda: "empty" in bucket.keys(), 10, "the empty file in the store")
    assert bucket.get("empty") == b""
    assert bucket.metadata("empty")["mtime"] == "1500000000.000000000"
    assert ".empty.XXXX" not in bucket.keys()


def test_times_set_are_shown_again_after_a_remount(rw, mount, tmp_path):
    """A listing shows no metadata on S3 (nor on Azure unless asked): what the daemon learnt of times
    must outlive it, or a second `rsync -a` after a reboot sends every file again."""
    root, _, daemon = rw
    source = make_tree(tmp_path / "source")
    subprocess.run(["rsync", "-a", f"{source}/", f"{root}/rsync/"], check=True)
    daemon.stop()
    mount(daemon.config, daemon.mountpoint)
    assert file_times(root / "rsync") == file_times(source)  # from listings: find reads directories first
    again = subprocess.run(["rsync", "-a", "-n", "-i", f"{source}/", f"{root}/rsync/"], check=True,
                           capture_output=True, text=True)
    assert [line for line in again.stdout.splitlines() if not line.startswith(".d")] == []
    assert differences(source, root / "rsync") == ""


def test_cp_r_between_every_two_stores_gives_identical_bytes(request, workspace, mount, tmp_path):
    """One config mounts S3, Azure, GCS and a host directory side by side."""
    buckets = {kind: new_bucket(request, kind) for kind in KINDS}
    (workspace / "links" / "host").mkdir()
    mount(write_config(workspace, f"""
        cache {{ dir: "{workspace}/cache" }}
        link_mounts: ["{workspace}/links"]
        {"".join(bucket.config("mode: rw", volume=kind) for kind, bucket in buckets.items())}
        volumes {{ host {{ source: "file://{workspace}/links/host", mode: rw }} }}
    """), workspace / "mnt")
    root, tree = workspace / "mnt", make_tree(tmp_path / "tree")
    names = [*KINDS, "host"]
    for name in names:
        subprocess.run(["cp", "-r", "--preserve=timestamps", str(tree), str(root / name / "tree")], check=True)
    for source, target in itertools.permutations(names, 2):
        copy = root / target / f"from-{source}"
        subprocess.run(["cp", "-r", "--preserve=timestamps", str(root / source / "tree"), str(copy)], check=True)
        assert differences(tree, copy) == "", f"{source} -> {target}"


def test_an_editor_save_writes_a_temporary_file_and_renames_it(rw):
    root, bucket, _ = rw
    with open(root / ".old.txt.swp", "wb") as temporary:
        temporary.write(b"edited\n")
        temporary.flush()
        os.fsync(temporary.fileno())
    os.rename(root / ".old.txt.swp", root / "old.txt")
    assert (root / "old.txt").read_bytes() == b"edited\n" == bucket.get("old.txt")
    assert ".old.txt.swp" not in bucket.keys() + os.listdir(root)


def test_a_sqlite_database_copied_in_is_written_through_the_mount(rw, tmp_path):
    root, bucket, _ = rw
    local = tmp_path / "local.db"
    with contextlib.closing(sqlite3.connect(local)) as db:
        db.execute("CREATE TABLE runs (id INTEGER PRIMARY KEY, loss REAL)")
        db.executemany("INSERT INTO runs (loss) VALUES (?)", [(1.0 / n,) for n in range(1, 2001)])
        db.commit()
    shutil.copy(local, root / "runs.db")
    with contextlib.closing(sqlite3.connect(root / "runs.db")) as db:
        db.execute("INSERT INTO runs (loss) VALUES (0.0)")
        db.execute("DELETE FROM runs WHERE id <= 10")
        db.commit()
    (tmp_path / "back.db").write_bytes(bucket.get("runs.db"))
    with contextlib.closing(sqlite3.connect(tmp_path / "back.db")) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert db.execute("SELECT count(*), min(loss) FROM runs").fetchone() == (1991, 0.0)
    assert bucket.keys() == sorted(["dir/inside.txt", "old.txt", "runs.db"])  # the journal is gone


def test_hard_links_and_special_files_cannot_be_made(rw):
    root, _, _ = rw
    for attempt in (lambda: os.link(root / "old.txt", root / "hard"), lambda: os.mkfifo(root / "fifo")):
        with pytest.raises(OSError) as error:
            attempt()
        assert error.value.errno == errno.EPERM
    os.mknod(root / "node")
    assert (root / "node").read_bytes() == b""


def test_a_full_staging_area_gives_enospc_and_loses_nothing_else(workspace, moto, mount):
    bucket = S3Bucket(moto)
    mount(volume_config(workspace, bucket, extra="mode: rw", staging="max_size: 1MiB"), workspace / "mnt")
    root = workspace / "mnt" / "bucket"
    (root / "fits").write_bytes(b"f" * 2**19)
    with pytest.raises(OSError) as error:
        with open(root / "too-big", "wb") as stream:
            stream.write(b"x" * 2**21)
    assert error.value.errno == errno.ENOSPC
    assert bucket.get("fits") == b"f" * 2**19
    os.unlink(root / "too-big")
    (root / "after").write_bytes(b"a" * 2**19)
    assert bucket.get("after") == b"a" * 2**19


@pytest.fixture(params=KINDS)
def behind_proxy(request, workspace):
    """(config, volume root, bucket, proxy) of an rw volume whose server is reached through a Proxy, on each kind
    of store."""
    bucket = new_bucket(request, request.param)
    proxy = Proxy(bucket.server.port)
    config = volume_config(workspace, bucket, extra="mode: rw", staging="part_size: 5MiB, multipart_threshold: 5MiB",
                           url=proxy.url)
    yield config, workspace / "mnt" / "bucket", bucket, proxy
    proxy.close()


def restart(daemon, mount, config):
    daemon.process.kill()
    daemon.stop()
    return mount(config, daemon.mountpoint)


def status(config) -> str:
    return subprocess.run([FSMOUNT, "status", str(config)], check=True, capture_output=True, text=True).stdout


@pytest.mark.expect_log(
    r"WARNING fsmount\.staging\.area: \S+ unfinished was still being written when fsmount stopped; it was never closed, so it is not uploaded: its bytes are kept in ",
)
def test_a_file_never_closed_when_the_daemon_is_killed_is_kept_aside(behind_proxy, mount, workspace):
    config, root, bucket, _ = behind_proxy
    daemon = mount(config, workspace / "mnt")
    writer = subprocess.Popen([sys.executable, "-c", "import sys, time\n"
                               "stream = open(sys.argv[1], 'wb'); stream.write(b'partial' * 1000); stream.flush()\n"
                               "print('written', flush=True); time.sleep(60)", str(root / "unfinished")],
                              stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline() == "written\n"
    daemon = restart(daemon, mount, config)
    writer.kill()
    writer.wait()
    assert not (root / "unfinished").exists()
    assert bucket.keys() == []
    (kept,) = (workspace / "cache" / "staging" / "kept").iterdir()
    assert kept.read_bytes() == b"partial" * 1000
    assert str(kept) in daemon.log() and str(kept) in status(config)


def test_a_daemon_killed_mid_upload_uploads_again_on_its_next_start(behind_proxy, mount, workspace, tmp_path):
    config, root, bucket, proxy = behind_proxy
    daemon = mount(config, workspace / "mnt")
    data = os.urandom(4 * PART + 1234)
    (tmp_path / "big.bin").write_bytes(data)
    proxy.stall_after(2 * PART)
    copier = subprocess.Popen(["cp", str(tmp_path / "big.bin"), str(root / "big.bin")])
    wait_for(lambda: " waiting" in status(config).split("\n")[1] and proxy.sent >= 2 * PART, 30, "the upload to stall")
    assert bucket.keys() == []
    daemon.process.kill()
    proxy.up()
    copier.wait(timeout=10)
    daemon = restart(daemon, mount, config)
    wait_for(lambda: "big.bin" in bucket.keys(), 30, "the upload after the restart")
    assert bucket.get("big.bin") == data == (root / "big.bin").read_bytes()
    assert "was closed but not uploaded" in daemon.log()


@pytest.mark.expect_log(
    r"WARNING fsmount\.volumes\.uploads: uploading retried\.bin failed \(.* retried\.bin: .*\); it stays staged in .* and is tried again$",
    r"WARNING fsmount\.fs\.operations: flush failed: \[Errno 5\] uploading retried\.bin failed$",
)
def test_a_server_gone_mid_upload_fails_close_and_the_upload_is_retried(behind_proxy, mount, workspace):
    config, root, bucket, proxy = behind_proxy
    mount(config, workspace / "mnt")
    data = os.urandom(3 * PART)
    proxy.stall_after(PART)  # the parts sent while it is written, or at close, get stuck
    stream = open(root / "retried.bin", "wb")
    stream.write(data)
    with concurrent.futures.ThreadPoolExecutor() as pool:
        closing = pool.submit(stream.close)
        wait_for(lambda: proxy.sent >= PART, 30, "the upload to begin")
        proxy.down()
        with pytest.raises(OSError) as error:
            closing.result(timeout=60)
    assert error.value.errno == errno.EIO
    assert (root / "retried.bin").read_bytes() == data  # still staged, and readable
    assert "1 waiting" in status(config)
    proxy.up()
    wait_for(lambda: "retried.bin" in bucket.keys(), 90, "the upload to be retried")  # after a backoff
    assert bucket.get("retried.bin") == data


def test_names_made_in_a_directory_made_here_are_known_new_without_a_request(s3_rw, moto):
    root, bucket, _ = s3_rw
    os.mkdir(root / "fresh")
    lookups = lambda: moto.requests("HEAD", f"/{bucket}/fresh/") + moto.requests("GET", f"/{bucket}?", "fresh")
    before = lookups()
    for index in range(5):
        (root / "fresh" / f"file-{index}").write_bytes(b"x")
    assert lookups() == before
    assert sorted(os.listdir(root / "fresh")) == [f"file-{index}" for index in range(5)]
    assert [key for key in bucket.keys() if key.startswith("fresh")] == ["fresh/"] + [
        f"fresh/file-{index}" for index in range(5)]


def test_a_new_file_written_in_order_goes_up_in_parts_before_close(s3_rw, moto):
    root, bucket, _ = s3_rw
    data = os.urandom(3 * PART + 999)
    with open(root / "streamed.bin", "wb", buffering=0) as stream:
        for offset in range(0, len(data), 2**20):
            stream.write(data[offset:offset + 2**20])
        wait_for(lambda: moto.requests("PUT", f"/{bucket}/streamed.bin?", "partNumber=3") == 1, 30,
                 "the third part to go up before close")
    assert bucket.get("streamed.bin") == data == (root / "streamed.bin").read_bytes()
    assert moto.requests("PUT", f"/{bucket}/streamed.bin?", "partNumber=") == 4  # each part once


def test_a_write_into_a_part_already_sent_still_stores_the_right_bytes(s3_rw, moto):
    root, bucket, _ = s3_rw
    data = bytearray(os.urandom(3 * PART))
    with open(root / "rewritten.bin", "wb", buffering=0) as stream:
        stream.write(data)
        wait_for(lambda: moto.requests("PUT", f"/{bucket}/rewritten.bin?", "partNumber=1") == 1, 30,
                 "the first part to go up")
        stream.seek(10)
        stream.write(b"rewritten")
    data[10:19] = b"rewritten"
    assert bucket.get("rewritten.bin") == data


def test_a_shell_redirect_uploads_once_and_touch_makes_an_empty_object(s3_rw, moto, tmp_path):
    root, bucket, _ = s3_rw
    (tmp_path / "source").write_bytes(b"redirected\n")
    subprocess.run(["bash", "-c", f'cat "{tmp_path}/source" > "{root}/redirected"'], check=True)
    assert bucket.get("redirected") == b"redirected\n"
    assert moto.requests("PUT", f"/{bucket}/redirected?") == 1
    subprocess.run(["touch", str(root / "touched")], check=True)
    wait_for(lambda: "touched" in bucket.keys(), 10, "the empty file to go up on release")
    assert bucket.get("touched") == b""
