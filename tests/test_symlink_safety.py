"""A symlink planted in a linked source can never make the daemon read or write outside it."""
import errno
import os

import pytest

from fsmount.volumes.base import AttrChanges, Owner
from fsmount.volumes.host import HostVolume


@pytest.fixture
def planted(tmp_path):
    """A source with symlinks to a directory outside it, which holds a secret."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("not yours\n")
    source = tmp_path / "source"
    (source / "real").mkdir(parents=True)
    (source / "real" / "file").write_text("inside\n")
    (source / "escape").symlink_to(outside)
    (source / "real" / "up").symlink_to("../..")
    return source, outside


@pytest.fixture(params=[False, True], ids=["inline", "threaded"])
def threaded(request):
    """Both ways a host volume runs its system calls: inline (local disks) and in threads (NFS)."""
    return request.param


async def expect_errno(expected, call):
    with pytest.raises(OSError) as error:
        await call
    assert error.value.errno in expected, error.value


@pytest.mark.unit
async def test_names_with_dot_dot_or_slashes_are_refused(planted, threaded):
    source, _ = planted
    volume = HostVolume(str(source), threaded=threaded)
    for path in (("..",), ("real", "..", "..", "outside"), ("real/../..",), ("",), (".",)):
        await expect_errno({errno.EINVAL}, volume.getattr(path))
    await volume.close()


@pytest.mark.unit
async def test_symlinked_parents_are_not_followed(planted, threaded):
    source, outside = planted
    volume = HostVolume(str(source), threaded=threaded)
    owner = Owner(0, 0)
    not_followed = {errno.ENOTDIR, errno.ELOOP}
    await expect_errno(not_followed, volume.getattr(("escape", "secret")))
    await expect_errno(not_followed, volume.open(("escape", "secret"), os.O_RDONLY))
    await expect_errno(not_followed, volume.getattr(("real", "up", "outside", "secret")))
    await expect_errno(not_followed, volume.opendir(("escape",)))
    await expect_errno(not_followed, volume.create(("escape", "planted"), os.O_WRONLY, 0o644, owner))
    await expect_errno(not_followed, volume.mkdir(("escape", "dir"), 0o755, owner))
    await expect_errno(not_followed, volume.rename(("real", "file"), ("escape", "moved"), 0))
    await expect_errno(not_followed, volume.setxattr(("escape", "secret"), "user.x", b"1"))
    # The link itself is an entry like any other: it is described, never followed.
    assert await volume.readlink(("escape",)) == str(outside)
    await expect_errno({errno.ELOOP}, volume.open(("escape",), os.O_RDONLY))
    await expect_errno({errno.EOPNOTSUPP}, volume.setattr(("escape",), AttrChanges(mode=0o777), None))
    assert sorted(os.listdir(outside)) == ["secret"] and (outside / "secret").read_text() == "not yours\n"
    await volume.close()


@pytest.mark.mount
def test_directory_swapped_for_a_symlink_behind_the_kernels_back(host_tree, tmp_path):
    mnt, links, _ = host_tree
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("not yours\n")
    (links / "scratch" / "d").mkdir()
    (links / "scratch" / "d" / "f").write_text("inside\n")
    held = os.open(mnt / "scratch" / "d", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.rename(links / "scratch" / "d", links / "scratch" / "d.orig")
        (links / "scratch" / "d").symlink_to(outside)
        # The kernel still knows "d" as the directory it looked up; the daemon must not follow the link.
        with pytest.raises(OSError) as error:
            os.open("planted", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=held)
        assert error.value.errno in (errno.ENOTDIR, errno.ELOOP, errno.ENOENT)
        with pytest.raises(OSError):
            os.stat("secret", dir_fd=held)
    finally:
        os.close(held)
    assert sorted(os.listdir(outside)) == ["secret"]
