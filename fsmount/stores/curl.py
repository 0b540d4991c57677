"""CurlRequests: small ranged GETs and small uploads, sent by libcurl's multi interface (pycurl) on the trio event loop itself.

A GET of a small object is mostly overhead: its request line, headers and status. Sent from a worker
thread through urllib3 that overhead was all Python's work, and the threads and the event loop took
the GIL from each other at every system call. libcurl does the HTTP in C; the loop only watches its
sockets, so no thread and no GIL handover is involved, and many requests are in flight at once on
one core. The PUT of a small file is the same: from worker threads, the uploads of an rsync took the
GIL from the loop answering it.
"""
import io
import logging

import pycurl
import trio

from fsmount.stores.base import CertificateRefused, NotFound, RangeRequest, Reply, Request, Unavailable, status_error
from fsmount.stores.retries import RetryPolicy

log = logging.getLogger(__name__)

_CONNECT_TIMEOUT = 5
_STALL_TIMEOUT = 60  # seconds without a byte before a GET fails, as urllib3's read timeout
_WAITS = {pycurl.POLL_IN: (trio.lowlevel.wait_readable, pycurl.CSELECT_IN),
          pycurl.POLL_OUT: (trio.lowlevel.wait_writable, pycurl.CSELECT_OUT),
          pycurl.POLL_INOUT: (trio.lowlevel.wait_writable, pycurl.CSELECT_IN | pycurl.CSELECT_OUT)}


class CurlRequests:
    """Ranged GETs of at most a few MiB and uploads of as much, their bodies in memory; at most MAX_CONNECTIONS
    connections at once (libcurl queues the requests beyond them). Its tasks start with the first request, in
    the trio run it is made in."""

    def __init__(self, max_connections: int, verify: bool | str = True, retries: RetryPolicy = RetryPolicy()):
        self._verify = verify
        self.retries = retries
        self._multi = pycurl.CurlMulti()
        self._multi.setopt(pycurl.M_SOCKETFUNCTION, self._watch)
        self._multi.setopt(pycurl.M_TIMERFUNCTION, self._set_timer)
        self._multi.setopt(pycurl.M_MAX_TOTAL_CONNECTIONS, max_connections)
        self._free: list[pycurl.Curl] = []
        self._transfers: dict[pycurl.Curl, trio.Event] = {}
        self._errors: dict[pycurl.Curl, tuple[int, str]] = {}
        self._watchers: dict[int, trio.CancelScope] = {}  # socket -> the wait for what libcurl asked of it
        self._deadline: float | None = None
        self._timer_changed: trio.Event | None = None

    async def get(self, request: RangeRequest) -> bytes:
        """The bytes REQUEST asks for, retried while the server is throttling or unreachable; fewer at the
        end of the object, b"" past it."""
        headers = {**request.headers, "Range": f"bytes={request.start}-{request.start + request.length - 1}"}
        try:
            status, _, body = await self._retried("GET", request.url, None, headers,
                                                  f"GET {request.key} [{request.start}+{request.length}]",
                                                  {200, 206, 416})
        except NotFound as error:
            raise request.stale_if_gone(error) from None
        if status == 206:
            return body
        if status == 200:  # a server that ignores Range sends it all
            return body[request.start:request.start + request.length]
        return b""

    async def send(self, request: Request) -> Reply:
        """REQUEST's answer, retried while the server is throttling or unreachable."""
        return await self._retried(*request, {200, 201})

    async def _retried(self, method: str, url: str, body: bytes | None, headers: dict[str, str], what: str,
                       answers: set[int]) -> Reply:
        async def attempt() -> Reply:
            reply = await self._perform(method, url, body, headers, what)
            if reply.status in answers:
                return reply
            raise status_error(reply.status, f"{what}: {reply.status}", reply.headers.get("retry-after"))

        return await self.retries.call_async(attempt)

    async def _perform(self, method: str, url: str, body: bytes | None, headers: dict[str, str], what: str) -> Reply:
        if self._timer_changed is None:
            self._timer_changed = trio.Event()
            trio.lowlevel.spawn_system_task(self._run_timer)
        curl = self._free.pop() if self._free else self._new_handle()
        received, answer_headers = io.BytesIO(), io.BytesIO()
        lines = [f"{name}: {value}" for name, value in headers.items()]
        curl.setopt(pycurl.URL, url)
        curl.setopt(pycurl.WRITEDATA, received)
        curl.setopt(pycurl.HEADERFUNCTION, answer_headers.write)
        if body is not None:
            curl.setopt(pycurl.CUSTOMREQUEST, method)
            curl.setopt(pycurl.POSTFIELDS, body)
            lines.append("Expect:")  # no wait for a 100 Continue
            if not any(name.lower() == "content-type" for name in headers):
                lines.append("Content-Type:")  # not libcurl's own, of a form
        curl.setopt(pycurl.HTTPHEADER, lines)
        done = self._transfers[curl] = trio.Event()
        try:
            self._multi.add_handle(curl)
            await done.wait()
        finally:
            if not done.is_set():  # cancelled: the transfer ends here
                self._transfers.pop(curl, None)
                self._multi.remove_handle(curl)
            status = curl.getinfo(pycurl.RESPONSE_CODE)
            if body is not None:  # an upload's method and body must not stay for the GETs that reuse the handle
                curl.reset()
                self._configure(curl)
            else:
                curl.setopt(pycurl.WRITEDATA, io.BytesIO())  # the body is not kept alive by a free handle
            self._free.append(curl)
        error = self._errors.pop(curl, None)
        if error is not None:
            code, message = error
            raise (CertificateRefused if code == pycurl.E_PEER_FAILED_VERIFICATION else Unavailable)(f"{what}: {message}")
        parsed = body is not None or status >= 300  # a GET's headers matter only when it failed: Retry-After
        return Reply(status, _headers(answer_headers.getvalue()) if parsed else {}, received.getvalue())

    def _new_handle(self) -> pycurl.Curl:
        curl = pycurl.Curl()
        self._configure(curl)
        return curl

    def _configure(self, curl: pycurl.Curl):
        curl.setopt(pycurl.NOSIGNAL, 1)
        curl.setopt(pycurl.PROXY, "")  # as the other requests: no proxy from the environment
        curl.setopt(pycurl.CONNECTTIMEOUT, _CONNECT_TIMEOUT)
        curl.setopt(pycurl.LOW_SPEED_LIMIT, 1)
        curl.setopt(pycurl.LOW_SPEED_TIME, _STALL_TIMEOUT)
        if self._verify is False:
            curl.setopt(pycurl.SSL_VERIFYPEER, 0)
            curl.setopt(pycurl.SSL_VERIFYHOST, 0)
        elif isinstance(self._verify, str):
            curl.setopt(pycurl.CAINFO, self._verify)

    def _watch(self, what: int, fd: int, multi, socket_data):
        """libcurl's socket callback: it wants to know when FD is readable or writable (WHAT), or no more."""
        watcher = self._watchers.pop(fd, None)
        if watcher is not None:
            watcher.cancel()  # trio drops the socket from its epoll set here, before libcurl may close it
        if what != pycurl.POLL_REMOVE:
            watcher = self._watchers[fd] = trio.CancelScope()
            trio.lowlevel.spawn_system_task(self._wait, fd, what, watcher)

    async def _wait(self, fd: int, what: int, watcher: trio.CancelScope):
        """Hands FD to libcurl each time it is ready for WHAT, until libcurl wants something else of it. A
        watcher replaced before it ran never waits: the socket may be another's wait by then."""
        wait, events = _WAITS[what]
        with watcher:
            while not watcher.cancel_called:
                try:
                    await wait(fd)
                except (trio.BusyResourceError, trio.ClosedResourceError, OSError) as error:
                    log.warning("a socket of libcurl's could not be watched: %s", error)
                    self._act(fd, pycurl.CSELECT_ERR)
                    return
                self._act(fd, events)

    def _set_timer(self, milliseconds: int):
        self._deadline = None if milliseconds < 0 else trio.current_time() + milliseconds / 1000
        if self._timer_changed is not None:
            self._timer_changed.set()

    async def _run_timer(self):
        while True:
            self._timer_changed = trio.Event()
            with trio.move_on_at(self._deadline if self._deadline is not None else float("inf")):
                await self._timer_changed.wait()
                continue
            self._deadline = None
            self._act(pycurl.SOCKET_TIMEOUT, 0)

    def _act(self, fd: int, events: int):
        """Lets libcurl work on FD (or on its timeouts), then ends the transfers it finished."""
        try:
            while self._multi.socket_action(fd, events)[0] == pycurl.E_CALL_MULTI_PERFORM:
                pass
            while True:
                queued, finished, failed = self._multi.info_read()
                for curl in finished:
                    self._end(curl, None)
                for curl, code, message in failed:
                    self._end(curl, (code, message))
                if not queued:
                    return
        except pycurl.error as error:  # a task of trio's own must never fail: each GET gets the error
            log.warning("libcurl failed: %s", error)
            for curl in list(self._transfers):
                self._end(curl, (0, str(error)))

    def _end(self, curl: pycurl.Curl, error: tuple[int, str] | None):
        """ERROR: libcurl's code and message, where the transfer failed."""
        self._multi.remove_handle(curl)
        done = self._transfers.pop(curl, None)
        if error is not None:
            self._errors[curl] = error
        if done is not None:
            done.set()


def _headers(raw: bytes) -> dict[str, str]:
    """The last answer's headers in RAW (a 100 Continue may come first), their names in lower case."""
    fields = {}
    for line in raw.decode("latin-1").split("\r\n"):
        if line.startswith("HTTP/"):
            fields = {}
        elif ":" in line:
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip()
    return fields
