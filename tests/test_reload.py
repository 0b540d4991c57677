"""Reload, by `fsmount reload` and SIGHUP, on real mounts: volumes added and removed (once nothing of them is open),
configs refused whole, open files untouched, log levels, and new credentials for new requests."""
import base64
import contextlib
import errno
import os
import signal
import subprocess

import pytest

from buckets import AzureBucket, S3Bucket
from conftest import FSMOUNT, mounted_paths, wait_for, write_config
from fsmount import control
from fsmount.control import socket_path
from servers import AZURITE_ACCOUNT, AZURITE_KEY, azurite_endpoint

pytestmark = pytest.mark.mount

NUMBERS = bytes(range(256)) * 4096


@pytest.fixture
def links(workspace):
    """Host trees to link: data (ro, sample files), scratch, notes and extra."""
    links = workspace / "links"
    for name in ("data", "scratch", "notes", "extra"):
        (links / name).mkdir()
        (links / name / f"{name}.txt").write_text(f"in {name}\n")
    (links / "data" / "numbers.bin").write_bytes(NUMBERS)
    return links


def host_config(workspace, volumes: dict[str, str], log_level: str = "info"):
    """The config of host volumes, by path: each the link of that name (VOLUMES: path -> link)."""
    lines = "\n".join(f'{path} {{ source: "file://{workspace}/links/{link}" }}' for path, link in volumes.items())
    return write_config(workspace, f"""
        link_mounts: ["{workspace}/links"]
        log {{ level: {log_level} }}
        volumes {{
          {lines}
        }}
    """)


def reload(mnt) -> subprocess.CompletedProcess:
    return subprocess.run([FSMOUNT, "reload", str(mnt)], capture_output=True, text=True, timeout=60)


def reloaded(mnt) -> str:
    result = reload(mnt)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_a_reload_adds_and_removes_volumes(workspace, links, mount):
    mnt = workspace / "mnt"
    mount(host_config(workspace, {"data": "data", "team/a/notes": "notes"}), mnt)
    assert not (mnt / "extra").exists()  # the kernel now knows, for a day, that there is none
    assert (mnt / "team" / "a" / "notes" / "notes.txt").read_text() == "in notes\n"
    host_config(workspace, {"data": "data", "extra": "extra", "team/b": "scratch"})
    assert reloaded(mnt).splitlines() == ["added        extra", "added        team/b", "removed      team/a/notes"]
    assert (mnt / "extra" / "extra.txt").read_text() == "in extra\n"  # before any listing: only being told shows the kernel
    assert not (mnt / "team" / "a").exists()
    assert (mnt / "team" / "b" / "scratch.txt").read_text() == "in scratch\n"
    assert sorted(os.listdir(mnt)) == ["data", "extra", "team"]
    assert os.listdir(mnt / "team") == ["b"]
    assert (mnt / "data" / "data.txt").read_text() == "in data\n"
    assert [volume["path"] for volume in control.ask(str(mnt), "status")["volumes"]] == ["/data", "/extra", "/team/b"]


@contextlib.contextmanager
def scratch_leaving(workspace, mount):
    """A mount of data and scratch, reloaded without scratch while a file of it is open: (mount point, daemon,
    the open file)."""
    mnt = workspace / "mnt"
    daemon = mount(host_config(workspace, {"data": "data", "scratch": "scratch"}), mnt)
    with open(mnt / "scratch" / "scratch.txt") as stream:
        host_config(workspace, {"data": "data"})
        assert reloaded(mnt) == "waiting      scratch: files of it are open; it leaves once they are closed\n"
        yield mnt, daemon, stream


def test_a_removal_waits_for_open_files(workspace, links, mount):
    with scratch_leaving(workspace, mount) as (mnt, daemon, stream):
        assert "volume scratch is leaving the config: it waits for 1 open files" in daemon.log()
        assert sorted(os.listdir(mnt)) == ["data", "scratch"]
        assert stream.read() == "in scratch\n"
    wait_for(lambda: "volume scratch removed" in daemon.log(), 10, "the volume to leave")
    assert os.listdir(mnt) == ["data"]
    assert not (mnt / "scratch").exists()


def test_a_volume_back_in_the_config_stops_leaving(workspace, links, mount):
    with scratch_leaving(workspace, mount) as (mnt, daemon, stream):
        host_config(workspace, {"data": "data", "scratch": "scratch"})
        assert reloaded(mnt) == "kept         scratch: no longer leaving\n"
        assert "volume scratch stays: the config has it again" in daemon.log()  # its removal has ended
        stream.read()
    assert sorted(os.listdir(mnt)) == ["data", "scratch"]
    assert (mnt / "scratch" / "scratch.txt").read_text() == "in scratch\n"


def test_a_changed_volume_comes_back_once_its_files_are_closed(workspace, links, mount):
    mnt = workspace / "mnt"
    daemon = mount(host_config(workspace, {"data": "data", "here": "scratch"}), mnt)
    with open(mnt / "here" / "scratch.txt") as stream:
        host_config(workspace, {"data": "data", "here": "extra"})
        assert reloaded(mnt).splitlines() == [
            "waiting      here: files of it are open; it leaves once they are closed",
            "arriving     here: once the volume in its way has left"]
        assert stream.read() == "in scratch\n"
    wait_for(lambda: "volume here added" in daemon.log(), 10, "the new volume")
    assert os.listdir(mnt / "here") == ["extra.txt"]


@pytest.mark.parametrize("broken, key", [
    ('volumes {\n  data { source: "file://LINKS/data" }\n  scratch { source: "file://LINKS/scratch", mode: rx }\n}\n',
     "4: volumes.scratch.mode: expected ro or rw, got 'rx'"),
    ('volumes {\n  data { source: "file://LINKS/data" }\n  scratch { source: \n', "5: not valid HOCON"),
])
@pytest.mark.expect_log(
    r"ERROR fsmount\.reload: reload refused, the tree stays as it was: .*/fsmount\.conf:\d+: (volumes\.scratch\.mode: expected ro or rw|not valid HOCON)",
)
def test_a_config_that_does_not_check_is_refused_whole(workspace, links, mount, broken, key):
    mnt = workspace / "mnt"
    config = host_config(workspace, {"data": "data", "notes": "notes"})
    daemon = mount(config, mnt)
    config.write_text(f'link_mounts: ["{links}"]\n' + broken.replace("LINKS", str(links)))
    result = reload(mnt)
    assert result.returncode == 1
    assert result.stderr.startswith(f"fsmount reload: {config}:")
    assert f"{config}:{key}" in result.stderr
    assert f"reload refused, the tree stays as it was: {config}:{key}" in daemon.log()
    assert sorted(os.listdir(mnt)) == ["data", "notes"]
    assert (mnt / "notes" / "notes.txt").read_text() == "in notes\n"


@pytest.mark.expect_log(
    r"ERROR fsmount\.reload: reload refused, the tree stays as it was: .*/fsmount\.conf:\d+: mystery: unknown key",
)
def test_sighup_reloads_and_no_longer_unmounts(workspace, links, mount):
    mnt = workspace / "mnt"
    daemon = mount(host_config(workspace, {"data": "data"}), mnt)
    wait_for(lambda: os.path.exists(socket_path(str(mnt))), 10, "the daemon to serve")  # a SIGHUP before is ignored
    host_config(workspace, {"data": "data", "extra": "extra"})
    daemon.process.send_signal(signal.SIGHUP)
    wait_for(lambda: "reloaded" in daemon.log(), 10, "the reload")
    assert "added extra" in daemon.log()
    assert sorted(os.listdir(mnt)) == ["data", "extra"]
    config = host_config(workspace, {"data": "data", "extra": "extra"})
    config.write_text(config.read_text() + "\nmystery: 1\n")
    daemon.process.send_signal(signal.SIGHUP)
    wait_for(lambda: "reload refused" in daemon.log(), 10, "the refusal")
    assert f"reload refused, the tree stays as it was: {config}:" in daemon.log()
    assert "mystery" in daemon.log()
    assert daemon.process.poll() is None and str(mnt) in mounted_paths()
    assert (mnt / "extra" / "extra.txt").read_text() == "in extra\n"


def test_open_files_of_unchanged_volumes_read_on(workspace, links, mount):
    mnt = workspace / "mnt"
    mount(host_config(workspace, {"data": "data", "notes": "notes"}), mnt)
    fd = os.open(mnt / "data" / "numbers.bin", os.O_RDONLY | os.O_DIRECT)  # every read asks the daemon
    try:
        assert os.pread(fd, 4096, 0) == NUMBERS[:4096]
        host_config(workspace, {"data": "data", "extra": "extra"})
        assert reloaded(mnt).splitlines() == ["added        extra", "removed      notes"]
        assert os.pread(fd, 8192, 4096 * 7) == NUMBERS[4096 * 7:4096 * 9]
    finally:
        os.close(fd)


def test_the_log_level_changes(workspace, links, mount):
    mnt = workspace / "mnt"
    daemon = mount(host_config(workspace, {"data": "data"}), mnt)
    host_config(workspace, {"data": "data"}, log_level="warning")
    assert reloaded(mnt) == "log level    warning\n"
    host_config(workspace, {"data": "data", "extra": "extra"}, log_level="warning")
    assert reloaded(mnt) == "added        extra\n"
    assert "volume extra added" not in daemon.log()
    host_config(workspace, {"data": "data", "extra": "extra", "notes": "notes"}, log_level="info")
    assert reloaded(mnt).splitlines() == ["added        notes", "log level    info"]
    assert "volume notes added" in daemon.log()


@pytest.mark.expect_log(r"WARNING fsmount\.reload: reload: attr_timeout, cache, staging changed, which takes a remount")
def test_settings_a_mount_fixes_wait_for_a_remount(workspace, links, mount):
    mnt = workspace / "mnt"
    config = host_config(workspace, {"data": "data"})
    daemon = mount(config, mnt)
    host_config(workspace, {"data": "data", "extra": "extra"})
    config.write_text(config.read_text() + f'\ncache {{ dir: "{workspace}/elsewhere" }}\nattr_timeout: 5s\n')
    assert reloaded(mnt).splitlines() == [
        "added        extra", "remount      attr_timeout, cache, staging changed: that takes effect at the next mount"]  # staging.dir follows cache.dir
    assert "reload: attr_timeout, cache, staging changed, which takes a remount" in daemon.log()
    assert (mnt / "extra" / "extra.txt").read_text() == "in extra\n"


def azure_config(workspace, container: str, server, key: str):
    return write_config(workspace, f"""
        cache {{ dir: "{workspace}/cache" }}
        retries {{ attempts: 2, max_time: 2s }}
        credentials {{ azure: [ {{ account_name: {AZURITE_ACCOUNT}, account_key: "{key}" }} ] }}
        volumes {{ bucket {{ source: "azure://{container}/", endpoint: "{azurite_endpoint(server)}" }} }}
    """)


def test_new_credentials_serve_new_requests(workspace, azurite, mount):
    """Azurite checks every signature: a wrong account key is refused, as a store would refuse it."""
    container = AzureBucket(azurite, {"a.txt": b"hello\n"}).name
    wrong = base64.b64encode(b"not the account's key" * 3).decode()
    mnt = workspace / "mnt"
    daemon = mount(azure_config(workspace, container, azurite, wrong), mnt)
    with pytest.raises(OSError) as refused:
        os.listdir(mnt / "bucket")
    assert refused.value.errno in (errno.EACCES, errno.EIO)
    azure_config(workspace, container, azurite, AZURITE_KEY)
    assert reloaded(mnt) == "credentials  bucket: new ones, for every request from now on\n"
    assert os.listdir(mnt / "bucket") == ["a.txt"]
    assert (mnt / "bucket" / "a.txt").read_bytes() == b"hello\n"
    for secret in (wrong, AZURITE_KEY):
        assert secret not in daemon.log()


def test_an_open_file_reads_on_with_the_new_credentials(workspace, moto, mount):
    """moto takes any key; its request log shows which signed each read."""
    bucket = S3Bucket(moto, {"a.bin": NUMBERS * 8, "b.txt": b"read after the reload\n"}).name

    def s3_config(key: str, secret: str):
        return write_config(workspace, f"""
            cache {{ dir: "{workspace}/cache", block_size: 1MiB, read_ahead: 1MiB }}
            credentials {{ s3: [ {{ bucket: {bucket}, key: {key}, secret: {secret} }} ] }}
            volumes {{ bucket {{ source: "s3://{bucket}/", endpoint: "{moto.url}" }} }}
        """)

    mnt = workspace / "mnt"
    daemon = mount(s3_config("first-key", "first-secret"), mnt)
    with open(mnt / "bucket" / "a.bin", "rb", buffering=0) as stream:
        assert stream.read(4096) == NUMBERS[:4096]
        s3_config("second-key", "second-secret")
        assert reloaded(mnt) == "credentials  bucket: new ones, for every request from now on\n"
        assert NUMBERS[4096:] + NUMBERS * 7 == stream.read()
    assert (mnt / "bucket" / "b.txt").read_bytes() == b"read after the reload\n"
    assert moto.requests(f"/{bucket}/a.bin?", "X-Amz-Credential=first-key") >= 1
    assert moto.requests(f"/{bucket}/a.bin?", "X-Amz-Credential=second-key") >= 1  # its last blocks
    assert moto.requests(f"/{bucket}/b.txt?", "X-Amz-Credential=second-key") == 1
    assert moto.requests(f"/{bucket}/b.txt?", "X-Amz-Credential=first-key") == 0
    for secret in ("first-secret", "second-secret"):
        assert secret not in daemon.log()


def test_a_removed_volume_sends_its_waiting_uploads(workspace, moto, mount):
    def config(bucket: S3Bucket, volume: str, extra: str = ""):
        return write_config(workspace, f"""
            cache {{ dir: "{workspace}/cache" }}
            staging {{ write_back: 1h }}
            {bucket.config(extra, volume=volume)}
        """)

    bucket = S3Bucket(moto)
    mnt = workspace / "mnt"
    mount(config(bucket, "bucket", "mode: rw"), mnt)
    (mnt / "bucket" / "new.txt").write_bytes(b"written, closed, not yet sent\n")
    assert bucket.keys() == []
    config(S3Bucket(moto), "other")
    assert reloaded(mnt).splitlines() == ["added        other", "removed      bucket"]
    wait_for(lambda: bucket.keys() == ["new.txt"], 10, "the upload")
    assert bucket.get("new.txt") == b"written, closed, not yet sent\n"


@pytest.mark.expect_log(r"ERROR fsmount\.reload: volume bad cannot be added: bucket nowhere: unusable credentials_json")
def test_a_volume_that_cannot_start_fails_alone(workspace, links, mount):
    (workspace / "key.json").write_text('{"type": "service_account"}')  # a key that checks, and that Google refuses

    def config(volumes: str):
        return write_config(workspace, f"""
            link_mounts: ["{links}"]
            cache {{ dir: "{workspace}/cache" }}
            credentials {{ gcs: [ {{ bucket: nowhere, credentials_json: "{workspace}/key.json" }} ] }}
            volumes {{ data {{ source: "file://{links}/data" }}, {volumes} }}
        """)

    mnt = workspace / "mnt"
    daemon = mount(config(""), mnt)
    config(f'bad {{ source: "gs://nowhere/", endpoint: "http://127.0.0.1:9" }}, extra {{ source: "file://{links}/extra" }}')
    assert reloaded(mnt).splitlines() == [
        "added        extra", "failed       bad: bucket nowhere: unusable credentials_json: DefaultCredentialsError"]
    assert "volume bad cannot be added: bucket nowhere: unusable credentials_json" in daemon.log()
    assert sorted(os.listdir(mnt)) == ["data", "extra"]
