"""Mount points and processes as the node plugin handles them: which paths are mounted and which are dead (ENOTCONN),
bind mounts and unmounts, and waiting for a daemon that is not the plugin's child to exit."""
import contextlib
import errno
import os
import select
import subprocess
import time

_UNMOUNT_TRIES = 8  # a target may hold mounts stacked on each other; each try takes the top one


class MountFailed(Exception):
    pass


def mounted(path: str) -> bool:
    path = os.path.abspath(path)
    with open("/proc/self/mountinfo") as mountinfo:
        return any(_unescape(line.split()[4]) == path for line in mountinfo)


def dead(path: str) -> bool:
    """A FUSE mount whose daemon is gone: every access fails with ENOTCONN."""
    try:
        os.statvfs(path)  # always asks the daemon, where a stat may be answered from attributes the kernel keeps
    except OSError as error:
        return error.errno == errno.ENOTCONN
    return False


def serving(path: str) -> bool:
    return mounted(path) and not dead(path)


def bind(source: str, target: str):
    _run(["mount", "--bind", source, target])


def unmount(path: str, lazy: bool = False):
    _run(["umount"] + (["-l"] if lazy else []) + [path])


def clear(path: str):
    """Takes every mount off PATH, a dead one too (lazily: nothing can use it any more)."""
    for _ in range(_UNMOUNT_TRIES):
        if not mounted(path):
            return
        unmount(path, lazy=dead(path))
    raise MountFailed(f"{path} is still mounted after {_UNMOUNT_TRIES} unmounts")


def remove_directory(path: str):
    with contextlib.suppress(FileNotFoundError):
        os.rmdir(path)


def _run(command: list[str]):
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise MountFailed(f"{' '.join(command)}: {result.stderr.strip() or f'exit status {result.returncode}'}")


def _unescape(field: str) -> str:
    """A mountinfo field: spaces, tabs, newlines and backslashes come as octal escapes."""
    return field.encode().decode("unicode_escape").encode("latin-1").decode("utf-8", "surrogateescape")


def running(pid: int | None, config_file: str) -> bool:
    """Whether PID is still the daemon started with CONFIG_FILE (a pid may be reused)."""
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return config_file.encode() in cmdline.read().split(b"\0")
    except OSError:
        return False


def wait_for_exit(pid: int, config_file: str, timeout: float) -> bool:
    """Waits up to TIMEOUT seconds for the daemon PID, which is not our child, to exit; whether it did."""
    try:
        descriptor = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        if not running(pid, config_file):
            return True
        poll = select.poll()
        poll.register(descriptor, select.POLLIN)
        deadline = time.monotonic() + timeout
        while not poll.poll(max(0.0, deadline - time.monotonic()) * 1000):
            if time.monotonic() >= deadline:
                return False
        return True
    finally:
        os.close(descriptor)
