"""The inode table: which node each inode number is, with the kernel's lookup counts and forget."""
from __future__ import annotations

import errno
import itertools

import pyfuse3


class Node:
    """A name the kernel knows. Virtual nodes (volume None) hold their fixed children in `entries`."""

    __slots__ = ("inode", "parent", "name", "volume", "entries", "lookups", "pinned", "handles", "orphan")

    def __init__(self, inode: int, parent: Node | None, name: str, volume=None, pinned: bool = False):
        self.inode = inode
        self.parent = parent
        self.name = name
        self.volume = volume
        self.entries: dict[str, Node] | None = None
        self.lookups = 0
        self.pinned = pinned
        self.handles: set = set()
        self.orphan = False

    @property
    def path(self) -> tuple[str, ...]:
        """The path inside the node's volume; () for a volume's root."""
        if self.orphan:
            raise OSError(errno.ENOENT, "unlinked")
        parts = []
        node = self
        while not node.pinned:
            parts.append(node.name)
            node = node.parent
        return tuple(reversed(parts))


class InodeTable:
    """Numbers are never reused, so a forgotten inode can never be confused with a new file."""

    def __init__(self):
        self._numbers = itertools.count(pyfuse3.ROOT_INODE + 1)
        self._by_inode: dict[int, Node] = {}
        self._by_name: dict[tuple[int, str], Node] = {}
        self.root = self._add(Node(pyfuse3.ROOT_INODE, None, "", pinned=True))
        self.root.parent = self.root
        self.root.entries = {}

    def __len__(self):
        return len(self._by_inode)

    def __getitem__(self, inode: int) -> Node:
        try:
            return self._by_inode[inode]
        except KeyError:
            raise OSError(errno.ESTALE, "unknown inode") from None

    def pin(self, parent: Node, name: str, volume=None) -> Node:
        """A node that lives as long as the mount: a virtual directory or a volume's root."""
        node = self._add(Node(next(self._numbers), parent, name, volume, pinned=True))
        if volume is None:
            node.entries = {}
        parent.entries[name] = node
        return node

    def child(self, parent: Node, name: str) -> Node:
        """The node for NAME in a volume directory, made if new; the caller counts the lookup."""
        node = self._by_name.get((parent.inode, name))
        if node is None:
            node = self._add(Node(next(self._numbers), parent, name, parent.volume))
            self._by_name[(parent.inode, name)] = node
        return node

    def remember(self, node: Node):
        node.lookups += 1

    def forget(self, inode: int, count: int):
        node = self._by_inode.get(inode)
        if node is None:
            return
        node.lookups -= count
        self.drop_if_unused(node)

    def drop_if_unused(self, node: Node):
        if node.lookups <= 0 and not node.pinned and not node.handles:
            del self._by_inode[node.inode]
            if not node.orphan:
                self._detach(node)

    def unlinked(self, parent: Node, name: str):
        node = self._by_name.get((parent.inode, name))
        if node is not None:
            self._detach(node)
            node.orphan = True
            self.drop_if_unused(node)

    def renamed(self, parent: Node, name: str, new_parent: Node, new_name: str, exchange: bool = False):
        moving = self._by_name.get((parent.inode, name))
        displaced = self._by_name.get((new_parent.inode, new_name))
        if exchange:
            if displaced is not None:
                self._detach(displaced)
                self._attach(displaced, parent, name)
        elif displaced is not None:
            self.unlinked(new_parent, new_name)
        if moving is not None:
            if self._by_name.get((parent.inode, name)) is moving:
                self._detach(moving)
            self._attach(moving, new_parent, new_name)

    def _attach(self, node: Node, parent: Node, name: str):
        node.parent, node.name = parent, name
        self._by_name[(parent.inode, name)] = node

    def _detach(self, node: Node):
        if self._by_name.get((node.parent.inode, node.name)) is node:
            del self._by_name[(node.parent.inode, node.name)]

    def _add(self, node: Node) -> Node:
        self._by_inode[node.inode] = node
        return node
