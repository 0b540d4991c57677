"""Test harness: sample trees, config files, fsmount daemons that never outlive a test and whose logs are checked, and
the unit, server and mount marks held to what each test does."""
import contextlib
import os
import json
import re
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
KINDS = ("unit", "server", "mount")  # the marks; pyproject.toml says what each means
SERVER_FIXTURES = frozenset({"moto", "seaweedfs", "azurite", "fake_gcs"})
MOUNT_FIXTURES = frozenset({"mount", "host_tree"})
# the fixtures a test of each mark may not ask for
BEYOND = {"unit": SERVER_FIXTURES | MOUNT_FIXTURES, "server": MOUNT_FIXTURES, "mount": frozenset()}
_running: pytest.Item | None = None  # the test being set up, run or torn down
_live: list["Daemon"] = []  # the daemons started and not yet stopped
_log_offsets: dict[Path, int] = {}  # each log file a live daemon writes to: how far it is checked
LOG_RECORD = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (?P<level>[A-Z]+) ")  # fsmount/logs.py's format
TRACEBACK = "Traceback (most recent call last)"


def kind_of(item: pytest.Item) -> str:
    return next(mark.name for mark in item.iter_markers() if mark.name in KINDS)


def pytest_collection_modifyitems(items):
    """Every test carries exactly one of the marks unit, server and mount, and asks for no fixture beyond it."""
    wrong = []
    for item in items:
        kinds = sorted({mark.name for mark in item.iter_markers() if mark.name in KINDS})
        if len(kinds) != 1:
            wrong.append(f"{item.nodeid}: marked {' and '.join(kinds) or 'none of unit, server, mount'}")
        elif asked := sorted(BEYOND[kinds[0]] & set(item.fixturenames)):
            wrong.append(f"{item.nodeid}: marked {kinds[0]} but asks for {', '.join(asked)}")
    if wrong:
        raise pytest.UsageError("each test is marked unit, server or mount, as it does:\n  " + "\n  ".join(wrong))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item):
    global _running
    _running = item
    try:
        return (yield)
    finally:
        _running = None


def require_kind(*kinds: str, doing: str):
    """Fails the running test unless it is marked one of KINDS: a mark that says less than the test DOING does."""
    if _running is not None and (marked := kind_of(_running)) not in kinds:
        pytest.fail(f"{_running.nodeid} is marked {marked} but {doing}: mark it {kinds[0]}", pytrace=False)


@pytest.fixture(autouse=True)
def _marks_and_logs_hold(request):
    """After each test: a unit test used no session server (one started before it is not started again), and what every
    daemon still running logged during the test is checked."""
    yield
    if kind_of(request.node) == "unit" and (used := sorted(SERVER_FIXTURES & set(request.fixturenames))):
        pytest.fail(f"{request.node.nodeid} is marked unit but uses {', '.join(used)}: mark it server", pytrace=False)
    try:
        _check_logs(path for daemon in _live for path in daemon.log_files)
    finally:
        for daemon in [daemon for daemon in _live if daemon.process.poll() is not None]:  # killed, never stopped
            _forget(daemon)


def expected_log_lines() -> list[re.Pattern]:
    """The running test's `expect_log(regex, ...)` marks: the warnings and errors it provokes on purpose."""
    if _running is None:
        return []
    return [re.compile(pattern) for mark in _running.iter_markers("expect_log") for pattern in mark.args]


def unexpected_log_records(text: str, expected: list[re.Pattern]) -> list[str]:
    """The records of a daemon's log TEXT that no EXPECTED pattern matches the first line of: a WARNING, ERROR or
    CRITICAL, or any that holds a traceback (lines outside a record, such as Python's own reports, are one record)."""
    records: list[list[str]] = []
    for line in text.splitlines():
        if LOG_RECORD.match(line) or not records:
            records.append([line])
        else:
            records[-1].append(line)
    unexpected = []
    for lines in records:
        level = (match := LOG_RECORD.match(lines[0])) and match["level"]
        if ((level in ("WARNING", "ERROR", "CRITICAL") or any(TRACEBACK in line for line in lines))
                and not any(pattern.search(lines[0]) for pattern in expected)):
            unexpected.append("\n".join(lines))
    return unexpected


def log_since(path: Path, start: int) -> tuple[str, int]:
    """PATH's whole lines from offset START (from 0 if logrotate moved it away and a new one began), and the offset
    after them."""
    try:
        with open(path, "rb") as stream:
            if os.fstat(stream.fileno()).st_size < start:
                start = 0
            stream.seek(start)
            text = stream.read()
    except FileNotFoundError:
        return "", start
    text = text[:text.rfind(b"\n") + 1]
    return text.decode(errors="replace"), start + len(text)


def fail_on_unexpected(logs: dict[Path, str]):
    """Fails the running test if a log's text in LOGS holds a record it did not expect (`unexpected_log_records`)."""
    expected = expected_log_lines()
    said = [f"{path}:\n{record}" for path, text in logs.items() for record in unexpected_log_records(text, expected)]
    if said:
        pytest.fail("a daemon logged what the test did not expect (mark the test expect_log if it should):\n"
                    + "\n".join(said), pytrace=False)


def check_log_files(*paths: Path):
    """Fails the running test if one of PATHS, whole, holds a record it did not expect: the logs of daemons started
    other than as a `Daemon`."""
    fail_on_unexpected({path: log_since(path, 0)[0] for path in paths})


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
    """An `fsmount mount --foreground` process and its log: its output (`log()`), and the file its config names if
    any, both checked after each test and once it stopped (`check_log`)."""

    def __init__(self, config: Path, mountpoint: Path, *args: str):
        require_kind("mount", doing="mounts")
        self.config = config
        self.mountpoint = mountpoint
        self.log_path = mountpoint.parent / f"{mountpoint.name}.log"
        self.log_files = [path for path in (self.log_path, _config_log_file(config)) if path is not None]
        for path in self.log_files:  # a daemon before this one on the same files has them checked up to here
            _log_offsets.setdefault(path, _size_or_zero(path))
        _live.append(self)
        try:
            with open(self.log_path, "ab") as log:
                self.process = subprocess.Popen([FSMOUNT, "mount", str(config), str(mountpoint), "--foreground",
                                                 *args], stdout=log, stderr=subprocess.STDOUT)
            wait_for(lambda: str(mountpoint) in mounted_paths() or self.process.poll() is not None,
                     MOUNT_TIMEOUT, f"the mount on {mountpoint}")
            if self.process.poll() is not None:
                raise AssertionError(f"fsmount exited with {self.process.returncode}:\n{self.log()}")
        except BaseException:
            _forget(self)
            raise

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

    def check_log(self):
        """Fails the running test if the daemon logged, since the last check, a traceback, or a warning or error the
        test did not expect."""
        _check_logs(self.log_files)

    def stop(self):
        try:
            force_unmount(str(self.mountpoint))
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise AssertionError(f"fsmount did not exit after unmount:\n{self.log()}")
            if "the daemon failed" in self.log():
                raise AssertionError(f"fsmount failed:\n{self.log()}")
            self.check_log()
        finally:
            _forget(self)


def _check_logs(paths):
    """Checks what each of PATHS, log files of live daemons, gained since it was last checked."""
    logs = {}
    for path in dict.fromkeys(paths):
        if path in _log_offsets:
            logs[path], _log_offsets[path] = log_since(path, _log_offsets[path])
    fail_on_unexpected(logs)


def _forget(daemon: Daemon):
    """DAEMON is not checked again, nor its log files once no live daemon writes to them."""
    if daemon in _live:
        _live.remove(daemon)
    in_use = {path for other in _live for path in other.log_files}
    for path in set(daemon.log_files) - in_use:
        _log_offsets.pop(path, None)


def _config_log_file(config: Path) -> Path | None:
    from fsmount.config import ConfigError, load_config
    try:
        log_file = load_config(str(config)).log_file
    except (ConfigError, OSError):  # the mount fails too, and says why
        return None
    return Path(log_file) if log_file else None


def _size_or_zero(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


@pytest.fixture
def mount():
    """mount(config, mountpoint, *args) starts a daemon; every one is stopped after the test."""
    daemons = []

    def start(config, mountpoint, *args) -> Daemon:
        daemon = Daemon(Path(config), Path(mountpoint), *args)
        daemons.append(daemon)
        return daemon

    yield start
    with contextlib.ExitStack() as stopping:  # every one, if one fails; the last started first
        for daemon in daemons:
            stopping.callback(daemon.stop)


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
