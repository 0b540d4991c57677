"""KnownListings: listings kept on disk come back as they were given, and one kept by an older fsmount is dropped."""
import sqlite3

import pytest

from fsmount.cache import listings
from fsmount.cache.listings import KnownListings
from fsmount.stores.base import NO_METADATA, ObjectInfo

pytestmark = pytest.mark.unit


def test_a_listing_comes_back_as_it_was_kept(tmp_path):
    entries = [("a.txt", ObjectInfo("data/a.txt", 3, '"etag-a"', 10**18, {"mtime": "5.000000000"})),
               ("b", None),
               ("c", ObjectInfo("data/c", 0, "cid", 7, link_target="a.txt"))]
    known = KnownListings(str(tmp_path))
    known.keep("store", "data/", entries)
    known.keep("store", "other/", [("x", None)])
    known.close()
    again = KnownListings(str(tmp_path))
    age, recalled = again.recall("store", "data/")
    assert recalled == entries and age >= 0
    assert [info.metadata for _, info in recalled if info is not None] == [{"mtime": "5.000000000"}, NO_METADATA]
    again.forget("store", "data/")
    assert again.recall("store", "data/") is None
    assert listings.counts(str(tmp_path)) == (1, 1)


def test_listings_kept_by_an_older_fsmount_are_dropped_not_misread(tmp_path):
    with sqlite3.connect(tmp_path / listings.FILE_NAME) as db:  # as fsmount kept them before: one JSON text each
        db.execute("CREATE TABLE listings (store TEXT NOT NULL, prefix TEXT NOT NULL, listed REAL NOT NULL, "
                   "count INTEGER NOT NULL, entries TEXT NOT NULL, PRIMARY KEY (store, prefix))")
        db.execute("INSERT INTO listings VALUES ('store', 'data/', 0, 1, '[[\"a\", 1, \"v\", 0, {}, null]]')")
    db.close()
    assert KnownListings(str(tmp_path)).recall("store", "data/") is None
