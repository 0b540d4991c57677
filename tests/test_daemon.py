"""The daemon's life: mount and unmount by every route, signals, fstab, failures that leave nothing behind."""
import contextlib
import errno
import os
import signal
import subprocess

import pytest

from conftest import FSMOUNT, check_log_files, force_unmount, mounted_paths, require_kind, wait_for, write_config


@pytest.fixture
def config(workspace):
    data = workspace / "links" / "data"
    data.mkdir()
    (data / "file.txt").write_text("contents\n")
    return write_config(workspace, f"""
        link_mounts: ["{workspace}/links"]
        log {{ file: "{workspace}/daemon.log" }}
        volumes {{ data {{ source: "file://{data}" }} }}
    """)


def daemon_pids(mountpoint) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        with contextlib.suppress(OSError):
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                args = cmdline.read().split(b"\0")
            if str(mountpoint).encode() in args and any(arg.endswith((b"fsmount", b"mount.fsmount", b"mount.fuse.fsmount")) for arg in args[:2]):
                pids.append(int(entry))
    return pids


@contextlib.contextmanager
def background_cleanup(mountpoint, log):
    """For daemons the test does not start itself: none may survive the test, and their LOG is checked."""
    require_kind("mount", doing="mounts")
    try:
        yield
    finally:
        force_unmount(str(mountpoint))
        for pid in daemon_pids(mountpoint):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    check_log_files(log)


@pytest.mark.mount
@pytest.mark.parametrize("command", [[FSMOUNT, "umount"], ["umount"], ["fusermount3", "-u"]])
def test_unmount_ends_the_foreground_daemon(config, workspace, mount, command):
    mnt = workspace / "mnt"
    daemon = mount(config, mnt)
    assert (mnt / "data" / "file.txt").read_text() == "contents\n"
    assert subprocess.run(command + [str(mnt)]).returncode == 0
    assert daemon.process.wait(timeout=10) == 0
    assert str(mnt) not in mounted_paths()
    assert "unmounted" in daemon.log() or "unmounted" in (workspace / "daemon.log").read_text()


@pytest.mark.mount
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_unmounts_and_exits_cleanly(config, workspace, mount, signum):
    mnt = workspace / "mnt"
    daemon = mount(config, mnt)
    os.listdir(mnt)
    daemon.process.send_signal(signum)
    assert daemon.process.wait(timeout=10) == 0
    assert str(mnt) not in mounted_paths()


@pytest.mark.mount
def test_background_mount_returns_once_the_mount_is_live(config, workspace):
    mnt = workspace / "mnt"
    with background_cleanup(mnt, workspace / "daemon.log"):
        result = subprocess.run([FSMOUNT, "mount", str(config), str(mnt)], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr
        assert str(mnt) in mounted_paths()
        assert (mnt / "data" / "file.txt").read_text() == "contents\n"
        [pid] = daemon_pids(mnt)
        assert subprocess.run([FSMOUNT, "umount", str(mnt)]).returncode == 0
        wait_for(lambda: not daemon_pids(mnt), 10, "the daemon to exit")
        assert str(mnt) not in mounted_paths()


@pytest.mark.mount
def test_fstab_line_mounts_through_mount_8_with_no_path(config, workspace):
    if not os.path.exists("/sbin/mount.fuse.fsmount"):
        pytest.skip("scripts/setup links /sbin/mount.fuse.fsmount only when run as root")
    mnt = workspace / "mnt"
    fstab = workspace / "fstab"
    fstab.write_text(f"{config} {mnt} fuse.fsmount defaults,allow_other,_netdev 0 0\n")
    with background_cleanup(mnt, workspace / "daemon.log"):
        result = subprocess.run(["/usr/bin/mount", "-T", str(fstab), str(mnt)], env={}, capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr
        assert (mnt / "data" / "file.txt").read_text() == "contents\n"
        with open("/proc/self/mounts") as mounts:
            [line] = [line for line in mounts if f" {mnt} " in line]
        assert line.split()[2] == "fuse.fsmount" and "allow_other" in line
        assert subprocess.run(["/usr/bin/umount", str(mnt)], env={}).returncode == 0
        wait_for(lambda: not daemon_pids(mnt), 10, "the daemon to exit")


@pytest.mark.mount
def test_a_killed_daemon_leaves_a_mount_that_umount_clears(config, workspace, mount):
    mnt = workspace / "mnt"
    daemon = mount(config, mnt)
    daemon.process.kill()
    daemon.process.wait()
    with pytest.raises(OSError) as error:
        os.listdir(mnt)
    assert error.value.errno == errno.ENOTCONN
    assert subprocess.run([FSMOUNT, "umount", str(mnt)]).returncode == 0
    assert str(mnt) not in mounted_paths()


@pytest.mark.unit
def test_mount_point_that_does_not_exist(config, workspace):
    result = subprocess.run([FSMOUNT, "mount", str(config), str(workspace / "absent")], capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr == f"fsmount: mount point {workspace / 'absent'}: No such file or directory\n"


@pytest.mark.unit
def test_bad_config_mounts_nothing(workspace):
    config = write_config(workspace, "volumes { data { source: \"file:///nowhere\" } }")
    result = subprocess.run([FSMOUNT, "mount", str(config), str(workspace / "mnt")], capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.startswith(f"fsmount: {config}:1: volumes.data.source:")
    assert str(workspace / "mnt") not in mounted_paths()


@pytest.mark.mount
def test_mountpoint_from_the_config(workspace, config):
    with_mountpoint = write_config(workspace, f'include "{config}"\nmountpoint: "{workspace}/mnt"', name="with-mountpoint.conf")
    with background_cleanup(workspace / "mnt", workspace / "daemon.log"):
        assert subprocess.run([FSMOUNT, "mount", str(with_mountpoint)], timeout=30).returncode == 0
        assert os.listdir(workspace / "mnt") == ["data"]
