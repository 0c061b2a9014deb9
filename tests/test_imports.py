"""The design's import rules (imports point down the stream; docs/reference/layout.md), read
from the source with `ast`, nothing imported:

- imports point down the house: every module has a level (LEVELS below, docs/reference/layout.md's
  table), and no import, at module level or inside a function, reaches a higher level;
- no import cycle among byol's modules at module level (top-level imports; `if TYPE_CHECKING:`
  blocks aside), so any module can be the first one imported;
- no module uses another module's private (`_underscore`) names, imported or as an attribute;
- byol/evaluate/ and byol/store/ never import the command-line module (byol.command_line), not even inside
  a function;
- byol/command_line.py imports nothing from byol.pretrain (training's command owns fresh-or-resume).
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMAND_LINE = "byol.command_line"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted((ROOT / "byol").rglob("*.py"))}


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def is_type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (getattr(test, "id", None) == "TYPE_CHECKING"
                                         or getattr(test, "attr", None) == "TYPE_CHECKING")


def top_level(body: list[ast.stmt]):
    """The statements that run when the module is imported: not function bodies, not TYPE_CHECKING."""
    for node in body:
        if is_type_checking(node):
            continue
        yield node
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for field in ("body", "orelse", "handlers", "finalbody"):
            yield from top_level(getattr(node, field, None) or [])


def base_of(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return ".".join(filter(None, (package, node.module)))


def imports(module: str, nodes) -> list[tuple[str, str | None, str]]:
    """(imported byol module, imported name or None, the name it is bound to) for each import."""
    found = []
    for node in nodes:
        if isinstance(node, ast.Import):
            found += [(a.name, None, a.asname or a.name.split(".")[0]) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = base_of(module, node)
            for a in node.names:
                sub = f"{base}.{a.name}"
                found.append((sub, None, a.asname or a.name) if sub in MODULES else (base, a.name, a.asname or a.name))
    return [f for f in found if f[0] == "byol" or f[0].startswith("byol.")]


# The house, bottom up: a module may import its own level and the levels below it, never above.
# The longest matching prefix gives a module's level; every module must match one.
LEVELS = {
    "byol": 0, "byol.base": 0,                      # the ground floor (the package root holds only __version__)
    "byol.config": 1, "byol.encoders.names": 1,     # the schema, and the network-name facts it checks
    "byol.config_doc": 1,                           # the schema's reference page, generated from it
    "byol.command_line": 2, "byol.store": 2,        # every command's conventions; the HDF5 feature store
    "byol.data": 3, "byol.encoders": 3, "byol.evaluate": 3,   # images in; networks; probes over stores
    "byol.pretrain": 4,
    "byol.extract": 5,
    "byol.report": 6, "byol.search": 6,              # what the stores are for: reports, search, duplicates
    "byol.api": 7, "byol.pipeline": 7, "byol.eval_command": 7, "byol.subcommands": 7, "byol.__main__": 7,
}


def level(module: str) -> int:
    prefixes = [p for p in LEVELS if module == p or module.startswith(p + ".")]
    assert prefixes, f"{module} has no level: add it (or its package) to LEVELS in tests/test_imports.py"
    return LEVELS[max(prefixes, key=len)]


TREES = {name: ast.parse(path.read_text(encoding="utf-8"), str(path)) for name, path in MODULES.items()}
ALL_IMPORTS = {name: imports(name, ast.walk(tree)) for name, tree in TREES.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module, or a module importing itself (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1 or v in graph[v]:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def upward_imports(all_imports: dict[str, list[tuple[str, str | None, str]]]) -> list[str]:
    """'module (level a) -> imported (level b)' for every import from a lower level to a higher one."""
    return [f"{name} (level {level(name)}) imports {target} (level {level(target)})"
            for name, found in all_imports.items() for target, _, _ in found
            if target in MODULES and level(target) > level(name)]


def test_imports_point_down_the_levels():
    assert {level(name) for name in MODULES} == set(LEVELS.values())     # every level holds a module
    assert upward_imports(ALL_IMPORTS) == []


def test_the_level_rule_catches_a_planted_upward_import():
    """The check above is not vacuous: the ground floor importing training, even inside a function, fails."""
    planted = {**ALL_IMPORTS, "byol.base.atomic": [*ALL_IMPORTS["byol.base.atomic"], ("byol.pretrain.loop", None, "loop")]}
    assert upward_imports(planted) == ["byol.base.atomic (level 0) imports byol.pretrain.loop (level 4)"]


def test_no_import_cycle_at_module_level():
    graph = {name: {target for target, _, _ in imports(name, top_level(tree.body)) if target in MODULES}
             for name, tree in TREES.items()}
    assert "byol.config" in graph and graph["byol.command_line"]          # the walk found the modules and their imports
    assert cycles(graph) == []


def private_uses(name: str) -> list[str]:
    """Another module's `_private` names that module `name` imports or reads as an attribute."""
    used, modules = [], {}                                   # bound name -> the byol module it names
    for target, imported, bound in ALL_IMPORTS[name]:
        if imported is None:                                 # `import byol.x` binds byol; `... as m`, m
            top = target.split(".")[0]
            modules[bound] = top if bound == top else target
        elif is_private(imported) and target != name:
            used.append(f"{name}: from {target} import {imported}")
    for node in ast.walk(TREES[name]):
        chain, value = [], node
        while isinstance(value, ast.Attribute):
            chain.append(value.attr)
            value = value.value
        if not chain or not isinstance(value, ast.Name) or value.id not in modules:
            continue
        current = modules[value.id]
        for attr in reversed(chain):                         # byol.evaluate.options._x: walk down the modules
            if f"{current}.{attr}" in MODULES:
                current = f"{current}.{attr}"
            else:
                if is_private(attr) and current != name:
                    used.append(f"{name}: {current}.{attr}")
                break
    return used


def test_no_module_uses_another_modules_private_names():
    assert [use for name in MODULES for use in private_uses(name)] == []


def test_evaluation_and_the_store_never_import_the_command_line_module():
    checked = [name for name in MODULES if name.startswith(("byol.evaluate", "byol.store"))]
    assert "byol.evaluate.options" in checked and "byol.store.reader" in checked
    offenders = [name for name in checked
                 if any(target == COMMAND_LINE for target, _, _ in ALL_IMPORTS[name])]
    assert offenders == []


def test_the_command_line_module_imports_no_training_stage():
    targets = {target for target, _, _ in ALL_IMPORTS[COMMAND_LINE]}
    assert "byol.config" in targets
    assert sorted(t for t in targets if t == "byol.pretrain" or t.startswith("byol.pretrain.")) == []
