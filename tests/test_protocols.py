"""The papers' test protocols (cnnzoo.train.protocols) and ``cnnzoo eval --protocol``."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torchvision.transforms.v2 import functional as TF

import cnnzoo
from cnnzoo.cli import main
from cnnzoo.data.augment import scaled
from cnnzoo.data.folders import decode_file
from cnnzoo.errors import CnnzooError
from cnnzoo.train.config import build_config
from cnnzoo.train.protocols import (
    VGG_SCALES,
    DenseHead,
    average_probs,
    dense_model,
    evaluate_files,
    multi_crop,
    split_files,
    ten_crop,
)
from test_augment import make_folder


def _image(h=40, w=48) -> torch.Tensor:
    return torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))


def test_ten_crop_is_five_crops_and_their_exact_mirrors():
    image = _image()
    views = ten_crop(32)(image)
    assert views.shape == (10, 3, 32, 32) and views.dtype == torch.uint8
    assert torch.equal(views[5:], views[:5].flip(-1))
    square = TF.center_crop(TF.resize(image, scaled(256, 32), antialias=True), scaled(256, 32))  # 37 x 37
    assert torch.equal(views[0], square[:, :32, :32]) and torch.equal(views[3], square[:, -32:, -32:])
    assert torch.equal(views[4], TF.center_crop(square, 32))


def test_multi_crop_is_googlenets_144_views():
    views = multi_crop(32)(_image(48, 40))  # portrait: top, centre, bottom squares
    assert views.shape == (144, 3, 32, 32)
    groups = views.view(4 * 3, 12, 3, 32, 32)
    assert torch.equal(groups[:, 6:], groups[:, :6].flip(-1))  # each square's 6 crops, then their mirrors


def test_views_are_averaged_as_probabilities_not_logits():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 4)).eval()
    views = torch.stack([ten_crop(32)(_image()), ten_crop(32)(_image(44, 40))])  # (2, 10, 3, 32, 32)
    normalise = lambda x: x.float() / 255  # noqa: E731
    with torch.no_grad():
        logits = torch.stack([model(normalise(views[:, v])) for v in range(10)])  # (10, 2, 4)
        got = average_probs(model, views, normalise)
    torch.testing.assert_close(got, logits.softmax(-1).mean(0))
    assert not torch.allclose(got, logits.mean(0).softmax(-1), atol=1e-4)


def test_multi_scale_on_a_resnet_is_the_mean_of_the_per_scale_predictions(tmp_path):
    root = make_folder(tmp_path / "f", size=(48, 40))
    files = sorted(str(p) for p in (root / "test").rglob("*.png"))
    labels = torch.tensor([0, 0, 1, 1])
    torch.manual_seed(0)
    model = cnnzoo.create_model("resnet20", num_classes=2).eval()
    assert dense_model(model, 32) is model  # global average pool + linear: already fully convolutional
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    got = evaluate_files(
        model,
        files,
        labels,
        "multi-scale",
        image_size=32,
        channels=3,
        mean=mean,
        std=std,
        num_classes=2,
        device=torch.device("cpu"),
        num_workers=0,
    )
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    nll, hits = 0.0, 0
    with torch.no_grad():
        for f, y in zip(files, labels.tolist(), strict=True):
            image = decode_file(f, 3)
            probs = []
            for q in (scaled(v, 32) for v in VGG_SCALES):  # shorter side 37, 55, 73: the whole image, and mirrored
                x = TF.resize(image, q, antialias=True)[None].float() / 255
                for view in (x, x.flip(-1)):
                    probs.append(model((view - m) / s).softmax(1)[0])
            p = torch.stack(probs).mean(0)
            nll -= p[y].log().item()
            hits += int(p.argmax().item() == y)
    assert got["n"] == 4 and got["top1"] == hits / 4
    assert got["loss"] == pytest.approx(nll / 4, rel=1e-5)


def test_vgg_style_classifier_becomes_a_dense_score_map_averaged():
    torch.manual_seed(0)
    model = cnnzoo.create_model("alexnet_cifar", num_classes=5).eval()  # features + pool to 4x4 + FC classifier
    dense = dense_model(model, 32)
    assert isinstance(dense, DenseHead) and dense.k == 4
    x = torch.randn(2, 3, 32, 32)  # features 4x4: one window, the plain forward
    with torch.no_grad():
        torch.testing.assert_close(dense(x), model(x), rtol=1e-4, atol=1e-5)
        big = torch.randn(1, 3, 48, 48)  # features 6x6: the FC classifier on each of the 3x3 windows, averaged
        f = model.features(big)
        windows = [model.classifier(f[:, :, i : i + 4, j : j + 4].flatten(1)) for i in range(3) for j in range(3)]
        torch.testing.assert_close(dense(big), torch.stack(windows).mean(0), rtol=1e-4, atol=1e-5)


def test_a_fixed_size_model_refuses_multi_scale():
    model = cnnzoo.create_model("googlenet_paper", num_classes=3, aux_logits=False).eval()
    with pytest.raises(CnnzooError, match="multi-scale needs a model that accepts any image size"):
        dense_model(model, 224)


@pytest.mark.slow  # trains a run and evaluates it 5 times with DataLoader workers: about 20 s on 2 idle cores
def test_cnnzoo_eval_protocols_on_a_streamed_run(tmp_path, capsys):
    root = make_folder(tmp_path / "big", size=(80, 72), per_class=6)  # over 64 px: a streamed folder
    run = tmp_path / "run"
    cnnzoo.train(
        "resnet20",
        data=str(root),
        out=str(run),
        epochs=1,
        batch_size=4,
        image_size=32,
        val_size=2,
        augment="resnet",
        device="cpu",
        quiet=True,
    )
    report = json.loads((run / "report.json").read_text())
    assert report["test"]["protocol"] == "center"
    for protocol in ("center", "ten-crop", "multi-crop", "multi-scale"):
        assert main(["eval", str(run), "--protocol", protocol, "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["protocol"] == protocol and out["n"] == 4 and 0 <= out["top1"] <= 1
    assert main(["eval", str(run), "--protocol", "ten-crop", "--split", "val"]) == 0
    assert "ten-crop protocol" in capsys.readouterr().out


def test_protocol_on_device_resident_data_is_refused_in_one_line():
    with pytest.raises(CnnzooError, match="--protocol applies to image folders streamed") as e:
        split_files(build_config("resnet20", "digits"), "test")
    assert "\n" not in str(e.value)
