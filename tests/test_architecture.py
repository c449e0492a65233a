"""The shape of the package, read from its source with `ast` (nothing is imported).

- no import cycles between kgpt2 modules, function-level imports included;
- modules below the verbs never import a verb module (data flows one way:
  cli -> verbs -> library modules);
- no function in kgpt2/ is longer than 60 lines.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.backend

PACKAGE = Path(__file__).resolve().parent.parent / "kgpt2"

# The verbs: what cli.py calls. Nothing below them imports one of them.
VERBS = {"kgpt2.train", "kgpt2.evaluate", "kgpt2.align", "kgpt2.export", "kgpt2.pretrain",
         "kgpt2.quickstart", "kgpt2.demo", "kgpt2.serve", "kgpt2.cli", "kgpt2.generate"}
# Entry points above the verbs, which may import any of them: the CLI, the
# package's lazy API (`kgpt2.evaluate_run(...)`), quickstart (the whole pipeline in
# one call), and smoke (what the notebooks swap in; it runs quickstart).
ENTRY_POINTS = {"kgpt2", "kgpt2.cli", "kgpt2.quickstart", "kgpt2.smoke"}
# generate is the generation library of the apps that serve text.
ALLOWED_VERB_IMPORTS = {("kgpt2.demo", "kgpt2.generate"), ("kgpt2.serve", "kgpt2.generate"),
                        # the demo's own parts: its generation seam, model pool and layout
                        ("kgpt2.serving.answerer", "kgpt2.generate"), ("kgpt2.serving.model_pool", "kgpt2.generate"),
                        ("kgpt2.serving.demo_layout", "kgpt2.generate")}

KNOWN_VERB_IMPORTS: set = set()
KNOWN_DEFERRED_IMPORTS: set = set()
# Where kgpt2 modules are imported inside functions on purpose: `kgpt2 --help`
# and `import kgpt2` stay cheap (no keras) until a verb or an API name is used.
LAZY_ENTRY_POINTS = {"kgpt2", "kgpt2.cli"}
KNOWN_LONG_FUNCTIONS: set = set()
MAX_FUNCTION_LINES = 60


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(name: str, path: Path) -> set[str]:
    """The kgpt2 modules that `path` imports anywhere (module level or inside functions)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                kept = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(kept + ([base] if base else []))
            submodules = {f"{base}.{alias.name}" for alias in node.names} & MODULES.keys()
            # `from kgpt2 import backend` imports the module kgpt2.backend, not the package's API.
            found |= submodules or {base}
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: imported_modules(name, path) for name, path in MODULES.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path [a, b, ..., a], or None (depth-first search)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_the_graph_sees_function_level_imports():
    # A check that reads only module-level imports would miss the cycles that matter here.
    assert "kgpt2.model.scratch" in GRAPH["kgpt2.train"]
    assert "kgpt2.backend" in GRAPH["kgpt2.cli"] and "kgpt2" not in GRAPH["kgpt2.cli"]


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles():
    cycle = find_cycle(GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_modules_below_the_verbs_import_no_verb():
    bad = sorted((name, target) for name, targets in GRAPH.items() if name not in ENTRY_POINTS
                 for target in targets & VERBS
                 if (name, target) not in ALLOWED_VERB_IMPORTS | KNOWN_VERB_IMPORTS)
    assert not bad, "a module imports a verb module: " + ", ".join(f"{a} -> {b}" for a, b in bad)


def test_known_violations_are_still_real():
    # An allowlist entry that no longer applies is deleted, not kept "just in case".
    for name, target in KNOWN_VERB_IMPORTS:
        assert target in GRAPH[name], f"{name} no longer imports {target}: drop it from KNOWN_VERB_IMPORTS"
    deferred = deferred_kgpt2_imports()
    for entry in KNOWN_DEFERRED_IMPORTS:
        assert entry in deferred, f"{entry} no longer imports kgpt2 inside: drop it from KNOWN_DEFERRED_IMPORTS"
    long = set(long_functions())
    for entry in KNOWN_LONG_FUNCTIONS:
        assert entry in long, f"{entry} is no longer too long: drop it from KNOWN_LONG_FUNCTIONS"


def deferred_kgpt2_imports() -> set[str]:
    """`file:function` of every function that imports a kgpt2 module inside its body."""
    found = set()
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for inner in ast.walk(node):
                targets = ([inner.module or ""] if isinstance(inner, ast.ImportFrom) else
                           [a.name for a in inner.names] if isinstance(inner, ast.Import) else [])
                if name not in LAZY_ENTRY_POINTS and any(t == "kgpt2" or t.startswith("kgpt2.") for t in targets):
                    found.add(f"{path.relative_to(PACKAGE.parent).as_posix()}:{node.name}")
    return found


def test_kgpt2_modules_are_imported_at_module_level():
    # A function-level import of kgpt2's own modules only hides a cycle or a
    # wrong direction; heavy third-party packages may still be deferred.
    extra = deferred_kgpt2_imports() - KNOWN_DEFERRED_IMPORTS
    assert not extra, f"kgpt2 modules imported inside functions: {sorted(extra)}"


def long_functions() -> dict[str, int]:
    found = {}
    for path in MODULES.values():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    found[f"{path.relative_to(PACKAGE.parent).as_posix()}:{node.name}"] = lines
    return found


def test_no_function_is_longer_than_60_lines():
    long = {k: v for k, v in long_functions().items() if k not in KNOWN_LONG_FUNCTIONS}
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_every_module_has_a_docstring(name):
    assert ast.get_docstring(ast.parse(MODULES[name].read_text(encoding="utf-8"))), f"{name} has no docstring"


def test_no_public_name_of_the_package_is_a_submodules():
    """`kgpt2.NAME` for a submodule NAME becomes that module once anything imports it: the package's own
    `evaluate` and `generate` aliases worked once, then raised "'module' object is not callable"."""
    import pkgutil

    import kgpt2

    submodules = {m.name for m in pkgutil.iter_modules(kgpt2.__path__)}
    assert not submodules & set(kgpt2._API)
    shadowing = [name for name in submodules & set(vars(kgpt2))
                 if not isinstance(vars(kgpt2)[name], type(kgpt2))]
    assert not shadowing, f"kgpt2.{shadowing} are functions named like submodules"
