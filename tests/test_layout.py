"""The project's shape, checked statically: the torch core imports neither Prefect nor MLflow, and
no function takes more than 8 parameters (settings travel as typed config objects)."""
import ast

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
