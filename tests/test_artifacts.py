"""dvc.yaml against the code: every declared output is in pipeline/artifacts.py (and back), and every pipeline
module a stage imports is one of its deps, so editing any code a stage runs makes DVC re-run that stage."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from pipeline import artifacts

REPO = Path(__file__).resolve().parents[1]
DVC = yaml.safe_load((REPO / "dvc.yaml").read_text())
STAGES = DVC["stages"]
# Imported by stages but shaping none of their outputs: where a run is logged and what it says (tracking,
# record), the entry-point wrapper (--help, Ctrl-C) and the lazy names of the runner's package (its __init__
# has no module-level imports). What only they import is not followed either.
NOT_SHAPING = {"pipeline/tracking.py", "pipeline/record.py", "pipeline/cli.py", "pipeline/inference/__init__.py"}
# Code a stage reads as a file rather than imports: the pyfunc that quantize logs into each registered model,
# and the modules that travel in its code/ folder.
READ_AS_FILES = {"quantize": {"pipeline/inference/serving.py", "pipeline/inference/detectors.py",
                              "pipeline/inference/images.py"}}


def declared(stage: str, section: str) -> set[str]:
    return {next(iter(e)) if isinstance(e, dict) else e for e in STAGES[stage].get(section, [])}


def test_the_stages_are_the_catalogs() -> None:
    assert set(STAGES) == set(artifacts.STAGE_FILES)


@pytest.mark.parametrize("stage", sorted(artifacts.STAGE_FILES))
@pytest.mark.parametrize("section", ["outs", "metrics", "plots"])
def test_dvc_yaml_declares_exactly_the_catalogs_files(stage: str, section: str) -> None:
    expected = {str(p) for p in artifacts.STAGE_FILES[stage].get(section, [])}
    assert declared(stage, section) == expected


def test_top_level_charts_draw_only_declared_outputs() -> None:
    outs = set().union(*(declared(s, "outs") for s in STAGES))
    for chart in DVC["plots"]:
        (definition,) = chart.values()
        assert set(definition["y"]) <= outs  # plot data are plain outputs, drawn once, here


def test_each_stage_reads_exactly_the_catalogs_files() -> None:
    """The data deps of dvc.yaml (other stages' outputs) are the catalog's `reads`: the graph that decides
    which run a stage continues and which records a new run restores is the one DVC executes."""
    outs = set().union(*(declared(s, "outs") | declared(s, "metrics") | declared(s, "plots") for s in STAGES))
    for stage in STAGES:
        assert declared(stage, "deps") & outs == {str(p) for p in artifacts.STAGES[stage].reads}, stage


def test_the_derived_graph_is_dvc_yamls() -> None:
    outs = {s: declared(s, "outs") | declared(s, "metrics") | declared(s, "plots") for s in STAGES}
    direct = {s: {u for u in STAGES if u != s and declared(s, "deps") & outs[u]} for s in STAGES}

    def closure(stage: str) -> set[str]:
        return set().union(*({u} | closure(u) for u in direct[stage])) if direct[stage] else set()

    assert {s: set(artifacts.upstream(s)) for s in STAGES} == {s: closure(s) for s in STAGES}
    assert {s: artifacts.continues(s) for s in STAGES} == {
        "prepare": None, "train": "prepare", "quantize": "train", "benchmark": "quantize", "evaluate": "quantize"}
    assert artifacts.siblings("benchmark") == ("evaluate",) and artifacts.siblings("evaluate") == ("benchmark",)
    for stage in artifacts.STAGES.values():
        assert stage.details is None or stage.details in stage.outs


def _module_file(name: str) -> Path | None:
    path = REPO / Path(*name.split("."))
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return path.with_suffix(".py") if path.with_suffix(".py").is_file() else None


def _imports(path: Path) -> set[str]:
    """Project modules `path` imports anywhere (lazy imports in functions run too); for a package's
    __init__.py only its module-level imports, which are what importing a submodule executes."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if path.name == "__init__.py" else ast.walk(tree)
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return {name for name in found if name.split(".")[0] == "pipeline"}


def import_closure(module: str) -> set[str]:
    seen: set[Path] = set()
    todo = [module]
    while todo:
        parts = todo.pop().split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__, a/b/__init__, then c
            path = _module_file(".".join(parts[:i]))
            if path is None or path in seen:
                continue
            seen.add(path)
            if str(path.relative_to(REPO)) not in NOT_SHAPING:
                todo += _imports(path)
    return {str(p.relative_to(REPO)) for p in seen}


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_module_a_stage_imports_is_a_dependency(stage: str) -> None:
    module = STAGES[stage]["cmd"].removeprefix("python -m ")
    closure = import_closure(module)
    assert str(Path(*module.split(".")).with_suffix(".py")) in closure
    missing = closure - declared(stage, "deps") - NOT_SHAPING
    assert not missing, f"{stage} imports {sorted(missing)} but dvc.yaml does not list them as deps"
    stale = ({d for d in declared(stage, "deps") if d.startswith("pipeline/") and d.endswith(".py")} - closure
             - READ_AS_FILES.get(stage, set()))
    assert not stale, f"{stage} lists {sorted(stale)} as deps but does not import them"


def test_no_stage_imports_another() -> None:
    stage_modules = {STAGES[s]["cmd"].removeprefix("python -m ") for s in STAGES}
    for module in stage_modules:
        others = {m for m in stage_modules - {module}
                  if str(Path(*m.split(".")).with_suffix(".py")) in import_closure(module)}
        assert not others, f"{module} imports the stage module(s) {sorted(others)}"


def test_each_stage_reads_only_the_params_it_declares() -> None:
    """A stage's params list names the sections (or single keys) it reads from params.yaml (a changed one
    re-runs it); the mlflow section only says where to log."""
    for name, stage in STAGES.items():
        source = (REPO / Path(*stage["cmd"].removeprefix("python -m ").split("."))).with_suffix(".py").read_text()
        for section in ("data", "model", "train", "quantize", "benchmark", "evaluate"):
            declared = [p for p in stage["params"] if p == section or p.startswith(f"{section}.")]
            assert (f"params.{section}" in source) == bool(declared), f"{name}: params.{section} read or declared"
            for key in declared:
                assert f"params.{key}" in source, f"{name}: declares {key} but does not read params.{key}"


def _module_graph() -> dict[str, set[str]]:
    """Every module under pipeline/ and the project modules it imports (at any depth of the file)."""
    graph = {}
    for path in sorted((REPO / "pipeline").rglob("*.py")):
        name = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        graph[name] = {m for m in _imports(path) if _module_file(m) is not None} - {name}
    return graph


def test_imports_run_one_way_no_cycle() -> None:
    """A cycle means two modules that can only be understood together (tracking and record once were)."""
    graph = _module_graph()
    state: dict[str, int] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for dep in sorted(graph.get(module, ())):
            if state.get(dep) == 1:
                raise AssertionError(f"import cycle: {' -> '.join([*path[path.index(dep):], dep])}")
            if dep in graph and not state.get(dep):
                visit(dep, [*path, dep])
        state[module] = 2

    for module in graph:
        if not state.get(module):
            visit(module, [module])


def test_the_runner_package_imports_nothing_of_the_pipeline_outside_it() -> None:
    for module, deps in _module_graph().items():
        if module.startswith("pipeline.inference"):
            outside = {d for d in deps if not d.startswith("pipeline.inference") and d != "pipeline"}
            assert not outside, f"{module} imports {sorted(outside)}"


def test_no_function_in_pipeline_is_over_45_lines() -> None:
    """A function a newcomer reads in one screen: past 45 lines (docstring included) it has become two jobs."""
    long = []
    for path in sorted((REPO / "pipeline").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno >= 45:
                long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} "
                            f"({node.end_lineno - node.lineno + 1} lines)")
    assert not long, long
