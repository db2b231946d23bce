"""The imports of ``courier/`` form floors:
plumbing below the stages, stages in data-flow order, no cycle.

The checker reads the source with ``ast`` (no import, no Spark: 0.9 s on the loaded 2-core
machine): every ``import`` and ``from ... import`` at module level, inside functions and under
``if TYPE_CHECKING:`` (a deferred import, or one for the type checker only, is still a
dependency), relative forms (``from . import x``), ``importlib.import_module("...")`` with a
literal name, and the name tables of PEP 562 lazy ``__getattr__`` modules (``courier/model``,
``courier/train``), whose strings name the modules they load. README.md, "Layout", draws the
floors; docs/ARCHITECTURE.md says what lives on each.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Shared plumbing: imports nothing from a stage (status reads only what plumbing owns).
PLUMBING = (
    "checks",
    "config",
    "spark",
    "catalog",
    "tables",
    "sql_files",
    "sql_server",
    "progress",
    "tracking",
    "status",
)
# The stages in data-flow order: each imports plumbing and the stages before it.
STAGES = ("world", "samples", "data", "model", "train", "features", "ctr", "experiment")
# Above the stages: may import any of them (the demo runs them all; schedule lists the DAG steps).
TOP = ("demo", "schedule")


@dataclass(frozen=True)
class Import:
    """One internal import: ``source`` imports ``target`` at ``line``."""

    source: str
    target: str
    file: str  # the source's path, relative to the root
    line: int


def module_names(root: Path, package: str) -> dict[str, Path]:
    """Every module of ``root/package`` by dotted name
    (a package by its own name, for its __init__)."""
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The module ``name`` refers to: itself, or the nearest enclosing module we have."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _lazy_table_targets(
    tree: ast.Module, module: str, modules: dict[str, Path]
) -> list[tuple[str, int]]:
    """Modules named by strings in the module-level
    assignments of a PEP 562 ``__getattr__`` module."""
    if not any(isinstance(n, ast.FunctionDef) and n.name == "__getattr__" for n in tree.body):
        return []
    out = []
    for node in tree.body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
            for const in ast.walk(node.value):
                if isinstance(const, ast.Constant) and isinstance(const.value, str):
                    # "backbones" (relative to the package) or "courier.train.launch" (absolute).
                    for name in (
                        f"{module}.{const.value}",
                        const.value if "." in const.value else "",
                    ):
                        if name in modules:
                            out.append((name, const.lineno))
                            break
    return out


def imports_of(module: str, root: Path, modules: dict[str, Path]) -> list[Import]:
    """The internal imports of one module, at any depth of its syntax tree."""
    path = modules[module]
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    found: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".") if is_package else module.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import sub` imports the submodule pkg.sub;
            # `from pkg import name` imports pkg.
            found += [
                (f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base, node.lineno)
                for a in node.names
            ]
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None))
            in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            found.append((str(node.args[0].value), node.lineno))
    found += _lazy_table_targets(tree, module, modules)
    out = []
    for name, line in found:
        target = _resolve(name, modules)
        imp = Import(module, target or "", path.relative_to(root).as_posix(), line)
        if target is not None and target != module and imp not in out:
            out.append(imp)
    return out


def import_graph(root: Path, package: str) -> list[Import]:
    """Every internal import of ``root/package``."""
    modules = module_names(root, package)
    return [imp for module in modules for imp in imports_of(module, root, modules)]


def floor_of(module: str) -> tuple[int, str]:
    """(floor, first-level part): plumbing 0, the stages 1..8 in data-flow order, the top 9."""
    part = module.split(".")[1] if "." in module else "__init__"
    if part in PLUMBING or part == "__init__":
        return 0, part
    if part in STAGES:
        return 1 + STAGES.index(part), part
    if part in TOP:
        return 1 + len(STAGES), part
    raise AssertionError(
        f"{module} is on no floor: add {part!r} to PLUMBING, STAGES or TOP "
        "(tests/unit/test_import_floors.py) and to the README's Layout"
    )


def floor_violations(imports: list[Import]) -> list[str]:
    """Imports that go up a floor: plumbing -> a stage,
    a stage -> a later stage, anything -> the top."""
    out = []
    for imp in imports:
        (src_floor, src_part), (dst_floor, dst_part) = floor_of(imp.source), floor_of(imp.target)
        if dst_floor > src_floor:
            where = "plumbing" if src_floor == 0 else f"stage {src_part!r}"
            out.append(
                f"{imp.file}:{imp.line}: {where} imports {imp.target} "
                f"({dst_part!r} is on a higher floor)"
            )
    return out


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the directed graph ``edges`` as a path [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    for start in sorted(edges):
        if state.get(start):
            continue
        path, stack = [start], [iter(sorted(edges.get(start, ())))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(edges.get(nxt, ()))))
    return None


def module_edges(imports: list[Import]) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for imp in imports:
        edges.setdefault(imp.source, set()).add(imp.target)
    return edges


def package_edges(imports: list[Import]) -> dict[str, set[str]]:
    """The imports between first-level parts (``courier.features``, ``courier.config``, ...)."""
    edges: dict[str, set[str]] = {}
    for imp in imports:
        src, dst = (".".join(m.split(".")[:2]) for m in (imp.source, imp.target))
        if src != dst:
            edges.setdefault(src, set()).add(dst)
    return edges


def check_imports(root: Path, package: str) -> list[str]:
    """Every problem of ``root/package``'s imports:
    floor violations, then a module and a package cycle."""
    imports = import_graph(root, package)
    problems = floor_violations(imports)
    for kind, edges in (("module", module_edges(imports)), ("package", package_edges(imports))):
        cycle = find_cycle(edges)
        if cycle:
            problems.append(f"{kind} import cycle: {' -> '.join(cycle)}")
    return problems


@pytest.fixture(scope="module")
def courier_imports() -> list[Import]:
    return import_graph(ROOT, "courier")


def test_every_module_is_on_a_floor():
    for module in module_names(ROOT, "courier"):
        floor_of(module)


def test_plumbing_imports_no_stage_and_stages_follow_the_data_flow(courier_imports):
    violations = floor_violations(courier_imports)
    assert not violations, "imports against the floors (README.md, Layout):\n" + "\n".join(
        violations
    )


def test_no_import_cycle_between_modules(courier_imports):
    cycle = find_cycle(module_edges(courier_imports))
    assert cycle is None, f"module import cycle: {' -> '.join(cycle or [])}"


def test_no_import_cycle_between_packages(courier_imports):
    cycle = find_cycle(package_edges(courier_imports))
    assert cycle is None, f"package import cycle: {' -> '.join(cycle or [])}"


def test_the_checker_reads_imports_inside_functions_and_relative_forms(courier_imports):
    # The deferred imports that exist today are seen, or the floors above would prove nothing.
    targets = {(i.source, i.target) for i in courier_imports}
    assert ("courier.status", "courier.tracking") in targets  # inside a function
    assert ("courier.model", "courier.model.backbones") in targets  # PEP 562 name table
    assert ("courier.train", "courier.train.launch") in targets


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_checker_finds_a_planted_floor_violation_and_cycles(tmp_path):
    # A miniature courier: plumbing `config`, stages `train` and `features` (features above train).
    _write(
        tmp_path,
        {
            "courier/__init__.py": "",
            "courier/config.py": "import json\n",
            "courier/train/__init__.py": "",
            "courier/train/errors.py": "",
            # Inside a function: train reaches up to features
            # (line 4); a relative import closes a cycle.
            "courier/train/launch.py": (
                "from courier.config import x\n\n"
                "def run():\n    from courier.features.model_ref import ModelRef\n\n"
                "from .baselines import f\n"
            ),
            "courier/train/baselines.py": "def f():\n    from . import launch\n",
            "courier/features/__init__.py": "",
            "courier/features/model_ref.py": "from courier.train import errors\n",
        },
    )
    assert check_imports(tmp_path, "courier") == [
        "courier/train/launch.py:4: stage 'train' imports courier.features.model_ref ('features' "
        "is on a higher floor)",
        "module import cycle: courier.train.baselines -> courier.train.launch -> "
        "courier.train.baselines",
        "package import cycle: courier.features -> courier.train -> courier.features",
    ]
    # Without the planted lines the miniature is clean.
    _write(
        tmp_path,
        {
            "courier/train/launch.py": "from courier.config import x\n",
            "courier/train/baselines.py": "from . import launch\n",
        },
    )
    assert check_imports(tmp_path, "courier") == []


def test_the_checker_reads_lazy_name_tables_and_plumbing_violations(tmp_path):
    _write(
        tmp_path,
        {
            "courier/__init__.py": "",
            "courier/tables.py": (
                "import importlib\n\ndef f():\n    importlib.import_module('courier.world.gen')\n"
            ),
            "courier/world/__init__.py": (
                "_LAZY = {'World': 'gen'}\n\ndef __getattr__(name):\n    return None\n"
            ),
            "courier/world/gen.py": "",
            "courier/ctr/__init__.py": "",
            "courier/ctr/x.py": "from ..world import gen\n",
            "courier/elsewhere.py": "",
        },
    )
    imports = import_graph(tmp_path, "courier")
    assert {(i.source, i.target) for i in imports} == {
        ("courier.tables", "courier.world.gen"),
        ("courier.world", "courier.world.gen"),
        ("courier.ctr.x", "courier.world.gen"),
    }
    assert floor_violations(imports) == [
        "courier/tables.py:4: plumbing imports courier.world.gen ('world' is on a higher floor)"
    ]
    with pytest.raises(AssertionError, match=r"courier.elsewhere is on no floor"):
        floor_of("courier.elsewhere")
