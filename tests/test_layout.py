"""The code's layout, read from its import statements: imports run one way (cli -> stages and report -> rooms ->
music -> helpers; model apart), nothing imports in a cycle, dvc.yaml lists exactly the code each stage runs, no two
modules are named as near-twins, and no file or function is too long to read at once."""

from __future__ import annotations

import ast
import os
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT

PACKAGES = ("pipeline", "model")
HELPERS = {"pipeline.atomic", "pipeline.errors"}  # what the music library may use of the pipeline
STAGES = {"fetch", "parse", "validate", "tokenize", "train", "evaluate", "package", "generate"}  # pipeline/<stage>.py
ROOMS = ("fetching", "training", "generation")  # pipeline/<room>/: the helpers of one stage or two, in a folder
MAX_TOP_MODULES = 20  # .py files directly in pipeline/; beyond this, a room (a subpackage) reads better
MAX_FILE_LINES, MAX_FUNCTION_LINES = 400, 60


def module_files() -> dict[str, Path]:
    """Every module of the project's packages by dotted name (a package by its __init__.py)."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


MODULES = module_files()


def _type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def imported_names(tree: ast.AST, module: str) -> list[str]:
    """Every module name that `tree` imports, at the top or inside functions, leaving out `if TYPE_CHECKING:`."""
    names: list[str] = []
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{module}: a relative import (the project imports absolutely)"
            names.append(node.module)
            names += [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in MODULES]
        stack.extend(ast.iter_child_nodes(node))
    return names


def project_imports(module: str) -> set[str]:
    """The project modules that `module` imports directly, with the packages whose __init__ each import runs: not the
    packages around `module`, which Python began before `module` itself, unless it imports from one of them by name
    (`from pipeline.cli import app` inside pipeline/cli/ is a cycle; `from pipeline.cli.common import app` is not)."""
    found = set()
    for name in imported_names(ast.parse(MODULES[module].read_text()), module):
        parts = name.split(".")
        if parts[0] not in PACKAGES:
            continue
        for k in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__.py and a/b/__init__.py first
            prefix = ".".join(parts[:k])
            around = module.startswith(prefix + ".") and prefix != name
            if prefix in MODULES and prefix != module and not around:
                found.add(prefix)
    return found


GRAPH = {module: project_imports(module) for module in MODULES}


def closure(start: set[str]) -> set[str]:
    """`start` and every project module it imports, transitively."""
    seen, todo = set(), list(start)
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo += GRAPH[module]
    return seen


def layer(module: str) -> str:
    """Which room a module is in: model, music, report, review, a stage's helpers (fetching, training, generation), a
    stage, the cli (pipeline/cli/ and __main__), the listening page, or a shared helper of the pipeline."""
    parts = module.split(".")
    if parts[0] == "model":
        return "model"
    if module == "pipeline.__main__" or parts[1:2] == ["cli"]:
        return "cli"
    if len(parts) > 1 and parts[1] in ("music", "report", "review", *ROOMS):
        return parts[1]
    if len(parts) > 1 and parts[1] in STAGES:
        return "stage"
    if len(parts) > 1 and parts[1] == "demo":
        return "app"  # the listening page: built on the generate stage, imported by the cli alone
    return "helper"


def test_the_layout_is_read_from_real_imports():
    # The graph itself must be right, or every check below is vacuous.
    assert {"pipeline.music.midi", "pipeline.atomic", "pipeline.generation.primers"} <= GRAPH["pipeline.generate"]
    assert "pipeline.music.features" in GRAPH["pipeline.report.samples"]  # imported inside a function
    assert "model" in GRAPH["pipeline.model_folder"] and "model.transformer_xl" in GRAPH["model"]
    assert "pipeline.report.figures" in GRAPH["pipeline.report.stage"]  # `from pipeline.report import figures`
    every_room = {"model", "music", "report", "review", "stage", "cli", "app", "helper", *ROOMS}
    assert {layer(m) for m in MODULES} == every_room, every_room - {layer(m) for m in MODULES}
    assert "pipeline.errors" in GRAPH["pipeline.review.remote"]
    assert "pipeline.review.compare" in GRAPH["pipeline.cli.review"]
    assert "pipeline.generate" in GRAPH["pipeline.demo.studio"] and "pipeline.demo.page" in GRAPH["pipeline.cli.listen"]
    assert {"pipeline.cli.data", "pipeline.cli.listen", "pipeline.cli.common"} <= GRAPH["pipeline.cli"]
    assert "pipeline.cli" not in GRAPH["pipeline.cli.data"]  # its package began first: no edge, so no cycle
    assert {"pipeline.fetching.download", "pipeline.training.segments", "pipeline.generation.decoding"} <= (
        GRAPH["pipeline.fetch"] | GRAPH["pipeline.train"] | GRAPH["pipeline.generate"]
    )


def test_model_knows_no_music_and_no_pipeline():
    for module in (m for m in MODULES if layer(m) == "model"):
        outside = {m for m in GRAPH[module] if layer(m) != "model"}
        assert not outside, f"{module} imports {outside}"
        names = {n.split(".")[0] for n in imported_names(ast.parse(MODULES[module].read_text()), module)}
        allowed = {"torch", "math", "time", "contextlib", "dataclasses", "collections", "__future__", "model", "typing"}
        allowed |= {"safetensors", "pathlib"}  # model/weights.py: the package writes and reads the weights
        assert names <= allowed, names


def test_music_imports_only_music_and_the_helpers():
    for module in (m for m in MODULES if layer(m) == "music"):
        outside = {m for m in GRAPH[module] if layer(m) != "music" and m not in HELPERS and m != "pipeline"}
        assert not outside, f"{module} imports {outside}"
        text = MODULES[module].read_text().lower()
        for word in ("params.yaml", "data/", "dvc"):  # no pipeline folder, setting or tool named in the library
            assert word not in text, f"{module} mentions {word!r}"


def test_report_imports_no_stage_and_stages_no_report_or_other_stage():
    for module, imports in GRAPH.items():
        rooms = {m: layer(m) for m in imports}
        if layer(module) == "report":
            assert not {m for m, r in rooms.items() if r in ("stage", "cli")}, f"{module} imports {rooms}"
        if layer(module) == "stage":
            assert not {m for m, r in rooms.items() if r in ("stage", "report", "cli")}, f"{module} imports {rooms}"
        if layer(module) == "review":  # sharing and review work on files and git, and run no stage's code
            assert set(rooms.values()) <= {"review", "helper"}, f"{module} imports {rooms}"
        if layer(module) not in ("app", "cli"):
            assert not {m for m, r in rooms.items() if r == "app"}, f"{module} imports the demo: {rooms}"
        if layer(module) == "helper":  # a stage's helper (segments) may use the music library; atomic and errors not
            banned = ("stage", "report", "cli", "music") if module in HELPERS else ("stage", "report", "cli")
            assert not {m for m, r in rooms.items() if r in banned}, f"{module}: {rooms}"


def test_rooms_import_no_stage_cli_report_or_demo_and_the_libraries_no_room():
    # A room holds a stage's helpers (fetching: fetch's; training: train's and evaluate's; generation: generate's and
    # the demo's): it may use the music library and the shared helpers, never what is built on it. The rule holds for
    # a room whose folder does not exist yet, and for one added to ROOMS.
    for module, imports in GRAPH.items():
        rooms = {m: layer(m) for m in imports}
        if layer(module) in ROOMS:
            built_on = sorted(m for m, r in rooms.items() if r in ("stage", "cli", "report", "app"))
            assert not built_on, f"{module} (the {layer(module)} room) imports {built_on}: a room serves the stages"
        if layer(module) == "music":
            assert not {r for r in rooms.values() if r in ROOMS}, f"{module}, in the music library, imports {rooms}"
        if layer(module) == "model":
            outside = sorted(m for m in imports if not m.startswith("model"))
            assert not outside, f"{module}: the model imports nothing of the pipeline, not {outside}"


def test_no_import_cycles():
    # Depth-first search; a module met again while still on the path closes a cycle.
    state: dict[str, int] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for child in sorted(GRAPH[module]):
            if state.get(child) == 1:
                pytest.fail(f"import cycle: {' -> '.join([*path[path.index(child) :], child])}")
            if child not in state:
                visit(child, [*path, child])
        state[module] = 2

    for module in sorted(MODULES):
        if module not in state:
            visit(module, [module])


def _has_code(path: Path) -> bool:
    """Whether a file holds more than a docstring (an __init__.py of only a docstring is no dependency)."""
    body = ast.parse(path.read_text()).body
    return any(not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant)) for s in body)


def cli_functions() -> dict[str, ast.FunctionDef]:
    """Every top-level function of the CLI's modules (pipeline/cli/*.py) by name: the commands and their helpers."""
    functions: dict[str, ast.FunctionDef] = {}
    for module in sorted(m for m in MODULES if layer(m) == "cli"):
        for f in ast.parse(MODULES[module].read_text()).body:
            if isinstance(f, ast.FunctionDef):
                assert f.name not in functions, f"two functions of the CLI are named {f.name} ({module} has one)"
                functions[f.name] = f
    return functions


def stage_code(stage: str) -> set[str]:
    """The project files that `python -m pipeline STAGE` runs, the CLI's own files left out: what the stage's command
    imports, and what the CLI functions it calls (`_run`, a helper beside it) import, transitively."""
    functions, called, todo = cli_functions(), set(), [stage]
    while todo:  # the command, then every CLI function it calls by name
        name = todo.pop()
        called.add(name)
        calls = {
            n.func.id for n in ast.walk(functions[name]) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
        }
        todo += sorted(calls & functions.keys() - called)
    start = set()
    for name in (name for f in sorted(called) for name in imported_names(functions[f], "pipeline.cli")):
        parts = name.split(".")
        start |= {".".join(parts[:k]) for k in range(1, len(parts) + 1) if ".".join(parts[:k]) in MODULES}
    files = {MODULES[m] for m in closure(start) if layer(m) != "cli" and _has_code(MODULES[m])}
    return {str(f.relative_to(ROOT)) for f in files}


def dvc_code_deps(stage: dict) -> set[str]:
    """The Python files a dvc.yaml stage lists, a folder standing for every .py file under it."""
    files = set()
    for dep in stage.get("deps", []):
        path = ROOT / dep
        if not dep.startswith(PACKAGES):
            continue
        listed = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        assert all(p.is_file() for p in listed), f"dvc.yaml lists {dep}, which does not exist"
        files |= {str(p.relative_to(ROOT)) for p in listed if _has_code(p)}
    return files


def test_each_dvc_stage_depends_on_exactly_the_code_it_imports():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert set(stages) == STAGES | {"report"}
    for name, stage in stages.items():
        assert stage["cmd"].split()[:4] == ["python", "-m", "pipeline", name]
        needed, listed = stage_code(name), dvc_code_deps(stage)
        assert listed == needed, f"{name}: missing {sorted(needed - listed)}, not imported {sorted(listed - needed)}"


def test_a_figure_change_reruns_the_report_stage_only():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    users = {name for name, stage in stages.items() if "pipeline/report/figures.py" in dvc_code_deps(stage)}
    assert users == {"report"}
    users = {name for name, stage in stages.items() if "pipeline/music/performance_encoding.py" in dvc_code_deps(stage)}
    assert users == {
        "tokenize",
        "train",
        "evaluate",
        "package",
        "generate",
        "report",
    }  # the piano state reads the encoding


def near_twins(a: str, b: str) -> bool:
    """Names one letter-ending apart, like tokenize and tokenizer or compare and comparison (a stage's own params
    module, like generate_params beside generate, and a module's torch twin, like piano_state_torch beside the
    numpy piano_state, say what they are)."""
    if any(f"{a}_{role}" == b or f"{b}_{role}" == a for role in ("params", "torch")):
        return False
    common = len(os.path.commonprefix([a, b]))
    return a != b and common >= 5 and common >= 0.75 * min(len(a), len(b))


def test_near_twins_are_recognised():
    assert near_twins("tokenize", "tokenizer") and near_twins("compare", "comparison")
    assert not near_twins("params", "parse") and not near_twins("features", "figures")
    assert not near_twins("generate", "generate_params") and near_twins("generate", "generator")
    assert not near_twins("piano_state", "piano_state_torch") and near_twins("piano_state", "piano_states")


def test_no_two_modules_are_near_twins():
    stems = [p.stem for p in MODULES.values() if p.name not in ("__init__.py", "__main__.py")]
    assert len(stems) == len(set(stems)), sorted(s for s in stems if stems.count(s) > 1)
    assert not [(a, b) for a in stems for b in stems if a < b and near_twins(a, b)]


def test_at_most_twenty_modules_directly_in_pipeline():
    top = sorted(p.name for p in (ROOT / "pipeline").glob("*.py"))
    assert len(top) <= MAX_TOP_MODULES, (
        f"{len(top)} modules directly in pipeline/, more than {MAX_TOP_MODULES}: move helpers into a room (fetching/, "
        f"training/, generation/, or a new subpackage as music/ and report/ are): {', '.join(top)}"
    )


def too_long(text: str, where: str) -> list[str]:
    """What in a file's `text` is over the limits: the file past MAX_FILE_LINES lines, and every def (a method or a
    nested one too) past MAX_FUNCTION_LINES, counted from its `def` line to its last."""
    found = [f"{where}: {n} lines" for n in [len(text.splitlines())] if n > MAX_FILE_LINES]
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            if length > MAX_FUNCTION_LINES:
                found.append(f"{where}:{node.lineno}: {node.name}() is {length} lines")
    return found


def test_too_long_finds_long_files_methods_and_nested_functions():
    body = "".join(f"        x = {i}\n" for i in range(MAX_FUNCTION_LINES - 1))  # a def of exactly the limit
    fits = f"class A:\n    def f(self):\n{body}"
    assert too_long(fits, "a.py") == []
    nested = f"def outer():\n    def inner():\n{body}        return x\n    return inner\n"
    assert too_long(nested, "b.py") == ["b.py:1: outer() is 63 lines", "b.py:2: inner() is 61 lines"]
    long_file = "x = 1\n" * (MAX_FILE_LINES + 1)
    assert too_long(long_file, "c.py") == [f"c.py: {MAX_FILE_LINES + 1} lines"]


def test_no_file_over_400_lines_and_no_function_over_60():
    offenders = [o for path in MODULES.values() for o in too_long(path.read_text(), str(path.relative_to(ROOT)))]
    assert not offenders, (
        f"{len(offenders)} over the limits ({MAX_FILE_LINES} lines a file under pipeline/ or model/, "
        f"{MAX_FUNCTION_LINES} a function):\n" + "\n".join(offenders)
    )


def test_no_script_shadows_a_standard_module():
    # `python benchmarks/X.py` puts benchmarks/ first on sys.path, so a script named like a standard module (tokenize,
    # for one) would be imported in its place by everything that imports that module.
    scripts = [p.stem for p in (ROOT / "benchmarks").glob("*.py")]
    assert scripts and not set(scripts) & set(sys.stdlib_module_names)
