"""The shared table formatter: nothing cut at 80-140 columns; csv/json parse back to the rows; markdown."""

from __future__ import annotations

import csv
import io
import json

import pytest
from rich.console import Console

from cnnzoo.analysis import compare, tables

# Rows as `cnnzoo compare` makes them (the widest cells it produces), two runs of one model among them.
ROWS = [
    {
        "model": "googlenet_paper",
        "run": "runs/a",
        "input": "3x224x224",
        "batch_size": 8,
        "params": 13_378_280,
        "macs": 1_586_376_256,
        "latency_ms": 123.456,
        "infer_img_s": 1234.5,
        "train_img_s": 1.23456,
        "infer_mem_mb": 12345.0,
        "train_mem_mb": 23456.0,
        "vs_torchvision_latency": 1.0123,
        "vs_torchvision_train": 0.987,
        "accuracy": 0.69778,
        "accuracy_source": "published ImageNet top-1 (torchvision weights)",
        "note": "out of memory at batch 64; measured at 8",
    },
    {
        "model": "resnet152",
        "run": "runs/b",
        "input": "3x224x224",
        "batch_size": 8,
        "params": 60_192_808,
        "macs": 11_580_000_000,
        "latency_ms": 9.87,
        "infer_img_s": 54.321,
        "train_img_s": 10.5,
        "infer_mem_mb": 1.0,
        "train_mem_mb": 2.0,
        "vs_torchvision_latency": None,
        "vs_torchvision_train": None,
        "accuracy": None,
        "accuracy_source": None,
        "note": "",
    },
]


def _render(width: int, monkeypatch) -> str:
    monkeypatch.setenv("COLUMNS", str(width))  # how users (and CI) set the width; rich's Console reads it
    console = Console(file=io.StringIO(), color_system=None)
    assert console.width == width
    cols = compare._display_columns(ROWS)
    tables.emit(ROWS, cols, "table", title="compare", keys=2, console=console)
    return console.file.getvalue()


@pytest.mark.parametrize("width", [80, 100, 140])
def test_table_fits_and_cuts_nothing(width, monkeypatch):
    out = _render(width, monkeypatch)
    assert max(len(line) for line in out.splitlines()) <= width
    assert "…" not in out  # rich's ellipsis: something was cut
    cells = [c.text(r) for r in ROWS for c in compare._display_columns(ROWS) if not c.wrap]
    for cell in filter(None, cells):  # every name and number whole, on one line
        assert cell in out, (width, cell)
    free_text = ROWS[0]["accuracy_source"] + " " + ROWS[0]["note"]
    for word in free_text.split():
        assert word in out  # free text may wrap, but only at spaces
    assert out.count("runs/a") >= 1 and out.count("runs/b") >= 1


def test_narrow_table_splits_and_repeats_the_keys(monkeypatch):
    out = _render(80, monkeypatch)
    parts = out.count("┡")  # the rule under each table's header
    assert parts > 1 and "compare (1/" in out and f"(continued, {parts}/{parts})" in out
    assert out.count("googlenet_paper") == parts and out.count("runs/a") == parts  # each part names its rows
    assert out.count("compare") == 1  # the title once
    assert "┡" in _render(300, monkeypatch) and "(1/" not in _render(300, monkeypatch)  # wide enough: one table


def test_a_table_that_almost_fits_drops_its_outer_border():
    cols = [tables.Column("name", "name", justify="left"), tables.Column("n", "n")]
    rows = [{"name": "x" * 20, "n": "1,234"}]
    assert tables.column_groups(rows, cols, 32) == ([[0, 1]], True)  # 20 + 5 + 3 * 2 + 1
    assert tables.column_groups(rows, cols, 28) == ([[0, 1]], False)


def test_csv_and_json_parse_back_to_the_rows(capsys):
    cols = compare._display_columns(ROWS)
    tables.emit(ROWS, cols, "json", fields=compare.COLUMNS)
    assert json.loads(capsys.readouterr().out) == [{k: r.get(k) for k in compare.COLUMNS} for r in ROWS]
    tables.emit(ROWS, cols, "csv", fields=compare.COLUMNS)
    back = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [list(r) for r in back] == [compare.COLUMNS] * 2
    for got, want in zip(back, ROWS, strict=True):
        assert got == {k: "" if want.get(k) is None else str(want[k]) for k in compare.COLUMNS}
        assert float(got["latency_ms"]) == want["latency_ms"] and int(got["params"]) == want["params"]


def test_markdown_has_every_row_and_escapes_pipes(capsys):
    cols = [tables.Column("model", "model", justify="left"), tables.Column("note", "note", wrap=True)]
    tables.emit([{"model": "resnet20", "note": "a | b"}, {"model": "vgg16", "note": None}], cols, "md")
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == ["| model | note |", "|---|---:|"]
    assert lines[2:] == ["| resnet20 | a \\| b |", "| vgg16 |  |"]


def test_models_formats(capsys, monkeypatch):
    from cnnzoo.analysis.profile import profile_model
    from cnnzoo.cli import main

    want = [profile_model(n) for n in ("alexnet", "alexnet_2tower_paper", "alexnet_paper")]
    assert main(["models", "--family", "alexnet", "--format", "json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert [(r["name"], r["params"], r["macs"], r["paper"]) for r in got] == [
        (w["name"], w["params"], w["macs"], w["paper"]) for w in want
    ]
    assert main(["models", "--family", "alexnet", "--format", "csv"]) == 0
    back = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [(r["name"], int(r["params"]), r["input"]) for r in back] == [
        (w["name"], w["params"], "x".join(map(str, w["input_size"]))) for w in want
    ]
    for width in (80, 100, 140):
        monkeypatch.setenv("COLUMNS", str(width))
        assert main(["models", "--family", "alexnet"]) == 0
        out = capsys.readouterr().out
        assert max(map(len, out.splitlines())) <= width
        for w in want:
            assert w["name"] in out and f"{w['params']:,}" in out
    assert main(["models", "--family", "alexnet", "--format", "md"]) == 0
    assert "| alexnet_2tower_paper | alexnet | Krizhevsky et al. 2012 |" in capsys.readouterr().out
