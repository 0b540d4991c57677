"""Faults of the stores survived, through a real mount: a FaultRelay in front of each server throttles, fails, resets,
cuts short and stalls a share of the requests, or takes the server away. Reads give the exact bytes, every file
closed reaches the store, fsx and rsync find no difference, and a read fails with EIO only once its retries are spent."""
import errno
import hashlib
import os
import random
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from buckets import KINDS, relayed_bucket
from conftest import wait_for, write_config
from servers import FaultRelay, IpfsNode, WebServer
from test_object_volume import drop_page_cache, volume_config
from test_write_back import WRITE_BACK, make_tree, sync

pytestmark = pytest.mark.mount

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIB = 2**20
BIG = random.Random(5).randbytes(6 * MIB + 12345)
SMALL = {f"small/d{index % 4}/f{index:02}.bin": random.Random(index).randbytes(1000 + 397 * index) for index in range(40)}
OBJECTS = {"big.bin": BIG, **SMALL}
THROTTLED = {"throttle": 0.15}
MIXED = {"throttle": 0.1, "error": 0.05, "reset": 0.025, "cut": 0.025}
STALLED = {"stall": 0.1}
STALL_SECONDS = 3
HANG_LIMIT = 120  # seconds after which a read that has not ended counts as hung
RETRY_BUDGET = 8  # seconds: the volumes' retries.max_time
RETRY_CEILING = RETRY_BUDGET + 7  # seconds a FUSE request may take to fail: the budget, one request's connect timeout, slack


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_all(root, names) -> dict[str, str]:
    """Each of NAMES under ROOT read whole, eight at a time: name -> sha256, or the error's errno name."""
    def read(name):
        try:
            return name, sha256((root / name).read_bytes())
        except OSError as error:
            return name, errno.errorcode[error.errno]

    with ThreadPoolExecutor(8) as pool:
        return dict(pool.map(read, names))


def expected(objects: dict[str, bytes]) -> dict[str, str]:
    return {name: sha256(data) for name, data in objects.items()}


@pytest.fixture(params=KINDS)
def relayed(request):
    """(a fresh bucket on each kind of store holding OBJECTS, a FaultRelay in front of its server)."""
    with relayed_bucket(request, request.param, OBJECTS) as relayed:
        yield relayed


def relayed_config(directory, bucket, relay, **options):
    """The config of a volume of BUCKET whose server is reached through RELAY (a cache under DIRECTORY)."""
    return volume_config(directory, bucket, url=relay.url, retries=f"attempts: 10, max_time: {RETRY_BUDGET}s", **options)


def mount_relayed(workspace, mount, bucket, relay, **options):
    """(the daemon, the volume's root)."""
    daemon = mount(relayed_config(workspace, bucket, relay, **options), workspace / "mnt")
    return daemon, workspace / "mnt" / "bucket"


def eio_lines(daemon) -> str:
    return "\n".join(line for line in daemon.log().splitlines() if " INFO " not in line)


def fired(relay, faults) -> bool:
    """Whether RELAY injected faults of each group FAULTS has: an error status (throttle, error), a broken connection
    (reset, cut), a stall."""
    groups = [{"throttle", "error"}, {"reset", "cut"}, {"stall"}]
    return all(sum(relay.injected[fault] for fault in group) > 0 for group in groups if group & set(faults))


def history(relay, results: dict[str, str], wanted: dict[str, str]) -> str:
    """The relay's log of the requests for each object whose read RESULTS differ from WANTED."""
    differing = [os.path.basename(name) for name in wanted if results.get(name) != wanted[name]]
    return "\n".join(str(exchange) for exchange in relay.exchanges
                     if any(name in exchange.target for name in differing))


@pytest.mark.parametrize("faults", [MIXED, STALLED], ids=["throttled-reset-cut", "stalled"])
def test_cold_reads_through_faults_give_the_exact_bytes(faults, relayed, workspace, mount):
    bucket, relay = relayed
    relay.faults, relay.stall = faults, STALL_SECONDS
    daemon, root = mount_relayed(workspace, mount, bucket, relay)
    names = list(OBJECTS) if faults is MIXED else ["big.bin", *list(SMALL)[:12]]  # each stall costs seconds
    results, wanted = read_all(root, names), expected({name: OBJECTS[name] for name in names})
    assert results == wanted, f"{eio_lines(daemon)}\n{history(relay, results, wanted)}"
    assert fired(relay, faults), relay.injected


def test_files_copied_in_under_slowdown_all_close_and_reach_the_store(relayed, workspace, mount, tmp_path):
    bucket, relay = relayed
    relay.faults, relay.retry_after = THROTTLED, True
    daemon, root = mount_relayed(workspace, mount, bucket, relay, extra="mode: rw")
    copied = {f"copied/{index:02}.bin": random.Random(100 + index).randbytes(MIB) for index in range(30)}
    (tmp_path / "copied").mkdir()
    (root / "copied").mkdir()
    failed = []
    for name, data in copied.items():
        (tmp_path / name).write_bytes(data)
        done = subprocess.run(["cp", str(tmp_path / name), str(root / name)], capture_output=True, text=True,
                              timeout=HANG_LIMIT)
        if done.returncode:
            failed.append(done.stderr.strip())
    wait_for(lambda: sync(root).returncode == 0, HANG_LIMIT, "every upload to be done")
    assert {name: sha256(bucket.get(name)) for name in copied} == expected(copied)
    assert failed == [], f"{len(failed)} of {len(copied)} cp failed: {failed}\n{eio_lines(daemon)}"
    assert any(exchange.fault == "throttle" and exchange.method in ("PUT", "POST") for exchange in relay.exchanges)


def test_rsync_of_a_tree_in_and_back_out_under_faults_is_identical(relayed, workspace, mount, tmp_path):
    """Written back as rsync is best written (uploads after close, retried in the background), then read back
    through a fresh cache."""
    bucket, relay = relayed
    relay.faults = MIXED
    daemon, root = mount_relayed(workspace, mount, bucket, relay, extra="mode: rw", staging=WRITE_BACK)
    make_tree(tmp_path / "tree", files=120, directories=6)
    rsync_in = subprocess.run(["rsync", "-a", f"{tmp_path / 'tree'}/", f"{root / 'tree'}/"], capture_output=True,
                              text=True, timeout=HANG_LIMIT)
    assert rsync_in.returncode == 0, f"{rsync_in.stderr}\n{eio_lines(daemon)}"
    wait_for(lambda: sync(root).returncode == 0, HANG_LIMIT, "every upload to be done")
    daemon.stop()
    (workspace / "again").mkdir()
    again = mount(relayed_config(workspace / "again", bucket, relay), workspace / "mnt")
    rsync_out = subprocess.run(["rsync", "-a", f"{root / 'tree'}/", f"{tmp_path / 'back'}/"], capture_output=True,
                               text=True, timeout=HANG_LIMIT)
    assert rsync_out.returncode == 0, f"{rsync_out.stderr}\n{eio_lines(again)}"
    differences = subprocess.run(["diff", "-r", str(tmp_path / "tree"), str(tmp_path / "back")], capture_output=True,
                                 text=True)
    assert differences.returncode == 0, differences.stdout
    assert fired(relay, MIXED), relay.injected


def test_fsx_finds_no_difference_under_faults(relayed, workspace, mount, tmp_path):
    """fsx's 10,000 reads, writes, truncates and (one in 100) closes and reopens of one file, with mapped reads
    and writes off (-R -W), then the file on the server as fsx left it."""
    bucket, relay = relayed
    relay.faults = MIXED
    daemon, root = mount_relayed(workspace, mount, bucket, relay, extra="mode: rw")
    fsx = subprocess.run([f"{ROOT}/scripts/fsx", "-N", "10000", "-S", "28", "-R", "-W", "-c", "100", "-q",
                          "-P", str(tmp_path), str(root / "fsx.file")], capture_output=True, text=True, cwd=tmp_path,
                         timeout=600)
    assert fsx.returncode == 0, f"{fsx.stdout[-3000:]}\n{fsx.stderr[-2000:]}\n{eio_lines(daemon)}"
    wait_for(lambda: sync(root).returncode == 0, HANG_LIMIT, "the upload to be done")
    assert sha256(bucket.get("fsx.file")) == sha256((root / "fsx.file").read_bytes())
    assert fired(relay, MIXED), relay.injected


def one_read(path) -> subprocess.CompletedProcess:
    """One FUSE read of PATH (O_DIRECT: no read-ahead, no retry by the kernel), ended by the harness if it runs past
    HANG_LIMIT (exit 124)."""
    return subprocess.run(["timeout", str(HANG_LIMIT), "dd", f"if={path}", "of=/dev/null", "bs=64k", "count=1",
                           "iflag=direct", "status=none"], stderr=subprocess.PIPE, text=True)


@pytest.mark.expect_log(r"WARNING fsmount\.fs\.operations: read failed: \[Errno 5\] GET small/d1/f01\.bin ")
def test_a_store_gone_serves_cached_blocks_fails_others_with_eio_and_comes_back(relayed, workspace, mount):
    """The outage lasts as long as the reads in it take (seconds), not the issue's minute."""
    bucket, relay = relayed
    daemon, root = mount_relayed(workspace, mount, bucket, relay, ttl="1h")
    uncached = "small/d1/f01.bin"
    os.stat(root / uncached)
    assert sha256((root / "big.bin").read_bytes()) == sha256(BIG)
    relay.down()
    drop_page_cache()
    assert sha256((root / "big.bin").read_bytes()) == sha256(BIG)
    started = time.monotonic()
    failed = one_read(root / uncached)
    waited = time.monotonic() - started
    assert failed.returncode == 1 and "Input/output error" in failed.stderr, (failed, eio_lines(daemon))
    assert RETRY_BUDGET <= waited < RETRY_CEILING, f"EIO after {waited:.1f}s\n{eio_lines(daemon)}"
    relay.up()
    assert (root / uncached).read_bytes() == OBJECTS[uncached]


FLAT = {name.replace("/", "-"): data for name, data in OBJECTS.items()}


def test_a_url_volume_reads_the_exact_bytes_through_faults(workspace, mount):
    web = WebServer({f"/{name}": data for name, data in FLAT.items()})
    relay = FaultRelay(int(web.url.rsplit(":", 1)[1]), MIXED, kind="http")
    try:
        sources = ", ".join(f'"{relay.url}/{name}"' for name in FLAT)
        daemon = mount(write_config(workspace, f"""
            cache {{ dir: "{workspace}/cache", block_size: 1MiB, read_ahead: 4MiB }}
            volumes {{ web {{ source: [{sources}] }} }}
        """), workspace / "mnt")
        results, wanted = read_all(workspace / "mnt" / "web", FLAT), expected(FLAT)
        assert results == wanted, f"{eio_lines(daemon)}\n{history(relay, results, wanted)}"
        assert fired(relay, MIXED), relay.injected
    finally:
        relay.close()
        web.close()


def test_an_ipfs_volume_reads_the_exact_bytes_through_faults(workspace, mount, tmp_path):
    source = tmp_path / "source"
    for name, data in OBJECTS.items():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_bytes(data)
    node = IpfsNode(tmp_path, source)
    relay = FaultRelay(node.port, MIXED, kind="http")
    try:
        daemon = mount(write_config(workspace, f"""
            cache {{ dir: "{workspace}/cache", block_size: 1MiB, read_ahead: 4MiB }}
            volumes {{ ipfs {{ source: "ipfs://{node.root}", gateway: "{relay.url}" }} }}
        """), workspace / "mnt")
        results = read_all(workspace / "mnt" / "ipfs", OBJECTS)
        assert results == expected(OBJECTS), eio_lines(daemon)
        assert fired(relay, MIXED), relay.injected
    finally:
        relay.close()
        node.stop()
