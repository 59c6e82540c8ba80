"""Code a newcomer can read: every function fits on one screen, and the loop and the run each fit in one file of
modest length. Read from the source (ast): no import, no run."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "cnnzoo"
MAX_FUNCTION = 50  # code lines (not blank, not comments, docstring excluded): one screen
MAX_FILE = {"train/loop.py": 350, "train/run.py": 350}


def code_lines(node: ast.FunctionDef | ast.AsyncFunctionDef, lines: list[str]) -> int:
    """The function's lines that hold code: its body without the docstring, blank lines and comment lines."""
    body = node.body
    if len(body) > 1 and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant):
        body = body[1:]
    text = lines[body[0].lineno - 1 : node.end_lineno]
    return sum(1 for line in text if line.strip() and not line.strip().startswith("#"))


def functions(path: Path, root: Path = SRC) -> list[tuple[str, int]]:
    """(file:line name, code lines) of every function and method in ``path``."""
    source = path.read_text()
    lines = source.splitlines()
    return [
        (f"{path.relative_to(root)}:{node.lineno} {node.name}", code_lines(node, lines))
        for node in ast.walk(ast.parse(source))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
    ]


def test_every_function_fits_on_one_screen():
    long = sorted(
        (f"{name} ({n} lines)" for p in SRC.rglob("*.py") for name, n in functions(p) if n > MAX_FUNCTION),
    )
    assert not long, long


@pytest.mark.parametrize("rel", sorted(MAX_FILE))
def test_the_loop_and_the_run_are_short_files(rel):
    n = len((SRC / rel).read_text().splitlines())
    assert n < MAX_FILE[rel], f"{rel}: {n} lines"


def test_the_measure_counts_code_only(tmp_path):
    """The check can fail: a function of 51 statements is long; its docstring, comments and blank lines are not."""
    body = "\n".join(f"    x{i} = {i}  # {i}\n    # a comment\n" for i in range(51))
    path = tmp_path / "m.py"
    path.write_text(f'def f():\n    """Doc.\n\n    More doc.\n    """\n{body}\n\ndef g():\n    return 1\n')
    counts = {name.split()[-1]: n for name, n in functions(path, root=tmp_path)}
    assert counts == {"f": 51, "g": 1}
