"""The learner's workflow: the estimate before a run, progress lines in a log, several runs on one chart, starting
weights of another channel count, show, tables, recipes and the help."""

from __future__ import annotations

import json

import pytest
import torch

from cnnzoo.cli import main
from cnnzoo.errors import CnnzooError
from cnnzoo.train.api import train
from conftest import TINY  # 3 steps of 32 digits images per epoch, 48 validation images

# --- the estimate and progress lines -------------------------------------------------------------------------------


def test_train_prints_an_estimate_before_the_first_step(tmp_path, capsys):
    assert main(["train", "resnet20", "--data", "digits", "--epochs", "2", "--out", str(tmp_path / "r"), *_tiny()]) == 0
    lines = capsys.readouterr().out.splitlines()
    estimates = [i for i, line in enumerate(lines) if line.startswith("estimate:")]
    first_epoch = next(i for i, line in enumerate(lines) if line.startswith("epoch "))
    assert len(estimates) == 1 and estimates[0] < first_epoch
    line = lines[estimates[0]]
    # 2 epochs of 3 steps; 2 validation passes of 1 batch (48 images at 64) + the test's 6 batches (360 at 64).
    assert "for 2 epochs on cpu" in line and "6 steps x" in line and "8 evaluation batches" in line, line


def test_the_estimate_leaves_the_run_as_it_was(tmp_path, monkeypatch):
    """Probing runs real steps; the run must train exactly as without the probe (weights, momentum, RNG)."""
    import importlib

    run_module = importlib.import_module("cnnzoo.train.run")  # cnnzoo.train is also the function

    opts = dict(TINY, epochs=1, dropout=0.2, deterministic=True)  # 3 steps: momentum and dropout draws carry over
    with_probe = train("alexnet_cifar", "digits", out=tmp_path / "a", **opts)  # not quiet: a quiet run skips it
    monkeypatch.setattr(run_module, "announce_estimate", lambda run, stop_after=None: None)
    torch.manual_seed(0)
    without = train("alexnet_cifar", "digits", out=tmp_path / "b", quiet=True, **opts)
    assert with_probe["test"] == without["test"]
    a, b = (
        [json.loads(line)["train_loss"] for line in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
        for d in "ab"
    )
    assert a == b


def test_long_cpu_runs_get_a_suggestion(tmp_path):
    from cnnzoo.train import estimate
    from cnnzoo.train.config import build_config
    from cnnzoo.train.distributed import init_distributed
    from cnnzoo.train.engine import backend_settings
    from cnnzoo.train.run import build_run

    cfg = build_config("resnet56", "digits", epochs=30, **TINY)
    dist, device = init_distributed(cfg)
    with backend_settings(cfg, device):
        run = build_run(cfg, dist, device, tmp_path / "r", log=lambda *a: None)
    est = estimate.Estimate(
        step_seconds=20.0, eval_batch_seconds=1.0, steps=90, eval_batches=36, epochs=30, device="cpu"
    )
    line = estimate.estimate_line(run, est)
    assert line.startswith("estimate: about 31 min for 30 epochs on cpu")
    assert "--epochs 3 (about" in line and "a smaller net (resnet20)" in line and "\n" not in line
    assert "long for a CPU" not in estimate.estimate_line(run, estimate.Estimate(0.01, 0.01, 90, 36, 30, "cpu"))


def test_a_log_gets_progress_lines_with_an_eta(tmp_path, capsys, monkeypatch):
    """stdout is no terminal under pytest: the loop prints a progress line inside the epoch instead of a bar."""
    from cnnzoo.train import progress

    monkeypatch.setattr(progress, "PROGRESS_SECONDS", 0.0)
    assert main(["train", "resnet20", "--data", "digits", "--epochs", "1", "--out", str(tmp_path / "r"), *_tiny()]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch 1/1  batch")]
    assert [line.split()[3] for line in lines] == ["1/3", "2/3"]  # not after the last batch: the epoch line follows
    assert all("eta epoch 0:0" in line and "img/s" in line and "loss " in line for line in lines), lines


def _tiny() -> list[str]:
    return ["--subset", "96", "--val-size", "48", "--batch-size", "32", "--eval-batch-size", "64", "--device", "cpu"]


# --- starting weights of another channel count ---------------------------------------------------------------------


@pytest.mark.parametrize(("have", "want"), [(1, 3), (3, 1)])
def test_the_first_convolution_is_adapted_to_the_data_channels(have, want):
    """timm's rule: a grey image gives the same first-layer response through the adapted kernels."""
    from cnnzoo.models import create_model
    from cnnzoo.train.finetune import adapt_first_conv

    source, target = create_model("resnet20", in_channels=have), create_model("resnet20", in_channels=want)
    state = {k: v.clone() for k, v in source.state_dict().items()}
    note = adapt_first_conv(target, state, source="runs/demo")
    assert note.startswith(f"runs/demo: the weights were trained on {have}-channel images and the data has {want}")
    assert "\n" not in note
    target.load_state_dict(state)
    grey = torch.rand(2, 1, 32, 32)
    torch.testing.assert_close(target.conv1(grey.expand(-1, want, -1, -1)), source.conv1(grey.expand(-1, have, -1, -1)))
    assert adapt_first_conv(source, state | {"conv1.weight": source.conv1.weight}, source="x") is None  # agree


def test_channels_that_cannot_be_adapted_are_refused():
    from cnnzoo.models import create_model
    from cnnzoo.train.finetune import adapt_first_conv

    state = {"conv1.weight": torch.zeros(16, 2, 3, 3)}
    with pytest.raises(
        CnnzooError, match=r"^w.pt: the weights take 2-channel images, the data has 3: .*--in-channels 2$"
    ):
        adapt_first_conv(create_model("resnet20", in_channels=3), state, source="w.pt")


def test_fine_tuning_a_grey_run_on_colour_says_so(tiny_run, tmp_path, capsys):
    run_dir, _ = tiny_run  # resnet20 trained on digits: 1 channel
    out = tmp_path / "colour"
    args = ["train", "resnet20", "--weights", str(run_dir), "--in-channels", "3", "--epochs", "1", "--out", str(out)]
    assert main([*args, *_tiny()]) == 0
    said = [line for line in capsys.readouterr().out.splitlines() if "-channel images" in line]
    assert len(said) == 1 and "the data has 3" in said[0] and "(conv1) is adapted" in said[0], said
    assert "in_channels = 3" in (out / "config.toml").read_text()


# --- several runs on one chart -------------------------------------------------------------------------------------


def _fake_run(path, model: str, epochs: int = 4, *, label: str | None = None):
    """A run directory as far as `cnnzoo curves` reads one: marker, config.toml, metrics.jsonl."""
    path.mkdir(parents=True)
    (path / "cnnzoo-run.json").write_text(json.dumps({"cnnzoo_run": 1, "id": path.name}))
    (path / "config.toml").write_text(
        f'model = "{model}"\ndata = "digits"\n' + (f'label = "{label}"\n' if label else "")
    )
    lines = [
        {
            "epoch": e,
            "step": 3 * e,
            "train_loss": 2.0 / e,
            "train_top1": 0.2 * e,
            "val_loss": 2.1 / e,
            "val_top1": 0.2 * e,
        }
        for e in range(1, epochs + 1)
    ]
    lines[1]["val_loss"] = lines[1]["val_top1"] = None  # an epoch --eval-every skipped
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return path


def test_curves_draws_every_run_on_one_png(tmp_path, capsys):
    from PIL import Image

    from cnnzoo.train.curves import plot_runs

    a = _fake_run(tmp_path / "r20", "resnet20")
    b = _fake_run(tmp_path / "p20", "plain20", epochs=3, label="plain, lr 0.1")
    out = tmp_path / "both.png"
    assert main(["curves", str(a), str(b), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert Image.open(out).format == "PNG" and list(tmp_path.glob("*.png")) == [out]
    fig = plot_runs([a, b], tmp_path / "again.png", x="step")
    loss_ax, acc_ax = fig.axes
    assert [t.get_text() for t in loss_ax.get_legend().get_texts()] == ["resnet20 · r20", "plain20 · plain, lr 0.1"]
    # Two curves per run per panel (training, validation), each run in one colour, x in steps.
    assert len(loss_ax.get_lines()) == len(acc_ax.get_lines()) == 4
    colours = (
        {line.get_color() for line in loss_ax.get_lines()[:2]},
        {line.get_color() for line in loss_ax.get_lines()[2:]},
    )
    assert len(colours[0]) == len(colours[1]) == 1 and colours[0] != colours[1]
    assert list(acc_ax.get_lines()[1].get_xdata()) == [3, 9, 12]  # the skipped epoch is left out, not drawn as 0
    assert loss_ax.get_xlabel() == "step"


def test_curves_refuses_what_is_not_a_run(tmp_path, capsys):
    a = _fake_run(tmp_path / "r20", "resnet20")
    (tmp_path / "notes").mkdir()
    assert main(["curves", str(a), str(tmp_path / "notes"), "--out", str(tmp_path / "c.png")]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {tmp_path / 'notes'}: not a cnnzoo run directory (no cnnzoo-run.json)\n"
    assert not (tmp_path / "c.png").exists()
    assert main(["curves", str(a), "--out", str(tmp_path / "c.pdf")]) == 2


# --- show: where it writes, the cam grid ---------------------------------------------------------------------------


def test_show_writes_into_the_current_folder_named_after_its_subjects(tmp_path, monkeypatch):
    from cnnzoo.analysis.show import default_out

    runs = tmp_path / "runs"
    (runs / "r20").mkdir(parents=True)
    (runs / "p20").mkdir()
    monkeypatch.chdir(tmp_path)
    assert str(default_out("filters", runs / "r20")) == str(default_out("filters", "runs/r20/")) == "filters-r20.png"
    assert str(default_out("filters", "resnet20")) == "filters-resnet20.png"  # a model name
    assert str(default_out("cam", runs / "r20", runs / "p20")) == "cam-r20-vs-p20.png"
    assert str(default_out("features", runs / "r20", image="photos/seven.png")) == "features-r20-seven.png"


def test_the_cam_grid_shows_the_inputs_with_file_and_true_class(tmp_path):
    import numpy as np

    from cnnzoo.analysis import show

    images, cam = np.random.rand(2, 32, 32, 3), np.random.rand(2, 32, 32)
    row = {"images": images, "cam": cam, "titles": ["cat 90%", "dog 60%"]}
    rows = [dict(row, label="resnet20\na"), dict(row, label="plain20\nb")]
    captions = [show._caption(p, ["cat", "dog"]) for p in ("data/test/cat/1.png", "seven.png")]
    assert captions == ["1.png\ntrue class: cat", "seven.png"]
    path = show.plot_cams(rows, tmp_path / "cam.png", title="Grad-CAM " + "x" * 120, captions=captions)
    assert path.stat().st_size > 0
    # One column: the title is wrapped to the figure's width instead of running off both edges.
    title = show.fit_title("Grad-CAM for the predicted class (panel title: class and probability)", 3.6, 10)
    assert max(len(line) for line in title.splitlines()) <= 45 and "\n" in title


# --- tables and recipes --------------------------------------------------------------------------------------------


def test_summary_lists_a_shared_relu_where_each_call_runs():
    """A bottleneck's one ReLU runs after bn1, bn2 and the addition: three rows, each with its own shape."""
    from cnnzoo import create_model
    from cnnzoo.analysis.profile import count_macs, layer_summary

    with torch.device("meta"):
        model = create_model("resnet50")
        rows, params, macs = layer_summary(model, (3, 224, 224))
    names = [r.name for r in rows]
    block = names[names.index("layer1.0.conv1") : names.index("layer1.1.conv1")]
    assert block == [
        "layer1.0.conv1",
        "layer1.0.bn1",
        "layer1.0.relu (1/3, shared)",
        "layer1.0.conv2",
        "layer1.0.bn2",
        "layer1.0.relu (2/3, shared)",
        "layer1.0.conv3",
        "layer1.0.bn3",
        "layer1.0.downsample.0",
        "layer1.0.downsample.1",
        "layer1.0.relu (3/3, shared)",
    ]
    shape = {r.name: r.output_shape for r in rows}
    assert shape["layer1.0.relu (1/3, shared)"] == (1, 64, 56, 56)
    assert shape["layer1.0.relu (3/3, shared)"] == (1, 256, 56, 56)
    assert sum(r.params for r in rows) == params and sum(r.macs for r in rows) == macs
    with torch.device("meta"):
        assert macs == count_macs(model, (3, 224, 224))


def test_paper_recipes_state_their_precision_and_schedule():
    from cnnzoo.train.config import list_recipes

    recipes = list_recipes()
    for name in ("alexnet-paper", "vgg-paper", "googlenet-paper", "resnet-imagenet-paper"):
        assert "bf16 autocast on CUDA" in recipes[name], name
    assert (
        "at epochs 30 and 60 of 90" in recipes["alexnet-paper"]
        and "three times (a step" not in recipes["alexnet-paper"]
    )
    assert "no S=384 pre-training" in recipes["vgg-paper"]
    assert "biases not weight-decayed" in recipes["googlenet-paper"]


def test_train_help_shows_each_default_once():
    import contextlib
    import io

    text = io.StringIO()
    with contextlib.redirect_stdout(text), pytest.raises(SystemExit):
        main(["train", "--help"])
    flat = " ".join(text.getvalue().split())
    assert "(default: None)" not in flat and "(default: [])" not in flat
    assert "input channels (default: the dataset's) --" in flat  # once, not followed by "(default: None)"
    assert "--label" in flat and "--lr FLOAT peak learning rate (default: 0.1)" in flat


def test_save_example_writes_a_test_image_and_refuses_an_unknown_class(tmp_path, capsys):
    from PIL import Image

    assert main(["data", "digits", "--example", "7", "--out", str(tmp_path / "seven.png")]) == 0
    with Image.open(tmp_path / "seven.png") as image:
        assert (image.mode, image.size) == ("L", (32, 32))
    capsys.readouterr()
    assert main(["data", "digits", "--example", "seven", "--out", str(tmp_path / "x.png")]) == 2
    assert capsys.readouterr().err.startswith("error: 'seven' is not a class of digits (0, 1, 2")
