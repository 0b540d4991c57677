"""Local store servers for tests, started through scripts/serve on 127.0.0.1 and stopped after the session."""
import asyncio
import collections
import contextlib
import email.utils
import hashlib
import socket
import ssl
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


class Server:
    """A server process and its request log; `requests(*texts)` counts log lines that hold every TEXT."""

    def __init__(self, name: str, log_dir: Path, *arguments: str, port_offsets: tuple[int, ...] = ()):
        """ARGUMENTS: scripts/serve's after the port; PORT_OFFSETS: the ports it takes beside its own."""
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


class Proxy:
    """A TCP relay on 127.0.0.1 in front of a server, to take the server away and give it back: `down()`
    drops every connection and refuses new ones; `stall_after(n)` stops passing requests on once N more
    bytes of them have gone through; `up()` ends both. `connections` counts those it accepted, `requests` holds
    the first KEPT bytes of the requests."""

    def __init__(self, target_port: int, kept: int = _REQUESTS_KEPT):
        self._target = target_port
        self._kept = kept
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._flowing = threading.Event()
        self._flowing.set()
        self._refusing = False
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self.connections = 0
        self.sent = 0  # bytes of requests passed on
        self.requests = bytearray()  # the first KEPT bytes of them, as sent
        self._stall_at: int | None = None
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
            upstream = socket.create_connection(("127.0.0.1", self._target))
            with self._lock:
                self._open |= {client, upstream}
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, requests: bool):
        try:
            while data := source.recv(65536):
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

    def _drop(self, *ends: socket.socket):
        with self._lock:
            for end in ends:
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)
                self._open.discard(end)

    def down(self):
        self._refusing = True
        self._drop(*self._open)

    def stall_after(self, size: int):
        with self._lock:
            self._stall_at = self.sent + size

    def up(self):
        self._refusing = False
        self._stall_at = None
        self._flowing.set()

    def close(self):
        self.down()
        self._flowing.set()
        self._listener.close()


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
