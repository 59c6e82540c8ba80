"""Saved reference outputs (torchvision's "expect" tests): a seeded model on a seeded input must give the stored logits.

Every network that has no torchvision twin to be compared with (the ``*_paper`` and ``*_cifar`` nets, the CIFAR
ResNets and the plain twins) has a JSON file under ``tests/reference/``: for the model built with
``torch.manual_seed(0)`` and a ``torch.manual_seed(1)`` input, its outputs in training mode (batch statistics, seeded
dropout, auxiliary heads) and in eval mode, a digest of its state-dict keys and shapes, and sums of its weights. An
accidental change to a layer, its order, its initialisation or its forward fails here in seconds.

A deliberate change regenerates the files: ``CNNZOO_REGENERATE=1 pytest tests/test_models_reference.py``, and the
commit says why. A missing file fails (it is never written silently).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch

import cnnzoo

REFERENCE = Path(__file__).parent / "reference"
REGENERATE = os.environ.get("CNNZOO_REGENERATE") == "1"

# name -> (input (C, H, W), builder options), from the registry: every net for 32x32 inputs and every "_paper" net at
# its own input size, plus the plain ImageNet twins (no torchvision twin either) at 64x64. Nets of a thousand layers
# or more (resnet1202) run at 8x8 in training mode only, in a slow test of their own.
SMALL_OR_PAPER = [
    n for n in cnnzoo.list_models() if cnnzoo.get_model_info(n).input_size[1] <= 32 or n.endswith("_paper")
]
HEAVY = {n for n in SMALL_OR_PAPER if (cnnzoo.get_model_info(n).depth or 0) >= 1000}
CASES: dict[str, tuple[tuple[int, int, int], dict]] = {
    n: (cnnzoo.get_model_info(n).input_size, {}) for n in SMALL_OR_PAPER if n not in HEAVY
} | {n: ((3, 64, 64), {}) for n in cnnzoo.list_models(family="plain")}
# Options that change the network (a second file each, named "<name>-<key>-<value>").
OPTION_CASES: dict[str, tuple[str, tuple[int, int, int], dict]] = {
    "resnet20-shortcut-B": ("resnet20", (3, 32, 32), {"shortcut": "B"}),
    "resnet50-variant-v1": ("resnet50", (3, 64, 64), {"variant": "v1"}),
    "googlenet_cifar-aux_logits-True": ("googlenet_cifar", (3, 32, 32), {"aux_logits": True}),
}
ALL_CASES = {name: (name, *case) for name, case in CASES.items()} | OPTION_CASES


def _check(case: str, got: dict) -> None:
    path = REFERENCE / f"{case}.json"
    if REGENERATE:
        REFERENCE.mkdir(exist_ok=True)
        path.write_text(json.dumps(got, indent=1) + "\n")
    assert path.is_file(), f"no reference for {case}: run with CNNZOO_REGENERATE=1 and commit {path.name}"
    want = json.loads(path.read_text())
    assert got["state_dict_layout_sha256"] == want["state_dict_layout_sha256"], "state-dict names or shapes changed"
    assert got["weights_sum"] == pytest.approx(want["weights_sum"], rel=1e-6, abs=1e-6), "initialisation changed"
    assert got["weights_abs_sum"] == pytest.approx(want["weights_abs_sum"], rel=1e-6), "initialisation changed"
    assert got["outputs"].keys() == want["outputs"].keys()
    for mode, outs in want["outputs"].items():
        assert len(got["outputs"][mode]) == len(outs), mode
        for mine, ref in zip(got["outputs"][mode], outs, strict=True):
            ref = torch.tensor(ref)  # tolerance relative to the output's scale (untrained nets' logits vary widely)
            torch.testing.assert_close(torch.tensor(mine), ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))


def _outputs(model: torch.nn.Module, x: torch.Tensor, *, train: bool) -> list[list]:
    """The model's outputs (logits, then any auxiliary logits) in one mode, dropout seeded."""
    torch.manual_seed(2)
    with torch.no_grad():
        out = model.train(train)(x)
    out = out if isinstance(out, tuple) else (out,)
    assert all(torch.isfinite(o).all() for o in out)
    return [o.tolist() for o in out]


def _amplifies(name: str) -> bool:
    """Plain nets of 34 layers or more run the reference in float64: with no identity path to damp it, float32
    rounding grows through their depth until it depends on the torch release (plain56's logits moved by 7.7e-4 of
    the largest, plain110's by 15 %, between torch 2.14.1 and 2.15.0); in float64 it stays far below the tolerance."""
    info = cnnzoo.get_model_info(name)
    return info.arch == "plain" and (info.depth or 0) >= 34


def fingerprint(name: str, shape: tuple[int, int, int], options: dict, *, eval_mode: bool = True) -> dict:
    """What the reference file stores for one model (10 classes, a batch of 2)."""
    torch.manual_seed(0)
    model = cnnzoo.create_model(name, num_classes=10, **options)
    torch.manual_seed(1)
    x = torch.randn(2, *shape)
    if _amplifies(name):
        model, x = model.double(), x.double()
    outputs = {"train": _outputs(model, x, train=True)}
    if eval_mode:  # after the train pass: BN running statistics have taken one step from (0, 1)
        outputs["eval"] = _outputs(model, x, train=False)
    state = model.state_dict()
    layout = "\n".join(f"{k} {tuple(v.shape)}" for k, v in state.items())
    floats = [v.double() for v in state.values() if v.is_floating_point()]
    return {
        "model": name,
        "options": options,
        "input": list(shape),
        "state_dict_layout_sha256": hashlib.sha256(layout.encode()).hexdigest(),
        "weights_sum": sum(float(v.sum()) for v in floats),
        "weights_abs_sum": sum(float(v.abs().sum()) for v in floats),
        "outputs": outputs,
    }


@pytest.mark.parametrize("case", sorted(ALL_CASES))
def test_outputs_match_the_saved_reference(case):
    name, shape, options = ALL_CASES[case]
    _check(case, fingerprint(name, shape, options))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(HEAVY))
def test_thousand_layer_nets_match_the_saved_reference(name):
    """8x8, training mode only: with untrained BN statistics the eval-mode sum of hundreds of blocks overflows."""
    _check(name, fingerprint(name, (3, 8, 8), {}, eval_mode=False))


def test_every_paper_and_cifar_net_has_a_reference():
    """Every case has its file, and no file is left from a net that is gone."""
    files = {p.stem for p in REFERENCE.glob("*.json")}
    assert set(ALL_CASES) | HEAVY == files
    assert HEAVY and set(SMALL_OR_PAPER) <= set(CASES) | HEAVY
