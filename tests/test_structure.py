"""The shape of the code (issue 28), read from the source with ``ast``: no import cycles among the modules of
``indexer/`` and ``retrieval/`` (imports inside functions count; ``if TYPE_CHECKING:`` blocks do not), no module
there over 400 lines, no use of another module's private names, ``indexer`` never imports ``retrieval``, and every
repository path that README.md and docs/*.md name exists."""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("indexer", "retrieval")
MAX_LINES = 400
TOP_FOLDERS = ("indexer", "retrieval", "benchmarks", "tests", "scripts", "docs")  # what a doc path may start with
BUILT = {"retrieval/serve/vendor/openseadragon"}  # put into the wheel by the build (setup.py), never committed


@cache
def modules() -> dict[str, Path]:
    """Dotted name → file of every module of the packages (a package is its ``__init__.py``)."""
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


@cache
def tree(name: str) -> ast.Module:
    return ast.parse(modules()[name].read_text(), filename=str(modules()[name]))


def imports(name: str) -> list[tuple[ast.stmt, str, str]]:
    """(statement, imported module of ours, imported name or "") for every import of ``name`` outside
    ``if TYPE_CHECKING:`` blocks, inside functions too."""
    skipped = {id(n) for node in ast.walk(tree(name)) if isinstance(node, ast.If) and _type_checking(node.test)
               for stmt in node.body for n in ast.walk(stmt)}
    found = []
    for node in ast.walk(tree(name)):
        if id(node) in skipped or not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        if isinstance(node, ast.Import):
            found += [(node, m, "") for alias in node.names if (m := _ours(alias.name))]
            continue
        base = _absolute(name, node)
        for alias in node.names:
            module = _ours(f"{base}.{alias.name}") if f"{base}.{alias.name}" in modules() else _ours(base)
            if module:
                found.append((node, module, "" if module == f"{base}.{alias.name}" else alias.name))
    return [(node, module, what) for node, module, what in found if module != name]


def _type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _absolute(name: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    parts = name.split(".") if modules()[name].name == "__init__.py" else name.split(".")[:-1]
    parts = parts[: len(parts) - (node.level - 1)]
    return ".".join(parts + ([node.module] if node.module else []))


def _ours(dotted: str) -> str | None:
    """The longest prefix of ``dotted`` that is a module of the packages."""
    while dotted and dotted not in modules():
        dotted = dotted.rpartition(".")[0]
    return dotted or None


def graph() -> dict[str, set[str]]:
    return {name: {module for _, module, _ in imports(name)} for name in modules()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], 0
    for start in edges:
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__") and name != "_"


def private_names(name: str) -> set[str]:
    """Private names a module defines: functions, classes, module variables, and attributes set on self/cls."""
    found = set()
    for node in ast.walk(tree(name)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            found.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            found.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            found.add(node.attr)
        elif isinstance(node, ast.arg):
            found.add(node.arg)
    return {n for n in found if _private(n)}


def private_uses(name: str, defined_elsewhere: dict[str, set[str]]) -> list[str]:
    """``from m import _x``, ``m._x`` for a module m of ours, and ``obj._x`` (obj not self/cls) where ``_x`` is
    defined only in other modules of ours."""
    found = [f"{name}:{node.lineno}: from {module} import {what}" for node, module, what in imports(name)
             if _private(what)]
    aliases = {}
    for node, module, what in imports(name):
        if not what:
            for alias in node.names:
                if alias.asname:
                    aliases[alias.asname] = module
                elif isinstance(node, ast.ImportFrom):
                    aliases[alias.name] = module
    own = private_names(name)
    for node in ast.walk(tree(name)):
        if not (isinstance(node, ast.Attribute) and _private(node.attr)):
            continue
        target = node.value
        if isinstance(target, ast.Name) and target.id in ("self", "cls"):
            continue
        dotted = _dotted(target)
        module = aliases.get(dotted) or (dotted if dotted in modules() else None)
        if module and module != name:
            found.append(f"{name}:{node.lineno}: {dotted}.{node.attr} (private name of {module})")
        elif node.attr not in own and node.attr in defined_elsewhere:
            owners = ", ".join(sorted(defined_elsewhere[node.attr]))
            found.append(f"{name}:{node.lineno}: .{node.attr} (private name of {owners})")
    return found


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def doc_paths() -> list[tuple[Path, str, Path]]:
    """(document, path as written, where it points) for every repository path README.md and docs/*.md name:
    relative Markdown links, and code or text that starts with one of the TOP_FOLDERS."""
    found = []
    bare = re.compile(rf"(?<![\w/.\-]){'(?:' + '|'.join(TOP_FOLDERS) + ')'}/[\w./*\-]*")
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = doc.read_text()
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if not re.match(r"[a-z]+:|#", target):
                found.append((doc, target, (doc.parent / target.split("#")[0]).resolve()))
        for written in bare.findall(re.sub(r"\]\([^)]*\)", "]()", text)):
            written = written.rstrip(".,:")
            found.append((doc, written, ROOT / written))
    return found


def test_no_import_cycles_among_indexer_and_retrieval_modules():
    assert len(modules()) > 100
    assert cycles(graph()) == []


def test_the_cycle_finder_finds_cycles_and_only_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set(), "c": {"b"}}) == []


def test_no_module_over_400_lines():
    sizes = {name: len(path.read_text().splitlines()) for name, path in modules().items()}
    assert {name: n for name, n in sizes.items() if n > MAX_LINES} == {}


def test_indexer_never_imports_retrieval():
    upward = [f"{name}:{node.lineno} imports {module}" for name in modules() if name.split(".")[0] == "indexer"
              for node, module, _ in imports(name) if module.split(".")[0] == "retrieval"]
    assert upward == []


def test_no_module_uses_another_modules_private_names():
    defined: dict[str, set[str]] = {}
    for name in modules():
        for private in private_names(name):
            defined.setdefault(private, set()).add(name)
    uses = [use for name in modules()
            for use in private_uses(name, {p: owners - {name} for p, owners in defined.items() if owners - {name}})]
    assert uses == []


def test_every_path_the_readme_and_docs_name_exists():
    paths = doc_paths()
    assert len(paths) > 20 and any(doc.parent.name == "docs" for doc, _, _ in paths)
    missing = [f"{doc.relative_to(ROOT)}: {written}" for doc, written, target in paths
               if written.rstrip("/") not in BUILT and not _exists(target)]
    assert missing == []


def _exists(target: Path) -> bool:
    """A file or folder of the repository (a glob: one that matches something); nothing outside it."""
    if not target.is_relative_to(ROOT):
        return False
    return any(ROOT.glob(str(target.relative_to(ROOT)))) if "*" in str(target) else target.exists()
