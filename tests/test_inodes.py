"""The inode table's bookkeeping: lookup counts, forget, rename, unlink and hard links."""
import errno
import stat

import pytest

from fsmount.fs.inodes import InodeTable
from fsmount.volumes.base import Attrs

pytestmark = pytest.mark.unit


def volume_root(table):
    return table.pin(table.root, "vol", volume=object())


def test_forget_drops_a_node_once_its_lookups_are_gone():
    table = InodeTable()
    root = volume_root(table)
    before = len(table)
    node = table.child(root, "file")
    table.remember(node)
    table.remember(node)
    table.forget(node.inode, 1)
    assert table[node.inode] is node
    table.forget(node.inode, 1)
    assert len(table) == before
    with pytest.raises(OSError) as error:
        table[node.inode]
    assert error.value.errno == errno.ESTALE


def test_the_same_name_keeps_its_number_while_known_and_numbers_are_never_reused():
    table = InodeTable()
    root = volume_root(table)
    first = table.child(root, "a")
    table.remember(first)
    assert table.child(root, "a") is first
    table.forget(first.inode, 1)
    again = table.child(root, "a")
    assert again.inode > first.inode


def test_open_handles_keep_a_forgotten_node():
    table = InodeTable()
    node = table.child(volume_root(table), "open")
    table.remember(node)
    node.handles = {7}  # as an open makes it
    table.forget(node.inode, 1)
    assert table[node.inode] is node
    node.handles.clear()
    table.drop_if_unused(node)
    with pytest.raises(OSError):
        table[node.inode]


def test_pinned_nodes_survive_forget():
    table = InodeTable()
    root = volume_root(table)
    table.remember(root)
    table.forget(root.inode, 1)
    assert table[root.inode] is root and root.path == ()


def test_rename_moves_the_subtree_and_orphans_the_displaced_target():
    table = InodeTable()
    root = volume_root(table)
    directory, target = table.child(root, "d"), table.child(root, "t")
    leaf = table.child(directory, "leaf")
    for node in (directory, target, leaf):
        table.remember(node)
    table.renamed(root, "d", root, "t")
    assert leaf.path == ("t", "leaf")
    assert table.child(root, "t") is directory
    assert target.orphan
    with pytest.raises(OSError):
        target.path


def test_exchange_swaps_two_names():
    table = InodeTable()
    root = volume_root(table)
    a, b = table.child(root, "a"), table.child(root, "b")
    table.remember(a)
    table.remember(b)
    table.renamed(root, "a", root, "b", exchange=True)
    assert (a.path, b.path) == (("b",), ("a",))
    assert table.child(root, "a") is b


def test_unlinked_node_lives_until_forgotten_but_its_name_is_free():
    table = InodeTable()
    root = volume_root(table)
    node = table.child(root, "gone")
    table.remember(node)
    table.unlinked(root, "gone")
    assert table[node.inode] is node and node.orphan
    assert table.child(root, "gone") is not node
    table.forget(node.inode, 1)
    with pytest.raises(OSError):
        table[node.inode]


def regular_file(nlink: int, host_inode=(1, 42)) -> Attrs:
    return Attrs(stat.S_IFREG | 0o644, nlink=nlink, host_inode=host_inode)


def test_hard_links_of_a_file_are_one_node_whichever_name_goes_first():
    table = InodeTable()
    root = volume_root(table)
    sub = table.child(root, "sub")
    first = table.child(root, "a", regular_file(1))
    table.remember(first)
    assert table.linked(first, sub, "b", regular_file(2)) is first
    assert table.child(root, "c", regular_file(3)) is first  # linked from outside, found by its host inode
    assert table.child(root, "other", regular_file(2, host_inode=(1, 43))) is not first
    assert first.path == ("c",)  # the name seen last
    table.unlinked(root, "c")
    assert first.path == ("sub", "b") and not first.orphan
    table.renamed(sub, "b", root, "b2")
    assert first.path == ("b2",) and table.child(root, "a") is first
    table.unlinked(root, "a")
    table.unlinked(root, "b2")
    assert first.orphan
    assert table.child(root, "d", regular_file(2)) is not first  # its host inode may be another file's now


def test_renaming_a_name_onto_another_name_of_the_same_file_changes_nothing():
    table = InodeTable()
    root = volume_root(table)
    node = table.child(root, "a", regular_file(2))
    table.remember(node)
    assert table.child(root, "b", regular_file(2)) is node
    table.renamed(root, "a", root, "b")
    assert table.child(root, "a") is node and table.child(root, "b") is node and not node.orphan


def test_directories_and_files_of_one_link_are_never_merged():
    table = InodeTable()
    root = volume_root(table)
    directory = Attrs(stat.S_IFDIR | 0o755, nlink=3, host_inode=(1, 7))
    assert table.child(root, "d", directory) is not table.child(root, "e", directory)
    assert table.child(root, "f", regular_file(1, (1, 8))) is not table.child(root, "g", regular_file(1, (1, 8)))
