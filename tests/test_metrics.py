"""The daemon's metrics, health and log through a real mount on moto: /metrics scraped with prometheus-client's parser
around workloads, its counts checked exactly; /healthz as the store's server goes away and comes back; the log file
moved away as logrotate does, SIGUSR2's debug lines, and no secret in any line."""
import errno
import json
import mmap
import os
import random
import signal
import socket
import subprocess
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from buckets import S3Bucket
from conftest import FSMOUNT, wait_for, write_config
from servers import FaultRelay, free_base

BLOCK = 128 * 1024  # the test's cache block: no read of the kernel's is smaller, so every read fetches whole blocks
BIG = random.Random(30).randbytes(20 * BLOCK + 4321)
KEY, SECRET = "AKIAMETRICSFSMOUNT01", "metrics/secret+Never-In-The-Log"


def metrics_config(directory, bucket: S3Bucket, port: int, url: str | None = None, extra: str = "",
                   retries: str = "attempts: 3, max_time: 2s"):
    return write_config(directory, f"""
        metrics {{ listen: "127.0.0.1:{port}" }}
        log {{ file: "{directory}/fsmount.log" }}
        cache {{ dir: "{directory}/cache", block_size: 128KiB, read_ahead: 1MiB, metadata_ttl: 60s }}
        staging {{ write_back: 0, multipart_threshold: 6MiB, part_size: 5MiB }}
        retries {{ {retries} }}
        credentials {{ s3: [ {{ bucket: {bucket.name}, key: "{KEY}", secret: "{SECRET}" }} ] }}
        volumes {{ bucket {{ source: "s3://{bucket.name}/", endpoint: "{url or bucket.server.url}", {extra} }} }}
    """)


class Scrape:
    """One scrape of /metrics: value(name, **labels) sums the samples of NAME whose labels include LABELS."""

    def __init__(self, port: int):
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        self.samples = [sample for family in text_string_to_metric_families(text) for sample in family.samples]

    def value(self, name: str, **labels) -> float:
        return sum(sample.value for sample in self.samples
                   if sample.name == name and labels.items() <= sample.labels.items())

    def has(self, name: str) -> bool:
        return any(sample.name == name for sample in self.samples)

    def has_labels(self, **labels) -> bool:
        return any(labels.items() <= sample.labels.items() for sample in self.samples)


def moved(before: Scrape, after: Scrape, name: str, **labels) -> float:
    return after.value(name, **labels) - before.value(name, **labels)


def health(port: int) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as answer:
        return answer.code, json.loads(answer.read())


def read_direct(path, chunk: int = BLOCK) -> bytes:
    """PATH read whole with O_DIRECT, CHUNK bytes a read: each read reaches the daemon, none from the page cache."""
    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECT)
    buffer, data = mmap.mmap(-1, chunk), bytearray()
    try:
        while count := os.readv(descriptor, [buffer]):
            data += buffer[:count]
    finally:
        os.close(descriptor)
        buffer.close()
    return bytes(data)


@pytest.fixture
def metered(workspace, moto, mount):
    """(volume root, bucket, metrics port, daemon) of an rw volume of a moto bucket holding big.bin."""
    bucket = S3Bucket(moto, {"big.bin": BIG})
    port = free_base([])
    daemon = mount(metrics_config(workspace, bucket, port, extra="mode: rw"), workspace / "mnt")
    return workspace / "mnt" / "bucket", bucket, port, daemon


@pytest.mark.mount
def test_a_cold_read_moves_bytes_in_and_misses_and_the_read_again_moves_only_hits(metered):
    root, _, port, _ = metered
    os.stat(root / "big.bin")
    blocks = -(-len(BIG) // BLOCK)
    before = Scrape(port)
    assert read_direct(root / "big.bin") == BIG
    cold = Scrape(port)
    assert moved(before, cold, "fsmount_store_bytes_total", volume="bucket", direction="in") == len(BIG)
    assert moved(before, cold, "fsmount_cache_misses_total") == blocks
    assert moved(before, cold, "fsmount_store_requests_total", volume="bucket", kind="get", status="ok") == blocks
    assert moved(before, cold, "fsmount_store_request_duration_seconds_count", volume="bucket", kind="get") == blocks
    assert moved(before, cold, "fsmount_cache_bytes") == len(BIG)
    assert 0 < moved(before, cold, "fsmount_readahead_bytes_total") < len(BIG)
    assert moved(before, cold, "fsmount_fuse_requests_total", op="read") == blocks + 1  # and the read at the end

    assert read_direct(root / "big.bin") == BIG  # O_DIRECT: every read reaches the daemon, as after drop_caches
    warm = Scrape(port)
    assert moved(cold, warm, "fsmount_cache_hits_total") == blocks
    for name in ("fsmount_cache_misses_total", "fsmount_store_bytes_total", "fsmount_store_requests_total",
                 "fsmount_readahead_bytes_total"):
        assert moved(cold, warm, name) == 0, name
    assert warm.value("fsmount_cache_limit_bytes") == 10 * 2**30
    assert warm.has("process_resident_memory_bytes") and warm.has("process_cpu_seconds_total")


@pytest.mark.mount
def test_writes_move_put_and_part_counts_and_bytes_out(metered):
    root, bucket, port, _ = metered
    small, large = os.urandom(3000), os.urandom(11 * 2**20 + 7)  # the large one: parts of 5, 5 and 1 MiB
    before = Scrape(port)
    (root / "small.bin").write_bytes(small)
    (root / "large.bin").write_bytes(large)  # write_back 0: each close waits for its upload
    after = Scrape(port)
    assert bucket.get("small.bin") == small and bucket.get("large.bin") == large

    def requests(kind):
        return moved(before, after, "fsmount_store_requests_total", volume="bucket", kind=kind, status="ok")

    assert [requests(kind) for kind in ("put", "start", "part", "complete")] == [1, 1, 3, 1]
    assert moved(before, after, "fsmount_store_bytes_total", volume="bucket", direction="out") == len(small) + len(large)
    assert after.value("fsmount_uploads_pending") == 0 and after.value("fsmount_staging_bytes") >= 0


@pytest.mark.mount
def test_fuse_errors_are_counted_by_operation_and_errno(metered):
    root, _, port, _ = metered
    before = Scrape(port)
    for _ in range(3):
        with pytest.raises(FileNotFoundError):
            os.stat(root / "missing.bin")
    with pytest.raises(IsADirectoryError):
        open(root, "rb")
    after = Scrape(port)
    assert moved(before, after, "fsmount_fuse_errors_total", op="lookup", errno="ENOENT") == 3
    assert moved(before, after, "fsmount_fuse_errors_total", op="open", errno="EISDIR") == 0  # the kernel's own answer
    assert moved(before, after, "fsmount_fuse_errors_total") == 3
    assert moved(before, after, "fsmount_fuse_requests_total", op="lookup") >= 3


@pytest.mark.mount
@pytest.mark.expect_log(
    r"WARNING fsmount\.fs\.operations: read failed: \[Errno 5\] GET other\.bin ",
    r"WARNING fsmount\.volumes\.uploads: uploading new\.bin failed \(PUT new\.bin: .*\); it stays staged in .* and is tried again$",
    r"WARNING fsmount\.fs\.operations: flush failed: \[Errno 5\] uploading new\.bin failed$",
)
def test_healthz_turns_503_naming_the_volume_while_its_store_is_away_and_200_after(workspace, moto, mount):
    bucket = S3Bucket(moto, {"big.bin": BIG, "other.bin": BIG[:1000]})
    relay = FaultRelay(moto.port)
    try:
        port = free_base([])
        mount(metrics_config(workspace, bucket, port, url=relay.url, extra="mode: rw",
                             retries="attempts: 3, max_time: 10s"), workspace / "mnt")
        root = workspace / "mnt" / "bucket"
        assert sorted(os.listdir(root)) == ["big.bin", "other.bin"]
        assert health(port) == (200, {"ok": True, "failing": {}})
        before = Scrape(port)
        relay.down()
        with pytest.raises(OSError) as failed:
            read_direct(root / "other.bin")
        assert failed.value.errno == errno.EIO  # once the three tries are spent
        status, answer = health(port)
        assert status == 503 and list(answer["failing"]) == ["bucket"]
        state = answer["failing"]["bucket"]
        assert state["ok"] is False and "other.bin" in state["last_error"]
        assert state["last_error_at"] == state["last_request_at"]
        after = Scrape(port)
        assert moved(before, after, "fsmount_store_retries_total", volume="bucket") == 2
        assert moved(before, after, "fsmount_store_requests_total", volume="bucket", kind="get", status="EIO") == 1
        assert moved(before, after, "fsmount_fuse_errors_total", op="read", errno="EIO") == 1

        with pytest.raises(OSError) as failed:
            (root / "new.bin").write_bytes(b"x" * 5000)  # write_back 0: the close uploads, and fails
        assert failed.value.errno == errno.EIO
        staged = Scrape(port)
        assert staged.value("fsmount_uploads_pending") == 1 and staged.value("fsmount_staging_bytes") == 5000
        assert moved(after, staged, "fsmount_upload_failures_total") >= 1

        relay.up()
        assert read_direct(root / "other.bin") == BIG[:1000]
        wait_for(lambda: Scrape(port).value("fsmount_uploads_pending") == 0, 30, "the staged file's upload")
        assert health(port) == (200, {"ok": True, "failing": {}})  # the read and the upload: the store answered
        assert bucket.get("new.bin") == b"x" * 5000
    finally:
        relay.close()


@pytest.mark.mount
def test_the_log_survives_logrotate_sigusr2_toggles_debug_lines_and_none_has_a_secret(metered, workspace):
    root, _, port, daemon = metered
    log, rotated = workspace / "fsmount.log", workspace / "fsmount.log.1"
    assert os.listdir(root) == ["big.bin"]  # answered: the daemon serves, and listens for SIGUSR2
    os.rename(log, rotated)  # as logrotate does, without copytruncate
    os.kill(daemon.process.pid, signal.SIGUSR2)
    wait_for(lambda: log.exists() and "debug logging on" in log.read_text(), 10, "a new log file with the toggle")
    assert read_direct(root / "big.bin")[:100] == BIG[:100]
    wait_for(lambda: " get big.bin ok " in log.read_text(), 10, "a debug line per store request")
    request_lines = [line for line in log.read_text().splitlines() if "DEBUG fsmount.requests: bucket " in line]
    assert request_lines and all(line.endswith(" ms") for line in request_lines), request_lines
    os.kill(daemon.process.pid, signal.SIGUSR2)
    wait_for(lambda: "debug logging off" in log.read_text(), 10, "debug logging to be turned off")
    (root / "after.bin").write_bytes(b"after")  # a PUT, and no debug line of it
    assert Scrape(port).value("fsmount_store_requests_total", kind="put") == 1
    assert " put after.bin " not in log.read_text()
    assert "mounted" in rotated.read_text() and "mounted" not in log.read_text()
    everything = log.read_text() + rotated.read_text() + daemon.log()
    for secret in (KEY, SECRET, "Signature=", "X-Amz-Signature", "Authorization"):
        assert secret not in everything


@pytest.mark.server
def test_a_taken_port_stops_the_mount_with_an_error_naming_the_key(workspace, moto):
    bucket = S3Bucket(moto, {"big.bin": BIG})
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = metrics_config(workspace, bucket, port)
        done = subprocess.run([FSMOUNT, "mount", str(config), str(workspace / "mnt"), "--foreground"],
                              capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert f"metrics.listen: cannot listen on 127.0.0.1:{port}" in done.stderr


@pytest.mark.unit
def test_a_bad_listen_address_names_the_file_line_and_key(workspace):
    config = write_config(workspace, """
        volumes { data { source: "file:///tmp" } }
        metrics {
          listen: "127.0.0.1:99999"
        }
    """)
    done = subprocess.run([FSMOUNT, "check", str(config)], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert f"{config}:4: metrics.listen: expected host:port" in done.stderr


@pytest.mark.mount
def test_a_volume_a_reload_removes_leaves_the_metrics_and_the_health(workspace, moto, mount):
    first, second = S3Bucket(moto, {"big.bin": BIG}), S3Bucket(moto, {"small.bin": b"small"})
    port = free_base([])
    two_volumes = metrics_config(workspace, first, port).read_text().replace(
        "s3: [ ", f"""s3: [ {{ bucket: {second.name}, key: "{KEY}", secret: "{SECRET}" }}, """).replace(
        "volumes {", f"""volumes {{ other {{ source: "s3://{second.name}/", endpoint: "{second.server.url}" }}""")
    config = write_config(workspace, two_volumes)
    mount(config, workspace / "mnt")
    assert (workspace / "mnt" / "other" / "small.bin").read_bytes() == b"small"
    assert Scrape(port).value("fsmount_store_requests_total", volume="other") > 0
    metrics_config(workspace, first, port)  # the same file, with the bucket volume alone
    done = subprocess.run([FSMOUNT, "reload", str(workspace / "mnt")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    wait_for(lambda: not Scrape(port).has_labels(volume="other"), 30, "the removed volume to leave the metrics")
    assert health(port) == (200, {"ok": True, "failing": {}})
    assert os.listdir(workspace / "mnt" / "bucket") == ["big.bin"]
    assert Scrape(port).value("fsmount_store_requests_total", volume="bucket") > 0
