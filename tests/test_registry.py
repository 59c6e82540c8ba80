"""Registry-wide tests: every registered model, built by name, behaves the same way at its supported inputs."""

from __future__ import annotations

import inspect
import re

import pytest
import torch

import cnnzoo
from cnnzoo.cli import main
from cnnzoo.errors import CnnzooError, InputShapeError

ALL = cnnzoo.list_models()
SMALL = [n for n in ALL if cnnzoo.get_model_info(n).input_size[1] <= 32]
# googlenet_cifar has no fixed-size layer and no pooling that can empty a map: every input size works.
BOUNDED = [n for n in SMALL if n != "googlenet_cifar"]
# A thousand layers or more (resnet1202): real forward/backward on 8x8 only, to stay fast on 2 cores.
HEAVY = {n for n in ALL if (cnnzoo.get_model_info(n).depth or 0) >= 1000}


EXACT = {"alexnet_paper", "alexnet_2tower_paper", "googlenet_paper"}  # fixed-size classifiers: 227 or 224 only


def _real_inputs(name: str) -> list[tuple[int, int, int]]:
    """Shapes for a real forward/backward, kept cheap for 2 CPU cores: 1x28x28 (MNIST-size, 1 channel) for the small
    nets, 3x64x64 for the ImageNet nets that accept it; the default shape of each is checked on the meta device."""
    c, h, w = cnnzoo.get_model_info(name).input_size
    if name in HEAVY:
        return [(1, 8, 8)]
    if h <= 32:
        return [(1, 28, 28)]
    if name in EXACT:
        return [(c, h, w)]
    # VGG and ResNet end in an adaptive pool: 32x32 reaches it at 1x1; the other ImageNet nets need 64x64.
    arch = cnnzoo.get_model_info(name).arch
    return [(c, 32, 32)] if arch.startswith(("vgg", "resnet", "plain")) else [(c, 64, 64)]


def test_registry_has_the_issue_names():
    names = (
        "alexnet vgg11 vgg13 vgg16 vgg19 vgg11_bn vgg13_bn vgg16_bn vgg19_bn googlenet resnet18 resnet34 resnet50 "
        "resnet101 resnet152 alexnet_paper googlenet_paper plain18 plain34 alexnet_cifar vgg11_cifar vgg13_cifar "
        "vgg16_cifar vgg19_cifar googlenet_cifar resnet18_cifar resnet34_cifar resnet50_cifar resnet20 resnet32 "
        "resnet44 resnet56 resnet110 resnet1202 plain20 plain32 plain44 plain56 plain110"
    )
    expected = names.split()
    assert sorted(expected) == sorted(set(expected))
    missing = set(expected) - set(ALL)
    assert not missing, f"not registered: {sorted(missing)}"


@pytest.mark.parametrize("name", ALL)
def test_builder_is_keyword_only_with_num_classes(name):
    params = inspect.signature(cnnzoo.get_model_info(name).builder).parameters
    assert "num_classes" in params and params["num_classes"].kind is inspect.Parameter.KEYWORD_ONLY
    assert all(p.kind in (p.KEYWORD_ONLY, p.VAR_KEYWORD) for p in params.values())


@pytest.mark.parametrize("name", ALL)
def test_default_input_size_on_meta_device(name):
    """Every model at its registered input size, in training and eval mode; shapes only, no memory or compute."""
    c, h, w = cnnzoo.get_model_info(name).input_size
    with torch.device("meta"):
        model = cnnzoo.create_model(name, num_classes=7, in_channels=c)
        if name not in HEAVY:  # 1202 layers of meta dispatch take ~10 s a pass: eval mode only
            out = model.train()(torch.empty(2, c, h, w))
            outputs = out if isinstance(out, tuple) else (out,)
            assert all(o.shape == (2, 7) for o in outputs), name
        assert model.eval()(torch.empty(2, c, h, w)).shape == (2, 7)


@pytest.mark.parametrize("name", ALL)
def test_forward_backward_shapes(name):
    for c, h, w in _real_inputs(name):
        torch.manual_seed(0)
        model = cnnzoo.create_model(name, num_classes=7, in_channels=c).train()
        x = torch.randn(2, c, h, w)
        out = model(x)
        logits = out[0] if isinstance(out, tuple) else out
        assert logits.shape == (2, 7), (name, (c, h, w))
        loss = sum(o.float().square().mean() for o in (out if isinstance(out, tuple) else (out,)))
        loss.backward()
        no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
        assert not no_grad, f"{name}: parameters without gradient: {no_grad[:5]}"
        bad = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
        assert not bad, f"{name}: non-finite gradients: {bad[:5]}"
        model.eval()
        with torch.no_grad():
            assert model(x).shape == (2, 7)  # eval: a plain tensor, auxiliary heads (if any) dropped


@pytest.mark.parametrize("name", ALL)
def test_wrong_channels_is_a_clear_error(name):
    c, h, w = cnnzoo.get_model_info(name).input_size
    with torch.device("meta"):  # the check runs before any arithmetic, so meta tensors suffice
        model = cnnzoo.create_model(name, num_classes=10).eval()
        with pytest.raises(InputShapeError, match=rf"{name} expects input of shape \(N, {c},"):
            model(torch.empty(1, c + 1, h, w))


@pytest.mark.parametrize("name", BOUNDED)
def test_too_small_input_is_a_clear_error(name):
    model = cnnzoo.create_model(name, num_classes=10).eval()
    with pytest.raises(InputShapeError, match="expects input of shape"):
        model(torch.randn(1, 3, 2, 2))


def test_plain_twins_have_no_shortcut():
    """The block contract's marker: plain nets' blocks (an architecture whose last word is "plain") have
    ``shortcut=None`` and no downsample; every other family's blocks are residual ("A" or "B")."""
    from cnnzoo.models._common import blocks

    for name in ALL:
        with torch.device("meta"):
            model = cnnzoo.create_model(name, num_classes=10)
        flags = [block.shortcut for _, block, _ in blocks(model)]
        if cnnzoo.get_model_info(name).arch.split("_")[-1] == "plain":  # plain18, plain_cifar, <prefix>_plain
            assert flags and all(f is None for f in flags), name
            assert not any(n.endswith("downsample") for n, _ in model.named_modules()), name
        else:
            assert all(f in ("A", "B") for f in flags), name


@pytest.mark.parametrize("name", [n for n in ALL if n not in HEAVY])
def test_blocks_follow_the_block_contract(name):
    """Each block's ``branch_out`` module runs once per forward and gives the block's output shape (the tensor
    added to the shortcut), and the block's first argument is a 4-d map (meta device: shapes only)."""
    from cnnzoo.models._common import blocks

    c, h, w = cnnzoo.get_model_info(name).input_size
    with torch.device("meta"):
        model = cnnzoo.create_model(name).train()
        found = blocks(model)
        if not found:
            return
        seen: dict[str, list] = {}  # block name -> [input dims, branch shape, output shape], in call order

        def record(n: str, value: object) -> None:
            seen.setdefault(n, []).append(value)

        hooks = []
        for n, block, end in found:
            hooks.append(block.register_forward_pre_hook(lambda m, a, n=n: record(n, a[0].dim())))
            hooks.append(end.register_forward_hook(lambda m, a, o, n=n: record(n, o.shape)))
            hooks.append(block.register_forward_hook(lambda m, a, o, n=n: record(n, o.shape)))
        model(torch.empty(2, c, h, w))
        for hk in hooks:
            hk.remove()
    for n, _, _ in found:
        ndim, branch, out = seen[n]
        assert ndim == 4 and branch == out, (name, n, seen[n])


def test_unknown_model_suggests_close_names(capsys):
    with pytest.raises(CnnzooError, match="did you mean .*resnet50"):
        cnnzoo.create_model("resnet5O")
    with pytest.raises(CnnzooError, match="resnet20: num_classes must be an integer >= 1, got 0"):
        cnnzoo.create_model("resnet20", num_classes=0)
    with pytest.raises(CnnzooError, match="unexpected keyword"):
        cnnzoo.create_model("resnet20", no_such_option=1)


def test_cli_bad_model_is_one_line_exit_2(capsys):
    assert main(["summary", "resnet5O"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown model 'resnet5O'") and "\n" not in err and "Traceback" not in err


def test_cli_wrong_input_shape_is_one_line_exit_2(capsys):
    assert main(["summary", "resnet20", "--input", "1x32x32"]) == 2
    err = capsys.readouterr().err.strip()
    assert "resnet20 expects input of shape (N, 3," in err and "\n" not in err


@pytest.mark.parametrize("bad", ["10", 2.5, True, 0, -3])
def test_sizes_must_be_positive_integers(bad):
    for key in ("num_classes", "in_channels"):
        with pytest.raises(CnnzooError, match=rf"^resnet20: {key} must be an integer >= 1, got "):
            cnnzoo.create_model("resnet20", **{key: bad})


def test_builders_own_defaults_apply():
    """create_model passes num_classes / in_channels only when given: the CIFAR nets default to 10 classes."""
    with torch.device("meta"):
        assert cnnzoo.create_model("resnet20").fc.out_features == 10
        assert cnnzoo.create_model("resnet18").fc.out_features == 1000
        assert cnnzoo.create_model("resnet20", in_channels=1).conv1.in_channels == 1
    for name in ALL:
        assert cnnzoo.get_model_info(name).num_classes == (10 if name in SMALL else 1000), name


def test_list_models_wildcards_and_family_keyword():
    assert cnnzoo.list_models("vgg1?_bn") == ["vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn"]
    assert set(cnnzoo.list_models("*_cifar")) == {n for n in ALL if n.endswith("_cifar")}
    assert cnnzoo.list_models("resnet*", family="resnet") == [
        "resnet101",
        "resnet152",
        "resnet18",
        "resnet34",
        "resnet50",
    ]
    assert cnnzoo.list_models("resnet") == []  # a pattern, not a family
    assert cnnzoo.list_models("no_such*") == []


def test_family_labels_follow_one_rule():
    """The architecture (the names' prefix, no digits), plus "_cifar" for the nets built for 32x32 inputs; each label
    belongs to one family file; the citation has one form."""
    modules: dict[str, set[str]] = {}
    for name in ALL:
        info = cnnzoo.get_model_info(name)
        modules.setdefault(info.family, set()).add(info.builder.__module__)
        assert re.fullmatch(r"[a-z]+(_[a-z]+)*", info.arch) and info.arch != "", name
        assert info.family.endswith("_cifar") == (name in SMALL), name
        assert name.startswith(info.arch), name
        assert re.fullmatch(r"[A-Z][\w ,&.]+ \d{4}, [^()]+ \([A-Za-z]+ \d{4}(, arXiv:\d{4}\.\d{4,5})?\)", info.paper), (
            name
        )
    assert all(len(files) == 1 for files in modules.values()), modules


def test_every_family_module_registers_models():
    """models/__init__ imports every public module of the package: each family file registers at least one model
    and has the file conventions (one PAPER string, one init_weights)."""
    import importlib
    import pkgutil

    import cnnzoo.models

    modules = {m.name for m in pkgutil.iter_modules(cnnzoo.models.__path__) if not m.name.startswith("_")}
    registering = {cnnzoo.get_model_info(n).builder.__module__.rsplit(".", 1)[1] for n in ALL}
    # registry: the registry itself; weights: starting weights for any of them (create_model(..., weights=...))
    assert registering and modules - {"registry", "weights"} == registering
    for module in registering:
        family = importlib.import_module(f"cnnzoo.models.{module}")
        assert isinstance(family.PAPER, str) and callable(family.init_weights), module


@pytest.mark.parametrize("name", ALL)
def test_cam_layer_and_stages_name_submodules(name):
    """``cam_layer`` and ``stages`` name real submodules; stage outputs shrink (or keep) their size in order and the
    cam layer's output is a 4-d map with more than one position (meta device: shapes only)."""
    c, h, w = cnnzoo.get_model_info(name).input_size
    with torch.device("meta"):
        model = cnnzoo.create_model(name).eval()
        modules = dict(model.named_modules())
        assert model.cam_layer in modules and all(s in modules for s in model.stages), name
        if name in HEAVY:
            return
        shapes = {}
        watched = {*model.stages, model.cam_layer}
        hooks = [modules[n].register_forward_hook(lambda m, i, o, n=n: shapes.__setitem__(n, o.shape)) for n in watched]
        model(torch.empty(1, c, h, w))
        for hk in hooks:
            hk.remove()
    assert len(shapes[model.cam_layer]) == 4
    sizes = [shapes[s][-1] for s in model.stages]
    assert len(sizes) >= 3 and sizes == sorted(sizes, reverse=True), (name, sizes)
    # Grad-CAM needs positions to tell apart: the cam layer's map is never smaller than the last stage's, nor 1x1.
    assert shapes[model.cam_layer][-1] >= max(2, sizes[-1]), (name, shapes[model.cam_layer])
