"""The run's figures, inspected through matplotlib's Figure API: titles, ticks, labels, marks."""

from __future__ import annotations

from types import SimpleNamespace

from cnnzoo.train.plots import confusion_figure, curves_figure, plot_confusion, plot_curves, training_objective

CIFAR = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _history(n: int = 3) -> list[dict]:
    val = [0.30, 0.55, 0.52, 0.50, 0.49][:n]
    return [
        {
            "epoch": e + 1,
            "train_loss": 2.0 / (e + 1),
            "val_loss": 1.8 / (e + 1),
            "train_top1": 0.2 + 0.1 * e,
            "val_top1": v,
        }
        for e, v in enumerate(val)
    ]


def test_curves_title_ticks_and_best_epoch():
    fig = curves_figure(_history(3), model="resnet20", data="CIFAR-10 (JPEG q75)", run="r1")
    title = fig.get_suptitle()
    assert "resnet20" in title and "CIFAR-10 (JPEG q75)" in title and "r1" in title
    fig.canvas.draw()  # ticks are chosen at draw time
    for ax in fig.axes:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks  # 3 epochs: no 1.25, 1.5, ...
        best = [line for line in ax.get_lines() if "best epoch" in str(line.get_label())]
        assert len(best) == 1 and list(best[0].get_xdata()) == [2, 2]  # epoch 2 had the best validation top-1
    # The trainer's own choice wins (e.g. EMA weights chosen at another epoch).
    fig = curves_figure(_history(3), best_epoch=3)
    assert "best epoch (3)" in [line.get_label() for line in fig.axes[1].get_lines()]


def test_training_objective_labels_the_training_loss():
    plain = SimpleNamespace(label_smoothing=0.0, mixup=0.0, cutmix=0.0)
    assert training_objective(plain) == "cross-entropy"
    smoothed = training_objective(SimpleNamespace(label_smoothing=0.1, mixup=0.2, cutmix=1.0))
    assert smoothed == "cross-entropy, label smoothing 0.1, mixup/cutmix targets"
    loss_ax = curves_figure(_history(2), objective=smoothed).axes[0]
    labels = [line.get_label() for line in loss_ax.get_lines()]
    assert f"train ({smoothed})" in labels and "validation (cross-entropy)" in labels
    assert "cross-entropy" not in loss_ax.get_ylabel()  # the axis no longer claims one quantity for both curves
    plain_ax = curves_figure(_history(2)).axes[0]
    assert "train" in [line.get_label() for line in plain_ax.get_lines()]
    assert plain_ax.get_ylabel().startswith("cross-entropy")


def test_curves_without_validation_and_files(tmp_path):
    history = [{"epoch": 1, "train_loss": 1.0, "train_top1": 0.5, "val_loss": None, "val_top1": None}]
    fig = curves_figure(history, model="resnet20")
    assert not any("best epoch" in str(line.get_label()) for line in fig.axes[0].get_lines())
    plot_curves(history, tmp_path / "c.png")  # the old call, positional only, still works
    plot_confusion([[1, 0], [0, 1]], ["a", "b"], tmp_path / "m.png")
    assert (tmp_path / "c.png").stat().st_size > 0 and (tmp_path / "m.png").stat().st_size > 0


def _rotation(fig) -> float:
    return fig.axes[0].get_xticklabels()[0].get_rotation()


def test_confusion_labels_rotate_when_long():
    eye = [[int(i == j) for j in range(10)] for i in range(10)]
    fig = confusion_figure(eye, CIFAR, title="resnet20 on CIFAR-10")
    assert _rotation(fig) == 45 and fig.axes[0].get_xticklabels()[0].get_ha() == "right"
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == CIFAR
    assert _rotation(confusion_figure(eye, [str(d) for d in range(10)])) == 0  # digits fit under their cells
    many = [f"class{i}" for i in range(25)]
    assert _rotation(confusion_figure([[0] * 25 for _ in range(25)], many)) == 90
