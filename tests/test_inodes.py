"""The inode table's bookkeeping: lookup counts, forget, rename and unlink."""
import errno

import pytest

from fsmount.fs.inodes import InodeTable


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
    node.handles.add(7)
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
