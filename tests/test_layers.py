"""The package's import graph: no circles, and no module imports one from a layer above its own (docs/DESIGN.md, Layers)."""
import ast
import pathlib

import pytest

pytestmark = pytest.mark.unit

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "fsmount"

# Lowest first; a module belongs to the layer naming the longest prefix of its name ("fsmount" names only itself).
LAYERS = [
    ("helpers", ["fsmount", "fsmount.units", "fsmount.credentials", "fsmount.multiaddr", "fsmount.logs",
                 "fsmount.control", "fsmount.progress", "fsmount.memory"]),
    ("stores", ["fsmount.stores", "fsmount.metrics.counting", "fsmount.metrics.store_requests"]),
    ("cache and staging", ["fsmount.cache", "fsmount.staging"]),
    ("volumes", ["fsmount.volumes"]),
    ("FUSE face and namespace", ["fsmount.fs"]),
    ("config", ["fsmount.config", "fsmount.volume_stores"]),
    ("command line and daemon", ["fsmount.daemon", "fsmount.cli", "fsmount.reload", "fsmount.status",
                                 "fsmount.warm", "fsmount.cache_control", "fsmount.cache_cli", "fsmount.publish",
                                 "fsmount.publish_ipfs", "fsmount.metrics", "fsmount.csi"]),
]


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: pathlib.Path, modules: set[str]) -> set[str]:
    """The fsmount modules a file imports anywhere in it (in a function or under TYPE_CHECKING too)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {module for module in found if module in modules and module != name}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    paths = list(PACKAGE.rglob("*.py"))
    modules = {module_name(path) for path in paths}
    return {module_name(path): imported(path, modules) for path in paths}


def layer(module: str) -> int:
    matches = [(len(prefix), rank) for rank, (_, prefixes) in enumerate(LAYERS) for prefix in prefixes
               if module == prefix or (prefix != "fsmount" and module.startswith(prefix + "."))]
    assert matches, f"{module} is in no layer of this test (nor of docs/DESIGN.md)"
    return max(matches)[1]


def test_no_module_imports_a_layer_above_its_own(graph):
    upward = [f"{module} ({LAYERS[layer(module)][0]}) imports {target} ({LAYERS[layer(target)][0]})"
              for module, targets in sorted(graph.items()) for target in sorted(targets)
              if layer(target) > layer(module)]
    assert upward == []


def test_no_import_circle(graph):
    circles = []
    done: set[str] = set()

    def visit(module: str, path: list[str]):
        if module in path:
            circles.append(" -> ".join(path[path.index(module):] + [module]))
            return
        if module in done:
            return
        for target in sorted(graph[module]):
            visit(target, path + [module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])
    assert circles == []
