"""KnownAttributes: metadata kept on disk by key and version, outliving the daemon, bounded in number."""
import pytest

from fsmount.cache import attributes
from fsmount.cache.attributes import KnownAttributes

pytestmark = pytest.mark.unit

TIME = {"mtime": "1500000000.000000000"}


def test_metadata_is_recalled_at_its_version_only_and_after_a_reopen(tmp_path):
    known = KnownAttributes(str(tmp_path))
    known.keep("s3:bucket", "a.txt", '"etag-1"', {**TIME, "mode": "33261"})
    known.keep("s3:bucket", "b.txt", '"etag-2"', TIME)
    known.keep("s3:other", "a.txt", '"etag-1"', {"mtime": "7"})
    known.close()
    known = KnownAttributes(str(tmp_path))
    assert known.recall("s3:bucket", {"a.txt": '"etag-1"', "b.txt": '"changed"', "c.txt": '"etag-3"'}) == \
        {"a.txt": {**TIME, "mode": "33261"}}
    known.keep("s3:bucket", "a.txt", '"etag-4"', {"mtime": "1700000000.000000000"})
    assert known.recall("s3:bucket", {"a.txt": '"etag-1"'}) == {}
    assert known.recall("s3:bucket", {"a.txt": '"etag-4"'}) == {"a.txt": {"mtime": "1700000000.000000000"}}


def test_the_oldest_go_past_the_bound(tmp_path, monkeypatch):
    monkeypatch.setattr(attributes, "_KEPT", 100)
    monkeypatch.setattr(attributes, "_TRIM_EVERY", 10)
    known = KnownAttributes(str(tmp_path))
    for index in range(1000):
        known.keep("s3:bucket", f"key-{index}", "v", TIME)
    kept = known.recall("s3:bucket", {f"key-{index}": "v" for index in range(1000)})
    assert len(kept) <= 110
    assert all(f"key-{index}" in kept for index in range(900, 1000))
