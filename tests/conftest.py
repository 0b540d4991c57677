"""Test harness: sample trees, config files, and fsmount daemons that never outlive a test."""
import contextlib
import os
import json
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import trio_asyncio
import trustme

BIN = Path(sys.executable).parent
FSMOUNT = str(BIN / "fsmount")
MOUNT_TIMEOUT = 15
# An Azure volume with neither key nor SAS looks for an Azure AD identity; the whole chain would also ask the instance
# metadata address, off this machine. Tests of the chain name the one credential they use.
os.environ.setdefault("AZURE_TOKEN_CREDENTIALS", "EnvironmentCredential")
TOKEN = "token-made-for-the-test"  # what token_server grants


def mounted_paths() -> set[str]:
    with open("/proc/self/mounts") as mounts:
        return {line.split()[1].encode().decode("unicode_escape") for line in mounts if " fuse.fsmount " in line}


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def force_unmount(mountpoint: str):
    if mountpoint in mounted_paths():
        subprocess.run(["umount", "-l", mountpoint], check=False)


class Daemon:
    """An `fsmount mount --foreground` process and its log."""

    def __init__(self, config: Path, mountpoint: Path, *args: str):
        self.config = config
        self.mountpoint = mountpoint
        self.log_path = mountpoint.parent / f"{mountpoint.name}.log"
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen([FSMOUNT, "mount", str(config), str(mountpoint), "--foreground", *args],
                                            stdout=log, stderr=subprocess.STDOUT)
        wait_for(lambda: str(mountpoint) in mounted_paths() or self.process.poll() is not None,
                 MOUNT_TIMEOUT, f"the mount on {mountpoint}")
        if self.process.poll() is not None:
            raise AssertionError(f"fsmount exited with {self.process.returncode}:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def status(self) -> dict:
        """What `fsmount status --json` would print, asked of the daemon on its control socket."""
        from fsmount import control
        return control.ask(os.path.realpath(self.mountpoint), "status")

    def wait_settled(self, timeout: float = 10):
        """Waits for a moment the daemon reports no block being fetched or waiting to be written and no upload
        waiting or under way: a request that a test says was never made had its chance to be made by then."""
        def settled():
            state = self.status()
            return state["memory_in_flight"] == 0 and state["uploads"]["waiting"] == state["uploads"]["uploading"] == 0
        wait_for(settled, timeout, "the daemon to settle")

    def stop(self):
        force_unmount(str(self.mountpoint))
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"fsmount did not exit after unmount:\n{self.log()}")
        if "the daemon failed" in self.log():
            raise AssertionError(f"fsmount failed:\n{self.log()}")


@pytest.fixture
def mount():
    """mount(config, mountpoint, *args) starts a daemon; every one is stopped after the test."""
    daemons = []

    def start(config, mountpoint, *args) -> Daemon:
        daemon = Daemon(Path(config), Path(mountpoint), *args)
        daemons.append(daemon)
        return daemon

    yield start
    for daemon in daemons:
        daemon.stop()


@pytest.fixture
def workspace(tmp_path):
    """A link mount (`links/`, world-readable like a real shared directory) and a mount point."""
    tmp_path.chmod(0o755)
    links = tmp_path / "links"
    links.mkdir(mode=0o755)
    (tmp_path / "mnt").mkdir()
    return tmp_path


def write_config(directory: Path, text: str, name: str = "fsmount.conf") -> Path:
    path = directory / name
    path.write_text(text)
    return path


@pytest.fixture
def host_tree(workspace, mount):
    """A mounted tree: `data` (ro, sample files), `scratch` (rw, empty) and `team/a/notes` (rw)."""
    links = workspace / "links"
    data = links / "data"
    (data / "sub" / "deeper").mkdir(parents=True)
    (data / "hello.txt").write_text("hello\n")
    (data / "sub" / "deeper" / "numbers.bin").write_bytes(bytes(range(256)) * 4096)
    for name in ("scratch", "notes"):
        (links / name).mkdir()
    config = write_config(workspace, f"""
        link_mounts: ["{links}"]
        volumes {{
          data {{ source: "file://{data}" }}
          scratch {{ source: "file://{links}/scratch", mode: rw }}
          team/a/notes {{ source: "file://{links}/notes", mode: rw }}
        }}
    """)
    daemon = mount(config, workspace / "mnt")
    return workspace / "mnt", links, daemon


def pytest_sessionfinish(session, exitstatus):
    """A last guard: a mount a failed test left behind under the test directories is detached."""
    base = str(session.config._tmp_path_factory.getbasetemp()) if hasattr(session.config, "_tmp_path_factory") else None
    for path in mounted_paths():
        if base and path.startswith(base):
            with contextlib.suppress(OSError):
                force_unmount(path)


def _server(name: str, tmp_path_factory):
    from servers import serve
    server = serve(name, tmp_path_factory.mktemp(name))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def moto(tmp_path_factory):
    """A moto S3 server for the whole session."""
    yield from _server("moto", tmp_path_factory)


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory):
    """A SeaweedFS S3 gateway (with its master, volume server and filer) for the whole session."""
    yield from _server("seaweedfs", tmp_path_factory)


@pytest.fixture(scope="session")
def azurite(tmp_path_factory):
    """An Azurite (Azure Blob) server for the whole session."""
    yield from _server("azurite", tmp_path_factory)


@pytest.fixture(scope="session")
def fake_gcs(tmp_path_factory):
    """A fake-gcs-server (GCS) for the whole session."""
    yield from _server("fake-gcs", tmp_path_factory)


class PrivateCa:
    """A CA the test makes, in DIRECTORY: `pem`, its certificate's file (for `verify`), and `server`, an SSL context
    serving a certificate for 127.0.0.1 that it signed."""

    def __init__(self, directory: Path):
        ca = trustme.CA()
        self.pem = directory / "ca.pem"
        ca.cert_pem.write_to_path(str(self.pem))
        self.server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1").configure_cert(self.server)


@pytest.fixture(scope="session")
def private_ca(tmp_path_factory) -> PrivateCa:
    return PrivateCa(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="session")
def other_ca(tmp_path_factory) -> PrivateCa:
    """A second CA, which vouches for none of private_ca's certificates."""
    return PrivateCa(tmp_path_factory.mktemp("other-ca"))


@contextlib.asynccontextmanager
async def open_bucket(kind: str, server):
    """(a TrioStore on a fresh bucket of KIND on SERVER, the bucket's name), inside a trio-asyncio loop."""
    from buckets import BUCKETS
    from fsmount.stores.aio import TrioStore
    bucket = BUCKETS[kind](server)
    async with trio_asyncio.open_loop():
        opened = TrioStore(bucket.store())
        await opened.open()
        try:
            yield opened, bucket.name
        finally:
            await opened.close()


def open_s3_bucket(moto):
    return open_bucket("s3", moto)


@pytest.fixture
async def s3_bucket(moto):
    async with open_s3_bucket(moto) as opened:
        yield opened


class JsonHandler(BaseHTTPRequestHandler):
    """A local stand-in's handler: it answers in JSON and logs nothing."""

    def answer(self, status: int, answer: dict):
        body = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def token_server():
    """An OAuth token endpoint on 127.0.0.1; `grants` holds the form of every request it answered."""
    grants = []

    class Handler(JsonHandler):
        def do_POST(self):
            grants.append(urllib.parse.parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode()))
            self.answer(200, {"access_token": TOKEN, "expires_in": 3600, "token_type": "Bearer"})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/token", grants
    server.shutdown()
