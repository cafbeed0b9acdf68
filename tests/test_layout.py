"""The house rules of the code base, checked on its source (docs/layout.md):

* the numerical core (everything under tfm/ but the package face ``tfm/__init__.py``, ``series``, ``batch``,
  ``io``, ``viz`` and the ``cli``) imports none of io, viz or the cli, never imports the
  package face, neither prints nor draws (no print(), matplotlib or pyvista);
* no module imports a private name (leading underscore) of another module;
* nothing edits ``sys.path``; no module keeps a cache keyed on ``id()``;
* functions stay under 80 lines and modules under 600;
* no import circles in tfm/ or benchmarks/.
"""

import ast
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
FACE = {"io", "viz", "cli", "series", "batch"}
DRAWING = {"matplotlib", "pyvista", "vtk"}
SOURCES = sorted((ROOT / "tfm").rglob("*.py"))
SCRIPTS = sorted(p for d in ("benchmarks", "examples", "scripts", "tests") for p in (ROOT / d).rglob("*.py"))


def _module(path: Path) -> list:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return parts[:-1] if parts[-1] == "__init__" else parts


def _imports(path: Path, tree):
    """(line, absolute module, imported names) of every import in ``path``."""
    mod = _module(path)
    package = mod if path.name == "__init__.py" else mod[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            yield node.lineno, target, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for a in node.names:
                yield node.lineno, a.name, []


def _room(path: Path) -> str:
    mod = _module(path)
    return mod[1] if len(mod) > 1 else "__init__"


def _core_problems(path) -> list:
    room = _room(path)
    if room in FACE or room == "__init__":
        return []
    tree = ast.parse(path.read_text())
    problems = []
    for line, target, names in _imports(path, tree):
        parts = target.split(".")
        if parts[0] == "tfm":
            if len(parts) == 1 and any(n not in ("_version",) for n in names):
                problems.append(f"{line}: imports the package face (from tfm import {names})")
            if (len(parts) > 1 and parts[1] in FACE) or (len(parts) == 1 and set(names) & FACE):
                problems.append(f"{line}: imports {target} {names}")
        if parts[0] in DRAWING:
            problems.append(f"{line}: imports {target} (drawing belongs in tfm.viz)")
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
            problems.append(f"{node.lineno}: print() (report through a tfm.progress.Progress instead)")
    return problems


def _hygiene_problems(path, core=None) -> list:
    core = path in SOURCES if core is None else core
    src = path.read_text()
    tree = ast.parse(src)
    problems = []
    for line, target, names in _imports(path, tree):
        if any(p.startswith("_") and p not in ("_version", "__future__") for p in target.split(".")[1:]):
            problems.append(f"{line}: imports the private module {target}")
        for n in names:
            if n.startswith("_") and not n.startswith("__"):
                problems.append(f"{line}: imports the private name {target}.{n}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr == "path" and isinstance(node.value, ast.Name) and node.value.id == "sys":
            problems.append(f"{node.lineno}: uses sys.path (run scripts as modules: python -m benchmarks.NAME)")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "id" and core:
            problems.append(f"{node.lineno}: id() (a cache keyed on object identity can serve stale state)")
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            if length > 80:
                problems.append(f"{node.lineno}: function {node.name} has {length} lines (> 80)")
    if core and len(src.splitlines()) > 600:
        problems.append(f"module of {len(src.splitlines())} lines (> 600)")
    return problems


def _report(check, paths) -> dict:
    return {str(p.relative_to(ROOT)): found for p in paths if (found := check(p))}


def test_core_imports_point_down_and_it_neither_prints_nor_draws():
    assert len(SOURCES) > 30
    assert _report(_core_problems, SOURCES) == {}


def test_no_private_imports_no_sys_path_no_id_caches_no_long_functions():
    assert _report(_hygiene_problems, SOURCES + SCRIPTS) == {}


def test_the_checks_catch_what_they_forbid():
    """Each rule fires on a core module that breaks it (the checks can fail)."""
    probe = ROOT / "tfm" / "classical" / "layout_probe_tmp.py"
    probe.write_text("import sys\nfrom ..viz import pyplot\nfrom .dvc import _warp\nsys.path.insert(0, '.')\n"
                     "def f():\n    print(id(f))\n" + "    x = 1\n" * 80)
    try:
        core, hygiene = _core_problems(probe), _hygiene_problems(probe, core=True)
    finally:
        probe.unlink()
    assert any("tfm.viz" in p for p in core) and any("print()" in p for p in core)
    assert any("private name" in p for p in hygiene) and any("sys.path" in p for p in hygiene)
    assert any("id()" in p for p in hygiene) and any("lines (> 80)" in p for p in hygiene)


def _import_graph(paths) -> dict:
    """{module: modules of ``paths`` it imports} (lazy imports inside functions included;
    ``from pkg import sub`` counts as importing ``pkg.sub`` where that is a module)."""
    names = {".".join(_module(p)): p for p in paths}
    graph = {}
    for mod, path in names.items():
        deps = set()
        for _, target, imported in _imports(path, ast.parse(path.read_text())):
            for t in [f"{target}.{n}" for n in imported] or [target]:
                while t and t not in names:
                    t = t.rpartition(".")[0]
                if t and t != mod:
                    deps.add(t)
        graph[mod] = deps
    return graph


def _cycles(graph: dict) -> list:
    """The import circles of ``graph``: its strongly connected components of two or more
    modules (Tarjan's algorithm, iterative)."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on.add(root)
        while work:
            v, children = work[-1]
            w = next(children, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_no_import_circles_in_the_package_or_the_benchmarks():
    graph = _import_graph(SOURCES + sorted((ROOT / "benchmarks").rglob("*.py")))
    assert graph["benchmarks.dvc"] >= {"benchmarks.dvc_cases"}  # the graph sees the imports
    assert _cycles(graph) == []
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]  # the check can fail
