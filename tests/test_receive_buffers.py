"""ReceiveBuffers: large bodies reuse memory, never memory that something still holds."""
import weakref

import pytest

from fsmount.stores.ranges import ReceiveBuffers

pytestmark = pytest.mark.unit

MIB = 2**20


def test_a_buffer_dropped_by_everything_is_taken_again():
    buffers = ReceiveBuffers(2)
    first = weakref.ref(buffers.take(MIB))
    assert buffers.take(MIB) is first()


def test_a_buffer_still_viewed_is_not_taken_again():
    buffers = ReceiveBuffers(2)
    body = memoryview(buffers.take(MIB))[:10]  # as a block of the cache holds it, or a reply to the kernel
    body[:] = b"0123456789"
    other = buffers.take(MIB)
    other[:10] = b"xxxxxxxxxx"
    assert bytes(body) == b"0123456789"


def test_a_buffer_too_small_is_not_taken():
    buffers = ReceiveBuffers(2)
    buffers.take(MIB)
    assert len(buffers.take(2 * MIB)) >= 2 * MIB


def test_a_full_pool_keeps_a_larger_buffer_in_place_of_a_free_one_too_small():
    buffers = ReceiveBuffers(1)
    small = weakref.ref(buffers.take(MIB))
    larger = weakref.ref(buffers.take(2 * MIB))
    assert small() is None
    assert buffers.take(MIB) is larger()


def test_beyond_those_kept_buffers_are_made_and_dropped():
    buffers = ReceiveBuffers(1)
    held = buffers.take(MIB)
    extra = weakref.ref(buffers.take(MIB))
    assert extra() is None  # nothing keeps it: its memory went back at once
    assert held is not None


def test_buffers_idle_since_the_last_release_are_handed_back_held_and_used_ones_kept():
    buffers = ReceiveBuffers(3)
    held = buffers.take(MIB)
    was_held = weakref.ref(held)
    idle = weakref.ref(buffers.take(MIB))
    buffers.release_idle()  # each was taken since the pool began
    assert idle() is not None
    used = weakref.ref(buffers.take(MIB))
    assert used() is idle()
    buffers.release_idle()  # taken since the last release, it stays
    assert used() is not None
    buffers.release_idle()
    assert used() is None
    del held
    assert buffers.take(MIB) is was_held()
