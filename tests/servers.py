"""Local store servers for tests, started through scripts/serve on 127.0.0.1 and stopped after the session, and the
relays (Proxy, FaultRelay) and web server that tests put in front of them or beside them."""
import asyncio
import collections
import contextlib
import dataclasses
import email.utils
import hashlib
import random
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import botocore.exceptions
import botocore.session
import urllib3
from azure.storage.blob import BlobServiceClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from free_port import free_base  # noqa: E402
from conftest import require_kind  # noqa: E402


class Server:
    """A server process and its request log; `requests(*texts)` counts log lines that hold every TEXT."""

    def __init__(self, name: str, log_dir: Path, *arguments: str, port_offsets: tuple[int, ...] = ()):
        """ARGUMENTS: scripts/serve's after the port; PORT_OFFSETS: the ports it takes beside its own."""
        require_kind("server", "mount", doing=f"starts {name}")
        self.name = name
        self.port = free_base(list(port_offsets))
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"{name}-{self.port}.log"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen([str(ROOT / "scripts" / "serve"), name, str(self.port), *arguments],
                                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while not self._accepting():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{name} did not start:\n{self.log_path.read_text(errors='replace')}")
            time.sleep(0.1)

    def _accepting(self) -> bool:
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", self.port)) == 0

    def requests(self, *texts: str) -> int:
        lines = self.log_path.read_text(errors="replace").splitlines()
        return sum(all(text in line for text in texts) for line in lines)

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class IpfsNode(Server):
    """scripts/ipfs_gateway.mjs: a Helia node that has added SOURCE (with the importer OPTIONS) and serves it;
    `root` is the CID it printed. Its log has a line per request."""

    def __init__(self, log_dir: Path, source: Path, *options: str):
        super().__init__("ipfs", log_dir, tempfile.mkdtemp(prefix="ipfs-repo-", dir=log_dir), str(source), *options)
        deadline = time.monotonic() + 30
        while not (roots := [line.split()[1] for line in self.log_path.read_text().splitlines() if line.startswith("root ")]):
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the IPFS node printed no root CID:\n{self.log_path.read_text(errors='replace')}")
            time.sleep(0.05)
        self.root = roots[0]

    def block_requests(self) -> int:
        return self.requests("/ipfs/") + self.requests("/api/v0/")


def serve(name: str, log_dir: Path) -> Server:
    """scripts/serve's server NAME, answering. SeaweedFS keeps its data under LOG_DIR, takes ports beside
    its own, and listens before its filer is ready, so it is asked for its buckets until it answers."""
    if name != "seaweedfs":
        return Server(name, log_dir)
    server = Server(name, log_dir, tempfile.mkdtemp(prefix="seaweedfs-", dir=log_dir), "32",
                    port_offsets=(1, 2, 3, 4, 10000, 10001, 10002, 10003))
    admin, deadline = s3_admin(server), time.monotonic() + 60
    while True:
        try:
            admin.list_buckets()
            return server
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError):
            if time.monotonic() > deadline:
                server.stop()
                raise
            time.sleep(0.2)


def s3_admin(server: Server):
    """A plain botocore client for setting up and checking buckets from outside fsmount."""
    return botocore.session.get_session().create_client(
        "s3", endpoint_url=server.url, region_name="us-east-1",
        aws_access_key_id="test", aws_secret_access_key="test")


# Azurite's one account, with the key Azure's documentation publishes for it.
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def azurite_endpoint(server: Server) -> str:
    return f"{server.url}/{AZURITE_ACCOUNT}"


def azure_admin(server: Server) -> BlobServiceClient:
    """The SDK's plain (synchronous) client, for setting up and checking containers from outside fsmount."""
    return BlobServiceClient(azurite_endpoint(server), credential={"account_name": AZURITE_ACCOUNT,
                                                                   "account_key": AZURITE_KEY})


def gcs_create_bucket(server: Server, bucket: str):
    response = urllib3.request("POST", f"{server.url}/storage/v1/b", json={"name": bucket})
    assert response.status == 200, response.data


_REQUESTS_KEPT = 4 * 2**20


class _Relay:
    """Connections to a port of 127.0.0.1, each served by `_serve` in a thread of its own (over TLS with the server
    context TLS): `down()` drops every connection and refuses new ones, `up()` takes them again. `connections`
    counts those accepted."""

    def __init__(self, target_port: int, tls: ssl.SSLContext | None = None):
        self._target = target_port
        self._tls = tls
        self._refusing = False
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self.connections = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._refusing:
                client.close()
                continue
            self.connections += 1
            threading.Thread(target=self._start, args=(client,), daemon=True).start()

    def _start(self, client: socket.socket):
        if self._tls is not None:
            try:
                client = self._tls.wrap_socket(client, server_side=True)
            except OSError:
                client.close()
                return
        self._track(client)
        self._serve(client)

    def _serve(self, client: socket.socket): ...

    def _connect(self) -> socket.socket:
        """A new connection to the server, dropped with the others by `down()`."""
        return self._track(socket.create_connection(("127.0.0.1", self._target)))

    def _track(self, end: socket.socket) -> socket.socket:
        with self._lock:
            self._open.add(end)
        return end

    def _drop(self, *ends: socket.socket):
        with self._lock:
            for end in ends:
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)
                self._open.discard(end)

    def down(self):
        self._refusing = True
        with self._lock:
            ends = list(self._open)
        self._drop(*ends)

    def up(self):
        self._refusing = False

    def close(self):
        self.down()
        self._listener.close()


class Proxy(_Relay):
    """A TCP relay on 127.0.0.1 in front of a server, to take the server away and give it back: `down()`
    drops every connection and refuses new ones; `stall_after(n)` stops passing requests on once N more
    bytes of them have gone through; `up()` ends both. `hold_replies(matching)` passes on each request whose
    first bytes MATCHING takes, counting them in `held`, and keeps back its reply until `release()`. `connections`
    counts those it accepted, `requests` holds the first KEPT bytes of the requests."""

    def __init__(self, target_port: int, kept: int = _REQUESTS_KEPT):
        self._kept = kept
        self._flowing = threading.Event()
        self._flowing.set()
        self.sent = 0  # bytes of requests passed on
        self.requests = bytearray()  # the first KEPT bytes of them, as sent
        self._stall_at: int | None = None
        self._holding = None  # what hold_replies() was given
        self._released = threading.Event()
        self.held = 0
        super().__init__(target_port)

    def _serve(self, client: socket.socket):
        try:
            upstream = self._connect()
        except OSError:
            return self._drop(client)
        holding = []  # the connection's request whose reply waits for release(), if any
        threading.Thread(target=self._pump, args=(client, upstream, True, holding), daemon=True).start()
        self._pump(upstream, client, False, holding)

    def _pump(self, source: socket.socket, sink: socket.socket, requests: bool, holding: list):
        try:
            while data := source.recv(65536):
                matching = self._holding
                if requests and matching is not None and matching(data):
                    holding.append(data)
                    with self._lock:
                        self.held += 1
                elif not requests and holding:
                    self._released.wait()
                    holding.clear()
                self._flowing.wait()
                sink.sendall(data)
                if requests:
                    with self._lock:
                        self.sent += len(data)
                        if len(self.requests) < self._kept:
                            self.requests += data
                        if self._stall_at is not None and self.sent >= self._stall_at:
                            self._flowing.clear()
        except OSError:
            pass
        finally:
            self._drop(source, sink)

    def stall_after(self, size: int):
        with self._lock:
            self._stall_at = self.sent + size

    def hold_replies(self, matching):
        """MATCHING(bytes) -> bool: the replies to the requests it takes wait until release()."""
        self._released.clear()
        self._holding = matching

    def release(self):
        self._holding = None
        self._released.set()

    def up(self):
        super().up()
        self._stall_at = None
        self._flowing.set()

    def close(self):
        self.release()
        super().close()
        self._flowing.set()


FAULTS = ("throttle", "error", "reset", "cut", "stall")
_LOGGED_HEADERS = ("authorization", "x-amz-request-payer", "range", "content-length")
_NO_BODY = {204, 304}
# What each kind of server says when it throttles (503) and when it fails (500): (content type, body, headers).
_ERRORS = {
    "s3": {503: ("application/xml", b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
                 b"<Message>Please reduce your request rate.</Message><RequestId>fault</RequestId></Error>", {}),
           500: ("application/xml", b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>InternalError</Code>'
                 b"<Message>We encountered an internal error. Please try again.</Message>"
                 b"<RequestId>fault</RequestId></Error>", {})},
    "azure": {503: ("application/xml", b'<?xml version="1.0" encoding="utf-8"?><Error><Code>ServerBusy</Code>'
                    b"<Message>The server is busy.</Message></Error>", {"x-ms-error-code": "ServerBusy"}),
              500: ("application/xml", b'<?xml version="1.0" encoding="utf-8"?><Error><Code>InternalError</Code>'
                    b"<Message>The server encountered an internal error. Please retry the request.</Message></Error>",
                    {"x-ms-error-code": "InternalError"})},
    "gcs": {503: ("application/json", b'{"error": {"code": 503, "message": "Backend Error", "errors": [{"domain": '
                  b'"global", "reason": "backendError", "message": "Backend Error"}]}}', {}),
            500: ("application/json", b'{"error": {"code": 500, "message": "Internal Error", "errors": [{"domain": '
                  b'"global", "reason": "internalError", "message": "Internal Error"}]}}', {})},
    "http": {503: ("text/plain", b"Service Unavailable\n", {}), 500: ("text/plain", b"Internal Server Error\n", {})},
}


@dataclasses.dataclass
class Exchange:
    """A request the FaultRelay took: METHOD and TARGET (path and query) as sent, the HEADERS of _LOGGED_HEADERS it
    had (names in lower case), the STATUS the client was given (None: none) and the FAULT injected, if any."""
    method: str
    target: str
    headers: dict[str, str]
    status: int | None = None
    fault: str | None = None

    def __str__(self):
        return f"{self.method} {self.target} {self.status} {self.fault or '-'}"


class _Message:
    """An HTTP request or response read off a connection: its first line and headers, then (`read_body`) its body."""

    def __init__(self, stream):
        line = stream.readline(65537)
        if not line.endswith(b"\n"):
            raise ConnectionError("the connection ended between messages")
        self.first_line = line.decode("latin-1").rstrip("\r\n")
        self.headers: list[tuple[str, str]] = []
        while (header := stream.readline(65537)) not in (b"\r\n", b"\n"):
            if not header:
                raise ConnectionError("the connection ended in a head")
            name, _, value = header.decode("latin-1").partition(":")
            self.headers.append((name.strip(), value.strip()))
        self.body = b""
        self.read_to_end = False

    def header(self, name: str) -> str:
        return next((value for key, value in self.headers if key.lower() == name), "")

    def without(self, name: str):
        self.headers = [(key, value) for key, value in self.headers if key.lower() != name]

    def read_body(self, stream, response: bool):
        """A chunked body is read whole and given a Content-Length; a response's without a length ends with the
        connection."""
        length = self.header("content-length")
        if "chunked" in self.header("transfer-encoding").lower():
            self.body = _dechunked(stream)
            self.without("transfer-encoding")
            self.headers.append(("Content-Length", str(len(self.body))))
        elif length:
            self.body = stream.read(int(length))
            if len(self.body) < int(length):
                raise ConnectionError("the connection ended in a body")
        elif response:
            self.body, self.read_to_end = stream.read(), True
            self.headers.append(("Content-Length", str(len(self.body))))

    def head(self) -> bytes:
        lines = [self.first_line, *(f"{name}: {value}" for name, value in self.headers), "", ""]
        return "\r\n".join(lines).encode("latin-1")

    def ends_connection(self) -> bool:
        return self.read_to_end or self.header("connection").lower() == "close"


def _dechunked(stream) -> bytes:
    body = bytearray()
    while size := int(stream.readline(1024).split(b";")[0], 16):
        body += stream.read(size)
        stream.readline(16)
    while stream.readline(65537) not in (b"\r\n", b"\n", b""):  # trailers
        pass
    return bytes(body)


class FaultRelay(_Relay):
    """An HTTP relay on 127.0.0.1 in front of a server's port: it reads each request whole and passes it on
    (keep-alive on both sides), or, on a share of requests drawn from SEED (FAULTS: a fault's name -> its share),
    answers with a fault instead:
      throttle  503 with the throttling error of a server of KIND (s3: SlowDown, azure: ServerBusy, gcs: JSON,
                http: plain text), and `Retry-After: 1` if RETRY_AFTER
      error     500 with that server's internal error
      reset     the request is passed on; the answer's head and half its body are sent, then a TCP reset
      cut       the answer's head, with its whole Content-Length, and half its body, then a clean close
      stall     the answer is held STALL seconds, then sent whole
    `faults` may be changed at any time; `down()` and `up()` take the server away and give it back, as the Proxy's.
    `exchanges` logs every request, `requests(*texts)` counts those whose "METHOD TARGET STATUS FAULT" holds every
    TEXT, and `injected` counts the faults. TLS: a server context, to be HTTPS in front of a plain HTTP server."""

    def __init__(self, target_port: int, faults: dict[str, float] | None = None, kind: str = "s3", seed: int = 28,
                 stall: float = 3.0, retry_after: bool = False, tls: ssl.SSLContext | None = None):
        assert set(faults or {}) <= set(FAULTS) and kind in _ERRORS
        self.faults = dict(faults or {})
        self.kind, self.stall, self.retry_after = kind, stall, retry_after
        self._seed = seed
        self._seen = collections.Counter()
        self._closed = threading.Event()
        self.exchanges: list[Exchange] = []
        self.injected = collections.Counter()
        super().__init__(target_port, tls)

    def requests(self, *texts: str) -> int:
        with self._lock:
            return sum(all(text in str(exchange) for text in texts) for exchange in self.exchanges)

    def _choose(self, method: str, target: str, byte_range: str) -> str | None:
        """The fault for a request, drawn from the seed, its method, path and range, and how many such came before it:
        the same in every run, whatever the order of requests for other paths."""
        key = f"{self._seed} {method} {urllib.parse.urlsplit(target).path} {byte_range}"
        with self._lock:
            self._seen[key] += 1
            draw = random.Random(f"{key} {self._seen[key]}").random()
            for fault, share in self.faults.items():
                if draw < share:
                    self.injected[fault] += 1
                    return fault
                draw -= share
            return None

    def _serve(self, client: socket.socket):
        upstream = None
        try:
            with client.makefile("rb") as requests:
                while True:
                    request = _Message(requests)
                    if request.header("expect").lower() == "100-continue":  # answered here: the server never sees it
                        request.without("expect")
                        client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                    request.read_body(requests, response=False)
                    method, target = request.first_line.split()[:2]
                    fault = self._choose(method, target, request.header("range"))
                    exchange = Exchange(method, target, {name: request.header(name) for name in _LOGGED_HEADERS
                                                         if request.header(name)}, fault=fault)
                    with self._lock:
                        self.exchanges.append(exchange)
                    if exchange.fault in ("throttle", "error"):
                        exchange.status = 503 if exchange.fault == "throttle" else 500
                        client.sendall(self._error(exchange.status, send_body=method != "HEAD"))
                        continue
                    upstream, response = self._pass_on(upstream, request, method)
                    exchange.status = int(response.first_line.split()[1])
                    head = response.head()
                    if exchange.fault in ("reset", "cut"):
                        client.sendall(head + response.body[:len(response.body) // 2] if response.body
                                       else head[:len(head) // 2])
                        if exchange.fault == "reset":
                            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                        return
                    if exchange.fault == "stall" and self._closed.wait(self.stall):
                        return
                    client.sendall(head + response.body)
                    if response.ends_connection() or request.ends_connection():
                        return
        except (OSError, ValueError, IndexError):  # the connection ended, or held no HTTP
            pass
        finally:
            client.close()  # not a shutdown, which would send a FIN before a reset's RST
            self._drop(client)
            if upstream is not None:
                self._disconnect(upstream)

    def _error(self, status: int, send_body: bool) -> bytes:
        content_type, body, headers = _ERRORS[self.kind][status]
        headers = {"Content-Type": content_type, "Content-Length": str(len(body)), **headers,
                   **({"Retry-After": "1"} if self.retry_after and status == 503 else {})}
        reason = {503: "Service Unavailable", 500: "Internal Server Error"}[status]
        lines = [f"HTTP/1.1 {status} {reason}", *(f"{name}: {value}" for name, value in headers.items()), "", ""]
        return "\r\n".join(lines).encode() + (body if send_body else b"")

    def _pass_on(self, upstream, request: _Message, method: str):
        """((the connection to the server, its stream), the server's response to REQUEST): on UPSTREAM's connection,
        or on a new one if there is none or the server had closed it."""
        for fresh in (upstream is None, True):
            if fresh:
                if upstream is not None:
                    self._disconnect(upstream)
                connection = self._connect()
                upstream = connection, connection.makefile("rb")
            try:
                upstream[0].sendall(request.head() + request.body)
                response = _Message(upstream[1])
            except OSError:  # ConnectionError too
                if fresh:
                    raise
                continue
            status = int(response.first_line.split()[1])
            if method != "HEAD" and status not in _NO_BODY and status >= 200:
                response.read_body(upstream[1], response=True)
            if response.ends_connection():
                self._disconnect(upstream)
                upstream = None
            return upstream, response

    def _disconnect(self, upstream):
        connection, stream = upstream
        self._drop(connection)
        stream.close()
        connection.close()

    def close(self):
        self._closed.set()
        super().close()


class TlsRelay:
    """HTTPS on 127.0.0.1 in front of a plain-http server on TARGET_PORT: TLS ends here, with CONTEXT (a server
    context), and the bytes go on as they are. On an asyncio loop of its own rather than a thread a direction, as
    Proxy: an SSL socket must not be read and written from two threads at once."""

    def __init__(self, target_port: int, context: ssl.SSLContext):
        self._target = target_port
        self._open: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.SelectorEventLoop()  # not the policy's: trio_asyncio, imported by tests, sets its own
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._relay, "127.0.0.1", 0, ssl=context, ssl_handshake_timeout=10))
        self.port = self._server.sockets[0].getsockname()[1]
        self.url = f"https://127.0.0.1:{self.port}"
        threading.Thread(target=self._loop.run_forever, daemon=True).start()

    async def _relay(self, client: asyncio.StreamReader, client_writer: asyncio.StreamWriter):
        upstream, upstream_writer = await asyncio.open_connection("127.0.0.1", self._target)
        self._open |= {client_writer, upstream_writer}
        await asyncio.gather(_pipe(client, upstream_writer), _pipe(upstream, client_writer))
        self._open -= {client_writer, upstream_writer}

    def close(self):
        async def stop():
            self._server.close()
            relays = asyncio.all_tasks() - {asyncio.current_task()}
            for writer in self._open:
                writer.transport.abort()  # each relay's pipes then read the end of their streams
            if relays:
                await asyncio.wait(relays, timeout=5)
        asyncio.run_coroutine_threadsafe(stop(), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter):
    try:
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()
    except OSError:
        pass
    finally:
        sink.close()


class WebServer:
    """An HTTP server on 127.0.0.1 of FILES (path -> bytes, changeable) with ETag and Last-Modified, taking byte
    ranges unless RANGES is False; `/redirect/PATH` redirects to PATH; `gets` counts the GETs of each path."""

    def __init__(self, files: dict[str, bytes], ranges: bool = True, head: bool = True,
                 tls: ssl.SSLContext | None = None):
        """HEAD False: HEAD is refused (405), as a presigned GET URL refuses it. TLS: HTTPS with this server context."""
        self.files, self.ranges, self.head = files, ranges, head
        self.gets = collections.Counter()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _web_handler(self))
        if tls is not None:
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self._server.server_port}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self):
        self._server.shutdown()
        self._server.server_close()


def _web_handler(web: WebServer):
    modified = email.utils.formatdate(time.time() - 3600, usegmt=True)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_HEAD(self):
            if not web.head:
                return self.reply(405)
            self.answer(send_body=False)

        def do_GET(self):
            self.answer(send_body=True)

        def answer(self, send_body: bool):
            path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
            if path.startswith("/redirect/"):
                return self.reply(302, {"Location": path.removeprefix("/redirect")})
            data = web.files.get(path)
            if data is None:
                return self.reply(404)
            if send_body:
                web.gets[path] += 1
            etag = f'"{hashlib.md5(data).hexdigest()}"'
            if self.headers.get("If-Match", etag) != etag:
                return self.reply(412)
            headers = {"ETag": etag, "Last-Modified": modified} | ({"Accept-Ranges": "bytes"} if web.ranges else {})
            start, end, status = 0, len(data), 200
            asked = self.headers.get("Range", "")
            if web.ranges and asked.startswith("bytes="):
                first, _, last = asked.removeprefix("bytes=").partition("-")
                start, end, status = int(first), min(len(data), int(last) + 1 if last else len(data)), 206
                if start >= len(data):
                    return self.reply(416, {"Content-Range": f"bytes */{len(data)}"})
                headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(data)}"
            self.reply(status, headers, data[start:end], send_body)

        def reply(self, status: int, headers: dict | None = None, body: bytes = b"", send_body: bool = True):
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if send_body:
                self.wfile.write(body)

        def log_message(self, *args):
            pass

    return Handler
