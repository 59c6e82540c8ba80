"""Params, MACs (FlopCounterMode) and the per-layer summary; the `models`, `summary` and `data` commands."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnzoo.analysis.profile import count_macs, count_params, layer_summary, parse_input, profile_model
from cnnzoo.cli import main
from cnnzoo.errors import CnnzooError


def _tiny() -> nn.Module:
    # conv 3->8, 3x3, padding 1 on 3x8x8: 8*8 outputs per channel, each 3*3*3 MACs -> 8 * 64 * 27 = 13,824 MACs
    # linear 8*8*8=512 -> 10: 5,120 MACs.  Params: 8*27 + 8 = 224 and 512*10 + 10 = 5,130.
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(512, 10))


def test_tiny_net_params_and_macs_match_hand_counts():
    model = _tiny()
    assert count_params(model) == (224 + 5130, 224 + 5130)
    assert count_macs(model, (3, 8, 8)) == 13_824 + 5_120
    rows, params, macs = layer_summary(model, (3, 8, 8))
    assert [(r.name, r.output_shape, r.params, r.macs) for r in rows] == [
        ("0", (1, 8, 8, 8), 224, 13_824),
        ("1", (1, 8, 8, 8), 0, 0),
        ("2", (1, 512), 0, 0),
        ("3", (1, 10), 5130, 5120),
    ]
    assert (params, macs) == (5354, 18_944)


@pytest.mark.parametrize("name", ["resnet20", "googlenet", "alexnet_paper"])
def test_meta_device_counts_equal_real_counts(name):
    meta = profile_model(name, meta=True)
    real = profile_model(name, meta=False)
    assert (meta["params"], meta["macs"]) == (real["params"], real["macs"])


def test_known_figures():
    # He et al. 2016 section 4.2: ResNet-20 has 0.27M parameters; torchvision lists ResNet-50 at 4.09 GFLOPS
    # (its "GFLOPS" are multiply-adds) and AlexNet at 0.71.
    assert profile_model("resnet20")["params"] == 269_722
    assert round(profile_model("resnet50")["macs"] / 1e9, 2) == 4.09
    assert round(profile_model("alexnet")["macs"] / 1e9, 2) == 0.71


@pytest.mark.parametrize(
    ("name", "params", "aux"),
    [("resnet20", 269_722, 0), ("googlenet", 6_624_904, 6_379_984), ("googlenet_paper", 6_998_552, 6_379_728)],
)
def test_summary_rows_add_up_to_the_inference_network(name, params, aux):
    """GoogLeNet is 6,624,904 parameters at inference (torchvision's figure), its auxiliary heads apart."""
    from cnnzoo import create_model, get_model_info

    shape = get_model_info(name).input_size
    with torch.device("meta"):
        model = create_model(name)
        rows, total, macs = layer_summary(model, shape)
    assert sum(r.params for r in rows) == total == params
    assert count_params(model)[0] - total == aux
    assert sum(r.macs for r in rows) == macs == count_macs(model, shape)
    assert not any(r.name.startswith("aux") for r in rows)
    assert rows[-1].output_shape == (1, get_model_info(name).num_classes)
    prof = profile_model(name)
    assert (prof["params"], prof["aux_params"], prof["macs"]) == (params, aux, macs)


def test_parse_input():
    assert parse_input("3x224x224") == (3, 224, 224)
    for bad in ("224", "3x224", "ax2x2", "0x32x32"):
        with pytest.raises(CnnzooError, match="CxHxW"):
            parse_input(bad)


def test_cli_summary_and_models(capsys):
    assert main(["summary", "resnet20"]) == 0
    out = capsys.readouterr().out
    for column in ("layer", "output shape", "params", "MACs", "total", "269,722"):
        assert column in out
    assert main(["models", "--family", "alexnet"]) == 0
    out = capsys.readouterr().out
    assert "alexnet_paper" in out and "62,378,344" in out and "multiply-accumulates" in out
    assert "alexnet_cifar" not in out  # family alexnet_cifar
    assert main(["summary", "googlenet"]) == 0
    out = capsys.readouterr().out
    assert "6,624,904" in out and "+6,379,984" in out and "auxiliary" in out
    assert main(["summary", "resnet20", "--input", "banana"]) == 2
    assert "error: --input must look like CxHxW" in capsys.readouterr().err


def test_cli_data_shows_the_dataset(capsys, tmp_path):
    assert main(["data", "digits"]) == 0
    out = capsys.readouterr().out
    assert "10 classes" in out and "1,437 training" in out and "360 test" in out
    assert main(["data", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no such folder" in err and "Traceback" not in err
