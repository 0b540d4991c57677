"""The inode table: which node each inode number is, with the kernel's lookup counts and forget."""
from __future__ import annotations

import errno
import itertools
import stat

import pyfuse3


class Node:
    """A name the kernel knows, or several: a host file's hard links are one node, as they are one inode.
    Virtual nodes (volume None) hold their fixed children in `entries`."""

    __slots__ = ("inode", "parent", "name", "volume", "entries", "lookups", "pinned", "handles", "orphan", "links",
                 "identity")

    def __init__(self, inode: int, parent: Node | None, name: str, volume=None, pinned: bool = False):
        self.inode = inode
        self.parent = parent
        self.name = name
        self.volume = volume
        self.entries: dict[str, Node] | None = None
        self.lookups = 0
        self.pinned = pinned
        self.handles: set | None = None  # made at the first open: most nodes are never opened
        self.orphan = False
        self.links: tuple[tuple[Node, str], ...] = ()  # its names besides (parent, name), the one its path follows
        self.identity = None  # (volume, device, inode) of a host file with several hard links

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


def _hard_linked(volume, attrs) -> tuple | None:
    """What names the file ATTRS describe in VOLUME, when it has several: every name of it is one node."""
    if attrs is None or attrs.host_inode is None or attrs.nlink < 2 or stat.S_ISDIR(attrs.mode):
        return None
    return (volume, *attrs.host_inode)


class InodeTable:
    """Numbers are never reused, so a forgotten inode can never be confused with a new file."""

    def __init__(self):
        self._numbers = itertools.count(pyfuse3.ROOT_INODE + 1)
        self._by_inode: dict[int, Node] = {}
        self._by_name: dict[tuple[int, str], Node] = {}
        self._by_identity: dict[tuple, Node] = {}
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

    def unpin(self, node: Node):
        """NODE, pinned, leaves the tree, and with it every node of its volume (a volume's root): the kernel's
        requests for them get ESTALE from now on."""
        del node.parent.entries[node.name]
        gone = [other for other in self._by_inode.values() if other.volume is node.volume] if node.volume is not None else [node]
        for other in gone:
            del self._by_inode[other.inode]
            for parent, name in [(other.parent, other.name), *other.links]:
                self._unmap(other, parent, name)
            self._identify(other, None)

    def child(self, parent: Node, name: str, attrs=None) -> Node:
        """The node for NAME in a volume directory, made if new; the caller counts the lookup. ATTRS, if
        given, may show a hard link of a file known by another name: then it is that file's node."""
        node = self._by_name.get((parent.inode, name))
        identity = _hard_linked(parent.volume, attrs)
        if node is None:
            node = self._by_identity.get(identity) if identity is not None else None
            if node is None:
                node = self._add(Node(next(self._numbers), parent, name, parent.volume))
            self._name(node, parent, name)
        if attrs is not None:
            self._identify(node, identity)
        return node

    def linked(self, node: Node, parent: Node, name: str, attrs) -> Node:
        """NODE has a new name, NAME in PARENT: a hard link."""
        self._name(node, parent, name)
        self._identify(node, _hard_linked(parent.volume, attrs))
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
            for parent, name in [(node.parent, node.name), *node.links]:
                self._unmap(node, parent, name)
            self._identify(node, None)

    def unlinked(self, parent: Node, name: str):
        node = self._by_name.get((parent.inode, name))
        if node is not None and not self._unname(node, parent, name):
            node.orphan = True
            self._identify(node, None)
            self.drop_if_unused(node)

    def renamed(self, parent: Node, name: str, new_parent: Node, new_name: str, exchange: bool = False):
        moving = self._by_name.get((parent.inode, name))
        displaced = self._by_name.get((new_parent.inode, new_name))
        if moving is not None and moving is displaced:
            return  # two names of one file: rename(2) leaves both
        if exchange:
            if displaced is not None:
                self._unname(displaced, new_parent, new_name)
        elif displaced is not None:
            self.unlinked(new_parent, new_name)
        if moving is not None:
            self._unname(moving, parent, name)
            self._name(moving, new_parent, new_name)
        if exchange and displaced is not None:
            self._name(displaced, parent, name)

    def _name(self, node: Node, parent: Node, name: str):
        """Gives NODE the name NAME in PARENT, which its path follows from now on: it has just been seen."""
        if (node.parent, node.name) != (parent, name) and self._by_name.get((node.parent.inode, node.name)) is node:
            node.links += ((node.parent, node.name),)
        node.parent, node.name = parent, name
        self._by_name[(parent.inode, name)] = node

    def _unname(self, node: Node, parent: Node, name: str) -> bool:
        """Takes the name NAME in PARENT from NODE; whether it has another left, which its path follows."""
        self._unmap(node, parent, name)
        if (parent, name) in node.links:
            position = node.links.index((parent, name))
            node.links = node.links[:position] + node.links[position + 1:]
            return True
        if node.links:
            (node.parent, node.name), node.links = node.links[-1], node.links[:-1]
            return True
        return False

    def _unmap(self, node: Node, parent: Node, name: str):
        if self._by_name.get((parent.inode, name)) is node:
            del self._by_name[(parent.inode, name)]

    def _identify(self, node: Node, identity: tuple | None):
        if node.identity == identity:
            return
        if node.identity is not None and self._by_identity.get(node.identity) is node:
            del self._by_identity[node.identity]
        node.identity = identity
        if identity is not None:
            self._by_identity[identity] = node

    def _add(self, node: Node) -> Node:
        self._by_inode[node.inode] = node
        return node
