"""After training: `cnnzoo eval`, `predict`, `export`, multi-seed runs, and the GoogLeNet-style auxiliary loss."""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from cnnzoo.errors import CnnzooError
from cnnzoo.train.api import train
from cnnzoo.train.config import TrainConfig
from cnnzoo.train.engine import compute_loss, make_optimizer, step_context, train_step
from cnnzoo.train.tools import evaluate_run, export
from conftest import TINY  # 3 steps of 32 digits images per epoch, 48 validation images


@pytest.fixture
def run_dir(tiny_run):
    return tiny_run  # (run directory, report): resnet20, 2 epochs of TINY digits


def _cli(argv: list[str]) -> int:
    from cnnzoo.train import cli

    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_eval_reproduces_the_report(run_dir, capsys):
    out, report = run_dir
    result = evaluate_run(out, split="test", device="cpu")
    assert result["n"] == 360
    for key in ("loss", "top1", "top5"):
        assert result[key] == pytest.approx(report["test"][key], abs=1e-6)
    assert result["per_class"] == pytest.approx(report["test"]["per_class"])
    assert _cli(["eval", str(out), "--split", "val", "--device", "cpu", "--json"]) == 0
    val = json.loads(capsys.readouterr().out)
    assert val["n"] == 48 and val["split"] == "val"
    with pytest.raises(CnnzooError, match="no such run directory"):
        evaluate_run(out.parent / "missing")


def test_export_torchscript_matches_eager(run_dir, tmp_path):
    out, _ = run_dir
    result = export(out, fmt="torchscript", output=tmp_path / "m.pt")
    assert result["max_abs_diff"] <= 1e-4
    scripted = torch.jit.load(str(tmp_path / "m.pt"))
    assert scripted(torch.zeros(1, 1, 32, 32)).shape == (1, 10)


def test_export_onnx_without_packages_names_them(run_dir, monkeypatch):
    # The packages are installed here (the dev extra): hide them, as on a machine without the onnx extra.
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name.startswith("onnx") else real(name, *a)
    )
    out, _ = run_dir
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(CnnzooError, match="pip install .*onnx"):
        export(out, fmt="onnx")
    assert sorted(p.name for p in out.iterdir()) == before  # nothing written


def test_seeds_report_mean_and_std(tmp_path):
    summary = train("resnet20", "digits", out=tmp_path / "s", seeds=[0, 1], epochs=1, quiet=True, **TINY)
    assert [r["seed"] for r in summary["runs"]] == [0, 1]
    assert all((tmp_path / "s" / f"seed-{k}" / "report.json").is_file() for k in (0, 1))
    values = [r["test"]["top1"] for r in summary["runs"]]
    assert summary["test_top1"]["mean"] == pytest.approx(sum(values) / 2)
    assert summary["test_top1"]["std"] == pytest.approx(abs(values[0] - values[1]) / 2**0.5)
    assert json.loads((tmp_path / "s" / "seeds.json").read_text())["test_top1"] == summary["test_top1"]


class _AuxNet(nn.Module):
    """A stand-in with GoogLeNet's output contract: (logits, aux2, aux1) in training mode, logits in eval."""

    def __init__(self) -> None:
        super().__init__()
        self.main, self.aux = nn.Linear(4, 3), nn.Linear(4, 3)

    def forward(self, x):
        return (self.main(x), self.aux(x), self.aux(x)) if self.training else self.main(x)


def test_auxiliary_losses_are_added_with_their_weight():
    net, x, y = _AuxNet(), torch.randn(8, 4), torch.randint(0, 3, (8,))
    ctx = step_context(TrainConfig(aux_weight=0.3, device="cpu"), torch.device("cpu"))
    loss, logits = compute_loss(net(x), y, ctx)
    ce = nn.functional.cross_entropy
    assert loss.item() == pytest.approx((ce(net.main(x), y) + 2 * 0.3 * ce(net.aux(x), y)).item(), rel=1e-6)
    before = net.main.weight.clone()
    opt = make_optimizer(net, TrainConfig(lr=0.1), torch.device("cpu"))
    step_loss, step_logits = train_step(net, opt, x, y, ctx)
    assert step_loss.item() == pytest.approx(loss.item(), rel=1e-6) and step_logits.shape == (8, 3)
    assert not torch.equal(before, net.main.weight)


def test_real_googlenet_auxiliary_heads_enter_the_loss():
    from cnnzoo.models import create_model

    torch.manual_seed(0)
    net = create_model("googlenet", num_classes=10, in_channels=1).train()
    x, y = torch.randn(2, 1, 64, 64), torch.tensor([3, 7])
    out = net(x)
    assert isinstance(out, tuple) and len(out) == 3  # (logits, aux2, aux1) in training mode
    ctx = step_context(TrainConfig(aux_weight=0.3, device="cpu"), torch.device("cpu"))
    loss, logits = compute_loss(out, y, ctx)
    ce = nn.functional.cross_entropy
    expected = ce(out[0], y) + 0.3 * (ce(out[1], y) + ce(out[2], y))
    assert torch.equal(logits, out[0]) and loss.item() == pytest.approx(expected.item(), rel=1e-6)


# --- hostile inputs: each test is the failure it prevents --------------------------------------------------------


def _fails_in_one_line(capsys, argv: list[str], *fragments: str) -> str:
    """``cnnzoo ARGV`` exits non-zero with exactly one ``error: ...`` line on stderr and no traceback."""
    from cnnzoo.cli import main

    code = main(argv)
    err = capsys.readouterr().err
    assert code != 0 and err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    return err


class _RunsCode:
    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return self.func, (self.arg,)


def _copy_run(run_dir, tmp_path):
    import shutil

    out, _ = run_dir
    return Path(shutil.copytree(out, tmp_path / "copy"))


def test_checkpoint_that_would_run_code_is_refused_without_suggesting_weights_only_false(run_dir, tmp_path, capsys):
    import os

    copy = _copy_run(run_dir, tmp_path)
    marker = tmp_path / "pwned"
    good = torch.load(copy / "best.pt", weights_only=True)
    torch.save(dict(good, extra=_RunsCode(os.system, f"touch {marker}")), copy / "best.pt")
    for argv in (["eval", str(copy), "--device", "cpu"], ["export", str(copy), "--format", "torchscript"]):
        err = _fails_in_one_line(capsys, argv, "best.pt", "refused", "system")
        assert "weights_only=False" not in err and "weights_only" not in err.replace("weights_only=True", "")
        assert "trust" not in err
    assert not marker.exists() and not (copy / "model.ts.pt").exists()


@pytest.mark.parametrize(
    "edit, fragment",
    [
        (lambda c: c.pop("meta"), "'meta' is missing"),
        (lambda c: c["meta"].update(classes=["a"]), "classes for num_classes"),
        (lambda c: c["meta"].update(mean=["x"]), "'mean' must hold"),
        (lambda c: c.update(model={"conv1.weight": torch.zeros(1)}), "weights do not fit"),
        (lambda c: c.update(model=[1, 2]), "'model' is missing or not a table"),
        (lambda c: c.update(format=99), "no format marker"),
    ],
    ids=["no-meta", "classes", "mean", "weights", "model-list", "format"],
)
def test_hand_edited_checkpoint_is_one_line(run_dir, tmp_path, capsys, edit, fragment):
    copy = _copy_run(run_dir, tmp_path)
    ckpt = torch.load(copy / "best.pt", weights_only=True)
    edit(ckpt)
    torch.save(ckpt, copy / "best.pt")
    _fails_in_one_line(capsys, ["eval", str(copy), "--device", "cpu"], fragment)


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_export_to_a_destination_that_cannot_be_written_is_one_line_and_writes_nothing(run_dir, tmp_path, capsys):
    out, _ = run_dir
    (tmp_path / "a-folder").mkdir()
    (tmp_path / "a-file").write_text("mine")
    before, run_before = _tree(tmp_path), _tree(out)
    cases = [
        (tmp_path / "a-folder", "is a folder"),
        (tmp_path / "missing" / "m.pt", "no such folder"),
        (tmp_path / "a-file" / "m.pt", "not a folder"),
    ]
    for dest, fragment in cases:
        _fails_in_one_line(capsys, ["export", str(out), "--format", "torchscript", "--output", str(dest)], fragment)
    assert _tree(tmp_path) == before and _tree(out) == run_before


def test_export_to_a_read_only_folder_is_one_line(run_dir, tmp_path, capsys):
    import os

    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        _fails_in_one_line(
            capsys,
            ["export", str(run_dir[0]), "--format", "torchscript", "--output", str(ro / "m.pt")],
            "permission denied",
        )
        assert not any(ro.iterdir())
    finally:
        ro.chmod(0o755)


def test_export_failing_midway_leaves_the_previous_file_and_no_temporary(run_dir, tmp_path, capsys, monkeypatch):
    import errno

    from cnnzoo.train import tools

    out, _ = run_dir
    dest = tmp_path / "m.pt"
    dest.write_bytes(b"the previous export")

    def disk_full(model, x, expected, path, metadata):
        path.write_bytes(b"half a model")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tools, "_write_torchscript", disk_full)
    _fails_in_one_line(
        capsys,
        ["export", str(out), "--format", "torchscript", "--output", str(dest), "--overwrite"],
        str(dest),
        "No space left on device",
    )
    assert dest.read_bytes() == b"the previous export" and sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]
