"""The benchmark: fsmount, rclone mount and s3fs-fuse side by side on one local store server, in one run.

The server is SeaweedFS (S3), or with `--store azure` Azurite and with `--store gcs` fake-gcs-server,
where the peer is rclone mount alone (s3fs speaks S3 only). Data is loaded, and the written files
listed, through fsmount's own store clients. Each tool gets the same bucket and an empty cache.

Rows: sequential read of a 1 GiB object cold (empty tool cache) and warm (tool cache full, page
cache dropped), random 4 KiB reads cold and warm (fio), `ls -l` of a 10,000-object prefix the
first and the second time, `cp -r` of 1,000 objects of 16 KiB, `cp` of a 512 MiB file into the
mount and 500 files of 16 KiB written by a shell loop (each timed until the server holds every
byte), and the daemon's peak RSS.

The data-loader rows read datasets as training jobs do, each group on a fresh mount: a shuffled
epoch over 4,000 objects of 128 KiB in 40 directories by 8 and by 16 threads, cold and again from
the tool's cache (the page cache dropped before each), after one `find` and stat of the tree, a
loader's index; the cold epoch's first 1,000 files by 8 threads once more, with the server 20 ms away
(each request held that long by scripts/delay_relay.py, as a cloud region's round trip); an epoch over 200
objects of 4 MiB by 8 threads; 8 threads each reading a 256 MiB
object of its own; the time to the first byte of the 1 GiB object; pyarrow reading 3 of the 16
columns of a 1 GiB Parquet file (its footer, then those columns' chunks of each of its 16 row
groups, by ranged reads). With SeaweedFS each of those
rows is followed by the requests the server answered during it, as the server counts them (its
Prometheus metrics).

The scale rows: `ls -l` of a prefix of 100,000 objects on a fresh mount, then `ls -l` and `find` of it, each
after a remount with the cache the mount before left (a tool that keeps listings on disk answers from them),
with their requests and the peak RSS of those mounts; and fsmount's warm random 4 KiB reads of the 1 GiB
object with a million more blocks entered in its block index (rows only: a cache of that many blocks,
as far as lookups go). rclone's `ls -l` asks a HEAD of every object (10,000 took ~10 s here), so it is left
out of them; they are measured in the first round alone (s3fs takes a minute and a half over them).

rclone is measured twice: with its full cache (every row) and with no cache (the write rows, where
it is at its fastest: its cache holds uploads back for 5 s, and the data-loader rows). The server
alone (`server-alone`) is measured through fsmount's store client with no mount and no cache: the
1 GiB object in eight ranged GETs of 8 MiB at once, the 512 MiB file in parts of 8 MiB four at
once, the 500 small files in PUTs one after another; about the most any tool could get from this
server on this machine. `pyfuse3-floor` is the least work a pyfuse3 daemon can do, about the most
fsmount could get: for the cold read scripts/pyfuse3_floor.py (ranged GETs into reused memory, reads
answered from there, no cache), for the cold epochs scripts/pyfuse3_tree_floor.py (the tree known
from the start, one GET a file by fsmount's client of small GETs, reads answered from memory, no
cache). `fsmount-host` reads the small-object epoch from a local copy through a linked host volume
of fsmount: what its warm epoch is held to. `fsmount-metrics` (named in `--tools` only) is fsmount with
`metrics.listen` set, every FUSE and store request counted, for the read and epoch rows: beside fsmount, what the
counting costs.

The apps rows run programs people point at a mount, each on a fresh mount into a prefix of its own, timed from the
program's start until the server holds exactly what it wrote: every file at its size and nothing else, directory
markers aside (a temporary object left behind never passes): `rsync -a` of a tree of 2,000 files of 0-8 KiB in 100
directories from a local copy in the page cache; `tar x` of a tar of the same tree; `git clone --no-hardlinks` of a
local repository of 300 commits of 36 files (the working tree and .git as a local clone has them); and one
transaction of 5,000 UPDATEs of random rows through Python's sqlite3 (its default rollback journal) on a 50 MiB
database `cp`'d into the mount before the timer, until the server holds the database at its new size and no journal.
The tree, the tar, the repository and the database are made once from fixed seeds. With SeaweedFS each row is
followed by the requests the server answered during it, rsync's also per file; they leave out the listings the bench
sends itself while it waits for a program's files (one every 1% of the time so far). A row a tool fails shows n/a
for it (the error on stderr); rclone-nocache, the floor and fsmount-host are not measured there.

The tools, the floor and the server alone take turns, round after round (3 by default), each round
starting one further along: what the one before leaves behind (a server still busy with its writes,
or warm from its reads) falls on each in turn. A row shows the median of the rounds (the RSS row
their largest), so a slow minute of the machine or the server does not decide a row. `--rows`
picks groups of rows (default: all): read, random, ls, cp, writes, epoch, far, mid, parallel, ttfb, parquet,
scale, apps.
Prints a Markdown table with fsmount/peer ratios, and each round's numbers on stderr.
"""
import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import botocore.session
import trio
import urllib3
from azure.storage.blob import BlobServiceClient

ROOT = Path(__file__).resolve().parents[1]
BIN = ROOT / ".venv" / "bin"
sys.path.insert(0, str(ROOT / "scripts"))
from free_port import free_base  # noqa: E402
from make_demo_data import AZURITE_ACCOUNT, AZURITE_KEY  # noqa: E402
from store_session import StoreSession  # noqa: E402

from fsmount.config import DEFAULT_BLOCK_SIZE, DEFAULT_PARALLEL_PARTS  # noqa: E402
from fsmount.credentials import AzureCredentials, GcsCredentials  # noqa: E402
from fsmount.stores.azure import AzureStore  # noqa: E402
from fsmount.stores.gcs import GcsStore  # noqa: E402
from fsmount.stores.s3 import S3Endpoint, S3Store  # noqa: E402

BUCKET = "bench"
HOST = "fsmount-host"  # fsmount over a linked host copy of the epoch's objects: the data-loader rows' floor
METRICS = "fsmount-metrics"  # fsmount with its metrics served: what counting costs the read rows
KEY, SECRET = "bench", "bench"
BIG_KEY = "big/1GiB.bin"
MANY, SMALL = 10_000, 1_000
WRITTEN, WRITES = 512 * 2**20, 500
SERVER_ALONE = "server-alone"
FLOOR = "pyfuse3-floor"  # measured for the cold read alone
PARALLEL_GETS = 8  # of the server alone's read, each of a block as fsmount's cache holds it by default
EPOCH_FILES, EPOCH_SIZE, EPOCH_DIRS = 4000, 128 * 1024, 40
MID_FILES, MID_SIZE = 200, 4 * 2**20
PARALLEL_FILES, PARALLEL_SIZE = 8, 256 * 2**20
SHUFFLE_SEED = 26
FIND_ROW = "find + stat of the 4,000 objects, cold"
TTFB_ROW = "time to first byte of 1 GiB, cold"
PARALLEL_ROW = "8 readers of 8 x 256 MiB, cold"
PARQUET_ROW = "pyarrow: 3 of 16 columns of a 1 GiB Parquet file, cold"
PARQUET_KEY, PARQUET_COLUMNS, PARQUET_ROWS, PARQUET_ROW_GROUP = "parquet/table.parquet", 16, 2**23, 2**19
PARQUET_READ = ["c00", "c07", "c13"]
HUGE = 100_000  # objects of the prefix the scale rows list
SEEDED_BLOCKS = 1_000_000  # in fsmount's index for the scale rows' random reads
LS_HUGE_ROW, LS_HUGE_AGAIN_ROW = "ls -l 100,000 objects, first", "ls -l 100,000 objects, after a remount"
FIND_HUGE_ROW = "find 100,000 objects, after a remount"
HUGE_RSS_ROW = "daemon peak RSS, 100,000 objects"
SEEDED_ROW = "random 4 KiB reads, warm, 1,000,000 more blocks indexed"
FAR_MS = 20  # each request held this long on its way to the server: a cloud region's round trip
FAR_FILES = 1000  # of the epoch's, in its order: at 20 ms a request, s3fs reads ~60 a second
FAR_ROW = f"small-object epoch, 8 readers, cold, {FAR_MS} ms from the server"
APPS_FILES, APPS_DIRS, APPS_MAX_SIZE = 2000, 100, 8 * 1024  # the tree rsync and tar write
APPS_SEED = 27  # of the tree, the repository and the database, and of the rows the transaction updates
GIT_COMMITS, GIT_FILES = 300, 36
GIT_START = 1767225600  # the first commit's time, the clones' too
GIT_ENV = {"GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1"} | {  # clones alike, their reflogs too
    f"GIT_{who}_{what}": value for who in ("AUTHOR", "COMMITTER")
    for what, value in (("NAME", "Bench"), ("EMAIL", "bench@example.org"), ("DATE", f"{GIT_START} +0000"))}
SQLITE_ROWS, SQLITE_UPDATES = 200_000, 5_000
RSYNC_ROW = "rsync -a of 2,000 files of 0-8 KiB"
RSYNC_PER_FILE_ROW = "requests per rsync'd file"
TAR_ROW = "tar x of 2,000 files of 0-8 KiB"
GIT_ROW = "git clone --no-hardlinks of 300 commits"
SQLITE_ROW = "SQLite: 5,000 UPDATEs in one transaction, 50 MiB database"
PROGRAM_TIMEOUT = 600  # seconds an apps row's program may take: a tool that hangs it fails the row
STALL = 120  # seconds the server's listing may stay short of what a program wrote before the row fails
GROUPS = {
    "read": ["sequential read 1 GiB, cold", "sequential read 1 GiB, warm"],
    "random": ["random 4 KiB reads, cold", "random 4 KiB reads, warm"],
    "ls": ["ls -l 10,000 objects, first", "ls -l 10,000 objects, again"],
    "cp": ["cp -r 1,000 x 16 KiB"],
    "writes": ["cp 512 MiB into the mount", "500 x 16 KiB written by a shell loop"],
    "epoch": [FIND_ROW] + [f"small-object epoch, {readers} readers, {state}" for readers in (8, 16)
                           for state in ("cold", "warm")],
    "mid": ["mid-size epoch, 8 readers, cold", "mid-size epoch, 8 readers, warm"],
    "parallel": [PARALLEL_ROW],
    "ttfb": [TTFB_ROW],
    "parquet": [PARQUET_ROW],
    "far": [FAR_ROW],
    "scale": [LS_HUGE_ROW, LS_HUGE_AGAIN_ROW, FIND_HUGE_ROW, HUGE_RSS_ROW, SEEDED_ROW],
    "apps": [RSYNC_ROW, RSYNC_PER_FILE_ROW, TAR_ROW, GIT_ROW, SQLITE_ROW],
}
LOADER_GROUPS = {"epoch", "mid", "parallel", "ttfb", "parquet", "far"}
ONCE = {"scale"}  # groups measured in the first round only
REQUESTS = ", requests"  # ends the name of the row that counts the server's requests during the row before
ROWS = [  # (row, unit, higher is better)
    ("sequential read 1 GiB, cold", "MB/s", True),
    ("sequential read 1 GiB, warm", "MB/s", True),
    ("random 4 KiB reads, cold", "IOPS", True),
    ("random 4 KiB reads, warm", "IOPS", True),
    ("ls -l 10,000 objects, first", "s", False),
    ("ls -l 10,000 objects, again", "s", False),
    ("cp -r 1,000 x 16 KiB", "s", False),
    ("cp 512 MiB into the mount", "MB/s", True),
    ("500 x 16 KiB written by a shell loop", "s", False),
    (FIND_ROW, "s", False),
    ("small-object epoch, 8 readers, cold", "files/s", True),
    ("small-object epoch, 8 readers, warm", "files/s", True),
    ("small-object epoch, 16 readers, cold", "files/s", True),
    ("small-object epoch, 16 readers, warm", "files/s", True),
    (FAR_ROW, "files/s", True),
    ("mid-size epoch, 8 readers, cold", "MB/s", True),
    ("mid-size epoch, 8 readers, warm", "MB/s", True),
    (PARALLEL_ROW, "MB/s", True),
    (TTFB_ROW, "ms", False),
    (PARQUET_ROW, "s", False),
    (LS_HUGE_ROW, "s", False),
    (LS_HUGE_AGAIN_ROW, "s", False),
    (FIND_HUGE_ROW, "s", False),
    (HUGE_RSS_ROW, "MiB", False),
    (SEEDED_ROW, "IOPS", True),
    (RSYNC_ROW, "s", False),
    (RSYNC_PER_FILE_ROW, "requests/file", False),
    (TAR_ROW, "s", False),
    (GIT_ROW, "s", False),
    (SQLITE_ROW, "s", False),
    ("daemon peak RSS", "MiB", False),
]
PEAK_ROWS = {"daemon peak RSS", HUGE_RSS_ROW}  # the largest of the rounds, where other rows show their median
WRITE_ROWS = {"cp 512 MiB into the mount", "500 x 16 KiB written by a shell loop"}


class Server:
    """One local store server with the bucket `bench`: how it starts, and how each tool reaches it."""
    name = ""  # scripts/serve's
    ports = ()  # the ports it takes beside its own, as offsets
    peers = ("rclone", "rclone-nocache")

    def __init__(self, work: Path):
        self.work = work
        self.port = free_base(list(self.ports))
        self.url = f"http://127.0.0.1:{self.port}"
        self.tool_url = self.url  # where the tools reach it: its own port, or the relay's (`far`)
        self.relay = None
        self.process = None
        self.session: StoreSession | None = None  # fsmount's client of the bucket, as the daemon opens it
        self.listings = 0  # pages of listings the bench asked for itself

    def start(self):
        self.process = subprocess.Popen([str(ROOT / "scripts" / "serve"), self.name, str(self.port), str(self.work / self.name)],
                                        stdout=open(self.work / f"{self.name}.log", "wb"), stderr=subprocess.STDOUT,
                                        start_new_session=True)
        wait_for_port(self.port, self.process, f"see {self.work / self.name}.log")
        self.create_bucket()
        self.session = StoreSession(self.make_store())

    @contextlib.contextmanager
    def far(self):
        """Tools mounted meanwhile reach the server through a relay that holds each request FAR_MS."""
        if self.relay is None:
            port = free_base([])
            self.relay = subprocess.Popen([str(BIN / "python"), str(ROOT / "scripts" / "delay_relay.py"), str(port),
                                           str(self.port), str(FAR_MS)])
            self.relay_url = f"http://127.0.0.1:{port}"
            wait_for_port(port, self.relay)
        self.tool_url = self.relay_url
        try:
            yield
        finally:
            self.tool_url = self.url

    def stop(self):
        if self.relay is not None:
            self.relay.terminate()
            self.relay.wait()
        if self.session is not None:
            self.session.close()
        if self.process is not None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:  # SeaweedFS can hang after SIGTERM, retrying the filer it stopped
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()

    def requests(self) -> int | None:
        """How many requests the server has answered so far, if it counts them."""
        return None

    def load(self, big: Path, size: int, groups: set[str], host_copy: Path):
        """What the rows of GROUPS read: the 1 GiB object (from the file BIG), 10,000 empty objects and
        1,000 of 16 KiB; the data-loader rows' objects, the small ones also under HOST_COPY."""
        if groups & {"read", "random", "ttfb", "scale"}:
            self.put_in_parts(BIG_KEY, big)
        if "parallel" in groups:
            part = big.with_name("parallel")
            random_file(part, PARALLEL_SIZE)
            for index in range(PARALLEL_FILES):
                self.put_in_parts(f"parallel/object-{index}", part)
            part.unlink()
        small = os.urandom(16 * 1024)
        jobs = []
        if "ls" in groups:
            jobs += [(f"many/object-{index:05d}", b"") for index in range(MANY)]
        if "cp" in groups:
            jobs += [(f"small/file-{index:04d}", small) for index in range(SMALL)]
        if "scale" in groups:
            jobs += [(f"huge/object-{index:06d}", b"") for index in range(HUGE)]
        if groups & {"epoch", "far"}:
            for key in epoch_keys():
                data = os.urandom(EPOCH_SIZE)
                jobs.append((key, data))
                (host_copy / key).parent.mkdir(parents=True, exist_ok=True)
                (host_copy / key).write_bytes(data)
        if "parquet" in groups:
            table = big.with_name("table.parquet")
            write_parquet(table)
            self.put_in_parts(PARQUET_KEY, table)
            table.unlink()
        if "mid" in groups:
            jobs += [(f"mid/d{index % 4}/object-{index:03d}", os.urandom(MID_SIZE)) for index in range(MID_FILES)]
        store, slots = self.session.store, trio.CapacityLimiter(16)

        async def put(key, data):
            async with slots:
                await store.put(key, data)

        async def put_all():
            async with trio.open_nursery() as nursery:
                for key, data in jobs:
                    nursery.start_soon(put, key, data)

        self.session.call(put_all)

    def put_in_parts(self, key: str, path: Path, part_size: int = 64 * 2**20, parallel: int = 4):
        """The file at PATH as KEY, by the uploader of the daemon's large files."""
        self.session.call(self.session.store.put_file, key, str(path), 0, part_size, parallel)

    def listed(self, prefix: str) -> list[tuple[str, int]]:
        """(key, size) of every object under PREFIX."""
        return [(info.key, info.size) for info in self.infos(prefix)]

    def infos(self, prefix: str) -> list:
        """The ObjectInfo of every object under PREFIX."""
        async def every_page():
            found = []
            async for page in self.session.store.list(prefix, ""):
                self.listings += 1
                found += page.objects
            return found

        return self.session.call(every_page)


class SeaweedFS(Server):
    name = "seaweedfs"
    ports = (1, 2, 3, 4, 10000, 10001, 10002, 10003)
    peers = ("rclone", "s3fs", "rclone-nocache")

    def requests(self) -> int:
        metrics = urllib3.request("GET", f"http://127.0.0.1:{self.port + 4}/metrics").data.decode()
        return sum(int(float(line.split()[-1])) for line in metrics.splitlines()
                   if line.startswith("SeaweedFS_s3_request_total{"))

    def create_bucket(self):
        botocore.session.get_session().create_client(
            "s3", endpoint_url=self.url, region_name="us-east-1", aws_access_key_id=KEY,
            aws_secret_access_key=SECRET).create_bucket(Bucket=BUCKET)

    def make_store(self):
        return S3Store(BUCKET, S3Endpoint(self.url, key=KEY, secret=SECRET))

    def fsmount_volume(self) -> str:
        return f"""credentials {{ s3: [ {{ bucket: {BUCKET}, key: {KEY}, secret: {SECRET} }} ] }}
                   volumes {{ bench {{ source: "s3://{BUCKET}/", endpoint: "{self.tool_url}", mode: rw }} }}"""

    def rclone_remote(self) -> dict:
        return {"TYPE": "s3", "PROVIDER": "SeaweedFS", "ENDPOINT": self.tool_url, "ACCESS_KEY_ID": KEY,
                "SECRET_ACCESS_KEY": SECRET}


class Azurite(Server):
    name = "azurite"

    @property
    def account_url(self) -> str:
        return f"{self.url}/{AZURITE_ACCOUNT}"

    def create_bucket(self):
        BlobServiceClient(self.account_url, credential={"account_name": AZURITE_ACCOUNT, "account_key": AZURITE_KEY}) \
            .create_container(BUCKET)

    def make_store(self):
        return AzureStore(AZURITE_ACCOUNT, BUCKET, AzureCredentials(AZURITE_ACCOUNT, account_key=AZURITE_KEY),
                          endpoint=self.account_url)

    def fsmount_volume(self) -> str:
        return f"""credentials {{ azure: [ {{ account_name: {AZURITE_ACCOUNT}, account_key: "{AZURITE_KEY}" }} ] }}
                   volumes {{ bench {{ source: "azure://{BUCKET}/", endpoint: "{self.tool_url}/{AZURITE_ACCOUNT}", mode: rw }} }}"""

    def rclone_remote(self) -> dict:
        return {"TYPE": "azureblob", "ACCOUNT": AZURITE_ACCOUNT, "KEY": AZURITE_KEY,
                "ENDPOINT": f"{self.tool_url}/{AZURITE_ACCOUNT}"}


class FakeGcs(Server):
    name = "fake-gcs"

    def create_bucket(self):
        urllib3.request("POST", f"{self.url}/storage/v1/b", json={"name": BUCKET})

    def make_store(self):
        return GcsStore(BUCKET, GcsCredentials(), endpoint=self.url)

    def fsmount_volume(self) -> str:
        return f"""volumes {{ bench {{ source: "gs://{BUCKET}/", endpoint: "{self.tool_url}", mode: rw }} }}"""

    def rclone_remote(self) -> dict:
        return {"TYPE": "google cloud storage", "ANONYMOUS": "true", "ENDPOINT": f"{self.tool_url}/storage/v1/"}


SERVERS = {"s3": SeaweedFS, "azure": Azurite, "gcs": FakeGcs}


def wait_for_port(port: int, process: subprocess.Popen, hint: str = ""):
    """Waits until PROCESS accepts connections on PORT."""
    deadline = time.monotonic() + 120
    while subprocess.run(["bash", "-c", f"echo > /dev/tcp/127.0.0.1/{port}"], capture_output=True).returncode:
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{process.args[0]} did not start on port {port}; {hint}")
        time.sleep(0.5)


def random_file(path: Path, length: int):
    with open(path, "wb") as stream:
        for _ in range(0, length, 2**20):
            stream.write(os.urandom(min(2**20, length)))


def epoch_keys() -> list[str]:
    return [f"epoch/d{index % EPOCH_DIRS:02d}/object-{index:04d}" for index in range(EPOCH_FILES)]


def drop_page_cache():
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("3")


def mounted(path) -> bool:
    return any(line.split()[1] == str(path) for line in Path("/proc/self/mounts").read_text().splitlines())


class Tool:
    """One mount of one tool, started in the foreground as a child, with its own cache dir."""

    def __init__(self, name, work: Path, server: Server):
        self.name, self.work, self.server = name, work, server
        self.mnt = work / f"mnt-{name}"
        self.cache = work / f"cache-{name}"
        self.peak_rss = 0
        self.session_rss = 0  # of the mount stopped last
        self.process = None
        self.floor_of_tree = False  # the floor's file system: the epoch's tree, or the one big object

    @property
    def root(self) -> Path:
        """Where the bucket's keys appear: fsmount shows the bucket as one volume of its tree."""
        return self.mnt / "bench" if self.name in ("fsmount", METRICS, HOST) else self.mnt

    def command(self) -> tuple[list[str], dict]:
        if self.name == FLOOR and self.floor_of_tree:
            store = self.server.session.store.store
            objects = [{"path": info.key, "size": info.size, "url": request.url, "headers": request.headers}
                       for info in self.server.infos("epoch/")
                       for request in [store.range_request(info.key, 0, info.size, info.version)]]
            listing = self.work / "floor-objects.json"
            listing.write_text(json.dumps(objects))
            return [str(BIN / "python"), str(ROOT / "scripts" / "pyfuse3_tree_floor.py"), str(self.mnt),
                    str(listing)], {}
        if self.name == FLOOR:
            store = self.server.session.store.store
            info = self.server.session.call(self.server.session.store.stat, BIG_KEY)
            request = store.range_request(BIG_KEY, 0, info.size, info.version)
            floor = {"path": BIG_KEY, "size": info.size, "url": request.url, "headers": request.headers}
            return [str(BIN / "python"), str(ROOT / "scripts" / "pyfuse3_floor.py"), str(self.mnt),
                    json.dumps(floor)], {}
        if self.name in ("fsmount", METRICS, HOST):
            config = self.work / f"{self.name}.conf"
            volume = self.server.fsmount_volume() if self.name != HOST else \
                f"""link_mounts: ["{self.work / 'host'}"]
                    volumes {{ bench {{ source: "file://{self.work / 'host'}" }} }}"""
            metrics = f'metrics {{ listen: "127.0.0.1:{free_base([])}" }}' if self.name == METRICS else ""
            config.write_text(f"""
                cache {{ dir: "{self.cache}" }}
                {metrics}
                {volume}
            """)
            return [str(BIN / "fsmount"), "mount", str(config), str(self.mnt), "--foreground"], {}
        if self.name.startswith("rclone"):
            environment = {f"RCLONE_CONFIG_BENCH_{name}": value for name, value in self.server.rclone_remote().items()}
            mode = "off" if self.name == "rclone-nocache" else "full"
            return [str(BIN / "rclone"), "mount", f"bench:{BUCKET}", str(self.mnt), "--vfs-cache-mode", mode,
                    "--cache-dir", str(self.cache)], environment
        passwords = self.work / "s3fs.passwd"
        passwords.write_text(f"{KEY}:{SECRET}\n")
        passwords.chmod(0o600)
        return ["s3fs", BUCKET, str(self.mnt), "-f", "-o", f"url={self.server.tool_url}", "-o", "use_path_request_style",
                "-o", f"use_cache={self.cache}", "-o", f"passwd_file={passwords}"], {}

    def start(self, keep_cache: bool = False):
        """Mounts with an empty cache, or with KEEP_CACHE the one the mount before left."""
        if not keep_cache:
            shutil.rmtree(self.cache, ignore_errors=True)
        self.cache.mkdir(parents=True, exist_ok=True)
        self.mnt.mkdir(exist_ok=True)
        command, environment = self.command()
        log = open(self.work / f"{self.name}.log", "ab")
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **environment})
        deadline = time.monotonic() + 60
        while not mounted(self.mnt):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not mount; see {self.work / (self.name + '.log')}")
            time.sleep(0.1)
        os.stat(self.mnt)  # answered once the tool serves the mount: a daemon still starting is not measured

    def stop(self):
        if self.process is None:
            return
        self.session_rss = self._peak_rss()
        self.peak_rss = max(self.peak_rss, self.session_rss)
        subprocess.run(["umount", "-l", str(self.mnt)], check=False)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def _peak_rss(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) // 1024
        return 0


def timed(command, cwd=None) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def sequential(path: Path, size: int) -> float:
    drop_page_cache()
    return size / 1e6 / timed(["dd", f"if={path}", "of=/dev/null", "bs=1M"])


def random_reads(path: Path, seconds: int) -> float:
    drop_page_cache()
    result = subprocess.run(["fio", "--name=random", f"--filename={path}", "--readonly", "--rw=randread", "--bs=4k",
                             "--ioengine=psync", "--time_based", f"--runtime={seconds}", "--invalidate=1",
                             "--output-format=json"], capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"fio failed on {path}: {result.stderr or result.stdout}")
    return json.loads(result.stdout)["jobs"][0]["read"]["iops"]


def into_page_cache(source: Path):
    """The files the write rows write, read once so that they come from memory, not the local disk."""
    subprocess.run(["cat", str(source / "big"), str(source / "small")], check=True, stdout=subprocess.DEVNULL)


def until_stored(server: Server, prefix: str, count: int, size: int, start: float, timeout: float = 600) -> float:
    """Seconds from START until the server lists COUNT objects of SIZE bytes under PREFIX (directory
    markers aside)."""
    while time.perf_counter() - start < timeout:
        listed = [(key, length) for key, length in server.listed(prefix) if not key.endswith("/")]
        if len(listed) == count and all(length == size for _, length in listed):
            return time.perf_counter() - start
        time.sleep(0.02)
    raise RuntimeError(f"the server did not get {count} objects of {size} bytes under {prefix} in {timeout} s")


def measure_writes(tool: Tool, source: Path, round_number: int) -> dict:
    """The write rows, each timed from the program's start until the server holds every byte. The
    files written come from the page cache, so the local disk does not set the pace."""
    results = {}
    into_page_cache(source)
    prefix = f"written-{tool.name}-{round_number}"
    tool.start()
    try:
        (tool.root / prefix / "small").mkdir(parents=True)
        start = time.perf_counter()
        subprocess.run(["cp", str(source / "big"), str(tool.root / prefix / "big")], check=True)
        results["cp 512 MiB into the mount"] = WRITTEN / 1e6 / until_stored(tool.server, f"{prefix}/big", 1, WRITTEN, start)
        start = time.perf_counter()
        subprocess.run(["bash", "-c", f'for i in $(seq {WRITES}); do cat "$1" > "$2/file-$i"; done', "loop",
                        str(source / "small"), str(tool.root / prefix / "small")], check=True)
        results["500 x 16 KiB written by a shell loop"] = until_stored(tool.server, f"{prefix}/small/", WRITES,
                                                                       16 * 1024, start)
    finally:
        tool.stop()
    return results


@contextlib.contextmanager
def mounted_session(tool: Tool, keep_cache: bool = False):
    tool.start(keep_cache)
    try:
        yield
    finally:
        tool.stop()


def counted(server: Server, row: str, measurement) -> dict:
    """ROW's value, `measurement()`, and the requests the server answered meanwhile where it counts them, less the
    pages of listings the bench asked for itself (waiting for what a program wrote)."""
    before, listings = server.requests(), server.listings
    results = {row: measurement()}
    if before is not None:
        results[row + REQUESTS] = server.requests() - before - (server.listings - listings)
    return results


def read_whole(path: Path) -> int:
    with open(path, "rb", buffering=0) as stream:
        read = 0
        while chunk := stream.read(2**20):
            read += len(chunk)
        return read


def shuffled(files) -> list[Path]:
    """FILES in one fixed shuffled order, whatever order they came in: a data loader's epoch."""
    files = sorted(files)
    random.Random(SHUFFLE_SEED).shuffle(files)
    return files


def shuffled_files(directory: Path) -> list[Path]:
    """Every file under DIRECTORY, listed, in the epoch's order."""
    return shuffled(Path(parent) / name for parent, _, names in os.walk(directory) for name in names)


def epoch(files: list[Path], readers: int) -> tuple[float, int]:
    """Seconds and bytes of READERS threads reading FILES whole, in their order, after the page cache is dropped."""
    drop_page_cache()
    start = time.perf_counter()
    with ThreadPoolExecutor(readers) as pool:
        read = sum(pool.map(read_whole, files))
    return time.perf_counter() - start, read


def files_per_second(files: list[Path], readers: int) -> float:
    seconds, _ = epoch(files, readers)
    return len(files) / seconds


def megabytes_per_second(files: list[Path], readers: int) -> float:
    seconds, read = epoch(files, readers)
    return read / 1e6 / seconds


def find_and_stat(directory: Path) -> float:
    drop_page_cache()
    return timed(["find", str(directory), "-type", "f", "-printf", "%s %T@\n"])


def first_byte(path: Path) -> float:
    drop_page_cache()
    start = time.perf_counter()
    with open(path, "rb", buffering=0) as stream:
        stream.read(1)
    return time.perf_counter() - start


def measure_loader(tool: Tool, groups: set[str]) -> dict:
    """The data-loader rows, each group on a fresh mount with an empty cache."""
    results, server, root = {}, tool.server, tool.root
    if "epoch" in groups:
        for readers in (8, 16):
            with mounted_session(tool):
                if readers == 8:
                    results |= counted(server, FIND_ROW, lambda: find_and_stat(root / "epoch"))
                files = shuffled_files(root / "epoch")
                for state in ("cold", "warm"):
                    results |= counted(server, f"small-object epoch, {readers} readers, {state}",
                                       lambda: files_per_second(files, readers))
    if "far" in groups:
        with server.far(), mounted_session(tool):
            files = shuffled_files(root / "epoch")[:FAR_FILES]
            results |= counted(server, FAR_ROW, lambda: files_per_second(files, 8))
    if "mid" in groups:
        with mounted_session(tool):
            files = shuffled_files(root / "mid")
            for state in ("cold", "warm"):
                results |= counted(server, f"mid-size epoch, 8 readers, {state}", lambda: megabytes_per_second(files, 8))
    if "parallel" in groups:
        with mounted_session(tool):
            files = [root / "parallel" / f"object-{index}" for index in range(PARALLEL_FILES)]
            results |= counted(server, PARALLEL_ROW, lambda: megabytes_per_second(files, PARALLEL_FILES))
    if "ttfb" in groups:
        with mounted_session(tool):
            results |= counted(server, TTFB_ROW, lambda: first_byte(root / BIG_KEY) * 1000)
    if "parquet" in groups:
        with mounted_session(tool):
            results |= counted(server, PARQUET_ROW, lambda: columns_read(root / PARQUET_KEY))
    return results


def write_parquet(path: Path):
    """A table of PARQUET_COLUMNS float64 columns of random bits (1 GiB), uncompressed, in row groups of 64 MiB."""
    import pyarrow
    import pyarrow.parquet

    def column():
        return pyarrow.Array.from_buffers(pyarrow.float64(), PARQUET_ROW_GROUP,
                                          [None, pyarrow.py_buffer(os.urandom(8 * PARQUET_ROW_GROUP))])

    schema = pyarrow.schema([(f"c{index:02d}", pyarrow.float64()) for index in range(PARQUET_COLUMNS)])
    with pyarrow.parquet.ParquetWriter(path, schema, compression="none", use_dictionary=False,
                                       write_statistics=False) as writer:
        for _ in range(PARQUET_ROWS // PARQUET_ROW_GROUP):
            writer.write_table(pyarrow.table([column() for _ in schema], schema=schema), row_group_size=PARQUET_ROW_GROUP)


def columns_read(path: Path) -> float:
    """Seconds for pyarrow to read PARQUET_READ of every row group: the footer, then those columns' chunks."""
    import pyarrow.parquet
    drop_page_cache()
    start = time.perf_counter()
    table = pyarrow.parquet.read_table(path, columns=PARQUET_READ, memory_map=False, use_threads=True)
    seconds = time.perf_counter() - start
    if table.num_rows != PARQUET_ROWS:
        raise RuntimeError(f"pyarrow read {table.num_rows} rows of {path}, not {PARQUET_ROWS}")
    return seconds


def measure_server_alone(server: Server, source: Path, size: int, round_number: int, reads: bool,
                         writes: bool) -> dict:
    """The cold read and the write rows as fsmount's store client gets them from the server when it does
    nothing else (no mount, no cache): about the most any tool could get here."""
    store = server.session.store.store
    results = {}
    if reads:
        version = server.session.call(server.session.store.stat, BIG_KEY).version
        drop_page_cache()
        start = time.perf_counter()
        with ThreadPoolExecutor(PARALLEL_GETS) as pool:
            read = sum(map(len, pool.map(lambda offset: store.read_range(BIG_KEY, offset, DEFAULT_BLOCK_SIZE, version),
                                         range(0, size, DEFAULT_BLOCK_SIZE))))
        results["sequential read 1 GiB, cold"] = read / 1e6 / (time.perf_counter() - start)
    if not writes:
        return results
    into_page_cache(source)
    prefix = f"written-{SERVER_ALONE}-{round_number}"
    start = time.perf_counter()
    server.put_in_parts(f"{prefix}/big", source / "big", store.part_size, DEFAULT_PARALLEL_PARTS)
    results["cp 512 MiB into the mount"] = WRITTEN / 1e6 / (time.perf_counter() - start)
    small = (source / "small").read_bytes()
    start = time.perf_counter()
    for number in range(1, WRITES + 1):
        store.upload_bytes(f"{prefix}/small/file-{number}", small)
    results["500 x 16 KiB written by a shell loop"] = time.perf_counter() - start
    return results


def measure_floor(tool: Tool, size: int, groups: set[str]) -> dict:
    """The cold rows through the least a pyfuse3 daemon can do: of the big object, and of the epoch's tree."""
    results = {}
    if "read" in groups:
        tool.floor_of_tree = False
        with mounted_session(tool):
            results["sequential read 1 GiB, cold"] = sequential(tool.root / BIG_KEY, size)
    if "epoch" in groups:
        tool.floor_of_tree = True
        for readers in (8, 16):
            with mounted_session(tool):
                files = shuffled(tool.root / key for key in epoch_keys())
                results |= counted(tool.server, f"small-object epoch, {readers} readers, cold",
                                   lambda: files_per_second(files, readers))
    return results


def measure(tool: Tool, size: int, fio_seconds: int, groups: set[str]) -> dict:
    """The read rows of GROUPS: a mount for the cold random reads, another for the rest."""
    results = {}
    big = tool.root / BIG_KEY
    if "random" in groups:
        with mounted_session(tool):
            results["random 4 KiB reads, cold"] = random_reads(big, fio_seconds)
    if not groups & {"read", "random", "ls", "cp"}:
        return results
    with mounted_session(tool):
        if "read" in groups:
            results["sequential read 1 GiB, cold"] = sequential(big, size)
            results["sequential read 1 GiB, warm"] = sequential(big, size)
        if "random" in groups:
            results["random 4 KiB reads, warm"] = random_reads(big, fio_seconds)
        if "ls" in groups:
            results["ls -l 10,000 objects, first"] = timed(["ls", "-l", str(tool.root / "many")])
            results["ls -l 10,000 objects, again"] = timed(["ls", "-l", str(tool.root / "many")])
        if "cp" in groups:
            copy = tool.work / f"copy-{tool.name}"
            shutil.rmtree(copy, ignore_errors=True)
            results["cp -r 1,000 x 16 KiB"] = timed(["cp", "-r", str(tool.root / "small"), str(copy)])
            shutil.rmtree(copy)
    return results


def measure_scale(tool: Tool, fio_seconds: int) -> dict:
    """`ls -l` of the 100,000-object prefix on a fresh mount, then again and `find` of it each after a remount
    (a tool that keeps listings on disk answers from them), the peak RSS of those mounts; fsmount's warm random
    reads with a million more blocks in its index."""
    server, huge, results, rss = tool.server, tool.root / "huge", {}, 0
    for row, command, keep_cache in ((LS_HUGE_ROW, ["ls", "-l"], False), (LS_HUGE_AGAIN_ROW, ["ls", "-l"], True),
                                     (FIND_HUGE_ROW, ["find"], True)):
        with mounted_session(tool, keep_cache):
            results |= counted(server, row, lambda: timed(command + [str(huge)]))
        rss = max(rss, tool.session_rss)
    results[HUGE_RSS_ROW] = rss
    if tool.name == "fsmount":
        with mounted_session(tool):
            read_whole(tool.root / BIG_KEY)
        seed_index(tool.cache / "index.sqlite", SEEDED_BLOCKS)
        with mounted_session(tool, keep_cache=True):
            read_whole(tool.root / BIG_KEY)  # each block checked once, as a warm mount does
            results[SEEDED_ROW] = random_reads(tool.root / BIG_KEY, fio_seconds)
    return results


def seed_index(index: Path, count: int):
    """COUNT blocks of 4 KiB of no object entered in fsmount's block index, as a cache that holds them has them."""
    import sqlite3
    with contextlib.closing(sqlite3.connect(index)) as database, database:
        database.executemany("INSERT INTO blocks (name, size, checksum, used, ready) VALUES (?, 4096, 0, 0, 1)",
                             ((f"seeded-{number:064d}",) for number in range(count)))


def make_apps(apps: Path):
    """What the apps rows write, made once from APPS_SEED: the tree of APPS_FILES files of 0 to APPS_MAX_SIZE bytes
    in APPS_DIRS directories and a tar of it, the repository and a clone of it made as the row makes one, the
    database and a copy of it after the row's transaction: the clone and the copy are what the server must hold."""
    rng = random.Random(APPS_SEED)
    for index in range(APPS_FILES):
        path = apps / "tree" / f"d{index % APPS_DIRS:02d}" / f"file-{index:04d}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(rng.randint(0, APPS_MAX_SIZE)))
    subprocess.run(["tar", "cf", str(apps / "tree.tar"), "--sort=name", "-C", str(apps / "tree"), "."], check=True)
    make_repository(apps / "repository.git", rng)
    subprocess.run(["git", "clone", "--no-hardlinks", "-q", str(apps / "repository.git"), str(apps / "clone")],
                   check=True, env=git_environment())
    make_database(apps / "bench.db", rng)
    shutil.copy(apps / "bench.db", apps / "updated.db")
    transaction(apps / "updated.db")


def git_environment() -> dict:
    return {**os.environ, **GIT_ENV}


def make_repository(repository: Path, rng: random.Random):
    """A bare repository of GIT_COMMITS commits a minute apart on `main`, the first adding GIT_FILES files of 41
    lines, each other rewriting a line of 3 of them and adding two; made by `git fast-import` and packed by `git gc`,
    as a repository in use is."""
    def line() -> str:
        return f"value_{rng.randrange(10**6)} = {rng.randbytes(20).hex()!r}\n"

    files = {f"pkg{index % 4}/module{index:02d}.py": [f"# module {index}\n"] + [line() for _ in range(40)]
             for index in range(GIT_FILES)}
    stream = []
    for number in range(GIT_COMMITS):
        touched = sorted(files) if number == 0 else rng.sample(sorted(files), 3)
        for path in touched if number else ():
            lines = files[path]
            lines[rng.randrange(len(lines))] = line()
            lines += [line(), line()]
        message = f"commit {number}\n".encode()
        who = f"Bench <bench@example.org> {GIT_START + 60 * number} +0000"
        stream.append(f"commit refs/heads/main\nauthor {who}\ncommitter {who}\ndata {len(message)}\n".encode()
                      + message)
        for path in touched:
            data = "".join(files[path]).encode()
            stream.append(f"M 100644 inline {path}\ndata {len(data)}\n".encode() + data + b"\n")
    subprocess.run(["git", "init", "--bare", "-q", "-b", "main", str(repository)], check=True, env=git_environment())
    subprocess.run(["git", "-C", str(repository), "fast-import", "--quiet"], input=b"".join(stream), check=True,
                   env=git_environment())
    subprocess.run(["git", "-C", str(repository), "-c", "pack.threads=1", "gc", "--quiet"], check=True,
                   env=git_environment())


def make_database(database: Path, rng: random.Random):
    """SQLITE_ROWS rows of an integer key and 240 characters of text: ~50 MiB."""
    import sqlite3
    with contextlib.closing(sqlite3.connect(database)) as connection, connection:
        connection.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, body TEXT NOT NULL)")
        connection.executemany("INSERT INTO items VALUES (?, ?)",
                               ((key, rng.randbytes(120).hex()) for key in range(SQLITE_ROWS)))


def transaction(database: Path):
    """One transaction of SQLITE_UPDATES UPDATEs of random rows, each row's text made 400 characters long (so
    the database grows), through Python's sqlite3 with its default rollback journal."""
    import sqlite3
    rng = random.Random(APPS_SEED)
    updates = [(rng.randbytes(200).hex(), key) for key in rng.sample(range(SQLITE_ROWS), SQLITE_UPDATES)]
    with contextlib.closing(sqlite3.connect(database)) as connection, connection:
        connection.executemany("UPDATE items SET body = ? WHERE id = ?", updates)


def read_tree(directory: Path):
    """Every file under DIRECTORY read once, so that a row copies it from memory, not from the local disk."""
    for parent, _, names in os.walk(directory):
        for name in names:
            (Path(parent) / name).read_bytes()


def sizes(directory: Path, prefix: str) -> dict[str, int]:
    """The key under PREFIX and the size of every file under DIRECTORY: what a copy of it makes."""
    return {f"{prefix}/{(Path(parent) / name).relative_to(directory)}": os.lstat(Path(parent) / name).st_size
            for parent, _, names in os.walk(directory) for name in names}


def run_program(command: list[str], **options):
    """Runs COMMAND, failing with the last lines it wrote on stderr when it fails or takes over PROGRAM_TIMEOUT."""
    done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          timeout=PROGRAM_TIMEOUT, **options)
    if done.returncode:
        said = "\n".join(done.stderr.strip().splitlines()[-4:])
        raise RuntimeError(f"{command[0]} exited with {done.returncode} ({len(done.stderr.splitlines())} lines on "
                           f"stderr), last:\n{said}")


def until_holds(server: Server, prefix: str, expected: dict[str, int], start: float) -> float:
    """Seconds from START until the objects under PREFIX are EXPECTED's keys at their sizes and no others,
    directory markers aside: a temporary object left behind never passes. Listed every 1% of the time so far (at
    least 20 ms), so that listings of thousands of objects do not crowd the tool; fails once the listing has
    stayed short of EXPECTED, unchanged, for STALL seconds."""
    held, changed = None, time.perf_counter()
    while True:
        listed = {key: size for key, size in server.listed(f"{prefix}/") if not key.endswith("/")}
        now = time.perf_counter()
        if listed == expected:
            return now - start
        if listed != held:
            held, changed = listed, now
        elif now - changed > STALL:
            raise RuntimeError(f"the server's objects under {prefix}/ stayed {STALL} s as they were: "
                               + difference(listed, expected))
        time.sleep(max(0.02, (now - start) / 100))


def difference(held: dict[str, int], expected: dict[str, int]) -> str:
    """What HELD lacks, has beside and has at another size than EXPECTED, with a few keys of each."""
    wrong = [f"{key} ({held[key]} bytes, not {expected[key]})" for key in sorted(held.keys() & expected.keys())
             if held[key] != expected[key]]
    return "; ".join(f"{len(keys)} {what}: {', '.join(keys[:5])}" for what, keys in (
        ("missing", sorted(expected.keys() - held.keys())), ("more", sorted(held.keys() - expected.keys())),
        ("of another size", wrong)) if keys)


def rsynced(tool: Tool, apps: Path, prefix: str) -> dict:
    """`rsync -a` of the tree into PREFIX, with the requests the server answered during it."""
    target, expected = tool.root / prefix, sizes(apps / "tree", prefix)
    target.mkdir(parents=True)
    read_tree(apps / "tree")

    def row() -> float:
        start = time.perf_counter()
        run_program(["rsync", "-a", f"{apps / 'tree'}/", str(target)])
        return until_holds(tool.server, prefix, expected, start)

    return counted(tool.server, RSYNC_ROW, row)


def untarred(tool: Tool, apps: Path, prefix: str) -> dict:
    """`tar x` of the tree's tar into PREFIX."""
    target, expected = tool.root / prefix, sizes(apps / "tree", prefix)
    target.mkdir(parents=True)
    (apps / "tree.tar").read_bytes()  # into the page cache

    def row() -> float:
        start = time.perf_counter()
        run_program(["tar", "xf", str(apps / "tree.tar"), "-C", str(target)])
        return until_holds(tool.server, prefix, expected, start)

    return counted(tool.server, TAR_ROW, row)


def cloned(tool: Tool, apps: Path, prefix: str) -> dict:
    """`git clone --no-hardlinks` of the repository into PREFIX. The server must hold every file of the local clone
    (working tree and .git) at its size, .git/config at the size the mount shows once the clone is done: there
    git writes what it found the file system to do (`filemode = false`, `symlinks = false` where chmod or symlinks
    fail), so its size is the tool's."""
    target, expected = tool.root / prefix, sizes(apps / "clone", prefix)
    target.mkdir(parents=True)
    read_tree(apps / "repository.git")

    def row() -> float:
        start = time.perf_counter()
        run_program(["git", "clone", "--no-hardlinks", "-q", str(apps / "repository.git"), str(target)],
                    env=git_environment())
        config = {f"{prefix}/.git/config": (target / ".git" / "config").stat().st_size}
        return until_holds(tool.server, prefix, expected | config, start)

    return counted(tool.server, GIT_ROW, row)


def transacted(tool: Tool, apps: Path, prefix: str) -> dict:
    """The database `cp`'d into PREFIX, and held by the server, before the timer; then one transaction on it through
    the mount, timed until the server holds the database at its new size and no journal."""
    database = tool.root / prefix / "bench.db"
    database.parent.mkdir(parents=True)
    run_program(["cp", str(apps / "bench.db"), str(database)])
    until_holds(tool.server, prefix, {f"{prefix}/bench.db": (apps / "bench.db").stat().st_size}, time.perf_counter())

    def row() -> float:
        start = time.perf_counter()
        transaction(database)
        return until_holds(tool.server, prefix, {f"{prefix}/bench.db": (apps / "updated.db").stat().st_size}, start)

    return counted(tool.server, SQLITE_ROW, row)


def measure_apps(tool: Tool, apps: Path, round_number: int) -> dict:
    """The apps rows, each on a fresh mount into a prefix of its own. A row the tool fails is left out (n/a in
    the table) and the run goes on: one program a tool cannot serve does not end it."""
    results = {}
    for row, measurement, name in ((RSYNC_ROW, rsynced, "rsync"), (TAR_ROW, untarred, "tar"), (GIT_ROW, cloned, "git"),
                                   (SQLITE_ROW, transacted, "sqlite")):
        try:
            with mounted_session(tool):
                results |= measurement(tool, apps, f"apps-{tool.name}-{round_number}/{name}")
        except Exception as error:  # whatever the program or the tool did, the row is n/a
            print(f"{tool.name} failed the row {row!r}: {error}", file=sys.stderr, flush=True)
    if RSYNC_ROW + REQUESTS in results:
        results[RSYNC_PER_FILE_ROW] = results[RSYNC_ROW + REQUESTS] / APPS_FILES
    return results


def groups_of(tool: Tool) -> set[str]:
    """The groups of rows TOOL is measured in: rclone without its cache where it is at its best (not the apps rows,
    which need its cache); rclone's `ls -l` asks a HEAD of every object (10,000 took ~10 s), so the 100,000-object
    rows leave it out."""
    if tool.name == HOST:
        return {"epoch"}
    if tool.name in (FLOOR, METRICS):
        return {"read", "epoch"}
    if tool.name == "rclone-nocache":
        return {"writes"} | LOADER_GROUPS
    if tool.name == "rclone":
        return set(GROUPS) - {"scale"}
    return set(GROUPS)


def summary(rounds: list[dict]) -> dict:
    """One tool's rows over the rounds that have them: the median of each, the largest peak RSS."""
    return {row: (max if row in PEAK_ROWS else statistics.median)([values[row] for values in rounds if row in values])
            for row in {row for values in rounds for row in values}}


def table(results: dict[str, dict], peers: list[str]) -> str:
    """The rows any tool has (n/a where one failed or was not measured), each followed by the requests the server
    answered during it where counted."""
    lines = ["| row | unit | fsmount | " + " | ".join(peers) + " | " + " | ".join(f"fsmount/{p}" for p in peers) + " |",
             "|---|---|---:|" + "---:|" * (2 * len(peers))]
    for row, unit, higher in ROWS:
        for name, unit in ((row, unit), (row + REQUESTS, "requests")):
            ours = results["fsmount"].get(name)
            values = [results[peer].get(name) for peer in peers]
            if ours is None and values.count(None) == len(values):
                continue
            ratios = [f"{ours / value:.2f}" if value and ours is not None else "n/a" for value in values]
            better = "higher is better" if higher and unit != "requests" else "lower is better"
            cells = ["n/a" if value is None else f"{value:.0f}" if unit in ("IOPS", "MiB", "requests", "files/s")
                     else f"{value:.2f}" for value in [ours] + values]
            lines.append(f"| {name} | {unit} ({better}) | " + " | ".join(cells + ratios) + " |")
    return "\n".join(lines)


def remove_unless_mounted(work: Path):
    with open("/proc/self/mounts") as mounts:
        live = [line.split()[1] for line in mounts if line.split()[1].startswith(f"{work}/")]
    if live:
        print(f"kept {work}: still mounted there: {', '.join(live)}", file=sys.stderr)
    else:
        shutil.rmtree(work, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=None,
                        help="working directory, kept afterwards (default: a new one under /tmp, removed at the end)")
    parser.add_argument("--store", choices=list(SERVERS), default="s3", help="the kind of server (default: s3)")
    parser.add_argument("--size-mib", type=int, default=1024, help="size of the big object")
    parser.add_argument("--fio-seconds", type=int, default=10)
    parser.add_argument("--tools", default=None, help="default: fsmount and every peer the store has")
    parser.add_argument("--writes-only", action="store_true", help="only the write rows (and RSS): --rows writes")
    parser.add_argument("--rows", default=None, help=f"groups of rows, comma-separated (default: all): {', '.join(GROUPS)}")
    parser.add_argument("--rounds", type=int, default=3, help="how many times each tool runs every row (default: 3)")
    args = parser.parse_args()
    groups = {"writes"} if args.writes_only else set(args.rows.split(",")) if args.rows else set(GROUPS)
    if groups - set(GROUPS):
        parser.error(f"unknown groups of rows: {', '.join(sorted(groups - set(GROUPS)))}; known: {', '.join(GROUPS)}")
    work = Path(args.work or tempfile.mkdtemp(prefix="fsmount-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    server = SERVERS[args.store](work)
    names = args.tools.split(",") if args.tools else ["fsmount", *server.peers, FLOOR, HOST]
    names = [name for name in names if groups_of(Tool(name, work, server)) & groups]
    tools = [Tool(name, work, server) for name in names]
    try:
        server.start()
        size = args.size_mib * 2**20
        source = work / "source"
        source.mkdir(exist_ok=True)
        for name, length in (("big", WRITTEN), ("small", 16 * 1024), ("load", size)):
            random_file(source / name, length)
        print(f"loading data into {server.name} at {server.url} ...", file=sys.stderr, flush=True)
        server.load(source / "load", size, groups, work / "host")
        (source / "load").unlink()
        if "apps" in groups:
            make_apps(work / "apps")
        alone = [None] if groups & {"read", "writes"} else []  # the server alone, which takes its turn as the tools do
        turns = [*tools, *alone]
        rounds = {name: [] for name in [*names, SERVER_ALONE]}
        for round_number in range(1, args.rounds + 1):
            first = (round_number - 1) % len(turns)
            for tool in turns[first:] + turns[:first]:
                name = tool.name if tool else SERVER_ALONE
                print(f"round {round_number}: measuring {name} ...", file=sys.stderr, flush=True)
                if tool is None:
                    measured = measure_server_alone(server, source, size, round_number, "read" in groups,
                                                    "writes" in groups)
                elif tool.name == FLOOR:
                    measured = measure_floor(tool, size, groups)
                else:
                    measured_groups = groups_of(tool) & groups
                    if round_number > 1:
                        measured_groups -= ONCE  # their peers take minutes; measured in the first round alone
                    measured = measure(tool, size, args.fio_seconds, measured_groups)
                    measured |= measure_loader(tool, measured_groups)
                    if "scale" in measured_groups:
                        measured |= measure_scale(tool, args.fio_seconds)
                    if "writes" in measured_groups:
                        measured |= measure_writes(tool, source, round_number)
                    if "apps" in measured_groups:
                        measured |= measure_apps(tool, work / "apps", round_number)
                    measured["daemon peak RSS"] = tool.peak_rss
                print(f"round {round_number}: {name}: {json.dumps(measured)}", file=sys.stderr, flush=True)
                rounds[name].append(measured)
        print(f"{os.cpu_count()} cores, {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') // 2**30} GiB, "
              f"{server.name} on loopback, {time.strftime('%Y-%m-%d')}, median of {args.rounds} rounds\n")
        results = {name: summary(measured) for name, measured in rounds.items() if measured}
        print(table(results, [name for name in results if name != "fsmount"]))
    finally:
        for tool in tools:
            tool.stop()
        server.stop()
        if args.work is None:  # a run of 3 rounds leaves ~10 GiB of server data, caches and copies
            remove_unless_mounted(work)


if __name__ == "__main__":
    main()
