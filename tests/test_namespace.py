"""The virtual directories above volumes: listed, read-only, and answering statfs for the whole tree."""
import errno
import os
import stat

import pytest

pytestmark = pytest.mark.mount


def test_root_and_virtual_directories_list_the_volumes(host_tree):
    mnt, _, _ = host_tree
    assert sorted(os.listdir(mnt)) == ["data", "scratch", "team"]
    assert os.listdir(mnt / "team") == ["a"]
    assert os.listdir(mnt / "team" / "a") == ["notes"]
    with os.scandir(mnt) as entries:
        assert {entry.name: entry.is_dir(follow_symlinks=False) for entry in entries} == {"data": True, "scratch": True, "team": True}
    st = os.stat(mnt / "team")
    assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o555
    assert (st.st_uid, st.st_gid) == (os.geteuid(), os.getegid())
    assert sorted(os.listdir(mnt / "data" / "..")) == ["data", "scratch", "team"]


def test_names_that_are_not_there(host_tree):
    mnt, _, _ = host_tree
    for path in (mnt / "absent", mnt / "team" / "b", mnt / "team" / "a" / "notes-not"):
        with pytest.raises(FileNotFoundError):
            os.stat(path)


def test_mutations_of_virtual_directories_are_erofs(host_tree):
    mnt, _, _ = host_tree
    attempts = {
        "mkdir": lambda: os.mkdir(mnt / "new"),
        "create": lambda: open(mnt / "team" / "file", "w"),
        "rmdir a volume": lambda: os.rmdir(mnt / "team" / "a" / "notes"),
        "rename a volume": lambda: os.rename(mnt / "scratch", mnt / "scratch2"),
        "move into a volume": lambda: os.rename(mnt / "team", mnt / "scratch" / "team"),
        "symlink": lambda: os.symlink("data", mnt / "alias"),
        "chmod": lambda: os.chmod(mnt / "team", 0o777),
        "utime": lambda: os.utime(mnt, None),
        "setxattr": lambda: os.setxattr(mnt / "team", "user.k", b"v"),
    }
    for name, attempt in attempts.items():
        with pytest.raises(OSError) as error:
            attempt()
        assert error.value.errno == errno.EROFS, name
    with pytest.raises(OSError) as error:
        os.getxattr(mnt / "team", "user.k")
    assert error.value.errno == errno.ENODATA


def test_statfs_sums_the_file_systems_behind_the_volumes(host_tree):
    mnt, links, _ = host_tree
    ours, host = os.statvfs(mnt), os.statvfs(links)
    assert ours.f_namemax == 255
    assert ours.f_blocks * ours.f_frsize == pytest.approx(host.f_blocks * host.f_frsize, rel=0.01)
    assert ours.f_bavail * ours.f_frsize == pytest.approx(host.f_bavail * host.f_frsize, rel=0.05)
    assert os.statvfs(mnt / "team").f_blocks == ours.f_blocks


def test_a_vanished_source_gives_errors_not_a_hang(host_tree):
    mnt, links, _ = host_tree
    os.rename(links / "notes", links / "notes-moved")
    os.rmdir(links / "notes-moved")
    assert sorted(os.listdir(mnt)) == ["data", "scratch", "team"]
    with pytest.raises(OSError):
        open(mnt / "team" / "a" / "notes" / "new", "w")
    assert (mnt / "data" / "hello.txt").read_text() == "hello\n"
