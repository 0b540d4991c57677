"""A file written and closed through an rw object volume is in the very next listing of its directory, and found by
stat, however short `metadata_ttl` is: a listing of the directory that the store answered before the file's upload
landed, and that ended after it, must not be kept (in memory or on disk) in place of what the daemon knows."""
import os
import re
import threading

import pytest

from buckets import KINDS, S3Bucket, new_bucket
from conftest import wait_for
from fsmount.staging.area import read_journal
from servers import Proxy
from test_object_volume import volume_config

pytestmark = pytest.mark.mount

FILES = 40  # written one after another, each listed and found right after its close


@pytest.mark.parametrize("kind", KINDS)
def test_each_file_written_is_listed_and_found_at_once_with_no_metadata_ttl(kind, request, workspace, mount):
    """With `metadata_ttl: 0s` each lookup served from the listing kept on disk lists the directory again in the
    background, so a listing is often under way while the file looked up is uploaded."""
    bucket = new_bucket(request, kind)
    mount(volume_config(workspace, bucket, ttl="0s", extra="mode: rw"), workspace / "mnt")
    root = workspace / "mnt" / "bucket"
    directories = [root, root / "one", root / "two", root / "one" / "deeper"]
    written = {directory: [] for directory in directories}
    for directory in directories[1:]:
        directory.mkdir()
        assert directory.name in os.listdir(directory.parent)
    for index in range(FILES):
        directory = directories[index % len(directories)]
        name = f"file-{index}.txt"
        with open(directory / name, "wb") as stream:
            stream.write(name.encode())
        written[directory].append(name)
        assert name in os.listdir(directory), f"{directory / name} is missing from the listing after its close"
        assert os.stat(directory / name).st_size == len(name)
    for directory, names in written.items():
        listed = set(os.listdir(directory))
        assert set(names) <= listed, sorted(set(names) - listed)
        for name in names:
            assert (directory / name).read_bytes() == name.encode()
    assert sorted(key for key in bucket.keys() if not key.endswith("/")) == sorted(
        os.path.relpath(directory / name, root) for directory, names in written.items() for name in names)


def _listing_of(prefix: str):
    """Whether a request is S3's ListObjectsV2 of PREFIX whole (a lookup's, of one key, says max-keys=1)."""
    pattern = re.compile(rb"^GET /[^ ?]+\?[^ ]*prefix=" + re.escape(prefix.replace("/", "%2F").encode()) + rb"(&| )")

    def matching(data: bytes) -> bool:
        line = data.split(b"\r\n", 1)[0]
        return pattern.search(line) is not None and b"list-type=2" in line and b"max-keys" not in line

    return matching


@pytest.mark.parametrize("ttl", ["0s", "60s"])
def test_a_listing_the_store_answered_before_an_upload_is_not_kept_after_it(ttl, workspace, moto, mount):
    """A reader lists the directory while a file in it is written: the store's answer, which lacks the file, is
    held back until the file's close has uploaded it. The reader's listing may show the file or not (they ran at
    once); every listing after both shows it."""
    bucket = S3Bucket(moto, {"dir/old.txt": b"old"})
    proxy = Proxy(moto.port)
    try:
        mount(volume_config(workspace, bucket, ttl=ttl, extra="mode: rw", url=proxy.url), workspace / "mnt")
        directory = workspace / "mnt" / "bucket" / "dir"
        assert os.stat(directory / "old.txt").st_size == 3
        with open(directory / "new.txt", "wb") as stream:  # write_back 0: uploaded at its close
            stream.write(b"new")
            proxy.hold_replies(_listing_of("dir/"))
            listed = {}
            reader = threading.Thread(target=lambda: listed.setdefault("names", os.listdir(directory)), daemon=True)
            reader.start()
            wait_for(lambda: proxy.held == 1, 15, "the reader's listing to reach the store")
        assert bucket.get("dir/new.txt") == b"new"
        proxy.release()
        reader.join(timeout=15)
        assert not reader.is_alive() and "old.txt" in listed["names"]
        # The staged copy is gone: a listing shows the file now as the store or this daemon's own changes say.
        wait_for(lambda: read_journal(str(workspace / "cache" / "staging"))[0] == [], 15, "the staged copy to go")
        assert sorted(os.listdir(directory)) == ["new.txt", "old.txt"]
        assert os.stat(directory / "new.txt").st_size == 3
    finally:
        proxy.close()
