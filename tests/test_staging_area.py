"""The staging area's journal on its own: what a restart finds, whatever state the last daemon left."""
import errno
import logging

import pytest

from fsmount.staging.area import CLOSED, StagingArea, read_journal

pytestmark = pytest.mark.unit


def test_a_restart_uploads_closed_files_and_keeps_open_ones_aside(tmp_path, caplog):
    area = StagingArea(str(tmp_path), 2**20)
    closed, unfinished, done = (area.create("s3:x", key) for key in ("a/closed", "a/open", "a/done"))
    for staged, data in ((closed, b"closed bytes"), (unfinished, b"half"), (done, b"done")):
        staged.write(0, data)
    closed.keep(mode=0o750)
    area.set_state(closed, CLOSED)
    area.set_state(done, "uploaded")
    area.close()
    with caplog.at_level(logging.INFO):
        area = StagingArea(str(tmp_path), 2**20)
        (recovered,) = area.recover("s3:x", "a/")
    assert (recovered.key, recovered.read(0, 100), recovered.dirty, recovered.mode) == (
        "a/closed", b"closed bytes", True, 0o750)
    (kept,) = (tmp_path / "kept").iterdir()
    assert kept.read_bytes() == b"half" and str(kept) in caplog.text
    pending, kept_files = read_journal(str(tmp_path))
    assert [entry.key for entry in pending] == ["a/closed"] and kept_files == [str(kept)]
    assert area.used == len(b"closed bytes")


def test_a_closed_file_whose_bytes_are_gone_is_logged_not_fatal(tmp_path, caplog):
    area = StagingArea(str(tmp_path), 2**20)
    staged = area.create("s3:x", "lost")
    area.set_state(staged, CLOSED)
    (tmp_path / "files" / str(staged.row)).unlink()
    area.close()
    assert StagingArea(str(tmp_path), 2**20).recover("s3:x", "") == []
    assert "are gone" in caplog.text


def test_growing_past_the_bound_is_enospc_and_changes_nothing(tmp_path):
    area = StagingArea(str(tmp_path), 100)
    staged = area.create("s3:x", "k")
    staged.write(0, b"x" * 60)
    for attempt in (lambda: staged.write(60, b"y" * 41), lambda: staged.truncate(101)):
        with pytest.raises(OSError) as error:
            attempt()
        assert error.value.errno == errno.ENOSPC
    assert (staged.size, area.used, staged.read(0, 200)) == (60, 60, b"x" * 60)
    staged.truncate(10)
    assert area.used == 10
    area.remove(staged)
    assert area.used == 0 and list((tmp_path / "files").iterdir()) == []
