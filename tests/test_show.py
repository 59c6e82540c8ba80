"""``cnnzoo show``: filters, feature maps, Grad-CAM and mistakes, checked against a model whose evidence is known.

The "corners" data: 16x16 noise images whose class is decided only by a bright 4x4 patch in one corner. A resnet20
trained on it (through ``cnnzoo.train``, once per module) must look at that corner: its Grad-CAM has to peak in the
patch's quadrant, which a flipped, transposed or misplaced map would not.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import cnnzoo
from cnnzoo.analysis import show
from cnnzoo.cli import main
from cnnzoo.models import create_model, get_model_info, list_models

pytest.importorskip("captum")  # the `show` extra; installed by the `dev` extra, so CI runs all of this

CORNERS = ("top-left", "top-right", "bottom-left", "bottom-right")  # class k: patch at row k // 2, column k % 2
SIZE, PATCH = 16, 4
PLANTED = 2  # test images filed under top-left whose patch is in the top-right corner: sure, confident mistakes


def corner_image(rng: np.random.Generator, corner: int) -> np.ndarray:
    """Dark-ish noise with a white PATCH x PATCH square in ``corner`` (uint8 HWC)."""
    img = rng.integers(0, 160, size=(SIZE, SIZE, 3), dtype=np.uint8)
    r, c = (corner // 2) * (SIZE - PATCH), (corner % 2) * (SIZE - PATCH)
    img[r : r + PATCH, c : c + PATCH] = 255
    return img


def quadrant(maps: np.ndarray) -> np.ndarray:
    """The quadrant (numbered as CORNERS) of each ``(N, H, W)`` map's maximum."""
    n, h, w = maps.shape
    rows, cols = np.unravel_index(maps.reshape(n, -1).argmax(1), (h, w))
    return (rows >= h // 2) * 2 + (cols >= w // 2)


@pytest.fixture(scope="module")
def corners(tmp_path_factory) -> dict:
    """The corners folder (48 train and 8 test images per class, plus the planted mistakes) and a resnet20 run on
    it: 40 SGD steps without augmentation (a flip would move the patch to another class's corner)."""
    root = tmp_path_factory.mktemp("corners")
    rng = np.random.default_rng(0)
    for split, n in (("train", 48), ("test", 8)):
        for k, name in enumerate(CORNERS):
            (root / "data" / split / name).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(corner_image(rng, k)).save(root / "data" / split / name / f"{i}.png")
    for i in range(PLANTED):
        Image.fromarray(corner_image(rng, 1)).save(root / "data" / "test" / "top-left" / f"planted-{i}.png")
    with pytest.MonkeyPatch.context() as mp:  # the function-scoped cache isolation of conftest is not active yet
        mp.setenv("CNNZOO_CACHE_DIR", str(root / "cache"))
        cnnzoo.train(
            "resnet20",
            data=str(root / "data"),
            out=root / "run",
            augment="none",
            iterations=40,
            batch_size=32,
            lr=0.05,
            schedule="constant",
            val_size=0,
            device="cpu",
            quiet=True,
        )
    return {"run": root / "run", "data": root / "data"}


@pytest.mark.slow  # uses the module's trained run (40 steps: about a minute of CPU time on the 2-core VM)
def test_grad_cam_peaks_in_the_corner_that_decides_the_class(corners):
    model, meta = show.load_subject(corners["run"])
    files = [p for k, name in enumerate(CORNERS) for p in sorted((corners["data"] / "test" / name).glob("[0-9]*.png"))]
    truth = np.repeat(np.arange(4), 8)
    corner_of = np.array([CORNERS.index(c) for c in meta["classes"]])  # class index (folders sorted) -> corner
    x = show.load_run_images(meta, files)
    r = show.grad_cam(model, x)  # the predicted class
    assert r["cam"].shape == (32, SIZE, SIZE) and r["layer"] == "layer3" and r["layer_size"] == (4, 4)
    assert (r["cam"] >= 0).all() and (r["cam"].reshape(32, -1).max(1) > 0).all()
    assert (r["target"] == r["probs"].argmax(1)).all()
    assert (corner_of[r["target"]] == truth).mean() >= 0.9  # the model learned the task...
    assert (quadrant(r["cam"]) == truth).mean() >= 0.8  # ...and looks where the evidence is
    # The check can fail: the same maps mirrored left-right point at the wrong corner.
    assert (quadrant(r["cam"][:, :, ::-1]) == truth).mean() <= 0.2
    # An explicit target class is used for every image.
    r3 = show.grad_cam(model, x[:8], target=1)
    assert (r3["target"] == 1).all() and r3["probs"].shape == (8, 4)


def first_run_conv(model: nn.Module, input_size: tuple[int, int, int]) -> nn.Conv2d:
    """The convolution the forward pass applies first (found by running it, not by module order)."""
    ran: list[nn.Conv2d] = []
    hooks = [
        m.register_forward_hook(lambda m, i, o: ran.append(m)) for m in model.modules() if isinstance(m, nn.Conv2d)
    ]
    with torch.no_grad():
        model.eval()(torch.zeros(1, *input_size))
    for h in hooks:
        h.remove()
    return ran[0]


# One model per family, the cheapest; test_every_family_is_covered keeps the table complete.
def _shallowest(family: str) -> str:
    """The family's shallowest net named ``<arch><depth>`` (resnet20, not the wider resnet18_cifar; ties: the first
    name): a cheap one to draw, from the registry, so a family added as one file is covered with no list to edit."""

    def key(name: str) -> tuple[bool, int, str]:
        info = get_model_info(name)
        return name != f"{info.arch}{info.depth}", info.depth or 0, name

    return min(list_models(family=family), key=key)


FAMILY_MODELS = {f: _shallowest(f) for f in sorted({get_model_info(n).family for n in list_models()})}


def test_every_family_is_covered():
    assert {get_model_info(n).family for n in list_models()} == set(FAMILY_MODELS)
    assert FAMILY_MODELS["resnet_cifar"] == "resnet20" and FAMILY_MODELS["vgg"] == "vgg11"  # the shallowest


@pytest.mark.parametrize("name", FAMILY_MODELS.values())
def test_filter_grid_holds_exactly_the_first_convs_kernels(name):
    model = create_model(name, num_classes=10)
    conv = first_run_conv(model, get_model_info(name).input_size)
    w = conv.weight.detach()
    images = show.filter_images(model)
    assert images.shape == (w.shape[0], w.shape[2], w.shape[3], 3)  # one RGB picture per kernel
    lo, hi = w.amin(dim=(1, 2, 3), keepdim=True), w.amax(dim=(1, 2, 3), keepdim=True)
    expected = ((w - lo) / (hi - lo)).permute(0, 2, 3, 1).numpy()  # each kernel scaled to its own range
    np.testing.assert_allclose(images, expected, atol=1e-6)
    assert images.reshape(len(images), -1).min(1).max() == 0 and images.reshape(len(images), -1).max(1).min() == 1
    # The tiled picture holds every kernel, in order, and nothing else.
    kh, kw, cols = w.shape[2], w.shape[3], 5
    mosaic = show.filter_mosaic(images, cols=cols)
    rows = -(-len(images) // cols)
    assert mosaic.shape == (rows * (kh + 1) - 1, cols * (kw + 1) - 1, 3)
    tiles = [
        mosaic[r * (kh + 1) : r * (kh + 1) + kh, c * (kw + 1) : c * (kw + 1) + kw]
        for r in range(rows)
        for c in range(cols)
    ][: len(images)]
    np.testing.assert_array_equal(np.stack(tiles), images)


def test_filters_of_a_one_channel_model_are_grey():
    model = create_model("resnet20", num_classes=10, in_channels=1)
    images = show.filter_images(model)
    w = model.conv1.weight.detach()
    assert images.shape == (16, 3, 3, 1)
    assert np.argmax(images[:, :, :, 0].reshape(16, -1), 1).tolist() == w.reshape(16, -1).argmax(1).tolist()


@pytest.mark.parametrize("name", ["alexnet_cifar", "vgg11_cifar", "googlenet", "resnet18", "resnet20"])
def test_features_and_grad_cam_run_on_every_family(name):
    model = create_model(name, num_classes=10).eval()
    cam_layer, stages = show.model_layers(model)
    x = torch.randn(2, 3, 32, 32)
    fmaps = show.feature_maps(model, x[:1], top=3)
    assert [s["stage"] for s in fmaps] == list(stages) and len(stages) >= 3
    for s in fmaps:
        c, h, w = s["shape"]
        assert s["maps"].shape == (min(3, c), h, w)
        means = s["maps"].mean(axis=(1, 2))
        assert (np.diff(means) <= 1e-6).all()  # the most active channels, most active first
    r = show.grad_cam(model, x)
    assert r["cam"].shape == (2, 32, 32) and r["layer"] == cam_layer and np.isfinite(r["cam"]).all()


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(["show", *map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line_error(rc: int, err: str, *needles: str) -> None:
    assert rc != 0
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err


@pytest.mark.slow  # uses the module's trained run (40 steps: about a minute of CPU time on the 2-core VM)
def test_every_command_writes_its_png(corners, tmp_path, capsys, monkeypatch):
    run, test = corners["run"], corners["data"] / "test"
    images = [test / "top-left" / "0.png", test / "bottom-right" / "0.png"]
    commands = {
        "filters-run.png": ["filters", run],
        "filters-model.png": ["filters", "alexnet", "--in-channels", "1"],
        "features.png": ["features", run, images[0], "--top", "4"],
        "cam.png": ["cam", run, run, *images],
        "cam-class.png": ["cam", run, *images, "--class", "top-right"],
        "mistakes.png": ["mistakes", run, "--count", "3", "--device", "cpu"],
    }
    for name, argv in commands.items():
        rc, out, err = run_cli(capsys, *argv, "--out", tmp_path / name)
        assert rc == 0, err
        assert out.strip() == str(tmp_path / name)
        with Image.open(tmp_path / name) as png:
            assert png.format == "PNG" and png.width > 200 and png.height > 200
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(commands)  # no temporary files left behind
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    rc, out, _ = run_cli(capsys, "filters", run)  # default: the current folder, never the run directory
    assert rc == 0 and out.strip() == f"filters-{run.name}.png" and (here / out.strip()).stat().st_size > 0
    assert not (run / "filters.png").exists()


@pytest.mark.slow  # uses the module's trained run (40 steps: about a minute of CPU time on the 2-core VM)
def test_mistakes_are_the_planted_ones_and_their_cams_point_at_the_patch(corners):
    m = show.find_mistakes(corners["run"], count=5, device="cpu")
    assert m["n_test"] == 4 * 8 + PLANTED and m["n_wrong"] >= PLANTED
    corner_of = np.array([CORNERS.index(c) for c in m["classes"]])
    planted = (corner_of[m["true"]] == 0) & (corner_of[m["pred"]] == 1)  # filed as top-left, patch at the top-right
    assert planted[:PLANTED].all(), (m["true"], m["pred"])  # the most confident mistakes
    assert (np.diff(m["confidence"]) <= 0).all() and (m["confidence"][:PLANTED] > 0.5).all()
    assert (quadrant(m["cam_pred"][:PLANTED]) == 1).all()  # the predicted class's evidence: the patch
    assert m["images"].shape == (len(m["true"]), SIZE, SIZE, 3) and 0 <= m["images"].min() <= m["images"].max() <= 1
    # The displayed image is the test image itself: its white patch sits in the top-right corner.
    assert (m["images"][0, :PATCH, -PATCH:] > 0.99).all()


@pytest.mark.slow  # uses the module's trained run (40 steps: about a minute of CPU time on the 2-core VM)
def test_errors_are_one_line(corners, tmp_path, capsys):
    run, image = corners["run"], corners["data"] / "test" / "top-left" / "0.png"
    broken = tmp_path / "broken.png"
    broken.write_text("not an image")
    missing = tmp_path / "no-such-run"
    cases = [
        (["filters", missing], "neither a run directory nor a model name"),
        (["filters", tmp_path], "no such checkpoint"),  # a folder that holds no run
        (["filters", "resnet20", "--out", tmp_path / "x.jpg"], "expected a .png"),
        (["filters", "resnet20", "--in-channels", "0"], "--in-channels must be >= 1"),
        (["features", missing, image], "no such run directory"),
        (["features", run, broken], str(broken)),
        (["features", run, tmp_path / "nope.png"], "no such file"),
        (["cam", missing, image], "no such run directory or image file"),
        (["cam", run, broken], str(broken)),
        (["cam", run, image, "--class", "centre"], "--class 'centre': not a class of"),
        (["cam", image, run], "expected a run directory first"),
        (["cam", run], "no image files"),
        (["mistakes", missing], "no such run directory"),
        (["mistakes", run, "--count", "0"], "--count must be >= 1"),
    ]
    for argv, needle in cases:
        rc, out, err = run_cli(capsys, *argv)
        assert_one_line_error(rc, err, needle)
        assert out == ""
    assert not (tmp_path / "x.jpg").exists()


@pytest.mark.slow  # uses the module's trained run (40 steps: about a minute of CPU time on the 2-core VM)
def test_missing_captum_is_one_line_naming_the_extra(corners, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "captum.attr", None)  # import captum.attr -> ImportError
    image = corners["data"] / "test" / "top-left" / "0.png"
    for argv in (["cam", corners["run"], image], ["mistakes", corners["run"]]):
        rc, _, err = run_cli(capsys, *argv)
        assert_one_line_error(rc, err, "pip install 'cnnzoo[show]'")
