"""The control socket: how `fsmount status|warm|cache|reload` talk to the daemon that serves a mount point.

Each daemon listens on a Unix socket of its own, named after its mount point, in a directory only its
owner can enter (/run/fsmount for root). A request is one line of JSON, `{"command": NAME, ...}`; the
daemon answers with lines of JSON: any number of `{"progress": {...}}`, then `{"result": ...}` or
`{"error": "..."}`. The client side is blocking: the command line has no event loop.
"""
import contextlib
import errno
import hashlib
import json
import logging
import os
import socket
import tempfile
from collections.abc import Awaitable, Callable

import trio

log = logging.getLogger(__name__)

Report = Callable[[dict], Awaitable[None]]  # sends one progress line to the client
Handler = Callable[[dict, Report], Awaitable[object]]  # (request, report) -> the result, which JSON can carry
_LINE_MOST = 2**20  # bytes of one request


class NotServing(Exception):
    """No daemon answers for that mount point."""


class CommandFailed(Exception):
    """The daemon took the request and answered with an error."""


def socket_directory() -> str:
    if os.geteuid() == 0:
        return "/run/fsmount"
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    return os.path.join(runtime, "fsmount") if runtime else os.path.join(tempfile.gettempdir(), f"fsmount-{os.geteuid()}")


def socket_path(mountpoint: str) -> str:
    """The socket of the daemon serving MOUNTPOINT, a real path (the daemon cannot resolve it: that would ask
    itself); named by a hash, as a path may outgrow a socket's 107 bytes."""
    name = hashlib.sha256(mountpoint.encode("utf-8", "surrogateescape")).hexdigest()[:32]
    return os.path.join(socket_directory(), f"{name}.sock")


def mounts() -> dict[str, str]:
    """The fsmount mounts: mount point -> its source, the config file its daemon read."""
    with open("/proc/self/mountinfo") as mountinfo:
        return {_unescape(line.split()[4]): _unescape(line.split(" - ")[1].split()[1]) for line in mountinfo
                if line.split(" - ")[1].startswith("fuse.fsmount ")}


def mount_holding(path: str) -> str | None:
    """The mount point of the fsmount mount holding PATH, or None."""
    path = os.path.realpath(path).rstrip("/") + "/"
    holding = [point for point in mounts() if path.startswith(point.rstrip("/") + "/")]
    return max(holding, key=len) if holding else None


def _unescape(field: str) -> str:
    """A mountinfo field: spaces, tabs, newlines and backslashes come as octal escapes."""
    return field.encode().decode("unicode_escape").encode("latin-1").decode("utf-8", "surrogateescape")


class ControlServer:
    """The daemon's side: COMMANDS maps each command's name to its handler."""

    def __init__(self, mountpoint: str):
        self.path = socket_path(mountpoint)
        self.commands: dict[str, Handler] = {}

    async def serve(self, task_status=trio.TASK_STATUS_IGNORED):
        directory = os.path.dirname(self.path)
        os.makedirs(directory, mode=0o700, exist_ok=True)
        os.chmod(directory, 0o700)
        listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # a daemon that served this mount point before and was killed
        await listener.bind(self.path)
        os.chmod(self.path, 0o600)
        listener.listen()
        try:
            task_status.started()
            await trio.serve_listeners(self._answer, [trio.SocketListener(listener)])
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    async def _answer(self, stream: trio.SocketStream):
        async with stream:
            try:
                request = json.loads(await _read_line(stream))
                handler = self.commands.get(request.get("command")) if isinstance(request, dict) else None
                if handler is None:
                    raise CommandFailed(f"no such command: {request.get('command') if isinstance(request, dict) else request!r}")

                async def report(progress: dict):
                    await _send(stream, {"progress": progress})

                answer = {"result": await handler(request, report)}
            except (CommandFailed, ValueError) as error:
                answer = {"error": str(error)}
            except OSError as error:
                answer = {"error": error.strerror or str(error)}
            except trio.BrokenResourceError:
                return  # the client went away
            except Exception as error:
                log.exception("control command failed")
                answer = {"error": f"{type(error).__name__}: {error}"}
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await _send(stream, answer)


async def _read_line(stream: trio.SocketStream) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = await stream.receive_some()
        if not chunk:
            break
        data += chunk
        if len(data) > _LINE_MOST:
            raise CommandFailed("request too long")
    return data


async def _send(stream: trio.SocketStream, message: dict):
    await stream.send_all(json.dumps(message).encode() + b"\n")


def ask(mountpoint: str, command: str, progress: Callable[[dict], None] | None = None, timeout: float | None = None,
        **arguments):
    """Sends COMMAND with ARGUMENTS to the daemon serving MOUNTPOINT and returns its result; PROGRESS is
    called with each progress line on the way. TIMEOUT: seconds to wait for each line, at most (TimeoutError)."""
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    connection.settimeout(timeout)
    try:
        try:
            connection.connect(socket_path(os.path.realpath(mountpoint)))
        except (FileNotFoundError, ConnectionRefusedError):
            raise NotServing(f"no fsmount daemon serves {mountpoint}") from None
        except PermissionError:
            raise NotServing(f"the daemon serving {mountpoint} is another user's") from None
        connection.sendall(json.dumps({"command": command, **arguments}).encode() + b"\n")
        for line in connection.makefile("rb"):
            message = json.loads(line)
            if "progress" in message:
                if progress is not None:
                    progress(message["progress"])
            elif "error" in message:
                raise CommandFailed(message["error"])
            else:
                return message["result"]
        raise OSError(errno.ECONNRESET, f"the daemon serving {mountpoint} hung up without an answer")
    finally:
        connection.close()
