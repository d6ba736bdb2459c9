"""The tree is the pipeline: a module imports only from its own layer or the layers below it,
and no two modules import each other, even lazily (imports inside functions count)."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "patternc"

# lowest first; a module may import its own layer and any layer before it
LAYERS = [
    {"errors", "version"},
    {"ir"},
    {"primitives"},
    {"grammar", "frontend"},  # front ends: text and Python predicates into the IR
    {"layout", "analysis"},
    {"codegen"},
    {"runtime"},
    {"sim", "aot", "distributed"},  # distributed: context parallelism over torch.distributed
    {"__init__"},  # the public API
    {"cli", "__main__", "integrations"},  # integrations: bridges to other libraries, over the public API
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def _modules():
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        yield path, parts


def _layer(parts: tuple[str, ...]) -> str:
    return parts[0] if parts else "__init__"


def _imports(path: Path, parts: tuple[str, ...]):
    """(line, imported patternc module parts) for every import of the package, lazy ones included."""
    package = list(parts[:-1]) if parts[-1] != "__init__" else list(parts[:-1])
    if parts[-1] == "__init__":
        package = list(parts[:-1])
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                target = base + (node.module.split(".") if node.module else [])
            elif node.module and node.module.split(".")[0] == "patternc":
                target = node.module.split(".")[1:]
            else:
                continue
            if not target:  # `from .. import x`: the package itself, or a submodule x
                for alias in node.names:
                    sub = ROOT / alias.name
                    yield node.lineno, ([alias.name] if sub.is_dir() or sub.with_suffix(".py").exists() else [])
            else:
                yield node.lineno, target
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "patternc":
                    yield node.lineno, alias.name.split(".")[1:]


def _edges():
    for path, parts in _modules():
        for line, target in _imports(path, parts):
            yield path, parts, line, tuple(target)


def test_layers_import_downward_only():
    upward = []
    for path, parts, line, target in _edges():
        src, dst = _layer(parts), _layer(target)
        assert src in RANK, f"{path}: layer '{src}' is not in the layer table of {__file__}"
        assert dst in RANK, f"{path}:{line}: imports '{dst}', which is not in the layer table"
        if RANK[dst] > RANK[src]:
            upward.append(f"{path.relative_to(ROOT.parent)}:{line}: {src} imports {'.'.join(target) or 'patternc'}")
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_no_import_cycles():
    def module(parts):  # a package's name stands for its __init__
        if not parts:
            return ("__init__",)
        p = ROOT.joinpath(*parts)
        return tuple(parts) + ("__init__",) if p.is_dir() else tuple(parts)

    graph: dict[tuple, set] = {}
    for path, parts, line, target in _edges():
        graph.setdefault(tuple(parts), set()).add(module(list(target)))
    state: dict[tuple, int] = {}
    cycles = []

    def visit(node, stack):
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(".".join(n) for n in stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    # a package __init__ re-exporting its own modules is not a cycle between layers
    cycles = [c for c in cycles if not _within_package(c)]
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def _within_package(cycle: str) -> bool:
    return len({c.split(".")[0] for c in cycle.split(" -> ")}) == 1 and "__init__" in cycle
