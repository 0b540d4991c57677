"""KnownTimes: times kept on disk by key and version, outliving the daemon, bounded in number."""
from fsmount.cache import times
from fsmount.cache.times import KnownTimes


def test_a_time_is_recalled_at_its_version_only_and_after_a_reopen(tmp_path):
    known = KnownTimes(str(tmp_path))
    known.keep("s3:bucket", "a.txt", '"etag-1"', 1_500_000_000_000_000_000)
    known.keep("s3:bucket", "b.txt", '"etag-2"', 1_600_000_000_000_000_000)
    known.keep("s3:other", "a.txt", '"etag-1"', 7)
    known.close()
    known = KnownTimes(str(tmp_path))
    assert known.recall("s3:bucket", {"a.txt": '"etag-1"', "b.txt": '"changed"', "c.txt": '"etag-3"'}) == \
        {"a.txt": 1_500_000_000_000_000_000}
    known.keep("s3:bucket", "a.txt", '"etag-4"', 1_700_000_000_000_000_000)
    assert known.recall("s3:bucket", {"a.txt": '"etag-1"'}) == {}
    assert known.recall("s3:bucket", {"a.txt": '"etag-4"'}) == {"a.txt": 1_700_000_000_000_000_000}


def test_the_oldest_times_go_past_the_bound(tmp_path, monkeypatch):
    monkeypatch.setattr(times, "_KEPT", 100)
    monkeypatch.setattr(times, "_TRIM_EVERY", 10)
    known = KnownTimes(str(tmp_path))
    for index in range(1000):
        known.keep("s3:bucket", f"key-{index}", "v", index)
    kept = known.recall("s3:bucket", {f"key-{index}": "v" for index in range(1000)})
    assert len(kept) <= 110
    assert all(f"key-{index}" in kept for index in range(900, 1000))
