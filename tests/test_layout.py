"""The project's shape, checked statically: the import graph keeps its rules (import-linter's
contracts in pyproject.toml: the floors and the core's rooms import only downward, no cycles), the
torch core imports neither Prefect nor MLflow, and no function takes more than 8 parameters
(settings travel as typed config objects)."""
import ast
import shutil
import subprocess
import sys

import pytest

from conftest import REPO

MAX_PARAMETERS = 8


def python_files(*folders: str):
    for folder in folders:
        yield from sorted((REPO / folder).rglob("*.py"))


def test_the_core_imports_neither_prefect_nor_mlflow():
    found = []
    for path in python_files("layerwise"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            found += [f"{path.relative_to(REPO)}: {name}" for name in names
                      if name.split(".")[0] in ("prefect", "mlflow")]
    assert not found


def test_no_function_takes_more_than_eight_parameters():
    wide = []
    for path in python_files("layerwise", "tasks", "flows", "benchmarks", "team"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                args = node.args
                names = [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs]
                count = len(names) - (names[:1] in (["self"], ["cls"]))
                if count > MAX_PARAMETERS:
                    wide.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({count})")
    assert not wide


LINT = ("import sys; from importlinter.cli import lint_imports; "
        "sys.exit(lint_imports(config_filenames=('pyproject.toml',), no_cache=True, no_logo=True))")


def lint_imports(root) -> subprocess.CompletedProcess:
    """lint-imports over the checkout at root (its own packages first on the path)."""
    return subprocess.run([sys.executable, "-c", LINT], cwd=root, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_the_import_graph_keeps_its_contracts():
    done = lint_imports(REPO)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "3 kept, 0 broken" in done.stdout


@pytest.mark.slow
@pytest.mark.parametrize("module, line, broken", [
    ("layerwise/nn/losses.py", "import tasks.logs", "floors: benchmarks > flows > tasks > layerwise BROKEN"),
    ("layerwise/datasets/source.py", "from layerwise.train import loop", "the core's rooms"),
    ("layerwise/config/schema.py", "from layerwise.config import grid", "no import cycles"),
])
def test_a_new_upward_arrow_or_cycle_breaks_a_contract(tmp_path, module, line, broken):
    """The contracts can fail: the same check on a copy of the checkout with one bad import added."""
    for part in ("layerwise", "tasks", "flows", "benchmarks"):
        shutil.copytree(REPO / part, tmp_path / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    with open(tmp_path / module, "a") as handle:
        handle.write(f"\n{line}  # noqa: the bad import under test\n")
    done = lint_imports(tmp_path)
    assert done.returncode == 1 and broken in done.stdout, done.stdout[-3000:]
