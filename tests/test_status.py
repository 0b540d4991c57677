"""`fsmount status MOUNTPOINT` asks the running daemon: its volumes, cache, staging and uploads, a failing one with the
store's error; without a daemon, `fsmount status CONFIG` reads the journal, and a mount point gets a clear error."""
import json
import os
import subprocess

import pytest

from buckets import relayed_bucket
from conftest import FSMOUNT, wait_for
from test_object_volume import volume_config

OBJECTS = {"data/a.bin": os.urandom(300000)}


@pytest.fixture
def relayed(request):
    with relayed_bucket(request, "s3", OBJECTS) as relayed:
        yield relayed


def status(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([FSMOUNT, "status", *args], capture_output=True, text=True, timeout=30)


def state(mountpoint) -> dict:
    done = status(str(mountpoint), "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.mount
@pytest.mark.expect_log(
    r"WARNING fsmount\.volumes\.uploads: uploading data/new\.bin failed \(PUT data/new\.bin: 500\); it stays staged in \S+ and is tried again$",
)
def test_status_shows_volumes_cache_and_an_upload_the_store_refuses(relayed, workspace, mount):
    bucket, relay = relayed
    config = volume_config(workspace, bucket, extra="mode: rw", url=relay.url, staging="write_back: 0.2",
                           retries="attempts: 2, max_time: 1s")
    daemon = mount(config, workspace / "mnt")
    root = workspace / "mnt" / "bucket"
    assert (root / "data" / "a.bin").read_bytes() == OBJECTS["data/a.bin"]
    first = state(workspace / "mnt" / "bucket" / "data")  # any path in the mount names it
    assert first["pid"] == daemon.process.pid and first["config"] == str(config)
    [volume] = first["volumes"]
    assert (volume["path"], volume["source"], volume["mode"]) == ("/bucket", f"s3://{bucket.name}/", "rw")
    assert volume["health"]["ok"] and volume["health"]["last_error"] is None
    assert first["cache"]["used"] == len(OBJECTS["data/a.bin"]) and first["cache"]["blocks"] == 1
    assert first["cache"]["misses"] == 1 and first["memory_in_flight"] == 0
    assert first["cache"]["limit"] == 2**30
    assert first["uploads"] == {"waiting": 0, "uploading": 0, "failing": []}

    with open(root / "data" / "new.bin", "wb") as new:
        new.write(b"x" * 5000)
        relay.faults = {"error": 1.0}  # after the open's lookups: only the upload meets it
    wait_for(lambda: state(workspace / "mnt")["uploads"]["failing"], 30, "the upload to fail")
    failing = state(workspace / "mnt")
    assert failing["staging"]["used"] == 5000
    [failed] = failing["uploads"]["failing"]
    assert failed["volume"] == "/bucket" and failed["key"] == "data/new.bin" and failed["size"] == 5000
    assert failed["failures"] >= 1 and "500" in failed["error"], failed
    assert not failing["volumes"][0]["health"]["ok"] and "500" in failing["volumes"][0]["health"]["last_error"]
    text = status(str(workspace / "mnt"))
    assert text.returncode == 0
    assert "1 failing" in text.stdout and "data/new.bin" in text.stdout and "FAILING" in text.stdout

    relay.faults = {}
    wait_for(lambda: not state(workspace / "mnt")["uploads"]["failing"], 90, "the upload to be retried and succeed")
    assert bucket.get("data/new.bin") == b"x" * 5000
    assert state(workspace / "mnt")["volumes"][0]["health"]["ok"]


@pytest.mark.server
def test_without_a_daemon(relayed, workspace):
    bucket, relay = relayed
    config = volume_config(workspace, bucket, url=relay.url)
    (workspace / "mnt").mkdir(exist_ok=True)
    offline = status(str(config))
    assert offline.returncode == 0 and "uploads      0 waiting" in offline.stdout
    unmounted = status(str(workspace / "mnt"))
    assert unmounted.returncode == 1 and "is in no fsmount mount" in unmounted.stderr
    json_offline = status(str(config), "--json")
    assert json_offline.returncode == 1 and "needs a running daemon" in json_offline.stderr
