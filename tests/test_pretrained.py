"""Starting from pretrained weights (``--weights``, ``create_model(weights=...)``), offline: torchvision's cache is a
temporary folder holding randomly initialised torchvision state_dicts under the exact file names torchvision expects,
and any download fails the test."""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from urllib.parse import urlparse

import pytest
import torch
import torchvision
from PIL import Image

import cnnzoo.models.weights
from cnnzoo.cli import main
from cnnzoo.data import DataError, load_data
from cnnzoo.errors import CnnzooError
from cnnzoo.models import create_model
from cnnzoo.models.weights import classifier_layers, sha256
from cnnzoo.train import finetune
from cnnzoo.train.config import build_config
from cnnzoo.train.engine import make_optimizer, set_lr, step_context, train_step
from cnnzoo.train.schedule import lr_at
from test_augment import make_folder

LOAD_FROM_URL = torch.hub.load_state_dict_from_url  # torchvision's Weights.get_state_dict calls this


def _no_network(*args, **kwargs):
    raise AssertionError("the network was touched")


@pytest.fixture
def hub(tmp_path, monkeypatch) -> Path:
    """A private $TORCH_HOME whose hub/checkpoints folder starts empty; downloading fails the test."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # a set_dir() elsewhere would win over TORCH_HOME
    monkeypatch.setattr(torch.hub, "download_url_to_file", _no_network)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", _no_network)
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", _no_network)
    # The files planted here are random weights under torchvision's names, so their SHA-256 cannot start with the
    # name's digits: the name-hash check is off here and has a test of its own (test_hostile2).
    monkeypatch.setattr(cnnzoo.models.weights, "_check_hub_hash", lambda path, digest: None)
    folder = tmp_path / "torch" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    return folder


def _cache(hub: Path, model: str, **kwargs) -> tuple[dict[str, torch.Tensor], Path]:
    """A randomly initialised torchvision ``model``'s state_dict saved where torchvision looks for its DEFAULT file."""
    weights = torchvision.models.get_model_weights(model).DEFAULT
    state = torchvision.models.get_model(model, weights=None, **kwargs).state_dict()
    path = hub / os.path.basename(urlparse(weights.url).path)
    torch.save(state, path)
    return state, path


def test_torchvision_name_loads_exactly_the_cached_tensors(hub):
    state, _ = _cache(hub, "resnet18")
    for name in ("IMAGENET1K_V1", "DEFAULT", "ResNet18_Weights.IMAGENET1K_V1"):
        model = create_model("resnet18", weights=name)
        own = model.state_dict()
        assert set(own) == set(state)
        assert all(torch.equal(own[k], v) for k, v in state.items()), name


def test_missing_file_is_one_line_naming_file_and_folder(hub):
    with pytest.raises(CnnzooError) as e:
        create_model("resnet18", weights="IMAGENET1K_V1")
    message = str(e.value)
    assert "\n" not in message
    assert "resnet18-f37072fd.pth" in message and str(hub) in message and "--download" in message


def test_download_goes_through_torchvision_into_the_cache(hub, monkeypatch):
    """With download=True (--download) a missing file is fetched by torch.hub's code, hash-checked against the name."""
    state = torchvision.models.resnet18().state_dict()
    calls = []

    def fake_download(url, dst, hash_prefix=None, progress=True):
        calls.append((url, hash_prefix))
        torch.save(state, dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", LOAD_FROM_URL)
    model = create_model("resnet18", weights="IMAGENET1K_V1", download=True)
    assert calls == [("https://download.pytorch.org/models/resnet18-f37072fd.pth", "f37072fd")]
    assert (hub / "resnet18-f37072fd.pth").is_file()
    assert torch.equal(model.state_dict()["layer3.1.conv2.weight"], state["layer3.1.conv2.weight"])


def test_unknown_names_and_models_are_one_line_errors(hub):
    for model, spec, expect in [
        ("resnet18", "IMAGENET1K_V9", "IMAGENET1K_V1"),
        ("resnet18", "ResNet50_Weights.IMAGENET1K_V2", "not a weights name of resnet18"),
        ("resnet20", "DEFAULT", "torchvision has no weights"),
        ("resnet18", "missing/weights.pth", "no such weights file"),
    ]:
        with pytest.raises(CnnzooError, match=expect):
            create_model(model, weights=spec)


def test_new_class_count_replaces_the_classifier_and_says_so(hub):
    state, _ = _cache(hub, "resnet18")
    with pytest.warns(UserWarning, match=r"classifier fc replaced and freshly initialised \(1000 -> 7 classes\)"):
        model = create_model("resnet18", weights="DEFAULT", num_classes=7)
    own = model.state_dict()
    assert own["fc.weight"].shape == (7, 512)
    assert all(torch.equal(own[k], v) for k, v in state.items() if not k.startswith("fc."))


def test_any_other_mismatch_lists_the_keys(tmp_path):
    state = torchvision.models.resnet18().state_dict()
    state["extra.weight"] = torch.zeros(3)
    del state["layer2.0.conv1.weight"]
    state["layer1.0.conv2.weight"] = torch.zeros(64, 64, 1, 1)
    path = tmp_path / "odd.pth"
    torch.save({"state_dict": state}, path)
    with pytest.raises(CnnzooError) as e:
        create_model("resnet18", weights=str(path))
    message = str(e.value)
    for key in ("layer2.0.conv1.weight", "extra.weight", "layer1.0.conv2.weight (64, 64, 1, 1) vs (64, 64, 3, 3)"):
        assert key in message


def test_state_dict_file_with_ddp_prefix_loads(tmp_path):
    state = torchvision.models.resnet18(num_classes=5).state_dict()
    path = tmp_path / "r18.pt"
    torch.save({f"module.{k}": v for k, v in state.items()}, path)
    model = create_model("resnet18", weights=str(path))  # the class count is the file's
    own = model.state_dict()
    assert own["fc.weight"].shape == (5, 512)
    assert all(torch.equal(own[k], v) for k, v in state.items())


def test_safetensors_file_loads(tmp_path):
    safetensors = pytest.importorskip("safetensors.torch")  # the optional extra: pip install cnnzoo[safetensors]
    state = torchvision.models.resnet18().state_dict()
    path = tmp_path / "r18.safetensors"
    safetensors.save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    model = create_model("resnet18", weights=str(path))
    assert torch.equal(
        model.state_dict()["layer4.0.downsample.1.running_var"], state["layer4.0.downsample.1.running_var"]
    )
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(CnnzooError, match="not a readable safetensors file"):
        create_model("resnet18", weights=str(path))


def test_classifier_layers_of_each_family():
    assert classifier_layers(create_model("alexnet", num_classes=3)) == ["classifier.6"]
    assert classifier_layers(create_model("resnet20", num_classes=3)) == ["fc"]
    assert classifier_layers(create_model("googlenet_cifar", num_classes=3, aux_logits=True)) == [
        "aux1.fc2",
        "aux2.fc2",
        "fc",
    ]


def test_googlenet_weights_as_torchvision_builds_them(hub):
    """torchvision's GoogLeNet weights come with aux heads and need transform_input=True: same outputs as
    torchvision's own GoogLeNet holding the same tensors; aux_logits=False drops the aux heads."""
    _cache(hub, "googlenet", aux_logits=True, init_weights=False)
    ours = create_model("googlenet", weights="DEFAULT").eval()
    assert ours.transform_input
    theirs = torchvision.models.googlenet(weights=None, aux_logits=True, transform_input=True, init_weights=False)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs.eval()(x))
    with pytest.warns(UserWarning, match="auxiliary classifiers aux1, aux2 dropped"):
        plain = create_model("googlenet", weights="DEFAULT", aux_logits=False)
    assert plain.aux1 is None and not any(k.startswith("aux") for k in plain.state_dict())


# --- fine-tuning ---------------------------------------------------------------------------------------------------


def _trained_steps(model, cfg, steps=3, size=32):
    """``steps`` training steps of ``model`` (in train mode) as the trainer makes them; returns the optimizer."""
    optimizer = make_optimizer(model, cfg, torch.device("cpu"))
    ctx = step_context(cfg, torch.device("cpu"))
    model.train()
    g = torch.Generator().manual_seed(0)
    for step in range(steps):
        set_lr(optimizer, lr_at(step, cfg, steps))
        images = torch.randn(8, 3, size, size, generator=g)
        train_step(model, optimizer, images, torch.randint(0, 10, (8,), generator=g), ctx)
    return optimizer


def test_freeze_backbone_trains_only_the_classifier_and_keeps_bn_statistics(hub):
    _cache(hub, "resnet18")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = create_model("resnet18", weights="DEFAULT", num_classes=10)
    cfg = build_config("resnet18", "digits", freeze="backbone", lr=0.5, weight_decay=0.01, channels_last=False)
    frozen = finetune.freeze(model, cfg)
    assert "fc" not in frozen and "conv1" in frozen and "layer4.1.bn2" in frozen
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = _trained_steps(model, cfg)
    after = model.state_dict()
    assert sum(len(g["params"]) for g in optimizer.param_groups) == 2  # fc.weight, fc.bias
    for k, v in before.items():
        if k.startswith("fc."):
            assert not torch.equal(after[k], v), k
        else:  # weights, BN scale/shift, running statistics and their counters
            assert torch.equal(after[k], v), k
    assert not model.bn1.training and model.fc.training  # frozen BN stays in eval mode under model.train()


def test_freeze_until_a_stage(hub):
    model = create_model("resnet18", num_classes=10)
    cfg = build_config("resnet18", "digits", freeze_until="layer2", channels_last=False)
    frozen = finetune.freeze(model, cfg)
    assert {"conv1", "bn1", "layer1.0.conv1", "layer2.1.bn2", "layer2.0.downsample.0"} <= set(frozen)
    assert not any(n.startswith(("layer3", "layer4", "fc")) for n in frozen)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _trained_steps(model, cfg, steps=2)
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items() if k.startswith(("conv1", "layer1", "layer2")))
    assert not torch.equal(after["layer3.0.conv1.weight"], before["layer3.0.conv1.weight"])
    bad = build_config("resnet18", "digits", freeze_until="layer9")
    with pytest.raises(CnnzooError, match="no layer of that name"):
        finetune.freeze(create_model("resnet18"), bad)


def test_backbone_lr_scale_gives_the_expected_per_group_lrs():
    model = create_model("resnet18", num_classes=10)
    cfg = build_config("resnet18", "digits", lr=0.2, backbone_lr_scale=0.1, warmup_steps=4, epochs=2)
    optimizer = make_optimizer(model, cfg, torch.device("cpu"))
    fc = {id(model.fc.weight), id(model.fc.bias)}
    for step in (0, 3, 10, 19):
        lr = lr_at(step, cfg, 10)
        set_lr(optimizer, lr)
        for group in optimizer.param_groups:
            head = {id(p) for p in group["params"]} <= fc
            assert math.isclose(group["lr"], lr if head else 0.1 * lr), (step, group["lr_scale"])
    head_groups = [g for g in optimizer.param_groups if g["lr_scale"] == 1.0]
    assert {id(p) for g in head_groups for p in g["params"]} == fc
    no_decay = [g for g in optimizer.param_groups if g["weight_decay"] == 0.0]
    assert any(id(model.fc.bias) in {id(p) for p in g["params"]} for g in no_decay)


# --- predict and runs ----------------------------------------------------------------------------------------------


def test_predict_without_a_run_names_the_weights_categories(hub, tmp_path, capsys):
    state, _ = _cache(hub, "resnet18")
    image = tmp_path / "photo.png"
    pixels = torch.randint(0, 256, (90, 120, 3), dtype=torch.uint8)
    Image.fromarray(pixels.numpy()).save(image)
    assert main(["predict", "--model", "resnet18", "--weights", "IMAGENET1K_V1", str(image), "--top-k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    reference = torchvision.models.resnet18()
    reference.load_state_dict(state)
    x = weights.transforms()(pixels.permute(2, 0, 1))[None]  # PNG is lossless: the pixels written
    with torch.no_grad():
        top = reference.eval()(x).softmax(1).topk(3)
    names = [weights.meta["categories"][i] for i in top.indices[0].tolist()]
    assert lines[0] == str(image)
    assert [line.split("%", 1)[1].strip() for line in lines[1:]] == names


@pytest.mark.slow  # two short runs and an eval of resnet18: ~25 s of CPU
def test_finetuned_run_records_its_start_evaluates_and_resumes(hub, tmp_path, capsys):
    """A fine-tuning run from torchvision weights: preprocessing and provenance stored; stopped and resumed with the
    weights file gone (the run directory is all a resume needs); `cnnzoo eval` reproduces the report."""
    _, path = _cache(hub, "resnet18")
    digest = sha256(path)
    out = tmp_path / "run"
    flags = "--image-size 32 --subset 64 --val-size 32 --batch-size 32 --epochs 2 --lr 0.05 --quiet"
    finetuning = "--weights IMAGENET1K_V1 --freeze-until layer3 --backbone-lr-scale 0.1"
    args = ["train", "resnet18", "--data", "digits", *flags.split(), *finetuning.split(), "--out", str(out)]
    main([*args, "--stop-after", "3"])  # interrupted mid-way through epoch 2
    assert (out / "last.pt").is_file() and not (out / "report.json").exists()
    path.unlink()
    assert main(["train", "--resume", str(out), "--quiet"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["start_weights"] == {"source": "ResNet18_Weights.IMAGENET1K_V1", "sha256": digest}
    config = (out / "config.toml").read_text()
    assert f'weights_sha256 = "{digest}"' in config and "mean = [0.485, 0.456, 0.406]" in config
    best = torch.load(out / "best.pt", weights_only=True)
    assert best["meta"]["mean"] == [0.485, 0.456, 0.406] and best["meta"]["in_channels"] == 3
    capsys.readouterr()
    assert main(["eval", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert math.isclose(result["top1"], report["test"]["top1"])
    image = tmp_path / "digit.png"
    Image.fromarray(torch.randint(0, 256, (40, 40, 3), dtype=torch.uint8).numpy()).save(image)
    assert main(["predict", str(out), str(image), "--top-k", "2"]) == 0
    top = [line.split("%", 1)[1].strip() for line in capsys.readouterr().out.splitlines()[1:]]
    assert len(top) == 2 and set(top) <= set(report["classes"])
    chained = create_model("resnet18", weights=str(out))  # a run directory as the start of another model
    assert chained.fc.out_features == 10 and torch.equal(chained.state_dict()["fc.weight"], best["model"]["fc.weight"])


# --- torchvision reference augmentations (image folders) ------------------------------------------------------------


def test_auto_augment_and_random_erase_on_a_streamed_folder(tmp_path):
    root = make_folder(tmp_path / "big", size=(96, 80))  # over 64 px: streamed, augmented per sample
    kw = dict(image_size=32, batch_size=4, val_size=0, num_workers=0)
    b = load_data(str(root), auto_augment="trivialaugment", random_erase=1.0, **kw)
    steps = b.train.dataset.transform.transforms[1:]
    assert [type(t).__name__ for t in steps] == ["TrivialAugmentWide", "RandomErasing"]
    x, _ = next(b.train.epoch(0))
    again, _ = next(load_data(str(root), auto_augment="trivialaugment", random_erase=1.0, **kw).train.epoch(0))
    assert torch.equal(x, again)  # a pure function of (seed, epoch, sample), as every streamed augmentation
    # Erased with the mean colour (the reference erases the normalised image with 0): exactly 0 after normalising.
    assert all((image.abs().amax(0) < 0.01).sum() >= 0.02 * 32 * 32 for image in x)  # 0.5 / 255 / std: rounding
    plain, _ = next(load_data(str(root), **kw).train.epoch(0))
    assert (plain.abs().amax(1) < 0.01).sum() < 10  # random pixels hardly ever hit the mean colour exactly
    with pytest.raises(DataError, match="apply to image folders streamed from disk"):
        load_data("digits", random_erase=0.5, batch_size=4)
    with pytest.raises(DataError, match="not after --augment resnet"):
        load_data(str(root), augment="resnet", auto_augment="randaugment", **kw)


def test_show_filters_of_pretrained_weights_are_those_weights(hub, tmp_path, capsys):
    # `cnnzoo show filters MODEL --weights NAME` draws the loaded kernels, not a fresh initialisation's.
    from cnnzoo.analysis import show
    from cnnzoo.cli import main

    state, _ = _cache(hub, "resnet18")
    model, meta = show.load_subject("resnet18", weights="IMAGENET1K_V1")
    assert torch.equal(show.first_conv(model).weight, state["conv1.weight"]) and "IMAGENET1K_V1" in meta["label"]
    out = tmp_path / "filters.png"
    assert main(["show", "filters", "resnet18", "--weights", "IMAGENET1K_V1", "--out", str(out)]) == 0
    assert out.stat().st_size > 0 and str(out) in capsys.readouterr().out
