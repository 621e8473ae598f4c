"""The package's layering: no import cycles, and no stage importing a higher one.

Imports are read with ``ast`` (module-level and inside functions, ``TYPE_CHECKING`` blocks included),
so a cycle hidden behind a lazy import fails here too. The ranks are the package map in docs/development.md.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "src" / "braintumor"

# Low to high; a module may import its own rank or lower ones. Same-rank imports must still be acyclic.
STAGE_RANKS: dict[str, int] = {
    "errors": 0,
    "classes": 0,
    "progress": 0,
    "io": 0,
    "lazy": 0,
    "runtime": 0,
    "guard": 4,
    "config": 1,
    "configs": 1,
    "data": 2,
    "models": 3,
    "bundle": 5,
    "inference": 6,
    "explain": 7,
    "adaptation": 7,
    "auditing": 7,
    "evaluation": 8,
    "training": 9,
    "workflows": 10,
    "results": 10,
    "batch": 10,
    "serving": 11,
    "api": 12,
    "cli": 13,
}

# The functions that write into a bundle folder; only the workflow layer (and bundle/ itself) may call them.
BUNDLE_WRITERS = {"save_bundle", "write_bundle_guard", "write_bundle_config", "ensure_onnx", "write_onnx_into_bundle"}
WRITER_STAGES = {"bundle", "workflows"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_modules(path: Path, known: set[str]) -> set[str]:
    """Every ``braintumor`` module ``path`` imports, anywhere in the file (``from a import b`` may name module b)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name in known}


def import_graph() -> dict[str, set[str]]:
    """Module -> the braintumor modules it imports (itself excluded)."""
    paths = {_module_name(path): path for path in PACKAGE_ROOT.rglob("*.py")}
    known = set(paths)
    return {name: _imported_modules(path, known) - {name} for name, path in paths.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted.

    Example:
        >>> find_cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}})
        [['a', 'b']]
    """
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(components)


def stage_of(module: str) -> str:
    """``braintumor.data.images`` -> ``data``; the package itself is the top (it only re-exports constants)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "braintumor"


def test_every_stage_has_a_rank() -> None:
    stages = {stage_of(name) for name in import_graph()} - {"braintumor"}
    assert stages <= set(STAGE_RANKS), f"give these stages a rank in STAGE_RANKS: {sorted(stages - set(STAGE_RANKS))}"


def test_no_import_cycles() -> None:
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(cycle) for cycle in cycles)


def test_no_stage_imports_a_higher_one() -> None:
    upward = []
    for module, targets in sorted(import_graph().items()):
        if stage_of(module) == "braintumor":
            continue
        rank = STAGE_RANKS[stage_of(module)]
        for target in sorted(targets):
            target_stage = stage_of(target)
            if target_stage != "braintumor" and STAGE_RANKS[target_stage] > rank:
                upward.append(f"{module} imports {target} ({target_stage} is above {stage_of(module)})")
    assert not upward, "\n".join(upward)


def _imported_names(path: Path) -> set[str]:
    """Every name imported from a ``braintumor`` module, anywhere in the file (docstring examples excluded)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("braintumor"):
            names.update(alias.name for alias in node.names)
    return names


def test_only_the_workflow_layer_writes_bundles() -> None:
    offenders = []
    for path in PACKAGE_ROOT.rglob("*.py"):
        module = _module_name(path)
        if stage_of(module) in WRITER_STAGES:
            continue
        offenders += [f"{module} imports {name}" for name in sorted(_imported_names(path) & BUNDLE_WRITERS)]
    assert not offenders, "only braintumor.workflows writes bundles:\n" + "\n".join(offenders)


def test_only_the_cli_knows_typer_and_rich_tables() -> None:
    offenders = []
    for path in PACKAGE_ROOT.rglob("*.py"):
        module = _module_name(path)
        if stage_of(module) == "cli":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{module}: {name}" for name in names if name == "typer" or name.startswith("rich.table")]
    assert not offenders, offenders


@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, [["a", "b", "c"]]),
    ],
)
def test_cycle_finder_sees_cycles(graph: dict[str, set[str]], expected: list[list[str]]) -> None:
    assert find_cycles(graph) == expected


def test_no_function_is_longer_than_about_80_lines() -> None:
    # Decorators and the docstring count: a function that needs more is doing more than one thing.
    limit = 80
    long = []
    for path in PACKAGE_ROOT.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > limit:
                    long.append(f"{_module_name(path)}.{node.name}: {length} lines")
    assert not long, long


# What the CLI may not call itself: the stages' work goes through the public API (braintumor.api).
CLI_FORBIDDEN_STAGES = {"workflows", "training", "bundle"}
CLI_FORBIDDEN_NAMES = {
    "Predictor",
    "load_bundle",
    "evaluate_bundle",
    "build_report",
    "run_audit",
    "explain_paths",
    "predict_volume",
    "load_volume",
    "save_volume_montage",
    "save_report",
    "write_volume_csv",
    "write_volume_json",
    "export_onnx",
    "list_runs",
}


def test_the_cli_is_a_thin_map_of_the_public_api() -> None:
    offenders = []
    for path in (PACKAGE_ROOT / "cli").rglob("*.py"):
        module = _module_name(path)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("braintumor."):
                if stage_of(node.module) in CLI_FORBIDDEN_STAGES:
                    offenders.append(f"{module} imports {node.module}")
                offenders += [
                    f"{module} imports {node.module}.{alias.name}"
                    for alias in node.names
                    if alias.name in CLI_FORBIDDEN_NAMES
                ]
    assert not offenders, "the CLI calls braintumor.api for this:\n" + "\n".join(offenders)
