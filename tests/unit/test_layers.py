"""The layers of ARCHITECTURE.md ("Layers and folders"), checked on the source with a short AST walk.

What is enforced, for every ``import`` and ``from ... import`` in ``emailrelay/`` — at module level
and inside functions alike (a lazy import is still a dependency):

1. Imports point one way: ``cli → services → (spool, policy, auth, bus) → protocol → base``, where
   *base* is the package's top-level modules (``config``, ``errors``, ``log``, ``identity``, ``topology``, ``rundir``,
   ``safe_files``, ``transport_address`` and ``emailrelay/__init__``).  A module may import its own
   package and any lower layer, never a higher one; among the four middle packages only the edges
   in ``PEER_EDGES`` are allowed (each with its reason).
2. There is no import cycle between modules of ``emailrelay`` (lazy imports included).
3. Nothing under ``protocol/`` does I/O: it imports none of ``IO_MODULES`` (sockets, files, OS
   calls, processes, clocks, event loops, logging) and no ``emailrelay`` module outside
   ``protocol/`` but ``errors``, and it calls none of the builtins ``open``, ``print``, ``input``.
   Randomness is not I/O here: ``protocol/sasl.py``'s default challenge nonce uses ``secrets``
   (the caller may inject its own source).
4. Nothing outside ``bus/endpoint.py`` imports ``zmq``.
5. Nothing under ``bench/`` imports ``tests``.

Not enforced here: that no module but ``spool/store.py`` builds spool file names (a name is a string,
not an import; ``spool/names.py`` is the only place the suffixes are defined).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "emailrelay"

#: Rank of each top-level package or module; a module may import only ranks below its own, or its own package.
RANKS = {"base": 0, "protocol": 1, "spool": 2, "policy": 2, "auth": 2, "bus": 2, "services": 3, "cli": 4}
BASE_MODULES = {
    "config",
    "errors",
    "log",
    "identity",
    "safe_files",
    "transport_address",
    "topology",
    "rundir",
    "__init__",
}
#: Allowed imports between the middle packages: (importer, imported) -> why.
PEER_EDGES = {
    (
        "policy",
        "spool",
    ): "filters and delivery (deliver:, copy:, split:) read and write messages through the store",
}
IO_MODULES = {
    "asyncio", "socket", "ssl", "select", "selectors", "os", "io", "pathlib", "shutil", "tempfile", "glob",
    "fcntl", "mmap", "subprocess", "signal", "threading", "multiprocessing", "concurrent", "time",
    "datetime", "logging", "syslog", "zmq", "uvloop", "urllib", "http",
}  # fmt: skip
IO_BUILTINS = {"open", "print", "input"}
PROTOCOL_MAY_IMPORT = {"emailrelay.errors"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _imports(name: str) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) of every import in a module; ``from X import y`` yields ``X.y`` when
    that is a module of ours, else ``X``."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield node.lineno, target
            for alias in node.names:
                if f"{target}.{alias.name}" in MODULES:
                    yield node.lineno, f"{target}.{alias.name}"


def _ours(target: str) -> str | None:
    """The module of ours that ``target`` names (a package's ``__init__`` for a package), or None."""
    while target and target not in MODULES:
        target = target.rpartition(".")[0]
    return target or None


def _layer(name: str) -> str:
    parts = name.split(".")
    if len(parts) == 1 or (len(parts) == 2 and parts[1] in BASE_MODULES):
        return "base"
    return parts[1]


def _edges() -> Iterator[tuple[str, int, str]]:
    for name in MODULES:
        for line, target in _imports(name):
            mod = _ours(target) if target.split(".")[0] == "emailrelay" else None
            if mod is not None and mod != name:
                yield name, line, mod


def test_the_walk_sees_every_layer() -> None:
    """Guards the check itself: every layer has modules and the known edges are found."""
    assert {_layer(m) for m in MODULES} == set(RANKS)
    edges = {(a, b) for a, _, b in _edges()}
    assert ("emailrelay.services.forward", "emailrelay.spool.store") in edges
    assert ("emailrelay.cli.tools", "emailrelay.cli.events") in edges  # a lazy import, inside a function


def test_imports_point_one_way() -> None:
    wrong = []
    for name, line, mod in _edges():
        a, b = _layer(name), _layer(mod)
        if a == b or RANKS[b] < RANKS[a] or (a, b) in PEER_EDGES:
            continue
        wrong.append(f"{MODULES[name].relative_to(ROOT.parent)}:{line}: {a} imports {b} ({mod})")
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


def test_no_import_cycles() -> None:
    graph: dict[str, set[str]] = {name: set() for name in MODULES}
    for name, _, mod in _edges():
        graph[name].add(mod)
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("name", [m for m in MODULES if _layer(m) == "protocol"])
def test_protocol_does_no_io(name: str) -> None:
    wrong = []
    for line, target in _imports(name):
        top, ours = target.split(".")[0], _ours(target) or target
        if top in IO_MODULES or (
            top == "emailrelay" and _layer(ours) != "protocol" and ours not in PROTOCOL_MAY_IMPORT
        ):
            wrong.append(f"line {line}: imports {target}")
    tree = ast.parse(MODULES[name].read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in IO_BUILTINS:
            wrong.append(f"line {node.lineno}: calls {node.func.id}()")
    assert not wrong, f"{name} must stay sans-IO:\n" + "\n".join(wrong)


def test_only_the_bus_endpoint_imports_zmq() -> None:
    users = sorted(
        f"{name}:{line}"
        for name in MODULES
        for line, target in _imports(name)
        if target.split(".")[0] == "zmq"
    )
    assert users and all(u.startswith("emailrelay.bus.endpoint:") for u in users), users


def test_bench_imports_nothing_from_tests() -> None:
    """Benchmarks stand alone (the soak scripts that drive the test harness live in tests/soak/)."""
    bench = ROOT.parent / "bench"
    wrong = []
    for path in sorted(bench.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            wrong += [
                f"{path.relative_to(bench.parent)}:{node.lineno}" for n in names if n.split(".")[0] == "tests"
            ]
    assert not wrong, wrong
